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

Bounded memory: an image with more than ``max_pixels`` pixels (default
:data:`DEFAULT_MAX_PIXELS`) is quarantined from its header, before anything is decoded.

Files that change under us: :func:`reconcile` tells, after a scan, which items the ledger knows
are no longer on disk (every file that held their bytes was deleted or now holds other bytes:
new bytes are a new item) and which moved; :func:`recheck` tells, just before items are used
(pushed for review), whether their files are still the ones scanned.

Why this module is over 400 lines: scanning, :func:`reconcile` / :func:`recheck` and the
quarantine CSV apply one set of rules to a file (its stat record, its hash, the reason it
cannot be used); kept together so that a scan and a re-check can never judge a file
differently.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from pseudolabel.data.errors import DataError
from pseudolabel.data.images import IMAGE_SUFFIXES, ImageError, load_rgb, rgb_from_bytes, sha256_file
from pseudolabel.utils import atomic_write_text
from pseudolabel.types import Item, utcnow

QUARANTINE_COLUMNS = ("path", "reason", "time")

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image accepted, in pixels (width x height). 40 M pixels is an 8000 x 5000 frame (a
40-megapixel camera); decoded to 8-bit RGB it takes 120 MB, so a decode worker stays near
that. Pillow's own guard is far above it (a warning at 89.5 M pixels, an error only at
179 M: a 13000 x 13000 PNG, 169 M pixels, decodes to 0.5 GB of RGB without complaint)."""

PILLOW_MAX_PIXELS = 2 * 89_478_485
"""Pillow refuses to open images beyond this (``DecompressionBombError``): the most
``max_pixels`` can usefully be."""

DELETED = "file deleted since it was scanned"
CHANGED = "file changed since it was scanned"

OnMissing = Literal["error", "quarantine"]
"""What a reader does with a file its list names (a CSV row, a COCO image, a VOC / Labelme /
CVAT / Label Studio image, the image of a YOLO label file) that does not exist: ``"error"``
(a set read for the first time: a typo to fix) or ``"quarantine"`` (a set re-read every round:
a file deleted since must not stop the campaign)."""


def check_on_missing(on_missing: str) -> None:
    """:class:`~pseudolabel.data.errors.DataError` unless ``on_missing`` is an :data:`OnMissing`."""
    if on_missing not in ("error", "quarantine"):
        raise DataError(f"on_missing {on_missing!r} is not one of 'error', 'quarantine'")

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


def reason_of(message: str, path: Path | str) -> str:
    """A quarantine reason from an error message that starts with ``path`` (the path is its
    own column): ``"<path>: bad"`` -> ``"bad"``, ``"<path>:12: bad"`` -> ``"line 12: bad"``,
    ``"<path>: object 2: bad"`` -> ``"object 2: bad"``; any other message as it is."""
    prefix = str(path)
    if not message.startswith(prefix):
        return message
    rest = message[len(prefix):]
    if rest.startswith(":"):
        head, sep, tail = rest[1:].partition(": ")
        if sep and head.isdigit():
            return f"line {head}: {tail}"
        return rest[1:].lstrip()
    return rest.lstrip()


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


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or not 0 < max_pixels <= PILLOW_MAX_PIXELS):
        raise ValueError(f"max_pixels must be an int in [1, {PILLOW_MAX_PIXELS:,}] (Pillow opens nothing larger) "
                         f"or None; got {max_pixels!r}")


def _too_many_pixels(width: int, height: int, max_pixels: int | None) -> str | None:
    if max_pixels is None or width * height <= max_pixels:
        return None
    return (f"image too large: {width}x{height} = {width * height:,} pixels > max_pixels {max_pixels:,} "
            "(raise data.max_pixels to accept it)")


def _header_too_big(src: Path | bytes, max_pixels: int | None) -> str | None:
    """The quarantine reason when the header of ``src`` (a file, or its bytes) declares more
    than ``max_pixels`` pixels.

    Pillow's ``open`` is lazy: it parses the header (the size) and decodes nothing. A file it
    cannot identify is left to the full decode, which words the error."""
    if max_pixels is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
                width, height = img.size
    except Image.DecompressionBombError as e:
        return f"image too large: {e}"
    except (OSError, SyntaxError, ValueError):  # not an image / unreadable: the full decode says why
        return None
    return _too_many_pixels(width, height, max_pixels)


def usable_size(src: Path | bytes, *, name: str | Path | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` in pixels (after EXIF orientation) of the image in ``src`` (a file,
    or the bytes of one read from elsewhere), once it is known to be usable: its header
    declares at most ``max_pixels`` pixels (checked before decoding; ``None``: only Pillow's own
    limit) and it decodes fully (:func:`~pseudolabel.data.images.load_rgb` /
    :func:`~pseudolabel.data.images.rgb_from_bytes`, the decoder training and inference use).

    Raises :class:`~pseudolabel.data.images.ImageError` starting with ``name`` (default: the
    path) otherwise; :func:`reason_of` turns it into the quarantine reason."""
    label = name if name is not None else src if isinstance(src, Path) else "<bytes>"
    too_big = _header_too_big(src, max_pixels)
    if too_big is not None:
        raise ImageError(f"{label}: {too_big}")
    if isinstance(src, bytes):
        with rgb_from_bytes(src, name=label) as img:
            return img.size
    with load_rgb(src) as img:
        return img.size


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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ScanResult:
    """Hash and validate ``paths`` in the order given (any suffix: the caller chose them).

    Item ``width``/``height`` are pixels after EXIF orientation. Unreadable, zero-byte,
    truncated, missing or non-image files are quarantined with the reason, and so are images
    of more than ``max_pixels`` pixels (checked from the header, before decoding; None: only
    Pillow's own limit). The same path given twice is scanned once. ``known``
    (``str(path) -> (size, mtime_ns, item_id, width, height)``): files whose size and mtime
    match are not opened (see the module docstring); their recorded size is checked against
    ``max_pixels`` too.
    """
    _check_max_pixels(max_pixels)
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
            too_big = _too_many_pixels(width, height, max_pixels)
            if too_big is not None:
                result.quarantined.append(Quarantined(path, too_big))
                continue
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
            width, height = usable_size(path, max_pixels=max_pixels)
        except ImageError as e:
            reason = reason_of(str(e), path)
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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ScanResult:
    """Scan every image-suffixed file under ``root`` (sorted order); see :func:`scan_files`.

    Files with other suffixes are ignored; an image-suffixed file that is not an image is
    quarantined. With ``known`` (e.g. ``Ledger.known_files()``), unchanged files (same path,
    size and mtime_ns) are not opened; ``result.reused`` counts them. A known path that is no
    longer on disk simply does not appear in the result. Raises ValueError when ``root`` is
    missing or not a directory.
    """
    files = list_image_files(root, recursive=recursive)
    return scan_files(files, progress=progress, description=f"scanning {root}", known=known, max_pixels=max_pixels)


@dataclass
class Presence:
    """What :func:`reconcile` found about the items a ledger holds as present.

    - ``gone``: item id -> reason, for items whose every known file was deleted or changed;
    - ``quarantined``: one row per known file of each gone item, with its own reason;
    - ``moved``: item id -> a path found holding its bytes, for present items whose recorded
      path does not (renamed, or one copy of a duplicate deleted).
    """

    gone: dict[str, str] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)
    moved: dict[str, Path] = field(default_factory=dict)


def reconcile(
    items: Iterable[Item],
    found: Mapping[Path, str],
    *,
    other_paths: Mapping[str, Sequence[Path]] | None = None,
    quarantined: Mapping[Path, str] | None = None,
) -> Presence:
    """Which of ``items`` (present in a ledger, ``item.path`` = its recorded path) are still on
    disk after a scan.

    ``found``: every usable path of the scan -> its item id (``ScanResult.id_of()`` of every
    set read); ``other_paths``: item id -> further files recorded as holding it (the pool's
    file records before the scan); ``quarantined``: path -> reason, for the files the scan
    could not use. An item found somewhere is present (``moved`` when its recorded path is
    not among the paths it was found at). An item not found: each of its known files is
    judged -- missing: deleted; found with other bytes: changed, the new bytes are that item;
    quarantined by the scan: no longer usable, for the scan's reason; outside the scanned
    folders: re-hashed (only then), the same bytes mean still present. An item none of whose
    files still holds its bytes is gone; nothing is deleted.
    """
    others = other_paths or {}
    bad = quarantined or {}
    at: dict[str, Path] = {}
    for path, item_id in found.items():
        at.setdefault(item_id, path)
    found_paths = set(found)
    out = Presence()
    for it in items:
        if it.id in at:
            if Path(it.path) not in found_paths or found[Path(it.path)] != it.id:
                out.moved[it.id] = at[it.id]
            continue
        rows: list[Quarantined] = []
        for p in dict.fromkeys([Path(it.path), *map(Path, others.get(it.id, ()))]):
            reason = _file_verdict(p, it.id, found, bad)
            if reason is None:  # still holds the bytes (outside the scanned folders)
                rows = []
                break
            rows.append(Quarantined(p, reason))
        if rows:
            out.gone[it.id] = rows[0].reason
            out.quarantined += rows
    return out


def _file_verdict(path: Path, item_id: str, found: Mapping[Path, str], bad: Mapping[Path, str]) -> str | None:
    """Why ``path`` no longer holds item ``item_id``, or None when it still does."""
    if path in found:
        return f"{CHANGED}: new bytes are item {found[path]}"
    if _stat(path) is None:
        return DELETED
    if path in bad:
        return f"{CHANGED}: no longer usable ({bad[path]})"
    try:
        digest = sha256_file(path)
    except OSError as e:
        return f"{CHANGED}: cannot read file ({e.strerror or e})"
    return None if digest == item_id else f"{CHANGED}: new bytes are item {digest}"


def recheck(items: Sequence[Item], known: Mapping[str, FileRecord] | None = None) -> tuple[list[Item], dict[str, Quarantined]]:
    """Just before ``items`` are used (pushed for review): is each file still the one scanned?

    Each file is stat-ed; one whose size and mtime match its ``known`` record (as in
    :func:`scan_files`) for the same item is taken as is; any other is re-hashed, and kept if
    its bytes are still the item's (a ``touch``). Returns ``(still_ok, quarantined)``:
    the items to go on with, in order, and item id -> :class:`Quarantined` for the others
    (``"file deleted since it was scanned"``, ``"file changed since it was scanned: new bytes
    are item <id>"``).
    """
    ok: list[Item] = []
    out: dict[str, Quarantined] = {}
    for it in items:
        path = Path(it.path)
        stat = _stat(path)
        rec = (known or {}).get(str(path))
        if stat is None:
            out[it.id] = Quarantined(path, DELETED)
        elif rec is not None and (rec[0], rec[1]) == stat and rec[2] == it.id:
            ok.append(it)
        else:
            reason = _file_verdict(path, it.id, {}, {})
            if reason is None:
                ok.append(it)
            else:
                out[it.id] = Quarantined(path, reason)
    return ok, out


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
