"""Geometry of objects on an image: IoU, polygon <-> mask, polygon area and bounds, clipping.

The one place for these computations; every reader, metric, strategy and simulated reviewer
calls them. Conventions:

- boxes are **pixel** ``xyxy`` corners of the original image (``x1 <= x2``, ``y1 <= y2``),
  either as ``(B, 4)`` float arrays or as sequences of :class:`~pseudolabel.types.Box`;
- polygons are sequences of pixel ``(x, y)`` points (at least 3 for an area);
- masks are ``(H, W)`` arrays, non-zero = inside; pixel ``(i, j)`` (row, column) covers
  ``[j, j + 1) x [i, i + 1)``, as COCO rasterises (pycocotools), so a mask drawn here is the
  one ``segm`` evaluation sees.

Heavy libraries are imported where used (torchvision for IoU, pycocotools for rasterising,
OpenCV for tracing outlines): importing this module imports none of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pseudolabel.types import Box

Point = tuple[float, float]

__all__ = [
    "as_xyxy",
    "box_iou",
    "box_polygon",
    "boxes_xyxy",
    "clip_box",
    "clip_xyxy",
    "mask_iou",
    "mask_to_polygon",
    "polygon_area",
    "polygon_bounds",
    "polygon_rle",
    "polygon_to_mask",
]


# --------------------------------------------------------------------------- boxes


def boxes_xyxy(boxes: Sequence[Box]) -> np.ndarray:
    """The pixel corners of ``boxes`` as a ``(B, 4)`` float64 ``xyxy`` array (``(0, 4)`` for none)."""
    return np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=np.float64).reshape(-1, 4)


def as_xyxy(boxes: np.ndarray | Sequence[Box] | Sequence[Sequence[float]], *, name: str = "boxes") -> np.ndarray:
    """``boxes`` as a validated ``(B, 4)`` float64 pixel ``xyxy`` array.

    Accepts an array-like of shape ``(B, 4)`` or a sequence of :class:`Box`. Raises
    ``ValueError`` naming ``name`` for another shape, a non-finite coordinate or corners out of
    order (``x2 < x1`` or ``y2 < y1``)."""
    if isinstance(boxes, Sequence) and len(boxes) and isinstance(boxes[0], Box):
        if not all(isinstance(b, Box) for b in boxes):
            raise ValueError(f"{name} mixes Box objects with other values")
        arr = boxes_xyxy(boxes)  # type: ignore[arg-type]
    else:
        arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (B, 4) (pixel xyxy), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite coordinates; expected finite pixel xyxy")
    bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} row {row} is {arr[row].tolist()}, not xyxy with x1 <= x2 and y1 <= y2")
    return arr


def box_iou(
    a: np.ndarray | Sequence[Box] | Sequence[Sequence[float]],
    b: np.ndarray | Sequence[Box] | Sequence[Sequence[float]],
    *,
    same_label: bool = False,
) -> np.ndarray:
    """Pairwise IoU of pixel ``xyxy`` boxes: ``a`` (N boxes), ``b`` (M boxes) -> ``(N, M)``
    float64 in [0, 1] (``torchvision.ops.box_iou``).

    ``a`` / ``b``: ``(N, 4)`` arrays or sequences of :class:`Box` (validated by
    :func:`as_xyxy`). Two degenerate (zero-area) boxes have IoU 0. ``same_label`` (sequences
    of :class:`Box` only): 0 wherever the two boxes' class names differ.
    """
    pa, pb = as_xyxy(a, name="a"), as_xyxy(b, name="b")
    iou: np.ndarray
    if len(pa) == 0 or len(pb) == 0:
        iou = np.zeros((len(pa), len(pb)), dtype=np.float64)
    else:
        import torch
        from torchvision.ops import box_iou as tv_box_iou

        # float64 in, float64 out: the same arithmetic as the formula written in numpy.
        raw = tv_box_iou(torch.from_numpy(pa), torch.from_numpy(pb)).numpy()
        iou = np.nan_to_num(raw, nan=0.0)  # 0 / 0 for two zero-area boxes
    if same_label:
        la, lb = _labels(a), _labels(b)
        if la is None or lb is None:
            raise ValueError("same_label=True needs sequences of Box (arrays carry no class names)")
        same = np.array([[x == y for y in lb] for x in la], dtype=np.bool_).reshape(iou.shape)
        iou = np.where(same, iou, 0.0)
    return iou


def _labels(x: Any) -> list[str] | None:
    """The class names of a sequence of :class:`Box`; ``None`` for anything else."""
    if isinstance(x, Sequence) and all(isinstance(v, Box) for v in x):
        return [v.label for v in x]
    return None


def clip_xyxy(x1: float, y1: float, x2: float, y2: float, *, width: float, height: float
              ) -> tuple[float, float, float, float]:
    """Pixel corners clipped to a ``width`` x ``height`` image (``0..width``, ``0..height``)."""
    return (min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height)),
            min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height)))


def clip_box(box: Box, *, width: float, height: float) -> Box:
    """``box`` with its corners and polygon points clipped to a ``width`` x ``height`` image
    (label, score and flags kept). The result may have zero area: the caller decides."""
    def cx(x: float) -> float:
        return min(max(x, 0.0), float(width))

    def cy(y: float) -> float:
        return min(max(y, 0.0), float(height))

    return replace(box, x1=cx(box.x1), y1=cy(box.y1), x2=cx(box.x2), y2=cy(box.y2),
                   polygon=None if box.polygon is None else tuple((cx(x), cy(y)) for x, y in box.polygon))


def box_polygon(box: Box) -> list[Point]:
    """The outline of ``box`` in pixels: its polygon when it has one of >= 3 points, else its
    rectangle's corners clockwise from the top left."""
    if box.polygon is not None and len(box.polygon) >= 3:
        return [(float(x), float(y)) for x, y in box.polygon]
    return [(box.x1, box.y1), (box.x2, box.y1), (box.x2, box.y2), (box.x1, box.y2)]


# --------------------------------------------------------------------------- polygons


def polygon_area(points: Sequence[Point]) -> float:
    """Area (pixels²) of a simple polygon by the shoelace formula (absolute value); 0 for
    fewer than 3 points."""
    if len(points) < 3:
        return 0.0
    xs = np.asarray([p[0] for p in points], dtype=float)
    ys = np.asarray([p[1] for p in points], dtype=float)
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2.0)


def polygon_bounds(points: Sequence[Point]) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)``: the smallest pixel box enclosing ``points`` (at least one)."""
    if not len(points):
        raise ValueError("a polygon with no point has no bounds")
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def polygon_rle(polygon: Sequence[Point], height: int, width: int) -> dict[str, Any]:
    """COCO run-length encoding (pycocotools' ``{"size", "counts"}``) of a pixel polygon on a
    ``height`` x ``width`` image: what COCO's ``segm`` evaluation takes."""
    from pycocotools import mask as mask_utils

    if len(polygon) < 3:
        raise ValueError(f"polygon {list(polygon)!r} has fewer than 3 points")
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size {height}x{width} must be positive pixels")
    flat = [float(v) for xy in polygon for v in xy]
    rle: dict[str, Any] = mask_utils.merge(mask_utils.frPyObjects([flat], int(height), int(width)))
    return rle


def polygon_to_mask(polygon: Sequence[Point], height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool mask of a pixel polygon, rasterised as COCO does
    (pycocotools), so masks match what ``segm`` evaluation sees."""
    from pycocotools import mask as mask_utils

    rle = polygon_rle(polygon, height, width)
    with warnings.catch_warnings():
        # pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation; harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.asarray(mask_utils.decode(rle)).astype(bool)


def mask_to_polygon(mask: np.ndarray) -> list[Point]:
    """Pixel polygon ``[(x, y), ...]`` tracing the outer contour of the largest connected
    region of a ``(H, W)`` mask (non-zero = inside); ``[]`` for an empty mask or a region
    too thin to give 3 points. Holes and smaller regions are not represented.

    Points are pixel corners in COCO's convention (pixel ``(i, j)`` covers ``[j, j+1) x
    [i, i+1)``), so for a region without diagonal edges ``polygon_to_mask(mask_to_polygon(m))``
    gives ``m`` back exactly (up to holes and other regions).
    """
    import cv2

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    m8 = (m != 0).astype(np.uint8)
    if not m8.any():
        return []
    # OpenCV traces boundary pixel *centres*. Upsampled x2 (and padded by 1), original pixel
    # i becomes big pixels 2i+1, 2i+2: a left/top edge is traced at odd big index b = 2i+1 and
    # a right/bottom edge at even b = 2i+2; ceil((b - 1) / 2) maps both onto the corners
    # i and i+1.
    big = np.pad(np.kron(m8, np.ones((2, 2), dtype=np.uint8)), 1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    best = max(contours, key=cv2.contourArea)
    pts = np.ceil((best.reshape(-1, 2).astype(float) - 1.0) / 2.0)
    # Collapse repeated consecutive points created by the mapping.
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[keep]
    if len(pts) > 1 and np.all(pts[0] == pts[-1]):
        pts = pts[:-1]
    h, w = m8.shape
    pts[:, 0] = np.clip(pts[:, 0], 0, w)
    pts[:, 1] = np.clip(pts[:, 1], 0, h)
    if len(pts) < 3:
        return []
    return [(float(x), float(y)) for x, y in pts]


# --------------------------------------------------------------------------- masks


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of binary masks: ``a`` ``(N, H, W)``, ``b`` ``(M, H, W)`` (non-zero =
    inside) -> ``(N, M)`` float64 in [0, 1]; two empty masks have IoU 0."""
    ma, mb = np.asarray(a), np.asarray(b)
    if ma.ndim != 3 or mb.ndim != 3 or ma.shape[1:] != mb.shape[1:]:
        raise ValueError(f"masks must be (N, H, W) and (M, H, W) of one image size, got {ma.shape} and {mb.shape}")
    pixels = int(np.prod(ma.shape[1:]))
    fa = (ma != 0).reshape(len(ma), pixels).astype(np.float64)
    fb = (mb != 0).reshape(len(mb), pixels).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
