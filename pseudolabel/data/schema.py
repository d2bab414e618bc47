"""The ledger's SQLite schema: version 1 as the first release wrote it, the migrations since,
and the procedure that applies them (:func:`migrate`, run by every ``Ledger(path)``).

Schema version: ``PRAGMA user_version``. Version 1 is the schema of the first release (which
did not set the pragma: a ledger with tables and version 0 is version 1). :data:`MIGRATIONS`
lists the forward migrations in order; opening a ledger applies those it lacks, each in one
transaction that also bumps the version, so a crash mid-migration leaves the previous version
intact. A ledger whose version is newer than this code's :data:`SCHEMA_VERSION` is refused
(:class:`LedgerVersionError`): an older release must not write into a schema it does not know.

To change the schema: never edit :data:`SCHEMA_V1` or a released migration; append a
``(version, step)`` to :data:`MIGRATIONS` (``step(db)`` runs inside the transaction, foreign
keys off) and a fixture test in ``tests/test_ledger_migrations.py``. The row writers at the
end are shared by a migration and the :class:`~pseudolabel.data.ledger.Ledger` methods, so
migrated and new rows are written the same way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# The schema of the first release, frozen: a new ledger is created with it and then migrated
# like an old one, so there is one path to the current schema. Never edit it; add a migration.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('seed', 'pool', 'holdout')),
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL REFERENCES items(id),
    label TEXT,
    boxes TEXT,
    source TEXT NOT NULL CHECK (source IN ('seed', 'human', 'pseudo')),
    round INTEGER,
    reviewer TEXT,
    model_version TEXT,
    created_at TEXT NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0,
    review_outcome TEXT,
    ls_task_id INTEGER,
    ls_annotation_id INTEGER
);
CREATE INDEX IF NOT EXISTS labels_item ON labels(item_id, source);
-- One row per saved version of a Label Studio annotation: a re-pull adds nothing, an edit
-- made later in Label Studio is appended as a new row (and, being latest, wins).
CREATE UNIQUE INDEX IF NOT EXISTS labels_ls_version ON labels(ls_annotation_id, created_at);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'stopped')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    model_version TEXT,
    metrics TEXT,
    config TEXT,
    info TEXT
);
CREATE TABLE IF NOT EXISTS stages (
    round INTEGER NOT NULL REFERENCES rounds(id),
    stage TEXT NOT NULL,
    completed_at TEXT NOT NULL,
    info TEXT,
    PRIMARY KEY (round, stage)
);
CREATE TABLE IF NOT EXISTS review_tasks (
    item_id TEXT NOT NULL REFERENCES items(id),
    project TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    round INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'uncertain',
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'answered', 'skipped')),
    score REAL,
    pushed_at TEXT NOT NULL,
    PRIMARY KEY (item_id, project)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- What ingest last saw of each file (stat + what reading it gave), so an unchanged file is
-- not re-hashed: see pseudolabel.data.ingest.scan_folder(known=...).
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
);
"""


def _v2_item_presence(db: sqlite3.Connection) -> None:
    """Items whose every known file vanished or changed are marked gone, never deleted."""
    db.execute("ALTER TABLE items ADD COLUMN gone_at TEXT")       # NULL: present
    db.execute("ALTER TABLE items ADD COLUMN gone_reason TEXT")   # e.g. "file deleted since it was scanned"


_V3_TABLES = (
    # The human-verified truth of each holdout item: a class name (classification) or the
    # boxes JSON of :func:`pseudolabel.data.boxes.boxes_to_json` ("[]" = no objects) for detection / segmentation.
    """CREATE TABLE holdout_truth (
        item_id TEXT PRIMARY KEY REFERENCES items(id),
        truth TEXT NOT NULL,
        updated_at TEXT
    )""",
    # One decision per (Label Studio project, item) when several reviewers answer a task.
    """CREATE TABLE consensus (
        project TEXT NOT NULL,
        item_id TEXT NOT NULL REFERENCES items(id),
        label TEXT,
        agreement REAL NOT NULL,
        n_votes INTEGER NOT NULL,
        method TEXT NOT NULL,
        needs_adjudication INTEGER NOT NULL,
        updated_at TEXT,
        PRIMARY KEY (project, item_id)
    )""",
    # Tasks sent back to an adjudicator; settled_at NULL while the answer is awaited.
    """CREATE TABLE adjudications (
        project TEXT NOT NULL,
        item_id TEXT NOT NULL REFERENCES items(id),
        task_id INTEGER NOT NULL,
        reason TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        seen TEXT NOT NULL,
        settled_at TEXT,
        PRIMARY KEY (project, item_id)
    )""",
    # Labels sent back for a second review by the label-quality check: once per item.
    """CREATE TABLE relabel_requests (
        item_id TEXT PRIMARY KEY REFERENCES items(id),
        round INTEGER NOT NULL,
        requested_at TEXT
    )""",
    # FreeMatch's self-adaptive threshold state after each update (the latest row is current).
    """CREATE TABLE freematch_states (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        round INTEGER,
        tau REAL NOT NULL,
        class_probs TEXT NOT NULL,
        saved_at TEXT
    )""",
    # Why the campaign stopped, each time it did (the latest row is current).
    """CREATE TABLE terminations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        round INTEGER,
        reason TEXT NOT NULL,
        at TEXT
    )""",
    # One row per retraining run; ``record`` is the whole JSON record loops.retrain writes.
    """CREATE TABLE retrains (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        accepted INTEGER NOT NULL,
        reason TEXT NOT NULL,
        published TEXT,
        finished_at TEXT,
        record TEXT NOT NULL
    )""",
)


def _v3_state_tables(db: sqlite3.Connection) -> None:
    """State that lived in ``meta`` JSON blobs moves to tables; the blobs are deleted."""
    for ddl in _V3_TABLES:
        db.execute(ddl)

    def take(key: str) -> Any:
        r = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if r is None:
            return None
        db.execute("DELETE FROM meta WHERE key = ?", (key,))
        return json.loads(r[0])

    for item_id, truth in (take("holdout_truth") or {}).items():
        db.execute("INSERT INTO holdout_truth (item_id, truth) VALUES (?, ?)", (item_id, truth_text(item_id, truth)))
    for key in [r[0] for r in db.execute("SELECT key FROM meta WHERE key LIKE 'consensus:%'")]:
        write_consensus(db, key[len("consensus:"):], take(key) or {}, now=None)
    for key in [r[0] for r in db.execute("SELECT key FROM meta WHERE key LIKE 'adjudications:%'")]:
        write_adjudications(db, key[len("adjudications:"):], take(key) or {})
    for item_id, rid in (take("relabel_requested") or {}).items():
        db.execute("INSERT INTO relabel_requests (item_id, round) VALUES (?, ?)", (item_id, int(rid)))
    fm = take("freematch_state")
    if fm:
        db.execute("INSERT INTO freematch_states (tau, class_probs) VALUES (?, ?)",
                   (float(fm["tau"]), json.dumps([float(v) for v in fm["class_probs"]])))
    term = take("termination")
    if term:
        db.execute("INSERT INTO terminations (round, reason) VALUES (?, ?)", (term.get("round"), str(term["reason"])))
    for record in take("retrain_history") or []:
        write_retrain(db, record)


Migration = Callable[[sqlite3.Connection], None]
"""One step: turns schema ``version - 1`` into ``version`` on an open connection."""
MIGRATIONS: tuple[tuple[int, Migration], ...] = (
    (2, _v2_item_presence),
    (3, _v3_state_tables),
)
"""``(version, migrate)`` in order: ``migrate(db)`` turns schema ``version - 1`` into ``version``.
It runs inside a transaction (never commits itself) with foreign keys off, as SQLite
advises for schema changes."""
SCHEMA_VERSION = MIGRATIONS[-1][0]


MOVED_META = {
    "holdout_truth": "Ledger.holdout_truth() / set_holdout_truth()",
    "consensus:": "Ledger.consensus(project) / record_consensus()",
    "adjudications:": "Ledger.adjudications(project) / record_adjudications()",
    "relabel_requested": "Ledger.relabel_requests() / add_relabel_requests()",
    "freematch_state": "Ledger.freematch_state() / save_freematch_state()",
    "termination": "Ledger.termination() / set_termination()",
    "retrain_history": "Ledger.retrain_history() / add_retrain()",
}
"""Meta keys (or key prefixes, ending in ":") whose state lives in tables since schema 3 -> the
methods to use instead."""


def check_meta_key(key: str) -> None:
    """``ValueError`` naming the replacement when ``key`` is one of :data:`MOVED_META`."""
    for moved, instead in MOVED_META.items():
        if key == moved or (moved.endswith(":") and key.startswith(moved)):
            raise ValueError(f"meta key {key!r} is no longer a meta value (ledger schema 3): use {instead}")


class LedgerVersionError(ValueError):
    """The ledger file was written by a newer release (a schema this code does not know)."""


class Transaction:
    """``with Transaction(db):`` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception;
    nested use joins the outer transaction (only the outermost commits)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._outer = True

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._outer:
            return
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def schema_version(db: sqlite3.Connection) -> int:
    """The file's schema version (``PRAGMA user_version``; 0 = new, or the first release)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _check_version(version: int, where: Path) -> None:
    if version > SCHEMA_VERSION:
        raise LedgerVersionError(
            f"{where}: ledger schema version {version} is newer than this pseudolabel's "
            f"schema version {SCHEMA_VERSION}; upgrade pseudolabel to open it"
        )


def migrate(db: sqlite3.Connection, *, where: Path) -> None:
    """Bring the ledger open on ``db`` (the file ``where``, named in errors) to
    :data:`SCHEMA_VERSION`: create version 1 (a new file) or recognise it (a first-release
    ledger, version 0 with tables), then apply the missing :data:`MIGRATIONS`, each in its own
    transaction. Two processes opening one old ledger at once are safe: each step re-reads the
    version under the write lock and skips what is done. A newer file raises
    :class:`LedgerVersionError` and is left untouched."""
    _check_version(schema_version(db), where)
    if schema_version(db) == SCHEMA_VERSION:
        return
    db.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set it before
    try:
        with Transaction(db):
            if schema_version(db) == 0:
                for ddl in SCHEMA_V1.split(";"):
                    if ddl.strip():
                        db.execute(ddl)
                db.execute("PRAGMA user_version = 1")
        for version, step in MIGRATIONS:
            with Transaction(db):
                current = schema_version(db)
                _check_version(current, where)
                if current >= version:
                    continue
                if current != version - 1:
                    raise LedgerVersionError(f"{where}: schema version {current} has no migration to {version}")
                step(db)
                db.execute(f"PRAGMA user_version = {int(version)}")
    finally:
        db.execute("PRAGMA foreign_keys=ON")


# --------------------------------------------------------------------------- rows written by a migration and the Ledger


def truth_text(item_id: str, truth: Any) -> str:
    """``truth`` as stored in ``holdout_truth.truth``: a class name or a boxes JSON string;
    ``ValueError`` naming the item for anything else."""
    if not isinstance(truth, str):
        raise ValueError(
            f"holdout truth of item {item_id} is {truth!r}: expected a class name or a boxes JSON string "
            "(pseudolabel.data.boxes.boxes_to_json)"
        )
    return truth


def write_consensus(db: sqlite3.Connection, project: str, records: Mapping[str, Mapping[str, Any]], *,
                    now: str | None) -> int:
    """Insert or replace one ``consensus`` row per item of ``records`` (``item id -> {label,
    agreement, n_votes, method, needs_adjudication}``) for ``project``; returns how many."""
    for item_id, r in records.items():
        db.execute(
            "INSERT OR REPLACE INTO consensus (project, item_id, label, agreement, n_votes, method,"
            " needs_adjudication, updated_at) VALUES (?,?,?,?,?,?,?,?)",
            (project, item_id, r["label"], float(r["agreement"]), int(r["n_votes"]), str(r["method"]),
             int(bool(r["needs_adjudication"])), now),
        )
    return len(records)


def write_adjudications(db: sqlite3.Connection, project: str, records: Mapping[str, Mapping[str, Any]]) -> int:
    """Insert or replace one ``adjudications`` row per item of ``records`` (``item id ->
    {task_id, reason, requested_at, seen, settled?}``) for ``project``; returns how many."""
    for item_id, r in records.items():
        db.execute(
            "INSERT OR REPLACE INTO adjudications (project, item_id, task_id, reason, requested_at, seen, settled_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (project, item_id, int(r["task_id"]), str(r["reason"]), str(r["requested_at"]),
             json.dumps(list(r["seen"])), r.get("settled")),
        )
    return len(records)


def write_retrain(db: sqlite3.Connection, record: Mapping[str, Any]) -> int:
    """Append one ``retrains`` row (the whole ``record`` as JSON, with its ``accepted`` and
    ``reason`` as columns); returns its id."""
    if "accepted" not in record or "reason" not in record:
        raise ValueError(f"retrain record {dict(record)!r} needs 'accepted' and 'reason'")
    cur = db.execute(
        "INSERT INTO retrains (accepted, reason, published, finished_at, record) VALUES (?,?,?,?,?)",
        (int(bool(record["accepted"])), str(record["reason"]), record.get("published"), record.get("finished_at"),
         json.dumps(record)),
    )
    return int(cur.lastrowid or 0)
