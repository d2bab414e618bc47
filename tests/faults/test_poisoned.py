"""Poisoned annotations: answers saved in Label Studio that cannot be used as they are.

Each is recorded with its reason in ``answers_quarantine.csv``, its task is flagged in Label
Studio (a note above the image), every other answer is pulled and the round goes on; once the
reviewer fixes the answer, the next sync pulls it and the note goes away. Rotated rectangles
are used as their enclosing axis-aligned box, with a recorded warning.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loops.review import FLAG_PREFIX, sync_reviews
from pseudolabel.data.images import sha256_file
from pseudolabel.data.ledger import Ledger
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.types import Candidate, Item

from . import table
from .campaign import Campaign
from .invariants import INVARIANTS

pytestmark = [pytest.mark.integration]


def choices(value: Any) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": value}]


# What a reviewer (or a script using the API) can save in a classification project.
BAD_CHOICES = {
    "two classes chosen": (choices({"choices": ["1", "2"]}), "several classes"),
    "a class not in the project": (choices({"choices": ["eleven"]}), "'eleven' is not one of"),
    "choices is a string, not a list": (choices({"choices": "3"}), "not a list"),
    "choices holds a number": (choices({"choices": [3]}), "3"),
}


def _quarantine(workdir: Path) -> list[dict[str, str]]:
    path = workdir / "answers_quarantine.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _flagged(client: LabelStudioClient) -> set[int]:
    return {t.task_id for t in client.listing() if str(t.data.get("note", "")).startswith(FLAG_PREFIX)}


@pytest.mark.slow
def test_poisoned_classification_answers(make_campaign: Callable[..., Campaign], label_studio: Any) -> None:
    from label_studio_sdk import LabelStudio

    c = make_campaign("poisoned")
    assert c.cli("round").code == 0
    pending = c.client.pending()
    bad_tasks = {}
    for (name, (result, _)), task in zip(BAD_CHOICES.items(), pending):
        bad_tasks[name] = (task.task_id, c.client.annotate(task.task_id, result=result))
    good = c.answer()  # the others, answered right
    snap = c.snapshot()
    t0 = time.perf_counter()
    run = c.cli("round")
    rows = _quarantine(c.workdir)
    flagged = _flagged(c.client)
    # The reviewer fixes two of them; a sync pulls the fixes and lifts their flags.
    sdk = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    fixed = list(bad_tasks.values())[:2]
    for _, ann_id in fixed:
        sdk.annotations.update(id=ann_id, result=choices({"choices": ["4"]}))
    sync = c.cli("sync")
    flagged_after = _flagged(c.client)
    counts = c.check(snap)
    table.record("poisoned answers", f"{len(BAD_CHOICES)} unusable classification answers, {good} good ones",
                 run=f"exit {run.code}, {len(rows)} quarantined, {len(flagged)} flagged",
                 rerun=f"2 fixed: sync exit {sync.code}, {len(flagged_after)} still flagged", counts=counts,
                 seconds=time.perf_counter() - t0)
    assert run.code == 0, run.output
    assert '"queued": 10' in run.output  # the round went on
    reasons = {r["annotation_id"]: r["reason"] for r in rows}
    for name, (task_id, ann_id) in bad_tasks.items():
        assert BAD_CHOICES[name][1] in reasons[str(ann_id)], (name, reasons)
    assert flagged == {t for t, _ in bad_tasks.values()}
    with Ledger(c.ledger_path) as ledger:
        human = {r.ls_annotation_id: r.label for r in ledger.all_labels(source="human")}
    assert all(a not in human for _, a in list(bad_tasks.values())[2:])
    assert all(human[a] == "4" for _, a in fixed)  # the fixed versions were pulled
    assert sync.code == 0 and flagged_after == {t for t, _ in list(bad_tasks.values())[2:]}
    assert {k: counts[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0), counts["detail"]


def rect(x: Any, y: Any, w: Any, h: Any, label: Any = "digit", rotation: float = 0) -> dict[str, Any]:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 32,
            "original_height": 32, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                                             "rectanglelabels": label if isinstance(label, list) else [label]}}


# (result, how it ends: "used" = stored; "repaired" = stored with a warning; else a reason part)
BOXES = {
    "a good box": ([rect(10, 10, 50, 50)], "used"),
    "rotated 30 degrees": ([rect(20, 20, 40, 30, rotation=30)], "repaired"),
    "zero width": ([rect(10, 10, 0, 50)], "no area"),
    "negative height": ([rect(10, 60, 30, -40)], "no area"),
    "a class not in the project": ([rect(10, 10, 50, 50, label="cat")], "not among the project's classes"),
    "coordinates are text": ([rect("left", 10, 50, 50)], "could not convert"),
    "two labels on one box": ([rect(10, 10, 50, 50, label=["digit", "digit"])], "expected exactly one"),
    "box entirely outside the image": ([rect(150, 150, 20, 20)], "lies outside the 32x32 image"),
}


def test_poisoned_box_answers(tmp_path: Path, label_studio: Any, fault_data: Any) -> None:
    """Bad geometry in a detection project: the sync keeps the good and the rotated box,
    quarantines and flags the others, never stops."""
    client = LabelStudioClient(label_studio.url, label_studio.token, "faults-poisoned-boxes", ["digit"],
                               task_type="detect", images_root=Path(label_studio.images_root))
    client.ensure_project()
    pool = sorted((fault_data.root / "pool").glob("*.png"))[: len(BOXES)]
    items = [Item(id=sha256_file(p), path=p, width=32, height=32) for p in pool]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_items(items, split="pool")
    tasks = client.submit([Candidate(item=it, score=1.0, prediction=None, strategy="entropy") for it in items],
                          round_id=1)
    ledger.record_tasks(client.project_title, 1, tasks)
    answers = {}
    for (name, (result, _)), it in zip(BOXES.items(), items):
        answers[name] = client.annotate(tasks[it.id], result=result)
    t0 = time.perf_counter()
    res = sync_reviews(ledger, client, round_id=1)
    rows = _quarantine(tmp_path)
    by_ann = {r["annotation_id"]: r for r in rows}
    stored = {r.ls_annotation_id: r for r in ledger.all_labels(source="human")}
    flagged = _flagged(client)
    table.record("poisoned answers", f"{len(BOXES)} box answers, {len(BOXES) - 2} with bad geometry",
                 run=f"sync: {res.added} stored, {res.rejected} quarantined, {res.repaired} repaired",
                 rerun="-", counts=None, seconds=time.perf_counter() - t0, note=", ".join(BOXES))
    for name, (_, outcome) in BOXES.items():
        ann = answers[name]
        if outcome in ("used", "repaired"):
            assert ann in stored, (name, by_ann.get(str(ann)))
            assert (str(ann) in by_ann) == (outcome == "repaired"), name
        else:
            assert ann not in stored, name
            assert outcome in by_ann[str(ann)]["reason"], (name, by_ann[str(ann)]["reason"])
            assert by_ann[str(ann)]["action"] == "ignored"
    box = stored[answers["rotated 30 degrees"]].boxes[0]
    assert 0 <= box.x1 < box.x2 <= 32 and 0 <= box.y1 < box.y2 <= 32  # enclosing box, clipped to the image
    assert "rotated by 30 degrees" in by_ann[str(answers["rotated 30 degrees"])]["reason"]
    assert res.added == 2 and res.repaired == 1 and res.rejected == len(BOXES) - 2
    assert flagged == {tasks[it.id] for (name, (_, o)), it in zip(BOXES.items(), items) if o not in ("used", "repaired")}
    ledger.close()
