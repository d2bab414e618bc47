"""pseudolabel.review.answers: the one writer of answers_quarantine.csv (sweep and adoption)."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pseudolabel.review.answers import ANSWER_COLUMNS, record_rejected
from pseudolabel.review.decode import Rejected


def test_rows_are_written_once_and_a_fixed_answer_is_judged_again(tmp_path: Path) -> None:
    path = tmp_path / "answers_quarantine.csv"
    saved = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
    a = Rejected(7, 70, "a" * 64, "two choices", saved_at=saved)
    b = Rejected(8, None, None, "task has no image", action="ignored")
    assert record_rejected(path, []) == [] and not path.exists()
    assert record_rejected(path, [a, b]) == [a, b]
    assert record_rejected(path, [a, b]) == []                      # seen: nothing new
    fixed = Rejected(7, 70, "a" * 64, "two choices", saved_at=saved.replace(minute=5))
    assert record_rejected(path, [a, fixed]) == [fixed]             # a new save is a new row
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ANSWER_COLUMNS and len(rows) == 3
    assert rows[0]["saved_at"] == saved.isoformat() and rows[1]["annotation_id"] == ""
    assert datetime.fromisoformat(rows[0]["time"]).utcoffset().total_seconds() == 0  # UTC


def test_a_foreign_csv_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "answers_quarantine.csv"
    path.write_text("path,reason,time\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: header"):
        record_rejected(path, [Rejected(1, 1, None, "bad")])
