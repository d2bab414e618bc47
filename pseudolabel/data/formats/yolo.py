"""YOLO txt labels (Ultralytics' layout) and the names files that give class ids their names.

One ``.txt`` per image, one object per line, coordinates **normalised** to 0..1 by the image
width/height: ``cls cx cy w h`` (detection) or ``cls x1 y1 x2 y2 ...`` (polygon,
segmentation); ``cls`` is a 0-based index into the class names. When a names file sits next
to the labels (``data.yaml`` / ``dataset.yaml`` ``names``, ``classes.txt``, ``obj.names``; or
the one ``names=`` gives), ids are mapped **by name** to the config's classes; without one,
ids are taken in the config's order. An image **without** a label file is an image with no
objects (Ultralytics' convention). Each value as written must lie in −0.01…1.01
(Ultralytics' ``verify_image_label``); corners are then clipped (the tolerance rules of
:mod:`pseudolabel.data.formats.objects`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.formats.objects import (
    DegenerateBox,
    DetSet,
    DetTask,
    Reading,
    assemble,
    check_classes,
    check_task,
    check_write,
    fmt_num,
    label_index,
    make_box,
    pairs,
    unique_names,
)
from pseudolabel.data.geometry import polygon_bounds
from pseudolabel.data.ingest import (
    DEFAULT_MAX_PIXELS,
    OnMissing,
    check_on_missing,
    list_image_files,
    reason_of,
    scan_files,
)
from pseudolabel.types import Box, Item
from pseudolabel.utils import atomic_write_text

NORM_RANGE = (-0.01, 1.01)
"""Accepted range of every normalised YOLO value as written (Ultralytics' verify_image_label)."""

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
    return make_box(*polygon_bounds(pts), label, width=width, height=height, where=where, polygon=pts, reading=reading,
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
        cls = label_index(b, index, where=where)
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

