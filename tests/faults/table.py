"""The fault table: one row per injected fault, the invariant counts measured after it.

Tests call :func:`record`; ``tests/faults/conftest.py`` prints the table at the end of the
session (``pytest tests/faults``), and writes it as JSON to ``$PSEUDOLABEL_FAULTS_TABLE`` when
that is set (``python -m tests.faults.report`` does, to print the README table).
"""

from __future__ import annotations

from typing import Any

from .invariants import INVARIANTS

ROWS: list[dict[str, Any]] = []
HEADER = ("suite", "fault", "faulted run", "rerun", "duplicates", "lost answers", "overwritten", "stale states",
          "rounds running", "seconds", "note")


def record(suite: str, fault: str, *, run: str, rerun: str, counts: dict[str, Any] | None, seconds: float,
           note: str = "") -> dict[str, Any]:
    """Add one row; ``counts`` from :func:`faults.invariants.count` (None: not applicable)."""
    row = {"suite": suite, "fault": fault, "run": run, "rerun": rerun, "seconds": round(seconds, 1), "note": note}
    row |= {k: (None if counts is None else int(counts[k])) for k in INVARIANTS}
    ROWS.append(row)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (``-`` where an invariant does not apply)."""
    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        vals = [r["suite"], r["fault"], r["run"], r["rerun"], *(r[k] for k in INVARIANTS), r["seconds"], r["note"]]
        out.append("| " + " | ".join(cell(v) for v in vals) + " |")
    return "\n".join(out)
