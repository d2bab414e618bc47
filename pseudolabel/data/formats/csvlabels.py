"""Classification from a CSV: UTF-8, a ``path,label`` header (extra columns are allowed and
ignored), one image per row."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from pseudolabel.data.errors import DataError
from pseudolabel.data.formats.labelled import (
    LabelledSet,
    check_not_empty,
    conflicting_labels,
    optional_classes,
    unknown_class,
)
from pseudolabel.data.ingest import DEFAULT_MAX_PIXELS, OnMissing, Quarantined, check_on_missing, scan_files


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
    accepted = optional_classes(classes, where=csv_path)
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
            raise conflicting_labels(f"{csv_path}:{prev}", labels[item_id], f"{csv_path}:{line}", label)
        labels.setdefault(item_id, label)
        first_line.setdefault(item_id, line)
    out = LabelledSet(scan.items, labels, [*gone, *scan.quarantined], scan.duplicates, accepted)
    check_not_empty(out, source=csv_path)
    return out
