"""Pure converters between pseudolabel's types and Label Studio JSON (no SDK, no I/O).

One small function per Label Studio control tag, each with its inverse:

==================  ==========================  ==================================
control tag         to Label Studio             back
==================  ==========================  ==================================
``Choices``         :func:`choices_result`      :func:`label_from_choices`
``RectangleLabels`` :func:`rectangle_result`    :func:`box_from_rectangle`
``PolygonLabels``   :func:`polygon_result`      :func:`box_from_polygon`
==================  ==========================  ==================================

Units: our :class:`~pseudolabel.types.Box` is in **pixels** of the original image
(``xyxy``; polygon points ``(x, y)`` in pixels). Label Studio regions are in **percent** of
the image (0..100) with ``original_width`` / ``original_height`` in pixels stored beside
them. Percent coordinates exist only inside this module.

Score direction: our selection scores are *higher = more uncertain*. Label Studio's
"Uncertainty sampling" hands out the task with the **lowest** prediction score first, so
:func:`ls_prediction_score` maps our score through a strictly *decreasing* function before
it is sent.

A whole model prediction becomes one Label Studio prediction (``model_version``, ``score``,
``result``) through :func:`prediction_to_ls`: the pushed tasks (``review.client``) and the ML
backend (``review.backend``) both call it, so a reviewer sees the same thing either way.

Why this module is over 400 lines: one pair of pure functions per Label Studio control tag plus
the label-config builder; they share the coordinate conventions and validation.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from pseudolabel.data.geometry import clip_xyxy, polygon_bounds
from pseudolabel.types import Box, Prediction, TaskType, validate_classes

LOCAL_FILES_PREFIX = "/data/local-files/?d="

_CONTROL_TAGS: dict[str, str] = {
    "classify": "Choices",
    "detect": "RectangleLabels",
    "segment": "PolygonLabels",
}
_VALUE_TAGS: dict[str, str] = {
    "Choices": "Choice",
    "RectangleLabels": "Label",
    "PolygonLabels": "Label",
}


# --------------------------------------------------------------------------- classes / config


def _attr(value: str) -> str:
    """A double-quoted, XML-escaped attribute value."""
    return '"' + escape(value, {'"': "&quot;"}) + '"'


def hotkeys(classes: Sequence[str]) -> dict[str, str]:
    """Class name -> Label Studio hotkey, so that the key a reviewer presses matches the class.

    Label Studio assigns hotkeys by position (1, 2, ... then letters), so for classes named
    ``0``..``9`` the key ``8`` would choose class ``7``. Rule: when every class name is a single
    character and no two differ only by case, each class's hotkey is its own name; otherwise
    the first nine classes get ``1``..``9`` and the tenth ``0`` (Label Studio's own order, made
    explicit), and later classes get no hotkey.
    """
    names = list(classes)
    if all(len(c) == 1 for c in names) and len({c.lower() for c in names}) == len(names):
        return {c: c for c in names}
    keys = [str(i) for i in range(1, 10)] + ["0"]
    return {c: k for c, k in zip(names, keys)}


def label_config(
    classes: Sequence[str],
    *,
    task_type: TaskType = "classify",
    from_name: str = "label",
    to_name: str = "image",
    data_key: str = "image",
    note_key: str | None = None,
) -> str:
    """Label Studio labelling config (XML) for ``task_type`` with one value per class.

    ``classify`` → ``<Choices choice="single">``; ``detect`` → ``<RectangleLabels
    canRotate="false">`` (our boxes are axis-aligned); ``segment`` → ``<PolygonLabels>``. Class
    names are XML-escaped; each value carries the hotkey of :func:`hotkeys`. With ``note_key``,
    a ``<Header value="$<note_key>"/>`` above the image shows the task's note to the reviewer
    (e.g. "Second review: ..."; an empty note shows nothing).
    """
    names = validate_classes(classes)
    if task_type not in _CONTROL_TAGS:
        raise ValueError(f"task_type {task_type!r} is not one of {sorted(_CONTROL_TAGS)}")
    control = _CONTROL_TAGS[task_type]
    value_tag = _VALUE_TAGS[control]
    keys = hotkeys(names)
    values = "\n".join(
        f"    <{value_tag} value={_attr(c)}" + (f" hotkey={_attr(keys[c])}" if c in keys else "") + "/>"
        for c in names
    )
    extra = {"Choices": ' choice="single" showInline="true"', "RectangleLabels": ' canRotate="false"'}.get(control, "")
    header = "" if note_key is None else f"  <Header value={_attr('$' + note_key)} size=\"4\"/>\n"
    return (
        "<View>\n"
        f"{header}"
        f"  <Image name={_attr(to_name)} value={_attr('$' + data_key)}/>\n"
        f"  <{control} name={_attr(from_name)} toName={_attr(to_name)}{extra}>\n"
        f"{values}\n"
        f"  </{control}>\n"
        "</View>\n"
    )


def label_config_classify(classes: Sequence[str]) -> str:
    """Classification config: ``<Image name="image" value="$image"/>`` and single ``<Choices>``."""
    return label_config(classes, task_type="classify")


def classes_from_label_config(config: str, *, from_name: str = "label") -> tuple[str, ...]:
    """The class names declared under the control tag named ``from_name`` in ``config``.

    Raises ``ValueError`` when the XML does not parse or has no such control tag.
    """
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ValueError(f"label config is not valid XML ({exc}): {config[:200]!r}") from exc
    for el in root.iter():
        if el.tag in _VALUE_TAGS and el.get("name") == from_name:
            return tuple(
                child.get("value", "") for child in el.iter() if child.tag == _VALUE_TAGS[el.tag]
            )
    raise ValueError(
        f"label config has no control tag named {from_name!r} "
        f"(one of {sorted(_VALUE_TAGS)}): {config[:200]!r}"
    )


# --------------------------------------------------------------------------- scores / URLs


def ls_prediction_score(uncertainty: float) -> float:
    """Map our uncertainty (higher = more uncertain) to Label Studio's prediction score.

    ``1 / (1 + exp(uncertainty))``: strictly decreasing, in ``(0, 1)``, the same map for
    every push (no per-batch normalisation, so tasks from different rounds stay comparable).
    Under "Uncertainty sampling" Label Studio serves the lowest score first, hence the most
    uncertain item first. An uncertainty of 0 maps to 0.5.
    """
    u = float(uncertainty)
    if not math.isfinite(u):
        raise ValueError(f"uncertainty score {uncertainty!r} is not a finite number")
    # Split to avoid overflow in exp for large |u|.
    if u >= 0:
        e = math.exp(-u)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(u))


def local_files_url(path: Path, images_root: Path, *, document_root: Path | None = None) -> str:
    """``/data/local-files/?d=<path relative to document_root>`` (URL-quoted, ``/`` separators).

    Label Studio refuses a local-files storage whose path *is* its document root, so the
    convention here is: the server's document root is ``images_root.parent`` (the default
    for ``document_root``) and the project's storage is ``images_root`` itself; the URL then
    reads ``?d=<images_root name>/<path inside images_root>``. Only files under a storage
    path are served, so the parent's other contents stay private.

    Raises ``ValueError`` naming ``path`` when it is not inside ``images_root``.
    """
    root = Path(images_root).resolve()
    doc_root = root.parent if document_root is None else Path(document_root).resolve()
    p = Path(path).resolve()
    try:
        p.relative_to(root)
    except ValueError:
        raise ValueError(
            f"image {str(path)!r} is outside the Label Studio images root {str(root)!r}; "
            "only files under the root can be served"
        ) from None
    try:
        rel = p.relative_to(doc_root)
    except ValueError:
        raise ValueError(
            f"images root {str(root)!r} is not inside the document root {str(doc_root)!r}"
        ) from None
    return LOCAL_FILES_PREFIX + quote(rel.as_posix(), safe="/")


def path_from_local_files_url(url: str, images_root: Path, *, document_root: Path | None = None) -> Path:
    """Inverse of :func:`local_files_url`: the absolute path the URL points at."""
    if not url.startswith(LOCAL_FILES_PREFIX):
        raise ValueError(f"{url!r} is not a local-files URL (expected prefix {LOCAL_FILES_PREFIX!r})")
    root = Path(images_root).resolve()
    doc_root = root.parent if document_root is None else Path(document_root).resolve()
    return doc_root / unquote(url[len(LOCAL_FILES_PREFIX) :])


# --------------------------------------------------------------------------- Choices


def choices_result(label: str, *, from_name: str = "label", to_name: str = "image") -> list[dict[str, Any]]:
    """Label Studio ``result`` list holding one ``choices`` region with ``label``."""
    if not isinstance(label, str) or not label:
        raise ValueError(f"label {label!r} is not a non-empty class name")
    return [
        {
            "from_name": from_name,
            "to_name": to_name,
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


def label_from_choices(result: Sequence[Mapping[str, Any]], *, from_name: str = "label") -> str | None:
    """The class chosen in a Label Studio ``result`` list; ``None`` when nothing was chosen.

    Regions of other types or other control names are ignored. Several chosen values raise
    ``ValueError`` (our configs are single-choice), and so does a ``value`` that is not an
    object or ``choices`` that is not a list of strings (an answer saved through the API can
    hold ``"choices": "12"``, which must not read as the classes "1" and "2").
    """
    chosen: list[str] = []
    for region in result:
        if region.get("type") != "choices" or region.get("from_name") != from_name:
            continue
        value = region.get("value", {})
        picked = value.get("choices", []) if isinstance(value, Mapping) else None
        if not isinstance(picked, list) or not all(isinstance(c, str) for c in picked):
            shown = value.get("choices") if isinstance(value, Mapping) else value
            raise ValueError(f"choices {shown!r} is not a list of class names")
        chosen.extend(picked)
    if not chosen:
        return None
    if len(chosen) > 1:
        raise ValueError(f"result chooses several classes {chosen!r}; expected a single choice")
    return chosen[0]


# --------------------------------------------------------------------------- rectangles


def _check_size(width: int, height: int) -> None:
    if not (isinstance(width, int) and isinstance(height, int)) or width <= 0 or height <= 0:
        raise ValueError(
            f"image size {width!r}x{height!r} must be positive integer pixels "
            "(needed to convert pixels to Label Studio percent)"
        )


def rectangle_result(
    box: Box, *, width: int, height: int, from_name: str = "label", to_name: str = "image"
) -> dict[str, Any]:
    """One ``rectanglelabels`` region from a pixel ``xyxy`` box on a ``width`` x ``height`` image.

    Percent values: ``x``, ``y`` top-left, ``width``, ``height``; rotation 0. The box score,
    if any, goes into the region's ``score``.
    """
    _check_size(width, height)
    if not (box.x1 < box.x2 and box.y1 < box.y2):
        raise ValueError(f"box {box!r} is not xyxy with x1 < x2 and y1 < y2")
    region: dict[str, Any] = {
        "from_name": from_name,
        "to_name": to_name,
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": box.x1 / width * 100.0,
            "y": box.y1 / height * 100.0,
            "width": (box.x2 - box.x1) / width * 100.0,
            "height": (box.y2 - box.y1) / height * 100.0,
            "rotation": 0,
            "rectanglelabels": [box.label],
        },
    }
    if box.score is not None:
        region["score"] = float(box.score)
    return region


def _size_of(region: Mapping[str, Any], width: int | None, height: int | None) -> tuple[int, int]:
    w = region.get("original_width", width)
    h = region.get("original_height", height)
    if w is None or h is None:
        raise ValueError(
            f"region {dict(region)!r} has no original_width/original_height and no size was given"
        )
    _check_size(int(w), int(h))
    return int(w), int(h)


def _single_label(value: Mapping[str, Any], key: str) -> str:
    labels = value.get(key, [])
    if len(labels) != 1:
        raise ValueError(f"region value {dict(value)!r} has labels {labels!r}; expected exactly one")
    return str(labels[0])


def box_from_rectangle(
    region: Mapping[str, Any], *, width: int | None = None, height: int | None = None,
    rotated: str = "error", warnings: list[str] | None = None,
) -> Box:
    """Pixel ``xyxy`` :class:`Box` from one ``rectanglelabels`` region.

    The size comes from the region's ``original_width``/``original_height``, else from the
    arguments. A rotated rectangle (Label Studio rotates clockwise, in degrees, around the
    top-left corner ``x, y``) cannot be an ``xyxy`` box: ``rotated="error"`` raises
    ``ValueError``; ``rotated="enclose"`` returns its enclosing axis-aligned box, clipped to the
    image, and appends a message to ``warnings``.
    """
    if region.get("type") != "rectanglelabels":
        raise ValueError(f"region type {region.get('type')!r} is not 'rectanglelabels'")
    if rotated not in ("error", "enclose"):
        raise ValueError(f"rotated={rotated!r}: expected 'error' or 'enclose'")
    w, h = _size_of(region, width, height)
    v = region["value"]
    x1 = float(v["x"]) / 100.0 * w
    y1 = float(v["y"]) / 100.0 * h
    bw = float(v["width"]) / 100.0 * w
    bh = float(v["height"]) / 100.0 * h
    angle = float(v.get("rotation", 0) or 0)
    score = region.get("score")
    label = _single_label(v, "rectanglelabels")
    if angle % 360 != 0:
        if rotated == "error":
            raise ValueError(f"rectangle {dict(v)!r} is rotated; only axis-aligned boxes are supported")
        t = math.radians(angle)
        c, s = math.cos(t), math.sin(t)
        xs = [x1, x1 + bw * c, x1 + bw * c - bh * s, x1 - bh * s]
        ys = [y1, y1 + bw * s, y1 + bw * s + bh * c, y1 + bh * c]
        ex1, ey1, ex2, ey2 = clip_xyxy(*polygon_bounds(list(zip(xs, ys))), width=w, height=h)
        if warnings is not None:
            warnings.append(f"rectangle {label!r} rotated by {angle:g} degrees: used its enclosing "
                            f"axis-aligned box [{ex1:.1f}, {ey1:.1f}, {ex2:.1f}, {ey2:.1f}] px")
        return Box(ex1, ey1, ex2, ey2, label, score=None if score is None else float(score))
    return Box(x1, y1, x1 + bw, y1 + bh, label, score=None if score is None else float(score))


# --------------------------------------------------------------------------- polygons


def polygon_result(
    box: Box, *, width: int, height: int, from_name: str = "label", to_name: str = "image"
) -> dict[str, Any]:
    """One ``polygonlabels`` region from ``box.polygon`` (pixel ``(x, y)`` points, >= 3)."""
    _check_size(width, height)
    if box.polygon is None or len(box.polygon) < 3:
        raise ValueError(f"box {box!r} has no polygon of at least 3 points")
    region: dict[str, Any] = {
        "from_name": from_name,
        "to_name": to_name,
        "type": "polygonlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "points": [[x / width * 100.0, y / height * 100.0] for x, y in box.polygon],
            "closed": True,
            "polygonlabels": [box.label],
        },
    }
    if box.score is not None:
        region["score"] = float(box.score)
    return region


def box_from_polygon(
    region: Mapping[str, Any], *, width: int | None = None, height: int | None = None
) -> Box:
    """:class:`Box` with pixel ``polygon`` and its enclosing ``xyxy`` from a ``polygonlabels`` region."""
    if region.get("type") != "polygonlabels":
        raise ValueError(f"region type {region.get('type')!r} is not 'polygonlabels'")
    w, h = _size_of(region, width, height)
    v = region["value"]
    pts = tuple((float(px) / 100.0 * w, float(py) / 100.0 * h) for px, py in v["points"])
    if len(pts) < 3:
        raise ValueError(f"polygon {pts!r} has fewer than 3 points")
    x1, y1, x2, y2 = polygon_bounds(pts)
    score = region.get("score")
    return Box(x1, y1, x2, y2, _single_label(v, "polygonlabels"),
               score=None if score is None else float(score), polygon=pts)


# --------------------------------------------------------------------------- whole results


def boxes_result(
    boxes: Sequence[Box], *, width: int, height: int, task_type: TaskType = "detect",
    from_name: str = "label", to_name: str = "image",
) -> list[dict[str, Any]]:
    """``result`` list for all ``boxes``: rectangles for ``detect``, polygons for ``segment``."""
    if task_type == "detect":
        conv = rectangle_result
    elif task_type == "segment":
        conv = polygon_result
    else:
        raise ValueError(f"task_type {task_type!r} has no boxes; expected 'detect' or 'segment'")
    return [conv(b, width=width, height=height, from_name=from_name, to_name=to_name) for b in boxes]


def boxes_from_result(
    result: Sequence[Mapping[str, Any]], *, from_name: str = "label",
    width: int | None = None, height: int | None = None,
    rotated: str = "error", warnings: list[str] | None = None,
) -> tuple[Box, ...]:
    """All rectangle and polygon regions of ``result`` (for ``from_name``) as pixel Boxes
    (``rotated`` / ``warnings``: see :func:`box_from_rectangle`)."""
    out: list[Box] = []
    for region in result:
        if not isinstance(region, Mapping):
            raise ValueError(f"result region {region!r} is not an object")
        if region.get("from_name") != from_name:
            continue
        if region.get("type") == "rectanglelabels":
            out.append(box_from_rectangle(region, width=width, height=height, rotated=rotated, warnings=warnings))
        elif region.get("type") == "polygonlabels":
            out.append(box_from_polygon(region, width=width, height=height))
    return tuple(out)


def same_boxes(a: Sequence[Box], b: Sequence[Box], *, tol: float = 0.5) -> bool:
    """Whether two box sets match one-to-one by label and corners within ``tol`` pixels (and,
    where both have one, by polygon points within ``tol``).

    Used to decide whether a reviewer accepted a pre-drawn detection unchanged.
    """
    if len(a) != len(b):
        return False
    key = lambda x: (x.label, x.x1, x.y1, x.x2, x.y2)  # noqa: E731
    for p, q in zip(sorted(a, key=key), sorted(b, key=key)):
        if p.label != q.label:
            return False
        if max(abs(p.x1 - q.x1), abs(p.y1 - q.y1), abs(p.x2 - q.x2), abs(p.y2 - q.y2)) > tol:
            return False
        if (p.polygon is None) != (q.polygon is None):
            return False
        if p.polygon is not None and q.polygon is not None:
            # A redrawn outline inside the same bounding box is still an edit.
            if len(p.polygon) != len(q.polygon) or any(
                abs(px - qx) > tol or abs(py - qy) > tol for (px, py), (qx, qy) in zip(p.polygon, q.polygon)
            ):
                return False
    return True


# --------------------------------------------------------------------------- whole predictions


def prediction_to_ls(
    pred: Prediction, *, classes: Sequence[str], task_type: TaskType, width: int, height: int,
    uncertainty: float, model_version: str | None = None, from_name: str = "label", to_name: str = "image",
) -> dict[str, Any]:
    """One Label Studio prediction ``{"model_version", "score", "result"}`` from ``pred``.

    - ``classify``: ``pred.probs`` (``(C,)``, one entry per class of ``classes``) → one
      ``choices`` region with the most probable class;
    - ``detect`` / ``segment``: every box of ``pred.boxes`` (pixels of the ``width`` x
      ``height`` image) → rectangles / polygons in percent (:func:`boxes_result`); the caller
      chooses which boxes to show (e.g. only confident ones);
    - ``score``: :func:`ls_prediction_score` of ``uncertainty`` (ours: higher = more
      uncertain; Label Studio's: lower = served first);
    - ``model_version``: ``model_version`` when given, else ``pred.model_version``.

    Raises ``ValueError`` naming ``pred.item_id`` when the prediction does not fit ``classes``
    or ``task_type``.
    """
    names = validate_classes(classes)
    if task_type == "classify":
        if pred.probs is None:
            raise ValueError(f"item {pred.item_id!r}: a classification prediction without probs")
        if len(pred.probs) != len(names):
            raise ValueError(
                f"item {pred.item_id!r}: probs has {len(pred.probs)} entries, expected one per class ({len(names)})"
            )
        idx = pred.label_index
        assert idx is not None  # probs checked above
        result = choices_result(names[idx], from_name=from_name, to_name=to_name)
    elif task_type in ("detect", "segment"):
        bad = sorted({b.label for b in pred.boxes} - set(names))
        if bad:
            raise ValueError(f"item {pred.item_id!r}: box labels {bad!r} are not among {list(names)!r}")
        result = boxes_result(pred.boxes, width=width, height=height, task_type=task_type,
                              from_name=from_name, to_name=to_name)
    else:
        raise ValueError(f"task_type {task_type!r} is not one of {sorted(_CONTROL_TAGS)}")
    return {
        "model_version": model_version if model_version is not None else pred.model_version,
        "score": ls_prediction_score(uncertainty),
        "result": result,
    }
