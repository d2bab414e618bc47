"""The detection / segmentation parts of a round: what differs from classification.

``loops/round.py`` runs the same stages for every task; for ``task: detect`` and
``task: segment`` it calls the functions here to read the labelled sets (any object format),
build the YOLO model, evaluate it (COCO mAP; mask mAP, mIoU and pixel accuracy for
segmentation), turn confident boxes into pseudo-labels (per-class thresholds; never on an
image a human or the seed labelled), and score and select pool images.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from pseudolabel.config import Config
from pseudolabel.data import detformats
from pseudolabel.data.errors import DataWarning
from pseudolabel.data.ingest import OnMissing
from pseudolabel.data.objects import DetSet, DetTask, check_not_empty, training_boxes
from pseudolabel.metrics_det import detection_map, segmentation_scores, semantic_mask
from pseudolabel.strategies.detection import image_uncertainty, select_images
from pseudolabel.strategies.selection import Selection
from pseudolabel.types import Annotation, Box, Item, Prediction

_AGG = {"max": "max", "mean": "mean", "sum": "sum", "topk": "topk_mean"}


def read_labelled(cfg: Config, name: str, *, progress: bool = False, on_missing: OnMissing = "error") -> DetSet:
    """Read ``data.<name>`` (seed or holdout) in its format; every class must be in ``classes``.

    The holdout keeps the ``crowd`` / ``difficult`` flags (evaluation ignores those objects);
    the seed gets the boxes a model trains on (:func:`~pseudolabel.data.objects.training_boxes`:
    crowd regions out, difficult ones out unless ``train_difficult``). Notes on what was
    accepted with a change (clipped boxes, ids mapped by name) are issued as
    :class:`~pseudolabel.data.errors.DataWarning`. An empty set is a DataError. Images above
    ``data.max_pixels`` are quarantined; ``on_missing``: what a file the labels name that does
    not exist is (an error on a first read, else quarantined; see
    :func:`~pseudolabel.data.detformats.read_objects`).
    """
    src = getattr(cfg.data, name)
    task: DetTask = "segment" if cfg.task == "segment" else "detect"
    ds = detformats.read_objects(
        src.format, Path(src.path), classes=cfg.classes, task=task, image_root=src.image_root, labels=src.labels,
        names=src.names, split=src.split, multipart=src.multipart, progress=progress,
        max_pixels=cfg.data.max_pixels, on_missing=on_missing)
    check_not_empty(ds.items, ds.quarantined, source=f"data.{name} ({src.format} {src.path})")
    for note in ds.notes:
        warnings.warn(f"data.{name}: {note}", DataWarning, stacklevel=2)
    if name == "seed":
        ds.boxes = {k: training_boxes(v, difficult=src.train_difficult) for k, v in ds.boxes.items()}
    return ds


def build_model(cfg: Config, *, n_train: int, progress: bool = False, previous: Path | None = None) -> Any:
    """A YOLO model for ``cfg`` with ``epochs`` raised so that training makes at least
    ``model.min_steps`` optimiser steps on ``n_train`` images (a 20-image seed set is trained).
    ``previous``: the last round's checkpoint, the starting point with ``model.warm_start``."""
    from pseudolabel.models.ultralytics_yolo import YoloModel

    m = cfg.model
    weights = previous if m.warm_start and previous is not None and previous.is_file() else m.weights
    steps_per_epoch = max(1, math.ceil(max(n_train, 1) / m.batch_size))
    epochs = max(m.epochs, math.ceil(m.min_steps / steps_per_epoch))
    return YoloModel(
        cfg.classes, task=cfg.task, model_yaml=m.yolo_yaml, weights=weights, image_size=m.image_size,
        epochs=epochs, batch_size=m.batch_size, device=m.device, seed=m.seed, conf=m.conf, iou=m.iou,
        workdir=cfg.workdir / "yolo", config_dir=cfg.workdir / "ultralytics",
        train_args=dict(m.train_args), runtime=m.runtime,
    )


def load_model(cfg: Config, path: Path) -> Any:
    from pseudolabel.models.ultralytics_yolo import YoloModel

    return YoloModel.load(path, workdir=cfg.workdir / "yolo", config_dir=cfg.workdir / "ultralytics",
                          device=cfg.model.device, runtime=cfg.model.runtime)


def evaluate(cfg: Config, model: Any, holdout: Sequence[Item], truth: Mapping[str, Sequence[Box]]) -> dict[str, Any]:
    """COCO mAP (boxes; masks too for segmentation) of ``model`` on the holdout.

    Returns ``map50``, ``map50_95``, ``map75`` (+ ``mask_map50``, ``mask_map50_95``, ``miou``,
    ``pixel_accuracy`` for segmentation), ``per_class_ap50`` and counts.
    """
    preds = {p.item_id: p.boxes for p in model.predict(holdout, batch_size=cfg.model.infer_batch_size)}
    gt = {it.id: tuple(truth.get(it.id, ())) for it in holdout}
    sizes = {it.id: (it.width, it.height) for it in holdout}
    box = detection_map(gt, preds, classes=cfg.classes, image_sizes=sizes, iou_type="bbox")
    out: dict[str, Any] = {
        "map50": box["map50"], "map50_95": box["map50_95"], "map75": box["map75"],
        "per_class_ap50": box["per_class_ap50"], "n_images": box["n_images"], "n_gt": box["n_gt"],
        "n_pred": box["n_pred"],
    }
    if cfg.task == "segment":
        with_poly = {k: tuple(b for b in v if b.polygon is not None) for k, v in preds.items()}
        # Crowd regions stay in the truth without a polygon: mask evaluation ignores their box.
        gt_poly = {k: tuple(b for b in v if b.polygon is not None or b.crowd) for k, v in gt.items()}
        seg = detection_map(gt_poly, with_poly, classes=cfg.classes, image_sizes=sizes, iou_type="segm")
        out |= {"mask_map50": seg["map50"], "mask_map50_95": seg["map50_95"]}
        gm, pm = {}, {}
        for it in holdout:
            gm[it.id] = semantic_mask(gt[it.id], height=it.height, width=it.width, classes=cfg.classes)
            pm[it.id] = semantic_mask(with_poly.get(it.id, ()), height=it.height, width=it.width, classes=cfg.classes)
        sem = segmentation_scores(gm, pm, classes=cfg.classes)
        out |= {"miou": sem["miou"], "pixel_accuracy": sem["pixel_accuracy"]}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def class_threshold(cfg: Config, label: str) -> float:
    return float(cfg.pseudo.class_thresholds.get(label, cfg.pseudo.box_threshold))


def confident(cfg: Config, preds: Sequence[Prediction], items: Mapping[str, Item], human: set[str],
              rid: int, model_version: str, *, skip_classes: Collection[str] = (),
              cap: int | None = None) -> list[Annotation]:
    """Pseudo-labels from confident boxes (per-class thresholds, ``pseudo.class_thresholds`` over
    ``pseudo.box_threshold``), for pool images without a seed or human label.

    An image is pseudo-labelled only when it has at least one confident box and no *ambiguous*
    box (score between half its class threshold and the threshold): leaving a half-believed
    object out would teach the detector that it is background. ``cap`` (default
    ``pseudo.max_per_class``) caps images per class of their most confident box. YOLO has no per-sample loss weight, so
    ``pseudo.weight`` is recorded but the thresholds are what guard the training set. An
    image with a box of a class in ``skip_classes`` (a class the model is not good enough at)
    is not pseudo-labelled: its box cannot be trusted, and leaving it out would teach background.
    """
    cap = cfg.pseudo.max_per_class if cap is None else cap
    per_class: dict[str, int] = {}
    scored = []
    for p in preds:
        if p.item_id in human or p.item_id not in items or not p.boxes:
            continue
        keep, ambiguous = [], False
        for b in p.boxes:
            t = class_threshold(cfg, b.label)
            s = float(b.score or 0.0)
            if b.label in skip_classes and s >= 0.5 * t:
                ambiguous = True
                continue
            if s >= t:
                keep.append(Box(b.x1, b.y1, b.x2, b.y2, b.label, s, b.polygon))
            elif s >= 0.5 * t:
                ambiguous = True
        if keep and not ambiguous:
            scored.append((max(b.score or 0.0 for b in keep), p.item_id, tuple(keep)))
    out: list[Annotation] = []
    for conf, iid, keep in sorted(scored, key=lambda t: (-t[0], t[1])):
        top = max(keep, key=lambda b: b.score or 0.0).label
        if cap is not None and per_class.get(top, 0) >= cap:
            continue
        per_class[top] = per_class.get(top, 0) + 1
        out.append(Annotation(item=items[iid], boxes=keep, source="pseudo", round=rid,
                              model_version=model_version, weight=cfg.pseudo.weight))
    return out


def image_scores(cfg: Config, preds: Sequence[Prediction], items: Mapping[str, Item],
                 flipped: Mapping[str, Prediction] | None = None) -> np.ndarray:
    """``(N,)`` image uncertainty (higher = more uncertain) of each prediction: per-box
    ``selection.uncertainty`` (or the strategy's own score for least_confidence / margin /
    entropy) of the boxes at least ``selection.min_box_score`` confident, aggregated by
    ``selection.aggregate``; an image with no such box scores 1.0; with
    ``flipped`` predictions mixed with the flip-TTA instability at weight
    ``selection.localisation``."""
    s = cfg.selection
    box_score = s.strategy if s.strategy in ("least_confidence", "margin", "entropy") else s.uncertainty
    out = np.empty(len(preds), dtype=np.float64)
    for i, p in enumerate(preds):
        tta = None if flipped is None else flipped.get(p.item_id)
        out[i] = image_uncertainty(p, tta, how=_AGG[s.aggregate], score=box_score, k=s.topk,
                                   width=float(items[p.item_id].width), stability_weight=s.localisation,
                                   min_box_score=s.min_box_score)
    return out


def select(cfg: Config, *, k: int, scores: np.ndarray, embeddings: np.ndarray,
           labelled_embeddings: np.ndarray | None, seed: int) -> Selection:
    """Pick ``k`` images with ``selection.strategy`` from the image ``scores`` (N,) and the
    ``embeddings`` (N, D) (see :func:`pseudolabel.strategies.detection.select_images`)."""
    s = cfg.selection
    return select_images(scores, k, strategy=s.strategy, embeddings=embeddings,
                         labelled_embeddings=labelled_embeddings, hybrid_factor=s.hybrid_factor,
                         n_classes=len(cfg.classes), seed=seed, options=s.strategy_options())


def predraw(pred: Prediction, conf: float, *, fallback: int = 0) -> tuple[Prediction, str]:
    """What the reviewer sees of ``pred``, and a note for them.

    The boxes at least ``conf`` confident. When there is none (a young model, whose boxes
    all score low), the ``fallback`` best boxes instead, with a note saying they are
    low-confidence guesses — a reviewer corrects a rough box faster than drawing one, and an
    empty image looks like "no objects" when it is "no idea". A prediction with no box at all
    says so in the note.
    """
    order = sorted(range(len(pred.boxes)), key=lambda i: -(pred.boxes[i].score or 0.0))
    keep = [i for i in order if (pred.boxes[i].score or 0.0) >= conf]
    note = ""
    if not keep and fallback > 0 and pred.boxes:
        keep = order[:fallback]
        best = pred.boxes[keep[0]].score or 0.0
        note = (f"Low-confidence guesses: the model's best box scores {best:.2f} (< {conf:g}). "
                "Check every box: fix, delete or add.")
    if not pred.boxes:
        note = ("The model found no object here: draw every object you see, or submit with none if there is "
                "none.")
    keep.sort()
    bp = None if pred.box_probs is None or not len(pred.boxes) else np.asarray(pred.box_probs)[keep]
    return Prediction(item_id=pred.item_id, model_version=pred.model_version, embedding=pred.embedding,
                      boxes=tuple(pred.boxes[i] for i in keep), box_probs=bp), note
