"""Semi-supervised retraining run, for every task: human + seed labels plus confident
pseudo-labels, evaluated on the human-verified holdout, published only when it beats the
published model.

    teacher (trained on human + seed, or a given checkpoint) -> predict the pool
      -> pseudo-labels by the round's own policy (the task's ``confident`` with the class gate
         and the class-balance cap; ``pseudo.weight`` is each pseudo-label's constant loss
         weight, humans weigh 1) -> student trained on human + seed + pseudo -> holdout metrics
      -> accept / reject -> publish

Everything the run used and decided is written to ``candidate_dir``: ``model.pt``,
``metrics.json``, ``training_set.csv`` (item id, label, source, weight), the teacher's pool
predictions and ``retrain.json`` (counts by source, the decision and why). Publishing copies
the model to ``<workdir>/models/vN.pt`` with ``vN.metrics.json`` and repoints
``<workdir>/models/published.json``. The ledger keeps one line per run (``retrain_history``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loops.ingest import holdout_truth, ingest
from loops.round import class_gate, pseudo_cap, training_set
from pseudolabel.config import Config
from pseudolabel.data.ledger import Ledger
from pseudolabel.inference import pseudo_label
from pseudolabel.models import registry
from pseudolabel.models.base import capabilities
from pseudolabel.tasks import PseudoContext, task_for
from pseudolabel.types import Annotation, utcnow
from pseudolabel.utils import atomic_write_text


@dataclass
class RetrainResult:
    """``accepted``: the candidate was published; ``reason``: why (or why not);
    ``counts_by_source``: training items by label source (``seed``, ``human``, ``pseudo``);
    ``metrics``: the candidate's holdout metrics; ``published``: path of the published
    checkpoint when accepted; ``gated``: classes that got no pseudo-labels (the teacher's
    holdout score below ``pseudo.min_class_score``)."""

    accepted: bool
    reason: str
    counts_by_source: dict[str, int]
    metrics: dict[str, Any]
    published: Path | None = None
    gated: list[str] = field(default_factory=list)


def models_dir(cfg: Config) -> Path:
    """``<workdir>/models``: published checkpoints and the ``published.json`` pointer."""
    return cfg.workdir / "models"


def published_info(cfg: Config) -> dict[str, Any] | None:
    """The content of ``<workdir>/models/published.json``, or None before the first publish."""
    p = models_dir(cfg) / "published.json"
    return json.loads(p.read_text()) if p.is_file() else None


def retrain(
    cfg: Config,
    ledger: Ledger,
    *,
    candidate_dir: Path,
    previous_metrics: dict[str, Any] | None = None,
    teacher: Path | None = None,
    mode: Literal["global", "flexmatch", "freematch"] | None = None,
    min_gain: float = 0.0,
    progress: bool = False,
) -> RetrainResult:
    """Train a candidate on human + seed + confident pseudo-labels and publish it if better.

    - ``previous_metrics``: the metrics to beat; ``None`` reads the published model's
      (``published.json``); with nothing published the first candidate is accepted;
    - ``teacher``: checkpoint whose pool predictions choose the pseudo-labels; default: a
      teacher trained here on the human + seed labels;
    - ``mode``: overrides ``pseudo.mode`` (classification thresholds: global / flexmatch /
      freematch); ``cfg.pseudo.enabled = false`` trains on human + seed only; with
      ``cfg.consistency.enabled`` a student that can learn from unlabelled images also gets
      the pool (FixMatch consistency);
    - ``min_gain``: the candidate's ``cfg.stop.metric`` must exceed the previous one by more
      than this (0: strictly better) to be published.
    """
    if mode is not None and mode != cfg.pseudo.mode:
        cfg = cfg.model_copy(update={"pseudo": cfg.pseudo.model_copy(update={"mode": mode})})
    candidate_dir = Path(candidate_dir)
    candidate_dir.mkdir(parents=True, exist_ok=True)
    ingest(cfg, ledger)
    task = task_for(cfg)
    holdout = ledger.items("holdout")
    if not holdout:
        raise ValueError(f"{cfg.data.holdout.path}: the holdout is empty; a retrain needs a human-verified holdout")
    truth = holdout_truth(cfg, ledger)
    human = [a for a in training_set(cfg, ledger, task)[0] if a.source != "pseudo"]
    if not human:
        raise ValueError(f"no seed or human labels in {ledger.path}: nothing to train on")
    counts = {"seed": sum(a.source == "seed" for a in human), "human": sum(a.source == "human" for a in human),
              "pseudo": 0}

    pseudo: list[Annotation] = []
    gated: list[str] = []
    if cfg.pseudo.enabled:
        if teacher is not None:
            teacher_model = registry.load(teacher, cfg=cfg)
        else:
            teacher_model = registry.build(cfg, n_train=len(human), progress=progress,
                                           pool=lambda: ledger.items("pool")).fit(human)
        teacher_metrics = task.evaluate(teacher_model, holdout, truth, candidate_dir / "teacher")
        labelled = {a.item.id for a in human} | {it.id for it in holdout}
        pool = {it.id: it for it in ledger.items("pool") if it.id not in labelled}
        pseudo_label(teacher_model, list(pool.values()), candidate_dir / "teacher" / "predictions",
                     batch_size=cfg.model.infer_batch_size, progress=progress)
        preds = task.read_predictions(candidate_dir / "teacher" / "predictions")
        gated = sorted(class_gate(cfg, teacher_metrics))
        ctx = PseudoContext(items=pool, labelled=labelled, round_id=None, model_version=teacher_model.model_version,
                            skip_classes=set(gated), cap=pseudo_cap(cfg, ledger))
        pseudo = task.confident(preds, ctx)
        counts["pseudo"] = len(pseudo)

    train = human + pseudo
    model = registry.build(cfg, n_train=len(train), progress=progress, pool=lambda: ledger.items("pool"))
    if cfg.consistency.enabled and "unlabelled" in capabilities(model):
        # Consistency training also learns from the unlabelled pool images; never the holdout.
        model.fit(train, unlabelled=ledger.items("pool"))
    else:
        model.fit(train)
    model.save(candidate_dir / "model.pt")
    metrics = task.evaluate(model, holdout, truth, candidate_dir) | {
        "model_version": model.model_version, "train_counts": counts}
    atomic_write_text(candidate_dir / "metrics.json", json.dumps(metrics, indent=2))
    lines = ["item_id,label,source,weight"]
    for a in train:
        label = a.label if a.label is not None else task.truth_to_ledger(a.boxes)
        lines.append(f"{a.item.id},{json.dumps(label) if ',' in str(label) else label},{a.source},{a.weight:.6g}")
    atomic_write_text(candidate_dir / "training_set.csv", "\n".join(lines) + "\n")

    key = cfg.stop.metric
    if previous_metrics is None:
        prev_info = published_info(cfg)
        previous_metrics = prev_info["metrics"] if prev_info else None
    new = float(metrics[key])
    if previous_metrics is None or previous_metrics.get(key) is None:
        accepted, reason = True, f"first model: holdout {key} {new:.4f} (nothing published before)"
    else:
        old = float(previous_metrics[key])
        accepted = new > old + min_gain
        reason = (f"holdout {key} {new:.4f} {'>' if accepted else '<='} previous {old:.4f}"
                  + (f" + min_gain {min_gain}" if min_gain else ""))
    published = _publish(cfg, candidate_dir, metrics) if accepted else None
    shown = (*task.metric_names, task.per_class_key)
    record = {"accepted": accepted, "reason": reason, "counts_by_source": counts, "metric": key,
              "metrics": {k: metrics.get(k) for k in shown},
              "previous": previous_metrics and {k: previous_metrics.get(k) for k in task.metric_names},
              "mode": cfg.pseudo.mode, "gated": gated,
              "teacher": str(teacher) if teacher else "trained on human + seed",
              "candidate_dir": str(candidate_dir), "published": str(published) if published else None,
              "finished_at": utcnow().isoformat()}
    atomic_write_text(candidate_dir / "retrain.json", json.dumps(record, indent=2))
    ledger.add_retrain(record)
    return RetrainResult(accepted, reason, counts, metrics, published, gated)


def _publish(cfg: Config, candidate_dir: Path, metrics: dict[str, Any]) -> Path:
    out = models_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    n = 1 + max((int(p.stem[1:]) for p in out.glob("v*.pt") if p.stem[1:].isdigit()), default=0)
    dst = out / f"v{n}.pt"
    tmp = out / f".v{n}.pt.tmp"
    shutil.copyfile(candidate_dir / "model.pt", tmp)
    tmp.replace(dst)
    atomic_write_text(out / f"v{n}.metrics.json", json.dumps(metrics, indent=2))
    # The pointer is written last: a reader sees either the old model or the complete new one.
    atomic_write_text(out / "published.json", json.dumps({
        "version": f"v{n}", "path": str(dst), "model_version": metrics.get("model_version"),
        "metrics": metrics, "candidate_dir": str(candidate_dir), "published_at": utcnow().isoformat()}, indent=2))
    return dst
