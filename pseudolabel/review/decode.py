"""Label Studio tasks and annotations -> our types, defensively (pure functions, no I/O).

Anything a server (or a person editing in it) can put in a task is checked here: a bad
annotation — two choices, a class not in the config, a result that is not a list, a
non-integer id, a garbage timestamp, bad geometry — becomes a :class:`Rejected` with its
reason instead of an exception, so one bad answer never blocks the others. A rotated
rectangle (forbidden by our label config, but possible in an edited project) is used as its
enclosing axis-aligned box and reported as a ``Rejected`` with ``action="used"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pseudolabel.data.geometry import clip_box
from pseudolabel.review import convert
from pseudolabel.types import Annotation, Box, Item, TaskType


@dataclass(frozen=True)
class Rejected:
    """An annotation (or task) that could not be used as it is.

    ``action``: ``"ignored"`` (nothing was stored; the task is flagged for the reviewer) or
    ``"used"`` (stored after a repair, e.g. a rotated box replaced by its enclosing box);
    ``saved_at``: the annotation's last save time when it could be read (a fix in Label Studio
    changes it, so the fixed version is pulled again).
    """

    task_id: int | None
    annotation_id: int | None
    item_id: str | None
    reason: str
    action: str = "ignored"
    saved_at: datetime | None = None


def get(obj: Any, key: str, default: Any = None) -> Any:
    """Field of an SDK model or of a plain dict (task annotations come back as dicts)."""
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def parse_time(value: Any) -> datetime:
    """Label Studio timestamps come back as datetimes or ISO strings (``...Z``); UTC when naive."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not an ISO date-time") from None
    else:
        raise ValueError(f"timestamp {value!r} is neither a datetime nor an ISO string")
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def as_int(value: Any, what: str) -> int:
    """``value`` as an int (ints and digit strings); ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{what} {value!r} is not an integer")


def _inside(box: Box, width: int, height: int, warnings: list[str] | None) -> Box:
    """``box`` clipped to the ``width`` x ``height`` pixel image (a warning when that moved a
    corner by more than half a pixel); ``ValueError`` when nothing of it lies in the image."""
    clipped = clip_box(box, width=width, height=height)
    corners = (box.x1, box.y1, box.x2, box.y2)
    if not (clipped.x1 < clipped.x2 and clipped.y1 < clipped.y2):
        raise ValueError(f"box {box.label!r} ({', '.join(f'{v:.1f}' for v in corners)} px) lies outside "
                         f"the {width}x{height} image")
    if max(abs(a - b) for a, b in zip(corners, (clipped.x1, clipped.y1, clipped.x2, clipped.y2))) > 0.5:
        if warnings is not None:
            warnings.append(f"box {box.label!r} reaches outside the {width}x{height} image: clipped to "
                            f"[{clipped.x1:.1f}, {clipped.y1:.1f}, {clipped.x2:.1f}, {clipped.y2:.1f}] px")
        return clipped
    return box


@dataclass(frozen=True)
class Decoder:
    """Turns one project's task results into labels.

    ``classes``: the config's classes; ``task_type``: classify / detect / segment;
    ``images_root`` / ``document_root``: to map the image URL back to a path;
    ``data_key`` / ``item_id_key``: the task data keys of the image and of our item id.
    """

    classes: tuple[str, ...]
    task_type: TaskType
    images_root: Path
    document_root: Path | None
    data_key: str = "image"
    item_id_key: str = "pseudolabel_id"

    def image_path(self, data: Mapping[str, Any]) -> Path:
        """The local file a task's image URL points at, for any task (ours or made by hand).

        Accepted: ``/data/local-files/?d=<path relative to document_root>``, also behind a
        ``http(s)://host`` prefix. The path must stay inside the document root (default:
        ``images_root``'s parent), the only folder Label Studio serves local files from: a
        ``..`` that leaves it is refused. Anything else (an uploaded file ``/data/upload/...``,
        a cloud-storage or web URL) raises ``ValueError`` saying what is accepted.
        """
        url = data.get(self.data_key)
        if not isinstance(url, str) or not url:
            raise ValueError(f"task data has no image URL under {self.data_key!r} (keys: {sorted(data)[:10]!r})")
        at = url.find(convert.LOCAL_FILES_PREFIX)
        if at < 0 or (at > 0 and not url.lower().startswith(("http://", "https://"))):
            raise ValueError(
                f"image {url[:200]!r} is not a local file of Label Studio's document root: only "
                f"{convert.LOCAL_FILES_PREFIX}<path> URLs can be read here (uploaded files, cloud storage "
                "and web URLs cannot)"
            )
        root = Path(self.images_root).resolve()
        doc_root = root.parent if self.document_root is None else Path(self.document_root).resolve()
        path = convert.path_from_local_files_url(url[at:], self.images_root, document_root=self.document_root)
        resolved = path.resolve()
        if not resolved.is_relative_to(doc_root):
            raise ValueError(f"image {url[:200]!r} points outside the document root {str(doc_root)!r}")
        return resolved

    def item(self, data: Mapping[str, Any]) -> Item:
        """The :class:`Item` a task's data describes (width/height 0 when not given)."""
        url = str(data.get(self.data_key, ""))
        path = (
            convert.path_from_local_files_url(url, self.images_root, document_root=self.document_root)
            if url.startswith(convert.LOCAL_FILES_PREFIX)
            else Path(url)
        )
        return Item(
            id=str(data[self.item_id_key]),
            path=path,
            width=as_int(data.get("width", 0) or 0, "task data width"),
            height=as_int(data.get("height", 0) or 0, "task data height"),
        )

    def result(self, result: Any, item: Item, warnings: list[str] | None = None) -> tuple[str | None, tuple[Box, ...]]:
        """``(label, boxes)`` of a result list; ``ValueError`` with the reason when unusable."""
        if not isinstance(result, Sequence) or isinstance(result, (str, bytes)):
            raise ValueError(f"result is {type(result).__name__}, not a list of regions")
        if any(not isinstance(r, Mapping) for r in result):
            raise ValueError("result holds a region that is not an object")
        if self.task_type == "classify":
            label = convert.label_from_choices(result)
            if label is not None and label not in self.classes:
                raise ValueError(f"label {label!r} is not one of the project's classes {list(self.classes)!r}")
            return label, ()
        size = (item.width or None, item.height or None)
        boxes = convert.boxes_from_result(result, width=size[0], height=size[1], rotated="enclose", warnings=warnings)
        bad = sorted({b.label for b in boxes} - set(self.classes))
        if bad:
            raise ValueError(f"box labels {bad!r} are not among the project's classes {list(self.classes)!r}")
        for b in boxes:
            if not (b.x1 < b.x2 and b.y1 < b.y2):
                raise ValueError(f"box {b.label!r} has no area ({b.x1:.1f}, {b.y1:.1f}, {b.x2:.1f}, {b.y2:.1f} px)")
        if item.width > 0 and item.height > 0:
            boxes = tuple(_inside(b, item.width, item.height, warnings) for b in boxes)
        return None, boxes

    @staticmethod
    def latest_prediction(task: Any, prediction_id: int | None = None) -> Any | None:
        """The prediction an annotation was made from (``parent_prediction``), else the latest."""
        preds = [p for p in (get(task, "predictions") or []) if isinstance(p, Mapping) or hasattr(p, "id")]
        if prediction_id is not None:
            for p in preds:
                if get(p, "id") == prediction_id:
                    return p
        return max(preds, key=lambda p: get(p, "id") or 0) if preds else None

    def annotation(self, task: Any, ann: Any, item: Item, *, reviewer: str | None) -> tuple[Annotation, list[str]]:
        """One Label Studio annotation as an :class:`Annotation` plus repair warnings.

        Raises ``ValueError`` with the reason when it cannot be used (see the module doc).
        Mapping: ``review_outcome`` ``"accepted"`` when the result equals the prediction it was
        made from, ``"corrected"`` otherwise, ``"skipped"`` for a cancelled annotation or an
        empty classification submission; for detection an empty submission is "no objects".
        """
        saved = parse_time(get(ann, "updated_at") or get(ann, "created_at"))
        ann_id = as_int(get(ann, "id"), "annotation id")
        data = get(task, "data") or {}
        round_id = data.get("round")
        warnings: list[str] = []
        pred = self.latest_prediction(task, get(ann, "parent_prediction"))
        common: dict[str, Any] = dict(
            item=item, source="human",
            round=None if round_id in (None, "") else as_int(round_id, "task data round"),
            reviewer=reviewer,
            model_version=None if pred is None else get(pred, "model_version"),
            created_at=saved, ls_task_id=as_int(get(task, "id"), "task id"), ls_annotation_id=ann_id,
        )
        cancelled = bool(get(ann, "was_cancelled"))
        label, boxes = (None, ()) if cancelled else self.result(get(ann, "result") or [], item, warnings)
        empty_answer = not cancelled and self.task_type != "classify"
        if label is None and not boxes and not empty_answer:
            return Annotation(review_outcome="skipped", **common), warnings
        outcome = "corrected"
        if pred is not None:
            try:
                p_label, p_boxes = self.result(get(pred, "result") or [], item)
            except ValueError:
                p_label, p_boxes = None, ()  # a broken prediction: the answer is a correction
            same = label == p_label if self.task_type == "classify" else convert.same_boxes(boxes, p_boxes)
            outcome = "accepted" if same else "corrected"
        return Annotation(label=label, boxes=boxes, review_outcome=outcome, empty_ok=empty_answer, **common), warnings
