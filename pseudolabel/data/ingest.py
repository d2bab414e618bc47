"""Scanning folders of images: hash, validate, dedupe, quarantine.

Every candidate file is hashed (item id = sha256 of its bytes) and fully decoded once through
:func:`~pseudolabel.data.images.load_rgb`, so a file that becomes an :class:`Item` is known to
be usable by training and inference. Nothing is dropped silently:

- a file with an image suffix that cannot be decoded goes to ``quarantined`` with the reason;
- a file whose bytes equal an earlier file's collapses into that item and is listed in
  ``duplicates``;
- files whose suffix is not an image suffix are not candidates at all (a folder of images
  usually holds READMEs, label files, ``.DS_Store``...).

Skipping known files: a 10^6-image pool must not be re-hashed every round. Pass ``known``
(``path -> (size, mtime_ns, item_id, width, height)``, e.g. ``Ledger.known_files()``): a file
whose size and modification time (nanoseconds) match its record is neither opened nor hashed;
its :class:`Item` is rebuilt from the record. Any change of size or mtime (a rewrite, a
``touch``) means a full re-read. ``ScanResult.files`` holds the record of every usable path
of this scan, to store back (``Ledger.remember_files(result.file_rows())``). Like ``make`` and
``git``, this trusts mtimes: a same-size rewrite within one mtime tick goes unnoticed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pseudolabel.data.errors import DataError
from pseudolabel.data.images import IMAGE_SUFFIXES, ImageError, load_rgb, sha256_file
from pseudolabel.utils import atomic_write_text
from pseudolabel.types import Item, utcnow

QUARANTINE_COLUMNS = ("path", "reason", "time")

FileRecord = tuple[int, int, str, int, int]
"""What is remembered of a scanned file: ``(size in bytes, mtime_ns, item_id, width px, height px)``."""


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
    - ``duplicates``: ``(path, item_id)`` for each file whose bytes equal an earlier item's;
    - ``files``: ``str(path) -> FileRecord`` for every usable path (items and duplicates),
      as stat-ed just before it was read (quarantined files are not recorded: they are
      retried next time);
    - ``reused``: how many paths were taken from ``known`` without opening them.
    """

    items: list[Item] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[tuple[Path, str]] = field(default_factory=list)
    files: dict[str, FileRecord] = field(default_factory=dict)
    reused: int = 0

    def file_rows(self) -> list[tuple[str, int, int, str, int, int]]:
        """``(path, size, mtime_ns, item_id, width, height)`` rows for ``Ledger.remember_files``."""
        return [(path, *rec) for path, rec in self.files.items()]

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


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _check_known(known: Mapping[str, FileRecord]) -> None:
    for key, rec in known.items():
        if not (isinstance(rec, tuple) and len(rec) == 5 and isinstance(rec[2], str)):
            raise ValueError(
                f"known[{key!r}] = {rec!r}: expected (size, mtime_ns, item_id, width, height)"
            )
        break  # one row shows the shape; checking 10^6 rows would cost what the skip saves


def scan_files(
    paths: Iterable[Path],
    *,
    progress: bool = False,
    description: str = "scanning images",
    known: Mapping[str, FileRecord] | None = None,
) -> ScanResult:
    """Hash and validate ``paths`` in the order given (any suffix: the caller chose them).

    Item ``width``/``height`` are pixels after EXIF orientation. Unreadable, zero-byte,
    truncated, missing or non-image files are quarantined with the reason. The same path
    given twice is scanned once. ``known`` (``str(path) -> (size, mtime_ns, item_id, width,
    height)``): files whose size and mtime match are not opened (see the module docstring).
    """
    result = ScanResult()
    seen_ids: dict[str, str] = {}  # sha256 -> id of the item it became
    sizes: dict[str, tuple[int, int]] = {}  # item id -> (width, height)
    bad_hashes: dict[str, str] = {}  # sha256 -> reason it could not be used
    unique = list(dict.fromkeys(Path(p) for p in paths))  # order kept, repeats dropped
    if known:
        _check_known(known)

    for path in _progress(unique, enabled=progress, description=description):
        key = str(path)
        # Stat before reading: a file changed after this point has a newer mtime next time.
        stat = _stat(path)
        rec = known.get(key) if known else None
        if stat is not None and rec is not None and (rec[0], rec[1]) == stat:
            digest, width, height = rec[2], int(rec[3]), int(rec[4])
            result.reused += 1
            result.files[key] = (stat[0], stat[1], digest, width, height)
            if digest in seen_ids:
                result.duplicates.append((path, seen_ids[digest]))
            else:
                seen_ids[digest] = digest
                sizes[digest] = (width, height)
                result.items.append(Item(id=digest, path=path, width=width, height=height))
            continue
        try:
            digest = sha256_file(path)
        except OSError as e:
            result.quarantined.append(Quarantined(path, f"cannot read file ({e.strerror or e})"))
            continue
        if digest in seen_ids:
            result.duplicates.append((path, seen_ids[digest]))
            if stat is not None:
                result.files[key] = (stat[0], stat[1], digest, *sizes[digest])
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
        sizes[digest] = (width, height)
        if stat is not None:
            result.files[key] = (stat[0], stat[1], digest, width, height)
        result.items.append(Item(id=digest, path=path, width=width, height=height))
    return result


def list_image_files(root: Path, *, recursive: bool = True) -> list[Path]:
    """Image-suffixed files under ``root``, sorted by relative path (deterministic).

    Raises :class:`~pseudolabel.data.errors.DataError` (a ValueError) when ``root`` is missing
    or not a directory.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    found = root.rglob("*") if recursive else root.iterdir()
    files = [p for p in found if is_image_path(p) and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def scan_folder(
    root: Path,
    *,
    recursive: bool = True,
    progress: bool = False,
    known: Mapping[str, FileRecord] | None = None,
) -> ScanResult:
    """Scan every image-suffixed file under ``root`` (sorted order); see :func:`scan_files`.

    Files with other suffixes are ignored; an image-suffixed file that is not an image is
    quarantined. With ``known`` (e.g. ``Ledger.known_files()``), unchanged files (same path,
    size and mtime_ns) are not opened; ``result.reused`` counts them. A known path that is no
    longer on disk simply does not appear in the result. Raises ValueError when ``root`` is
    missing or not a directory.
    """
    files = list_image_files(root, recursive=recursive)
    return scan_files(files, progress=progress, description=f"scanning {root}", known=known)


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
