"""Boxes <-> JSON: the one codec for every place boxes are stored or sent as text.

Where it is used, and the options each place takes:

- the ledger's ``labels.boxes`` and ``holdout_truth`` columns (:mod:`pseudolabel.data.ledger`):
  ``boxes_to_json(boxes)`` (``None`` for no boxes) or ``boxes_to_json(boxes, empty=True)``
  (``"[]"``: an explicit "no objects on this image" label);
- the ``boxes`` column of detection prediction shards (:mod:`pseudolabel.inference`) and the
  Ray actors' answers (:mod:`pseudolabel.distributed`): ``boxes_to_json(boxes,
  probs=box_probs, empty=True, compact=True)``, read back with :func:`boxes_and_probs_from_json`;
- the composite data sets' ``truth.json`` (:mod:`pseudolabel.sim.composites`):
  :func:`box_to_dict` / :func:`box_from_dict` inside a larger document.

One object per box, in this key order::

    {"xyxy": [x1, y1, x2, y2],        pixels of the original image
     "label": "cat",                  class name
     "score": 0.9 | null,             confidence in [0, 1], null for labels
     "polygon": [[x, y], ...] | null, pixel points
     "crowd": true, "difficult": true written only when set (ground-truth flags)
     "probs": [p0, p1, ...]}          written only when class vectors are given: the box's
                                      (C,) scores, float32 values

Every release wrote one of these shapes, so every row and shard on disk reads back: rows
written before the ground-truth flags existed read as unflagged, shards whose boxes have
``"probs": null`` read as boxes without a class vector. The ledger's text is byte-identical
to what it was (``training_signature`` in the round hashes it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np

from pseudolabel.types import Box

__all__ = ["box_from_dict", "box_to_dict", "boxes_and_probs_from_json", "boxes_from_json", "boxes_to_json"]

_SHAPE = ("{'xyxy': [x1, y1, x2, y2], 'label': name, 'score'?: number or null, 'polygon'?: [[x, y], ...] or null, "
          "'crowd'?: bool, 'difficult'?: bool, 'probs'?: [numbers] or null}")


def _plain(v: Any) -> Any:
    """``v`` as a JSON number: Python ints and floats as they are (so text written before stays
    byte-identical), NumPy scalars as floats."""
    return v if type(v) in (int, float) else float(v)


def box_to_dict(box: Box, *, probs: Sequence[float] | np.ndarray | None = None) -> dict[str, Any]:
    """One box as a JSON-ready dict (the module docstring gives the keys); ``probs``: the box's
    ``(C,)`` class vector, written as float32 values."""
    d: dict[str, Any] = {
        "xyxy": [_plain(box.x1), _plain(box.y1), _plain(box.x2), _plain(box.y2)],
        "label": box.label,
        "score": None if box.score is None else _plain(box.score),
        "polygon": [[_plain(x), _plain(y)] for x, y in box.polygon] if box.polygon else None,
    }
    # Ground-truth flags are written only when set, so rows written before they existed and
    # rows written now read the same way.
    if box.crowd:
        d["crowd"] = True
    if box.difficult:
        d["difficult"] = True
    if probs is not None:
        d["probs"] = [float(v) for v in np.asarray(probs, dtype=np.float32).reshape(-1)]
    return d


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} {v!r} is not a number")
    return v


def box_from_dict(d: Mapping[str, Any], *, where: str) -> Box:
    """The :class:`Box` of one dict written by :func:`box_to_dict` (or by any earlier release;
    ``probs`` is ignored here). Numbers are kept as stored. Raises ``ValueError`` starting with
    ``where`` and showing the accepted shape for anything else."""
    try:
        if not isinstance(d, Mapping):
            raise ValueError("not an object")
        xyxy = d["xyxy"]
        if not isinstance(xyxy, (list, tuple)) or len(xyxy) != 4:
            raise ValueError(f"xyxy {xyxy!r} is not [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (_number(v, "coordinate") for v in xyxy)
        label = d["label"]
        if not isinstance(label, str):
            raise ValueError(f"label {label!r} is not a string")
        score = d.get("score")
        if score is not None:
            score = _number(score, "score")
        poly = d.get("polygon")
        polygon = tuple((float(_number(x, "polygon x")), float(_number(y, "polygon y"))) for x, y in poly) \
            if poly else None
        return Box(x1, y1, x2, y2, label, score, polygon,
                   crowd=bool(d.get("crowd", False)), difficult=bool(d.get("difficult", False)))
    except (KeyError, TypeError, ValueError) as e:
        shown = dict(d) if isinstance(d, Mapping) else d
        raise ValueError(f"{where}: object {shown!r} is not {_SHAPE} ({e})") from None


@overload
def boxes_to_json(boxes: Sequence[Box], *, empty: Literal[True],
                  probs: np.ndarray | None = None, compact: bool = False) -> str: ...
@overload
def boxes_to_json(boxes: Sequence[Box], *, empty: bool = False,
                  probs: np.ndarray | None = None, compact: bool = False) -> str | None: ...


def boxes_to_json(boxes: Sequence[Box], *, empty: bool = False, probs: np.ndarray | None = None,
                  compact: bool = False) -> str | None:
    """JSON list of ``boxes`` (one :func:`box_to_dict` each).

    ``empty``: what no boxes give: ``None`` (default: no label) or ``"[]"`` (an explicit "no
    objects on this image" label, or a prediction with no box). ``probs``: ``(B, C)`` class
    vectors, one row per box (``ValueError`` for another shape). ``compact``: no spaces
    after separators (prediction shards, where size counts)."""
    if not boxes:
        return "[]" if empty else None
    if probs is not None and (np.ndim(probs) != 2 or len(probs) != len(boxes)):
        raise ValueError(f"probs has shape {np.shape(probs)}, expected ({len(boxes)}, C): one class vector per box")
    rows = [box_to_dict(b, probs=None if probs is None else probs[i]) for i, b in enumerate(boxes)]
    return json.dumps(rows, separators=(",", ":")) if compact else json.dumps(rows)


def _rows(text: str | None, where: str) -> list[Any]:
    if not text:
        return []
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{where}: expected a JSON list of boxes, got {type(rows).__name__}")
    return rows


def boxes_from_json(text: str | None, *, where: str = "boxes JSON") -> tuple[Box, ...]:
    """The boxes of a JSON list written by :func:`boxes_to_json`; ``()`` for ``None``, ``""``
    or ``"[]"``. Class vectors, if any, are ignored (:func:`boxes_and_probs_from_json` reads
    them). ``ValueError`` starting with ``where`` for anything else."""
    return tuple(box_from_dict(d, where=f"{where}: box {k}") for k, d in enumerate(_rows(text, where)))


def boxes_and_probs_from_json(
    text: str | None, *, n_classes: int | None = None, where: str = "boxes JSON"
) -> tuple[tuple[Box, ...], np.ndarray | None]:
    """The boxes and their ``(B, C)`` float32 class vectors from a JSON list written by
    :func:`boxes_to_json` with ``probs``.

    ``n_classes``: ``C`` when known (a shard's classes): always an array then, a box without a
    class vector gets a row of NaN. ``None``: ``C`` from the first box that has a vector, and
    ``None`` instead of an array when no box has one (nothing is known about classes)."""
    rows = _rows(text, where)
    boxes = tuple(box_from_dict(d, where=f"{where}: box {k}") for k, d in enumerate(rows))
    vectors = [d.get("probs") for d in rows]
    if n_classes is None:
        n_classes = next((len(v) for v in vectors if v is not None), None)
        if n_classes is None:
            return boxes, None
    out = np.full((len(boxes), n_classes), np.nan, dtype=np.float32)
    for k, v in enumerate(vectors):
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != n_classes:
            raise ValueError(f"{where}: box {k}: probs {v!r} is not a list of {n_classes} numbers")
        out[k] = v
    return boxes, out
