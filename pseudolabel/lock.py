"""One writer per workdir: an OS file lock that the kernel releases when the process dies.

``round``, ``run``, ``sync``, ``retrain``, ``export`` and ``repair`` hold it for their whole
run, so two overlapping cron jobs cannot both push. The lock is ``fcntl.flock`` on
``<workdir>/.pseudolabel.lock``: the file stays, but a lock is held only while its process
lives (kill -9 included), so there is never a stale lock to clean up. The holder writes
its pid, command and start time into the file, which a second process reads to say who holds
it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".pseudolabel.lock"


class WorkdirLocked(RuntimeError):
    """Another process holds the workdir; the message names it (pid, command, since when)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} (`{info.get('command')}`, since {info.get('since')})"


@contextmanager
def workdir_lock(workdir: Path, *, command: str | None = None, wait: float = 0.0,
                 poll: float = 0.5) -> Iterator[Path]:
    """Hold the workdir's lock for the ``with`` block.

    ``wait``: seconds to wait for a holder to finish (0: fail at once). Raises
    :class:`WorkdirLocked` naming the holder when the lock is not free in time.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, wait)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkdirLocked(
                        f"{workdir} is in use by {_holder(path)}: one pseudolabel command at a time per workdir; "
                        "wait for it to finish (or pass --wait-lock SECONDS)"
                    ) from None
                time.sleep(poll)
        info = {"pid": os.getpid(), "command": command or " ".join(["pseudolabel", *sys.argv[1:]]),
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
