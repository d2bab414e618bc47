"""Adopt tasks made by hand in Label Studio: their images join the campaign, their answers count.

Reviewers import images by hand, or label a task the round never queued; such a task carries
no pseudolabel item id, so the sweep (:func:`loops.review.sync_reviews`) skips it. Adopting
it (``pseudolabel adopt``, or every ``sync`` / ``round`` / ``run`` with
``review.adopt_foreign: true``), for each such task that has an answer:

1. its image URL must be a local file under Label Studio's document root
   (``/data/local-files/?d=...``); anything else (an upload, a cloud or web URL) is left
   alone and reported;
2. the file is ingested as every pool image is (:func:`pseudolabel.data.ingest.scan_files`:
   sha256 → item id, decoded once, images above ``data.max_pixels`` or unreadable ones
   quarantined in ``quarantine.csv``) and added to the ledger in the pool (an image the
   ledger already knows keeps its split, e.g. the holdout);
3. its annotations are stored as human labels with their provenance (reviewer, time,
   Label Studio task and annotation ids, the prediction they started from); answers that
   cannot be used go to ``answers_quarantine.csv`` as the sweep's do;
4. last, the task gets our item id in its data (``kind: adopted``): from then on it is a
   task like the pushed ones, and later edits come in through the normal sweep.

The order makes it safe to interrupt: until step 4 the task is still foreign and the next
run does it again, adding nothing twice (labels are keyed by annotation id and save time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from pseudolabel.config import Config
from pseudolabel.data.ingest import Quarantined, scan_files, write_quarantine_csv
from pseudolabel.data.ledger import Ledger
from pseudolabel.review.answers import ANSWERS_CSV, record_rejected
from pseudolabel.review.decode import Rejected


class Adopter(Protocol):
    """What adoption needs from the Label Studio client."""

    project_title: str

    def foreign_tasks(self) -> list[Any]:
        """Answered tasks that carry no item id of ours (made by hand in Label Studio), oldest first."""

    def image_path(self, data: Any) -> Path:
        """The local file behind a task's image URL (task ``data``)."""

    def foreign_annotations(self, task: Any, item: Any) -> Any:
        """Every annotation of ``task``, read as if it showed ``item`` (as ``pull`` reads ours)."""

    def adopt_task(self, task_id: int, item: Any) -> None:
        """Make task ``task_id`` ours: it gets ``item``'s id and size, so ``pull`` reads it from now on."""


@dataclass
class AdoptResult:
    """``adopted``: tasks that became ours; ``labels``: label rows added; ``quarantined``:
    tasks whose image could not be used (file unreadable, too large); ``not_local``: tasks
    whose image is not a local file under the document root (task id → reason); ``rejected``:
    answers that could not be used; ``new_items``: images the ledger did not know."""

    adopted: int = 0
    labels: int = 0
    new_items: int = 0
    quarantined: int = 0
    rejected: int = 0
    not_local: dict[int, str] = field(default_factory=dict)


def adopt_foreign(cfg: Config, ledger: Ledger, client: Adopter, *,
                  log: Callable[[str], None] = lambda s: None) -> AdoptResult:
    """Adopt every answered task that has no item id of ours (see the module doc)."""
    out = AdoptResult()
    tasks = client.foreign_tasks()
    if not tasks:
        return out
    paths: dict[int, Path] = {}
    for t in tasks:
        try:
            paths[t.task_id] = client.image_path(t.data)
        except ValueError as exc:
            out.not_local[t.task_id] = str(exc)
    scan = scan_files(list(dict.fromkeys(paths.values())), max_pixels=cfg.data.max_pixels)
    if scan.quarantined:
        write_quarantine_csv(cfg.workdir / "quarantine.csv",
                             [Quarantined(q.path, f"{q.reason} (a task made by hand in Label Studio)")
                              for q in scan.quarantined])
    ids = scan.id_of()
    items = {it.id: it for it in scan.items}
    known = {it.id for it in ledger.items(include_gone=True)}
    out.new_items = ledger.add_items([it for it in scan.items if it.id not in known], split="pool")
    project = client.project_title
    have_task = {r["item_id"] for r in ledger.review_tasks(project)}
    rejected: list[Rejected] = []
    for t in tasks:
        path = paths.get(t.task_id)
        if path is None:
            continue
        if path not in ids:
            out.quarantined += 1
            continue
        item = items[ids[path]]
        pulled = client.foreign_annotations(t, item)
        out.labels += ledger.add_labels(pulled.annotations)
        rejected += pulled.rejected
        client.adopt_task(t.task_id, item)
        if item.id not in have_task:
            state = "answered" if any(a.review_outcome != "skipped" for a in pulled.annotations) else "skipped"
            ledger.record_tasks(project, 0, {item.id: t.task_id}, kind="adopted")
            ledger.set_task_state(project, item.id, state)
            have_task.add(item.id)
        out.adopted += 1
    out.rejected = len(record_rejected(ledger.path.parent / ANSWERS_CSV, rejected))
    if out.adopted or out.quarantined or out.not_local:
        log(f"  adopt: {out.adopted} task(s) made in Label Studio adopted ({out.new_items} new image(s), "
            f"{out.labels} label(s)); {out.quarantined} image(s) quarantined, {len(out.not_local)} not local files"
            + (f", {out.rejected} answer(s) unusable ({ANSWERS_CSV})" if out.rejected else ""))
    for tid, why in list(out.not_local.items())[:5]:
        log(f"    task {tid}: {why}")
    return out
