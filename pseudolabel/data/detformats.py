"""Detection / segmentation label formats: YOLO txt, COCO JSON, Pascal VOC XML, and the
dispatch to every object format (:func:`read_objects`, :func:`export_labels`).

Our representation and the tolerance rules are in :mod:`pseudolabel.data.objects`; Labelme,
CVAT and Label Studio JSON live in their own modules. Units per format here:

- YOLO: one ``.txt`` per image, one object per line, coordinates **normalised** to 0..1 by
  the image width/height: ``cls cx cy w h`` (detection) or ``cls x1 y1 x2 y2 ...`` (polygon,
  segmentation); ``cls`` is a 0-based index into the class names. When a names file sits
  next to the labels (``data.yaml`` / ``dataset.yaml`` ``names``, ``classes.txt``,
  ``obj.names``; or the one ``names=`` gives), ids are mapped **by name** to the config's
  classes; without one, ids are taken in the config's order. An image **without** a label
  file is an image with no objects (Ultralytics' convention). Each value as written must
  lie in −0.01…1.01 (Ultralytics' ``verify_image_label``); corners are then clipped.
- COCO: ``bbox`` ``[x, y, w, h]`` in pixels; ``segmentation`` a list of flat pixel polygons;
  ``category_id`` refers to ``categories[].id`` (names mapped to the config's classes);
  ``iscrowd=1`` objects become ``crowd`` boxes (no polygon).
- VOC: one XML per image; ``<object><name>`` and ``<bndbox>`` ``xmin ymin xmax ymax`` in
  pixels, read and written as continuous coordinates (no 1-based shift);
  ``<difficult>1</difficult>`` becomes a ``difficult`` box. Polygons travel in an optional
  ``<polygon><x1/><y1/><x2/>...`` element (as Roboflow writes it). ``ImageSets/Main/<split>.txt``
  selects the images of a split.
"""

from __future__ import annotations

import json
import shutil
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.images import IMAGE_SUFFIXES, sha256_file
from pseudolabel.data.ingest import (
    DEFAULT_MAX_PIXELS,
    OnMissing,
    Quarantined,
    check_on_missing,
    list_image_files,
    scan_files,
)
from pseudolabel.data.objects import (
    PIXEL_TOL,
    DegenerateBox,
    DetSet,
    DetTask,
    Multipart,
    Reading,
    assemble,
    bounds,
    check_classes,
    check_task,
    check_write,
    fmt_num,
    make_box,
    one_polygon,
    pairs,
    polygon_area,
    reason_of,
    size_check,
    unique_names,
)
from pseudolabel.types import Box, Item
from pseudolabel.utils import atomic_write_text

__all__ = [
    "DetSet", "DetTask", "PIXEL_TOL", "NORM_RANGE", "polygon_area", "read_yolo", "read_yolo_names",
    "read_names_file", "find_names_file", "read_coco", "read_voc", "write_yolo", "write_coco", "write_voc",
    "coco_dict", "voc_xml", "yolo_lines", "export_labels", "read_objects", "polygon_to_mask", "mask_to_polygon",
]

NORM_RANGE = (-0.01, 1.01)
"""Accepted range of every normalised YOLO value as written (Ultralytics' verify_image_label)."""

OBJECT_FORMATS: tuple[str, ...] = ("yolo", "coco", "voc", "labelme", "cvat", "labelstudio")
EXPORT_FORMATS: tuple[str, ...] = OBJECT_FORMATS

NAMES_FILES: tuple[str, ...] = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")
"""Files that give YOLO class ids their names, looked up beside the labels and two folders up."""


# --------------------------------------------------------------------------- class names


def read_yolo_names(data_yaml: Path) -> tuple[str, ...]:
    """Class names from an Ultralytics ``data.yaml`` (``names`` as a list or ``{index: name}``)."""
    import yaml  # light, but only needed here

    data_yaml = Path(data_yaml)
    try:
        with open(data_yaml, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise DataError(f"names file {data_yaml} does not exist") from None
    except yaml.YAMLError as e:
        raise DataError(f"{data_yaml}: not valid YAML ({str(e).splitlines()[0]})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DataError(f"{data_yaml}: names keys {keys} are not 0..{len(keys) - 1}")
        names = [names[k] for k in keys]
    if not isinstance(names, list):
        raise DataError(f"{data_yaml}: no 'names' list or mapping found (Ultralytics' data.yaml has "
                        "names: [a, b] or names: {0: a, 1: b})")
    return check_classes([str(n) for n in names], where=data_yaml)


def read_names_file(path: Path) -> tuple[str, ...]:
    """Class names by index from a ``.yaml`` (:func:`read_yolo_names`) or a one-name-per-line
    text file (``classes.txt`` as Label Studio and LabelImg write it, Darknet's ``obj.names``).
    Trailing blank lines are allowed; a blank line between names would shift every later id
    and is an error."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return read_yolo_names(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"names file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, ln in enumerate(lines, start=1):
        if not ln:
            raise DataError(f"{path}:{i}: blank line between class names (it would shift every later id)")
    return check_classes(lines, where=path)


def find_names_file(labels_dir: Path) -> Path | None:
    """The names file of a YOLO labels folder: the first folder of ``labels_dir``, its parent
    and grandparent holding one of :data:`NAMES_FILES` (two there must agree)."""
    labels_dir = Path(labels_dir)
    for folder in (labels_dir, labels_dir.parent, labels_dir.parent.parent):
        found = [folder / n for n in NAMES_FILES if (folder / n).is_file()]
        if not found:
            continue
        first = read_names_file(found[0])
        for other in found[1:]:
            names = read_names_file(other)
            if names != first:
                raise DataError(f"{found[0]} lists {list(first)!r} but {other} lists {list(names)!r}; make them "
                                "agree or set the source's names: to the right file")
        return found[0]
    return None


def _id_names(names_file: Path | None, classes: tuple[str, ...], reading: Reading) -> tuple[str, ...]:
    """Class name of each YOLO id: from the names file when there is one (a note when its
    order differs from the config's), else the config's (a note says so: nothing in the files
    can confirm that order)."""
    if names_file is None:
        reading.notes.append(f"no names file ({', '.join(NAMES_FILES)}) beside the labels: class ids taken in the "
                             f"config's order {list(classes)!r}; set the source's names: to map them by name")
        return classes
    names = read_names_file(names_file)
    unknown = [n for n in names if n not in classes]
    if names != classes[: len(names)] or unknown:
        reading.notes.append(
            f"{names_file}: class ids mapped by name: file order {list(names)!r}, config order {list(classes)!r}"
            + (f" (names not in the config, an error if used: {unknown!r})" if unknown else "")
        )
    return names


# --------------------------------------------------------------------------- YOLO


def _norm_value(tok: str, name: str, *, where: str) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise LabelProblem(f"{where}: {tok!r} is not a number") from None
    lo, hi = NORM_RANGE
    if not lo <= v <= hi:  # also refuses nan / inf
        raise LabelProblem(f"{where}: {name} = {tok} lies outside {lo:g}..{hi:g}, the range Ultralytics accepts "
                           "for normalised values (0..1 by the image size)")
    return v


def parse_yolo_line(
    line: str, *, classes: Sequence[str], width: int, height: int, task: DetTask, where: str,
    reading: Reading | None = None,
) -> Box:
    """One YOLO label line -> pixel :class:`Box` on a ``width`` x ``height`` image.

    ``classes``: the name of each id. ``detect``: ``cls cx cy w h`` (5 fields) or a polygon
    line (converted to its enclosing box, polygon kept, as Ultralytics accepts);
    ``segment``: ``cls x1 y1 x2 y2 x3 y3 ...`` (an even number >= 6 of normalised values).
    Every value must lie in :data:`NORM_RANGE`; the box is then clipped to the image.

    Raises :class:`DataError` for a class id out of range (the class list is wrong),
    :class:`DegenerateBox` for zero width or height, :class:`LabelProblem` for the rest.
    """
    fields = line.split()
    try:
        cls = int(fields[0])
        if str(cls) != fields[0].lstrip("+") or cls < 0:
            raise ValueError
    except (ValueError, IndexError):
        raise LabelProblem(f"{where}: class id {fields[0] if fields else ''!r} is not a non-negative integer") from None
    if cls >= len(classes):
        raise DataError(
            f"{where}: class id {cls} is out of range; accepted 0..{len(classes) - 1} "
            f"({', '.join(f'{i}={c}' for i, c in enumerate(classes))}); give the right names file "
            "(data.yaml / classes.txt) or classes"
        )
    label = classes[cls]
    inf = float("inf")
    if task == "detect" and len(fields) == 5:
        cx, cy, w, h = (_norm_value(t, n, where=where) for t, n in zip(fields[1:], ("cx", "cy", "w", "h")))
        if w < 0 or h < 0:
            raise LabelProblem(f"{where}: negative size w = {fields[3]} h = {fields[4]}")
        return make_box((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height,
                        label, width=width, height=height, where=where, reading=reading, tol_x=inf, tol_y=inf)
    if task == "detect" and len(fields) < 7:
        raise LabelProblem(
            f"{where}: {len(fields)} fields; expected 5 ('cls cx cy w h') or a polygon 'cls x1 y1 x2 y2 x3 y3 ...'"
        )
    if task == "segment" and len(fields) < 7 and len(fields) % 2 == 1:
        raise LabelProblem(
            f"{where}: {len(fields)} fields; segmentation lines are polygons 'cls x1 y1 x2 y2 x3 y3 ...' "
            "(at least 3 points)"
        )
    vals = [_norm_value(t, f"{'xy'[i % 2]}[{i // 2}]", where=where) for i, t in enumerate(fields[1:])]
    norm = pairs(vals, where=where)
    pts = [(x * width, y * height) for x, y in norm]
    return make_box(*bounds(pts), label, width=width, height=height, where=where, polygon=pts, reading=reading,
                    tol_x=inf, tol_y=inf)


def read_yolo_labels(
    label_file: Path, *, classes: Sequence[str], width: int, height: int, task: DetTask = "detect",
    reading: Reading | None = None,
) -> tuple[Box, ...]:
    """All objects of one YOLO label file (blank lines skipped); a missing file means none.

    With ``reading``, zero-area boxes are skipped with a quarantine row; without it they raise
    :class:`DegenerateBox`. Other problems raise (see :func:`parse_yolo_line`)."""
    label_file = Path(label_file)
    if not label_file.exists():
        return ()
    out: list[Box] = []
    try:
        text = label_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelProblem(f"{label_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_file}:{lineno}"
        try:
            out.append(parse_yolo_line(line, classes=classes, width=width, height=height, task=task, where=where,
                                       reading=reading))
        except DegenerateBox as e:
            if reading is None:
                raise
            reading.skip_object(label_file, reason_of(str(e), label_file))
    return tuple(out)


def read_yolo(
    images_dir: Path, labels_dir: Path, *, classes: Sequence[str], task: DetTask = "detect",
    names: Path | None = None, progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> DetSet:
    """Read a YOLO dataset: images under ``images_dir`` (recursive), labels under ``labels_dir``.

    The label file of ``images_dir/a/b.jpg`` is ``labels_dir/a/b.txt``. An image without a
    label file has no objects. ``classes``: the config's class names. ``names``: the file
    naming the ids (default: :func:`find_names_file`); ids are mapped by name through it,
    else taken in ``classes`` order. A label file with no matching image raises (a typo in a
    file name would otherwise lose its labels), or with ``on_missing="quarantine"`` is
    quarantined (its image was deleted since the set was first read); a label file with a
    malformed line leaves its image out (quarantined with the reason); zero-area boxes are
    skipped (a row each); images of more than ``max_pixels`` pixels are quarantined.
    """
    check_on_missing(on_missing)
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    check_task(task)
    config = check_classes(classes, where=labels_dir)
    if not labels_dir.is_dir():
        raise DataError(f"YOLO labels folder {labels_dir} does not exist or is not a directory")
    reading = Reading()
    names_file = Path(names) if names is not None else find_names_file(labels_dir)
    id_names = _id_names(names_file, config, reading)
    files = list_image_files(images_dir)
    stems: dict[str, Path] = {}
    for p in files:
        stem = p.relative_to(images_dir).with_suffix("").as_posix()
        if stem in stems:
            raise DataError(f"images {stems[stem]} and {p} would share the label file "
                            f"{labels_dir / stem}.txt; rename one of them")
        stems[stem] = p
    for txt in sorted(labels_dir.rglob("*.txt")):
        if txt.name in NAMES_FILES or txt == names_file:
            continue  # LabelImg writes classes.txt among the label files
        if txt.relative_to(labels_dir).with_suffix("").as_posix() not in stems:
            reading.missing(txt, f"label file has no image with the same name under {images_dir}",
                            on_missing=on_missing,
                            error=f"{txt}: label file has no image with the same name under {images_dir}")
    scan = scan_files(files, progress=progress, description=f"reading {images_dir}", max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_path: list[tuple[Path, tuple[Box, ...] | None, str]] = []
    for p in files:
        if p not in ids:
            continue
        it = by_id[ids[p]]
        txt = labels_dir / p.relative_to(images_dir).with_suffix(".txt")
        try:
            bxs: tuple[Box, ...] | None = read_yolo_labels(txt, classes=id_names, width=it.width,
                                                           height=it.height, task=task, reading=reading)
            for k, b in enumerate(bxs or ()):
                reading.check_label(b.label, config, where=f"{txt} (object {k + 1})")
        except LabelProblem as e:
            reading.drop_image(txt, reason_of(str(e), txt), image=p)
            bxs = None
        per_path.append((p, bxs, str(txt)))
    reading.raise_unknown(config, source=labels_dir, found=id_names)
    return assemble(scan, per_path, reading, config, source=labels_dir)


def yolo_lines(
    boxes: Sequence[Box], *, classes: Sequence[str], width: int, height: int, task: DetTask = "detect",
) -> list[str]:
    """YOLO label lines (normalised) for ``boxes`` on a ``width`` x ``height`` image.

    ``detect`` writes ``cls cx cy w h`` (polygons are dropped); ``segment`` writes the
    polygon and raises for a box without one. Crowd and difficult boxes are not written
    (YOLO has no such flag; Ultralytics' COCO and VOC converters leave them out too).
    """
    check_task(task)
    index = {c: i for i, c in enumerate(classes)}
    lines = []
    for k, b in enumerate(boxes):
        where = f"box {k} ({b.label!r})"
        if b.crowd or b.difficult:
            continue
        cls = _label_index(b, index, where=where)
        if task == "segment":
            if b.polygon is None or len(b.polygon) < 3:
                raise DataError(f"{where}: task 'segment' needs a polygon of >= 3 points")
            coords = " ".join(f"{fmt_num(x / width)} {fmt_num(y / height)}" for x, y in b.polygon)
            lines.append(f"{cls} {coords}")
        else:
            cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
            w, h = (b.x2 - b.x1) / width, (b.y2 - b.y1) / height
            lines.append(f"{cls} {fmt_num(cx)} {fmt_num(cy)} {fmt_num(w)} {fmt_num(h)}")
    return lines


def _label_index(box: Box, index: Mapping[str, int], *, where: str) -> int:
    if box.label not in index:
        raise DataError(f"{where}: class {box.label!r} is not one of the accepted classes {list(index)!r}")
    return index[box.label]


def write_yolo(
    labels_dir: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str], task: DetTask = "detect", image_root: Path | None = None,
) -> dict[str, Path]:
    """Write one label file per item (an empty file for no objects); returns id -> file.

    The file for ``image_root/a/b.jpg`` is ``labels_dir/a/b.txt``; without ``image_root``
    it is ``labels_dir/<image stem>.txt`` (the id is prefixed when two items share a stem).
    Names files are written by :func:`write_yolo_names` / :func:`export_labels`.
    """
    names = check_classes(classes, where=labels_dir)
    boxes = check_write(items, boxes, names)
    rel = unique_names(items, image_root)
    out = {}
    for it in items:
        path = Path(labels_dir) / Path(rel[it.id]).with_suffix(".txt")
        try:
            lines = yolo_lines(boxes[it.id], classes=names, width=it.width, height=it.height, task=task)
        except DataError as e:
            raise DataError(f"{it.path}: {e}") from None
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        out[it.id] = path
    return out


def write_yolo_names(path: Path, classes: Sequence[str]) -> Path:
    """``classes.txt``: one class name per line, line i = id i (what Label Studio's YOLO
    importer and LabelImg read)."""
    names = check_classes(classes, where=path)
    atomic_write_text(Path(path), "".join(c + "\n" for c in names))
    return Path(path)


# --------------------------------------------------------------------------- COCO


def _num(v: Any, *, where: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise LabelProblem(f"{where}: {what} = {v!r} is not a number")
    return float(v)


def _load_json(path: Path, *, what: str) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a folder; give the JSON file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); JSON files are UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def coco_image_roots(json_path: Path) -> list[Path]:
    """Where a COCO JSON's ``file_name`` may resolve, by convention: the JSON's folder; for
    ``annotations/instances_<split>.json``, ``<root>/images/<split>`` (our export, Ultralytics)
    and ``<root>/<split>`` (the official ``val2017/`` layout)."""
    json_path = Path(json_path)
    out = [json_path.parent]
    split = json_path.stem.removeprefix("instances_")
    if split != json_path.stem:
        out += [json_path.parent.parent / "images" / split, json_path.parent.parent / split]
    return out


def read_coco(
    json_path: Path, *, image_root: Path | None = None, classes: Sequence[str] | None = None,
    multipart: Multipart = "quarantine", progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> DetSet:
    """Read a COCO instances JSON; ``images[].file_name`` resolves against ``image_root``
    (``None``: the first of :func:`coco_image_roots` holding the first listed image that exists).

    ``classes=None``: the category names ordered by category id; otherwise every category
    name used by an annotation must be one of ``classes`` (one error lists them all).
    ``bbox`` gives the box; ``segmentation`` polygons (flat pixel lists) give the polygon; an
    object of several polygon parts quarantines its image unless ``multipart="largest"``
    (keeps the largest part by area; the box still encloses all). ``iscrowd=1`` annotations
    become ``crowd`` boxes without polygon (kept out of training, ignored in evaluation as
    pycocotools does). A malformed annotation or a declared size that differs from the file
    quarantines its image; a zero-size bbox is skipped (a row). Every image listed must exist
    on disk (``on_missing="quarantine"``: a missing one is quarantined, its annotations
    skipped); images of more than ``max_pixels`` pixels are quarantined; files under
    ``image_root`` that the JSON does not list are not read.
    """
    check_on_missing(on_missing)
    json_path = Path(json_path)
    if multipart not in ("quarantine", "largest"):
        raise DataError(f"multipart {multipart!r} is not one of 'quarantine', 'largest'")
    data = _load_json(json_path, what="COCO file")
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: the top level is a {type(data).__name__}; a COCO instances file is an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{json_path}: missing list {key!r}; a COCO instances file has "
                            "'images', 'annotations' and 'categories'")
    cats: dict[Any, str] = {}
    for c in sorted(data["categories"], key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise DataError(f"{json_path}: category {c!r} needs an 'id' and a 'name'")
        cats[c["id"]] = c["name"]
    names = check_classes(list(cats.values()) if classes is None else classes, where=json_path)
    if image_root is None:
        # The root holding the first listed image that exists: on a re-read the first one may
        # have been deleted since, and guessing another root would lose every image.
        roots = coco_image_roots(json_path)
        file_names = (img.get("file_name") for img in data["images"] if isinstance(img, dict))
        image_root = next((r for fn in file_names if isinstance(fn, str) for r in roots if (r / fn).is_file()),
                          roots[0])
    image_root = Path(image_root)

    reading = Reading()
    images: dict[Any, Path] = {}
    absent: set[Path] = set()
    declared: dict[Any, tuple[Any, Any]] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DataError(f"{json_path}: image entry {img!r} needs an 'id' and a 'file_name'")
        if img["id"] in images:
            raise DataError(f"{json_path}: image id {img['id']!r} is listed twice")
        path = image_root / img["file_name"]
        if not path.is_file():
            reading.missing(path, f"image file not found (image id {img['id']!r} in {json_path})",
                            on_missing=on_missing,
                            error=f"{json_path}: image id {img['id']!r}: file {img['file_name']!r} not found under "
                                  f"{image_root} (set the source's image_root to the folder file_name is relative to)")
            absent.add(path)
        images[img["id"]] = path
        declared[img["id"]] = (img.get("width"), img.get("height"))

    scan = scan_files([p for p in images.values() if p not in absent], progress=progress,
                      description=f"reading {json_path.name}", max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_image: dict[Any, list[Box]] = {k: [] for k in images}
    problem: dict[Any, str] = {}
    sizes: dict[Any, Item] = {}
    for img_id, path in images.items():
        if path in ids:
            it = by_id[ids[path]]
            sizes[img_id] = it
            try:
                size_check(declared[img_id], it, where=f"{json_path}: image id {img_id!r}")
            except LabelProblem as e:
                problem[img_id] = reason_of(str(e), json_path)

    for ann in data["annotations"]:
        where = f"{json_path}: annotation id {ann.get('id') if isinstance(ann, dict) else None!r}"
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            got = ann.get("image_id") if isinstance(ann, dict) else ann
            reading.quarantined.append(Quarantined(json_path, f"{reason_of(where, json_path)}: image_id {got!r} "
                                                   "is not in 'images'; annotation skipped"))
            continue
        img_id = ann["image_id"]
        if img_id not in sizes or img_id in problem:  # image quarantined, or already left out
            continue
        try:
            box = _coco_box(ann, cats, sizes[img_id], where=where, multipart=multipart, reading=reading)
        except DegenerateBox as e:
            reading.skip_object(json_path, reason_of(str(e), json_path))
            continue
        except LabelProblem as e:
            problem[img_id] = reason_of(str(e), json_path)
            continue
        reading.check_label(box.label, names, where=where)
        per_image[img_id].append(box)
    for img_id, why in problem.items():
        reading.drop_image(json_path, why, image=images[img_id])
    reading.raise_unknown(names, source=json_path, found=cats.values())
    per_path = [(images[k], None if k in problem else tuple(v), f"{json_path}: image id {k!r}")
                for k, v in per_image.items()]
    return assemble(scan, per_path, reading, names, source=json_path)


def _coco_box(ann: Mapping[str, Any], cats: Mapping[Any, str], it: Item, *, where: str, multipart: str,
              reading: Reading) -> Box:
    if ann.get("category_id") not in cats:
        raise LabelProblem(f"{where}: category_id {ann.get('category_id')!r} is not one of the categories "
                           f"{sorted(cats)!r}")
    label = cats[ann["category_id"]]
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise LabelProblem(f"{where}: bbox {bbox!r} is not [x, y, w, h]")
    x, y, bw, bh = (_num(v, where=where, what="bbox value") for v in bbox)
    if bw < 0 or bh < 0:
        raise LabelProblem(f"{where}: bbox {bbox!r} has a negative width or height")
    crowd = bool(ann.get("iscrowd", 0))
    seg = ann.get("segmentation") or []
    polygon = None
    if not crowd:  # a crowd region's RLE mask is not a polygon; its box is what evaluation uses
        if isinstance(seg, dict):
            raise LabelProblem(f"{where}: RLE segmentation on a non-crowd object is not supported; give polygons")
        if seg:
            if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
                raise LabelProblem(f"{where}: segmentation {str(seg)[:60]!r} is not a list of flat polygons")
            parts = [pairs([_num(v, where=where, what="segmentation value") for v in part], where=where)
                     for part in seg]
            polygon = one_polygon(parts, multipart=multipart, where=where)
    return make_box(x, y, x + bw, y + bh, label, width=it.width, height=it.height, where=where, polygon=polygon,
                    crowd=crowd, difficult=bool(ann.get("difficult", 0)), reading=reading)


def coco_dict(
    items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *, classes: Sequence[str],
    image_root: Path | None = None,
) -> dict[str, Any]:
    """COCO instances dict: image ids 1..N in ``items`` order, category ids 1..C in
    ``classes`` order, ``bbox`` in pixels, ``segmentation`` = ``[flat polygon]`` or ``[]``,
    ``area`` = polygon area, else box area; crowd boxes with ``iscrowd: 1``, difficult ones
    with ``"difficult": 1`` (not a COCO key: other tools read them as ordinary objects).
    ``file_name`` is relative to ``image_root`` (else the file name, id-prefixed on clashes)."""
    names = check_classes(classes, where="coco export")
    boxes = check_write(items, boxes, names)
    index = {c: i + 1 for i, c in enumerate(names)}
    rel = unique_names(items, image_root)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for img_id, it in enumerate(items, start=1):
        images.append({"id": img_id, "file_name": rel[it.id], "width": it.width, "height": it.height})
        for k, b in enumerate(boxes[it.id]):
            cat = _label_index(b, index, where=f"{it.path}: box {k}")
            seg = [[float(v) for xy in b.polygon for v in xy]] if b.polygon else []
            area = polygon_area(b.polygon) if b.polygon else (b.x2 - b.x1) * (b.y2 - b.y1)
            ann: dict[str, Any] = {
                "id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1],
                "segmentation": seg, "area": float(area), "iscrowd": int(b.crowd),
            }
            if b.difficult:
                ann["difficult"] = 1
            anns.append(ann)
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
    if node is None or node.text is None or not node.text.strip():
        raise LabelProblem(f"{where}: missing <{tag}>")
    try:
        return float(node.text.strip())
    except ValueError:
        raise LabelProblem(f"{where}: <{tag}> = {node.text.strip()!r} is not a number") from None


def _xml_flag(el: ET.Element, tag: str, *, where: str) -> bool:
    text = (el.findtext(tag) or "0").strip().lower()
    if text in ("0", "", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise LabelProblem(f"{where}: <{tag}> = {text!r} is not 0 or 1")


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise LabelProblem(f"{path}:{e.position[0]}: not valid XML ({e})") from None


def read_voc_file(
    xml_path: Path, *, width: int, height: int, classes: Sequence[str] | None = None,
    reading: Reading | None = None,
) -> tuple[Box, ...]:
    """Objects of one VOC XML on a ``width`` x ``height`` image (see the module doc for units).

    ``<difficult>1</difficult>`` gives a ``difficult`` box. With ``reading``, zero-area boxes
    are skipped with a quarantine row and names not in ``classes`` are collected (reported by
    the caller); without it they raise. Other problems raise :class:`LabelProblem`."""
    xml_path = Path(xml_path)
    root = _parse_xml(xml_path)
    size = root.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        size_check((size.findtext("width", "").strip(), size.findtext("height", "").strip()),
                   Item("", xml_path, width, height), where=f"{xml_path}: <size>")
    out = []
    for k, obj in enumerate(root.findall("object"), start=1):
        where = f"{xml_path}: object {k}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise LabelProblem(f"{where}: missing or empty <name>")
        if classes is not None and name not in classes:
            if reading is None:
                raise DataError(f"{where}: class {name!r} is not one of the accepted classes {list(classes)!r}")
            reading.check_label(name, classes, where=where)
        bb = obj.find("bndbox")
        if bb is None:
            raise LabelProblem(f"{where}: missing <bndbox>")
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
                raise LabelProblem(f"{where}: <polygon> must hold x1 y1 x2 y2 ... in order "
                                   f"({len(poly_el)} children, {len(flat)} read)")
            polygon = pairs(flat, where=where)
        try:
            out.append(make_box(x1, y1, x2, y2, name, width=width, height=height, where=where, polygon=polygon,
                                difficult=_xml_flag(obj, "difficult", where=where), reading=reading))
        except DegenerateBox as e:
            if reading is None:
                raise
            reading.skip_object(xml_path, reason_of(str(e), xml_path))
    return tuple(out)


def voc_splits(voc_root: Path) -> list[str]:
    """Names of the split lists in ``voc_root/ImageSets/Main`` (``train``, ``val``, ...), not
    the per-class lists (``<class>_<split>.txt``)."""
    main = Path(voc_root) / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    stems = sorted(p.stem for p in main.glob("*.txt"))
    return [s for s in stems if not any(s.endswith(f"_{t}") and s != t for t in stems)]


def _voc_ids(list_file: Path) -> list[str]:
    ids = []
    for line in list_file.read_text(encoding="utf-8-sig").splitlines():
        if line.strip():
            ids.append(line.split()[0])
    return ids


def _voc_image(xml: Path, root: ET.Element, *, folder: Path, reading: Reading, on_missing: OnMissing = "error"
               ) -> Path | None:
    """The image an annotation XML describes, under ``folder``: ``<filename>``; with a known
    image extension added when it has none (older LabelImg); ``<path>`` (as given, then its
    file name); the XML's own stem with a known extension. None exists: :class:`DataError`, or
    with ``on_missing="quarantine"`` a row for the first candidate in ``reading`` and ``None``."""
    tried: list[Path] = []
    exts = sorted(IMAGE_SUFFIXES) + sorted(s.upper() for s in IMAGE_SUFFIXES)

    def with_exts(stem: str) -> list[Path]:
        return [folder / f"{stem}{e}" for e in exts]

    fn = (root.findtext("filename") or "").strip()
    if fn:
        tried.append(folder / fn)
        if Path(fn).suffix.lower() not in IMAGE_SUFFIXES:
            tried += with_exts(fn)
    raw_path = (root.findtext("path") or "").strip()
    if raw_path:
        # LabelImg on Windows writes C:\...\img.jpg; PureWindowsPath reads both separators.
        from pathlib import PureWindowsPath

        tried.append(Path(raw_path))
        tried.append(folder / PureWindowsPath(raw_path).name)
    tried += with_exts(xml.stem)
    for p in tried:
        if p.is_file():
            return p
    shown = ", ".join(str(p) for p in tried[:3]) + (f" and {len(tried) - 3} more" if len(tried) > 3 else "")
    reading.missing(tried[0], f"image file not found (named by {xml})", on_missing=on_missing,
                    error=f"{xml}: image not found (<filename> {fn!r}, <path> {raw_path!r}); tried {shown}; set the "
                          "source's image_root to the images folder")
    return None


def read_voc(
    annotations_dir: Path, *, image_root: Path, classes: Sequence[str] | None = None, split: str | None = None,
    progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, on_missing: OnMissing = "error",
) -> DetSet:
    """Read the VOC XMLs under ``annotations_dir`` (recursive, sorted).

    ``split``: read only the ids listed in ``<annotations_dir>/../ImageSets/Main/<split>.txt``.
    Without ``split``, a VOC root with two or more split lists is an error (reading them all
    would mix train and val); with exactly one, that list is read; with none, every XML.

    The image of ``annotations_dir/a/b.xml`` is found under ``image_root/a/`` (see
    :func:`_voc_image` for the fallbacks). ``classes=None``: the sorted set of names found;
    otherwise names must be in ``classes`` (one error lists them all). A missing image, or an
    id of the split list without its XML, raises (``on_missing="quarantine"``: is quarantined);
    an undecodable image, or one of more than ``max_pixels`` pixels, is quarantined; an XML
    that does not parse or has a bad object leaves its image out (quarantined with the reason).
    """
    check_on_missing(on_missing)
    annotations_dir, image_root = Path(annotations_dir), Path(image_root)
    if not annotations_dir.is_dir():
        raise DataError(f"VOC annotations folder {annotations_dir} does not exist or is not a directory")
    names = None if classes is None else check_classes(classes, where=annotations_dir)
    reading = Reading()
    voc_root = annotations_dir.parent
    available = voc_splits(voc_root)
    main = voc_root / "ImageSets" / "Main"
    if split is None and len(available) > 1:
        raise DataError(f"{main} has the split lists {', '.join(available)}; reading every XML would mix them: "
                        "set the source's split to one of them")
    if split is None and len(available) == 1:
        split = available[0]
        reading.notes.append(f"{main / (split + '.txt')}: the only split list; read its ids")
    if split is not None:
        list_file = main / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"VOC split list {list_file} does not exist; splits here: "
                            f"{', '.join(available) or 'none (leave split unset to read every XML)'}")
        xmls = []
        for i in _voc_ids(list_file):
            x = annotations_dir / f"{i}.xml"
            if not x.is_file():
                reading.missing(x, f"annotation file not found (id {i!r} listed in {list_file})",
                                on_missing=on_missing, error=f"{list_file}: id {i!r} has no annotation file {x}")
                continue
            xmls.append(x)
    else:
        xmls = sorted(annotations_dir.rglob("*.xml"))
    pairs_: list[tuple[Path, Path]] = []
    for x in xmls:
        try:
            root = _parse_xml(x)
        except LabelProblem as e:
            reading.drop_image(x, reason_of(str(e), x))
            continue
        img = _voc_image(x, root, folder=image_root / x.relative_to(annotations_dir).parent, reading=reading,
                         on_missing=on_missing)
        if img is not None:
            pairs_.append((x, img))
    scan = scan_files([p for _, p in pairs_], progress=progress, description=f"reading {annotations_dir}",
                      max_pixels=max_pixels)
    ids = scan.id_of()
    by_id = {it.id: it for it in scan.items}
    per_path: list[tuple[Path, tuple[Box, ...] | None, str]] = []
    for x, img in pairs_:
        if img not in ids:
            continue
        it = by_id[ids[img]]
        try:
            bxs: tuple[Box, ...] | None = read_voc_file(x, width=it.width, height=it.height, classes=names,
                                                        reading=reading)
        except LabelProblem as e:
            reading.drop_image(x, reason_of(str(e), x), image=img)
            bxs = None
        per_path.append((img, bxs, str(x)))
    found = {b.label for _, bxs, _ in per_path for b in bxs or ()}
    reading.raise_unknown(names, source=annotations_dir, found=found)
    if names is None:
        names = tuple(sorted(found))
    return assemble(scan, per_path, reading, names, source=annotations_dir)


def voc_xml(item: Item, boxes: Sequence[Box], *, filename: str | None = None) -> str:
    """VOC XML text for one image (pixel coordinates; polygon in ``<polygon>`` if any;
    ``<difficult>1</difficult>`` for difficult boxes and for crowd regions — VOC has no crowd
    flag, and difficult is what keeps a region out of training and evaluation there)."""
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
        ET.SubElement(obj, "difficult").text = "1" if (b.difficult or b.crowd) else "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", b.x1), ("ymin", b.y1), ("xmax", b.x2), ("ymax", b.y2)):
            ET.SubElement(bb, tag).text = fmt_num(v)
        if b.polygon:
            poly = ET.SubElement(obj, "polygon")
            for i, (x, y) in enumerate(b.polygon, start=1):
                ET.SubElement(poly, f"x{i}").text = fmt_num(x)
                ET.SubElement(poly, f"y{i}").text = fmt_num(y)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(
    annotations_dir: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str] | None = None, image_root: Path | None = None,
) -> dict[str, Path]:
    """One XML per item under ``annotations_dir`` (mirroring ``image_root``'s sub-folders,
    else named after the image, id-prefixed on clashes); returns id -> XML path.
    ``classes``, when given, is checked against every box label."""
    names = None if classes is None else check_classes(classes, where=annotations_dir)
    boxes = check_write(items, boxes, names)
    rel = unique_names(items, image_root)
    out = {}
    for it in items:
        path = Path(annotations_dir) / Path(rel[it.id]).with_suffix(".xml")
        atomic_write_text(path, voc_xml(it, boxes[it.id], filename=Path(rel[it.id]).name))
        out[it.id] = path
    return out


# --------------------------------------------------------------------------- any object format


def read_objects(
    fmt: str, path: Path, *, classes: Sequence[str], task: DetTask = "detect", image_root: Path | None = None,
    labels: Path | None = None, names: Path | None = None, split: str | None = None,
    multipart: Multipart = "quarantine", progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> DetSet:
    """Read a detection / segmentation set in format ``fmt`` (one of :data:`OBJECT_FORMATS`).

    ``path`` and the defaults per format:

    - ``yolo``: the images folder; ``labels`` defaults to ``path`` with its last ``images``
      component replaced by ``labels``; ``names`` to :func:`find_names_file`;
    - ``coco``: the instances JSON; ``image_root`` defaults to the JSON's folder, or for
      ``annotations/instances_<split>.json`` to ``images/<split>`` or ``<split>`` beside
      ``annotations`` (:func:`coco_image_roots`: the first holding the first listed image that exists);
    - ``voc``: the ``Annotations`` folder; ``image_root`` defaults to ``<path>/../JPEGImages``;
      ``split`` selects ``ImageSets/Main/<split>.txt``;
    - ``labelme``: the folder of Labelme JSON files (images beside them, or ``image_root``);
    - ``cvat``: the CVAT for images XML (``annotations.xml``); ``image_root`` defaults to
      ``images/`` beside it (CVAT's export layout), else its folder;
    - ``labelstudio``: Label Studio's JSON export; ``image_root`` is the local-files document
      root (default: the JSON's folder).

    Options a format does not use must stay ``None`` (an error names them). Every format
    quarantines images of more than ``max_pixels`` pixels; ``on_missing`` says what a file the
    labels name that does not exist is: an error (``"error"``, a set's first read) or a
    quarantine row (``"quarantine"``, a re-read: deleted since).
    """
    check_on_missing(on_missing)
    limits: dict[str, Any] = {"max_pixels": max_pixels, "on_missing": on_missing}
    path = Path(path)
    unused = {k: v for k, v in (("labels", labels), ("names", names), ("split", split)) if v is not None}
    uses = {"yolo": {"labels", "names"}, "voc": {"split"}}.get(fmt, set())
    extra = sorted(set(unused) - uses)
    if fmt in OBJECT_FORMATS and extra:
        raise DataError(f"format {fmt!r} does not use {', '.join(extra)} (given for {path}); remove it")
    if fmt == "yolo":
        if image_root is not None:
            raise DataError(f"format 'yolo' takes no image_root (images are under {path}); remove it")
        if labels is None:
            parts = list(path.parts)
            if "images" not in parts:
                raise DataError(f"{path} has no 'images' folder to replace by 'labels' (the YOLO convention); "
                                "set the source's labels to the .txt folder")
            i = len(parts) - 1 - parts[::-1].index("images")
            labels = Path(*parts[:i], "labels", *parts[i + 1:])
        return read_yolo(path, Path(labels), classes=classes, task=task, names=names, progress=progress, **limits)
    if fmt == "coco":
        return read_coco(path, image_root=image_root, classes=classes, multipart=multipart, progress=progress,
                         **limits)
    if fmt == "voc":
        return read_voc(path, image_root=image_root or path.parent / "JPEGImages", classes=classes, split=split,
                        progress=progress, **limits)
    if fmt == "labelme":
        from pseudolabel.data import labelme

        return labelme.read_labelme(path, classes=classes, image_root=image_root, multipart=multipart,
                                    progress=progress, **limits)
    if fmt == "cvat":
        from pseudolabel.data import cvat

        return cvat.read_cvat(path, classes=classes, image_root=image_root, progress=progress, **limits)
    if fmt == "labelstudio":
        from pseudolabel.data import labelstudio

        return labelstudio.read_labelstudio(path, classes=classes, image_root=image_root, progress=progress,
                                            **limits)
    raise DataError(f"unknown object label format {fmt!r}; accepted: {', '.join(map(repr, OBJECT_FORMATS))}")


# --------------------------------------------------------------------------- export


def _copy_images(items: Sequence[Item], dest: Path) -> dict[str, str]:
    """Copy ``items`` into ``dest`` keeping their file names; a name already taken there by
    other bytes (an earlier split) or by another item gets the id prefixed."""
    rel = unique_names(items, None)
    dest.mkdir(parents=True, exist_ok=True)
    for it in items:
        target = dest / rel[it.id]
        if target.exists() and sha256_file(target) != it.id:
            rel[it.id] = f"{it.id[:12]}_{Path(it.path).name}"
            target = dest / rel[it.id]
        shutil.copy2(it.path, target)
    return rel


def export_labels(
    fmt: str, out_dir: Path, items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], *,
    classes: Sequence[str], task: DetTask = "detect", split: str = "train",
) -> Path:
    """Write a training-ready dataset of ``items`` (images copied) in format ``fmt``.

    Layout per format (``<split>`` defaults to ``train``; call again with ``split="val"``
    for a validation split):

    - ``yolo``: ``images/<split>/``, ``labels/<split>/``, ``data.yaml`` (``path``, one key
      per split present, ``val`` = ``train`` until a ``val`` split exists, ``names``) and
      ``classes.txt`` (Label Studio's YOLO importer reads it); returns ``data.yaml``;
    - ``coco``: ``images/<split>/``, ``annotations/instances_<split>.json``; returns the JSON;
    - ``voc``: ``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/<split>.txt``; returns
      the ``ImageSets`` file;
    - ``labelme``: ``<split>/`` with each image and its Labelme JSON beside it; returns the folder;
    - ``cvat``: ``<split>/images/`` and ``<split>/annotations.xml`` (CVAT's export layout: zip the
      folder to import it); returns the XML;
    - ``labelstudio``: ``images/<split>/`` and ``<split>.json`` (tasks with annotations, image
      URLs ``/data/local-files/?d=images/<split>/...``: serve ``out_dir`` as the document root);
      returns the JSON.

    Image files keep their names (id-prefixed when two share one). Raises :class:`DataError`
    for an unknown ``fmt`` (listing the choices), a label not in ``classes`` or an item
    missing from ``boxes``.
    """
    if fmt not in EXPORT_FORMATS:
        raise DataError(f"unknown export format {fmt!r}; choose one of {', '.join(map(repr, EXPORT_FORMATS))}")
    check_task(task)
    if not split or "/" in split or split.startswith("."):
        raise DataError(f"split {split!r} must be a plain folder name such as 'train' or 'val'")
    names = check_classes(classes, where=f"export to {out_dir}")
    boxes = check_write(items, boxes, names)
    out_dir = Path(out_dir)

    def copied_to(img_dir: Path) -> list[Item]:
        rel = _copy_images(items, img_dir)
        return [Item(it.id, img_dir / rel[it.id], it.width, it.height) for it in items]

    if fmt == "yolo":
        img_dir = out_dir / "images" / split
        write_yolo(out_dir / "labels" / split, copied_to(img_dir), boxes, classes=names, task=task,
                   image_root=img_dir)
        splits = sorted(p.name for p in (out_dir / "images").iterdir() if p.is_dir())
        lines = [f"path: {json.dumps(str(out_dir.resolve()))}"]
        lines += [f"{s}: images/{s}" for s in splits]
        if "val" not in splits:
            lines.append(f"val: images/{'train' if 'train' in splits else splits[0]}")
        lines.append("names:")
        lines += [f"  {i}: {json.dumps(c)}" for i, c in enumerate(names)]
        path = out_dir / "data.yaml"
        atomic_write_text(path, "\n".join(lines) + "\n")
        write_yolo_names(out_dir / "classes.txt", names)
        return path
    if fmt == "coco":
        img_dir = out_dir / "images" / split
        return write_coco(out_dir / "annotations" / f"instances_{split}.json", copied_to(img_dir), boxes,
                          classes=names, image_root=img_dir)
    if fmt == "voc":
        img_dir = out_dir / "JPEGImages"
        copied = copied_to(img_dir)
        write_voc(out_dir / "Annotations", copied, boxes, classes=names, image_root=img_dir)
        path = out_dir / "ImageSets" / "Main" / f"{split}.txt"
        atomic_write_text(path, "".join(Path(it.path).stem + "\n" for it in copied))
        return path
    if fmt == "labelme":
        from pseudolabel.data.labelme import write_labelme

        folder = out_dir / split
        write_labelme(folder, copied_to(folder), boxes, classes=names, image_root=folder)
        return folder
    if fmt == "cvat":
        from pseudolabel.data.cvat import write_cvat

        img_dir = out_dir / split / "images"
        return write_cvat(out_dir / split / "annotations.xml", copied_to(img_dir), boxes, classes=names,
                          image_root=img_dir)
    from pseudolabel.data.labelstudio import write_labelstudio

    img_dir = out_dir / "images" / split
    return write_labelstudio(out_dir / f"{split}.json", copied_to(img_dir), boxes, classes=names,
                             document_root=out_dir, task=task)


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
