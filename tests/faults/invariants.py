"""The invariants every fault must leave intact, counted from the ledger and the real server.

- ``duplicates``: items with more than one task in the Label Studio project;
- ``lost_answers``: answers saved in Label Studio (their latest version) that are neither in
  the ledger nor recorded as unusable in ``answers_quarantine.csv``;
- ``overwritten``: seed / human label rows of the ledger that changed or vanished since the
  snapshot, items whose current label stopped being a human one, and answers that existed
  in Label Studio at the snapshot and were deleted or changed there;
- ``stale``: tasks whose state in the ledger differs from the server's, plus tasks the server
  has and the ledger does not record, plus ledger tasks the server no longer has;
- ``running``: rounds still ``running`` in the ledger.

The server is read through a client that talks to it directly (never through a fault proxy).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pseudolabel.data.ledger import Ledger, LabelRow
from pseudolabel.review.client import LabelStudioClient

INVARIANTS = ("duplicates", "lost_answers", "overwritten", "stale", "running")


@dataclass(frozen=True)
class Snapshot:
    """What must survive a fault: the ledger's seed/human rows, the items whose current label
    is human, and every answer in Label Studio (annotation id -> (task id, label, saved at))."""

    rows: dict[int, LabelRow]
    human_items: frozenset[str]
    answers: dict[int, tuple[int | None, str | None, str]]


def _answers(client: LabelStudioClient) -> tuple[dict[int, tuple[int | None, str | None, str]], set[tuple[int, str]]]:
    """Usable answers (id -> task, label, saved) and unusable ones ((id, saved) pairs)."""
    pulled = client.pull()
    good = {int(a.ls_annotation_id): (a.ls_task_id, a.label, a.created_at.isoformat())
            for a in pulled.annotations if a.ls_annotation_id is not None}
    bad = {(int(r.annotation_id), r.saved_at.isoformat() if r.saved_at else "")
           for r in pulled.rejected if r.annotation_id is not None and r.action == "ignored"}
    return good, bad


def snapshot(ledger_path: Path, client: LabelStudioClient) -> Snapshot:
    with Ledger(ledger_path) as ledger:
        rows = {r.id: r for r in ledger.all_labels() if r.source in ("seed", "human")}
        human = frozenset(i for i, r in ledger.current_labels(include_gone=True).items() if r.source == "human")
    answers, _ = _answers(client)
    return Snapshot(rows, human, answers)


def _quarantined_answers(workdir: Path) -> set[tuple[int, str]]:
    path = workdir / "answers_quarantine.csv"
    if not path.exists():
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        return {(int(r["annotation_id"]), r["saved_at"]) for r in csv.DictReader(f)
                if r["annotation_id"] and r["action"] == "ignored"}


def count(ledger_path: Path, client: LabelStudioClient, before: Snapshot) -> dict[str, Any]:
    """The invariant counts (all must be 0) plus a few details for failure messages."""
    project = client.project_title
    listing = client.listing()
    by_item: dict[str, list[Any]] = {}
    for t in listing:
        by_item.setdefault(t.item_id, []).append(t)
    duplicates = {i: [t.task_id for t in ts] for i, ts in by_item.items() if len(ts) > 1}
    server_state = {}
    for iid, ts in by_item.items():
        states = {t.state for t in ts}
        server_state[iid] = "answered" if "answered" in states else ("skipped" if "skipped" in states else "queued")

    answers, unusable = _answers(client)
    with Ledger(ledger_path) as ledger:
        rows = {r.id: r for r in ledger.all_labels() if r.source in ("seed", "human")}
        versions = {(r.ls_annotation_id, r.created_at) for r in rows.values() if r.ls_annotation_id is not None}
        human_now = {i for i, r in ledger.current_labels(include_gone=True).items() if r.source == "human"}
        tasks = {r["item_id"]: r for r in ledger.review_tasks(project)}
        running = [r["id"] for r in ledger.rounds() if r["status"] == "running"]
    quarantined = _quarantined_answers(ledger_path.parent)

    lost = sorted(aid for aid, (_, _, saved) in answers.items() if (aid, saved) not in versions)
    lost += sorted(aid for aid, saved in unusable if (aid, saved) not in quarantined)
    changed_rows = sorted(i for i, r in before.rows.items() if rows.get(i) != r)
    unhumaned = sorted(before.human_items - human_now)
    unusable_ids = {aid for aid, _ in unusable}
    gone_answers = sorted(aid for aid, (_, label, _) in before.answers.items()
                          if (aid not in answers and aid not in unusable_ids)
                          or (aid in answers and answers[aid][1] != label))
    mismatched = sorted(i for i, r in tasks.items() if i in server_state and r["state"] != server_state[i])
    unrecorded = sorted(set(server_state) - set(tasks))
    missing = sorted(set(tasks) - set(server_state))
    return {
        "duplicates": len(duplicates),
        "lost_answers": len(lost),
        "overwritten": len(changed_rows) + len(unhumaned) + len(gone_answers),
        "stale": len(mismatched) + len(unrecorded) + len(missing),
        "running": len(running),
        "detail": {"duplicates": duplicates, "lost": lost, "changed_rows": changed_rows, "unhumaned": unhumaned,
                   "gone_answers": gone_answers, "mismatched": mismatched, "unrecorded": unrecorded,
                   "missing": missing, "running": running},
        "tasks": len(listing), "answers": len(answers), "unusable": len(unusable),
    }
