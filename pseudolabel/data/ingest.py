"""Scanning folders of images: hash, validate, dedupe, quarantine.

Every candidate file is hashed (item id = sha256 of its bytes) and fully decoded once through
:func:`~pseudolabel.data.images.load_rgb`, so a file that becomes an :class:`Item` is known to
be usable by training and inference. Nothing is dropped silently:

- a file with an image suffix that cannot be decoded goes to ``quarantined`` with the reason;
- a file whose bytes equal an earlier file's collapses into that item and is listed in
  ``duplicates``;
- files whose suffix is not an image suffix are not candidates at all (a folder of images
  usually holds READMEs, label files, ``.DS_Store``...).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pseudolabel.data.images import IMAGE_SUFFIXES, ImageError, load_rgb, sha256_file
from pseudolabel.utils import atomic_write_text
from pseudolabel.types import Item, utcnow

QUARANTINE_COLUMNS = ("path", "reason", "time")


@dataclass(frozen=True)
class Quarantined:
    """A file that could not be used, and why (``reason`` does not repeat the path)."""

    path: Path
    reason: str


@dataclass
class ScanResult:
    """Outcome of a scan.

    - ``items``: usable images, in scan order, one per distinct content;
    - ``quarantined``: files that could not be used;
    - ``duplicates``: ``(path, item_id)`` for each file whose bytes equal an earlier item's.
    """

    items: list[Item] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[tuple[Path, str]] = field(default_factory=list)

    def id_of(self) -> dict[Path, str]:
        """Map every usable path (items and their duplicates) to its item id."""
        ids = {item.path: item.id for item in self.items}
        ids.update(dict(self.duplicates))
        return ids


def is_image_path(path: Path) -> bool:
    """True when ``path``'s suffix is an image suffix (case-insensitive: ``.JPG`` counts)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _reason(path: Path, err: Exception) -> str:
    # ImageError messages start with "<path>: "; the path is its own column already.
    msg = str(err)
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


def _progress(paths: Sequence[Path], *, enabled: bool, description: str) -> Iterator[Path]:
    if not enabled:
        yield from paths
        return
    # Imported here: rich is only needed when a progress bar is asked for.
    from rich.console import Console
    from rich.progress import track

    yield from track(paths, description=description, total=len(paths), console=Console(stderr=True))


def scan_files(
    paths: Iterable[Path], *, progress: bool = False, description: str = "scanning images"
) -> ScanResult:
    """Hash and validate ``paths`` in the order given (any suffix: the caller chose them).

    Item ``width``/``height`` are pixels after EXIF orientation. Unreadable, zero-byte,
    truncated, missing or non-image files are quarantined with the reason. The same path
    given twice is scanned once.
    """
    result = ScanResult()
    seen_ids: dict[str, str] = {}  # sha256 -> id of the item it became
    bad_hashes: dict[str, str] = {}  # sha256 -> reason it could not be used
    unique = list(dict.fromkeys(Path(p) for p in paths))  # order kept, repeats dropped

    for path in _progress(unique, enabled=progress, description=description):
        try:
            digest = sha256_file(path)
        except OSError as e:
            result.quarantined.append(Quarantined(path, f"cannot read file ({e.strerror or e})"))
            continue
        if digest in seen_ids:
            result.duplicates.append((path, seen_ids[digest]))
            continue
        if digest in bad_hashes:
            # Same bytes as a file that already failed: it fails the same way.
            result.quarantined.append(Quarantined(path, bad_hashes[digest]))
            continue
        try:
            with load_rgb(path) as img:
                width, height = img.size
        except ImageError as e:
            reason = _reason(path, e)
            bad_hashes[digest] = reason
            result.quarantined.append(Quarantined(path, reason))
            continue
        seen_ids[digest] = digest
        result.items.append(Item(id=digest, path=path, width=width, height=height))
    return result


def list_image_files(root: Path, *, recursive: bool = True) -> list[Path]:
    """Image-suffixed files under ``root``, sorted by relative path (deterministic).

    Raises ValueError when ``root`` is missing or not a directory.
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"image folder {root} is not a directory")
    found = root.rglob("*") if recursive else root.iterdir()
    files = [p for p in found if is_image_path(p) and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def scan_folder(root: Path, *, recursive: bool = True, progress: bool = False) -> ScanResult:
    """Scan every image-suffixed file under ``root`` (sorted order); see :func:`scan_files`.

    Files with other suffixes are ignored; an image-suffixed file that is not an image is
    quarantined. Raises ValueError when ``root`` is missing or not a directory.
    """
    files = list_image_files(root, recursive=recursive)
    return scan_files(files, progress=progress, description=f"scanning {root}")


def read_quarantine_csv(path: Path) -> list[dict[str, str]]:
    """Rows of an existing quarantine CSV (columns ``path,reason,time``); [] if absent."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = tuple(reader.fieldnames or ())
        if header and header != QUARANTINE_COLUMNS:
            raise ValueError(
                f"{path}: line 1: quarantine CSV header is {','.join(header)!r}; "
                f"expected {','.join(QUARANTINE_COLUMNS)!r}"
            )
        return [{k: row[k] or "" for k in QUARANTINE_COLUMNS} for row in reader]


def write_quarantine_csv(path: Path, quarantined: Sequence[Quarantined]) -> None:
    """Merge ``quarantined`` into the CSV at ``path`` (columns ``path,reason,time``).

    Existing rows are kept (with their original time); a new row is added only for a
    ``(path, reason)`` pair not already there; ``time`` is UTC ISO-8601. The file is written
    to a temporary file in the same folder and moved into place with ``os.replace``, so a
    reader never sees a half-written file and a crash leaves the old file intact.
    """
    path = Path(path)
    rows = read_quarantine_csv(path)
    keys = {(r["path"], r["reason"]) for r in rows}
    now = utcnow().isoformat()
    for q in quarantined:
        key = (str(q.path), q.reason)
        if key not in keys:
            keys.add(key)
            rows.append({"path": key[0], "reason": key[1], "time": now})

    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=QUARANTINE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
