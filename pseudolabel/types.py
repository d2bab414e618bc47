"""Small frozen value types shared by every part of the pipeline.

Conventions used everywhere:
- an item id is the sha256 hex digest of the file's bytes (stable across renames);
- box coordinates are **pixels** of the original image, ``xyxy`` (x1 < x2, y1 < y2);
  polygons are pixel ``(x, y)`` points; percent coordinates exist only inside the
  Label Studio converters;
- uncertainty scores point one way: higher = more uncertain = reviewed first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

TaskType = Literal["classify", "detect", "segment"]
Source = Literal["seed", "human", "pseudo"]
Split = Literal["seed", "pool", "holdout"]
SOURCES: tuple[Source, ...] = ("seed", "human", "pseudo")
SPLITS: tuple[Split, ...] = ("seed", "pool", "holdout")
CLASSIFY_FORMATS: tuple[str, ...] = ("imagefolder", "csv", "labelme", "cvat", "labelstudio")
"""Label formats a classification set is read from and exported to (:mod:`pseudolabel.data.formats`)."""
OBJECT_FORMATS: tuple[str, ...] = ("yolo", "coco", "voc", "labelme", "cvat", "labelstudio")
"""Label formats a detection / segmentation set is read from and exported to."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def validate_classes(classes: Sequence[str], *, where: object = None) -> tuple[str, ...]:
    """Return ``classes`` as a tuple after checking: a sequence (not one string) of at least
    one non-empty, unique name. Errors start with ``where`` (a file, a folder) when given."""
    at = f"{where}: " if where is not None else ""
    if isinstance(classes, str):
        raise ValueError(f"{at}classes must be a sequence of class names, not the string {classes!r}")
    out = tuple(classes)
    if not out:
        raise ValueError(f"{at}classes is empty: give at least one class name")
    for c in out:
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"{at}class name {c!r} in {list(out)!r} is not a non-empty string")
    dupes = sorted({c for c in out if out.count(c) > 1})
    if dupes:
        raise ValueError(f"{at}duplicate class names {dupes!r} in {list(out)!r}")
    return out


@dataclass(frozen=True)
class Item:
    """One image. ``id`` = sha256 of the file bytes; ``width``/``height`` in pixels after
    EXIF orientation is applied."""

    id: str
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class Box:
    """One object: pixel ``xyxy`` box, class name, optional score and polygon (pixels).

    Flags of ground truth read from a file (both ``False`` for predictions and reviews):

    - ``crowd``: a COCO ``iscrowd=1`` region (many objects in one region): kept out of
      training; in evaluation detections on it are ignored, as pycocotools does;
    - ``difficult``: a Pascal VOC ``<difficult>1</difficult>`` object: ignored in evaluation
      (neither found nor missed), as the VOC devkit does; in training only when the data
      source says so (``data.*.train_difficult``).
    """

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    score: float | None = None
    polygon: tuple[tuple[float, float], ...] | None = None
    crowd: bool = False
    difficult: bool = False


@dataclass(frozen=True)
class Annotation:
    """A label for one item, with its provenance.

    Classification uses ``label`` (a class name); detection/segmentation use ``boxes``.
    ``source`` is who made it: ``seed`` (the initial labelled set), ``human`` (a reviewer),
    ``pseudo`` (a model's confident prediction). ``weight`` scales its training loss
    (pseudo-labels weigh less than human labels).
    """

    item: Item
    label: str | None = None
    boxes: tuple[Box, ...] = ()
    source: Source = "human"
    round: int | None = None
    reviewer: str | None = None
    model_version: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    weight: float = 1.0
    # What the reviewer did with the model's suggestion: "accepted", "corrected",
    # "skipped" (no label), or None when not from a review.
    review_outcome: str | None = None
    # Label Studio ids, when the annotation came from there (for incremental pulls).
    ls_task_id: int | None = None
    ls_annotation_id: int | None = None
    # Detection/segmentation: True when ``boxes == ()`` is a real answer ("no objects on this
    # image"), not the absence of a label.
    empty_ok: bool = False


@dataclass(frozen=True, eq=False)
class Prediction:
    """A model's output for one item.

    - ``probs``: ``(C,)`` class probabilities (classification), rows sum to 1;
    - ``embedding``: ``(D,)`` float32 image embedding (for diversity strategies);
    - ``boxes`` / ``box_probs``: detection output, ``box_probs`` is ``(B, C)``: the full class
      vector of every kept box. From YOLO these are independent sigmoids (row max = the box's
      confidence; rows do not sum to 1): normalise with
      ``pseudolabel.strategies.detection.normalise_box_probs`` before entropy/margin.
    """

    item_id: str
    model_version: str
    probs: np.ndarray | None = None
    embedding: np.ndarray | None = None
    boxes: tuple[Box, ...] = ()
    box_probs: np.ndarray | None = None

    @property
    def label_index(self) -> int | None:
        """Index of the top class in ``probs``; None for a detection (no probs)."""
        return None if self.probs is None else int(np.argmax(self.probs))


@dataclass(frozen=True, eq=False)
class Candidate:
    """An item selected for human review, with the prediction to pre-draw.

    ``score``: the item's uncertainty under the current model (higher = more uncertain; it
    sets the review order). ``kind``: ``"uncertain"`` for active-learning picks, ``"relabel"``
    for existing labels sent back for a second look. ``note``: a line shown to the reviewer
    above the image (empty: none).
    """

    item: Item
    score: float
    prediction: Prediction | None
    strategy: str
    kind: str = "uncertain"
    note: str = ""
