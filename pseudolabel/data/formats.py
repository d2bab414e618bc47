"""Reading labelled image sets for classification from the usual on-disk formats.

- ``imagefolder``: ``root/<class>/<images>`` (images may sit in sub-folders of a class folder);
- ``csv``: a UTF-8 CSV with a ``path,label`` header (extra columns are allowed and ignored);
- ``labelme``: Labelme JSON files whose image-level ``flags`` mark the class;
- ``cvat``: a CVAT for images XML whose ``<tag label>`` is the class;
- ``labelstudio``: a Label Studio JSON export whose ``choices`` are the class.

Every reader returns a :class:`LabelledSet`: items are deduplicated by content (item id =
sha256 of the bytes), unreadable images are quarantined with the reason, and the same bytes
labelled with two different classes is an error naming both places. Errors are
:class:`~pseudolabel.data.errors.DataError` (a ``ValueError``) with a one-line message.
:func:`read_labels` dispatches by format name; object formats are in
:mod:`pseudolabel.data.detformats`.

Options every reader takes: ``max_pixels`` (images with more pixels are quarantined from their
header, see :func:`~pseudolabel.data.ingest.scan_files`) and, where a list names the images
(every format but ``imagefolder``), ``on_missing`` (:data:`~pseudolabel.data.ingest.OnMissing`):
``"error"`` (default: a listed file that does not exist is a typo to fix) or ``"quarantine"``
(a set re-read every round: a file deleted since must not stop the campaign). A set with no
usable image is an error either way (a seed set and a holdout need one).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pseudolabel.data.errors import DataError
from pseudolabel.data.ingest import (
    DEFAULT_MAX_PIXELS,
    OnMissing,
    Quarantined,
    ScanResult,
    check_on_missing,
    is_image_path,
    list_image_files,
    scan_files,
)
from pseudolabel.data.objects import check_not_empty as not_empty
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
    if classes is None:
        return None
    try:
        return validate_classes(classes, where=where)
    except ValueError as e:
        raise DataError(str(e)) from None


def _conflict(first: str, first_label: str, second: str, second_label: str) -> DataError:
    return DataError(
        f"conflicting labels for identical image bytes: {first} is {first_label!r} "
        f"but {second} is {second_label!r}; give the image one label"
    )


def unknown_class(where: str, label: str, accepted: Sequence[str]) -> DataError:
    """The error for a class name the config does not list."""
    return DataError(f"{where}: unknown class {label!r}; accepted class names (config order): "
                     f"{', '.join(map(repr, accepted))}")


def assemble_labels(
    scan: ScanResult, per_path: Sequence[tuple[Path, str | None, str]], quarantined: Sequence[Quarantined],
    classes: tuple[str, ...], *, source: object,
) -> LabelledSet:
    """A :class:`LabelledSet` from a scan and, per image path, its class (``None`` = left out,
    its quarantine row is in ``quarantined``) and where the label came from. Identical bytes
    must carry one class (else :class:`DataError` naming both places); an item whose every
    copy was left out is not in the set; an empty set is an error."""
    ids = scan.id_of()
    labels: dict[str, str] = {}
    first: dict[str, str] = {}
    for path, label, where in per_path:
        item_id = ids.get(path)
        if item_id is None or label is None:
            continue
        if item_id in labels and labels[item_id] != label:
            raise _conflict(first[item_id], labels[item_id], where, label)
        labels.setdefault(item_id, label)
        first.setdefault(item_id, where)
    items = [it for it in scan.items if it.id in labels]
    out = LabelledSet(items, labels, [*scan.quarantined, *quarantined],
                      [(p, i) for p, i in scan.duplicates if i in labels], classes)
    check_not_empty(out, source=source)
    return out


def check_not_empty(ls: LabelledSet, *, source: object) -> None:
    """:class:`DataError` when a labelled set has no usable image (a seed set or a holdout
    needs one), naming the first quarantine reasons."""
    not_empty(ls.items, ls.quarantined, source=source)


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
        raise DataError(f"imagefolder root {root} {state}")
    accepted = _check_classes(classes, where=root)

    entries = sorted(root.iterdir(), key=lambda p: p.name)
    stray = [p for p in entries if p.is_file() and is_image_path(p)]
    if stray:
        raise DataError(
            f"imagefolder {root}: image {stray[0].name!r} sits directly under the root, so it "
            f"has no class; move it into {root}/<class>/ ({len(stray)} such file(s))"
        )
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if accepted is None:
        if not folders:
            raise DataError(f"imagefolder {root}: no class sub-folders found")
        accepted = tuple(p.name for p in folders)
    for folder in folders:
        if folder.name not in accepted:
            raise DataError(
                f"imagefolder {root}: folder {folder.name!r} is not a known class; "
                f"accepted class names (config order): {', '.join(map(repr, accepted))}; "
                f"class folders found: {', '.join(repr(f.name) for f in folders)}"
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
    out = LabelledSet(scan.items, labels, scan.quarantined, scan.duplicates, accepted)
    check_not_empty(out, source=f"imagefolder {root}")
    return out


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
        raise DataError(f"label CSV {csv_path} does not exist or is not a file")
    accepted = _check_classes(classes, where=csv_path)
    base = Path(image_root) if image_root is not None else csv_path.parent
    if image_root is not None and not base.is_dir():
        raise DataError(f"image_root {base} for {csv_path} is not a directory")

    rows: list[tuple[int, Path, str]] = []  # (line, resolved path, label)
    gone: list[Quarantined] = []
    raw = csv_path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{csv_path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}; the file is probably "
            "Latin-1 / Windows-1252); label CSVs must be UTF-8: re-save it as 'CSV UTF-8' or convert it with "
            "iconv -f latin1 -t utf-8"
        ) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{csv_path}:1: empty file; expected a header with columns path,label")
        header = [h.strip() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise DataError(
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
                raise DataError(f"{csv_path}:{line}: empty path")
            if not label:
                raise DataError(f"{csv_path}:{line}: empty label for {raw_path!r}")
            if accepted is not None and label not in accepted:
                raise unknown_class(f"{csv_path}:{line}", label, accepted)
            path = Path(raw_path)
            if not path.is_absolute():
                path = base / path
            if not path.is_file():
                if on_missing == "quarantine":
                    gone.append(Quarantined(path, f"image file not found (listed at {csv_path}:{line})"))
                    continue
                raise DataError(f"{csv_path}:{line}: image file {raw_path!r} not found ({path}); paths resolve "
                                f"against {'image_root' if image_root is not None else 'the CSV folder'} {base}")
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
    out = LabelledSet(scan.items, labels, [*gone, *scan.quarantined], scan.duplicates, accepted)
    check_not_empty(out, source=csv_path)
    return out


def _read_imagefolder_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    if image_root is not None:
        raise DataError(
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


def _read_labelme_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    from pseudolabel.data.labelme import read_labelme_classes

    return read_labelme_classes(path, classes=_need_classes(classes, "labelme"), image_root=image_root,
                                progress=progress, max_pixels=max_pixels, on_missing=on_missing)


def _read_cvat_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    from pseudolabel.data.cvat import read_cvat_tags

    return read_cvat_tags(path, classes=_need_classes(classes, "cvat"), image_root=image_root, progress=progress,
                          max_pixels=max_pixels, on_missing=on_missing)


def _read_labelstudio_fmt(
    path: Path, *, classes: Sequence[str] | None, image_root: Path | None, progress: bool,
    max_pixels: int | None, on_missing: OnMissing,
) -> LabelledSet:
    from pseudolabel.data.labelstudio import read_labelstudio_choices

    return read_labelstudio_choices(path, classes=_need_classes(classes, "labelstudio"), image_root=image_root,
                                    progress=progress, max_pixels=max_pixels, on_missing=on_missing)


def _need_classes(classes: Sequence[str] | None, fmt: str) -> tuple[str, ...]:
    if classes is None:
        raise DataError(f"format {fmt!r} needs the class names (classes=...) to tell labels from other flags")
    return tuple(classes)


_READERS: dict[str, Callable[..., LabelledSet]] = {
    "imagefolder": _read_imagefolder_fmt,
    "csv": _read_csv_fmt,
    "labelme": _read_labelme_fmt,
    "cvat": _read_cvat_fmt,
    "labelstudio": _read_labelstudio_fmt,
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

    ``path`` is the root folder for ``imagefolder``, the CSV file for ``csv``, the folder of
    JSON files for ``labelme``, the XML for ``cvat`` and the JSON export for ``labelstudio``;
    ``max_pixels``, ``on_missing``: see the module docstring.
    Raises :class:`DataError` for an unknown format, listing the accepted ones.
    """
    check_on_missing(on_missing)
    reader = _READERS.get(fmt)
    if reader is None:
        raise DataError(
            f"unknown label format {fmt!r}; accepted formats: {', '.join(map(repr, FORMATS))}"
        )
    return reader(Path(path), classes=classes, image_root=image_root, progress=progress,
                  max_pixels=max_pixels, on_missing=on_missing)
