"""A simulated reviewer for detection / instance-segmentation projects: an oracle that
corrects the pre-drawn boxes (or polygons) through the real Label Studio API.

It edits the way a careful person would: a predicted object that matches a true one well
keeps its drawn geometry (only its class is fixed if wrong), a poor match is redrawn to the
true geometry, spurious objects are deleted and missed ones drawn. :func:`plan_edits` is the
pure decision; :class:`SimulatedBoxReviewer` applies it to every pending task. The counts
(``edits`` per image) are the labelling cost that active-learning benchmarks compare.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pseudolabel.data.geometry import box_iou, mask_iou, polygon_bounds, polygon_to_mask
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.review.convert import validate_classes
from pseudolabel.types import Box


@dataclass(frozen=True)
class EditPlan:
    """What the reviewer does with one image's predicted objects.

    ``final``: the objects submitted (pixel boxes; polygons for segmentation): matched
    predictions first, in prediction order, then the added true objects in truth order.
    Counts: ``kept`` matched predictions whose geometry was kept (``IoU >= keep_iou``),
    ``reshaped`` matched predictions redrawn to the true geometry, ``relabelled`` matched
    predictions whose class was changed (also counted in ``kept`` or ``reshaped``),
    ``deleted`` unmatched predictions, ``added`` unmatched true objects. So
    ``kept + reshaped + deleted = len(predicted)`` and ``kept + reshaped + added = len(truth)``.
    """

    final: tuple[Box, ...]
    kept: int = 0
    relabelled: int = 0
    reshaped: int = 0
    deleted: int = 0
    added: int = 0

    @property
    def edits(self) -> int:
        """Edit operations: ``relabelled + reshaped + deleted + added`` (a box both relabelled
        and reshaped counts 2). 0 = the prediction was accepted as drawn."""
        return self.relabelled + self.reshaped + self.deleted + self.added


def _polygon_iou(a: Sequence[Box], b: Sequence[Box], *, width: int, height: int) -> np.ndarray:
    """``(len(a), len(b))`` IoU of the polygons rasterised on a ``width`` x ``height`` image
    (COCO's rasterisation, as segmentation metrics see them)."""

    def masks(bs: Sequence[Box], what: str) -> np.ndarray:
        out = np.zeros((len(bs), height, width), dtype=bool)
        for k, x in enumerate(bs):
            if x.polygon is None or len(x.polygon) < 3:
                raise ValueError(f"{what} object {k} ({x.label!r}) has no polygon of >= 3 points; "
                                 "task 'segment' compares polygons")
            out[k] = polygon_to_mask(x.polygon, height, width)
        return out

    return mask_iou(masks(a, "predicted"), masks(b, "true"))


def _polygon_box(b: Box) -> Box:
    """``b`` with its ``xyxy`` set to its polygon's bounds (what Label Studio gives back for a
    polygon region)."""
    assert b.polygon is not None
    x1, y1, x2, y2 = polygon_bounds(b.polygon)
    return replace(b, x1=x1, y1=y1, x2=x2, y2=y2)


def plan_edits(
    predicted: Sequence[Box],
    truth: Sequence[Box],
    *,
    match_iou: float = 0.5,
    keep_iou: float = 0.8,
    task: str = "detect",
    image_size: tuple[int, int] | None = None,
) -> EditPlan:
    """Decide the reviewer's answer for one image.

    ``predicted`` / ``truth``: pixel boxes (with polygons for ``task="segment"``).
    Matching is one-to-one and class-agnostic, maximising the summed IoU
    (``scipy.optimize.linear_sum_assignment``); pairs with ``IoU < match_iou`` stay
    unmatched. IoU is box IoU for ``"detect"`` and mask IoU of the polygons for
    ``"segment"`` (rasterised on ``image_size = (width, height)`` pixels, required then).

    A matched pair with ``IoU >= keep_iou`` keeps the predicted geometry and takes the true
    class; below it the object is redrawn to the true geometry (and class). Unmatched
    predictions are deleted, unmatched true objects added. Submitted objects carry no score;
    for ``"detect"`` no polygon, for ``"segment"`` the polygon and its bounding box.
    """
    from scipy.optimize import linear_sum_assignment

    if task not in ("detect", "segment"):
        raise ValueError(f"task {task!r} is not one of 'detect', 'segment'")
    if not 0.0 < match_iou <= keep_iou <= 1.0:
        raise ValueError(f"need 0 < match_iou <= keep_iou <= 1, got match_iou={match_iou!r}, "
                         f"keep_iou={keep_iou!r}")
    pred, true = list(predicted), list(truth)
    if task == "segment":
        if image_size is None:
            raise ValueError("task 'segment' needs image_size=(width, height) in pixels for mask IoU")
        w, h = (int(v) for v in image_size)
        if w <= 0 or h <= 0:
            raise ValueError(f"image_size {image_size!r} must be positive (width, height) pixels")
        iou = _polygon_iou(pred, true, width=w, height=h)
    else:
        iou = box_iou(pred, true)

    def clean(b: Box) -> Box:
        b = replace(b, score=None)
        return _polygon_box(b) if task == "segment" else replace(b, polygon=None)

    pairs: dict[int, int] = {}
    if pred and true:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        pairs = {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] >= match_iou}
    final: list[Box] = []
    kept = relabelled = reshaped = deleted = 0
    for i, p in enumerate(pred):
        if i not in pairs:
            deleted += 1
            continue
        t = true[pairs[i]]
        relabelled += int(p.label != t.label)
        if iou[i, pairs[i]] >= keep_iou:
            kept += 1
            final.append(clean(replace(p, label=t.label)))
        else:
            reshaped += 1
            final.append(clean(t))
    matched = set(pairs.values())
    added = [clean(t) for j, t in enumerate(true) if j not in matched]
    return EditPlan(final=tuple(final) + tuple(added), kept=kept, relabelled=relabelled,
                    reshaped=reshaped, deleted=deleted, added=len(added))


@dataclass
class BoxReviewStats:
    """What one :meth:`SimulatedBoxReviewer.answer_pending` call did.

    ``accepted``: answers with 0 edits (the pre-drawn objects submitted unchanged);
    ``corrected``: answers with at least one edit, or to a task without a prediction;
    ``edits`` and the per-kind counts are
    sums of :class:`EditPlan` over the answers; ``per_item``: ``(item id, edits)`` in answer
    order; ``seconds``: wall time.
    """

    answered: int = 0
    accepted: int = 0
    corrected: int = 0
    edits: int = 0
    kept: int = 0
    relabelled: int = 0
    reshaped: int = 0
    deleted: int = 0
    added: int = 0
    seconds: float = 0.0
    per_item: list[tuple[str, int]] = field(default_factory=list)


class SimulatedBoxReviewer:
    """Oracle reviewer for detection / segmentation projects.

    - ``client``: the project's :class:`LabelStudioClient` (``task_type`` ``"detect"`` or
      ``"segment"``; its token's user is the author Label Studio records);
    - ``truth``: item id -> true objects (pixel boxes; polygons for segmentation), e.g.
      :attr:`pseudolabel.sim.composites.CompositeDataset.truth`;
    - ``classes``: the project's class names (every true label must be one);
    - ``sizes``: image ``(width, height)`` in pixels, one pair for all items or a mapping
      item id -> pair (needed to write Label Studio's percent coordinates);
    - ``match_iou`` / ``keep_iou``: see :func:`plan_edits`.
    """

    def __init__(
        self,
        client: LabelStudioClient,
        truth: Mapping[str, Sequence[Box]],
        classes: Sequence[str],
        *,
        sizes: tuple[int, int] | Mapping[str, tuple[int, int]],
        match_iou: float = 0.5,
        keep_iou: float = 0.8,
        reviewer: str = "simulated",
    ) -> None:
        self.client = client
        self.truth = truth
        self.classes = classes
        self.sizes = sizes
        self.match_iou = match_iou
        self.keep_iou = keep_iou
        self.reviewer = reviewer

    def _size(self, item_id: str) -> tuple[int, int]:
        if isinstance(self.sizes, Mapping):
            if item_id not in self.sizes:
                raise ValueError(f"item {item_id!r} has a task but no entry in sizes")
            w, h = self.sizes[item_id]
        else:
            w, h = self.sizes
        return int(w), int(h)

    def _truth(self, item_id: str, classes: tuple[str, ...]) -> Sequence[Box]:
        if item_id not in self.truth:
            raise ValueError(f"item {item_id!r} has a task but no entry in truth")
        boxes = self.truth[item_id]
        bad = sorted({b.label for b in boxes} - set(classes))
        if bad:
            raise ValueError(f"truth for item {item_id!r} has classes {bad!r}, not among {list(classes)!r}")
        return boxes

    def answer_pending(self, *, limit: int | None = None) -> BoxReviewStats:
        """Answer up to ``limit`` (default: all) tasks that have no annotation yet, most
        uncertain first (Label Studio's serving order).

        Each answer is one ``annotations.create`` call on the real server holding
        :attr:`EditPlan.final` (an empty list = "no objects on this image"), with
        ``parent_prediction`` set to the task's pre-drawn prediction.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit {limit!r} must be >= 0 or None")
        task_type = self.client.task_type
        if task_type not in ("detect", "segment"):
            raise ValueError(
                f"SimulatedBoxReviewer answers 'detect' or 'segment' projects, not {task_type!r}"
            )
        classes = validate_classes(self.classes)
        t0 = time.perf_counter()
        stats = BoxReviewStats()
        pending = self.client.pending()
        if limit is not None:
            pending = pending[:limit]
        for task in pending:
            truth = self._truth(task.item_id, classes)
            w, h = self._size(task.item_id)
            plan = plan_edits(task.predicted_boxes, truth, match_iou=self.match_iou,
                              keep_iou=self.keep_iou, task=task_type, image_size=(w, h))
            self.client.annotate(task.task_id, boxes=plan.final, width=w, height=h,
                                 parent_prediction=task.prediction_id)
            stats.answered += 1
            # As Label Studio's outcome: accepted = the pre-drawn prediction left unchanged.
            accepted = plan.edits == 0 and task.prediction_id is not None
            stats.accepted += int(accepted)
            stats.corrected += int(not accepted)
            stats.edits += plan.edits
            stats.kept += plan.kept
            stats.relabelled += plan.relabelled
            stats.reshaped += plan.reshaped
            stats.deleted += plan.deleted
            stats.added += plan.added
            stats.per_item.append((task.item_id, plan.edits))
        stats.seconds = time.perf_counter() - t0
        return stats
