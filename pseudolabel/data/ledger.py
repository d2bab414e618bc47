"""The ledger: SQLite (WAL) source of truth for a campaign.

- ``items``: every image we know, with its split (seed / pool / holdout).
- ``labels``: append-only, one row per label with provenance (source, round, reviewer,
  model version, time). Nothing is ever updated or deleted; the *current* label of an item is
  a query in which a human label always wins over a seed label, which wins over a pseudo-label.
- ``rounds`` / ``stages``: which stage of which round has completed, so a killed round resumes.
- ``review_tasks``: our item id <-> Label Studio task id, so a retried push never duplicates.
- ``meta``: small key/values (last sync time, termination condition).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pseudolabel.types import SOURCES, SPLITS, Annotation, Box, Item, Source, Split, utcnow

SCHEMA = """
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


def _boxes_to_json(boxes: Sequence[Box], *, empty: bool = False) -> str | None:
    """JSON of ``boxes``; ``None`` when there are none, unless ``empty`` (an explicit "no
    objects on this image" label, stored as ``[]`` so that it counts as a label)."""
    if not boxes:
        return "[]" if empty else None
    return json.dumps([_box_dict(b) for b in boxes])


def _box_dict(b: Box) -> dict[str, object]:
    d: dict[str, object] = {"xyxy": [b.x1, b.y1, b.x2, b.y2], "label": b.label, "score": b.score,
                            "polygon": [list(p) for p in b.polygon] if b.polygon else None}
    # Ground-truth flags are written only when set, so rows written before they existed and
    # rows written now read the same way.
    if b.crowd:
        d["crowd"] = True
    if b.difficult:
        d["difficult"] = True
    return d


def _boxes_from_json(text: str | None) -> tuple[Box, ...]:
    if not text:
        return ()
    out = []
    for d in json.loads(text):
        x1, y1, x2, y2 = d["xyxy"]
        poly = tuple((float(x), float(y)) for x, y in d["polygon"]) if d.get("polygon") else None
        out.append(Box(x1, y1, x2, y2, d["label"], d.get("score"), poly,
                       crowd=bool(d.get("crowd", False)), difficult=bool(d.get("difficult", False))))
    return tuple(out)


def _explicit_empty(a: Annotation) -> bool:
    """A detection label saying "no objects": no class label, no boxes, not a skip, and from a
    seed set or a reviewer (an empty pseudo-label says nothing and is not stored as a label)."""
    return a.label is None and not a.boxes and a.review_outcome != "skipped" and a.source != "pseudo" \
        and a.empty_ok


boxes_to_json = _boxes_to_json
boxes_from_json = _boxes_from_json


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
        self._db.executescript(SCHEMA)

    # -- plumbing ---------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> "_Tx":
        return _Tx(self._db)

    # -- items --------------------------------------------------------------------------------
    def add_items(self, items: Iterable[Item], *, split: Split) -> int:
        """Insert items; returns how many were new. An item already known keeps the
        strongest split (holdout > seed > pool), so the holdout is never trained on."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        now = utcnow().isoformat()
        new = 0
        with self._tx():
            for it in items:
                row = self._db.execute("SELECT split FROM items WHERE id = ?", (it.id,)).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO items (id, path, width, height, split, added_at) VALUES (?,?,?,?,?,?)",
                        (it.id, str(it.path), it.width, it.height, split, now),
                    )
                    new += 1
                elif _SPLIT_RANK[split] > _SPLIT_RANK[row["split"]]:
                    self._db.execute("UPDATE items SET split = ? WHERE id = ?", (split, it.id))
        return new

    def items(self, split: Split | None = None) -> list[Item]:
        q = "SELECT id, path, width, height FROM items"
        args: tuple[Any, ...] = ()
        if split is not None:
            q += " WHERE split = ?"
            args = (split,)
        q += " ORDER BY added_at, id"
        return [Item(r["id"], Path(r["path"]), r["width"], r["height"]) for r in self._db.execute(q, args)]

    def item(self, item_id: str) -> Item:
        r = self._db.execute("SELECT id, path, width, height FROM items WHERE id = ?", (item_id,)).fetchone()
        if r is None:
            raise KeyError(f"unknown item id {item_id!r}")
        return Item(r["id"], Path(r["path"]), r["width"], r["height"])

    def split_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT split, COUNT(*) AS n FROM items GROUP BY split").fetchall()
        return {s: 0 for s in SPLITS} | {r["split"]: r["n"] for r in rows}

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
                    (a.item.id, a.label, _boxes_to_json(a.boxes, empty=_explicit_empty(a)), a.source, a.round, a.reviewer,
                     a.model_version, a.created_at.isoformat(), a.weight, a.review_outcome,
                     a.ls_task_id, a.ls_annotation_id),
                )
                added += cur.rowcount
        return added

    def label_history(self, item_id: str) -> list[LabelRow]:
        rows = self._db.execute("SELECT * FROM labels WHERE item_id = ? ORDER BY id", (item_id,)).fetchall()
        return [self._label_row(r) for r in rows]

    def all_labels(self, *, source: Source | None = None) -> list[LabelRow]:
        q, args = "SELECT * FROM labels", ()
        if source is not None:
            q, args = q + " WHERE source = ?", (source,)
        return [self._label_row(r) for r in self._db.execute(q + " ORDER BY id", args)]

    @staticmethod
    def _label_row(r: sqlite3.Row) -> LabelRow:
        return LabelRow(
            r["id"], r["item_id"], r["label"], _boxes_from_json(r["boxes"]), r["source"], r["round"],
            r["reviewer"], r["model_version"], r["created_at"], r["weight"], r["review_outcome"],
            r["ls_task_id"], r["ls_annotation_id"],
        )

    def current_labels(self, *, pseudo_round: int | None = None) -> dict[str, LabelRow]:
        """The current label of every labelled item: item id -> the winning row.

        A human label always wins, then a seed label, then a pseudo-label; within one source the
        latest wins. Skipped reviews (no label) do not count. Pseudo-labels are taken only from
        ``pseudo_round`` (default: the latest round that wrote any), so stale guesses of older
        models never come back.
        """
        if pseudo_round is None:
            r = self._db.execute("SELECT MAX(round) AS r FROM labels WHERE source = 'pseudo'").fetchone()
            pseudo_round = r["r"]
        rows = self._db.execute(
            "SELECT * FROM labels WHERE (label IS NOT NULL OR boxes IS NOT NULL)"
            " AND (source != 'pseudo' OR round IS ?) ORDER BY id",
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
        """Items by the source of their current label, e.g. {'seed': 20, 'human': 40, 'pseudo': 300}."""
        counts = Counter(r.source for r in self.current_labels().values())
        return {s: counts.get(s, 0) for s in SOURCES}

    def human_labelled_ids(self) -> set[str]:
        """Items with a seed or human label (not pseudo): exactly the items whose current label
        is a seed or human one, since those outrank pseudo-labels (one query, no row objects)."""
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

    def stage_done(self, round_id: int, stage: str) -> bool:
        return self._db.execute(
            "SELECT 1 FROM stages WHERE round = ? AND stage = ?", (round_id, stage)
        ).fetchone() is not None

    def stage_info(self, round_id: int, stage: str) -> dict[str, Any] | None:
        r = self._db.execute("SELECT info FROM stages WHERE round = ? AND stage = ?", (round_id, stage)).fetchone()
        return None if r is None else (json.loads(r["info"]) if r["info"] else {})

    def mark_stage(self, round_id: int, stage: str, info: Mapping[str, Any] | None = None) -> None:
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO stages (round, stage, completed_at, info) VALUES (?,?,?,?)",
                (round_id, stage, utcnow().isoformat(), json.dumps(info or {})),
            )

    def update_round(self, round_id: int, *, model_version: str | None = None,
                     metrics: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None) -> None:
        with self._tx():
            if model_version is not None:
                self._db.execute("UPDATE rounds SET model_version = ? WHERE id = ?", (model_version, round_id))
            if metrics is not None:
                self._db.execute("UPDATE rounds SET metrics = ? WHERE id = ?", (json.dumps(metrics), round_id))
            if info is not None:
                old = self.round(round_id).get("info") or {}
                self._db.execute("UPDATE rounds SET info = ? WHERE id = ?", (json.dumps(old | dict(info)), round_id))

    def finish_round(self, round_id: int, *, status: str = "done") -> None:
        with self._tx():
            self._db.execute(
                "UPDATE rounds SET status = ?, finished_at = ? WHERE id = ?",
                (status, utcnow().isoformat(), round_id),
            )

    def round(self, round_id: int) -> dict[str, Any]:
        r = self._db.execute("SELECT * FROM rounds WHERE id = ?", (round_id,)).fetchone()
        if r is None:
            raise KeyError(f"no round {round_id}")
        return self._round_dict(r)

    def rounds(self) -> list[dict[str, Any]]:
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

    def set_task_state(self, project: str, item_id: str, state: str) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE review_tasks SET state = ? WHERE project = ? AND item_id = ?", (state, project, item_id)
            )

    def review_tasks(self, project: str | None = None, *, state: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM review_tasks WHERE 1=1", []
        if project is not None:
            q += " AND project = ?"
            args.append(project)
        if state is not None:
            q += " AND state = ?"
            args.append(state)
        return [dict(r) for r in self._db.execute(q + " ORDER BY round, score DESC", args)]

    def task_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM review_tasks GROUP BY state").fetchall()
        return {"queued": 0, "answered": 0, "skipped": 0} | {r["state"]: r["n"] for r in rows}

    def queued_item_ids(self) -> set[str]:
        return {r["item_id"] for r in self._db.execute("SELECT item_id FROM review_tasks")}

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        r = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if r is None else json.loads(r["value"])

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


    # -- files (ingest skip) -----------------------------------------------------------------
    def known_files(self) -> dict[str, tuple[int, int, str, int, int]]:
        """``path -> (size bytes, mtime_ns, item_id, width px, height px)`` for every
        remembered file; pass it to ``scan_folder(..., known=...)``."""
        return {
            r[0]: (r[1], r[2], r[3], r[4], r[5])
            for r in self._db.execute("SELECT path, size, mtime_ns, item_id, width, height FROM files")
        }

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

    def forget_files(self, paths: Iterable[str | Path]) -> int:
        """Delete the records of ``paths`` (files gone from disk); returns how many existed."""
        n = 0
        with self._tx():
            for p in paths:
                n += self._db.execute("DELETE FROM files WHERE path = ?", (str(p),)).rowcount
        return n


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT / ROLLBACK; nested use joins the outer transaction."""

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


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def iter_chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
