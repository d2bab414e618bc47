"""Reading labelled image sets from the usual on-disk formats.

Classification formats for now:

- ``imagefolder``: ``root/<class>/<images>`` (images may sit in sub-folders of a class folder);
- ``csv``: a CSV with a ``path,label`` header (extra columns are allowed and ignored).

Every reader returns a :class:`LabelledSet`: items are deduplicated by content (item id =
sha256 of the bytes), unreadable images are quarantined with the reason, and the same bytes
labelled with two different classes is an error naming both places. :func:`read_labels`
dispatches by format name; detection formats (yolo, coco, voc) plug into ``_READERS``.

Options every reader takes: ``max_pixels`` (images with more pixels are quarantined from their
header, see :func:`~pseudolabel.data.ingest.scan_files`) and, where a list names the images,
``on_missing``: ``"error"`` (default: a listed file that does not exist is a typo to fix) or
``"quarantine"`` (a set re-read every round: a file deleted since must not stop the campaign).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, Quarantined, is_image_path, list_image_files, scan_files

OnMissing = Literal["error", "quarantine"]


def check_on_missing(on_missing: str) -> None:
    if on_missing not in ("error", "quarantine"):
        raise ValueError(f"on_missing {on_missing!r} is not one of 'error', 'quarantine'")
from pseudolabel.types import Item, validate_classes


@dataclass
class LabelledSet:
    """Items with one class label each.

    - ``items``: usable images, one per distinct content;
    - ``labels``: item id -> class name, for every item;
    - ``quarantined``: files that could not be used (not in ``labels``);
    - ``duplicates``: ``(path, item_id)`` for files whose bytes equal an earlier item's;
    - ``classes``: the class names in their canonical order (as given, or sorted).
    """

    items: list[Item]
    labels: dict[str, str]
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[tuple[Path, str]] = field(default_factory=list)
    classes: tuple[str, ...] = ()


def _check_classes(classes: Sequence[str] | None, *, where: object) -> tuple[str, ...] | None:
    """``None`` (take the classes from the data) or a validated tuple."""
    return None if classes is None else validate_classes(classes, where=where)


def _conflict(first: str, first_label: str, second: str, second_label: str) -> ValueError:
    return ValueError(
        f"conflicting labels for identical image bytes: {first} is {first_label!r} "
        f"but {second} is {second_label!r}; give the image one label"
    )


def read_imagefolder(
    root: Path, *, classes: Sequence[str] | None = None, progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> LabelledSet:
    """Read ``root/<class>/<images>``; each class folder is scanned recursively.

    ``classes``: the accepted class names (their order is kept); ``None`` means the sorted
    names of the sub-folders. Folders whose name starts with ``.`` (``.ipynb_checkpoints``,
    ``.git``) are not class folders. Raises ValueError for a missing root, a sub-folder not
    in ``classes`` (naming it and the accepted names), an image directly under ``root``
    (it has no class), or identical bytes under two classes (naming both files).
    """
    root = Path(root)
    if not root.is_dir():
        state = "is not a directory" if root.exists() else "does not exist"
        raise ValueError(f"imagefolder root {root} {state}")
    accepted = _check_classes(classes, where=root)

    entries = sorted(root.iterdir(), key=lambda p: p.name)
    stray = [p for p in entries if p.is_file() and is_image_path(p)]
    if stray:
        raise ValueError(
            f"imagefolder {root}: image {stray[0].name!r} sits directly under the root, so it "
            f"has no class; move it into {root}/<class>/ ({len(stray)} such file(s))"
        )
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if accepted is None:
        if not folders:
            raise ValueError(f"imagefolder {root}: no class sub-folders found")
        accepted = tuple(p.name for p in folders)
    for folder in folders:
        if folder.name not in accepted:
            raise ValueError(
                f"imagefolder {root}: folder {folder.name!r} is not a known class; "
                f"accepted class names: {', '.join(map(repr, accepted))}"
            )

    labelled = [(path, f.name) for f in folders for path in list_image_files(f, recursive=True)]
    scan = scan_files([p for p, _ in labelled], progress=progress, description=f"reading {root}",
                      max_pixels=max_pixels)
    ids = scan.id_of()
    labels: dict[str, str] = {}
    first_path: dict[str, Path] = {}
    for path, name in labelled:
        item_id = ids.get(path)
        if item_id is None:  # quarantined
            continue
        if item_id in labels and labels[item_id] != name:
            raise _conflict(str(first_path[item_id]), labels[item_id], str(path), name)
        labels.setdefault(item_id, name)
        first_path.setdefault(item_id, path)
    return LabelledSet(scan.items, labels, scan.quarantined, scan.duplicates, accepted)


CSV_COLUMNS = ("path", "label")


def read_csv_labels(
    csv_path: Path,
    *,
    classes: Sequence[str] | None = None,
    image_root: Path | None = None,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> LabelledSet:
    """Read a CSV whose header has ``path`` and ``label`` columns (UTF-8, BOM allowed).

    Relative paths resolve against ``image_root``, or else the CSV's own folder. Blank lines
    are skipped; surrounding whitespace in cells is stripped. ``classes=None`` means the
    sorted set of labels found. Errors are ValueErrors written ``<csv>:<line>: ...`` (1-based,
    header = line 1): missing columns, empty path or label, unknown class (listing the
    accepted names), a referenced file that does not exist, identical bytes with two labels
    (naming both lines). A file that exists but is not a usable image is quarantined, and so
    is a file that does not exist with ``on_missing="quarantine"``.
    """
    check_on_missing(on_missing)
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"label CSV {csv_path} does not exist or is not a file")
    accepted = _check_classes(classes, where=csv_path)
    base = Path(image_root) if image_root is not None else csv_path.parent
    if image_root is not None and not base.is_dir():
        raise ValueError(f"image_root {base} for {csv_path} is not a directory")

    rows: list[tuple[int, Path, str]] = []  # (line, resolved path, label)
    gone: list[Quarantined] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{csv_path}:1: empty file; expected a header with columns path,label")
        header = [h.strip() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{csv_path}:1: missing required column(s) {', '.join(missing)}; "
                f"the header must contain path,label (found: {','.join(header)})"
            )
        i_path, i_label = header.index("path"), header.index("label")
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            cells = [c.strip() for c in record] + [""] * (len(header) - len(record))
            raw_path, label = cells[i_path], cells[i_label]
            if not raw_path:
                raise ValueError(f"{csv_path}:{line}: empty path")
            if not label:
                raise ValueError(f"{csv_path}:{line}: empty label for {raw_path!r}")
            if accepted is not None and label not in accepted:
                raise ValueError(
                    f"{csv_path}:{line}: unknown class {label!r}; "
                    f"accepted class names: {', '.join(map(repr, accepted))}"
                )
            path = Path(raw_path)
            if not path.is_absolute():
                path = base / path
            if not path.is_file():
                if on_missing == "quarantine":
                    gone.append(Quarantined(path, f"image file not found (listed at {csv_path}:{line})"))
                    continue
                raise ValueError(f"{csv_path}:{line}: image file {raw_path!r} not found ({path})")
            rows.append((line, path, label))

    if accepted is None:
        accepted = tuple(sorted({label for _, _, label in rows}))
    scan = scan_files(
        [p for _, p, _ in rows], progress=progress, description=f"reading {csv_path.name}", max_pixels=max_pixels
    )
    ids = scan.id_of()
    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, path, label in rows:
        item_id = ids.get(path)
        if item_id is None:  # quarantined
            continue
        if item_id in labels and labels[item_id] != label:
            prev = first_line[item_id]
            raise _conflict(f"{csv_path}:{prev}", labels[item_id], f"{csv_path}:{line}", label)
        labels.setdefault(item_id, label)
        first_line.setdefault(item_id, line)
    return LabelledSet(scan.items, labels, [*gone, *scan.quarantined], scan.duplicates, accepted)


def _read_imagefolder_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    if image_root is not None:
        raise ValueError(
            f"format 'imagefolder' takes no image_root (images live under {path}); "
            f"got image_root={image_root}"
        )
    # on_missing does not apply: the folder listing only names files that exist.
    return read_imagefolder(path, classes=classes, progress=progress, max_pixels=max_pixels)


def _read_csv_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    return read_csv_labels(path, classes=classes, image_root=image_root, progress=progress,
                           max_pixels=max_pixels, on_missing=on_missing)


_READERS: dict[str, Callable[..., LabelledSet]] = {
    "imagefolder": _read_imagefolder_fmt,
    "csv": _read_csv_fmt,
}
FORMATS: tuple[str, ...] = tuple(_READERS)


def read_labels(
    fmt: str,
    path: Path,
    *,
    classes: Sequence[str] | None = None,
    image_root: Path | None = None,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_missing: OnMissing = "error",
) -> LabelledSet:
    """Read a labelled set in format ``fmt`` (one of :data:`FORMATS`) from ``path``.

    ``path`` is the root folder for ``imagefolder`` and the CSV file for ``csv``;
    ``max_pixels``, ``on_missing``: see the module docstring.
    Raises ValueError for an unknown format, listing the accepted ones.
    """
    check_on_missing(on_missing)
    reader = _READERS.get(fmt)
    if reader is None:
        raise ValueError(
            f"unknown label format {fmt!r}; accepted formats: {', '.join(map(repr, FORMATS))}"
        )
    return reader(Path(path), classes=classes, image_root=image_root, progress=progress,
                  max_pixels=max_pixels, on_missing=on_missing)
