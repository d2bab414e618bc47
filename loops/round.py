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

from loops.review import SyncResult, sync_reviews
from pseudolabel.config import Config, dump_config
from pseudolabel.data.formats import read_labels
from pseudolabel.data.ingest import scan_folder, write_quarantine_csv
from pseudolabel.data.ledger import Ledger
from pseudolabel.inference import load_predictions, pseudo_label
from pseudolabel.metrics import classification_metrics
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.stopping import StoppingRules, check_all
from pseudolabel.strategies import entropy, select, uses_labelled_embeddings
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
    newly dropped images join it. Returns counts of what was new.
    """
    seed = read_labels(cfg.data.seed.format, cfg.data.seed.path, classes=cfg.classes,
                       image_root=cfg.data.seed.image_root)
    holdout = read_labels(cfg.data.holdout.format, cfg.data.holdout.path, classes=cfg.classes,
                          image_root=cfg.data.holdout.image_root)
    pool = scan_folder(cfg.data.pool.path, recursive=cfg.data.pool.recursive, progress=progress)
    new = {
        "holdout": ledger.add_items(holdout.items, split="holdout"),
        "seed": ledger.add_items(seed.items, split="seed"),
        "pool": ledger.add_items(pool.items, split="pool"),
    }
    have_seed = {r.item_id for r in ledger.all_labels(source="seed")}
    ledger.add_labels(
        Annotation(item=it, label=seed.labels[it.id], source="seed", round=0)
        for it in seed.items if it.id not in have_seed
    )
    ledger.set_meta("holdout_truth", {it.id: holdout.labels[it.id] for it in holdout.items})
    quarantined = [*seed.quarantined, *holdout.quarantined, *pool.quarantined]
    if quarantined:
        write_quarantine_csv(cfg.workdir / "quarantine.csv", quarantined)
    new["quarantined"] = len(quarantined)
    return new


def labels_used(ledger: Ledger) -> int:
    return len(ledger.human_labelled_ids())


def _training_set(cfg: Config, ledger: Ledger) -> tuple[list[Annotation], int, int]:
    holdout = {it.id for it in ledger.items("holdout")}
    items = {it.id: it for it in ledger.items()}
    train: list[Annotation] = []
    n_human = n_pseudo = 0
    for item_id, row in ledger.current_labels().items():
        if item_id in holdout or row.label is None:
            continue
        if row.source == "pseudo":
            if not cfg.pseudo.enabled:
                continue
            n_pseudo += 1
        else:
            n_human += 1
        train.append(Annotation(item=items[item_id], label=row.label, source=row.source,
                                round=row.round, weight=row.weight))
    return train, n_human, n_pseudo


def _build_model(cfg: Config, *, progress: bool) -> TorchvisionClassifier:
    m = cfg.model
    return TorchvisionClassifier(
        classes=cfg.classes, arch=m.arch, image_size=m.image_size, epochs=m.epochs,
        batch_size=m.batch_size, lr=m.lr, device=m.device, seed=m.seed, weights=m.weights,
        min_steps=m.min_steps, progress=progress,
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


def pool_stop_reason(cfg: Config, round_id: int, df: pd.DataFrame, probs: np.ndarray) -> str | None:
    """Stop rules on the pool predictions: consecutive models agree (Cohen's kappa on the
    items both scored), or the pool's mean normalised entropy is low."""
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
            prev_labels, cur_labels = common["label_prev"].to_numpy(), common["label_cur"].to_numpy()
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
            res = sync_reviews(ledger, reviewer, round_id=rid)
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
        classes_present = {a.label for a in train if a.source != "pseudo"}
        log(f"  train: {n_human} human/seed + {n_pseudo} pseudo labels, {len(classes_present)} classes")
        model = _build_model(cfg, progress=progress).fit(train)
        model.save(weights)
        ledger.update_round(rid, model_version=model.model_version,
                            info={"train_counts": {"human_or_seed": n_human, "pseudo": n_pseudo}})
        done("train", {"human_or_seed": n_human, "pseudo": n_pseudo, "model_version": model.model_version})
        timings["train"] = time.perf_counter() - s
    else:
        model = TorchvisionClassifier.load(weights)
    train_info = ledger.stage_info(rid, "train") or {}

    # -- evaluate on the holdout ---------------------------------------------------------------
    if not ledger.stage_done(rid, "evaluate"):
        s = time.perf_counter()
        holdout = ledger.items("holdout")
        truth: dict[str, str] = ledger.get_meta("holdout_truth", {})
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
    log(f"  holdout: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")

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
        df, probs, _ = load_predictions(pred_dir)
        n_pseudo = 0
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
        df, probs, emb = load_predictions(pred_dir)
        pool_ids = {it.id for it in pool}
        mask = df["item_id"].isin(pool_ids).to_numpy()
        df, probs, emb = df[mask].reset_index(drop=True), probs[mask], emb[mask]
        budget_left = cfg.stop.label_budget - labels_used(ledger) - len(ledger.review_tasks(state="queued"))
        k = max(0, min(cfg.selection.batch_size, budget_left, len(df)))
        rows = []
        if k > 0:
            lab_emb = None
            if uses_labelled_embeddings(cfg.selection.strategy):
                labelled = ledger.human_labelled_ids() - {it.id for it in ledger.items("holdout")}
                lab_items = [it for it in ledger.items() if it.id in labelled]
                _, lab_emb = model.predict_proba_embed(lab_items, batch_size=cfg.model.infer_batch_size)
            mc = None
            if cfg.selection.strategy == "bald":
                from pseudolabel.strategies.bayesian import mc_dropout_probs

                by_id = {it.id: it for it in pool}
                mc = mc_dropout_probs(model, [by_id[i] for i in df["item_id"]], T=cfg.selection.mc_samples,
                                      batch_size=cfg.model.infer_batch_size, seed=cfg.selection.seed + rid)
            sel = select(cfg.selection.strategy, k=k, probs=probs, embeddings=emb, mc_probs=mc,
                         labelled_embeddings=lab_emb, class_balance=cfg.selection.class_balance,
                         hybrid_factor=cfg.selection.hybrid_factor, uncertainty=cfg.selection.uncertainty,
                         seed=cfg.selection.seed + rid)
            for rank, (i, sc) in enumerate(zip(sel.indices.tolist(), sel.scores.tolist())):
                rows.append({"rank": rank, "item_id": df.at[i, "item_id"], "score": float(sc),
                             "predicted": df.at[i, "label"], "confidence": float(df.at[i, "confidence"]),
                             "row": int(i)})
        out = pd.DataFrame(rows, columns=["rank", "item_id", "score", "predicted", "confidence", "row"])
        atomic_write_text(sel_csv, out.to_csv(index=False))
        done("select", {"selected": len(out), "strategy": cfg.selection.strategy})
        timings["select"] = time.perf_counter() - s

    # -- push to Label Studio ------------------------------------------------------------------
    queued = 0
    if not ledger.stage_done(rid, "push"):
        s = time.perf_counter()
        sel_df = pd.read_csv(sel_csv)
        if reviewer is not None and len(sel_df):
            df, probs, emb = load_predictions(pred_dir)
            pos = {iid: j for j, iid in enumerate(df["item_id"])}
            cands = []
            for r in sel_df.itertuples():
                j = pos[r.item_id]
                pred = Prediction(item_id=r.item_id, model_version=model.model_version,
                                  probs=probs[j], embedding=emb[j])
                cands.append(Candidate(item=ledger.item(r.item_id), score=float(r.score),
                                       prediction=pred, strategy=cfg.selection.strategy))
            tasks = reviewer.submit(cands, round_id=rid, model_version=model.model_version)
            queued = ledger.record_tasks(reviewer.project_title, rid, tasks,
                                         scores={c.item.id: c.score for c in cands})
            log(f"  push: {len(tasks)} tasks in Label Studio ({queued} new)")
        done("push", {"queued": queued})
        timings["push"] = time.perf_counter() - s
    else:
        queued = (ledger.stage_info(rid, "push") or {}).get("queued", 0)

    ledger.finish_round(rid)
    return RoundResult(rid, resumed, metrics["labels_used"], train_info.get("pseudo", 0), metrics,
                       queued, sync, time.perf_counter() - t0, None, timings)


def _confident(cfg: Config, ledger: Ledger, df: pd.DataFrame, probs: np.ndarray, rid: int,
               model_version: str) -> list[Annotation]:
    """Confident predictions as pseudo-labels (never for items a human or the seed labelled).

    ``pseudo.max_per_class`` keeps the most confident per class, so one easy class cannot
    flood the training set.
    """
    human = ledger.human_labelled_ids()
    items = {it.id: it for it in ledger.items("pool")}
    conf = probs.max(1)
    keep = np.flatnonzero(conf >= cfg.pseudo.threshold)
    per_class: dict[str, int] = {}
    out: list[Annotation] = []
    for j in keep[np.argsort(-conf[keep], kind="stable")]:
        iid = df.at[int(j), "item_id"]
        if iid in human:
            continue
        label = cfg.classes[int(probs[j].argmax())]
        if cfg.pseudo.max_per_class is not None and per_class.get(label, 0) >= cfg.pseudo.max_per_class:
            continue
        per_class[label] = per_class.get(label, 0) + 1
        out.append(Annotation(item=items[iid], label=label, source="pseudo", round=rid,
                              model_version=model_version, weight=cfg.pseudo.weight))
    return out
