"""Labelme JSON: one file per image, usually beside it.

Layout (as Labelme's ``LabelFile.save`` writes it, ``labelme/_label_file.py`` in
wkentaro/labelme, and its ``examples/*/data_annotated/*.json``)::

    {"version": "5.5.0", "flags": {"cat": true, "dog": false},
     "shapes": [{"label": "cat", "points": [[x, y], ...], "group_id": null, "description": "",
                 "shape_type": "rectangle" | "polygon" | ..., "flags": {}, "mask": null}],
     "imagePath": "a.jpg", "imageData": null, "imageHeight": 480, "imageWidth": 640}

Units: **pixels** of the image after EXIF orientation (what Labelme shows). ``imagePath`` is
relative to the JSON file (Windows ``\\`` separators are accepted, as Labelme does).

- ``rectangle``: two opposite corners, in any order; ``polygon``: >= 3 points; shapes of
  Labelme 3 without ``shape_type`` are polygons. Shapes sharing a ``label`` and a non-null
  ``group_id`` are one object of several parts (as Labelme's ``labelme2coco`` merges them):
  its box encloses all parts, its polygon follows the source's ``multipart`` rule. Other
  shape types (circle, line, point, mask...) leave the image out (quarantined): a detector
  trained without those objects would learn them as background.
- a shape's ``flags`` ``difficult`` / ``crowd`` (``iscrowd``) set the box flags (Labelme's
  per-shape flags, ``--labelflags``).
- classification: the image-level ``flags`` set to true that are class names give the class
  (Labelme's ``--flags`` mode); ``__ignore__`` set leaves the image out.
- a JSON whose image does not exist: an error on a set's first read (``on_missing="error"``),
  a quarantine row on a re-read (``on_missing="quarantine"``); images of more than
  ``max_pixels`` pixels are quarantined.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.images import IMAGE_SUFFIXES
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, OnMissing, Quarantined, check_on_missing, reason_of, scan_files
from pseudolabel.data.formats.labelled import LabelledSet, assemble_labels, single_class
from pseudolabel.data.formats.objects import (
    DegenerateBox,
    DetSet,
    Multipart,
    Reading,
    assemble,
    check_classes,
    check_write,
    make_box,
    one_polygon,
    size_check,
)
from pseudolabel.data.geometry import polygon_bounds
from pseudolabel.types import Box, Item
from pseudolabel.utils import atomic_write_text

LABELME_VERSION = "5.5.0"
"""The ``version`` written: Labelme 5 reads files of its major version without a warning."""

_CROWD_FLAGS = ("crowd", "iscrowd", "is_crowd")


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise LabelProblem(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise LabelProblem(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _is_labelme(data: Any) -> bool:
    return isinstance(data, dict) and "shapes" in data and "imagePath" in data


def _image_of(json_path: Path, data: Mapping[str, Any], *, folder: Path, reading: Reading,
              on_missing: OnMissing = "error") -> Path | None:
    """The image a Labelme file describes: ``imagePath`` relative to ``folder``, then its file
    name there, then the JSON's stem with a known extension. None exists: :class:`DataError`,
    or with ``on_missing="quarantine"`` a row for the first candidate in ``reading`` and ``None``."""
    raw = data.get("imagePath")
    tried: list[Path] = []
    if isinstance(raw, str) and raw:
        rel = PureWindowsPath(raw).as_posix()
        tried += [folder / rel, folder / PureWindowsPath(raw).name]
    tried += [folder / f"{json_path.stem}{e}" for e in sorted(IMAGE_SUFFIXES)]
    for p in tried:
        if p.is_file():
            return p
    embedded = " (imageData is embedded, but the image file is needed: its bytes are the item id)" \
        if data.get("imageData") else ""
    reading.missing(tried[0], f"image file not found (named by {json_path})", on_missing=on_missing,
                    error=f"{json_path}: image {raw!r} not found (tried {', '.join(map(str, tried[:3]))}){embedded}; "
                          "put the image beside the JSON or set the source's image_root")
    return None


def _flags(shape: Mapping[str, Any]) -> tuple[bool, bool]:
    f = shape.get("flags") or {}
    if not isinstance(f, dict):
        return False, False
    return any(bool(f.get(k)) for k in _CROWD_FLAGS), bool(f.get("difficult"))


def _points(shape: Mapping[str, Any], *, where: str) -> list[tuple[float, float]]:
    pts = shape.get("points")
    if not isinstance(pts, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             for v in p) for p in pts):
        raise LabelProblem(f"{where}: points {str(pts)[:80]} are not a list of [x, y] numbers")
    return [(float(x), float(y)) for x, y in pts]


def read_labelme_file(
    json_path: Path, data: Mapping[str, Any], *, item: Item, classes: Sequence[str] | None = None,
    multipart: Multipart = "quarantine", reading: Reading | None = None,
) -> tuple[Box, ...]:
    """The objects of one Labelme file (already loaded as ``data``) on ``item``'s image.

    Raises :class:`LabelProblem` for what leaves the image out (see the module doc); with
    ``reading``, zero-area boxes are skipped with a row and unknown names collected."""
    json_path = Path(json_path)
    size_check((data.get("imageWidth"), data.get("imageHeight")), item, where=f"{json_path}: imageWidth/imageHeight")
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        raise LabelProblem(f"{json_path}: 'shapes' is not a list")
    # Objects in file order; shapes sharing (label, group_id) join the first one's object.
    objects: dict[Any, list[tuple[int, Mapping[str, Any]]]] = {}
    for k, shape in enumerate(shapes, start=1):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or not shape["label"].strip():
            raise LabelProblem(f"{json_path}: shape {k}: needs a non-empty 'label'")
        gid = shape.get("group_id")
        key = (shape["label"], gid) if gid is not None else ("#", k)
        objects.setdefault(key, []).append((k, shape))
    out = []
    for parts in objects.values():
        k0, first = parts[0]
        label = first["label"].strip()
        where = f"{json_path}: shape {k0}" + (f" (group {first.get('group_id')}, {len(parts)} shapes)"
                                              if len(parts) > 1 else "")
        polys: list[list[tuple[float, float]]] = []
        rects = 0
        crowd = difficult = False
        for k, shape in parts:
            kind = shape.get("shape_type") or "polygon"  # Labelme 3 wrote polygons without a type
            pts = _points(shape, where=f"{json_path}: shape {k}")
            c, d = _flags(shape)
            crowd, difficult = crowd or c, difficult or d
            if kind == "rectangle":
                if len(pts) != 2:
                    raise LabelProblem(f"{json_path}: shape {k}: a rectangle has 2 points, got {len(pts)}")
                (ax, ay), (bx, by) = pts
                x1, x2, y1, y2 = min(ax, bx), max(ax, bx), min(ay, by), max(ay, by)
                polys.append([(x1, y1), (x2, y1), (x2, y2), (x1, y2)])
                rects += 1
            elif kind == "polygon":
                if len(pts) < 3:
                    raise LabelProblem(f"{json_path}: shape {k}: polygon has {len(pts)} point(s); at least 3 "
                                       "are needed")
                polys.append(pts)
            else:
                raise LabelProblem(f"{json_path}: shape {k}: shape_type {kind!r} is not supported (rectangle, "
                                   "polygon); convert it or remove it")
        if reading is not None:
            reading.check_label(label, classes, where=where)
        elif classes is not None and label not in classes:
            raise DataError(f"{where}: class {label!r} is not one of the accepted classes {list(classes)!r}")
        x1, y1, x2, y2 = polygon_bounds([p for poly in polys for p in poly])
        polygon = None if rects == len(polys) else one_polygon(
            [p for p in polys], multipart=multipart, where=where)
        try:
            out.append(make_box(x1, y1, x2, y2, label, width=item.width, height=item.height, where=where,
                                polygon=polygon, crowd=crowd, difficult=difficult, reading=reading))
        except DegenerateBox as e:
            if reading is None:
                raise
            reading.skip_object(json_path, reason_of(str(e), json_path))
    return tuple(out)


def _scan_folder(folder: Path, image_root: Path | None, reading: Reading, *, on_missing: OnMissing = "error"
                 ) -> list[tuple[Path, dict[str, Any], Path]]:
    """``(json, data, image)`` of every Labelme JSON under ``folder``; other JSON files and
    files that do not parse are quarantined; a missing image: see :func:`_image_of`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Labelme folder {folder} does not exist or is not a directory")
    out = []
    for j in sorted(folder.rglob("*.json")):
        try:
            data = _load(j)
        except LabelProblem as e:
            reading.drop_image(j, reason_of(str(e), j))
            continue
        if not _is_labelme(data):
            reading.quarantined.append(Quarantined(j, "not a Labelme file (no 'shapes' and 'imagePath'); not read"))
            continue
        base = j.parent if image_root is None else Path(image_root) / j.relative_to(folder).parent
        img = _image_of(j, data, folder=base, reading=reading, on_missing=on_missing)
        if img is not None:
            out.append((j, data, img))
    return out


def read_labelme(
    folder: Path, *, classes: Sequence[str] | None, image_root: Path | None = None,
    multipart: Multipart = "quarantine", progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> DetSet:
    """Read every Labelme JSON under ``folder`` (recursive); the images they name are the set.

    ``image_root``: where ``imagePath`` resolves (mirroring ``folder``'s sub-folders; default:
    beside each JSON). ``classes=None``: the sorted names found; otherwise every label must be
    one (one error lists them all). See the module doc for shapes, flags, ``max_pixels`` and
    ``on_missing``."""
    check_on_missing(on_missing)
    folder = Path(folder)
    names = None if classes is None else check_classes(classes, where=folder)
    reading = Reading()
    files = _scan_folder(folder, image_root, reading, on_missing=on_missing)
    scan = scan_files([img for _, _, img in files], progress=progress, description=f"reading {folder}",
                      max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_path: list[tuple[Path, tuple[Box, ...] | None, str]] = []
    for j, data, img in files:
        if img not in ids:
            continue
        try:
            bxs: tuple[Box, ...] | None = read_labelme_file(j, data, item=by_id[ids[img]], classes=names,
                                                            multipart=multipart, reading=reading)
        except LabelProblem as e:
            reading.drop_image(j, reason_of(str(e), j), image=img)
            bxs = None
        per_path.append((img, bxs, str(j)))
    found = {b.label for _, bxs, _ in per_path for b in bxs or ()}
    reading.raise_unknown(names, source=folder, found=found)
    return assemble(scan, per_path, reading, names if names is not None else tuple(sorted(found)), source=folder)


def read_labelme_classes(
    folder: Path, *, classes: Sequence[str], image_root: Path | None = None, progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> LabelledSet:
    """Classification from Labelme's image-level ``flags`` (a :class:`LabelledSet`).

    Exactly one flag that is a class name must be true; none (an image not classified yet) or
    several leave the image out (quarantined); ``__ignore__`` true leaves it out too. A true
    flag that is no class name is an error naming it (the config may lack a class).
    ``max_pixels``, ``on_missing``: see the module doc."""
    check_on_missing(on_missing)
    folder = Path(folder)
    names = check_classes(classes, where=folder)
    reading = Reading()
    files = _scan_folder(folder, image_root, reading, on_missing=on_missing)
    scan = scan_files([img for _, _, img in files], progress=progress, description=f"reading {folder}",
                      max_pixels=max_pixels)
    per_path: list[tuple[Path, str | None, str]] = []
    for j, data, img in files:
        flags = data.get("flags") or {}
        if not isinstance(flags, dict):
            reading.drop_image(j, f"'flags' is {type(flags).__name__}, not an object", image=img)
            continue
        on = [k for k, v in flags.items() if v is True]
        if "__ignore__" in on:
            reading.drop_image(j, "flag __ignore__ is set", image=img)
            continue
        label = single_class(on, names, where=str(j), reading=reading, source=j, image=img, reason="",
                             none="no class flag is set (not classified yet)", several="several class flags are set")
        if label is not None:
            per_path.append((img, label, str(j)))
    return assemble_labels(scan, per_path, reading.quarantined, names, source=folder)


# --------------------------------------------------------------------------- writing


def labelme_dict(
    item: Item, boxes: Sequence[Box], *, image_path: str, flags: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Labelme's JSON for one image: a ``polygon`` shape for a box with a polygon, else a
    ``rectangle`` (two corners); box flags in the shape's ``flags``. ``image_path`` is
    relative to where the JSON will be written."""
    shapes = []
    for b in boxes:
        if b.polygon:
            pts = [[x, y] for x, y in b.polygon]
            kind = "polygon"
        else:
            pts = [[b.x1, b.y1], [b.x2, b.y2]]
            kind = "rectangle"
        sflags: dict[str, bool] = {}
        if b.crowd:
            sflags["crowd"] = True
        if b.difficult:
            sflags["difficult"] = True
        shapes.append({"label": b.label, "points": pts, "group_id": None, "description": "",
                       "shape_type": kind, "flags": sflags, "mask": None})
    return {"version": LABELME_VERSION, "flags": dict(flags or {}), "shapes": shapes, "imagePath": image_path,
            "imageData": None, "imageHeight": item.height, "imageWidth": item.width}


def _json_path(folder: Path, it: Item, image_root: Path | None) -> tuple[Path, str]:
    """Where the JSON of ``it`` goes (beside the image's relative path under ``folder``) and
    its ``imagePath`` (relative to the JSON)."""
    import os

    if image_root is not None:
        try:
            rel = Path(it.path).resolve().relative_to(Path(image_root).resolve())
        except ValueError:
            raise DataError(f"image {str(it.path)!r} is not under image_root {str(image_root)!r}") from None
    else:
        rel = Path(Path(it.path).name)
    json_path = Path(folder) / rel.with_suffix(".json")
    image_path = Path(os.path.relpath(Path(it.path).resolve(), json_path.parent.resolve())).as_posix()
    return json_path, image_path


def write_labelme(
    folder: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *, classes: Sequence[str] | None = None,
    image_root: Path | None = None,
) -> dict[str, Path]:
    """One Labelme JSON per item under ``folder`` (mirroring ``image_root``'s sub-folders,
    else named after the image); returns id -> JSON path. A box whose polygon does not span
    it is written as its polygon (Labelme keeps one shape per object)."""
    names = None if classes is None else check_classes(classes, where=folder)
    boxes = check_write(items, boxes, names)
    out: dict[str, Path] = {}
    seen: dict[Path, Path] = {}
    for it in items:
        path, image_path = _json_path(folder, it, image_root)
        if path in seen:
            raise DataError(f"images {seen[path]} and {it.path} would share the Labelme file {path}; rename one")
        seen[path] = Path(it.path)
        atomic_write_text(path, json.dumps(labelme_dict(it, boxes[it.id], image_path=image_path),
                                           ensure_ascii=False, indent=2) + "\n")
        out[it.id] = path
    return out


def write_labelme_classes(
    folder: Path, items: Sequence[Item], labels: Mapping[str, str], *, classes: Sequence[str],
    image_root: Path | None = None,
) -> dict[str, Path]:
    """One Labelme JSON per item with the image-level ``flags`` of ``classes`` (the item's
    class true, the others false) and no shapes, as Labelme's ``--flags`` mode saves them."""
    names = check_classes(classes, where=folder)
    out: dict[str, Path] = {}
    for it in items:
        label = labels.get(it.id)
        if label not in names:
            raise DataError(f"{it.path}: class {label!r} is not one of the accepted classes {list(names)!r}")
        path, image_path = _json_path(folder, it, image_root)
        data = labelme_dict(it, (), image_path=image_path, flags={c: c == label for c in names})
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        out[it.id] = path
    return out
