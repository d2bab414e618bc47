"""One scheduled labelling round, stage by stage, resumable.

    sync -> train -> evaluate -> stop_check -> pseudo_label -> select -> push

Each stage writes its outputs atomically under ``<workdir>/rounds/NNNN/`` and is recorded in
the ledger when complete. Running the command again after a crash resumes the unfinished round
at the first stage not recorded; a completed push is never repeated, and even a push
interrupted half-way creates no duplicate task (the Label Studio client looks our item ids up
before importing).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Literal, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from loops import detection
from loops.review import SyncResult, pending_adjudications, sync_reviews
from pseudolabel.config import Config, dump_config
from pseudolabel.data.formats import read_labels
from pseudolabel.data.ingest import Presence, Quarantined, recheck, reconcile, scan_folder, write_quarantine_csv
from pseudolabel.data.ledger import Ledger, boxes_from_json, boxes_to_json
from pseudolabel.inference import load_box_predictions, load_predictions, pseudo_label
from pseudolabel.metrics import classification_metrics
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.report import HOLDOUT_FILE, report_round, write_holdout_predictions
from pseudolabel.stopping import StoppingRules, check_all
from pseudolabel.strategies import SCORE_FUNCTIONS, entropy, select, uses_labelled_embeddings
from pseudolabel.strategies.detection import DETECTION_EMBEDDING_STRATEGIES
from pseudolabel.types import Annotation, Candidate, Item, Prediction
from pseudolabel.utils import atomic_write_text

STAGES = ("sync", "train", "evaluate", "stop_check", "pseudo_label", "select", "push")


class Reviewer(Protocol):
    """What a round needs from the review back end (the Label Studio client; the in-process
    oracle of the benchmarks)."""

    project_title: str

    def push(self, candidates: Sequence[Candidate], *, round_id: int, model_version: str,
             refresh: Sequence[Candidate] = ()) -> dict[str, int]: ...

    def pull(self, *, since: Any = None) -> Any: ...

    def listing(self) -> list[Any]: ...

    def flag_task(self, task_id: int, note: str) -> None: ...

    def check_image(self, path: Path) -> None: ...


@dataclass
class RoundResult:
    round_id: int
    resumed: bool
    labels_used: int                   # seed + human labelled items, at training time
    pseudo_used: int                   # pseudo-labelled items in the training set
    metrics: dict[str, Any]
    queued: int                        # tasks pushed this round
    sync: dict[str, int]
    seconds: float
    stop_reason: str | None = None     # set when the campaign should stop
    stage_seconds: dict[str, float] = field(default_factory=dict)
    idle: str | None = None            # set when no round ran: why (campaign stopped, nothing new)
    pseudo_per_class: dict[str, int] = field(default_factory=dict)


def round_dir(cfg: Config, round_id: int) -> Path:
    return cfg.workdir / "rounds" / f"{round_id:04d}"


def ledger_for(cfg: Config) -> Ledger:
    return Ledger(cfg.workdir / "ledger.sqlite")


def ingest(cfg: Config, ledger: Ledger, *, progress: bool = False,
           log: Callable[[str], None] = lambda s: None) -> dict[str, int]:
    """Scan seed, holdout and pool into the ledger; quarantine unusable files.

    Seed labels are added once (a re-run adds nothing); the pool is re-scanned every round so
    newly dropped images join it (files known by path, size and mtime are not re-read).
    Classification reads ImageFolder / CSV sets, detection and segmentation YOLO / COCO / VOC
    (:func:`loops.detection.read_labelled`). Images above ``data.max_pixels`` are quarantined.

    Files deleted or replaced since the last scan never stop the campaign: an item whose
    every known file vanished or now holds other bytes is marked gone (its labels kept; new
    bytes are a new item) with a quarantine row saying why, and nothing reads it any more.
    A seed or holdout set read for the first time must be complete (a listed file that does
    not exist is an error: a typo to fix); afterwards such a file is quarantined.
    Returns counts of what was new, quarantined and gone.
    """
    seen_splits = ledger.split_counts(include_gone=True)

    def on_missing(split: str) -> Literal["error", "quarantine"]:
        return "quarantine" if seen_splits[split] else "error"

    if is_detection(cfg):
        seed_set = detection.read_labelled(cfg, "seed", progress=progress, on_missing=on_missing("seed"))
        holdout_set = detection.read_labelled(cfg, "holdout", progress=progress, on_missing=on_missing("holdout"))
        seed_anns = (Annotation(item=it, boxes=tuple(seed_set.boxes[it.id]), source="seed", round=0, empty_ok=True)
                     for it in seed_set.items)
        truth = {it.id: boxes_to_json(holdout_set.boxes[it.id], empty=True) for it in holdout_set.items}
    else:
        seed_set = read_labels(cfg.data.seed.format, cfg.data.seed.path, classes=cfg.classes,
                               image_root=cfg.data.seed.image_root, max_pixels=cfg.data.max_pixels,
                               on_missing=on_missing("seed"))
        holdout_set = read_labels(cfg.data.holdout.format, cfg.data.holdout.path, classes=cfg.classes,
                                  image_root=cfg.data.holdout.image_root, max_pixels=cfg.data.max_pixels,
                                  on_missing=on_missing("holdout"))
        seed_anns = (Annotation(item=it, label=seed_set.labels[it.id], source="seed", round=0)
                     for it in seed_set.items)
        truth = {it.id: holdout_set.labels[it.id] for it in holdout_set.items}
    pool, known_before = _scan_pool(cfg, ledger, progress=progress)
    new = {
        "holdout": ledger.add_items(holdout_set.items, split="holdout"),
        "seed": ledger.add_items(seed_set.items, split="seed"),
        "pool": ledger.add_items(pool.items, split="pool"),
    }
    have_seed = {r.item_id for r in ledger.all_labels(source="seed")}
    ledger.add_labels(a for a in seed_anns if a.item.id not in have_seed)
    ledger.set_holdout_truth(truth)
    quarantined = [*seed_set.quarantined, *holdout_set.quarantined, *pool.quarantined]
    presence = _reconcile(ledger, [seed_set, holdout_set, pool], quarantined, known_before)
    quarantined += presence.quarantined
    if quarantined:
        write_quarantine_csv(cfg.workdir / "quarantine.csv", quarantined)
    new["quarantined"] = len(quarantined)
    new["gone"] = len(presence.gone)
    if presence.gone:
        log(f"  ingest: {len(presence.gone)} item(s) gone (files deleted or replaced; labels kept), "
            f"see {cfg.workdir / 'quarantine.csv'}")
    return new


def _scan_pool(cfg: Config, ledger: Ledger, *, progress: bool) -> tuple[Any, dict[str, Any]]:
    """Scan the pool folder; files already known by (path, size, mtime) are not re-read.
    Returns the scan and the file records as they were before it."""
    known = ledger.known_files()
    pool = scan_folder(cfg.data.pool.path, recursive=cfg.data.pool.recursive, progress=progress, known=known,
                       max_pixels=cfg.data.max_pixels)
    ledger.remember_files(pool.file_rows())
    gone = set(known) - set(pool.files)
    if gone:
        ledger.forget_files(gone)
    return pool, known


def _reconcile(ledger: Ledger, sets: Sequence[Any], quarantined: Sequence[Quarantined],
               known_before: Mapping[str, Any]) -> Presence:
    """Mark gone the items no scanned file holds any more, move those found elsewhere
    (:func:`pseudolabel.data.ingest.reconcile`)."""
    found: dict[Path, str] = {}
    for s in sets:  # seed / holdout / pool: items, then files with the same bytes as one
        found.update({Path(it.path): it.id for it in s.items})
        found.update({Path(p): i for p, i in s.duplicates})
    present = ledger.items()
    found_ids = set(found.values())
    missing = {it.id for it in present if it.id not in found_ids}
    others: dict[str, list[Path]] = {}
    for path, rec in known_before.items():  # the pool files that held them at the last scan
        if rec[2] in missing:
            others.setdefault(rec[2], []).append(Path(path))
    presence = reconcile(present, found, other_paths=others, quarantined={q.path: q.reason for q in quarantined})
    if presence.gone:
        ledger.mark_gone(presence.gone)
    if presence.moved:
        ledger.move_items(presence.moved)
    return presence


def recheck_before_push(cfg: Config, ledger: Ledger, cands: Sequence[Candidate], *,
                        log: Callable[[str], None] = lambda s: None) -> list[Candidate]:
    """The candidates whose files are still the ones scanned; the others are not pushed: they
    are quarantined with the reason and their items marked gone (a replaced file's new bytes
    join the pool at the next scan as a new item)."""
    ok, bad = recheck([c.item for c in cands], ledger.known_files([c.item.path for c in cands]))
    if bad:
        ledger.mark_gone({item_id: q.reason for item_id, q in bad.items()})
        write_quarantine_csv(cfg.workdir / "quarantine.csv", list(bad.values()))
        log(f"  push: {len(bad)} selected file(s) deleted or changed since the scan, not pushed (quarantined)")
    keep = {it.id for it in ok}
    return [c for c in cands if c.item.id in keep]


def is_detection(cfg: Config) -> bool:
    return cfg.task in ("detect", "segment")


def holdout_truth(cfg: Config, ledger: Ledger) -> dict[str, Any]:
    """Item id -> true class name (classification) or tuple of :class:`Box` (detection)."""
    raw: dict[str, Any] = ledger.holdout_truth()
    if is_detection(cfg):
        return {k: boxes_from_json(v) for k, v in raw.items()}
    return raw


def labels_used(ledger: Ledger) -> int:
    return len(ledger.human_labelled_ids())


def _training_set(cfg: Config, ledger: Ledger) -> tuple[list[Annotation], int, int]:
    """Seed + human labels (+ pseudo-labels when enabled). Items whose reviewers disagreed and
    that wait for an adjudicator are left out: their current label is one disputed answer."""
    holdout = {it.id for it in ledger.items("holdout")}
    if cfg.review.overlap > 1:
        holdout |= set(pending_adjudications(ledger, cfg.label_studio.project_title or cfg.project))
    items = {it.id: it for it in ledger.items()}
    train: list[Annotation] = []
    n_human = n_pseudo = 0
    for item_id, row in ledger.current_labels().items():
        if item_id in holdout or (row.label is None and not is_detection(cfg)):
            continue
        if row.source == "pseudo":
            if not cfg.pseudo.enabled:
                continue
            n_pseudo += 1
        else:
            n_human += 1
        train.append(Annotation(item=items[item_id], label=row.label, boxes=row.boxes, source=row.source,
                                round=row.round, weight=row.weight, empty_ok=True))
    return train, n_human, n_pseudo


def _build_model(cfg: Config, *, progress: bool, n_train: int = 0, previous: Path | None = None) -> Any:
    if is_detection(cfg):
        return detection.build_model(cfg, n_train=n_train, progress=progress, previous=previous)
    m = cfg.model
    if m.arch == "frozen":
        return _frozen_model(cfg, progress=progress)
    return TorchvisionClassifier(
        classes=cfg.classes, arch=m.arch, image_size=m.image_size, epochs=m.epochs,
        batch_size=m.batch_size, lr=m.lr, device=m.device, seed=m.seed, weights=m.weights,
        min_steps=m.min_steps, progress=progress, consistency=cfg.consistency.enabled,
        consistency_threshold=cfg.consistency.threshold, consistency_weight=cfg.consistency.weight,
        unlabelled_ratio=cfg.consistency.unlabelled_ratio, strong_ratio=cfg.consistency.strong_ratio,
        pseudo_per_epoch=cfg.pseudo.per_epoch, pseudo_ratio=cfg.pseudo.ratio, allow_download=m.allow_download,
    )


# -- arch frozen (issue 12); to move into the model registry ------------------------------------
def _frozen_model(cfg: Config, *, progress: bool) -> Any:
    """A :class:`FrozenBackboneClassifier` for ``cfg``; ``backbone: ssl`` first pretrains (or
    reuses) a self-supervised backbone on the pool. Embeddings are cached in
    ``<workdir>/embeddings``, pretraining in ``<workdir>/pretrain``."""
    from pseudolabel.models.backbone import FrozenBackboneClassifier
    from pseudolabel.models.backbone.ssl import PretrainSettings, pretrain_backbone

    m, p = cfg.model, cfg.pretrain
    backbone = m.backbone
    if backbone == "ssl":
        with ledger_for(cfg) as led:
            pool = led.items("pool")
        settings = PretrainSettings(image_size=p.image_size, width=p.width, max_steps=p.max_steps,
                                    max_minutes=p.max_minutes, batch_size=p.batch_size, lr=p.lr,
                                    temperature=p.temperature, checkpoint_every=p.checkpoint_every,
                                    max_images=p.max_images, seed=m.seed)
        backbone = "ssl:" + str(pretrain_backbone(pool, settings=settings, cache_dir=cfg.workdir / "pretrain",
                                                  allow_train=p.enabled, device=m.device, progress=progress).path)
    return FrozenBackboneClassifier(
        cfg.classes, backbone=backbone, weights=m.weights,
        # image_size left at its default: the backbone's own (64 px for ImageNet, pretrain.image_size for ssl)
        image_size=None if m.image_size == type(m).model_fields["image_size"].default else m.image_size, head=m.head,
        finetune=m.finetune, epochs=m.epochs, batch_size=m.batch_size, lr=m.lr, min_steps=m.min_steps,
        device=m.device, seed=m.seed, cache_dir=cfg.workdir / "embeddings", allow_download=m.allow_download,
        progress=progress)


def stop_reason(cfg: Config, ledger: Ledger, round_id: int, metrics: dict[str, Any], pool_left: int) -> str | None:
    """Why the campaign should stop now (before pseudo-labelling), or None.

    Order: target reached, label budget, plateau, reviewer acceptance rate, max rounds, pool
    exhausted. The rules that need the new model's pool predictions (stable predictions, low
    pool uncertainty) are checked after pseudo-labelling by :func:`pool_stop_reason`.
    """
    s = cfg.stop
    value = metrics.get(s.metric)
    if value is not None and value >= s.target:
        return f"target_reached: holdout {s.metric} {value:.4f} >= {s.target}"
    used = labels_used(ledger)
    if used >= s.label_budget:
        return f"label_budget: {used} labels used >= budget {s.label_budget}"
    history = [r["metrics"] for r in ledger.rounds() if r["id"] <= round_id and r["metrics"]]
    rules = StoppingRules(metric=s.metric, patience=s.plateau_rounds, min_delta=s.plateau_min_delta,
                          acceptance_threshold=s.acceptance_rate, min_answered=s.min_answered)
    answers = [r for r in ledger.all_labels(source="human")
               if r.round == round_id - 1 and r.review_outcome in ("accepted", "corrected")]
    decision = check_all(rules, history=history,
                         accepted=sum(r.review_outcome == "accepted" for r in answers) if answers else None,
                         answered=len(answers) if answers else None)
    if decision.stop:
        return decision.reason
    if round_id >= s.max_rounds:
        return f"max_rounds: round {round_id} of {s.max_rounds}"
    if pool_left == 0:
        return "pool_exhausted: no unlabelled, unqueued pool item left"
    return None


def pool_stop_reason(cfg: Config, round_id: int, df: pd.DataFrame, probs: np.ndarray | None, *,
                     scores: np.ndarray | None = None) -> str | None:
    """Stop rules on the pool predictions: consecutive models agree (Cohen's kappa on the
    items both scored; detection: on each image's top box class, "none" for no box), or the
    pool's mean uncertainty is low (normalised entropy of ``probs``, or the given ``scores``:
    detection image scores in [0, 1])."""
    s = cfg.stop
    if s.stable_kappa is None and s.pool_uncertainty is None:
        return None
    prev_labels = cur_labels = None
    prev_dir = round_dir(cfg, round_id - 1) / "predictions"
    if s.stable_kappa is not None and round_id > 1 and prev_dir.exists():
        prev_df, _, _ = load_predictions(prev_dir)
        common = pd.merge(prev_df[["item_id", "label"]], df[["item_id", "label"]], on="item_id",
                          suffixes=("_prev", "_cur"))
        if len(common):
            prev_labels = common["label_prev"].fillna("none").to_numpy()
            cur_labels = common["label_cur"].fillna("none").to_numpy()
    if scores is None:
        assert probs is not None  # classification passes probs
        scores = entropy(probs, normalise=True) if len(probs) else np.zeros(0)
    rules = StoppingRules(metric=s.metric, kappa_threshold=s.stable_kappa, uncertainty_threshold=s.pool_uncertainty)
    decision = check_all(rules, prev_labels=prev_labels, cur_labels=cur_labels, pool_scores=scores)
    return decision.reason if decision.stop else None


def run_round(
    cfg: Config,
    reviewer: Reviewer | None,
    *,
    ledger: Ledger | None = None,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> RoundResult:
    """Run (or resume) one round. ``reviewer`` None skips sync and push (offline dry run).

    Before a *new* round opens, answers are pulled and the ledger reconciled with Label
    Studio; then nothing is trained when there is nothing to do: after the campaign's stop
    rule fired (unless ``force``), or when no label changed since the last model and the
    review queue is full (:func:`why_idle`). Such a call returns a result with ``idle`` set
    and ``round_id`` the last round. ``force`` also ignores the stop rules in this round.
    """
    own = ledger is None
    led = ledger_for(cfg) if ledger is None else ledger
    try:
        res = _run_round(cfg, reviewer, led, progress=progress, force=force, log=log)
        if res.idle is None:
            report_round(cfg, led, res.round_id, log=log)  # never raises: a failed report is a warning
        return res
    finally:
        if own:
            led.close()


@dataclass
class _Round:
    """What the stages of one round share."""

    cfg: Config
    reviewer: Reviewer | None
    ledger: Ledger
    rid: int
    resumed: bool
    log: Callable[[str], None]
    progress: bool
    force: bool
    timings: dict[str, float] = field(default_factory=dict)
    model: Any = None

    @property
    def dir(self) -> Path:
        return round_dir(self.cfg, self.rid)

    def stage(self, name: str, run: Callable[[], dict[str, Any] | None], *,
              redo: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Run stage ``name`` unless the ledger records it done (and ``redo()`` is false);
        record it with the info ``run`` returns. The one place resume is decided."""
        if self.ledger.stage_done(self.rid, name) and not redo():
            return self.ledger.stage_info(self.rid, name) or {}
        t = time.perf_counter()
        info = run() or {}
        self.ledger.mark_stage(self.rid, name, info)
        self.timings[name] = time.perf_counter() - t
        return info


def _run_round(cfg: Config, reviewer: Reviewer | None, ledger: Ledger, *, progress: bool, force: bool,
               log: Callable[[str], None]) -> RoundResult:
    t0 = time.perf_counter()
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    ingest(cfg, ledger, progress=progress, log=log)
    sync = _sync(cfg, ledger, reviewer, log)
    rid = ledger.running_round()
    if rid is None:
        idle = why_idle(cfg, ledger, force=force)
        if idle is not None:
            log(f"  {idle}")
            last = ledger.rounds()[-1] if ledger.rounds() else {"id": 0, "metrics": {}}
            return RoundResult(int(last["id"]), False, labels_used(ledger), 0, last["metrics"] or {}, 0, sync,
                               time.perf_counter() - t0, idle=idle)
    rid, resumed = ledger.open_round(config=cfg.snapshot())
    r = _Round(cfg, reviewer, ledger, rid, resumed, log, progress, force)
    r.dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, r.dir / "config.yaml")
    log(f"round {rid}" + (" (resuming)" if resumed else ""))
    r.stage("sync", lambda: sync)

    train_info = r.stage("train", lambda: _train(r), redo=lambda: not (r.dir / "model.pt").exists())
    if r.model is None:
        r.model = _load_model(cfg, r.dir / "model.pt")
    r.stage("evaluate", lambda: _evaluate(r, train_info))
    metrics = ledger.round(rid)["metrics"]
    log("  holdout: " + _metrics_line(cfg, metrics))
    if metrics.get("per_class_f1") or metrics.get("per_class_ap50"):
        log("  per class: " + _per_class_line(cfg, metrics))

    blocked = ledger.human_labelled_ids()
    scored = [it for it in ledger.items("pool") if it.id not in blocked]        # queued items included
    queued = ledger.queued_item_ids()
    selectable = [it for it in scored if it.id not in queued]
    reason = None if force else stop_reason(cfg, ledger, rid, metrics, len(selectable))
    r.stage("stop_check", lambda: {"stop": reason, "forced": force})
    if reason is not None:
        return _stopped(r, reason, metrics, train_info, sync, t0)

    pl = r.stage("pseudo_label", lambda: _pseudo_label(r, scored, metrics, train_info))
    if pl.get("stop") is not None and not force:
        return _stopped(r, pl["stop"], metrics, train_info, sync, t0)
    sel_csv = r.dir / "selection.csv"
    r.stage("select", lambda: _select(r, selectable), redo=lambda: not sel_csv.exists())
    push = r.stage("push", lambda: _push(r, scored))
    ledger.finish_round(rid)
    return RoundResult(rid, resumed, metrics["labels_used"], train_info.get("pseudo", 0), metrics,
                       int(push.get("queued", 0)), sync, time.perf_counter() - t0, None, r.timings,
                       pseudo_per_class=pl.get("per_class", {}))


def _sync(cfg: Config, ledger: Ledger, reviewer: Reviewer | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Pull reviewers' answers and reconcile the ledger with Label Studio (every call)."""
    if reviewer is None:
        return {}
    res = sync_reviews(ledger, reviewer, round_id=ledger.running_round(), overlap=cfg.review.overlap,
                       consensus=cfg.review.consensus, min_agreement=cfg.review.min_agreement,
                       classes=cfg.classes, log=log)
    log(f"  sync: {res.added} new labels ({res.corrected} corrected, {res.accepted} accepted, {res.skipped} skipped)"
        + (f", {res.rejected} answers not usable (answers_quarantine.csv)" if res.rejected else ""))
    return res.__dict__.copy()


def training_signature(cfg: Config, ledger: Ledger) -> str:
    """A hash of what a model learns from: the seed and human labels of the training set and
    the model / self-training settings. Equal signatures train the same model."""
    import hashlib

    holdout = {it.id for it in ledger.items("holdout")}
    rows = sorted((iid, row.source, row.label or "", boxes_to_json(row.boxes) or "")
                  for iid, row in ledger.current_labels().items()
                  if row.source != "pseudo" and iid not in holdout)
    settings = {k: cfg.snapshot()[k] for k in ("task", "classes", "model", "pseudo", "consistency")}
    h = hashlib.sha256(json.dumps([rows, settings], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _last_trained(ledger: Ledger) -> dict[str, Any] | None:
    """The train info (with ``round``) of the latest round that has a model."""
    for rnd in reversed(ledger.rounds()):
        info = ledger.stage_info(rnd["id"], "train")
        if info is not None and info.get("signature"):
            return {**info, "round": rnd["id"]}
    return None


def why_idle(cfg: Config, ledger: Ledger, *, force: bool = False) -> str | None:
    """Why no new round should start now, or None.

    - the campaign stopped (the last round ended with a stop rule), unless ``force``;
    - nothing new to learn from: the labels are those of the last model, no new pool image
      arrived since, and the review queue is full (``selection.max_queued`` tasks waiting).
    """
    rounds = ledger.rounds()
    if not rounds:
        return None
    last = rounds[-1]
    if last["status"] == "stopped" and not force:
        why = (last.get("info") or {}).get("stop") or "a stop rule fired"
        return (f"the campaign stopped at round {last['id']} ({why}); nothing to do. Raise the limit in the "
                "config, or run with --force to go on anyway")
    prev = _last_trained(ledger)
    if prev is None or prev["signature"] != training_signature(cfg, ledger):
        return None
    waiting = len(ledger.review_tasks(state="queued"))
    cap = cfg.selection.max_queued or cfg.selection.batch_size
    blocked = ledger.human_labelled_ids() | ledger.queued_item_ids()
    selectable = sum(1 for it in ledger.items("pool") if it.id not in blocked)
    new_pool = selectable - int((ledger.stage_info(prev["round"], "pseudo_label") or {}).get("selectable", -1))
    if waiting >= cap and new_pool <= 0:
        return (f"nothing new to learn from: no new answers since round {prev['round']}'s model and "
                f"{waiting} tasks are still waiting for reviewers; not training")
    return None


def _train(r: _Round) -> dict[str, Any]:
    cfg, ledger = r.cfg, r.ledger
    weights = r.dir / "model.pt"
    signature = training_signature(cfg, ledger)
    prev = _last_trained(ledger)
    train, n_human, n_pseudo = _training_set(cfg, ledger)
    if prev is not None and prev["signature"] == signature and prev["round"] != r.rid \
            and (round_dir(cfg, prev["round"]) / "model.pt").exists():
        shutil.copyfile(round_dir(cfg, prev["round"]) / "model.pt", weights)
        r.model = _load_model(cfg, weights)
        r.log(f"  train: skipped: the labels are those of round {prev['round']}'s model (no new answers); "
              f"reusing model {r.model.model_version}")
        ledger.update_round(r.rid, model_version=r.model.model_version, info={"train_counts": {
            "human_or_seed": prev.get("human_or_seed", n_human), "pseudo": prev.get("pseudo", 0)}})
        return {**{k: v for k, v in prev.items() if k != "round"}, "reused_from": prev["round"]}
    classes_present = {a.label for a in train if a.source != "pseudo"} | {
        b.label for a in train if a.source != "pseudo" for b in a.boxes} - {None}
    previous = round_dir(cfg, r.rid - 1) / "model.pt" if r.rid > 1 else None
    model = _build_model(cfg, progress=r.progress, n_train=len(train), previous=previous)
    plan = training_plan(cfg, len(train))
    r.log(f"  train: {n_human} human/seed + {n_pseudo} pseudo labels, {len(classes_present)} classes; "
          f"{plan['epochs']} epochs x {plan['steps_per_epoch']} steps = {plan['steps']} steps"
          + (f" (model.min_steps {cfg.model.min_steps} raised model.epochs {cfg.model.epochs})"
             if plan["epochs"] > cfg.model.epochs else ""))
    if cfg.consistency.enabled and not is_detection(cfg):
        # FixMatch-style: unlabelled pool images train through weak/strong consistency.
        labelled = {a.item.id for a in train}
        model.fit(train, unlabelled=[it for it in ledger.items("pool") if it.id not in labelled])
    else:
        model.fit(train)
    model.save(weights)
    r.model = model
    ledger.update_round(r.rid, model_version=model.model_version,
                        info={"train_counts": {"human_or_seed": n_human, "pseudo": n_pseudo}})
    return {"human_or_seed": n_human, "pseudo": n_pseudo, "model_version": model.model_version,
            "signature": signature, **plan}


def training_plan(cfg: Config, n_train: int) -> dict[str, int]:
    """Epochs and optimiser steps the round's training will run: ``model.epochs``, raised so
    that at least ``model.min_steps`` steps run on ``n_train`` images at ``model.batch_size``."""
    steps_per_epoch = max(1, math.ceil(max(n_train, 1) / cfg.model.batch_size))
    epochs = max(cfg.model.epochs, math.ceil(cfg.model.min_steps / steps_per_epoch)) if cfg.model.min_steps \
        else cfg.model.epochs
    return {"epochs": int(epochs), "steps_per_epoch": int(steps_per_epoch), "steps": int(epochs * steps_per_epoch)}


def _load_model(cfg: Config, path: Path) -> Any:
    if is_detection(cfg):
        return detection.load_model(cfg, path)
    if cfg.model.arch == "frozen":
        from pseudolabel.models.backbone import FrozenBackboneClassifier

        return FrozenBackboneClassifier.load(path, device=cfg.model.device, cache_dir=cfg.workdir / "embeddings")
    return TorchvisionClassifier.load(path)


def _evaluate(r: _Round, train_info: Mapping[str, Any]) -> dict[str, Any]:
    cfg, ledger = r.cfg, r.ledger
    reused = train_info.get("reused_from")
    if reused is not None and ledger.round(int(reused))["metrics"]:
        metrics = dict(ledger.round(int(reused))["metrics"])
        metrics["labels_used"] = labels_used(ledger)
    else:
        holdout = ledger.items("holdout")
        truth = holdout_truth(cfg, ledger)
        if is_detection(cfg):
            metrics = detection.evaluate(cfg, r.model, holdout, truth)
        else:
            probs, _ = r.model.predict_proba_embed(holdout, batch_size=cfg.model.infer_batch_size)
            pred = [cfg.classes[i] for i in probs.argmax(1)]
            metrics = classification_metrics([truth[it.id] for it in holdout], pred, classes=cfg.classes)
            # kept for the report's confusion matrix (rounds/NNNN/holdout.parquet)
            write_holdout_predictions(r.dir / HOLDOUT_FILE, [it.id for it in holdout],
                                      [truth[it.id] for it in holdout], pred, probs.max(1))
        metrics |= {"labels_used": labels_used(ledger), "pseudo_used": train_info.get("pseudo", 0),
                    "model_version": r.model.model_version}
    atomic_write_text(r.dir / "metrics.json", json.dumps(metrics, indent=2))
    ledger.update_round(r.rid, metrics=metrics)
    return {}


def _stopped(r: _Round, why: str, metrics: Mapping[str, Any], train_info: Mapping[str, Any],
             sync: dict[str, Any], t0: float) -> RoundResult:
    r.ledger.update_round(r.rid, info={"stop": why})
    r.ledger.set_termination(why, round_id=r.rid)
    r.ledger.finish_round(r.rid, status="stopped")
    r.log(f"  stop: {why}")
    return RoundResult(r.rid, r.resumed, metrics["labels_used"], train_info.get("pseudo", 0), dict(metrics),
                       0, sync, time.perf_counter() - t0, why, r.timings)


def class_gate(cfg: Config, metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """Classes that get no pseudo-labels: their holdout F1 (classification) or AP50
    (detection) is below ``pseudo.min_class_score``. Returns class → its score."""
    per = metrics.get("per_class_f1") if cfg.task == "classify" else metrics.get("per_class_ap50")
    floor = cfg.pseudo.min_class_score
    if not per or floor <= 0:
        return {}
    return {c: v for c, v in per.items() if v is None or float(v) < floor}


def _pseudo_label(r: _Round, scored: Sequence[Item], metrics: Mapping[str, Any],
                  train_info: Mapping[str, Any]) -> dict[str, Any]:
    cfg, ledger, model = r.cfg, r.ledger, r.model
    pred_dir = r.dir / "predictions"
    reused = train_info.get("reused_from")
    if reused is not None:
        _link_predictions(round_dir(cfg, int(reused)) / "predictions", pred_dir)
    pseudo_label(model, scored, pred_dir, batch_size=cfg.model.infer_batch_size, progress=r.progress)
    gated = class_gate(cfg, metrics)
    new: list[Annotation] = []
    if is_detection(cfg):
        df, preds = load_box_predictions(pred_dir)
        if cfg.pseudo.enabled:
            new = detection.confident(cfg, preds, {it.id: it for it in ledger.items("pool")},
                                      ledger.human_labelled_ids(), r.rid, model.model_version, skip_classes=set(gated),
                                      cap=pseudo_cap(cfg, ledger))
        scores = detection.image_scores(cfg, preds, {it.id: it for it in scored})
        late_stop = pool_stop_reason(cfg, r.rid, df, None, scores=scores)
    else:
        df, probs, _ = load_predictions(pred_dir)
        if cfg.pseudo.enabled:
            new = _confident(cfg, ledger, df, probs, r.rid, model.model_version, skip_classes=set(gated))
        late_stop = pool_stop_reason(cfg, r.rid, df, probs)
    n_pseudo = ledger.add_labels(new)
    per_class: dict[str, int] = {c: 0 for c in cfg.classes}
    for a in new:
        for name in ([a.label] if a.label is not None else sorted({b.label for b in a.boxes})):
            per_class[name] = per_class.get(name, 0) + 1
    if gated:
        r.log("  pseudo-label: no pseudo-labels for " + ", ".join(
            f"{c} (holdout {'F1' if cfg.task == 'classify' else 'AP50'} "
            f"{'n/a' if v is None else f'{v:.2f}'})" for c, v in gated.items())
              + f": below pseudo.min_class_score {cfg.pseudo.min_class_score}")
    r.log(f"  pseudo-label: {len(df)} pool items scored, {n_pseudo} confident pseudo-labels kept"
          + (" (" + ", ".join(f"{c} {n}" for c, n in per_class.items() if n) + ")" if n_pseudo else ""))
    blocked = ledger.human_labelled_ids() | ledger.queued_item_ids()
    selectable = sum(1 for iid in df["item_id"] if iid not in blocked)
    return {"scored": len(df), "pseudo_labels": n_pseudo, "per_class": per_class, "gated": sorted(gated),
            "stop": late_stop, "selectable": selectable}


def _link_predictions(src: Path, dst: Path) -> None:
    """Hard-link (or copy) a reused model's prediction shards into this round's folder, so
    only images new since then are scored again."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*") if src.is_dir() else []:
        target = dst / f.name
        if target.exists() or not f.is_file():
            continue
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)


def _select(r: _Round, selectable: Sequence[Item]) -> dict[str, Any]:
    cfg, ledger = r.cfg, r.ledger
    pred_dir = r.dir / "predictions"
    waiting = len(ledger.review_tasks(state="queued"))
    cap = cfg.selection.max_queued or cfg.selection.batch_size
    budget_left = cfg.stop.label_budget - labels_used(ledger) - waiting
    room = max(0, min(budget_left, cap - waiting))
    if is_detection(cfg):
        rows = _select_detection(cfg, ledger, r.model, selectable, pred_dir, room, r.rid)
    else:
        rows = _select_classification(cfg, ledger, r.model, selectable, pred_dir, room, r.rid)
    out = pd.DataFrame(rows, columns=["rank", "item_id", "score", "uncertainty", "predicted", "confidence", "row",
                                      "strategy"])
    atomic_write_text(r.dir / "selection.csv", out.to_csv(index=False))
    if room < cfg.selection.batch_size:
        r.log(f"  select: {len(out)} new tasks ({waiting} still waiting for reviewers; the queue holds "
              f"selection.max_queued {cap}" + (f", label budget left {budget_left}" if budget_left < cap else "") + ")")
    # "schedule:margin" when the configured strategy delegated to another this round.
    ran = sorted({row["strategy"] for row in rows}) or [cfg.selection.strategy]
    return {"selected": len(out), "strategy": ran[0], "waiting": waiting}


def _push(r: _Round, scored: Sequence[Item]) -> dict[str, Any]:
    cfg, ledger, reviewer, model = r.cfg, r.ledger, r.reviewer, r.model
    sel_df = pd.read_csv(r.dir / "selection.csv")
    if reviewer is None:
        return {"queued": 0}
    # Files deleted or changed since the scan are not pushed (quarantined, item gone).
    cands = recheck_before_push(cfg, ledger, _candidates(cfg, ledger, model, r.dir / "predictions", sel_df), log=r.log)
    waiting = {t["item_id"] for t in ledger.review_tasks(reviewer.project_title, state="queued")}
    again = _queued_candidates(cfg, ledger, model, r.dir / "predictions", waiting)
    if cands:
        reviewer.check_image(cands[0].item.path)
    tasks = reviewer.push(cands, round_id=r.rid, model_version=model.model_version, refresh=again)
    # Tasks an interrupted push left in Label Studio were adopted by the sync; recorded here
    # they are not new rows, but they are this round's tasks all the same.
    new_rows = ledger.record_tasks(reviewer.project_title, r.rid, tasks, scores={c.item.id: c.score for c in cands})
    queued = len(tasks)
    r.log(f"  push: {queued} tasks in Label Studio ({new_rows} new in the ledger); {len(again)} queued tasks of "
          f"earlier rounds re-ranked with model {model.model_version}")
    relabel = 0
    if cfg.quality.enabled and not is_detection(cfg):
        relabel = _push_relabel(cfg, ledger, reviewer, model, r.rid, log=r.log)
    return {"queued": queued, "relabel": relabel, "refreshed": len(again)}


def _push_relabel(cfg: Config, ledger: Ledger, reviewer: Any, model: Any, rid: int, *,
                  log: Callable[[str], None]) -> int:
    """Label-quality check (confident learning, :mod:`pseudolabel.quality`): seed / human labels
    that cross-validated models strongly disagree with are sent back for a second review,
    flagged in Label Studio ("Second review: ... the model suggests X"). Each label is sent
    back once (recorded in the ledger before the push: a crash never asks twice)."""
    from pseudolabel.quality import label_issues, out_of_sample_probs, relabel_candidates

    asked: dict[str, int] = ledger.relabel_requests()
    train, _, _ = _training_set(cfg, ledger)
    labelled = [a for a in train if a.source != "pseudo"]
    if len(labelled) < cfg.quality.min_labels:
        log(f"  quality: {len(labelled)} labels < quality.min_labels {cfg.quality.min_labels}; not checked yet")
        return 0
    oos = out_of_sample_probs(lambda: _build_model(cfg, progress=False, n_train=len(labelled)), labelled,
                              folds=cfg.quality.folds, seed=cfg.model.seed, batch_size=cfg.model.infer_batch_size)
    issues = [i for i in label_issues([a.label for a in labelled], oos, classes=cfg.classes)
              if labelled[i.index].item.id not in asked][: cfg.quality.max_per_round]
    if not issues:
        log(f"  quality: {len(labelled)} labels checked, none suspicious")
        return 0
    cands = relabel_candidates(labelled, oos, issues, model_version=model.model_version)
    ledger.add_relabel_requests({c.item.id: rid for c in cands})
    tasks = reviewer.submit_relabel(cands, round_id=rid, model_version=model.model_version)
    ledger.record_tasks(reviewer.project_title, rid, {k: v for k, v in tasks.items()}, kind="relabel",
                        scores={c.item.id: c.score for c in cands})
    log(f"  quality: {len(labelled)} labels checked, {len(cands)} sent back for a second review")
    return len(cands)


def _metrics_line(cfg: Config, m: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    if cfg.task == "classify":
        return f"accuracy {f(m.get('accuracy'))}, macro-F1 {f(m.get('macro_f1'))}"
    line = f"mAP50 {f(m.get('map50'))}, mAP50-95 {f(m.get('map50_95'))}"
    if cfg.task == "segment":
        line += f", mask mAP50 {f(m.get('mask_map50'))}, mIoU {f(m.get('miou'))}"
    return line


def _labelled_items(ledger: Ledger) -> list[Item]:
    labelled = ledger.human_labelled_ids() - {it.id for it in ledger.items("holdout")}
    return [it for it in ledger.items() if it.id in labelled]


def uncertainty_of(cfg: Config, probs: np.ndarray) -> np.ndarray:
    """``(N,)`` review-order uncertainty of ``(N, C)`` probabilities: ``selection.uncertainty``
    (entropy, margin or least confidence), higher = more uncertain. Every queued task's Label
    Studio score comes from it, so tasks of every round and strategy share one order."""
    return SCORE_FUNCTIONS[cfg.selection.uncertainty](probs) if len(probs) else np.zeros(0)


def _select_detection(cfg: Config, ledger: Ledger, model: Any, pool: Sequence[Item], pred_dir: Path,
                      budget_left: int, rid: int) -> list[dict[str, Any]]:
    df, preds = load_box_predictions(pred_dir)
    by_id = {it.id: it for it in pool}
    keep = [i for i, iid in enumerate(df["item_id"]) if iid in by_id]
    df = df.iloc[keep].reset_index(drop=True)
    preds = [preds[i] for i in keep]
    k = max(0, min(cfg.selection.batch_size, budget_left, len(df)))
    if k == 0:
        return []
    flipped = None
    if cfg.selection.localisation > 0:
        flipped = {p.item_id: p for p in model.predict([by_id[p.item_id] for p in preds],
                                                        batch_size=cfg.model.infer_batch_size, hflip=True)}
    scores = detection.image_scores(cfg, preds, by_id, flipped)
    emb = np.stack([np.asarray(p.embedding, dtype=np.float32) for p in preds]) if preds else np.zeros((0, 0))
    lab_emb = None
    if cfg.selection.strategy in DETECTION_EMBEDDING_STRATEGIES:
        lab = _labelled_items(ledger)
        lab_emb = np.stack([p.embedding for p in model.predict(lab, batch_size=cfg.model.infer_batch_size)]) \
            if lab else None
    sel = detection.select(cfg, k=k, scores=scores, embeddings=emb, labelled_embeddings=lab_emb,
                           seed=cfg.selection.seed + rid)
    return [{"rank": rank, "item_id": df.at[i, "item_id"], "score": float(sc), "uncertainty": float(scores[i]),
             "predicted": df.at[i, "label"], "confidence": float(df.at[i, "confidence"]), "row": int(i),
             "strategy": sel.strategy}
            for rank, (i, sc) in enumerate(zip(sel.indices.tolist(), sel.scores.tolist()))]


def _select_classification(cfg: Config, ledger: Ledger, model: Any, pool: Sequence[Item], pred_dir: Path,
                           budget_left: int, rid: int) -> list[dict[str, Any]]:
    df, probs, emb = load_predictions(pred_dir)
    pool_ids = {it.id for it in pool}
    mask = df["item_id"].isin(pool_ids).to_numpy()
    df, probs, emb = df[mask].reset_index(drop=True), probs[mask], emb[mask]
    k = max(0, min(cfg.selection.batch_size, budget_left, len(df)))
    rows: list[dict[str, Any]] = []
    if k > 0:
        lab_emb = None
        if uses_labelled_embeddings(cfg.selection.strategy):
            _, lab_emb = model.predict_proba_embed(_labelled_items(ledger), batch_size=cfg.model.infer_batch_size)
        mc = None
        if cfg.selection.strategy == "bald":
            from pseudolabel.strategies.bayesian import mc_dropout_probs

            by_id = {it.id: it for it in pool}
            mc = mc_dropout_probs(model, [by_id[i] for i in df["item_id"]], T=cfg.selection.mc_samples,
                                  batch_size=cfg.model.infer_batch_size, seed=cfg.selection.seed + rid)
        sel = select(cfg.selection.strategy, k=k, probs=probs, embeddings=emb, mc_probs=mc,
                     labelled_embeddings=lab_emb, class_balance=cfg.selection.class_balance,
                     hybrid_factor=cfg.selection.hybrid_factor, uncertainty=cfg.selection.uncertainty,
                     seed=cfg.selection.seed + rid, options=cfg.selection.strategy_options())
        u = uncertainty_of(cfg, probs)
        for rank, (i, sc) in enumerate(zip(sel.indices.tolist(), sel.scores.tolist())):
            rows.append({"rank": rank, "item_id": df.at[i, "item_id"], "score": float(sc),
                         "uncertainty": float(u[i]), "predicted": df.at[i, "label"],
                         "confidence": float(df.at[i, "confidence"]), "row": int(i), "strategy": sel.strategy})
    return rows


def _candidates(cfg: Config, ledger: Ledger, model: Any, pred_dir: Path, sel_df: pd.DataFrame) -> list[Candidate]:
    """The selected items as review candidates, each with the prediction to pre-draw and its
    uncertainty as the score (the review order)."""
    preds = _review_predictions(cfg, model, pred_dir, set(sel_df["item_id"]))
    return [Candidate(item=ledger.item(r.item_id), score=float(r.uncertainty), prediction=preds[r.item_id][0],
                      strategy=str(r.strategy), note=preds[r.item_id][1])
            for r in sel_df.itertuples()]


def _queued_candidates(cfg: Config, ledger: Ledger, model: Any, pred_dir: Path, waiting: set[str]) -> list[Candidate]:
    """Tasks of earlier rounds still waiting for a reviewer, with this round's prediction and
    uncertainty (they were scored with the pool), so Label Studio re-ranks and redraws them."""
    if not waiting:
        return []
    preds = _review_predictions(cfg, model, pred_dir, waiting)
    if is_detection(cfg):
        _, all_preds = load_box_predictions(pred_dir)
        items = {it.id: it for it in ledger.items("pool") if it.id in preds}
        scored = [p for p in all_preds if p.item_id in items]
        u = dict(zip([p.item_id for p in scored], detection.image_scores(cfg, scored, items)))
    else:
        df, probs, _ = load_predictions(pred_dir)
        u = dict(zip(df["item_id"], uncertainty_of(cfg, probs)))
    return [Candidate(item=ledger.item(iid), score=float(u[iid]), prediction=preds[iid][0],
                      strategy=cfg.selection.strategy, note=preds[iid][1])
            for iid in sorted(preds) if iid in u]


def _review_predictions(cfg: Config, model: Any, pred_dir: Path, ids: set[str]) -> dict[str, tuple[Prediction, str]]:
    """Item id → (the prediction a reviewer sees, the note shown with it) for ``ids`` that
    have a prediction in ``pred_dir``. Detection: the boxes at least ``predraw_conf``
    confident, else the best guesses below it, with a note saying so."""
    out: dict[str, tuple[Prediction, str]] = {}
    if is_detection(cfg):
        _, preds = load_box_predictions(pred_dir)
        for p in preds:
            if p.item_id in ids:
                out[p.item_id] = detection.predraw(p, cfg.selection.predraw_conf, fallback=cfg.selection.predraw_fallback)
        return out
    df, probs, emb = load_predictions(pred_dir)
    for j, iid in enumerate(df["item_id"]):
        if iid in ids:
            out[iid] = (Prediction(item_id=iid, model_version=model.model_version, probs=probs[j], embedding=emb[j]), "")
    return out


def _per_class_line(cfg: Config, m: Mapping[str, Any]) -> str:
    per = m.get("per_class_f1") if cfg.task == "classify" else m.get("per_class_ap50")
    name = "F1" if cfg.task == "classify" else "AP50"
    return f"{name} " + ", ".join(f"{c} {'n/a' if v is None else f'{v:.2f}'}" for c, v in (per or {}).items())


def pseudo_cap(cfg: Config, ledger: Ledger) -> int | None:
    """Pseudo-labels allowed per class this round (see :func:`pseudolabel.selftrain.class_cap`)."""
    from pseudolabel.selftrain import class_cap

    holdout = {it.id for it in ledger.items("holdout")}
    n = len(ledger.human_labelled_ids() - holdout)
    return class_cap(max_per_class=cfg.pseudo.max_per_class, max_ratio=cfg.pseudo.max_ratio, n_labelled=n,
                     n_classes=len(cfg.classes))


def _confident(cfg: Config, ledger: Ledger, df: pd.DataFrame, probs: np.ndarray, rid: int,
               model_version: str, *, skip_classes: Collection[str] = ()) -> list[Annotation]:
    """Confident predictions as pseudo-labels (never for items a human or the seed labelled).

    Thresholds per class: ``pseudo.mode`` ``global`` uses ``pseudo.threshold`` for every
    class; ``flexmatch`` / ``freematch`` scale it per class by how well the class is learned
    (see :mod:`pseudolabel.selftrain`; FreeMatch's EMA state is kept in the ledger across
    rounds); ``pseudo.class_thresholds`` overrides single classes. Per class, the most
    confident are kept up to :func:`pseudo_cap` (``pseudo.max_per_class`` / ``pseudo.max_ratio``),
    so the easy classes cannot flood the training set.
    Classes in ``skip_classes`` (the model is not good enough at them, :func:`class_gate`)
    get none.
    """
    from pseudolabel.selftrain import FreeMatchState, class_thresholds

    human = ledger.human_labelled_ids()
    items = {it.id: it for it in ledger.items("pool")}
    if not len(probs):
        return []
    human_mask = df["item_id"].isin(human).to_numpy()
    state = None
    saved = ledger.freematch_state()
    if cfg.pseudo.mode == "freematch" and saved:
        state = FreeMatchState(tau=float(saved["tau"]), class_probs=np.asarray(saved["class_probs"]))
    thr, new_state = class_thresholds(probs, threshold=cfg.pseudo.threshold, mode=cfg.pseudo.mode,
                                      human_mask=human_mask, state=state)
    if new_state is not None:
        ledger.save_freematch_state({"tau": float(new_state.tau),
                                     "class_probs": [float(v) for v in new_state.class_probs]}, round_id=rid)
    for c, t in cfg.pseudo.class_thresholds.items():
        thr[cfg.classes.index(c)] = t
    ledger.update_round(rid, info={"pseudo_thresholds": {c: round(float(t), 4) for c, t in zip(cfg.classes, thr)}})
    conf, pred = probs.max(1), probs.argmax(1)
    keep = np.flatnonzero((conf >= thr[pred]) & ~human_mask)
    cap = pseudo_cap(cfg, ledger)
    per_class: dict[str, int] = {}
    out: list[Annotation] = []
    for j in keep[np.argsort(-conf[keep], kind="stable")]:
        iid = df.at[int(j), "item_id"]
        label = cfg.classes[int(pred[j])]
        if label in skip_classes:
            continue
        if cap is not None and per_class.get(label, 0) >= cap:
            continue
        per_class[label] = per_class.get(label, 0) + 1
        out.append(Annotation(item=items[iid], label=label, source="pseudo", round=rid,
                              model_version=model_version, weight=cfg.pseudo.weight))
    return out
