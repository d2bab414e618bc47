"""Detection and segmentation quality metrics. Higher is better for every metric here.

- :func:`detection_map`: COCO-style mAP computed by **pycocotools** itself (in-memory COCO
  objects, ``COCOeval`` with ``maxDets=[1, 10, 100]``), for boxes (``iou_type="bbox"``) or
  instance polygons (``"segm"``);
- :func:`segmentation_scores`: mIoU and pixel accuracy of semantic masks;
- :func:`semantic_mask`: a semantic mask drawn from boxes/polygons.

Inputs are our types: per image a sequence of :class:`~pseudolabel.types.Box` in **pixels**
(``xyxy``, polygon points ``(x, y)``), keyed by item id.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np

from pseudolabel.data.geometry import box_polygon, polygon_rle, polygon_to_mask
from pseudolabel.types import Box

BACKGROUND = "__background__"
"""Key of the background class in :func:`segmentation_scores` (mask value 0)."""


def _classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str):
        raise ValueError(f"classes must be a sequence of names, not the string {classes!r}")
    out = list(classes)
    if not out:
        raise ValueError("classes is empty; give at least one class name")
    if len(set(out)) != len(out):
        raise ValueError(f"classes has duplicate names: {out!r}")
    return out


def _segm_rle(b: Box, height: int, width: int, *, where: str) -> dict[str, Any]:
    """COCO RLE of ``b``'s polygon on a ``height`` x ``width`` image (``segm`` evaluation)."""
    if b.polygon is None and b.crowd:  # a crowd region read without its mask: its box is the region
        return polygon_rle(box_polygon(b), height, width)
    if b.polygon is None or len(b.polygon) < 3:
        raise ValueError(f"{where}: iou_type 'segm' needs a polygon of >= 3 points on every box")
    return polygon_rle(b.polygon, height, width)


def detection_map(
    gt: Mapping[str, Sequence[Box]],
    pred: Mapping[str, Sequence[Box]],
    *,
    classes: Sequence[str],
    image_sizes: Mapping[str, tuple[int, int]],
    iou_type: Literal["bbox", "segm"] = "bbox",
) -> dict[str, Any]:
    """COCO mAP of ``pred`` against ``gt`` (both item id -> pixel boxes), by pycocotools.

    - ``gt``: the evaluated images are the keys of ``gt`` (an image with ``()`` has no
      objects; its predictions all count as false positives). Predictions for an image not
      in ``gt`` raise.
    - ``pred``: every box needs ``score`` (higher = more confident); COCO keeps the 100
      highest-scoring boxes per image.
    - ``image_sizes``: item id -> ``(width, height)`` pixels, for every image in ``gt``
      (needed to rasterise polygons, and by COCO's API).
    - ``iou_type="segm"``: every box (truth and prediction) needs a polygon (a crowd truth
      box without one counts as its rectangle).
    - truth flags: a ``crowd`` box is a COCO crowd region (``iscrowd=1``: detections inside it
      are ignored, several may match it); a ``difficult`` box is ignored as VOC ignores it (a
      detection matching it is neither a true nor a false positive; missing it costs no
      recall). ``n_gt`` counts the boxes that are neither.

    Returns ``{"map50_95", "map50", "map75", "per_class_ap50_95", "per_class_ap50",
    "n_images", "n_gt", "n_pred"}`` (area range "all", 100 detections per image):

    - the ``map*`` values are COCO's means over the classes that have ground truth;
    - a class with no ground-truth object has no defined AP: ``None`` in ``per_class_*``
      (and its false positives do not lower the mean — COCO's rule);
    - no ground-truth object at all: pycocotools reports -1; here every ``map*`` is
      ``float("nan")`` (undefined, not 0) and all per-class values are ``None``;
    - no predictions at all (with ground truth): every ``map*`` and every defined per-class
      AP is ``0.0``.

    Raises ``ValueError`` for a label not in ``classes``, a prediction without a score, a
    missing image size, an unknown ``iou_type`` or a missing polygon under ``segm``.
    """
    names = _classes(classes)
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type {iou_type!r} is not one of 'bbox', 'segm'")
    cat_of = {c: i + 1 for i, c in enumerate(names)}
    img_of = {item_id: i + 1 for i, item_id in enumerate(gt)}
    extra = [k for k in pred if k not in img_of]
    if extra:
        raise ValueError(f"predictions for {len(extra)} image(s) not in gt, e.g. {extra[0]!r}; "
                         "give every evaluated image a gt entry (() for no objects)")
    missing = [k for k in gt if k not in image_sizes]
    if missing:
        raise ValueError(f"image_sizes has no (width, height) for {missing[0]!r} "
                         f"({len(missing)} image(s) missing)")

    from pycocotools import mask as mask_utils

    def cat(b: Box, where: str) -> int:
        if b.label not in cat_of:
            raise ValueError(f"{where}: label {b.label!r} is not one of classes {names!r}")
        return cat_of[b.label]

    images = []
    for item_id, i in img_of.items():
        w, h = image_sizes[item_id]
        if int(w) <= 0 or int(h) <= 0:
            raise ValueError(f"image_sizes[{item_id!r}] = {(w, h)!r} must be positive pixels")
        images.append({"id": i, "width": int(w), "height": int(h)})
    anns: list[dict[str, Any]] = []
    for item_id, boxes in gt.items():
        w, h = image_sizes[item_id]
        for k, b in enumerate(boxes):
            where = f"gt[{item_id!r}][{k}]"
            ann: dict[str, Any] = {
                "id": len(anns) + 1, "image_id": img_of[item_id], "category_id": cat(b, where),
                "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1], "iscrowd": int(b.crowd),
                "area": (b.x2 - b.x1) * (b.y2 - b.y1),
            }
            if b.difficult and not b.crowd:
                ann["difficult"] = 1
            if iou_type == "segm":
                rle = _segm_rle(b, int(h), int(w), where=where)
                ann["segmentation"] = rle
                ann["area"] = float(mask_utils.area(rle))
            anns.append(ann)
    dets: list[dict[str, Any]] = []
    for item_id, boxes in pred.items():
        w, h = image_sizes[item_id]
        for k, b in enumerate(boxes):
            where = f"pred[{item_id!r}][{k}]"
            if b.score is None or not math.isfinite(b.score):
                raise ValueError(f"{where}: score {b.score!r} must be a finite number "
                                 "(predictions are ranked by score)")
            det: dict[str, Any] = {
                "image_id": img_of[item_id], "category_id": cat(b, where),
                "score": float(b.score),
            }
            if iou_type == "segm":
                det["segmentation"] = _segm_rle(b, int(h), int(w), where=where)
            else:
                det["bbox"] = [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1]
            dets.append(det)

    counted = [a for a in anns if not a["iscrowd"] and not a.get("difficult")]
    result: dict[str, Any] = {"n_images": len(images), "n_gt": len(counted), "n_pred": len(dets)}
    present = {a["category_id"] for a in counted}
    if not counted:
        nan = float("nan")
        return result | {"map50_95": nan, "map50": nan, "map75": nan,
                         "per_class_ap50_95": dict.fromkeys(names),
                         "per_class_ap50": dict.fromkeys(names)}
    if not dets:
        # COCO.loadRes cannot take an empty list; with ground truth and no detection every
        # recall is 0, so every AP is 0.
        zero = {c: (0.0 if cat_of[c] in present else None) for c in names}
        return result | {"map50_95": 0.0, "map50": 0.0, "map75": 0.0,
                         "per_class_ap50_95": zero, "per_class_ap50": dict(zero)}

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images, "annotations": anns,
            "categories": [{"id": i, "name": c} for c, i in cat_of.items()],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = _cocoeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: (T iou thresholds, R recall points, K classes, A area ranges, M maxDets);
    # -1 marks "no ground truth" for that class.
    precision = ev.eval["precision"]
    iou_thrs = ev.params.iouThrs
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))

    def ap(p: np.ndarray) -> float | None:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else None

    per_all = {c: ap(precision[:, :, cat_of[c] - 1, 0, -1]) for c in names}
    per_50 = {c: ap(precision[t50, :, cat_of[c] - 1, 0, -1]) for c in names}
    stats = ev.stats
    return result | {
        "map50_95": float(stats[0]), "map50": float(stats[1]), "map75": float(stats[2]),
        "per_class_ap50_95": per_all, "per_class_ap50": per_50,
    }


def _cocoeval(coco_gt: Any, coco_dt: Any, iou_type: str) -> Any:
    """pycocotools' COCOeval that also ignores ground truth marked ``"difficult": 1``.

    pycocotools derives each truth's ``ignore`` from ``iscrowd`` alone, inside ``_prepare``;
    marking difficult objects crowd would change their IoU (intersection over the detection's
    area) and let several detections match one, so ``ignore`` is set after ``_prepare``
    instead: the IoU stays the usual one, a detection matching a difficult object is neither a
    true nor a false positive, and missing it costs no recall (VOC's rule, except that a
    second detection on the same difficult object counts as a false positive).
    tests/test_metrics_det.py pins this on hand-computed cases."""
    from pycocotools.cocoeval import COCOeval

    class DifficultAwareCOCOeval(COCOeval):
        def _prepare(self) -> None:
            super()._prepare()
            for gts in self._gts.values():
                for g in gts:
                    if g.get("difficult"):
                        g["ignore"] = 1

    return DifficultAwareCOCOeval(coco_gt, coco_dt, iou_type)


def semantic_mask(
    boxes: Sequence[Box], *, height: int, width: int, classes: Sequence[str]
) -> np.ndarray:
    """``(height, width)`` int32 mask: 0 = background, ``i + 1`` = ``classes[i]``.

    Each box is drawn as its polygon (COCO rasterisation), or as its pixel rectangle when
    it has none. Overlaps: boxes with a score are drawn in increasing score order (the most
    confident ends on top); otherwise in the order given (later on top).
    """
    names = _classes(classes)
    index = {c: i + 1 for i, c in enumerate(names)}
    out = np.zeros((int(height), int(width)), dtype=np.int32)
    def rank(k: int) -> tuple[float, int]:
        score = boxes[k].score
        return (-math.inf if score is None else float(score), k)

    order = sorted(range(len(boxes)), key=rank)
    for k in order:
        b = boxes[k]
        if b.label not in index:
            raise ValueError(f"box {k}: label {b.label!r} is not one of classes {names!r}")
        m = polygon_to_mask(b.polygon if b.polygon is not None else box_polygon(b), height, width)
        out[m] = index[b.label]
    return out


def segmentation_scores(
    gt_masks: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    pred_masks: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    classes: Sequence[str],
    include_background: bool = False,
) -> dict[str, Any]:
    """mIoU and pixel accuracy of semantic masks, accumulated over all images.

    Masks are ``(H, W)`` integer arrays: 0 = background, ``i + 1`` = ``classes[i]`` (see
    :func:`semantic_mask` to build them from polygons). ``gt_masks``/``pred_masks`` are
    paired by key (mappings) or by position (sequences); each pair must have equal shapes.

    Returns ``{"miou", "pixel_accuracy", "per_class_iou", "n_pixels"}``:

    - ``per_class_iou``: ``{class: TP / (TP + FP + FN)}`` over all pixels of all images;
      ``None`` for a class absent from both truth and prediction (undefined); with
      ``include_background`` the key ``"__background__"`` is added first;
    - ``miou``: mean of the defined per-class IoUs (foreground classes only unless
      ``include_background``); ``nan`` when none is defined;
    - ``pixel_accuracy``: fraction of all pixels (background included) whose class matches.
    """
    names = _classes(classes)
    if include_background and BACKGROUND in names:
        raise ValueError(f"class name {BACKGROUND!r} is reserved for mask value 0")
    mixed = "gt_masks and pred_masks must both be mappings or both be sequences"
    pairs: list[tuple[str | int, np.ndarray, np.ndarray]]
    if isinstance(gt_masks, Mapping):
        if not isinstance(pred_masks, Mapping):
            raise ValueError(mixed)
        pm = pred_masks
        if set(gt_masks) != set(pm):
            diff = sorted(set(gt_masks) ^ set(pm), key=str)
            raise ValueError(f"gt_masks and pred_masks have different keys, e.g. {diff[0]!r}")
        pairs = [(k, gt_masks[k], pm[k]) for k in gt_masks]
    else:
        if isinstance(pred_masks, Mapping):
            raise ValueError(mixed)
        if len(gt_masks) != len(pred_masks):
            raise ValueError(f"{len(gt_masks)} gt masks but {len(pred_masks)} predicted masks")
        pairs = [(i, g, p) for i, (g, p) in enumerate(zip(gt_masks, pred_masks))]
    if not pairs:
        raise ValueError("no masks: segmentation scores are undefined for an empty holdout")
    n = len(names) + 1
    conf = np.zeros((n, n), dtype=np.int64)  # rows: truth, columns: prediction
    for key, g, p in pairs:
        g, p = np.asarray(g), np.asarray(p)
        if g.ndim != 2 or g.shape != p.shape:
            raise ValueError(f"masks for {key!r}: shapes {g.shape} and {p.shape} must be equal (H, W)")
        for what, m in (("gt", g), ("pred", p)):
            if not np.issubdtype(m.dtype, np.integer) and m.dtype != bool:
                raise ValueError(f"{what} mask for {key!r} has dtype {m.dtype}; expected integer class ids")
            if m.size and (m.min() < 0 or m.max() > len(names)):
                raise ValueError(f"{what} mask for {key!r} has values {int(m.min())}..{int(m.max())}; "
                                 f"accepted 0 (background)..{len(names)}")
        conf += np.bincount(g.astype(np.int64).ravel() * n + p.astype(np.int64).ravel(),
                            minlength=n * n).reshape(n, n)
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    iou = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(n)]
    per_class: dict[str, float | None] = {c: iou[i + 1] for i, c in enumerate(names)}
    if include_background:
        per_class = {BACKGROUND: iou[0]} | per_class
    defined = [v for v in per_class.values() if v is not None]
    total = int(conf.sum())
    return {
        "miou": float(np.mean(defined)) if defined else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class_iou": per_class,
        "n_pixels": total,
    }
