"""Detection / segmentation label formats: YOLO txt, COCO JSON, Pascal VOC XML.

Our representation, per image: ``tuple[Box, ...]`` with **pixel** ``xyxy`` corners of the
original image (after EXIF orientation), a class name, and optionally a **pixel** polygon
``((x, y), ...)`` (instance segmentation). Readers return a :class:`DetSet`; writers take
``items`` and ``boxes`` (item id -> boxes) and write the format's files.

Units per format:

- YOLO: one ``.txt`` per image, one object per line, coordinates **normalised** to 0..1 by
  the image width/height: ``cls cx cy w h`` (detection) or ``cls x1 y1 x2 y2 ...`` (polygon,
  segmentation); ``cls`` is a 0-based index into the class list (``data.yaml`` ``names``).
  An image **without** a label file is an image with no objects (Ultralytics' convention:
  background images are allowed), not an unlabelled image.
- COCO: ``bbox`` ``[x, y, w, h]`` in pixels; ``segmentation`` a list of flat pixel polygons
  ``[x1, y1, x2, y2, ...]``; ``category_id`` refers to ``categories[].id``.
- VOC: one XML per image; ``<object><name>`` and ``<bndbox>`` ``xmin ymin xmax ymax`` in
  pixels, read and written as continuous coordinates (no 1-based shift). Polygons travel in
  an optional ``<polygon><x1/><y1/><x2/>...`` element (as Roboflow writes it); readers that
  do not know it ignore it.

Validation (all raise ``ValueError`` naming the file and line, the COCO annotation id, or
the VOC object index, and what would be accepted): coordinates outside the image by more
than the tolerance (:data:`PIXEL_TOL` pixels, :data:`NORM_TOL` normalised) — smaller
overshoots are clipped to the image; boxes with zero or negative width/height; unknown class
ids or names (listing the accepted ones); malformed lines (wrong number of fields,
non-numeric values); polygons with fewer than 3 points or an odd coordinate count.
Images that cannot be decoded are quarantined (see :mod:`pseudolabel.data.ingest`).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pseudolabel.data.formats import OnMissing, check_on_missing
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, Quarantined, list_image_files, scan_files
from pseudolabel.types import Box, Item, validate_classes
from pseudolabel.utils import atomic_write_text

PIXEL_TOL = 1.0
"""Pixels a coordinate may lie outside the image before it is an error (then clipped)."""
NORM_TOL = 1e-6
"""The same tolerance for normalised (0..1) YOLO coordinates."""

DetTask = Literal["detect", "segment"]
EXPORT_FORMATS: tuple[str, ...] = ("yolo", "coco", "voc")

Polygon = tuple[tuple[float, float], ...]


@dataclass
class DetSet:
    """Images with their objects.

    - ``items``: usable images, one per distinct content (id = sha256 of the bytes);
    - ``boxes``: item id -> pixel boxes, for every item (``()`` = no objects);
    - ``quarantined``: files that could not be decoded (not in ``boxes``);
    - ``classes``: class names in index order (YOLO index i / COCO category order);
    - ``duplicates``: ``(path, item_id)`` for files whose bytes equal an earlier item's
      (their labels must be the same, else reading raises).
    """

    items: list[Item]
    boxes: dict[str, tuple[Box, ...]]
    quarantined: list[Quarantined] = field(default_factory=list)
    classes: tuple[str, ...] = ()
    duplicates: list[tuple[Path, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _check_task(task: str) -> None:
    if task not in ("detect", "segment"):
        raise ValueError(f"task {task!r} is not one of 'detect', 'segment'")


def _fmt(v: float) -> str:
    # 12 significant digits: exact to ~1e-8 px on a 10,000 px image, still readable.
    return format(float(v), ".12g")


def _clip(v: float, hi: float, *, tol: float, what: str, where: str) -> float:
    if not math.isfinite(v):
        raise ValueError(f"{where}: {what} = {v!r} is not a finite number")
    if v < -tol or v > hi + tol:
        raise ValueError(
            f"{where}: {what} = {v:.6g} lies outside the image (accepted: 0..{hi:.6g}, "
            f"tolerance {tol:g})"
        )
    return min(max(v, 0.0), hi)


def _make_box(
    x1: float, y1: float, x2: float, y2: float, label: str, *, width: int, height: int,
    where: str, tol: float = PIXEL_TOL, polygon: Sequence[tuple[float, float]] | None = None,
) -> Box:
    """Validate pixel corners (and polygon) against a ``width`` x ``height`` image, clip, build."""
    x1 = _clip(x1, width, tol=tol, what="x1", where=where)
    x2 = _clip(x2, width, tol=tol, what="x2", where=where)
    y1 = _clip(y1, height, tol=tol, what="y1", where=where)
    y2 = _clip(y2, height, tol=tol, what="y2", where=where)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(
            f"{where}: degenerate box x1={x1:.6g} y1={y1:.6g} x2={x2:.6g} y2={y2:.6g} "
            "(width and height must be > 0)"
        )
    poly: Polygon | None = None
    if polygon is not None:
        if len(polygon) < 3:
            raise ValueError(f"{where}: polygon has {len(polygon)} point(s); at least 3 are needed")
        poly = tuple(
            (_clip(px, width, tol=tol, what=f"polygon x[{i}]", where=where),
             _clip(py, height, tol=tol, what=f"polygon y[{i}]", where=where))
            for i, (px, py) in enumerate(polygon)
        )
    return Box(x1, y1, x2, y2, label, polygon=poly)


def _bounds(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _pairs(flat: Sequence[float], *, where: str) -> list[tuple[float, float]]:
    if len(flat) % 2:
        raise ValueError(
            f"{where}: polygon has an odd number of coordinates ({len(flat)}); "
            "expected x y pairs"
        )
    if len(flat) < 6:
        raise ValueError(
            f"{where}: polygon has {len(flat) // 2} point(s); at least 3 (6 numbers) are needed"
        )
    return [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]


def _check_write(
    items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], classes: Sequence[str] | None
) -> dict[str, tuple[Box, ...]]:
    """Refuse to write what the readers would refuse to read: every item needs an entry in
    ``boxes``; every box a known class, corners inside the image (within :data:`PIXEL_TOL`)
    with positive size, and a polygon (if any) of >= 3 points inside the image.

    Returns the boxes clipped to their image (scores kept), which is what gets written."""
    missing = [it.path for it in items if it.id not in boxes]
    if missing:
        raise ValueError(
            f"{len(missing)} item(s) have no entry in boxes, e.g. {str(missing[0])!r}; "
            "give () for an image with no objects"
        )
    out: dict[str, tuple[Box, ...]] = {}
    for it in items:
        clipped = []
        for k, b in enumerate(boxes[it.id]):
            where = f"{it.path}: box {k}"
            if classes is not None and b.label not in classes:
                raise ValueError(
                    f"{where}: class {b.label!r} is not one of the accepted classes {list(classes)!r}"
                )
            c = _make_box(b.x1, b.y1, b.x2, b.y2, b.label, width=it.width, height=it.height,
                          where=where, polygon=b.polygon)
            clipped.append(replace(c, score=b.score))
        out[it.id] = tuple(clipped)
    return out


def _label_index(box: Box, index: Mapping[str, int], *, where: str) -> int:
    if box.label not in index:
        raise ValueError(
            f"{where}: class {box.label!r} is not one of the accepted classes {list(index)!r}"
        )
    return index[box.label]


def _merge(
    ids: Mapping[Path, str], per_path: Sequence[tuple[Path, tuple[Box, ...], str]]
) -> dict[str, tuple[Box, ...]]:
    """item id -> boxes, checking that identical bytes carry identical labels."""
    out: dict[str, tuple[Box, ...]] = {}
    first: dict[str, str] = {}
    for path, bxs, where in per_path:
        item_id = ids.get(path)
        if item_id is None:  # quarantined
            continue
        if item_id in out and out[item_id] != bxs:
            raise ValueError(
                f"conflicting labels for identical image bytes: {first[item_id]} and {where} "
                "describe the same image differently; keep one"
            )
        out.setdefault(item_id, bxs)
        first.setdefault(item_id, where)
    return out


def read_yolo_names(data_yaml: Path) -> tuple[str, ...]:
    """Class names from an Ultralytics ``data.yaml`` (``names`` as a list or ``{index: name}``)."""
    import yaml  # light, but only needed here

    data_yaml = Path(data_yaml)
    with open(data_yaml, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise ValueError(f"{data_yaml}: names keys {keys} are not 0..{len(keys) - 1}")
        names = [names[k] for k in keys]
    if not isinstance(names, list):
        raise ValueError(f"{data_yaml}: no 'names' list or mapping found")
    return validate_classes([str(n) for n in names], where=data_yaml)


# --------------------------------------------------------------------------- YOLO


def parse_yolo_line(
    line: str, *, classes: Sequence[str], width: int, height: int, task: DetTask, where: str
) -> Box:
    """One YOLO label line -> pixel :class:`Box` on a ``width`` x ``height`` image.

    ``detect``: ``cls cx cy w h`` (5 fields) or a polygon line (converted to its enclosing
    box, polygon kept, as Ultralytics accepts); ``segment``: ``cls x1 y1 x2 y2 x3 y3 ...``
    (an even number >= 6 of normalised coordinates).
    """
    fields = line.split()
    try:
        cls = int(fields[0])
        if str(cls) != fields[0].lstrip("+"):
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(
            f"{where}: class id {fields[0] if fields else ''!r} is not a non-negative integer"
        ) from None
    if not 0 <= cls < len(classes):
        raise ValueError(
            f"{where}: class id {cls} is out of range; accepted 0..{len(classes) - 1} "
            f"({', '.join(f'{i}={c}' for i, c in enumerate(classes))})"
        )
    try:
        vals = [float(v) for v in fields[1:]]
    except ValueError:
        bad = next(v for v in fields[1:] if not _is_float(v))
        raise ValueError(f"{where}: {bad!r} is not a number") from None
    label = classes[cls]
    if task == "detect" and len(vals) == 4:
        cx, cy, w, h = vals
        for name, v in (("cx", cx), ("cy", cy), ("w", w), ("h", h)):
            _clip(v, 1.0, tol=NORM_TOL, what=name, where=where)
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: degenerate box w={w:g} h={h:g} (must be > 0)")
        nx1, ny1, nx2, ny2 = (
            _clip(cx - w / 2, 1.0, tol=NORM_TOL, what="cx - w/2", where=where),
            _clip(cy - h / 2, 1.0, tol=NORM_TOL, what="cy - h/2", where=where),
            _clip(cx + w / 2, 1.0, tol=NORM_TOL, what="cx + w/2", where=where),
            _clip(cy + h / 2, 1.0, tol=NORM_TOL, what="cy + h/2", where=where),
        )
        return _make_box(nx1 * width, ny1 * height, nx2 * width, ny2 * height, label,
                         width=width, height=height, where=where, tol=0.0)
    if task == "detect" and len(vals) < 6:
        raise ValueError(
            f"{where}: {len(fields)} fields; expected 5 ('cls cx cy w h') or a polygon "
            "'cls x1 y1 x2 y2 x3 y3 ...'"
        )
    if task == "segment" and len(vals) < 6 and len(vals) % 2 == 0:
        raise ValueError(
            f"{where}: {len(fields)} fields; segmentation lines are polygons "
            "'cls x1 y1 x2 y2 x3 y3 ...' (at least 3 points)"
        )
    norm = _pairs(vals, where=where)
    pts = [
        (_clip(x, 1.0, tol=NORM_TOL, what=f"polygon x[{i}]", where=where) * width,
         _clip(y, 1.0, tol=NORM_TOL, what=f"polygon y[{i}]", where=where) * height)
        for i, (x, y) in enumerate(norm)
    ]
    return _make_box(*_bounds(pts), label, width=width, height=height, where=where,
                     tol=0.0, polygon=pts)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read_yolo_labels(
    label_file: Path, *, classes: Sequence[str], width: int, height: int, task: DetTask = "detect"
) -> tuple[Box, ...]:
    """All objects of one YOLO label file (blank lines skipped); a missing file means none."""
    label_file = Path(label_file)
    if not label_file.exists():
        return ()
    out: list[Box] = []
    with open(label_file, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            out.append(parse_yolo_line(line, classes=classes, width=width, height=height,
                                       task=task, where=f"{label_file}:{lineno}"))
    return tuple(out)


def read_yolo(
    images_dir: Path, labels_dir: Path, *, classes: Sequence[str], task: DetTask = "detect",
    progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> DetSet:
    """Read a YOLO dataset: images under ``images_dir`` (recursive), labels under ``labels_dir``.

    The label file of ``images_dir/a/b.jpg`` is ``labels_dir/a/b.txt``. An image without a
    label file has no objects. ``classes``: names by index (see :func:`read_yolo_names`).
    A label file with no matching image raises (a typo in a file name would otherwise lose
    its labels), or with ``on_missing="quarantine"`` is quarantined (its image was deleted).
    Images of more than ``max_pixels`` pixels are quarantined.
    """
    check_on_missing(on_missing)
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    _check_task(task)
    names = validate_classes(classes, where=labels_dir)
    if not labels_dir.is_dir():
        raise ValueError(f"YOLO labels folder {labels_dir} does not exist or is not a directory")
    files = list_image_files(images_dir)
    stems: dict[str, Path] = {}
    for p in files:
        stem = p.relative_to(images_dir).with_suffix("").as_posix()
        if stem in stems:
            raise ValueError(f"images {stems[stem]} and {p} would share the label file "
                             f"{labels_dir / stem}.txt; rename one of them")
        stems[stem] = p
    orphans: list[Quarantined] = []
    for txt in sorted(labels_dir.rglob("*.txt")):
        if txt.relative_to(labels_dir).with_suffix("").as_posix() not in stems:
            if on_missing == "quarantine":
                orphans.append(Quarantined(txt, f"label file has no image with the same name under {images_dir}"))
                continue
            raise ValueError(f"{txt}: label file has no image with the same name under {images_dir}")
    scan = scan_files(files, progress=progress, description=f"reading {images_dir}", max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_path = []
    for p in files:
        if p not in ids:
            continue
        it = by_id[ids[p]]
        txt = labels_dir / p.relative_to(images_dir).with_suffix(".txt")
        per_path.append((p, read_yolo_labels(txt, classes=names, width=it.width,
                                             height=it.height, task=task), str(txt)))
    boxes = _merge(ids, per_path)
    return DetSet(scan.items, boxes, [*orphans, *scan.quarantined], names, scan.duplicates)


def yolo_lines(
    boxes: Sequence[Box], *, classes: Sequence[str], width: int, height: int,
    task: DetTask = "detect",
) -> list[str]:
    """YOLO label lines (normalised) for ``boxes`` on a ``width`` x ``height`` image.

    ``detect`` writes ``cls cx cy w h`` (polygons are dropped); ``segment`` writes the
    polygon and raises for a box without one.
    """
    _check_task(task)
    index = {c: i for i, c in enumerate(classes)}
    lines = []
    for k, b in enumerate(boxes):
        where = f"box {k} ({b.label!r})"
        cls = _label_index(b, index, where=where)
        if task == "segment":
            if b.polygon is None or len(b.polygon) < 3:
                raise ValueError(f"{where}: task 'segment' needs a polygon of >= 3 points")
            coords = " ".join(f"{_fmt(x / width)} {_fmt(y / height)}" for x, y in b.polygon)
            lines.append(f"{cls} {coords}")
        else:
            cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
            w, h = (b.x2 - b.x1) / width, (b.y2 - b.y1) / height
            lines.append(f"{cls} {_fmt(cx)} {_fmt(cy)} {_fmt(w)} {_fmt(h)}")
    return lines


def _unique_names(items: Sequence[Item], root: Path | None) -> dict[str, str]:
    """item id -> relative file name: relative to ``root`` when given, else the file name
    (prefixed with the id when two items share a name)."""
    if root is not None:
        out: dict[str, str] = {}
        stems: dict[str, Path] = {}
        for it in items:
            try:
                out[it.id] = Path(it.path).resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                raise ValueError(f"image {str(it.path)!r} is not under image_root {str(root)!r}") from None
            stem = Path(out[it.id]).with_suffix("").as_posix()
            if stem in stems and stems[stem] != Path(it.path):
                raise ValueError(f"images {str(stems[stem])!r} and {str(it.path)!r} would share "
                                 f"one label file {stem!r}; rename one of them")
            stems[stem] = Path(it.path)
        return out
    counts: dict[str, int] = {}
    for it in items:
        counts[Path(it.path).stem] = counts.get(Path(it.path).stem, 0) + 1
    return {
        it.id: (Path(it.path).name if counts[Path(it.path).stem] == 1
                else f"{it.id[:12]}_{Path(it.path).name}")
        for it in items
    }


def write_yolo(
    labels_dir: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str], task: DetTask = "detect", image_root: Path | None = None,
) -> dict[str, Path]:
    """Write one label file per item (an empty file for no objects); returns id -> file.

    The file for ``image_root/a/b.jpg`` is ``labels_dir/a/b.txt``; without ``image_root``
    it is ``labels_dir/<image stem>.txt`` (the id is prefixed when two items share a stem).
    """
    names = validate_classes(classes, where=labels_dir)
    boxes = _check_write(items, boxes, names)
    rel = _unique_names(items, image_root)
    out = {}
    for it in items:
        path = Path(labels_dir) / Path(rel[it.id]).with_suffix(".txt")
        try:
            lines = yolo_lines(boxes[it.id], classes=names, width=it.width, height=it.height, task=task)
        except ValueError as e:
            raise ValueError(f"{it.path}: {e}") from None
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        out[it.id] = path
    return out


# --------------------------------------------------------------------------- COCO


def _num(v: Any, *, where: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where}: {what} = {v!r} is not a number")
    return float(v)


def read_coco(
    json_path: Path, *, image_root: Path, classes: Sequence[str] | None = None,
    multipart: Literal["error", "largest"] = "error", progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> DetSet:
    """Read a COCO instances JSON; ``images[].file_name`` resolves against ``image_root``.

    ``classes=None``: the category names ordered by category id; otherwise every category
    used by an annotation must be one of ``classes`` (which fixes the index order).
    ``bbox`` gives the box; ``segmentation`` polygons (flat pixel lists) give the polygon.
    A :class:`Box` holds one polygon: an annotation with several polygon parts raises unless
    ``multipart="largest"`` (keeps the largest part by area; the box still encloses all).
    RLE segmentations and ``iscrowd=1`` annotations raise (no :class:`Box` for a crowd).
    Every image listed must exist on disk (``on_missing="quarantine"``: a missing one is
    quarantined, its annotations skipped); images that do not decode or have more than
    ``max_pixels`` pixels are quarantined; files under ``image_root`` that the JSON does not
    list are not read.
    """
    check_on_missing(on_missing)
    json_path, image_root = Path(json_path), Path(image_root)
    if multipart not in ("error", "largest"):
        raise ValueError(f"multipart {multipart!r} is not one of 'error', 'largest'")
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"COCO file {json_path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_path}: missing list {key!r}; a COCO instances file has "
                             "'images', 'annotations' and 'categories'")

    cats: dict[Any, str] = {}
    for c in sorted(data["categories"], key=lambda c: c.get("id", 0)):
        if "id" not in c or not isinstance(c.get("name"), str):
            raise ValueError(f"{json_path}: category {c!r} needs an 'id' and a 'name'")
        cats[c["id"]] = c["name"]
    if classes is None:
        names = validate_classes(list(cats.values()), where=json_path)
    else:
        names = validate_classes(classes, where=json_path)

    images: dict[Any, Path] = {}
    absent: list[Quarantined] = []
    declared: dict[Any, tuple[Any, Any]] = {}
    for img in data["images"]:
        if "id" not in img or not isinstance(img.get("file_name"), str):
            raise ValueError(f"{json_path}: image entry {img!r} needs an 'id' and a 'file_name'")
        if img["id"] in images:
            raise ValueError(f"{json_path}: image id {img['id']!r} is listed twice")
        path = image_root / img["file_name"]
        if not path.is_file():
            if on_missing == "error":
                raise ValueError(f"{json_path}: image id {img['id']!r}: file {img['file_name']!r} "
                                 f"not found under {image_root}")
            absent.append(Quarantined(path, f"image file not found (image id {img['id']!r} in {json_path})"))
        images[img["id"]] = path
        declared[img["id"]] = (img.get("width"), img.get("height"))

    skip = {q.path for q in absent}
    scan = scan_files([p for p in images.values() if p not in skip], progress=progress,
                      description=f"reading {json_path.name}", max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_image: dict[Any, list[Box]] = {k: [] for k in images}
    sizes: dict[Any, tuple[int, int]] = {}
    for img_id, path in images.items():
        if path in ids:
            it = by_id[ids[path]]
            sizes[img_id] = (it.width, it.height)
            w, h = declared[img_id]
            if (w is not None and w != it.width) or (h is not None and h != it.height):
                raise ValueError(
                    f"{json_path}: image id {img_id!r} ({path.name}) declares {w}x{h} but the "
                    f"file is {it.width}x{it.height} pixels (after EXIF orientation)"
                )

    for ann in data["annotations"]:
        where = f"{json_path}: annotation id {ann.get('id')!r}"
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in cats:
            raise ValueError(f"{where}: category_id {ann.get('category_id')!r} is not one of "
                             f"the categories {sorted(cats)!r}")
        label = cats[ann["category_id"]]
        if label not in names:
            raise ValueError(f"{where}: class {label!r} is not one of the accepted classes {list(names)!r}")
        if ann.get("iscrowd", 0):
            raise ValueError(f"{where}: iscrowd=1 annotations are not supported (no Box for a crowd)")
        if ann["image_id"] not in sizes:  # image quarantined
            continue
        width, height = sizes[ann["image_id"]]
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"{where}: bbox {bbox!r} is not [x, y, w, h]")
        x, y, bw, bh = (_num(v, where=where, what="bbox value") for v in bbox)
        if bw <= 0 or bh <= 0:
            raise ValueError(f"{where}: degenerate bbox {bbox!r} (w and h must be > 0)")
        seg = ann.get("segmentation") or []
        polygon = None
        if isinstance(seg, dict):
            raise ValueError(f"{where}: RLE segmentation is not supported; give polygons")
        if seg:
            parts = [_pairs([_num(v, where=where, what="segmentation value") for v in part],
                            where=where) for part in seg]
            if len(parts) > 1 and multipart == "error":
                raise ValueError(f"{where}: segmentation has {len(parts)} polygon parts; a Box holds "
                                 "one (pass multipart='largest' to keep the largest part)")
            polygon = max(parts, key=polygon_area)
        per_image[ann["image_id"]].append(
            _make_box(x, y, x + bw, y + bh, label, width=width, height=height, where=where,
                      polygon=polygon))

    per_path = [(images[k], tuple(v), f"{json_path}: image id {k!r}") for k, v in per_image.items()]
    boxes = _merge(ids, per_path)
    return DetSet(scan.items, boxes, [*absent, *scan.quarantined], names, scan.duplicates)


def polygon_area(points: Sequence[tuple[float, float]]) -> float:
    """Area (pixels²) of a simple polygon by the shoelace formula (absolute value)."""
    if len(points) < 3:
        return 0.0
    xs = np.asarray([p[0] for p in points], dtype=float)
    ys = np.asarray([p[1] for p in points], dtype=float)
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2.0)


def coco_dict(
    items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *, classes: Sequence[str],
    image_root: Path | None = None,
) -> dict[str, Any]:
    """COCO instances dict: image ids 1..N in ``items`` order, category ids 1..C in
    ``classes`` order, ``bbox`` in pixels, ``segmentation`` = ``[flat polygon]`` or ``[]``,
    ``area`` = polygon area, else box area. ``file_name`` is relative to ``image_root``
    (else the file name, id-prefixed on clashes)."""
    names = validate_classes(classes, where="coco export")
    boxes = _check_write(items, boxes, names)
    index = {c: i + 1 for i, c in enumerate(names)}
    rel = _unique_names(items, image_root)
    images, anns = [], []
    for img_id, it in enumerate(items, start=1):
        images.append({"id": img_id, "file_name": rel[it.id], "width": it.width, "height": it.height})
        for k, b in enumerate(boxes[it.id]):
            cat = _label_index(b, index, where=f"{it.path}: box {k}")
            seg = [[float(v) for xy in b.polygon for v in xy]] if b.polygon else []
            area = polygon_area(b.polygon) if b.polygon else (b.x2 - b.x1) * (b.y2 - b.y1)
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1],
                "segmentation": seg, "area": float(area), "iscrowd": 0,
            })
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": c, "supercategory": ""} for c, i in index.items()],
    }


def write_coco(
    json_path: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str], image_root: Path | None = None,
) -> Path:
    """Write :func:`coco_dict` to ``json_path`` (atomically); returns the path."""
    data = coco_dict(items, boxes, classes=classes, image_root=image_root)
    atomic_write_text(Path(json_path), json.dumps(data))
    return Path(json_path)


# --------------------------------------------------------------------------- Pascal VOC


def _xml_float(el: ET.Element | None, tag: str, *, where: str) -> float:
    node = None if el is None else el.find(tag)
    if node is None or node.text is None:
        raise ValueError(f"{where}: missing <{tag}>")
    try:
        return float(node.text.strip())
    except ValueError:
        raise ValueError(f"{where}: <{tag}> = {node.text.strip()!r} is not a number") from None


def read_voc_file(
    xml_path: Path, *, width: int, height: int, classes: Sequence[str] | None = None,
) -> tuple[Box, ...]:
    """Objects of one VOC XML on a ``width`` x ``height`` image (see module doc for units)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}:{e.position[0]}: not valid XML ({e})") from None
    size = root.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        dw = _xml_float(size, "width", where=f"{xml_path}: <size>")
        dh = _xml_float(size, "height", where=f"{xml_path}: <size>")
        # Some tools write 0x0 when they did not know the size: nothing to check then.
        if (dw, dh) != (0, 0) and (dw, dh) != (width, height):
            raise ValueError(f"{xml_path}: <size> says {dw:g}x{dh:g} but the image is "
                             f"{width}x{height} pixels (after EXIF orientation)")
    out = []
    for k, obj in enumerate(root.findall("object"), start=1):
        where = f"{xml_path}: object {k}"
        name_el = obj.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        if not name:
            raise ValueError(f"{where}: missing or empty <name>")
        if classes is not None and name not in classes:
            raise ValueError(f"{where}: class {name!r} is not one of the accepted classes {list(classes)!r}")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{where}: missing <bndbox>")
        x1, y1, x2, y2 = (_xml_float(bb, t, where=where) for t in ("xmin", "ymin", "xmax", "ymax"))
        polygon = None
        poly_el = obj.find("polygon")
        if poly_el is not None:
            flat: list[float] = []
            for i in range(1, len(poly_el) // 2 + 2):
                if poly_el.find(f"x{i}") is None and poly_el.find(f"y{i}") is None:
                    break
                flat += [_xml_float(poly_el, f"x{i}", where=where), _xml_float(poly_el, f"y{i}", where=where)]
            if len(poly_el) != len(flat):
                raise ValueError(f"{where}: <polygon> must hold x1 y1 x2 y2 ... in order "
                                 f"({len(poly_el)} children, {len(flat)} read)")
            polygon = _pairs(flat, where=where)
        out.append(_make_box(x1, y1, x2, y2, name, width=width, height=height, where=where,
                             polygon=polygon))
    return tuple(out)


def read_voc(
    annotations_dir: Path, *, image_root: Path, classes: Sequence[str] | None = None,
    progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> DetSet:
    """Read every ``*.xml`` under ``annotations_dir`` (recursive, sorted).

    The image of ``annotations_dir/a/b.xml`` is ``image_root/a/<filename>`` with
    ``<filename>`` from the XML. ``classes=None``: the sorted set of names found; otherwise
    names must be in ``classes``. A missing image raises (``on_missing="quarantine"``: is
    quarantined); an undecodable one, or one of more than ``max_pixels`` pixels, is
    quarantined. Only the XML files define the set: images without an XML are not read.
    """
    check_on_missing(on_missing)
    annotations_dir, image_root = Path(annotations_dir), Path(image_root)
    if not annotations_dir.is_dir():
        raise ValueError(f"VOC annotations folder {annotations_dir} does not exist or is not a directory")
    names = None if classes is None else validate_classes(classes, where=annotations_dir)
    xmls = sorted(annotations_dir.rglob("*.xml"))
    pairs: list[tuple[Path, Path]] = []
    absent: list[Quarantined] = []
    for x in xmls:
        try:
            root = ET.parse(x).getroot()
        except ET.ParseError as e:
            raise ValueError(f"{x}:{e.position[0]}: not valid XML ({e})") from None
        fn = root.findtext("filename")
        if not fn or not fn.strip():
            raise ValueError(f"{x}: missing <filename>")
        img = image_root / x.relative_to(annotations_dir).parent / fn.strip()
        if not img.is_file():
            if on_missing == "quarantine":
                absent.append(Quarantined(img, f"image file not found (named by {x})"))
                continue
            raise ValueError(f"{x}: image {fn.strip()!r} not found ({img})")
        pairs.append((x, img))
    scan = scan_files([p for _, p in pairs], progress=progress, description=f"reading {annotations_dir}",
                      max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_path = []
    for x, img in pairs:
        if img not in ids:
            continue
        it = by_id[ids[img]]
        per_path.append((img, read_voc_file(x, width=it.width, height=it.height, classes=names), str(x)))
    boxes = _merge(ids, per_path)
    if names is None:
        names = tuple(sorted({b.label for bs in boxes.values() for b in bs}))
    return DetSet(scan.items, boxes, [*absent, *scan.quarantined], names, scan.duplicates)


def voc_xml(item: Item, boxes: Sequence[Box], *, filename: str | None = None) -> str:
    """VOC XML text for one image (pixel coordinates; polygon in ``<polygon>`` if any)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = Path(item.path).parent.name
    ET.SubElement(root, "filename").text = filename or Path(item.path).name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(item.width)
    ET.SubElement(size, "height").text = str(item.height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1" if any(b.polygon for b in boxes) else "0"
    for b in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = b.label
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", b.x1), ("ymin", b.y1), ("xmax", b.x2), ("ymax", b.y2)):
            ET.SubElement(bb, tag).text = _fmt(v)
        if b.polygon:
            poly = ET.SubElement(obj, "polygon")
            for i, (x, y) in enumerate(b.polygon, start=1):
                ET.SubElement(poly, f"x{i}").text = _fmt(x)
                ET.SubElement(poly, f"y{i}").text = _fmt(y)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(
    annotations_dir: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str] | None = None, image_root: Path | None = None,
) -> dict[str, Path]:
    """One XML per item under ``annotations_dir`` (mirroring ``image_root``'s sub-folders,
    else named after the image, id-prefixed on clashes); returns id -> XML path.
    ``classes``, when given, is checked against every box label."""
    names = None if classes is None else validate_classes(classes, where=annotations_dir)
    boxes = _check_write(items, boxes, names)
    rel = _unique_names(items, image_root)
    out = {}
    for it in items:
        path = Path(annotations_dir) / Path(rel[it.id]).with_suffix(".xml")
        atomic_write_text(path, voc_xml(it, boxes[it.id], filename=Path(rel[it.id]).name))
        out[it.id] = path
    return out


# --------------------------------------------------------------------------- export


def _copy_images(items: Sequence[Item], dest: Path) -> dict[str, str]:
    rel = _unique_names(items, None)
    dest.mkdir(parents=True, exist_ok=True)
    for it in items:
        shutil.copy2(it.path, dest / rel[it.id])
    return rel


def export_labels(
    fmt: str, out_dir: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str], task: DetTask = "detect", split: str = "train",
) -> Path:
    """Write a training-ready dataset of ``items`` (images copied) in format ``fmt``.

    Layout per format (``<split>`` defaults to ``train``; call again with ``split="val"``
    for a validation split):

    - ``yolo``: ``images/<split>/``, ``labels/<split>/``, ``data.yaml`` (``path``, one key
      per split present, ``val`` = ``train`` until a ``val`` split exists, ``names``);
      returns ``data.yaml``;
    - ``coco``: ``images/<split>/``, ``annotations/instances_<split>.json``; returns the JSON;
    - ``voc``: ``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/<split>.txt``; returns
      the ``ImageSets`` file.

    Image files keep their names (id-prefixed when two share one). Raises ``ValueError``
    for an unknown ``fmt`` (listing the choices), a label not in ``classes`` or an item
    missing from ``boxes``.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(map(repr, EXPORT_FORMATS))}")
    _check_task(task)
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"split {split!r} must be a plain folder name such as 'train' or 'val'")
    names = validate_classes(classes, where=f"export to {out_dir}")
    boxes = _check_write(items, boxes, names)
    out_dir = Path(out_dir)
    if fmt == "yolo":
        img_dir = out_dir / "images" / split
        rel = _copy_images(items, img_dir)
        copied = [Item(it.id, img_dir / rel[it.id], it.width, it.height) for it in items]
        write_yolo(out_dir / "labels" / split, copied, boxes, classes=names, task=task, image_root=img_dir)
        splits = sorted(p.name for p in (out_dir / "images").iterdir() if p.is_dir())
        lines = [f"path: {json.dumps(str(out_dir.resolve()))}"]
        lines += [f"{s}: images/{s}" for s in splits]
        if "val" not in splits:
            lines.append(f"val: images/{'train' if 'train' in splits else splits[0]}")
        lines.append("names:")
        lines += [f"  {i}: {json.dumps(c)}" for i, c in enumerate(names)]
        path = out_dir / "data.yaml"
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path
    if fmt == "coco":
        img_dir = out_dir / "images" / split
        rel = _copy_images(items, img_dir)
        copied = [Item(it.id, img_dir / rel[it.id], it.width, it.height) for it in items]
        return write_coco(out_dir / "annotations" / f"instances_{split}.json", copied, boxes,
                          classes=names, image_root=img_dir)
    img_dir = out_dir / "JPEGImages"
    rel = _copy_images(items, img_dir)
    copied = [Item(it.id, img_dir / rel[it.id], it.width, it.height) for it in items]
    write_voc(out_dir / "Annotations", copied, boxes, classes=names, image_root=img_dir)
    path = out_dir / "ImageSets" / "Main" / f"{split}.txt"
    atomic_write_text(path, "".join(Path(rel[it.id]).stem + "\n" for it in items))
    return path


# --------------------------------------------------------------------------- masks


def polygon_to_mask(polygon: Sequence[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool mask of a pixel polygon, rasterised as COCO does
    (pycocotools), so masks match what ``segm`` evaluation sees."""
    from pycocotools import mask as mask_utils

    if len(polygon) < 3:
        raise ValueError(f"polygon {list(polygon)!r} has fewer than 3 points")
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size {height}x{width} must be positive pixels")
    flat = [float(v) for xy in polygon for v in xy]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], int(height), int(width)))
    with warnings.catch_warnings():
        # pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation; harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def mask_to_polygon(mask: np.ndarray) -> list[tuple[float, float]]:
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
