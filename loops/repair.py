"""``pseudolabel repair``: put a Label Studio project right after faults of the past.

- **duplicate tasks** (one item, several tasks: made by an older version's retried imports, or
  by hand): the task with answers is kept (the one the ledger records when several have
  answers or none do) and the others are deleted if they have no answer; duplicates that
  *both* carry answers are reported, never deleted — human work is not thrown away;
- **wrong image URLs** (tasks pushed while ``label_studio.document_root`` was wrong): the task's
  image URL is rewritten from the current rule, for items whose file the ledger knows;
- **lost tasks**: everything :func:`loops.review.reconcile` adopts (tasks the ledger did not
  record) and task states that disagree with the server.
"""

from __future__ import annotations

from typing import Any, Callable

from loops.review import reconcile
from pseudolabel.data.ledger import Ledger


def repair_project(ledger: Ledger, client: Any, *, dry_run: bool = False,
                   log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Repair the project of ``client`` for the campaign in ``ledger``; returns counts."""
    project = client.project_title
    recorded = {r["item_id"]: r["task_id"] for r in ledger.review_tasks(project)}
    items = {it.id: it for it in ledger.items()}
    by_item: dict[str, list[Any]] = {}
    for t in client.listing():
        by_item.setdefault(t.item_id, []).append(t)
    deleted, kept_both, urls = 0, 0, 0
    for iid, tasks in sorted(by_item.items()):
        if len(tasks) > 1:
            answered = [t for t in tasks if t.total_annotations or t.cancelled_annotations]
            if len(answered) > 1:
                kept_both += 1
                log(f"item {iid[:12]}: tasks {[t.task_id for t in answered]} all have answers; kept (merge by hand)")
            else:
                keep = answered[0] if answered else next(
                    (t for t in tasks if t.task_id == recorded.get(iid)), min(tasks, key=lambda t: t.task_id))
                for t in tasks:
                    if t is keep or t in answered:
                        continue
                    log(f"item {iid[:12]}: delete duplicate task {t.task_id} (keep {keep.task_id})")
                    if not dry_run:
                        client.delete_task(t.task_id)
                    deleted += 1
                if not dry_run and recorded.get(iid) not in (None, keep.task_id):
                    ledger.record_task_id(project, iid, keep.task_id)
        it = items.get(iid)
        if it is None:
            continue
        try:
            want = client.image_url(it.path)
        except ValueError as exc:
            log(f"item {iid[:12]}: {exc}")
            continue
        for t in tasks:
            if t.data.get(client.data_key) != want:
                log(f"task {t.task_id}: image URL {t.data.get(client.data_key)!r} -> {want!r}")
                if not dry_run:
                    client.update_task_data(t.task_id, **{client.data_key: want})
                urls += 1
    rec = None if dry_run else reconcile(ledger, client)
    return {"duplicates_deleted": deleted, "duplicates_with_answers_kept": kept_both, "image_urls_fixed": urls,
            "adopted": None if rec is None else rec.adopted, "states_fixed": None if rec is None else rec.states_fixed,
            "dry_run": dry_run}
