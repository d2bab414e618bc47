"""The sync against a real server: duplicate tasks that an import applied late left behind
are cleaned up; flags on tasks whose answers decode again are lifted.

An import whose answer was lost is reconciled by looking our item ids up; a server that
applies it only after the client gave up, looked up and imported again leaves a second task
per item, later than any push can wait. The sweep at the start of every round deletes the
unanswered copies and keeps every task that holds an answer (tests/faults: "import applied
late" shows the whole story through a proxy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loops.review import FLAG_PREFIX, sync_reviews
from pseudolabel.data.ledger import Ledger
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.types import Candidate

pytestmark = pytest.mark.integration

CLASSES = [str(d) for d in range(10)]


def test_sync_deletes_unanswered_duplicates(label_studio: Any, ls_images_root: Path, make_digit_pngs: Any,
                                            tmp_path: Path) -> None:
    from label_studio_sdk import LabelStudio

    items = make_digit_pngs(ls_images_root / "duplicates", 4, offset=600)
    client = LabelStudioClient(label_studio.url, label_studio.token, "late duplicates", CLASSES,
                               images_root=ls_images_root)
    client.ensure_project()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_items(items, split="pool")
    first = client.submit([Candidate(item=it, score=1.0, prediction=None, strategy="entropy") for it in items],
                          round_id=1)
    ledger.record_tasks(client.project_title, 1, first)
    # The late import: the same tasks again, as the server applies them after the client retried.
    sdk = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    sdk.projects.import_tasks(client.project_id, request=[client.task_info(first[it.id]).data for it in items])
    late = {iid: tids[1] for iid, tids in client.tasks_by_item([it.id for it in items]).items()}
    a, b, c, d = (it.id for it in items)
    # a: nobody answered; b: the recorded task answered; c: only the copy answered; d: both answered.
    client.annotate(first[b], "1")
    client.annotate(late[c], "2")
    client.annotate(first[d], "3")
    client.annotate(late[d], "4")

    res = sync_reviews(ledger, client, round_id=1)

    assert res.duplicates_deleted == 3 and res.duplicates == 1
    left = client.tasks_by_item([it.id for it in items])
    assert left == {a: [first[a]], b: [first[b]], c: [late[c]], d: sorted([first[d], late[d]])}
    recorded = {r["item_id"]: (r["task_id"], r["state"]) for r in ledger.review_tasks(client.project_title)}
    assert recorded == {a: (first[a], "queued"), b: (first[b], "answered"), c: (late[c], "answered"),
                        d: (first[d], "answered")}
    assert sorted(r.label for r in ledger.all_labels(source="human")) == ["1", "2", "3", "4"]  # no answer lost
    again = sync_reviews(ledger, client, round_id=1)
    assert again.duplicates_deleted == 0 and again.duplicates == 1 and again.added == 0
    ledger.close()


def test_sync_lifts_flags_of_answers_that_decode(label_studio: Any, ls_images_root: Path, make_digit_pngs: Any,
                                                tmp_path: Path) -> None:
    """A task flagged while the server sent its answer garbled (tests/faults: server garbage),
    whose answer the ledger already holds, is unflagged by the next sync; a task whose answer
    is still unusable stays flagged."""
    items = make_digit_pngs(ls_images_root / "flags", 2, offset=620)
    client = LabelStudioClient(label_studio.url, label_studio.token, "stale flags", CLASSES,
                               images_root=ls_images_root)
    client.ensure_project()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_items(items, split="pool")
    tasks = client.submit([Candidate(item=it, score=1.0, prediction=None, strategy="entropy") for it in items],
                          round_id=1)
    ledger.record_tasks(client.project_title, 1, tasks)
    good, bad = (tasks[it.id] for it in items)
    client.annotate(good, "5")
    client.annotate(bad, result=[{"from_name": "label", "to_name": "image", "type": "choices",
                                  "value": {"choices": ["5", "6"]}}])
    first = sync_reviews(ledger, client, round_id=1)
    assert first.added == 1 and first.rejected == 1
    client.flag_task(good, f"{FLAG_PREFIX} result is str, not a list of regions. Please fix it and submit again.")
    flagged = {t.task_id for t in client.listing() if str(t.data.get("note", "")).startswith(FLAG_PREFIX)}
    assert flagged == {good, bad}
    second = sync_reviews(ledger, client, round_id=1)
    assert second.added == 0
    flagged = {t.task_id for t in client.listing() if str(t.data.get("note", "")).startswith(FLAG_PREFIX)}
    assert flagged == {bad}
    ledger.close()
