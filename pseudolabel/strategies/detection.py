"""Detection uncertainty: per-box scores, box -> image aggregation, flip stability.

Pure functions on arrays (IoU from :mod:`pseudolabel.data.geometry`). Conventions:

- boxes are pixel ``xyxy`` arrays of shape ``(B, 4)`` (``x1 < x2``, ``y1 < y2``);
- ``box_probs`` are ``(B, C)`` per-box class scores. Detectors such as YOLO give independent
  **sigmoid** scores (rows in ``[0, 1]`` that need not sum to 1); :func:`normalise_box_probs`
  divides each row by its sum so the classification scores of
  :mod:`pseudolabel.strategies.uncertainty` apply;
- every score points one way: higher = more uncertain = reviewed first.

Composition (modAL-style): :func:`box_uncertainty` gives ``(B,)`` per-box scores,
:func:`aggregate` reduces them to one image score, :func:`localisation_stability` adds a
test-time-augmentation term, :func:`image_uncertainty` wires them for one
:class:`~pseudolabel.types.Prediction`. :func:`select_images` picks the batch from the
``(N,)`` image scores and an ``(N, D)`` image-embedding array from any source (the
detector's own pooled features, or a pretrained / self-supervised backbone's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from pseudolabel.data.geometry import as_xyxy, box_iou, boxes_xyxy
from pseudolabel.strategies.registry import needs_probs, without_probs
from pseudolabel.strategies.selection import Selection
from pseudolabel.strategies.uncertainty import KERNELS
from pseudolabel.types import Prediction


Aggregation = Literal["max", "mean", "sum", "topk_mean"]
AGGREGATIONS: tuple[str, ...] = ("max", "mean", "sum", "topk_mean")
BOX_SCORES: tuple[str, ...] = tuple(sorted(KERNELS))

__all__ = [
    "AGGREGATIONS",
    "BOX_SCORES",
    "detection_strategies",
    "aggregate",
    "box_uncertainty",
    "boxes_array",
    "hflip_boxes",
    "image_uncertainty",
    "localisation_stability",
    "normalise_box_probs",
    "select_images",
]


def normalise_box_probs(box_probs: np.ndarray) -> np.ndarray:
    """Per-box class scores ``(B, C)`` (e.g. independent sigmoids in [0, 1]) -> ``(B, C)``
    rows summing to 1. A row of all zeros becomes uniform (nothing is known about it)."""
    arr = np.asarray(box_probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"box_probs must have shape (B, C), got {arr.shape}")
    if arr.size and (not np.isfinite(arr).all() or (arr < 0).any()):
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1) | (arr < 0).any(axis=1))[0])
        raise ValueError(f"box_probs row {row} is {arr[row].tolist()}; expected finite scores >= 0")
    sums = arr.sum(axis=1, keepdims=True)
    uniform = np.full_like(arr, 1.0 / max(arr.shape[1], 1))
    return np.where(sums > 0, arr / np.where(sums > 0, sums, 1.0), uniform)


def box_uncertainty(box_probs: np.ndarray, *, score: str = "entropy") -> np.ndarray:
    """Per-box uncertainty: ``(B, C)`` class scores -> ``(B,)``, higher = more uncertain.

    Rows are normalised first (:func:`normalise_box_probs`). ``score``: ``"entropy"``
    (normalised to [0, 1] by ``log C``), ``"margin"`` or ``"least_confidence"`` (see
    :mod:`pseudolabel.strategies.uncertainty`). Note that normalising discards how confident
    the detector is that there is an object at all; :func:`image_uncertainty` adds that back.
    """
    if score not in KERNELS:
        raise ValueError(f"unknown box score {score!r}; choose one of {list(BOX_SCORES)!r}")
    probs = normalise_box_probs(box_probs)
    if probs.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    if score == "entropy":
        return KERNELS["entropy"](probs, normalise=True)  # type: ignore[call-arg]
    return KERNELS[score](probs)


def aggregate(
    box_scores: np.ndarray,
    *,
    how: Aggregation | str = "max",
    k: int = 3,
    empty_score: float = 1.0,
) -> float:
    """Reduce per-box scores ``(B,)`` to one image score (higher = more uncertain).

    ``how``: ``"max"`` (the worst box), ``"mean"``, ``"sum"`` (grows with the number of boxes:
    busy images first), ``"topk_mean"`` (mean of the ``k`` highest; equals ``"max"`` for
    ``k=1`` and ``"mean"`` when ``k >= B``).

    ``empty_score``: the score of an image with no box (``B == 0``). Default 1.0, the top of
    the [0, 1] range of the per-box scores: an image on which the model finds nothing
    confident is treated as uncertain (it may hold objects the model misses), not as easy.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {list(AGGREGATIONS)!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    s = np.asarray(box_scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"box_scores must be a 1-D array (B,), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"box_scores contains non-finite values at {np.flatnonzero(~np.isfinite(s)).tolist()}")
    if s.size == 0:
        return float(empty_score)
    if how == "max":
        return float(s.max())
    if how == "mean":
        return float(s.mean())
    if how == "sum":
        return float(s.sum())
    top = np.sort(s)[::-1][: int(k)]
    return float(top.mean())


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror pixel ``xyxy`` boxes ``(B, 4)`` horizontally in an image ``width`` pixels wide."""
    arr = as_xyxy(boxes, name="boxes")
    out = arr.copy()
    out[:, 0] = width - arr[:, 2]
    out[:, 2] = width - arr[:, 0]
    return out


def localisation_stability(boxes: np.ndarray, flipped_boxes: np.ndarray, width: float) -> float:
    """Instability of boxes under a horizontal flip, in [0, 1]; higher = more uncertain.

    ``boxes`` ``(B, 4)``: pixel xyxy on the original image; ``flipped_boxes`` ``(B', 4)``:
    pixel xyxy predicted on the mirrored image (in the mirrored image's coordinates);
    ``width``: image width in pixels. The flipped boxes are mirrored back and each original
    box is matched with its best-IoU partner; the result is ``1 - mean best IoU``. Both empty:
    0 (stable); exactly one empty: 1 (what was found vanished or appeared).
    """
    if not np.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive number of pixels, got {width!r}")
    a = as_xyxy(boxes, name="boxes")
    b = hflip_boxes(as_xyxy(flipped_boxes, name="flipped_boxes"), width)
    if len(a) == 0 and len(b) == 0:
        return 0.0
    if len(a) == 0 or len(b) == 0:
        return 1.0
    # Symmetric: boxes that appear only after the flip count as unstable too.
    iou = box_iou(a, b)
    best = np.concatenate([iou.max(axis=1), iou.max(axis=0)])
    return float(1.0 - best.mean())


def boxes_array(prediction: Prediction) -> np.ndarray:
    """The prediction's boxes as a pixel ``xyxy`` array ``(B, 4)``."""
    return boxes_xyxy(prediction.boxes)


def image_uncertainty(
    prediction: Prediction,
    tta_prediction: Prediction | None = None,
    *,
    how: Aggregation | str = "max",
    score: str = "entropy",
    k: int = 3,
    empty_score: float = 1.0,
    width: float | None = None,
    stability_weight: float = 0.5,
    min_box_score: float = 0.0,
) -> float:
    """One uncertainty score for a detection prediction; higher = more uncertain.

    Per box: ``max(class uncertainty, 1 - confidence)``, where the class uncertainty is
    :func:`box_uncertainty` of the normalised class vector and the confidence is the box's
    ``score`` (its top raw class score): a box the detector barely believes in is uncertain
    even if its class vector is peaked. Boxes are reduced with :func:`aggregate` (``how``,
    ``k``, ``empty_score``), so the base score lies in [0, 1] except for ``how="sum"``.

    ``min_box_score``: boxes whose confidence is below it are left out (background the NMS
    floor let through: with a low ``conf`` every image carries many such boxes, each scoring
    ~1, which flattens the ranking); an image left with no box gets ``empty_score``.

    With ``tta_prediction`` (the prediction on the horizontally mirrored image, boxes in its
    coordinates) the result is ``(1 - w) * base + w * localisation_stability`` with
    ``w = stability_weight``; ``width`` (pixels) is required then.
    """
    probs: np.ndarray  # (B, C) float64
    if prediction.box_probs is None:
        probs = np.zeros((len(prediction.boxes), 0))
    else:
        probs = np.asarray(prediction.box_probs, dtype=np.float64)
    if probs.shape[0] != len(prediction.boxes):
        raise ValueError(
            f"prediction for item {prediction.item_id} has {len(prediction.boxes)} boxes but box_probs "
            f"of shape {probs.shape}; expected (B, C) with B = number of boxes"
        )
    if not 0.0 <= min_box_score <= 1.0:
        raise ValueError(f"min_box_score must be in [0, 1], got {min_box_score!r}")
    conf: np.ndarray = np.array(
        [b.score if b.score is not None else (probs[i].max() if probs.shape[1] else 1.0)
         for i, b in enumerate(prediction.boxes)],
        dtype=np.float64,
    ).reshape(-1)
    keep = conf >= min_box_score
    per_box: np.ndarray  # (B',) float64, one score per kept box
    if not keep.any():
        per_box = np.zeros(0)
    else:
        probs, conf = probs[keep], conf[keep]
        cls_unc = box_uncertainty(probs, score=score) if probs.shape[1] else np.zeros(len(conf))
        per_box = np.maximum(cls_unc, 1.0 - np.clip(conf, 0.0, 1.0))
    base = aggregate(per_box, how=how, k=k, empty_score=empty_score)
    if tta_prediction is None:
        return base
    if width is None:
        raise ValueError("width (image width in pixels) is required with tta_prediction")
    if not 0.0 <= stability_weight <= 1.0:
        raise ValueError(f"stability_weight must be in [0, 1], got {stability_weight!r}")
    instability = localisation_stability(boxes_array(prediction), boxes_array(tta_prediction), width)
    return float((1.0 - stability_weight) * base + stability_weight * instability)


def select_images(
    scores: np.ndarray,
    k: int,
    *,
    strategy: str,
    embeddings: np.ndarray | None = None,
    labelled_embeddings: np.ndarray | None = None,
    hybrid_factor: int = 5,
    n_classes: int | None = None,
    seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Selection:
    """Pick ``k`` images for review with any registered strategy that runs without class
    probabilities (:func:`detection_strategies`), through the one
    :func:`~pseudolabel.strategies.select`.

    Args:
        scores: (N,) image uncertainty (higher = more uncertain), e.g. from
            :func:`image_uncertainty`: what the uncertainty strategies rank by.
        k: batch size; ``min(k, N)`` are returned.
        strategy: e.g. ``random``; ``least_confidence`` / ``margin`` / ``entropy`` (top-k by
            ``scores``, which the caller computed with that box score); ``kcenter``;
            ``hybrid`` (the top ``hybrid_factor * k`` by ``scores``, then k-center among them); ``dbal``
            (the same candidates, k-means into k groups, the most uncertain of each);
            ``typiclust`` / ``centroid`` / ``probcover`` (typicality / coverage on
            ``embeddings``); ``schedule``; or one registered later.
        embeddings: (N, D) image embeddings from any source: the detector's own, or a
            pretrained / self-supervised backbone's (better in the first rounds).
        labelled_embeddings: (M, D) embeddings of the images labelled already, same source.
        n_classes: the class count (``probcover`` clusters into that many groups unless
            ``options["probcover"]["delta"]`` is set; ``schedule`` counts labels per class).
        seed: seed of ``random`` and of the clustering / first k-center pick.
        options: strategy options by name, as for :func:`~pseudolabel.strategies.select`.

    Returns:
        :class:`~pseudolabel.strategies.Selection`: (min(k, N),) indices in pick order and
        their scores.

    Raises:
        ValueError: a strategy that needs class probabilities (listing the ones that do
        not), missing or mismatched embeddings.
    """
    from pseudolabel.strategies.selection import select

    if needs_probs(strategy):
        raise ValueError(f"strategy {strategy!r} is not one of the strategies for boxes (it needs class "
                         f"probabilities per image): {', '.join(detection_strategies())}")
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if min(int(k), sc.shape[0]) <= 0:
        return Selection(np.zeros(0, dtype=np.int64), np.zeros(0), strategy)
    emb = embeddings if embeddings is not None and np.asarray(embeddings).size else None
    return select(strategy, k=int(k), scores=sc, embeddings=emb, labelled_embeddings=labelled_embeddings,
                  hybrid_factor=hybrid_factor, seed=seed, options=options, n_classes=n_classes)


def detection_strategies() -> tuple[str, ...]:
    """The strategies a detection / segmentation round accepts: every registered strategy
    that runs without class probabilities (so one registered later is usable for boxes)."""
    import pseudolabel.strategies  # noqa: F401  (fills the registry)

    return without_probs()
