"""Small helpers used across the package: atomic writes, append-only CSV logs."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def read_text_utf8(path: Path) -> str:
    """The text of a file the user wrote (CSV, YAML, label file), as UTF-8; a byte-order mark
    is allowed. Another encoding (Latin-1, UTF-16...) raises a ``ValueError`` naming the file,
    the line and the byte that is not UTF-8, and the encoding expected."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        p = Path(path)
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}: {exc.reason}); "
            f"save the file as UTF-8, e.g. from Latin-1: iconv -f latin1 -t utf-8 {p.name} > {p.stem}-utf8{p.suffix}"
        ) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``:
    a reader sees the old file or the new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path`` (for writers that take a
    path, such as ``pyarrow.parquet.write_table`` or ``np.save``), then rename it over ``path``:
    a reader sees the old file or the complete new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def merge_csv(path: Path, rows: list[dict[str, object]], *, columns: tuple[str, ...],
              key: tuple[str, ...]) -> list[dict[str, str]]:
    """Append to the CSV at ``path`` the ``rows`` whose ``key`` columns are not there yet.

    Existing rows are kept as they are; the header must be ``columns`` (``ValueError``
    naming the file otherwise). Written atomically. Returns the rows that were new (as written).
    """
    old: list[dict[str, str]] = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = tuple(reader.fieldnames or ())
            if header and header != columns:
                raise ValueError(f"{path}: line 1: header is {','.join(header)!r}; expected {','.join(columns)!r}")
            old = [{c: r.get(c) or "" for c in columns} for r in reader]
    seen = {tuple(r[k] for k in key) for r in old}
    new = []
    for r in rows:
        row = {c: str(r.get(c, "") if r.get(c) is not None else "") for c in columns}
        k = tuple(row[c] for c in key)
        if k not in seen:
            seen.add(k)
            new.append(row)
    if new or not path.exists():
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(old + new)
        atomic_write_text(path, buf.getvalue())
    return new
