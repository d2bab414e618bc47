"""Semi-supervised retraining run: human + seed labels plus confident pseudo-labels, evaluated on
the human-verified holdout, published only when it beats the published model.

    teacher (trained on human + seed, or a given checkpoint) -> predict the pool
      -> select pseudo-labels (pseudolabel.selftrain: global / FlexMatch / FreeMatch thresholds,
         never on an item a human or the seed labelled) -> student trained on human + seed +
         pseudo (pseudo weighted below humans) -> holdout metrics -> accept / reject -> publish

Everything the run used and decided is written to ``candidate_dir``: ``model.pt``,
``metrics.json``, ``training_set.csv`` (item id, label, source, weight, confidence) and
``retrain.json`` (counts by source, thresholds, the decision and why). Publishing copies the
model to ``<workdir>/models/vN.pt`` with ``vN.metrics.json`` and repoints
``<workdir>/models/published.json``. The ledger's ``retrain_history`` meta keeps one line
per run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from loops.round import _build_model, ingest
from pseudolabel.config import Config
from pseudolabel.data.ledger import Ledger
from pseudolabel.metrics import classification_metrics
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.selftrain import class_cap, class_thresholds, pseudo_weights, select_pseudo_labels
from pseudolabel.types import Annotation, utcnow
from pseudolabel.utils import atomic_write_text


@dataclass
class RetrainResult:
    """``accepted``: the candidate was published; ``reason``: why (or why not);
    ``counts_by_source``: training items by label source (``seed``, ``human``, ``pseudo``);
    ``metrics``: the candidate's holdout metrics; ``published``: path of the published
    checkpoint when accepted."""

    accepted: bool
    reason: str
    counts_by_source: dict[str, int]
    metrics: dict[str, Any]
    published: Path | None = None
    thresholds: list[float] = field(default_factory=list)


def models_dir(cfg: Config) -> Path:
    return cfg.workdir / "models"


def published_info(cfg: Config) -> dict[str, Any] | None:
    """The content of ``<workdir>/models/published.json``, or None before the first publish."""
    p = models_dir(cfg) / "published.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _evaluate(cfg: Config, ledger: Ledger, model: TorchvisionClassifier) -> dict[str, Any]:
    holdout = ledger.items("holdout")
    if not holdout:
        raise ValueError(f"{cfg.data.holdout.path}: the holdout is empty; a retrain needs a human-verified holdout")
    truth: dict[str, str] = ledger.holdout_truth()
    probs, _ = model.predict_proba_embed(holdout, batch_size=cfg.model.infer_batch_size)
    pred = [cfg.classes[i] for i in probs.argmax(1)]
    return classification_metrics([truth[it.id] for it in holdout], pred, classes=cfg.classes)


def retrain(
    cfg: Config,
    ledger: Ledger,
    *,
    candidate_dir: Path,
    previous_metrics: dict[str, Any] | None = None,
    teacher: Path | None = None,
    mode: Literal["global", "flexmatch", "freematch"] = "global",
    min_gain: float = 0.0,
    progress: bool = False,
) -> RetrainResult:
    """Train a candidate on human + seed + confident pseudo-labels and publish it if better.

    - ``previous_metrics``: the metrics to beat; ``None`` reads the published model's
      (``published.json``); with nothing published the first candidate is accepted;
    - ``teacher``: checkpoint whose pool predictions choose the pseudo-labels; default: a
      teacher trained here on the human + seed labels;
    - ``mode``: pseudo-label thresholds (see :mod:`pseudolabel.selftrain`), at
      ``cfg.pseudo.threshold`` with at most ``cfg.pseudo.max_per_class`` per class; each
      pseudo-label weighs ``cfg.pseudo.weight * confidence`` (humans weigh 1);
      ``cfg.pseudo.enabled = false`` trains on human + seed only; with
      ``cfg.consistency.enabled`` the student also gets the pool images as ``unlabelled``
      (FixMatch consistency, see :meth:`TorchvisionClassifier.fit`);
    - ``min_gain``: the candidate's ``cfg.stop.metric`` must exceed the previous one by more
      than this (0: strictly better) to be published.
    """
    candidate_dir = Path(candidate_dir)
    candidate_dir.mkdir(parents=True, exist_ok=True)
    ingest(cfg, ledger)
    holdout_ids = {it.id for it in ledger.items("holdout")}
    items = {it.id: it for it in ledger.items()}
    human: list[Annotation] = []
    for item_id, row in ledger.current_labels().items():
        if item_id in holdout_ids or row.label is None or row.source == "pseudo":
            continue
        human.append(Annotation(item=items[item_id], label=row.label, source=row.source, round=row.round))
    if not human:
        raise ValueError(f"no seed or human labels in {ledger.path}: nothing to train on")
    counts = {"seed": sum(a.source == "seed" for a in human), "human": sum(a.source == "human" for a in human),
              "pseudo": 0}

    pseudo: list[Annotation] = []
    confidences: dict[str, float] = {}
    thresholds: list[float] = []
    if cfg.pseudo.enabled:
        if teacher is not None:
            teacher_model = TorchvisionClassifier.load(teacher)
        else:
            teacher_model = _build_model(cfg, progress=progress).fit(human)
        labelled = {a.item.id for a in human}
        pool = [it for it in ledger.items("pool") if it.id not in holdout_ids]
        probs, _ = teacher_model.predict_proba_embed(pool, batch_size=cfg.model.infer_batch_size)
        human_mask = np.array([it.id in labelled for it in pool], dtype=bool)
        if len(pool):
            thr, _ = class_thresholds(probs, threshold=cfg.pseudo.threshold, mode=mode, human_mask=human_mask)
            thresholds = thr.tolist()
            sel = select_pseudo_labels(probs, threshold=cfg.pseudo.threshold, mode=mode, human_mask=human_mask,
                                       per_class_cap=class_cap(max_per_class=cfg.pseudo.max_per_class,
                                                               max_ratio=cfg.pseudo.max_ratio, n_labelled=len(human),
                                                               n_classes=len(cfg.classes)))
            weights = pseudo_weights(sel.confidences, base=min(cfg.pseudo.weight, 0.999))
            for i, c, conf, w in zip(sel.indices, sel.labels, sel.confidences, weights):
                it = pool[int(i)]
                pseudo.append(Annotation(item=it, label=cfg.classes[int(c)], source="pseudo",
                                         model_version=teacher_model.model_version, weight=float(w)))
                confidences[it.id] = float(conf)
        counts["pseudo"] = len(pseudo)

    train = human + pseudo
    # Consistency training (cfg.consistency) also learns from the unlabelled pool images; the
    # holdout is never among them.
    unlabelled = [it for it in ledger.items("pool") if it.id not in holdout_ids] if cfg.consistency.enabled else None
    model = _build_model(cfg, progress=progress).fit(train, unlabelled=unlabelled)
    model.save(candidate_dir / "model.pt")
    metrics = _evaluate(cfg, ledger, model) | {"model_version": model.model_version, "train_counts": counts}
    atomic_write_text(candidate_dir / "metrics.json", json.dumps(metrics, indent=2))
    lines = ["item_id,label,source,weight,confidence"]
    lines += [f"{a.item.id},{a.label},{a.source},{a.weight:.6g},{confidences.get(a.item.id, '')}" for a in train]
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
    record = {"accepted": accepted, "reason": reason, "counts_by_source": counts, "metric": key,
              "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "n")},
              "previous": previous_metrics and {k: previous_metrics.get(k) for k in ("accuracy", "macro_f1")},
              "mode": mode, "threshold": cfg.pseudo.threshold, "class_thresholds": thresholds,
              "teacher": str(teacher) if teacher else "trained on human + seed",
              "candidate_dir": str(candidate_dir), "published": str(published) if published else None,
              "finished_at": utcnow().isoformat()}
    atomic_write_text(candidate_dir / "retrain.json", json.dumps(record, indent=2))
    ledger.add_retrain(record)
    return RetrainResult(accepted, reason, counts, metrics, published, thresholds)


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
