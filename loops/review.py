"""Pull reviewers' answers from Label Studio into the ledger (the periodic sweep).

Label Studio without Redis delivers webhooks synchronously with a 1 s timeout and no retry,
so a missed webhook is lost: this sweep is what guarantees nothing is. It is incremental
(``since`` the last sweep, minus a safety margin) and idempotent (annotations are keyed by
their Label Studio id in the ledger, so pulling one twice adds nothing).

Several reviewers per task (``overlap > 1``): every reviewer's answer is stored as it is;
once a task has ``overlap`` answers, one more ``human`` row with reviewer
``consensus:<method>`` records the decided label (it is the latest human row, so it is the
item's current label). A task whose reviewers disagree (a tie, or agreement below
``min_agreement``) is sent back once for adjudication; the adjudicator's answer then decides
(reviewer ``consensus:adjudicated``). Decisions and agreements are kept in the ledger
(``Ledger.consensus(project)``), adjudication requests too (``Ledger.adjudications(project)``).

Why this module is over 400 lines: the sync is one transaction-like sweep (pull, decode,
consensus, adjudication, repair of flags) whose steps share the ledger and the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol, Sequence

from pseudolabel.consensus import METHODS, Decision, Method, box_f1, decide_many
from pseudolabel.data.ledger import Ledger, LabelRow, parse_time
from pseudolabel.review.answers import ANSWERS_CSV, record_rejected
from pseudolabel.types import Annotation, Item

_LAST_SYNC = "last_sync:{project}"
# Clock skew between us and the server, and annotations saved while we were pulling.
_MARGIN = timedelta(minutes=5)
CONSENSUS_PREFIX = "consensus:"
# Answers that could not be used, beside quarantine.csv (files that could not be used).
FLAG_PREFIX = "Could not use this answer:"


class Collector(Protocol):
    """What a sync needs from a reviewer back end (the Label Studio client, the oracle)."""

    project_title: str

    def pull(self, *, since: datetime | None = None) -> Any:
        """Answers saved after ``since`` (all when None), oldest first, with the rejected ones."""

    def listing(self) -> list[Any]:
        """Every task of the project that carries one of our item ids (no annotations)."""

    def flag_task(self, task_id: int, note: str) -> None:
        """Show ``note`` above the task's image (empty: take the note off)."""

    def delete_task(self, task_id: int) -> None:
        """Delete one task (an unanswered duplicate)."""


@dataclass(frozen=True)
class SyncResult:
    """One sync's counts: annotations pulled, label rows added, outcomes, consensus rows,
    adjudications, and the tasks whose answer could not be used."""

    pulled: int        # annotations returned by Label Studio
    added: int         # new label rows in the ledger (reviewers' answers, not consensus rows)
    accepted: int
    corrected: int
    skipped: int
    consensus: int = 0                   # consensus rows appended (overlap > 1)
    adjudications: int = 0               # tasks sent back for adjudication in this sync
    mean_agreement: float | None = None  # over the items decided or disputed in this sync
    rejected: int = 0                    # answers that could not be used (answers_quarantine.csv)
    repaired: int = 0                    # answers used after a repair (e.g. rotated box -> enclosing box)
    adopted: int = 0                     # tasks found in Label Studio that the ledger did not know
    states_fixed: int = 0                # ledger task states brought in line with Label Studio
    duplicates: int = 0                  # items with more than one task in the project, after the clean-up
    duplicates_deleted: int = 0          # unanswered extra tasks deleted (made by an import that landed late)


@dataclass
class Reconciled:
    """What :func:`reconcile` found: tasks adopted into the ledger, states corrected,
    ``deleted`` (unanswered duplicate tasks removed), ``duplicates`` (item id → task ids of
    the items that still have several tasks), ledger tasks that Label Studio no longer has,
    and the server's state counts."""

    adopted: int = 0
    states_fixed: int = 0
    deleted: list[int] = field(default_factory=list)
    duplicates: dict[str, list[int]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class Adjudicator(Protocol):
    """A review back end that can send a disputed task back for a deciding answer."""

    def request_adjudication(self, task_id: int, *, reason: str) -> None:
        """Send task ``task_id`` back for one more (deciding) answer, noting ``reason``."""


def reconcile(ledger: Ledger, client: Collector) -> Reconciled:
    """Make the ledger agree with Label Studio, from one listing of the project's tasks.

    - a task carrying our item id that the ledger does not know (an import whose response
      was lost, a push by an older version) is adopted: recorded with its round and state,
      so the item is never imported again;
    - every known task's state follows the server (answered / skipped / queued);
    - an item with several tasks keeps the ones with answers (else the one the ledger records,
      else the oldest); its other, unanswered tasks are deleted. An import that the server
      applied after the client had given up and imported again makes such tasks, at a time
      no push can wait for, so the sweep that runs before every round removes them. Items
      with answers on several tasks are reported (``pseudolabel repair`` says which), never
      thinned: human work is not thrown away;
    - ledger tasks the project no longer has are reported (``missing``).
    Items unknown to the ledger (tasks made by hand for other images) are left alone.
    """
    project = client.project_title
    known_items = {it.id for it in ledger.items()}
    rows = {r["item_id"]: r for r in ledger.review_tasks(project)}
    by_item: dict[str, list[Any]] = {}
    for t in client.listing():
        by_item.setdefault(t.item_id, []).append(t)
    out = Reconciled()
    for iid, tasks in by_item.items():
        tasks.sort(key=lambda t: t.task_id)
        row = rows.get(iid)
        if len(tasks) > 1 and iid in known_items:
            tasks = _drop_unanswered_duplicates(ledger, client, iid, tasks, row, out)
        if len(tasks) > 1:
            out.duplicates[iid] = [t.task_id for t in tasks]
        if iid not in known_items:
            continue
        # The task the ledger records, else the one with answers, else the oldest.
        main = next((t for t in tasks if row is not None and t.task_id == row["task_id"]), None) \
            or next((t for t in tasks if t.total_annotations or t.cancelled_annotations), tasks[0])
        state = _state(tasks)
        out.counts[state] = out.counts.get(state, 0) + 1
        if row is None:
            rnd = main.data.get("round")
            ledger.record_tasks(project, int(rnd) if isinstance(rnd, int) else 0, {iid: main.task_id},
                                kind=str(main.data.get("kind") or "uncertain"),
                                scores={iid: float(main.data["uncertainty"])} if isinstance(
                                    main.data.get("uncertainty"), (int, float)) else None)
            out.adopted += 1
            row = {"state": "queued"}
        if row["state"] != state:
            ledger.set_task_state(project, iid, state)
            out.states_fixed += 1
    out.missing = sorted(set(rows) - set(by_item))
    return out


def _drop_unanswered_duplicates(ledger: Ledger, client: Collector, item_id: str, tasks: list[Any],
                                row: dict[str, Any] | None, out: Reconciled) -> list[Any]:
    """Delete the unanswered tasks of one item but one kept task; returns the tasks left.

    Kept: every task with an answer (or skip); without any, the task the ledger records,
    else the oldest. The ledger is pointed at a kept task when its own was deleted."""
    answered = [t for t in tasks if t.total_annotations or t.cancelled_annotations]
    recorded = None if row is None else row["task_id"]
    keep = answered or [next((t for t in tasks if t.task_id == recorded), tasks[0])]
    for t in tasks:
        if t not in keep:
            client.delete_task(t.task_id)
            out.deleted.append(t.task_id)
    if row is not None and recorded not in {t.task_id for t in keep}:
        ledger.record_task_id(client.project_title, item_id, keep[0].task_id)
        row["task_id"] = keep[0].task_id
    return keep


def _state(tasks: Sequence[Any]) -> str:
    states = {t.state for t in tasks}
    return "answered" if "answered" in states else ("skipped" if "skipped" in states else "queued")


def sync_reviews(
    ledger: Ledger,
    client: Collector,
    *,
    round_id: int | None,
    full: bool = False,
    overlap: int = 1,
    consensus: Method = "majority",
    min_agreement: float = 0.5,
    classes: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> SyncResult:
    """Pull answered tasks into the ledger as ``human`` labels, then :func:`reconcile`.

    Items unknown to the ledger (tasks created by hand in Label Studio) are ignored: they are
    not part of this campaign. ``round_id`` is recorded as the round in which a label arrived.
    An answer that cannot be used (two choices, a class not in the config, bad geometry, bad
    types) is written to ``answers_quarantine.csv`` beside the ledger with its reason, and its
    task is flagged in Label Studio (a note above the image) for the reviewer to fix; every
    other answer is pulled. A fixed answer has a new save time and is pulled by a later sync.

    ``overlap > 1``: reviewers per task (as configured in Label Studio); ``consensus``:
    ``"majority"`` or ``"dawid_skene"`` (needs ``classes``, default the client's);
    ``min_agreement`` in [0, 1]: below it (or on a tie) a task goes back for adjudication
    (``client.request_adjudication``, once per task). See the module docstring.
    """
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1:
        raise ValueError(f"overlap must be an int >= 1 (reviewers per task); got {overlap!r}")
    if consensus not in METHODS:
        raise ValueError(f"consensus {consensus!r} is not one of {list(METHODS)}")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1]; got {min_agreement!r}")
    key = _LAST_SYNC.format(project=client.project_title)
    last = None if full else ledger.get_meta(key)
    started = datetime.now().astimezone()
    since = None if last is None else datetime.fromisoformat(last) - _MARGIN
    pulled = client.pull(since=since)
    anns = pulled.annotations
    known = {it.id: it for it in ledger.items(include_gone=True)}  # an answer is kept even if its file went
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
            empty_ok=a.empty_ok,
        ))
    # Keep only versions the ledger has not seen (the pull window overlaps the last one).
    seen = {(r.ls_annotation_id, r.created_at) for r in ledger.all_labels(source="human")
            if r.ls_annotation_id is not None}
    mine = [a for a in mine if (a.ls_annotation_id, a.created_at.isoformat()) not in seen]
    added = ledger.add_labels(mine)
    rejected = [r for r in pulled.rejected if r.item_id in known or r.item_id is None]
    new_rejected = record_rejected(ledger.path.parent / ANSWERS_CSV, rejected)
    for r in new_rejected:
        if r.action == "ignored" and r.task_id is not None:
            client.flag_task(r.task_id, f"{FLAG_PREFIX} {r.reason}. Please fix it and submit again.")
            if log is not None:
                log(f"  sync: answer {r.annotation_id} on task {r.task_id} not used: {r.reason} (flagged in Label Studio)")
    # A flag comes off every pulled task whose answers all decode now: a fixed answer, and
    # also an answer the ledger already holds that the server had sent garbled for a while.
    fixed = {a.ls_task_id for a in anns if a.item.id in known} - {r.task_id for r in rejected if r.action == "ignored"}
    for tid in sorted(t for t in fixed if t is not None and str(pulled.notes.get(t, "")).startswith(FLAG_PREFIX)):
        client.flag_task(tid, "")
    rec = reconcile(ledger, client)
    if log is not None and (rec.adopted or rec.deleted or rec.duplicates or rec.missing):
        log(f"  sync: {rec.adopted} tasks adopted from Label Studio, {len(rec.deleted)} unanswered duplicate tasks "
            f"deleted, {len(rec.duplicates)} items with answers on several tasks (`pseudolabel repair` lists them), "
            f"{len(rec.missing)} tasks missing in Label Studio")
    ledger.set_meta(key, started.isoformat())
    outcomes = [a.review_outcome for a in mine]
    n_cons, n_adj = 0, 0
    agreements: list[float] = []
    if overlap > 1:
        touched = {a.item.id for a in anns if a.item.id in known}
        n_cons, n_adj, agreements = _apply_consensus(
            ledger, client, touched, known, round_id=round_id, overlap=overlap, method=consensus,
            min_agreement=min_agreement,
            classes=classes if classes is not None else getattr(client, "classes", None),
        )
    return SyncResult(
        pulled=len(anns), added=added, accepted=outcomes.count("accepted"),
        corrected=outcomes.count("corrected"), skipped=outcomes.count("skipped"),
        consensus=n_cons, adjudications=n_adj,
        mean_agreement=sum(agreements) / len(agreements) if agreements else None,
        rejected=sum(r.action == "ignored" for r in rejected), repaired=sum(r.action == "used" for r in rejected),
        adopted=rec.adopted, states_fixed=rec.states_fixed, duplicates=len(rec.duplicates),
        duplicates_deleted=len(rec.deleted),
    )


def pending_adjudications(ledger: Ledger, project: str) -> dict[str, int]:
    """Item id -> Label Studio task id of the tasks waiting for an adjudicator's answer.

    Their current label is still one reviewer's disputed answer: leave them out of training
    until they are settled."""
    pending = ledger.adjudications(project)
    return {i: int(v["task_id"]) for i, v in pending.items() if not v.get("settled")}


def _as_annotation(r: LabelRow, item: Item) -> Annotation:
    return Annotation(
        item=item, label=r.label, boxes=r.boxes, source="human", round=r.round, reviewer=r.reviewer,
        model_version=r.model_version, created_at=parse_time(r.created_at), weight=r.weight,
        review_outcome=r.review_outcome, ls_task_id=r.ls_task_id, ls_annotation_id=r.ls_annotation_id,
        # A stored human answer without label or boxes that is not a skip is "no objects".
        empty_ok=r.label is None and r.review_outcome != "skipped",
    )


def _same_answer(row: LabelRow, label: str | None, boxes: Sequence[Any]) -> bool:
    return row.label == label and tuple(row.boxes) == tuple(boxes)


def _adjudicated(votes: list[Annotation], new: list[Annotation]) -> Decision:
    """The adjudicator's (latest new) answer decides; agreement is measured over all votes."""
    final = max(new, key=lambda a: (a.created_at, a.ls_annotation_id or 0))
    if final.label is not None:
        share = sum(a.label == final.label for a in votes) / len(votes)
    else:
        others = [a for a in votes if a is not final]
        share = sum(box_f1(final.boxes, a.boxes) for a in others) / len(others) if others else 1.0
    return Decision(
        label=final.label, agreement=share, n_votes=len(votes), needs_adjudication=False,
        method="adjudicated", confidence=1.0, boxes=final.boxes,
    )


def _apply_consensus(
    ledger: Ledger,
    client: Collector,
    touched: set[str],
    known: dict[str, Item],
    *,
    round_id: int | None,
    overlap: int,
    method: Method,
    min_agreement: float,
    classes: Sequence[str] | None,
) -> tuple[int, int, list[float]]:
    """Append consensus rows / request adjudications; returns (rows, adjudications, agreements)."""
    project = client.project_title
    adjudications: dict[str, Any] = ledger.adjudications(project)
    record: dict[str, Any] = ledger.consensus(project)
    latest_version: dict[int, LabelRow] = {}
    last_row: dict[str, LabelRow] = {}
    for r in ledger.all_labels(source="human"):  # by row id: later versions overwrite
        last_row[r.item_id] = r
        if r.ls_annotation_id is not None and not (r.reviewer or "").startswith(CONSENSUS_PREFIX):
            latest_version[r.ls_annotation_id] = r
    answers: dict[str, list[LabelRow]] = {}
    for r in latest_version.values():
        if r.item_id in known:
            answers.setdefault(r.item_id, []).append(r)
    ready = {i: rows for i, rows in answers.items() if len(rows) >= overlap or i in adjudications}
    votes = {i: [_as_annotation(r, known[i]) for r in rows] for i, rows in ready.items()}
    # All ready items at once, so Dawid-Skene sees every reviewer's record.
    decisions = decide_many(votes, method=method, classes=classes, min_agreement=min_agreement)
    new_rows: list[Annotation] = []
    n_adj = 0
    agreements: list[float] = []
    open_ids = {i for i, v in adjudications.items() if not v.get("settled")}
    for item_id in sorted((touched | open_ids) & set(ready)):
        d = decisions.get(item_id)
        if d is None:
            continue  # every answer was a skip: nothing to decide
        vs = [a for a in votes[item_id] if a.review_outcome != "skipped"]
        task_id = ready[item_id][-1].ls_task_id
        pending = adjudications.get(item_id)
        if pending is not None:
            if pending.get("settled") is None:
                fresh = [a for a in vs if a.ls_annotation_id not in set(pending["seen"])]
                if not fresh:
                    continue  # still waiting for the adjudicator
                d = _adjudicated(vs, fresh)
                pending["settled"] = datetime.now().astimezone().isoformat()
            else:
                d = _adjudicated(vs, [a for a in vs if a.ls_annotation_id not in set(pending["seen"])] or vs)
        elif d.needs_adjudication:
            if task_id is None:
                continue
            reason = (f"{d.n_votes} reviewers disagree (agreement {d.agreement:.2f} < {min_agreement:.2f})"
                      if d.label is not None or d.boxes else f"{d.n_votes} reviewers are split evenly")
            client.request_adjudication(int(task_id), reason=reason)  # type: ignore[attr-defined]
            adjudications[item_id] = {
                "task_id": int(task_id), "reason": reason, "requested_at": datetime.now().astimezone().isoformat(),
                "seen": [a.ls_annotation_id for a in votes[item_id]],
            }
            ledger.record_adjudications(project, adjudications)  # at once: a crash must not ask twice
            record[item_id] = {"label": None, "agreement": d.agreement, "n_votes": d.n_votes,
                               "method": d.method, "needs_adjudication": True}
            n_adj += 1
            agreements.append(d.agreement)
            continue
        agreements.append(d.agreement)
        record[item_id] = {"label": d.label, "agreement": d.agreement, "n_votes": d.n_votes,
                           "method": d.method, "needs_adjudication": False}
        last = last_row.get(item_id)
        if last is not None and (last.reviewer or "").startswith(CONSENSUS_PREFIX) \
                and _same_answer(last, d.label, d.boxes):
            continue  # already the item's current label
        backing = [a for a in vs if a.label == d.label and tuple(a.boxes) == tuple(d.boxes)]
        new_rows.append(Annotation(
            item=known[item_id], label=d.label, boxes=d.boxes, source="human",
            round=round_id if round_id is not None else vs[-1].round,
            reviewer=f"{CONSENSUS_PREFIX}{d.method}",
            model_version=next((a.model_version for a in vs if a.model_version), None),
            review_outcome="accepted" if any(a.review_outcome == "accepted" for a in backing) else "corrected",
            ls_task_id=None if task_id is None else int(task_id), ls_annotation_id=None,
            empty_ok=d.label is None and not d.boxes,
        ))
    added = ledger.add_labels(new_rows)
    ledger.record_adjudications(project, adjudications)
    ledger.record_consensus(project, record)
    return added, n_adj, agreements


def summarise(results: Sequence[SyncResult]) -> dict[str, int]:
    """The counts of several :class:`SyncResult` added up, by field."""
    keys = ("pulled", "added", "accepted", "corrected", "skipped", "consensus", "adjudications")
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
