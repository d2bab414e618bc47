"""Pull reviewers' answers from Label Studio into the ledger (the periodic sweep).

Label Studio without Redis delivers webhooks synchronously with a 1 s timeout and no retry,
so a missed webhook is lost: this sweep is what guarantees nothing is. It is incremental
(``since`` the last sweep, minus a safety margin) and idempotent (annotations are keyed by
their Label Studio id in the ledger, so pulling one twice adds nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, Sequence

from pseudolabel.data.ledger import Ledger
from pseudolabel.types import Annotation

_LAST_SYNC = "last_sync:{project}"
# Clock skew between us and the server, and annotations saved while we were pulling.
_MARGIN = timedelta(minutes=5)


class Collector(Protocol):
    project_title: str

    def collect(self, *, since: datetime | None = None) -> list[Annotation]: ...


@dataclass(frozen=True)
class SyncResult:
    pulled: int        # annotations returned by Label Studio
    added: int         # new label rows in the ledger
    accepted: int
    corrected: int
    skipped: int


def sync_reviews(ledger: Ledger, client: Collector, *, round_id: int | None, full: bool = False) -> SyncResult:
    """Pull answered tasks into the ledger as ``human`` labels; returns counts.

    Items unknown to the ledger (tasks created by hand in Label Studio) are ignored: they are
    not part of this campaign. ``round_id`` is recorded as the round in which a label arrived.
    """
    key = _LAST_SYNC.format(project=client.project_title)
    last = None if full else ledger.get_meta(key)
    started = datetime.now().astimezone()
    since = None if last is None else datetime.fromisoformat(last) - _MARGIN
    anns = client.collect(since=since)
    known = {it.id: it for it in ledger.items()}
    mine: list[Annotation] = []
    for a in anns:
        item = known.get(a.item.id)
        if item is None:
            continue
        mine.append(Annotation(
            item=item, label=a.label, boxes=a.boxes, source="human",
            round=a.round if a.round is not None else round_id, reviewer=a.reviewer,
            model_version=a.model_version, created_at=a.created_at, weight=1.0,
            review_outcome=a.review_outcome, ls_task_id=a.ls_task_id, ls_annotation_id=a.ls_annotation_id,
        ))
    # Keep only versions the ledger has not seen (the pull window overlaps the last one).
    seen = {(r.ls_annotation_id, r.created_at) for r in ledger.all_labels(source="human")
            if r.ls_annotation_id is not None}
    mine = [a for a in mine if (a.ls_annotation_id, a.created_at.isoformat()) not in seen]
    added = ledger.add_labels(mine)
    for a in mine:
        state = "skipped" if a.review_outcome == "skipped" else "answered"
        ledger.set_task_state(client.project_title, a.item.id, state)
    ledger.set_meta(key, started.isoformat())
    outcomes = [a.review_outcome for a in mine]
    return SyncResult(
        pulled=len(anns), added=added, accepted=outcomes.count("accepted"),
        corrected=outcomes.count("corrected"), skipped=outcomes.count("skipped"),
    )


def summarise(results: Sequence[SyncResult]) -> dict[str, int]:
    keys = ("pulled", "added", "accepted", "corrected", "skipped")
    return {k: sum(getattr(r, k) for r in results) for k in keys}


def wait_for_reviews(client, res, *, timeout_s: float, console=None, poll_s: float = 30.0) -> dict[str, int]:  # noqa: ANN001
    """Block until every task pushed in round ``res`` is answered or ``timeout_s`` passes.

    Used by ``pseudolabel run --wait M`` for people reviewing in real time; scheduled rounds
    (cron) don't wait: the next run's sync stage collects whatever was answered meanwhile.
    """
    import time as _time

    deadline = _time.monotonic() + timeout_s
    while True:
        states = client.task_states()
        pending = sum(1 for s in states.values() if s == "queued")
        if pending == 0 or _time.monotonic() >= deadline:
            if console is not None:
                console.print(f"  {pending} task(s) still queued; continuing")
            return {"pending": pending}
        if console is not None:
            console.print(f"  waiting for reviewers: {pending} task(s) queued")
        _time.sleep(min(poll_s, max(0.0, deadline - _time.monotonic())))
