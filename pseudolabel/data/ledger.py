"""The ledger: SQLite (WAL) source of truth for a campaign.

- ``items``: every image we know, with its split (seed / pool / holdout) and its presence: an
  item whose every known file was deleted or replaced is *gone* (``gone_at``, ``gone_reason``);
  it keeps its label history but is left out of training, pseudo-labelling, selection and
  evaluation (:meth:`Ledger.items` excludes it unless asked).
- ``labels``: append-only, one row per label with provenance (source, round, reviewer,
  model version, time). Nothing is ever updated or deleted; the *current* label of an item is
  a query in which a human label always wins over a seed label, which wins over a pseudo-label.
- ``rounds`` / ``stages``: which stage of which round has completed, so a killed round resumes.
- ``review_tasks``: our item id <-> Label Studio task id, so a retried push never duplicates.
- state the loops query: ``holdout_truth``, ``consensus``, ``adjudications``,
  ``relabel_requests``, ``freematch_states``, ``terminations``, ``retrains`` (one typed method
  pair each, below).
- ``meta``: genuine small key/values only (the last sync time of each project).

The tables, their schema version and the migrations that bring an older file up to date are
in :mod:`pseudolabel.data.schema`; opening a ``Ledger`` runs them.

Why this module is over 400 lines: it is one class, the whole API of the campaign's source of
truth, one section per table (items, labels, rounds and stages, review tasks, the loops' state,
meta, the ingest file cache), each method one transaction. Splitting the class would scatter
that API; the schema and its migrations, which change for other reasons, live apart.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, NotRequired, Sequence, TypedDict

from pseudolabel.data.boxes import boxes_from_json, boxes_to_json
from pseudolabel.data.schema import (
    Transaction,
    check_meta_key,
    migrate,
    schema_version,
    truth_text,
    write_adjudications,
    write_consensus,
    write_retrain,
)
from pseudolabel.types import SOURCES, SPLITS, Annotation, Box, Item, Source, Split, utcnow

# Which split wins when the same bytes arrive in two sets: an image in the holdout must never
# be trained on or queued; a seed image is already labelled and must not be queued.
_SPLIT_RANK = {"holdout": 3, "seed": 2, "pool": 1}
_SOURCE_RANK = {"human": 3, "seed": 2, "pseudo": 1}


@dataclass(frozen=True)
class LabelRow:
    """One stored label (a row of ``labels``)."""

    id: int
    item_id: str
    label: str | None
    boxes: tuple[Box, ...]
    source: Source
    round: int | None
    reviewer: str | None
    model_version: str | None
    created_at: str
    weight: float
    review_outcome: str | None
    ls_task_id: int | None
    ls_annotation_id: int | None


def _explicit_empty(a: Annotation) -> bool:
    """A detection label saying "no objects": no class label, no boxes, not a skip, and from a
    seed set or a reviewer (an empty pseudo-label says nothing and is not stored as a label)."""
    return a.label is None and not a.boxes and a.review_outcome != "skipped" and a.source != "pseudo" \
        and a.empty_ok


class ConsensusRecord(TypedDict):
    """The decision for one item reviewed by several people (``loops.review``)."""

    label: str | None            # decided class; None for boxes or while adjudication is pending
    agreement: float             # share of votes for the decision, in [0, 1]
    n_votes: int
    method: str                  # "majority", "dawid_skene", "adjudicated"
    needs_adjudication: bool


class Adjudication(TypedDict):
    """A task sent back to an adjudicator because its reviewers disagreed."""

    task_id: int                 # Label Studio task id
    reason: str
    requested_at: str            # ISO-8601 with offset
    seen: list[int]              # Label Studio annotation ids present when it was requested
    settled: NotRequired[str]    # ISO-8601 time the adjudicator's answer was applied; absent while open


class FreeMatchRecord(TypedDict):
    """FreeMatch's self-adaptive threshold state (see :mod:`pseudolabel.selftrain`)."""

    tau: float                   # global confidence EMA, in [0, 1]
    class_probs: list[float]     # (C,) class-probability EMA


class Termination(TypedDict):
    """Why the campaign stopped."""

    reason: str                  # "<rule>: <details>", e.g. "max_rounds: round 5 of 5"
    round: NotRequired[int]      # the round that stopped, when one did


@dataclass(frozen=True)
class GoneItem:
    """An item no longer on disk: every file known to hold its bytes vanished or changed."""

    item: Item                   # as last known (path = where it was)
    split: Split
    gone_at: str                 # UTC ISO-8601
    reason: str                  # e.g. "file deleted since it was scanned"


class Ledger:
    """SQLite ledger of one campaign. Open with ``Ledger(path)``; use as a context manager."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        migrate(self._db, where=self.path)

    # -- plumbing ---------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The ledger file's schema version (``PRAGMA user_version``)."""
        return schema_version(self._db)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> Transaction:
        return Transaction(self._db)

    # -- items --------------------------------------------------------------------------------
    def add_items(self, items: Iterable[Item], *, split: Split) -> int:
        """Insert items; returns how many were new. An item already known keeps the
        strongest split (holdout > seed > pool), so the holdout is never trained on. A gone
        item seen again (its bytes are back on disk) is present again, at the path given."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        now = utcnow().isoformat()
        new = 0
        with self._tx():
            for it in items:
                row = self._db.execute("SELECT split, gone_at FROM items WHERE id = ?", (it.id,)).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO items (id, path, width, height, split, added_at) VALUES (?,?,?,?,?,?)",
                        (it.id, str(it.path), it.width, it.height, split, now),
                    )
                    new += 1
                    continue
                if _SPLIT_RANK[split] > _SPLIT_RANK[row["split"]]:
                    self._db.execute("UPDATE items SET split = ? WHERE id = ?", (split, it.id))
                if row["gone_at"] is not None:
                    self._db.execute("UPDATE items SET gone_at = NULL, gone_reason = NULL, path = ? WHERE id = ?",
                                     (str(it.path), it.id))
        return new

    def items(self, split: Split | None = None, *, include_gone: bool = False) -> list[Item]:
        """Items of ``split`` (all splits when None), oldest first. Gone items (no file holds
        their bytes any more) are left out unless ``include_gone``: nothing may read them."""
        q = "SELECT id, path, width, height FROM items WHERE 1=1"
        args: tuple[Any, ...] = ()
        if split is not None:
            q += " AND split = ?"
            args = (split,)
        if not include_gone:
            q += " AND gone_at IS NULL"
        q += " ORDER BY added_at, id"
        return [Item(r["id"], Path(r["path"]), r["width"], r["height"]) for r in self._db.execute(q, args)]

    def item(self, item_id: str) -> Item:
        """The item with this id, present or gone; KeyError when unknown."""
        r = self._db.execute("SELECT id, path, width, height FROM items WHERE id = ?", (item_id,)).fetchone()
        if r is None:
            raise KeyError(f"unknown item id {item_id!r}")
        return Item(r["id"], Path(r["path"]), r["width"], r["height"])

    def split_counts(self, *, include_gone: bool = False) -> dict[str, int]:
        """Items by split: present ones, or all ever seen with ``include_gone``."""
        where = "" if include_gone else " WHERE gone_at IS NULL"
        rows = self._db.execute(f"SELECT split, COUNT(*) AS n FROM items{where} GROUP BY split").fetchall()
        return {s: 0 for s in SPLITS} | {r["split"]: r["n"] for r in rows}

    def mark_gone(self, reasons: Mapping[str, str]) -> int:
        """Mark items gone: ``item id -> reason`` (e.g. "file deleted since it was scanned").
        Their labels stay; :meth:`items` and :meth:`current_labels` leave them out from now
        on. Returns how many were present before; an unknown id raises ValueError."""
        now = utcnow().isoformat()
        n = 0
        with self._tx():
            for item_id, reason in reasons.items():
                if self._db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                    raise ValueError(f"cannot mark unknown item {item_id!r} gone")
                n += self._db.execute(
                    "UPDATE items SET gone_at = ?, gone_reason = ? WHERE id = ? AND gone_at IS NULL",
                    (now, str(reason), item_id),
                ).rowcount
        return n

    def gone_items(self) -> dict[str, GoneItem]:
        """Item id -> :class:`GoneItem` for every gone item, in the order they went."""
        rows = self._db.execute(
            "SELECT id, path, width, height, split, gone_at, gone_reason FROM items"
            " WHERE gone_at IS NOT NULL ORDER BY gone_at, id")
        return {r["id"]: GoneItem(Item(r["id"], Path(r["path"]), r["width"], r["height"]), r["split"],
                                  r["gone_at"], r["gone_reason"] or "") for r in rows}

    def move_items(self, paths: Mapping[str, Path | str]) -> int:
        """Record where items' bytes are now (``item id -> path``): the old file was renamed
        or deleted but the same bytes are found elsewhere. Returns how many rows changed."""
        n = 0
        with self._tx():
            for item_id, path in paths.items():
                n += self._db.execute("UPDATE items SET path = ? WHERE id = ? AND path != ?",
                                      (str(path), item_id, str(path))).rowcount
        return n

    # -- labels -------------------------------------------------------------------------------
    def add_labels(self, annotations: Iterable[Annotation]) -> int:
        """Append labels; returns how many rows were added. Never overwrites anything: an
        annotation already pulled from Label Studio (same ``ls_annotation_id`` and save time) is
        not added twice, so re-running a pull is harmless; a later edit is a new row."""
        added = 0
        with self._tx():
            for a in annotations:
                if a.source not in SOURCES:
                    raise ValueError(f"unknown label source {a.source!r}; choose one of: {', '.join(SOURCES)}")
                if self._db.execute("SELECT 1 FROM items WHERE id = ?", (a.item.id,)).fetchone() is None:
                    raise ValueError(f"label for unknown item {a.item.id} ({a.item.path}); ingest the item first")
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO labels (item_id, label, boxes, source, round, reviewer, model_version,"
                    " created_at, weight, review_outcome, ls_task_id, ls_annotation_id)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (a.item.id, a.label, boxes_to_json(a.boxes, empty=_explicit_empty(a)), a.source, a.round, a.reviewer,
                     a.model_version, a.created_at.isoformat(), a.weight, a.review_outcome,
                     a.ls_task_id, a.ls_annotation_id),
                )
                added += cur.rowcount
        return added

    def label_history(self, item_id: str) -> list[LabelRow]:
        """Every label row of ``item_id``, oldest first."""
        rows = self._db.execute("SELECT * FROM labels WHERE item_id = ? ORDER BY id", (item_id,)).fetchall()
        return [self._label_row(r) for r in rows]

    def all_labels(self, *, source: Source | None = None) -> list[LabelRow]:
        """Every label row (of ``source`` only, when given), oldest first."""
        q = "SELECT * FROM labels"
        args: tuple[str, ...] = ()
        if source is not None:
            q, args = q + " WHERE source = ?", (source,)
        return [self._label_row(r) for r in self._db.execute(q + " ORDER BY id", args)]

    @staticmethod
    def _label_row(r: sqlite3.Row) -> LabelRow:
        boxes = boxes_from_json(r["boxes"], where=f"{r['item_id']}: ledger label {r['id']}") if r["boxes"] else ()
        return LabelRow(
            r["id"], r["item_id"], r["label"], boxes, r["source"], r["round"], r["reviewer"], r["model_version"],
            r["created_at"], r["weight"], r["review_outcome"], r["ls_task_id"], r["ls_annotation_id"],
        )

    def current_labels(self, *, pseudo_round: int | None = None, include_gone: bool = False) -> dict[str, LabelRow]:
        """The current label of every labelled item: item id -> the winning row.

        A human label always wins, then a seed label, then a pseudo-label; within one source the
        latest wins. Skipped reviews (no label) do not count. Pseudo-labels are taken only from
        ``pseudo_round`` (default: the latest round that wrote any), so stale guesses of older
        models never come back. Gone items are left out unless ``include_gone`` (their bytes
        are no longer on disk: nothing can train on them; their history stays in
        :meth:`label_history`).
        """
        if pseudo_round is None:
            r = self._db.execute("SELECT MAX(round) AS r FROM labels WHERE source = 'pseudo'").fetchone()
            pseudo_round = r["r"]
        gone = "" if include_gone else " AND item_id NOT IN (SELECT id FROM items WHERE gone_at IS NOT NULL)"
        rows = self._db.execute(
            "SELECT * FROM labels WHERE (label IS NOT NULL OR boxes IS NOT NULL)"
            " AND (source != 'pseudo' OR round IS ?)" + gone + " ORDER BY id",
            (pseudo_round,),
        ).fetchall()
        best: dict[str, LabelRow] = {}
        for r in rows:
            row = self._label_row(r)
            cur = best.get(row.item_id)
            if cur is None or _SOURCE_RANK[row.source] >= _SOURCE_RANK[cur.source]:
                best[row.item_id] = row
        return best

    def label_counts(self) -> dict[str, int]:
        """Present items by the source of their current label, e.g. {'seed': 20, 'human': 40, 'pseudo': 300}."""
        counts = Counter(r.source for r in self.current_labels().values())
        return {s: counts.get(s, 0) for s in SOURCES}

    def human_labelled_ids(self) -> set[str]:
        """Items with a seed or human label (not pseudo): exactly the items whose current label
        is a seed or human one, since those outrank pseudo-labels (one query, no row objects).
        Gone items count too: this is the labelling effort spent (the label budget)."""
        rows = self._db.execute(
            "SELECT DISTINCT item_id FROM labels WHERE source IN ('seed', 'human')"
            " AND (label IS NOT NULL OR boxes IS NOT NULL)"
        )
        return {r["item_id"] for r in rows}

    # -- rounds and stages --------------------------------------------------------------------
    def open_round(self, *, config: Mapping[str, Any] | None = None) -> tuple[int, bool]:
        """Return ``(round_id, resumed)``: the unfinished round if there is one, else a new one."""
        r = self._db.execute("SELECT id FROM rounds WHERE status = 'running' ORDER BY id DESC LIMIT 1").fetchone()
        if r is not None:
            return int(r["id"]), True
        last = self._db.execute("SELECT MAX(id) AS m FROM rounds").fetchone()["m"]
        rid = 1 if last is None else int(last) + 1
        with self._tx():
            self._db.execute(
                "INSERT INTO rounds (id, started_at, config) VALUES (?,?,?)",
                (rid, utcnow().isoformat(), json.dumps(config) if config is not None else None),
            )
        return rid, False

    def running_round(self) -> int | None:
        """The id of the unfinished round (one that a crash or Ctrl-C interrupted), if any."""
        r = self._db.execute("SELECT id FROM rounds WHERE status = 'running' ORDER BY id DESC LIMIT 1").fetchone()
        return None if r is None else int(r["id"])

    def stage_done(self, round_id: int, stage: str) -> bool:
        """Whether round ``round_id`` completed ``stage``."""
        return self._db.execute(
            "SELECT 1 FROM stages WHERE round = ? AND stage = ?", (round_id, stage)
        ).fetchone() is not None

    def stage_info(self, round_id: int, stage: str) -> dict[str, Any] | None:
        """The info dict ``stage`` of round ``round_id`` recorded, or None if it has not completed."""
        r = self._db.execute("SELECT info FROM stages WHERE round = ? AND stage = ?", (round_id, stage)).fetchone()
        return None if r is None else (json.loads(r["info"]) if r["info"] else {})

    def mark_stage(self, round_id: int, stage: str, info: Mapping[str, Any] | None = None) -> None:
        """Record that round ``round_id`` completed ``stage``, with ``info`` (JSON-ready)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO stages (round, stage, completed_at, info) VALUES (?,?,?,?)",
                (round_id, stage, utcnow().isoformat(), json.dumps(info or {})),
            )

    def update_round(self, round_id: int, *, model_version: str | None = None,
                     metrics: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None) -> None:
        """Set the round's model version, metrics and / or info (each when given)."""
        with self._tx():
            if model_version is not None:
                self._db.execute("UPDATE rounds SET model_version = ? WHERE id = ?", (model_version, round_id))
            if metrics is not None:
                self._db.execute("UPDATE rounds SET metrics = ? WHERE id = ?", (json.dumps(metrics), round_id))
            if info is not None:
                old = self.round(round_id).get("info") or {}
                self._db.execute("UPDATE rounds SET info = ? WHERE id = ?", (json.dumps(old | dict(info)), round_id))

    def finish_round(self, round_id: int, *, status: str = "done") -> None:
        """Close the round with ``status`` (``"done"``, or why it ended) and the finish time."""
        with self._tx():
            self._db.execute(
                "UPDATE rounds SET status = ?, finished_at = ? WHERE id = ?",
                (status, utcnow().isoformat(), round_id),
            )

    def round(self, round_id: int) -> dict[str, Any]:
        """Round ``round_id`` as a dict (id, status, times, model version, metrics, info,
        stages); KeyError if there is none."""
        r = self._db.execute("SELECT * FROM rounds WHERE id = ?", (round_id,)).fetchone()
        if r is None:
            raise KeyError(f"no round {round_id}")
        return self._round_dict(r)

    def rounds(self) -> list[dict[str, Any]]:
        """Every round as a dict (as :meth:`round`), oldest first."""
        return [self._round_dict(r) for r in self._db.execute("SELECT * FROM rounds ORDER BY id")]

    def _round_dict(self, r: sqlite3.Row) -> dict[str, Any]:
        stages = [s["stage"] for s in self._db.execute(
            "SELECT stage FROM stages WHERE round = ? ORDER BY completed_at", (r["id"],))]
        return {
            "id": r["id"], "status": r["status"], "started_at": r["started_at"], "finished_at": r["finished_at"],
            "model_version": r["model_version"],
            "metrics": json.loads(r["metrics"]) if r["metrics"] else {},
            "info": json.loads(r["info"]) if r["info"] else {},
            "stages": stages,
        }

    # -- review tasks -------------------------------------------------------------------------
    def record_tasks(self, project: str, round_id: int, tasks: Mapping[str, int], *,
                     kind: str = "uncertain", scores: Mapping[str, float] | None = None) -> int:
        """Remember pushed tasks (item id -> Label Studio task id); returns how many were new."""
        now = utcnow().isoformat()
        new = 0
        with self._tx():
            for item_id, task_id in tasks.items():
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO review_tasks (item_id, project, task_id, round, kind, score, pushed_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (item_id, project, int(task_id), round_id, kind, (scores or {}).get(item_id), now),
                )
                new += cur.rowcount
        return new

    def record_task_id(self, project: str, item_id: str, task_id: int) -> None:
        """Point an item's review task at another Label Studio task (after a duplicate was removed)."""
        with self._tx():
            self._db.execute("UPDATE review_tasks SET task_id = ? WHERE project = ? AND item_id = ?",
                             (int(task_id), project, item_id))

    def set_task_state(self, project: str, item_id: str, state: str) -> None:
        """Set the review task of ``item_id`` in ``project`` to ``state`` (queued, answered, skipped)."""
        with self._tx():
            self._db.execute(
                "UPDATE review_tasks SET state = ? WHERE project = ? AND item_id = ?", (state, project, item_id)
            )

    def review_tasks(self, project: str | None = None, *, state: str | None = None) -> list[dict[str, Any]]:
        """Review task rows, of ``project`` and in ``state`` when given."""
        q, args = "SELECT * FROM review_tasks WHERE 1=1", []
        if project is not None:
            q += " AND project = ?"
            args.append(project)
        if state is not None:
            q += " AND state = ?"
            args.append(state)
        return [dict(r) for r in self._db.execute(q + " ORDER BY round, score DESC", args)]

    def task_counts(self) -> dict[str, int]:
        """Number of review tasks by state (queued, answered, skipped always present)."""
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM review_tasks GROUP BY state").fetchall()
        return {"queued": 0, "answered": 0, "skipped": 0} | {r["state"]: r["n"] for r in rows}

    def queued_item_ids(self) -> set[str]:
        """Ids of the items that have a review task (in any state)."""
        return {r["item_id"] for r in self._db.execute("SELECT item_id FROM review_tasks")}

    # -- holdout truth -------------------------------------------------------------------------
    def set_holdout_truth(self, truth: Mapping[str, str]) -> int:
        """Store the truth of holdout items: ``item id -> class name`` (classification) or
        ``-> boxes JSON`` (:func:`~pseudolabel.data.boxes.boxes_to_json`, ``"[]"`` = no objects). Rows for other items
        are kept (an item that left the holdout, or went, keeps its truth). Returns how many
        rows were written; an unknown item raises ValueError."""
        now = utcnow().isoformat()
        with self._tx():
            self._require_items(truth, what="holdout truth")
            for item_id, value in truth.items():
                self._db.execute(
                    "INSERT INTO holdout_truth (item_id, truth, updated_at) VALUES (?,?,?)"
                    " ON CONFLICT (item_id) DO UPDATE SET truth = excluded.truth, updated_at = excluded.updated_at"
                    " WHERE truth != excluded.truth",
                    (item_id, truth_text(item_id, value), now),
                )
        return len(truth)

    def holdout_truth(self) -> dict[str, str]:
        """Item id -> truth as stored by :meth:`set_holdout_truth`, for every item that has one."""
        return {r["item_id"]: r["truth"] for r in self._db.execute("SELECT item_id, truth FROM holdout_truth")}

    # -- consensus and adjudication (several reviewers per task) ---------------------------------
    def consensus(self, project: str) -> dict[str, ConsensusRecord]:
        """Item id -> the latest consensus decision in Label Studio project ``project``."""
        rows = self._db.execute(
            "SELECT * FROM consensus WHERE project = ? ORDER BY item_id", (project,)).fetchall()
        return {r["item_id"]: ConsensusRecord(label=r["label"], agreement=r["agreement"], n_votes=r["n_votes"],
                                              method=r["method"], needs_adjudication=bool(r["needs_adjudication"]))
                for r in rows}

    def record_consensus(self, project: str, records: Mapping[str, ConsensusRecord]) -> int:
        """Insert or replace the decisions ``item id -> record`` of ``project``; returns how many."""
        with self._tx():
            self._require_items(records, what=f"consensus of project {project!r}")
            return write_consensus(self._db, project, records, now=utcnow().isoformat())

    def adjudications(self, project: str, *, open_only: bool = False) -> dict[str, Adjudication]:
        """Item id -> adjudication request in ``project`` (only the unsettled ones with ``open_only``)."""
        q = "SELECT * FROM adjudications WHERE project = ?" + (" AND settled_at IS NULL" if open_only else "")
        out: dict[str, Adjudication] = {}
        for r in self._db.execute(q + " ORDER BY requested_at, item_id", (project,)):
            a = Adjudication(task_id=r["task_id"], reason=r["reason"], requested_at=r["requested_at"],
                             seen=json.loads(r["seen"]))
            if r["settled_at"] is not None:
                a["settled"] = r["settled_at"]
            out[r["item_id"]] = a
        return out

    def record_adjudications(self, project: str, records: Mapping[str, Adjudication]) -> int:
        """Insert or replace the adjudication requests ``item id -> record`` of ``project``
        (a record with ``settled`` is closed); returns how many rows were written."""
        with self._tx():
            self._require_items(records, what=f"adjudication of project {project!r}")
            return write_adjudications(self._db, project, records)

    # -- label-quality relabel requests ---------------------------------------------------------
    def relabel_requests(self) -> dict[str, int]:
        """Item id -> round in which its label was sent back for a second review."""
        return {r["item_id"]: r["round"] for r in self._db.execute("SELECT item_id, round FROM relabel_requests")}

    def add_relabel_requests(self, requests: Mapping[str, int]) -> int:
        """Record ``item id -> round`` requests; an item already asked keeps its first round
        (each label is sent back once). Returns how many were new."""
        now = utcnow().isoformat()
        n = 0
        with self._tx():
            self._require_items(requests, what="relabel request")
            for item_id, rid in requests.items():
                n += self._db.execute(
                    "INSERT OR IGNORE INTO relabel_requests (item_id, round, requested_at) VALUES (?,?,?)",
                    (item_id, int(rid), now)).rowcount
        return n

    # -- FreeMatch state ------------------------------------------------------------------------
    def freematch_state(self) -> FreeMatchRecord | None:
        """The latest saved FreeMatch state, or None before the first."""
        r = self._db.execute("SELECT tau, class_probs FROM freematch_states ORDER BY id DESC LIMIT 1").fetchone()
        return None if r is None else FreeMatchRecord(tau=r["tau"], class_probs=json.loads(r["class_probs"]))

    def save_freematch_state(self, state: FreeMatchRecord, *, round_id: int | None = None) -> None:
        """Append ``state`` (it becomes the current one); ``round_id``: the round that computed it."""
        tau, probs = float(state["tau"]), [float(v) for v in state["class_probs"]]
        if not 0.0 <= tau <= 1.0 or not probs:
            raise ValueError(f"FreeMatch state needs tau in [0, 1] and a non-empty class_probs; got tau={tau}, "
                             f"{len(probs)} class probabilities")
        with self._tx():
            self._db.execute("INSERT INTO freematch_states (round, tau, class_probs, saved_at) VALUES (?,?,?,?)",
                             (round_id, tau, json.dumps(probs), utcnow().isoformat()))

    # -- termination ----------------------------------------------------------------------------
    def termination(self) -> Termination | None:
        """Why the campaign last stopped, or None if it never did."""
        r = self._db.execute("SELECT round, reason FROM terminations ORDER BY id DESC LIMIT 1").fetchone()
        if r is None:
            return None
        out = Termination(reason=r["reason"])
        if r["round"] is not None:
            out["round"] = r["round"]
        return out

    def set_termination(self, reason: str, *, round_id: int | None = None) -> None:
        """Record why the campaign stopped (``round_id``: the round that stopped, if one did)."""
        if not reason:
            raise ValueError("a termination needs a reason")
        with self._tx():
            self._db.execute("INSERT INTO terminations (round, reason, at) VALUES (?,?,?)",
                             (round_id, reason, utcnow().isoformat()))

    # -- retraining runs ------------------------------------------------------------------------
    def retrain_history(self) -> list[dict[str, Any]]:
        """The record of every retraining run, oldest first (as given to :meth:`add_retrain`)."""
        return [json.loads(r["record"]) for r in self._db.execute("SELECT record FROM retrains ORDER BY id")]

    def add_retrain(self, record: Mapping[str, Any]) -> int:
        """Append a retraining run's record (needs ``accepted`` and ``reason``; ``published``
        and ``finished_at`` are also kept as columns); returns its row id."""
        with self._tx():
            return write_retrain(self._db, record)

    def _require_items(self, ids: Iterable[str], *, what: str) -> None:
        for item_id in ids:
            if self._db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise ValueError(f"{what} for unknown item {item_id!r}; ingest the item first")

    # -- meta: genuine small key/values (e.g. the last sync time of a project) ----------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``. Keys whose state moved to
        tables in schema version 3 raise ValueError naming the method to use instead."""
        check_meta_key(key)
        r = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if r is None else json.loads(r["value"])

    def set_meta(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``; see :meth:`get_meta` for moved keys."""
        check_meta_key(key)
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


    # -- files (ingest skip) -----------------------------------------------------------------
    def known_files(self, paths: Iterable[str | Path] | None = None) -> dict[str, tuple[int, int, str, int, int]]:
        """``path -> (size bytes, mtime_ns, item_id, width px, height px)`` for every
        remembered file (or only those of ``paths`` that are remembered); pass it to
        ``scan_folder(..., known=...)`` or ``recheck``."""
        q = "SELECT path, size, mtime_ns, item_id, width, height FROM files"
        if paths is None:
            return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in self._db.execute(q)}
        out = {}
        for p in paths:
            r = self._db.execute(q + " WHERE path = ?", (str(p),)).fetchone()
            if r is not None:
                out[r[0]] = (r[1], r[2], r[3], r[4], r[5])
        return out

    def remember_files(self, rows: Iterable[Sequence[Any]]) -> int:
        """Insert or replace ``(path, size, mtime_ns, item_id, width, height)`` rows (e.g.
        ``ScanResult.file_rows()``); returns how many rows were written."""
        n = 0
        with self._tx():
            for i, row in enumerate(rows):
                if len(row) != 6:
                    raise ValueError(
                        f"remember_files row {i} = {row!r}: expected (path, size, mtime_ns, item_id, width, height)"
                    )
                path, size, mtime_ns, item_id, width, height = row
                self._db.execute(
                    "INSERT OR REPLACE INTO files (path, size, mtime_ns, item_id, width, height) VALUES (?,?,?,?,?,?)",
                    (str(path), int(size), int(mtime_ns), str(item_id), int(width), int(height)),
                )
                n += 1
        return n

    def duplicate_files(self) -> int:
        """How many scanned files are byte copies of another scanned file (same item id)."""
        r = self._db.execute("SELECT COALESCE(SUM(n - 1), 0) AS d FROM (SELECT COUNT(*) AS n FROM files "
                             "GROUP BY item_id HAVING COUNT(*) > 1)").fetchone()
        return int(r["d"])

    def forget_files(self, paths: Iterable[str | Path]) -> int:
        """Delete the records of ``paths`` (files gone from disk); returns how many existed."""
        n = 0
        with self._tx():
            for p in paths:
                n += self._db.execute("DELETE FROM files WHERE path = ?", (str(p),)).rowcount
        return n


def parse_time(text: str) -> datetime:
    """A time the ledger stored (``created_at`` and the like: ISO-8601 with its offset)."""
    return datetime.fromisoformat(text)
