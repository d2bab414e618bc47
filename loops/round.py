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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pandas as pd

from loops import detection
from loops.review import SyncResult, pending_adjudications, sync_reviews
from pseudolabel.config import Config, dump_config
from pseudolabel.data.formats import read_labels
from pseudolabel.data.ingest import scan_folder, write_quarantine_csv
from pseudolabel.data.ledger import Ledger, boxes_from_json, boxes_to_json
from pseudolabel.inference import load_box_predictions, load_predictions, pseudo_label
from pseudolabel.metrics import classification_metrics
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.stopping import StoppingRules, check_all
from pseudolabel.strategies import entropy, select, uses_labelled_embeddings
from pseudolabel.strategies.detection import DETECTION_EMBEDDING_STRATEGIES
from pseudolabel.types import Annotation, Candidate, Item, Prediction
from pseudolabel.utils import atomic_write_text

STAGES = ("sync", "train", "evaluate", "stop_check", "pseudo_label", "select", "push")


class Reviewer(Protocol):
    project_title: str

    def submit(self, candidates: Sequence[Candidate], *, round_id: int, model_version: str) -> dict[str, int]: ...

    def collect(self, *, since: Any = None) -> list[Annotation]: ...


class StopRound(Exception):
    """Raised by a test hook to simulate a crash after a given stage."""


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


def round_dir(cfg: Config, round_id: int) -> Path:
    return cfg.workdir / "rounds" / f"{round_id:04d}"


def ledger_for(cfg: Config) -> Ledger:
    return Ledger(cfg.workdir / "ledger.sqlite")


def ingest(cfg: Config, ledger: Ledger, *, progress: bool = False) -> dict[str, int]:
    """Scan seed, holdout and pool into the ledger; quarantine unusable files.

    Seed labels are added once (a re-run adds nothing); the pool is re-scanned every round so
    newly dropped images join it (files known by path, size and mtime are not re-read).
    Classification reads ImageFolder / CSV sets, detection and segmentation YOLO / COCO / VOC
    (:func:`loops.detection.read_labelled`). Returns counts of what was new.
    """
    if is_detection(cfg):
        seed_set = detection.read_labelled(cfg, "seed", progress=progress)
        holdout_set = detection.read_labelled(cfg, "holdout", progress=progress)
        seed_anns = (Annotation(item=it, boxes=tuple(seed_set.boxes[it.id]), source="seed", round=0, empty_ok=True)
                     for it in seed_set.items)
        truth = {it.id: boxes_to_json(holdout_set.boxes[it.id], empty=True) for it in holdout_set.items}
    else:
        seed_set = read_labels(cfg.data.seed.format, cfg.data.seed.path, classes=cfg.classes,
                               image_root=cfg.data.seed.image_root)
        holdout_set = read_labels(cfg.data.holdout.format, cfg.data.holdout.path, classes=cfg.classes,
                                  image_root=cfg.data.holdout.image_root)
        seed_anns = (Annotation(item=it, label=seed_set.labels[it.id], source="seed", round=0)
                     for it in seed_set.items)
        truth = {it.id: holdout_set.labels[it.id] for it in holdout_set.items}
    pool = _scan_pool(cfg, ledger, progress=progress)
    new = {
        "holdout": ledger.add_items(holdout_set.items, split="holdout"),
        "seed": ledger.add_items(seed_set.items, split="seed"),
        "pool": ledger.add_items(pool.items, split="pool"),
    }
    have_seed = {r.item_id for r in ledger.all_labels(source="seed")}
    ledger.add_labels(a for a in seed_anns if a.item.id not in have_seed)
    ledger.set_meta("holdout_truth", truth)
    quarantined = [*seed_set.quarantined, *holdout_set.quarantined, *pool.quarantined]
    if quarantined:
        write_quarantine_csv(cfg.workdir / "quarantine.csv", quarantined)
    new["quarantined"] = len(quarantined)
    return new


def _scan_pool(cfg: Config, ledger: Ledger, *, progress: bool) -> Any:
    """Scan the pool folder; files already known by (path, size, mtime) are not re-read."""
    known = ledger.known_files()
    pool = scan_folder(cfg.data.pool.path, recursive=cfg.data.pool.recursive, progress=progress, known=known)
    ledger.remember_files(pool.file_rows())
    gone = set(known) - set(pool.files)
    if gone:
        ledger.forget_files(gone)
    return pool


def is_detection(cfg: Config) -> bool:
    return cfg.task in ("detect", "segment")


def holdout_truth(cfg: Config, ledger: Ledger) -> dict[str, Any]:
    """Item id -> true class name (classification) or tuple of :class:`Box` (detection)."""
    raw: dict[str, Any] = ledger.get_meta("holdout_truth", {})
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
    return TorchvisionClassifier(
        classes=cfg.classes, arch=m.arch, image_size=m.image_size, epochs=m.epochs,
        batch_size=m.batch_size, lr=m.lr, device=m.device, seed=m.seed, weights=m.weights,
        min_steps=m.min_steps, progress=progress, consistency=cfg.consistency.enabled,
        consistency_threshold=cfg.consistency.threshold, consistency_weight=cfg.consistency.weight,
        unlabelled_ratio=cfg.consistency.unlabelled_ratio, strong_ratio=cfg.consistency.strong_ratio,
        pseudo_per_epoch=cfg.pseudo.per_epoch, pseudo_ratio=cfg.pseudo.ratio,
    )


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
    crash_after: str | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> RoundResult:
    """Run (or resume) one round. ``reviewer`` None skips sync and push (offline dry run).

    ``crash_after`` names a stage after which :class:`StopRound` is raised — for testing
    resumption.
    """
    own = ledger is None
    led = ledger_for(cfg) if ledger is None else ledger
    try:
        return _run_round(cfg, reviewer, led, progress=progress, crash_after=crash_after, log=log)
    finally:
        if own:
            led.close()


def _run_round(cfg: Config, reviewer: Reviewer | None, ledger: Ledger, *, progress: bool,
               crash_after: str | None, log: Callable[[str], None]) -> RoundResult:
    t0 = time.perf_counter()
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    rid, resumed = ledger.open_round(config=cfg.snapshot())
    rdir = round_dir(cfg, rid)
    rdir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, rdir / "config.yaml")
    log(f"round {rid}" + (" (resuming)" if resumed else ""))
    timings: dict[str, float] = {}

    def done(stage: str, info: dict[str, Any] | None = None) -> None:
        ledger.mark_stage(rid, stage, info)
        if crash_after == stage:
            raise StopRound(f"simulated crash after stage {stage!r} of round {rid}")

    # -- ingest + sync -----------------------------------------------------------------------
    ingest(cfg, ledger, progress=progress)
    sync: dict[str, int] = {}
    if not ledger.stage_done(rid, "sync"):
        s = time.perf_counter()
        if reviewer is not None:
            res = sync_reviews(ledger, reviewer, round_id=rid, overlap=cfg.review.overlap,
                               consensus=cfg.review.consensus, min_agreement=cfg.review.min_agreement,
                               classes=cfg.classes)
            sync = res.__dict__.copy()
            log(f"  sync: {res.added} new labels ({res.corrected} corrected, {res.accepted} accepted, {res.skipped} skipped)")
        done("sync", sync)
        timings["sync"] = time.perf_counter() - s
    else:
        sync = ledger.stage_info(rid, "sync") or {}

    # -- train ---------------------------------------------------------------------------------
    weights = rdir / "model.pt"
    if not ledger.stage_done(rid, "train") or not weights.exists():
        s = time.perf_counter()
        train, n_human, n_pseudo = _training_set(cfg, ledger)
        classes_present = {a.label for a in train if a.source != "pseudo"} | {
            b.label for a in train if a.source != "pseudo" for b in a.boxes} - {None}
        log(f"  train: {n_human} human/seed + {n_pseudo} pseudo labels, {len(classes_present)} classes")
        previous = round_dir(cfg, rid - 1) / "model.pt" if rid > 1 else None
        model = _build_model(cfg, progress=progress, n_train=len(train), previous=previous)
        if cfg.consistency.enabled and not is_detection(cfg):
            # FixMatch-style: unlabelled pool images train through weak/strong consistency.
            labelled = {a.item.id for a in train}
            unlabelled = [it for it in ledger.items("pool") if it.id not in labelled]
            model.fit(train, unlabelled=unlabelled)
        else:
            model.fit(train)
        model.save(weights)
        ledger.update_round(rid, model_version=model.model_version,
                            info={"train_counts": {"human_or_seed": n_human, "pseudo": n_pseudo}})
        done("train", {"human_or_seed": n_human, "pseudo": n_pseudo, "model_version": model.model_version})
        timings["train"] = time.perf_counter() - s
    elif is_detection(cfg):
        model = detection.load_model(cfg, weights)
    else:
        model = TorchvisionClassifier.load(weights)
    train_info = ledger.stage_info(rid, "train") or {}

    # -- evaluate on the holdout ---------------------------------------------------------------
    if not ledger.stage_done(rid, "evaluate"):
        s = time.perf_counter()
        holdout = ledger.items("holdout")
        truth = holdout_truth(cfg, ledger)
        if is_detection(cfg):
            metrics = detection.evaluate(cfg, model, holdout, truth)
        else:
            probs, _ = model.predict_proba_embed(holdout, batch_size=cfg.model.infer_batch_size)
            pred = [cfg.classes[i] for i in probs.argmax(1)]
            metrics = classification_metrics([truth[it.id] for it in holdout], pred, classes=cfg.classes)
        metrics |= {"labels_used": labels_used(ledger), "pseudo_used": train_info.get("pseudo", 0),
                    "model_version": model.model_version}
        atomic_write_text(rdir / "metrics.json", json.dumps(metrics, indent=2))
        ledger.update_round(rid, metrics=metrics)
        done("evaluate")
        timings["evaluate"] = time.perf_counter() - s
    metrics = ledger.round(rid)["metrics"]
    log("  holdout: " + _metrics_line(cfg, metrics))

    # -- stop check ----------------------------------------------------------------------------
    blocked = ledger.human_labelled_ids() | ledger.queued_item_ids()
    pool = [it for it in ledger.items("pool") if it.id not in blocked]
    reason = stop_reason(cfg, ledger, rid, metrics, len(pool))
    if not ledger.stage_done(rid, "stop_check"):
        done("stop_check", {"stop": reason})

    def stopped(why: str) -> RoundResult:
        ledger.update_round(rid, info={"stop": why})
        ledger.set_meta("termination", {"round": rid, "reason": why})
        ledger.finish_round(rid, status="stopped")
        log(f"  stop: {why}")
        return RoundResult(rid, resumed, metrics["labels_used"], train_info.get("pseudo", 0), metrics,
                           0, sync, time.perf_counter() - t0, why, timings)

    if reason is not None:
        return stopped(reason)

    # -- pseudo-label the pool -----------------------------------------------------------------
    pred_dir = rdir / "predictions"
    if not ledger.stage_done(rid, "pseudo_label"):
        s = time.perf_counter()
        pseudo_label(model, pool, pred_dir, batch_size=cfg.model.infer_batch_size, progress=progress)
        n_pseudo = 0
        if is_detection(cfg):
            df, preds = load_box_predictions(pred_dir)
            if cfg.pseudo.enabled:
                n_pseudo = ledger.add_labels(detection.confident(
                    cfg, preds, {it.id: it for it in ledger.items("pool")}, ledger.human_labelled_ids(), rid,
                    model.model_version))
            scores = detection.image_scores(cfg, preds, {it.id: it for it in pool})
            late_stop = pool_stop_reason(cfg, rid, df, None, scores=scores)
        else:
            df, probs, _ = load_predictions(pred_dir)
            if cfg.pseudo.enabled:
                n_pseudo = ledger.add_labels(_confident(cfg, ledger, df, probs, rid, model.model_version))
            late_stop = pool_stop_reason(cfg, rid, df, probs)
        done("pseudo_label", {"scored": len(df), "pseudo_labels": n_pseudo, "stop": late_stop})
        timings["pseudo_label"] = time.perf_counter() - s
        log(f"  pseudo-label: {len(df)} pool items scored, {n_pseudo} confident pseudo-labels kept")
    late_stop = (ledger.stage_info(rid, "pseudo_label") or {}).get("stop")
    if late_stop is not None:
        return stopped(late_stop)

    # -- select --------------------------------------------------------------------------------
    sel_csv = rdir / "selection.csv"
    if not ledger.stage_done(rid, "select") or not sel_csv.exists():
        s = time.perf_counter()
        budget_left = cfg.stop.label_budget - labels_used(ledger) - len(ledger.review_tasks(state="queued"))
        if is_detection(cfg):
            rows = _select_detection(cfg, ledger, model, pool, pred_dir, budget_left, rid)
        else:
            rows = _select_classification(cfg, ledger, model, pool, pred_dir, budget_left, rid)
        out = pd.DataFrame(rows, columns=["rank", "item_id", "score", "predicted", "confidence", "row", "strategy"])
        atomic_write_text(sel_csv, out.to_csv(index=False))
        # "schedule:margin" when the configured strategy delegated to another this round.
        ran = sorted({r["strategy"] for r in rows}) or [cfg.selection.strategy]
        done("select", {"selected": len(out), "strategy": ran[0]})
        timings["select"] = time.perf_counter() - s

    # -- push to Label Studio ------------------------------------------------------------------
    queued = 0
    if not ledger.stage_done(rid, "push"):
        s = time.perf_counter()
        sel_df = pd.read_csv(sel_csv)
        if reviewer is not None and len(sel_df):
            cands = _candidates(cfg, ledger, model, pred_dir, sel_df)
            tasks = reviewer.submit(cands, round_id=rid, model_version=model.model_version)
            queued = ledger.record_tasks(reviewer.project_title, rid, tasks,
                                         scores={c.item.id: c.score for c in cands})
            log(f"  push: {len(tasks)} tasks in Label Studio ({queued} new)")
        relabel = 0
        if reviewer is not None and cfg.quality.enabled and not is_detection(cfg):
            relabel = _push_relabel(cfg, ledger, reviewer, model, rid, log=log)
        done("push", {"queued": queued, "relabel": relabel})
        timings["push"] = time.perf_counter() - s
    else:
        queued = (ledger.stage_info(rid, "push") or {}).get("queued", 0)

    ledger.finish_round(rid)
    return RoundResult(rid, resumed, metrics["labels_used"], train_info.get("pseudo", 0), metrics,
                       queued, sync, time.perf_counter() - t0, None, timings)


def _push_relabel(cfg: Config, ledger: Ledger, reviewer: Any, model: Any, rid: int, *,
                  log: Callable[[str], None]) -> int:
    """Label-quality check (confident learning, :mod:`pseudolabel.quality`): seed / human labels
    that cross-validated models strongly disagree with are sent back for a second review,
    flagged in Label Studio ("Second review: ... the model suggests X"). Each label is sent
    back once (recorded in the ledger before the push: a crash never asks twice)."""
    from pseudolabel.quality import label_issues, out_of_sample_probs, relabel_candidates

    asked: dict[str, int] = ledger.get_meta("relabel_requested", {}) or {}
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
    ledger.set_meta("relabel_requested", asked | {c.item.id: rid for c in cands})
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
    return [{"rank": rank, "item_id": df.at[i, "item_id"], "score": float(sc), "predicted": df.at[i, "label"],
             "confidence": float(df.at[i, "confidence"]), "row": int(i), "strategy": sel.strategy}
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
        for rank, (i, sc) in enumerate(zip(sel.indices.tolist(), sel.scores.tolist())):
            rows.append({"rank": rank, "item_id": df.at[i, "item_id"], "score": float(sc),
                         "predicted": df.at[i, "label"], "confidence": float(df.at[i, "confidence"]),
                         "row": int(i), "strategy": sel.strategy})
    return rows


def _candidates(cfg: Config, ledger: Ledger, model: Any, pred_dir: Path, sel_df: pd.DataFrame) -> list[Candidate]:
    """The selected items as review candidates, each with the prediction to pre-draw."""
    cands = []
    if is_detection(cfg):
        df, preds = load_box_predictions(pred_dir)
        by_id = {p.item_id: p for p in preds}
        for r in sel_df.itertuples():
            pred = detection.predraw(by_id[r.item_id], cfg.selection.predraw_conf)
            cands.append(Candidate(item=ledger.item(r.item_id), score=float(r.score), prediction=pred,
                                   strategy=cfg.selection.strategy))
        return cands
    df, probs, emb = load_predictions(pred_dir)
    pos = {iid: j for j, iid in enumerate(df["item_id"])}
    for r in sel_df.itertuples():
        j = pos[r.item_id]
        pred = Prediction(item_id=r.item_id, model_version=model.model_version, probs=probs[j], embedding=emb[j])
        cands.append(Candidate(item=ledger.item(r.item_id), score=float(r.score), prediction=pred,
                               strategy=cfg.selection.strategy))
    return cands


def _confident(cfg: Config, ledger: Ledger, df: pd.DataFrame, probs: np.ndarray, rid: int,
               model_version: str) -> list[Annotation]:
    """Confident predictions as pseudo-labels (never for items a human or the seed labelled).

    Thresholds per class: ``pseudo.mode`` ``global`` uses ``pseudo.threshold`` for every
    class; ``flexmatch`` / ``freematch`` scale it per class by how well the class is learned
    (see :mod:`pseudolabel.selftrain`; FreeMatch's EMA state is kept in the ledger across
    rounds); ``pseudo.class_thresholds`` overrides single classes. ``pseudo.max_per_class``
    keeps the most confident per class, so one easy class cannot flood the training set.
    """
    from pseudolabel.selftrain import FreeMatchState, class_thresholds

    human = ledger.human_labelled_ids()
    items = {it.id: it for it in ledger.items("pool")}
    if not len(probs):
        return []
    human_mask = df["item_id"].isin(human).to_numpy()
    state = None
    saved = ledger.get_meta("freematch_state")
    if cfg.pseudo.mode == "freematch" and saved:
        state = FreeMatchState(tau=float(saved["tau"]), class_probs=np.asarray(saved["class_probs"]))
    thr, new_state = class_thresholds(probs, threshold=cfg.pseudo.threshold, mode=cfg.pseudo.mode,
                                      human_mask=human_mask, state=state)
    if new_state is not None:
        ledger.set_meta("freematch_state", {"tau": float(new_state.tau),
                                            "class_probs": [float(v) for v in new_state.class_probs]})
    for c, t in cfg.pseudo.class_thresholds.items():
        thr[cfg.classes.index(c)] = t
    ledger.update_round(rid, info={"pseudo_thresholds": {c: round(float(t), 4) for c, t in zip(cfg.classes, thr)}})
    conf, pred = probs.max(1), probs.argmax(1)
    keep = np.flatnonzero((conf >= thr[pred]) & ~human_mask)
    per_class: dict[str, int] = {}
    out: list[Annotation] = []
    for j in keep[np.argsort(-conf[keep], kind="stable")]:
        iid = df.at[int(j), "item_id"]
        label = cfg.classes[int(pred[j])]
        if cfg.pseudo.max_per_class is not None and per_class.get(label, 0) >= cfg.pseudo.max_per_class:
            continue
        per_class[label] = per_class.get(label, 0) + 1
        out.append(Annotation(item=items[iid], label=label, source="pseudo", round=rid,
                              model_version=model_version, weight=cfg.pseudo.weight))
    return out
