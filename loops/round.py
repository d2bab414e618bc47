"""One scheduled labelling round, as its stages in order, resumable.

    ingest + sync -> [open round] -> train -> evaluate -> stop_check -> pseudo_label -> select -> push

Each stage is a small function below; :meth:`_Round.stage` is the one place that decides
whether a stage runs (not yet recorded in the ledger) or is resumed from its record, so a
round killed at any point continues at the first stage not recorded. Outputs are written
atomically under ``<workdir>/rounds/NNNN/``. Everything that differs between classification,
detection and segmentation is the task's (:mod:`pseudolabel.tasks`); models are built and
loaded through :mod:`pseudolabel.models.registry`. A push is exactly-once against Label Studio
(see :mod:`pseudolabel.review.client`).

Why this module is over 400 lines: the round's stages (train, evaluate, stop check,
pseudo-label, select, push) are each a small function, kept in one module so the round reads top
to bottom in order.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import pandas as pd

from loops.ingest import holdout_truth, ingest, recheck_before_push
from loops.review import Collector, pending_adjudications, sync_reviews
from loops.stop import labels_used, last_trained, pool_stop_reason, stop_reason, training_signature, why_idle
from pseudolabel.config import Config, dump_config
from pseudolabel.data.ledger import Ledger
from pseudolabel.inference import pseudo_label
from pseudolabel.models import registry
from pseudolabel.models.base import capabilities
from pseudolabel.report import report_round
from pseudolabel.selftrain import class_cap
from pseudolabel.tasks import PoolPredictions, PseudoContext, Task, task_for
from pseudolabel.types import Annotation, Candidate, Item
from pseudolabel.utils import atomic_write_text

STAGES = ("sync", "train", "evaluate", "stop_check", "pseudo_label", "select", "push")
"""The stages of a round, in the order they run and are recorded."""


class Reviewer(Collector, Protocol):
    """What a round needs from the review back end (the Label Studio client; the in-process
    oracle of the benchmarks): what a sync needs (:class:`~loops.review.Collector`), and
    pushing tasks and checking that images are served."""

    def push(self, candidates: Sequence[Candidate], *, round_id: int, model_version: str,
             refresh: Sequence[Candidate] = ()) -> dict[str, int]:
        """Queue ``candidates`` for review and give the still-queued ``refresh`` tasks the
        current prediction; returns item id -> task id of ``candidates``."""

    def check_image(self, path: Path) -> None:
        """Raise unless the review back end serves the image at ``path``."""


@runtime_checkable
class Relabeller(Protocol):
    """A review back end that takes labels back for a second review (the Label Studio client)."""

    project_title: str

    def submit_relabel(self, candidates: Sequence[Candidate], *, round_id: int,
                       model_version: str | None = None) -> dict[str, int]:
        """Queue labels sent back for a second look; item id -> task id."""


@dataclass
class RoundResult:
    """What a round did. ``idle`` is set (and nothing ran) when the campaign had stopped or
    there was nothing new to learn from; ``stop_reason`` when a stop rule fired in it."""

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
    """``<workdir>/rounds/NNNN``: the round's outputs."""
    return cfg.workdir / "rounds" / f"{round_id:04d}"


def ledger_for(cfg: Config) -> Ledger:
    """The campaign's ledger (``<workdir>/ledger.sqlite``)."""
    return Ledger(cfg.workdir / "ledger.sqlite")


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
    review queue is full (:func:`loops.stop.why_idle`). Such a call returns a result with
    ``idle`` set and ``round_id`` the last round. ``force`` also ignores the stop rules in
    this round. A round that ran writes its HTML report (a failure there is a warning).
    """
    own = ledger is None
    led = ledger_for(cfg) if ledger is None else ledger
    try:
        res = _run_round(cfg, reviewer, led, progress=progress, force=force, log=log)
        if res.idle is None:
            report_round(cfg, led, res.round_id, log=log)
        return res
    finally:
        if own:
            led.close()


@dataclass
class _Round:
    """What the stages of one round share."""

    cfg: Config
    task: Task
    reviewer: Reviewer | None
    ledger: Ledger
    rid: int
    resumed: bool
    log: Callable[[str], None]
    progress: bool
    force: bool
    timings: dict[str, float] = field(default_factory=dict)
    model: Any = None
    _preds: PoolPredictions | None = None

    @property
    def dir(self) -> Path:
        return round_dir(self.cfg, self.rid)

    @property
    def pred_dir(self) -> Path:
        return self.dir / "predictions"

    def predictions(self) -> PoolPredictions:
        """This round's pool predictions (read once from the shards)."""
        if self._preds is None:
            self._preds = self.task.read_predictions(self.pred_dir)
        return self._preds

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
    if ledger.running_round() is None:
        idle = why_idle(cfg, ledger, force=force)
        if idle is not None:
            log(f"  {idle}")
            last: dict[str, Any] = ledger.rounds()[-1] if ledger.rounds() else {"id": 0, "metrics": {}}
            return RoundResult(int(last["id"]), False, labels_used(ledger), 0, last["metrics"] or {}, 0, sync,
                               time.perf_counter() - t0, idle=idle)
    rid, resumed = ledger.open_round(config=cfg.snapshot())
    r = _Round(cfg, task_for(cfg), reviewer, ledger, rid, resumed, log, progress, force)
    r.dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, r.dir / "config.yaml")
    log(f"round {rid}" + (" (resuming)" if resumed else ""))

    r.stage("sync", lambda: sync)
    train = r.stage("train", lambda: _train(r), redo=lambda: not (r.dir / "model.pt").exists())
    if r.model is None:
        r.model = registry.load(r.dir / "model.pt", cfg=cfg)
    r.stage("evaluate", lambda: _evaluate(r, train))
    metrics = ledger.round(rid)["metrics"]
    log("  holdout: " + r.task.metrics_line(metrics))
    if r.task.per_class(metrics):
        log(f"  per class: {r.task.per_class_name} " + ", ".join(
            f"{c} {'n/a' if v is None else f'{v:.2f}'}" for c, v in r.task.per_class(metrics).items()))

    labelled = ledger.human_labelled_ids()
    scored = [it for it in ledger.items("pool") if it.id not in labelled]          # queued items included
    queued = ledger.queued_item_ids()
    selectable = [it for it in scored if it.id not in queued]
    reason = None if force else stop_reason(cfg, ledger, rid, metrics, len(selectable))
    r.stage("stop_check", lambda: {"stop": reason, "forced": force})
    if reason is not None:
        return _stopped(r, reason, metrics, train, sync, t0)

    pseudo = r.stage("pseudo_label", lambda: _pseudo_label(r, scored, metrics, train))
    if pseudo.get("stop") is not None and not force:
        return _stopped(r, pseudo["stop"], metrics, train, sync, t0)
    r.stage("select", lambda: _select(r, selectable), redo=lambda: not (r.dir / "selection.csv").exists())
    push = r.stage("push", lambda: _push(r))
    ledger.finish_round(rid)
    return RoundResult(rid, resumed, metrics["labels_used"], train.get("pseudo", 0), metrics,
                       int(push.get("queued", 0)), sync, time.perf_counter() - t0, None, r.timings,
                       pseudo_per_class=pseudo.get("per_class", {}))


# -- stages --------------------------------------------------------------------------------------
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


def training_set(cfg: Config, ledger: Ledger, task: Task | None = None) -> tuple[list[Annotation], int, int]:
    """Seed + human labels (+ the latest pseudo-labels when enabled), outside the holdout:
    ``(annotations, n seed/human, n pseudo)``. Items whose reviewers disagreed and that wait for
    an adjudicator are left out: their current label is one disputed answer."""
    task = task or task_for(cfg)
    exclude = {it.id for it in ledger.items("holdout")}
    if cfg.review.overlap > 1:
        exclude |= set(pending_adjudications(ledger, cfg.label_studio.project_title or cfg.project))
    items = {it.id: it for it in ledger.items()}
    train: list[Annotation] = []
    n_human = n_pseudo = 0
    for item_id, row in ledger.current_labels().items():
        if item_id in exclude or not task.trains_on(row.label, row.boxes):
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


def _train(r: _Round) -> dict[str, Any]:
    """Train this round's model, or reuse the last one when nothing it learns from changed."""
    cfg, ledger = r.cfg, r.ledger
    weights = r.dir / "model.pt"
    signature = training_signature(cfg, ledger)
    prev = last_trained(ledger)
    train, n_human, n_pseudo = training_set(cfg, ledger, r.task)
    if prev is not None and prev["signature"] == signature and prev["round"] != r.rid \
            and (round_dir(cfg, prev["round"]) / "model.pt").exists():
        shutil.copyfile(round_dir(cfg, prev["round"]) / "model.pt", weights)
        r.model = registry.load(weights, cfg=cfg)
        r.log(f"  train: skipped: the labels are those of round {prev['round']}'s model (no new answers); "
              f"reusing model {r.model.model_version}")
        ledger.update_round(r.rid, model_version=r.model.model_version, info={"train_counts": {
            "human_or_seed": prev.get("human_or_seed", n_human), "pseudo": prev.get("pseudo", 0)}})
        return {**{k: v for k, v in prev.items() if k != "round"}, "reused_from": prev["round"]}
    classes_present = {a.label for a in train if a.source != "pseudo"} | {
        b.label for a in train if a.source != "pseudo" for b in a.boxes} - {None}
    previous = round_dir(cfg, r.rid - 1) / "model.pt" if r.rid > 1 else None
    model = registry.build(cfg, n_train=len(train), progress=r.progress, previous=previous,
                           pool=lambda: ledger.items("pool"))
    plan = registry.training_plan(cfg, len(train))
    r.log(f"  train: {n_human} human/seed + {n_pseudo} pseudo labels, {len(classes_present)} classes; "
          f"{plan['epochs']} epochs x {plan['steps_per_epoch']} steps = {plan['steps']} steps"
          + (f" (model.min_steps {cfg.model.min_steps} raised model.epochs {cfg.model.epochs})"
             if plan["epochs"] > cfg.model.epochs else ""))
    if cfg.consistency.enabled and "unlabelled" in capabilities(model):
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


def _evaluate(r: _Round, train: Mapping[str, Any]) -> dict[str, Any]:
    """Holdout metrics (reused with a reused model) into the ledger and ``metrics.json``."""
    cfg, ledger = r.cfg, r.ledger
    reused = train.get("reused_from")
    if reused is not None and ledger.round(int(reused))["metrics"]:
        metrics = dict(ledger.round(int(reused))["metrics"])
        metrics["labels_used"] = labels_used(ledger)
    else:
        metrics = r.task.evaluate(r.model, ledger.items("holdout"), holdout_truth(cfg, ledger), r.dir)
        metrics |= {"labels_used": labels_used(ledger), "pseudo_used": train.get("pseudo", 0),
                    "model_version": r.model.model_version}
    atomic_write_text(r.dir / "metrics.json", json.dumps(metrics, indent=2))
    ledger.update_round(r.rid, metrics=metrics)
    return {}


def _stopped(r: _Round, why: str, metrics: Mapping[str, Any], train: Mapping[str, Any],
             sync: dict[str, Any], t0: float) -> RoundResult:
    r.ledger.update_round(r.rid, info={"stop": why})
    r.ledger.set_termination(why, round_id=r.rid)
    r.ledger.finish_round(r.rid, status="stopped")
    r.log(f"  stop: {why}")
    return RoundResult(r.rid, r.resumed, metrics["labels_used"], train.get("pseudo", 0), dict(metrics),
                       0, sync, time.perf_counter() - t0, why, r.timings)


def class_gate(cfg: Config, metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """Classes that get no pseudo-labels: their holdout per-class score (F1 for
    classification, AP50 for detection) is below ``pseudo.min_class_score``. Class → score."""
    per = task_for(cfg).per_class(metrics)
    floor = cfg.pseudo.min_class_score
    if not per or floor <= 0:
        return {}
    return {c: v for c, v in per.items() if v is None or float(v) < floor}


def pseudo_cap(cfg: Config, ledger: Ledger) -> int | None:
    """Pseudo-labels allowed per class this round (see :func:`pseudolabel.selftrain.class_cap`)."""
    holdout = {it.id for it in ledger.items("holdout")}
    n = len(ledger.human_labelled_ids() - holdout)
    return class_cap(max_per_class=cfg.pseudo.max_per_class, max_ratio=cfg.pseudo.max_ratio, n_labelled=n,
                     n_classes=len(cfg.classes))


def _pseudo_label(r: _Round, scored: Sequence[Item], metrics: Mapping[str, Any],
                  train: Mapping[str, Any]) -> dict[str, Any]:
    """Score the pool (queued items too), keep this round's confident pseudo-labels, and check
    the stop rules that need the pool's predictions."""
    cfg, ledger, model = r.cfg, r.ledger, r.model
    reused = train.get("reused_from")
    if reused is not None:
        _link_predictions(round_dir(cfg, int(reused)) / "predictions", r.pred_dir)
    pseudo_label(model, scored, r.pred_dir, batch_size=cfg.model.infer_batch_size, progress=r.progress)
    preds = r.predictions()
    pool = {it.id: it for it in ledger.items("pool")}
    gated = class_gate(cfg, metrics)
    new: list[Annotation] = []
    if cfg.pseudo.enabled:
        ctx = PseudoContext(items=pool, labelled=ledger.human_labelled_ids(), round_id=r.rid,
                            model_version=model.model_version, skip_classes=set(gated),
                            cap=pseudo_cap(cfg, ledger), ledger=ledger)
        new = r.task.confident(preds, ctx)
    n_pseudo = ledger.add_labels(new)
    per_class: dict[str, int] = {c: 0 for c in cfg.classes}
    for a in new:
        for name in ([a.label] if a.label is not None else sorted({b.label for b in a.boxes})):
            per_class[name] = per_class.get(name, 0) + 1
    if gated:
        r.log("  pseudo-label: no pseudo-labels for " + ", ".join(
            f"{c} (holdout {r.task.per_class_name} {'n/a' if v is None else f'{v:.2f}'})" for c, v in gated.items())
              + f": below pseudo.min_class_score {cfg.pseudo.min_class_score}")
    r.log(f"  pseudo-label: {len(preds)} pool items scored, {n_pseudo} confident pseudo-labels kept"
          + (" (" + ", ".join(f"{c} {n}" for c, n in per_class.items() if n) + ")" if n_pseudo else ""))
    previous = None
    prev_dir = round_dir(cfg, r.rid - 1) / "predictions"
    if cfg.stop.stable_kappa is not None and r.rid > 1 and prev_dir.exists():
        previous = r.task.read_predictions(prev_dir)
    late_stop = pool_stop_reason(cfg, preds.subset({it.id for it in scored}), previous, pool)
    blocked = ledger.human_labelled_ids() | ledger.queued_item_ids()
    selectable = sum(1 for iid in preds.item_ids if iid not in blocked)
    return {"scored": len(preds), "pseudo_labels": n_pseudo, "per_class": per_class, "gated": sorted(gated),
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


def _labelled_items(ledger: Ledger) -> list[Item]:
    labelled = ledger.human_labelled_ids() - {it.id for it in ledger.items("holdout")}
    return [it for it in ledger.items() if it.id in labelled]


def _select(r: _Round, selectable: Sequence[Item]) -> dict[str, Any]:
    """Pick up to ``selection.batch_size`` new items, topping the review queue up to
    ``selection.max_queued`` within the label budget; writes ``selection.csv``."""
    cfg, ledger = r.cfg, r.ledger
    waiting = len(ledger.review_tasks(state="queued"))
    cap = cfg.selection.max_queued or cfg.selection.batch_size
    budget_left = cfg.stop.label_budget - labels_used(ledger) - waiting
    room = max(0, min(budget_left, cap - waiting))
    items = {it.id: it for it in selectable}
    preds = r.predictions().subset(items)
    k = max(0, min(cfg.selection.batch_size, room, len(preds)))
    rows: list[dict[str, Any]] = []
    if k:
        sel = r.task.select(r.model, preds, k=k, items=items, labelled=_labelled_items(ledger), round_id=r.rid)
        u = r.task.uncertainty(preds, items)
        for rank, (i, sc) in enumerate(zip(sel.indices.tolist(), sel.scores.tolist())):
            rows.append({"rank": rank, "item_id": preds.frame.at[i, "item_id"], "score": float(sc),
                         "uncertainty": float(u[i]), "predicted": preds.frame.at[i, "label"],
                         # pandas-stubs type a cell as any scalar; this column holds floats
                         "confidence": float(cast(float, preds.frame.at[i, "confidence"])), "row": int(i),
                         "strategy": sel.strategy or cfg.selection.strategy})
    out = pd.DataFrame(rows, columns=["rank", "item_id", "score", "uncertainty", "predicted", "confidence", "row",
                                      "strategy"])
    atomic_write_text(r.dir / "selection.csv", out.to_csv(index=False))
    if room < cfg.selection.batch_size:
        r.log(f"  select: {len(out)} new tasks ({waiting} still waiting for reviewers; the queue holds "
              f"selection.max_queued {cap}" + (f", label budget left {budget_left}" if budget_left < cap else "") + ")")
    # "schedule:margin" when the configured strategy delegated to another this round.
    ran = sorted({row["strategy"] for row in rows}) or [cfg.selection.strategy]
    return {"selected": len(out), "strategy": ran[0], "waiting": waiting}


def _candidates(r: _Round, ids: Sequence[str], *, strategies: Mapping[str, str] | None = None) -> list[Candidate]:
    """Items as review candidates: the prediction a reviewer sees (and its note), and the
    item's uncertainty under this round's model as the score (the review order)."""
    preds = r.predictions().subset(set(ids))
    items = {i: r.ledger.item(i) for i in preds.item_ids}
    u = dict(zip(preds.item_ids, r.task.uncertainty(preds, items)))
    by_id = dict(zip(preds.item_ids, preds.predictions))
    out = []
    for iid in ids:
        if iid not in by_id:
            continue
        shown, note = r.task.review_prediction(by_id[iid])
        out.append(Candidate(item=items[iid], score=float(u[iid]), prediction=shown,
                             strategy=(strategies or {}).get(iid, r.cfg.selection.strategy), note=note))
    return out


def _push(r: _Round) -> dict[str, Any]:
    """Queue the selection in Label Studio; tasks of earlier rounds still waiting get this
    round's prediction and place in the order; the label-quality check may send labels back."""
    cfg, ledger, reviewer, model = r.cfg, r.ledger, r.reviewer, r.model
    if reviewer is None:
        return {"queued": 0}
    sel = pd.read_csv(r.dir / "selection.csv")
    # Files deleted or changed since the scan are not pushed (quarantined, item gone).
    cands = recheck_before_push(cfg, ledger, _candidates(r, list(sel["item_id"]), strategies=dict(
        zip(sel["item_id"], sel["strategy"].astype(str)))), log=r.log)
    waiting = sorted({t["item_id"] for t in ledger.review_tasks(reviewer.project_title, state="queued")})
    again = _candidates(r, waiting)
    if cands:
        reviewer.check_image(cands[0].item.path)
    tasks = reviewer.push(cands, round_id=r.rid, model_version=model.model_version, refresh=again)
    # Tasks an interrupted push left in Label Studio were adopted by the sync; recorded here
    # they are not new rows, but they are this round's tasks all the same.
    new_rows = ledger.record_tasks(reviewer.project_title, r.rid, tasks, scores={c.item.id: c.score for c in cands})
    r.log(f"  push: {len(tasks)} tasks in Label Studio ({new_rows} new in the ledger); {len(again)} queued tasks of "
          f"earlier rounds re-ranked with model {model.model_version}")
    relabel = _push_relabel(r) if cfg.quality.enabled else 0
    return {"queued": len(tasks), "relabel": relabel, "refreshed": len(again)}


def _push_relabel(r: _Round) -> int:
    """Label-quality check (confident learning, :mod:`pseudolabel.quality`; classification):
    seed / human labels that cross-validated models strongly disagree with are sent back for a
    second review, flagged in Label Studio ("Second review: ... the model suggests X"). Each
    label is sent back once (recorded in the ledger before the push: a crash never asks twice)."""
    from pseudolabel.quality import label_issues, out_of_sample_probs, relabel_candidates

    cfg, ledger, reviewer, model = r.cfg, r.ledger, r.reviewer, r.model
    if not isinstance(reviewer, Relabeller):
        r.log(f"  quality: {type(reviewer).__name__} takes no second reviews (Label Studio does); labels not checked")
        return 0
    asked: dict[str, int] = ledger.relabel_requests()
    train, _, _ = training_set(cfg, ledger, r.task)
    labelled = [a for a in train if a.source != "pseudo"]
    if len(labelled) < cfg.quality.min_labels:
        r.log(f"  quality: {len(labelled)} labels < quality.min_labels {cfg.quality.min_labels}; not checked yet")
        return 0
    oos = out_of_sample_probs(lambda: registry.build(cfg, n_train=len(labelled)), labelled,
                              folds=cfg.quality.folds, seed=cfg.model.seed, batch_size=cfg.model.infer_batch_size)
    issues = [i for i in label_issues([a.label for a in labelled], oos, classes=cfg.classes)
              if labelled[i.index].item.id not in asked][: cfg.quality.max_per_round]
    if not issues:
        r.log(f"  quality: {len(labelled)} labels checked, none suspicious")
        return 0
    cands = relabel_candidates(labelled, oos, issues, model_version=model.model_version)
    ledger.add_relabel_requests({c.item.id: r.rid for c in cands})
    tasks = reviewer.submit_relabel(cands, round_id=r.rid, model_version=model.model_version)
    ledger.record_tasks(reviewer.project_title, r.rid, dict(tasks), kind="relabel",
                        scores={c.item.id: c.score for c in cands})
    r.log(f"  quality: {len(labelled)} labels checked, {len(cands)} sent back for a second review")
    return len(cands)
