"""Objects on images: what every detection / segmentation format reader shares.

Our representation, per image: ``tuple[Box, ...]`` with **pixel** ``xyxy`` corners of the
original image (after EXIF orientation), a class name, optionally a **pixel** polygon
``((x, y), ...)`` and the ground-truth flags ``crowd`` / ``difficult``. Readers return a
:class:`DetSet`.

Tolerance (the same for every format, stated once here; see the README "Label formats"):

- a coordinate may lie outside the image by at most :func:`pixel_tolerance` (1 % of the image
  side, at least :data:`PIXEL_TOL` pixel) — normalised YOLO values by 0.01, the range
  Ultralytics' ``verify_image_label`` accepts (−0.01…1.01); such coordinates are clipped to
  the image and counted (``DetSet.clipped``, a note);
- a box with zero width or height after clipping is skipped: a quarantine row names the file
  and line (or object), the image keeps its other objects;
- anything else wrong with one image's labels (a malformed line, a coordinate farther out, a
  size that disagrees with the file, an unsupported shape) quarantines that image with the
  reason: the other images are read;
- a class the config does not list, a names file that disagrees with the config, conflicting
  labels for identical bytes: :class:`~pseudolabel.data.errors.DataError`;
- a file the labels name that does not exist (an image, or a YOLO label file's image): a
  :class:`~pseudolabel.data.errors.DataError` on a set's first read (``on_missing="error"``:
  a typo to fix), a quarantine row on a re-read (``on_missing="quarantine"``: deleted since);
- an image of more than ``max_pixels`` pixels: quarantined from its header
  (:func:`~pseudolabel.data.ingest.scan_files`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pseudolabel.data.errors import DataError, LabelProblem
from pseudolabel.data.geometry import polygon_area
from pseudolabel.data.ingest import OnMissing, Quarantined, ScanResult
from pseudolabel.types import Box, Item, validate_classes

PIXEL_TOL = 1.0
"""Pixels a coordinate may always lie outside the image (then clipped)."""
REL_TOL = 0.01
"""Fraction of the image side a coordinate may lie outside it (Ultralytics: −0.01…1.01)."""
NOISE = 1e-6
"""Fraction of the image side below which a clip is float noise (not counted as clipped)."""

DetTask = Literal["detect", "segment"]
Multipart = Literal["quarantine", "largest"]
MULTIPART: tuple[str, ...] = ("quarantine", "largest")

Polygon = tuple[tuple[float, float], ...]


class DegenerateBox(LabelProblem):
    """A box with zero width or height after clipping: the object is skipped, the image kept."""


@dataclass
class DetSet:
    """Images with their objects.

    - ``items``: usable images, one per distinct content (id = sha256 of the bytes);
    - ``boxes``: item id -> pixel boxes, for every item (``()`` = no objects);
    - ``quarantined``: files that could not be used (images that do not decode, label files
      whose image was left out) and objects that were skipped (zero area); each row says which;
    - ``classes``: class names in index order;
    - ``duplicates``: ``(path, item_id)`` for files whose bytes equal an earlier item's;
    - ``clipped``: boxes clipped to their image (within the tolerance);
    - ``notes``: what was accepted with a change, one line each (clipping, class ids mapped
      by name), for the user to see.
    """

    items: list[Item]
    boxes: dict[str, tuple[Box, ...]]
    quarantined: list[Quarantined] = field(default_factory=list)
    classes: tuple[str, ...] = ()
    duplicates: list[tuple[Path, str]] = field(default_factory=list)
    clipped: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Reading:
    """What a data-set reader collects besides the boxes (one per read)."""

    quarantined: list[Quarantined] = field(default_factory=list)
    clipped: int = 0
    notes: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)  # label -> first place it was seen

    def skip_object(self, path: Path, reason: str) -> None:
        """Quarantine one object of the file at ``path`` (its image keeps its other objects)."""
        self.quarantined.append(Quarantined(Path(path), f"{reason}; object skipped, the image keeps its other objects"))

    def drop_image(self, path: Path, reason: str, *, image: Path | None = None) -> None:
        """Quarantine a whole image (``image``, named in the file at ``path``) for ``reason``."""
        what = f"image {image} left out" if image is not None and Path(image) != Path(path) else "image left out"
        self.quarantined.append(Quarantined(Path(path), f"{reason}; {what}"))

    def missing(self, path: Path, reason: str, *, on_missing: OnMissing, error: str) -> None:
        """A file a list names that does not exist: :class:`DataError` ``error`` (one line,
        naming the file) with ``on_missing="error"``, else a quarantine row for ``path``."""
        if on_missing == "error":
            raise DataError(error)
        self.quarantined.append(Quarantined(Path(path), reason))

    def check_label(self, label: str, classes: Sequence[str] | None, *, where: str) -> None:
        """Remember ``label`` when it is not in ``classes`` (reported by :meth:`raise_unknown`)."""
        if classes is not None and label not in classes:
            self.unknown.setdefault(label, where)

    def raise_unknown(self, classes: Sequence[str] | None, *, source: object, found: Iterable[str] = ()) -> None:
        """One :class:`DataError` listing every label not in ``classes`` with where it first
        appears, the config's classes and the names found in the files."""
        if not self.unknown or classes is None:
            return
        first = "; ".join(f"{name!r} (first at {where})" for name, where in sorted(self.unknown.items()))
        seen = sorted(set(found) | set(self.unknown))
        raise DataError(
            f"{source}: class name(s) not in the config's classes: {first}. Config classes (in order): "
            f"{list(classes)!r}; names in the files: {seen!r}. Add them to 'classes' or fix the labels"
        )

    def note_clipped(self, source: object) -> None:
        """Add a note that boxes of ``source`` were clipped to the image (when any were)."""
        if self.clipped:
            self.notes.append(
                f"{source}: {self.clipped} box(es) reached outside the image within the tolerance "
                f"(1% of the image side, at least {PIXEL_TOL:g} px; YOLO -0.01..1.01) and were clipped to it"
            )


# --------------------------------------------------------------------------- numbers, files


def fmt_num(v: float) -> str:
    """A coordinate as written to a file: 12 significant digits (exact to ~1e-8 px on a
    10,000 px image, still readable)."""
    return format(float(v), ".12g")


def load_json(path: Path, *, what: str) -> Any:
    """The parsed JSON file at ``path`` (UTF-8, a BOM allowed). ``what`` names the file in the
    :class:`DataError` raised when it is missing, a folder, not UTF-8 or not valid JSON (with
    the line)."""
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


def pixel_tolerance(side: float) -> float:
    """Pixels a coordinate may lie outside an image side of ``side`` pixels (then clipped)."""
    return max(PIXEL_TOL, REL_TOL * float(side))


def clip(v: float, hi: float, *, tol: float, what: str, where: str, reading: Reading | None = None) -> float:
    """``v`` clipped to ``0..hi``; :class:`LabelProblem` when it lies farther out than ``tol``
    (or is not finite). The message shows the exact value."""
    if not math.isfinite(v):
        raise LabelProblem(f"{where}: {what} = {v!r} is not a finite number")
    if v < -tol or v > hi + tol:
        raise LabelProblem(
            f"{where}: {what} = {v!r} lies outside the image (accepted: {-tol:g}..{hi + tol:g}, "
            f"i.e. 0..{hi:g} with tolerance {tol:g}, then clipped)"
        )
    return min(max(v, 0.0), hi)


def make_box(
    x1: float, y1: float, x2: float, y2: float, label: str, *, width: int, height: int, where: str,
    polygon: Sequence[tuple[float, float]] | None = None, crowd: bool = False, difficult: bool = False,
    reading: Reading | None = None, tol_x: float | None = None, tol_y: float | None = None,
) -> Box:
    """Validate pixel corners (and polygon) against a ``width`` x ``height`` image, clip, build.

    Raises :class:`LabelProblem` for a coordinate farther out than the tolerance
    (:func:`pixel_tolerance` of the side unless ``tol_x`` / ``tol_y`` are given), corners in the
    wrong order (x2 < x1) or a polygon of fewer than 3 points; :class:`DegenerateBox` for zero
    width or height after clipping. ``reading`` counts boxes that were clipped.
    """
    tx = pixel_tolerance(width) if tol_x is None else tol_x
    ty = pixel_tolerance(height) if tol_y is None else tol_y
    raw = (x1, y1, x2, y2)
    if all(math.isfinite(v) for v in raw) and (x2 < x1 or y2 < y1):
        raise LabelProblem(f"{where}: corners x1={x1!r} y1={y1!r} x2={x2!r} y2={y2!r} are not ordered "
                           "(expected x1 <= x2 and y1 <= y2)")
    cx1 = clip(x1, width, tol=tx, what="x1", where=where)
    cx2 = clip(x2, width, tol=tx, what="x2", where=where)
    cy1 = clip(y1, height, tol=ty, what="y1", where=where)
    cy2 = clip(y2, height, tol=ty, what="y2", where=where)
    moved = max(abs(cx1 - x1) / width, abs(cx2 - x2) / width, abs(cy1 - y1) / height, abs(cy2 - y2) / height)
    poly: Polygon | None = None
    if polygon is not None:
        if len(polygon) < 3:
            raise LabelProblem(f"{where}: polygon has {len(polygon)} point(s); at least 3 are needed")
        pts = []
        for i, (px, py) in enumerate(polygon):
            qx = clip(px, width, tol=tx, what=f"polygon x[{i}]", where=where)
            qy = clip(py, height, tol=ty, what=f"polygon y[{i}]", where=where)
            moved = max(moved, abs(qx - px) / width, abs(qy - py) / height)
            pts.append((qx, qy))
        poly = tuple(pts)
    # Float noise (1.005 - 0.005 != 1.0) must not leave a 4e-15 px box behind.
    if not (cx2 - cx1 > NOISE * width and cy2 - cy1 > NOISE * height):
        raise DegenerateBox(
            f"{where}: zero-area box x1={x1!r} y1={y1!r} x2={x2!r} y2={y2!r} "
            f"({cx2 - cx1:g} x {cy2 - cy1:g} px after clipping to the {width}x{height} image)"
        )
    if reading is not None and moved > NOISE:
        reading.clipped += 1
    return Box(cx1, cy1, cx2, cy2, label, polygon=poly, crowd=crowd, difficult=difficult)


def pairs(flat: Sequence[float], *, where: str) -> list[tuple[float, float]]:
    """``[x1, y1, x2, y2, ...]`` -> ``[(x1, y1), ...]``; :class:`LabelProblem` for an odd count
    or fewer than 3 points."""
    if len(flat) % 2:
        raise LabelProblem(f"{where}: polygon has an odd number of coordinates ({len(flat)}); expected x y pairs")
    if len(flat) < 6:
        raise LabelProblem(f"{where}: polygon has {len(flat) // 2} point(s); at least 3 (6 numbers) are needed")
    return [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]


def one_polygon(parts: Sequence[Sequence[tuple[float, float]]], *, multipart: str, where: str
                ) -> list[tuple[float, float]]:
    """The polygon a :class:`Box` keeps of an object drawn in several ``parts``: the only one,
    or the largest by area with ``multipart="largest"``; :class:`LabelProblem` otherwise."""
    if multipart not in MULTIPART:
        raise DataError(f"multipart {multipart!r} is not one of {', '.join(map(repr, MULTIPART))}")
    if len(parts) > 1 and multipart != "largest":
        raise LabelProblem(f"{where}: the object has {len(parts)} polygon parts and a box holds one; set the "
                           "source's multipart: largest to keep the largest part (its box still encloses all)")
    areas = [polygon_area(list(part)) for part in parts]
    return list(parts[areas.index(max(areas))])


def check_task(task: str) -> None:
    """Raise :class:`DataError` unless ``task`` is ``"detect"`` or ``"segment"``."""
    if task not in ("detect", "segment"):
        raise DataError(f"task {task!r} is not one of 'detect', 'segment'")


def check_classes(classes: Sequence[str], *, where: object) -> tuple[str, ...]:
    """:func:`~pseudolabel.types.validate_classes` raising :class:`DataError`."""
    try:
        return validate_classes(classes, where=where)
    except DataError:
        raise
    except ValueError as e:
        raise DataError(str(e)) from None


def training_boxes(boxes: Sequence[Box], *, difficult: bool = False) -> tuple[Box, ...]:
    """The boxes a model trains on: crowd regions left out (as Ultralytics' COCO converter
    does), ``difficult`` objects left out unless ``difficult=True`` (then as ordinary boxes)."""
    out = []
    for b in boxes:
        if b.crowd or (b.difficult and not difficult):
            continue
        out.append(replace(b, difficult=False) if b.difficult else b)
    return tuple(out)


# --------------------------------------------------------------------------- assembling a set


def assemble(
    scan: ScanResult, per_path: Sequence[tuple[Path, tuple[Box, ...] | None, str]], reading: Reading,
    classes: tuple[str, ...], *, source: object,
) -> DetSet:
    """A :class:`DetSet` from a scan and, per image path, its boxes (``None`` = the image was
    left out; its quarantine row is in ``reading``) and where they came from.

    Identical bytes must carry identical labels (else :class:`DataError` naming both places);
    an item whose every copy was left out is not in the set."""
    ids = scan.id_of()
    out: dict[str, tuple[Box, ...]] = {}
    first: dict[str, str] = {}
    for path, bxs, where in per_path:
        item_id = ids.get(path)
        if item_id is None or bxs is None:  # image quarantined, or its labels left out
            continue
        if item_id in out and out[item_id] != bxs:
            raise DataError(
                f"conflicting labels for identical image bytes: {first[item_id]} and {where} describe the "
                "same image differently; keep one of the two files"
            )
        out.setdefault(item_id, bxs)
        first.setdefault(item_id, where)
    reading.note_clipped(source)
    items = [it for it in scan.items if it.id in out]
    dups = [(p, i) for p, i in scan.duplicates if i in out]
    return DetSet(items, out, [*scan.quarantined, *reading.quarantined], classes, dups, reading.clipped,
                  list(reading.notes))


def check_not_empty(ds_items: Sequence[Item], quarantined: Sequence[Quarantined], *, source: object) -> None:
    """:class:`DataError` when a labelled set has no usable image, with the first reasons."""
    if ds_items:
        return
    why = "; ".join(f"{q.path}: {q.reason}" for q in quarantined[:3])
    more = f" (and {len(quarantined) - 3} more)" if len(quarantined) > 3 else ""
    raise DataError(f"{source}: no usable labelled image" + (f"; quarantined: {why}{more}" if why else
                    " (no image files found)") + "; a seed set and a holdout need at least one image")


def size_check(declared: tuple[object, object], item: Item, *, where: str) -> None:
    """:class:`LabelProblem` when a file's declared ``(width, height)`` differs from the image
    (``None`` or ``0x0``: nothing declared)."""
    w, h = declared
    if w in (None, "", 0, "0") and h in (None, "", 0, "0"):
        return
    try:
        dw, dh = float(w), float(h)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LabelProblem(f"{where}: declared size {w!r}x{h!r} is not a pair of numbers") from None
    if (dw, dh) != (item.width, item.height):
        raise LabelProblem(f"{where}: declares {w}x{h} but the image {item.path.name} is {item.width}x{item.height} "
                           "pixels (after EXIF orientation); the coordinates cannot be trusted")


# --------------------------------------------------------------------------- writing


def check_write(
    items: Sequence[Item], boxes: Mapping[str, Sequence[Box]], classes: Sequence[str] | None
) -> dict[str, tuple[Box, ...]]:
    """Refuse to write what the readers would refuse to read: every item needs an entry in
    ``boxes``; every box a known class, corners inside the image (within the tolerance) with
    positive size, and a polygon (if any) of >= 3 points inside the image.

    Returns the boxes clipped to their image (score and flags kept), which is what gets
    written. Raises :class:`DataError` naming the image and box."""
    missing = [it.path for it in items if it.id not in boxes]
    if missing:
        raise DataError(
            f"{len(missing)} item(s) have no entry in boxes, e.g. {str(missing[0])!r}; "
            "give () for an image with no objects"
        )
    out: dict[str, tuple[Box, ...]] = {}
    for it in items:
        clipped = []
        for k, b in enumerate(boxes[it.id]):
            where = f"{it.path}: box {k}"
            if classes is not None and b.label not in classes:
                raise DataError(f"{where}: class {b.label!r} is not one of the accepted classes {list(classes)!r}")
            try:
                c = make_box(b.x1, b.y1, b.x2, b.y2, b.label, width=it.width, height=it.height, where=where,
                             polygon=b.polygon, crowd=b.crowd, difficult=b.difficult)
            except LabelProblem as e:
                raise DataError(str(e)) from None
            clipped.append(replace(c, score=b.score))
        out[it.id] = tuple(clipped)
    return out


def label_index(box: Box, index: Mapping[str, int], *, where: str) -> int:
    """The id ``index`` gives ``box``'s class; :class:`DataError` naming ``where`` and the
    accepted classes when it has none."""
    if box.label not in index:
        raise DataError(f"{where}: class {box.label!r} is not one of the accepted classes {list(index)!r}")
    return index[box.label]


def unique_names(items: Sequence[Item], root: Path | None) -> dict[str, str]:
    """item id -> relative file name: relative to ``root`` when given, else the file name
    (prefixed with the id when two items share a stem). Two images that would share one
    label file (same path without suffix) raise :class:`DataError`."""
    if root is not None:
        out: dict[str, str] = {}
        stems: dict[str, Path] = {}
        for it in items:
            try:
                out[it.id] = Path(it.path).resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                raise DataError(f"image {str(it.path)!r} is not under image_root {str(root)!r}") from None
            stem = Path(out[it.id]).with_suffix("").as_posix()
            if stem in stems and stems[stem] != Path(it.path):
                raise DataError(f"images {str(stems[stem])!r} and {str(it.path)!r} would share "
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
