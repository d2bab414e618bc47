"""``answers_quarantine.csv``: Label Studio answers that could not be used, with the reason.

Both paths that read answers write here: the review sweep (:func:`loops.review.sync_reviews`)
and the adoption of tasks made in Label Studio (:mod:`loops.adopt`). One row per distinct
``(task_id, annotation_id, saved_at, reason)``: an answer fixed in Label Studio has a new
``saved_at`` and is judged again; the same problem seen twice is written once. ``time`` is
when the row was first written (UTC, ISO-8601).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pseudolabel.review.decode import Rejected
from pseudolabel.types import utcnow
from pseudolabel.utils import merge_csv

ANSWERS_CSV = "answers_quarantine.csv"
"""File name, beside the ledger."""
ANSWER_COLUMNS = ("task_id", "annotation_id", "item_id", "saved_at", "action", "reason", "time")
_KEY = ("task_id", "annotation_id", "saved_at", "reason")


def record_rejected(path: Path, rejected: Sequence[Rejected]) -> list[Rejected]:
    """Append ``rejected`` answers to the CSV at ``path`` (created with its header if absent,
    written atomically; a header other than :data:`ANSWER_COLUMNS` is a ``ValueError``).
    Returns those not recorded before, in order."""
    if not rejected:
        return []
    now = utcnow().isoformat()
    rows: list[dict[str, object]] = [
        {"task_id": r.task_id, "annotation_id": r.annotation_id, "item_id": r.item_id,
         "saved_at": r.saved_at.isoformat() if r.saved_at else "", "action": r.action, "reason": r.reason,
         "time": now} for r in rejected]
    new = {tuple(row[k] for k in _KEY) for row in merge_csv(Path(path), rows, columns=ANSWER_COLUMNS, key=_KEY)}
    return [r for r, row in zip(rejected, rows) if tuple("" if row[k] is None else str(row[k]) for k in _KEY) in new]
