"""Stand-in for a process killed right after a stage was recorded (no hook in the product:
the ledger's ``mark_stage`` is wrapped for the duration of the ``with`` block)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pseudolabel.data.ledger import Ledger


class Killed(Exception):
    """Stands for the process dying at that point."""


@contextmanager
def killed_after(stage: str) -> Iterator[None]:
    """Inside the block, recording ``stage`` in any ledger raises :class:`Killed` (after the
    record is written, as a crash right after the stage would leave it)."""
    real = Ledger.mark_stage

    def mark_then_die(self: Ledger, round_id: int, name: str, info: Any = None) -> None:
        real(self, round_id, name, info)
        if name == stage:
            raise Killed(f"killed after stage {name} of round {round_id}")

    mp = pytest.MonkeyPatch()
    mp.setattr(Ledger, "mark_stage", mark_then_die)
    try:
        yield
    finally:
        mp.undo()
