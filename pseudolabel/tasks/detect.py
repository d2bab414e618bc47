"""Object detection and instance segmentation behind the task seam: object sets in any format
(YOLO, COCO, Pascal VOC, Labelme, CVAT, Label Studio JSON), COCO mAP on the holdout (masks,
mIoU and pixel accuracy too for segmentation), boxes with full per-box class vectors from the
pool, image uncertainty aggregated from its boxes, per-class box thresholds for pseudo-labels,
Label Studio ``RectangleLabels`` / ``PolygonLabels``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from pseudolabel.data import formats
from pseudolabel.data.boxes import boxes_from_json, boxes_to_json
from pseudolabel.data.errors import DataWarning
from pseudolabel.data.ingest import OnMissing
from pseudolabel.data.formats.objects import DetTask, check_not_empty, training_boxes
from pseudolabel.inference import load_box_predictions
from pseudolabel.metrics_det import detection_map, segmentation_scores, semantic_mask
from pseudolabel.models.base import require
from pseudolabel.strategies import SCORE_FUNCTIONS, uses_labelled_embeddings
from pseudolabel.strategies.detection import image_uncertainty, select_images
from pseudolabel.strategies.selection import Selection
from pseudolabel.tasks.base import Label, LabelledSet, PoolPredictions, PseudoContext, Task
from pseudolabel.types import Annotation, Box, Item, Prediction, TaskType

_AGG = {"max": "max", "mean": "mean", "sum": "sum", "topk": "topk_mean"}


class Detect(Task):
    """Detection: the boxes of an image (pixels, xyxy; ``()`` = no objects)."""

    name: ClassVar[TaskType] = "detect"
    result_type = "RectangleLabels"
    metric_names: ClassVar[tuple[str, ...]] = ("map50", "map50_95")
    per_class_key = "per_class_ap50"
    per_class_name = "AP50"

    # -- labelled sets ---------------------------------------------------------------------
    def read(self, which: Literal["seed", "holdout"], *, progress: bool = False,
             on_missing: OnMissing = "error") -> LabelledSet:
        """Read ``data.<which>`` in its format; every class must be in ``classes``.

        The holdout keeps the ``crowd`` / ``difficult`` flags (evaluation ignores those
        objects); the seed gets the boxes a model trains on (crowd regions out, difficult ones
        out unless ``train_difficult``). Notes on what was accepted with a change (clipped
        boxes, ids mapped by name) are issued as :class:`~pseudolabel.data.errors.DataWarning`.
        An empty set is a DataError. ``on_missing``: what a file the labels name that does not
        exist is (an error on a first read, else quarantined).
        """
        cfg = self.cfg
        src = getattr(cfg.data, which)
        task: DetTask = "segment" if self.name == "segment" else "detect"
        ds = formats.read_objects(
            src.format, Path(src.path), classes=cfg.classes, task=task, image_root=src.image_root,
            labels=src.labels, names=src.names, split=src.split, multipart=src.multipart, progress=progress,
            max_pixels=cfg.data.max_pixels, on_missing=on_missing)
        check_not_empty(ds.items, ds.quarantined, source=f"data.{which} ({src.format} {src.path})")
        for note in ds.notes:
            warnings.warn(f"data.{which}: {note}", DataWarning, stacklevel=2)
        boxes: dict[str, Label] = {k: tuple(v) for k, v in ds.boxes.items()}
        if which == "seed":
            boxes = {k: tuple(training_boxes(list(v), difficult=src.train_difficult)) for k, v in ds.boxes.items()}
        return LabelledSet(list(ds.items), boxes, list(ds.quarantined), list(ds.duplicates))

    def seed_annotation(self, item: Item, label: Label) -> Annotation:
        """A seed label: ``label`` is the image's boxes (``()`` = no objects)."""
        return Annotation(item=item, boxes=_boxes(label), source="seed", round=0, empty_ok=True)

    def truth_to_ledger(self, label: Label) -> Any:
        """The boxes as the ledger's JSON (``"[]"`` = no objects)."""
        return boxes_to_json(_boxes(label), empty=True)

    def truth_from_ledger(self, value: Any) -> Label:
        """The boxes stored in the ledger as JSON."""
        return boxes_from_json(value)

    def trains_on(self, label: str | None, boxes: tuple[Box, ...]) -> bool:
        """Every detection answer trains: boxes, or an explicit "no objects"."""
        return True  # boxes, or an explicit "no objects"

    # -- evaluation --------------------------------------------------------------------------
    def _predicted_boxes(self, model: Any, holdout: Sequence[Item]) -> dict[str, tuple[Box, ...]]:
        return {p.item_id: p.boxes for p in model.predict(holdout, batch_size=self.cfg.model.infer_batch_size)}

    def evaluate(self, model: Any, holdout: Sequence[Item], truth: Mapping[str, Label], out_dir: Path) -> dict[str, Any]:
        """COCO box mAP (``map50``, ``map50_95``, ``map75``), ``per_class_ap50`` and counts."""
        preds = self._predicted_boxes(model, holdout)
        return _finite(self._box_metrics(holdout, truth, preds))

    def _box_metrics(self, holdout: Sequence[Item], truth: Mapping[str, Label],
                     preds: Mapping[str, tuple[Box, ...]]) -> dict[str, Any]:
        gt = {it.id: _boxes(truth.get(it.id, ())) for it in holdout}
        sizes = {it.id: (it.width, it.height) for it in holdout}
        box = detection_map(gt, preds, classes=self.cfg.classes, image_sizes=sizes, iou_type="bbox")
        return {"map50": box["map50"], "map50_95": box["map50_95"], "map75": box["map75"],
                "per_class_ap50": box["per_class_ap50"], "n_images": box["n_images"], "n_gt": box["n_gt"],
                "n_pred": box["n_pred"]}

    # -- pool predictions --------------------------------------------------------------------
    def read_predictions(self, pred_dir: Path) -> PoolPredictions:
        """Pool predictions (boxes) from the shards in ``pred_dir``; embeddings ``(N, D)``
        float32 (D = 0 when an image has none), no probs."""
        df, preds = load_box_predictions(pred_dir)
        emb = np.stack([np.asarray(p.embedding, dtype=np.float32) for p in preds]) if preds \
            and all(p.embedding is not None for p in preds) else np.zeros((len(preds), 0), dtype=np.float32)
        return PoolPredictions(df, preds, emb, None)

    def image_scores(self, preds: Sequence[Prediction], items: Mapping[str, Item],
                     flipped: Mapping[str, Prediction] | None = None) -> np.ndarray:
        """``(N,)`` image uncertainty (higher = more uncertain) of each prediction: per-box
        ``selection.uncertainty`` (or the strategy's own score for least_confidence / margin /
        entropy) of the boxes at least ``selection.min_box_score`` confident, aggregated by
        ``selection.aggregate``; an image with no such box scores 1.0; with ``flipped``
        predictions mixed with the flip-TTA instability at weight ``selection.localisation``."""
        s = self.cfg.selection
        box_score = s.strategy if s.strategy in ("least_confidence", "margin", "entropy") else s.uncertainty
        out = np.empty(len(preds), dtype=np.float64)
        for i, p in enumerate(preds):
            tta = None if flipped is None else flipped.get(p.item_id)
            out[i] = image_uncertainty(p, tta, how=_AGG[s.aggregate], score=box_score, k=s.topk,
                                       width=float(items[p.item_id].width), stability_weight=s.localisation,
                                       min_box_score=s.min_box_score)
        return out

    def uncertainty(self, preds: PoolPredictions, items: Mapping[str, Item]) -> np.ndarray:
        """Image scores ``(N,)`` float of the pool rows (see :meth:`image_scores`)."""
        return self.image_scores(preds.predictions, items)

    def pool_uncertainty(self, preds: PoolPredictions, items: Mapping[str, Item]) -> np.ndarray:
        """Image scores ``(N,)`` float of the pool rows (see :meth:`image_scores`)."""
        return self.image_scores(preds.predictions, items)

    def class_threshold(self, label: str) -> float:
        """The box score a box of class ``label`` needs to become a pseudo-label."""
        return float(self.cfg.pseudo.class_thresholds.get(label, self.cfg.pseudo.box_threshold))

    def confident(self, preds: PoolPredictions, ctx: PseudoContext) -> list[Annotation]:
        """Pseudo-labels from confident boxes (per-class thresholds, ``pseudo.class_thresholds``
        over ``pseudo.box_threshold``), for pool images without a seed or human label.

        An image is pseudo-labelled only when it has at least one confident box and no
        *ambiguous* box (score between half its class threshold and the threshold): leaving a
        half-believed object out would teach the detector that it is background. ``ctx.cap``
        caps images per class of their most confident box. An image with a box of a class in
        ``ctx.skip_classes`` is not pseudo-labelled (that box cannot be trusted). YOLO has no
        per-sample loss weight, so ``pseudo.weight`` is recorded but the thresholds are what
        guard the training set.
        """
        labelled = set(ctx.labelled)
        per_class: dict[str, int] = {}
        scored = []
        for p in preds.predictions:
            if p.item_id in labelled or p.item_id not in ctx.items or not p.boxes:
                continue
            keep, ambiguous = [], False
            for b in p.boxes:
                t = self.class_threshold(b.label)
                s = float(b.score or 0.0)
                if b.label in ctx.skip_classes and s >= 0.5 * t:
                    ambiguous = True
                    continue
                if s >= t:
                    keep.append(Box(b.x1, b.y1, b.x2, b.y2, b.label, s, b.polygon))
                elif s >= 0.5 * t:
                    ambiguous = True
            if keep and not ambiguous:
                scored.append((max(b.score or 0.0 for b in keep), p.item_id, tuple(keep)))
        out: list[Annotation] = []
        for _, iid, boxes in sorted(scored, key=lambda t: (-t[0], t[1])):
            top = max(boxes, key=lambda b: b.score or 0.0).label
            if ctx.cap is not None and per_class.get(top, 0) >= ctx.cap:
                continue
            per_class[top] = per_class.get(top, 0) + 1
            out.append(Annotation(item=ctx.items[iid], boxes=boxes, source="pseudo", round=ctx.round_id,
                                  model_version=ctx.model_version, weight=self.cfg.pseudo.weight))
        return out

    def select(self, model: Any, preds: PoolPredictions, *, k: int, items: Mapping[str, Item],
               labelled: Sequence[Item], round_id: int) -> Selection:
        """``selection.strategy`` over the image scores (with the flip-TTA instability when
        ``selection.localisation`` > 0: a second forward pass) and the image embeddings."""
        s = self.cfg.selection
        flipped = None
        if s.localisation > 0:
            require(model, "hflip_tta", "selection.localisation")
            flipped = {p.item_id: p for p in model.predict([items[i] for i in preds.item_ids],
                                                            batch_size=self.cfg.model.infer_batch_size, hflip=True)}
        scores = self.image_scores(preds.predictions, items, flipped)
        lab_emb = None
        pool_emb = preds.embeddings
        if s.embeddings != "model" and s.strategy not in (*SCORE_FUNCTIONS, "random"):
            # A pretrained backbone's image embeddings (cached per item): good from round 0,
            # where the detector's own features come from a network trained on a few labels.
            embed = self._backbone().embed
            pool_emb = embed([items[i] for i in preds.item_ids])
            if uses_labelled_embeddings(s.strategy) and labelled:
                lab_emb = embed(list(labelled))
        elif uses_labelled_embeddings(s.strategy) and labelled:
            lab_emb = np.stack([np.asarray(p.embedding, dtype=np.float32)
                                for p in model.predict(list(labelled), batch_size=self.cfg.model.infer_batch_size)])
        return select_images(scores, k, strategy=s.strategy, embeddings=pool_emb,
                             labelled_embeddings=lab_emb, hybrid_factor=s.hybrid_factor,
                             n_classes=len(self.cfg.classes), seed=s.seed + round_id, options=s.strategy_options())

    def _backbone(self) -> Any:
        """The frozen backbone of ``selection.embeddings`` (built once per task object; its
        embeddings cached in ``<workdir>/embeddings``)."""
        if getattr(self, "_embedder", None) is None:
            from pseudolabel.models.backbone import FrozenBackboneClassifier

            m = self.cfg.model
            # No head is trained: the class names only satisfy the adapter (a one-class detector
            # is fine), and the embedding cache is keyed by backbone and image, not by classes.
            self._embedder = FrozenBackboneClassifier(
                ["image", "embedding"], backbone=self.cfg.selection.embeddings, device=m.device, seed=m.seed,
                cache_dir=self.cfg.workdir / "embeddings", allow_download=m.allow_download, progress=False)
        return self._embedder

    def review_prediction(self, pred: Prediction) -> tuple[Prediction, str]:
        """The boxes at least ``selection.predraw_conf`` confident. When there is none (a young
        model, whose boxes all score low), the ``selection.predraw_fallback`` best boxes
        instead, with a note saying they are low-confidence guesses — a reviewer corrects a
        rough box faster than drawing one, and an empty image looks like "no objects" when it
        is "no idea". A prediction with no box at all says so in the note."""
        conf, fallback = self.cfg.selection.predraw_conf, self.cfg.selection.predraw_fallback
        order = sorted(range(len(pred.boxes)), key=lambda i: -(pred.boxes[i].score or 0.0))
        keep = [i for i in order if (pred.boxes[i].score or 0.0) >= conf]
        note = ""
        if not keep and fallback > 0 and pred.boxes:
            keep = order[:fallback]
            best = pred.boxes[keep[0]].score or 0.0
            note = (f"Low-confidence guesses: the model's best box scores {best:.2f} (< {conf:g}). "
                    "Check every box: fix, delete or add.")
        if not pred.boxes:
            note = "The model found no object here: draw every object you see, or submit with none if there is none."
        keep.sort()
        bp = None if pred.box_probs is None or not len(pred.boxes) else np.asarray(pred.box_probs)[keep]
        return Prediction(item_id=pred.item_id, model_version=pred.model_version, embedding=pred.embedding,
                          boxes=tuple(pred.boxes[i] for i in keep), box_probs=bp), note


class Segment(Detect):
    """Instance segmentation: boxes with polygons; masks are evaluated too."""

    name = "segment"
    result_type = "PolygonLabels"
    metric_names = ("map50", "map50_95", "mask_map50", "miou")

    def evaluate(self, model: Any, holdout: Sequence[Item], truth: Mapping[str, Label], out_dir: Path) -> dict[str, Any]:
        """Box metrics plus ``mask_map50``, ``mask_map50_95``, ``miou`` and ``pixel_accuracy``."""
        classes = self.cfg.classes
        preds = self._predicted_boxes(model, holdout)
        out = self._box_metrics(holdout, truth, preds)
        gt = {it.id: _boxes(truth.get(it.id, ())) for it in holdout}
        sizes = {it.id: (it.width, it.height) for it in holdout}
        with_poly = {k: tuple(b for b in v if b.polygon is not None) for k, v in preds.items()}
        # Crowd regions stay in the truth without a polygon: mask evaluation ignores their box.
        gt_poly = {k: tuple(b for b in v if b.polygon is not None or b.crowd) for k, v in gt.items()}
        seg = detection_map(gt_poly, with_poly, classes=classes, image_sizes=sizes, iou_type="segm")
        out |= {"mask_map50": seg["map50"], "mask_map50_95": seg["map50_95"]}
        gm = {it.id: semantic_mask(gt[it.id], height=it.height, width=it.width, classes=classes)
              for it in holdout}
        pm = {it.id: semantic_mask(with_poly.get(it.id, ()), height=it.height, width=it.width, classes=classes)
              for it in holdout}
        sem = segmentation_scores(gm, pm, classes=classes)
        out |= {"miou": sem["miou"], "pixel_accuracy": sem["pixel_accuracy"]}
        return _finite(out)


def _boxes(label: Label) -> tuple[Box, ...]:
    """A detection / segmentation label's boxes; a class name (a classification label) is an error."""
    if isinstance(label, str):
        raise TypeError(f"a detection label is a tuple of Box; got the class name {label!r}")
    return tuple(label)


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN metrics (nothing to measure) as None, so they survive JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}

