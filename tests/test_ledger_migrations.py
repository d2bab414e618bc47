"""Schema versions: a ledger written by the first release (tests/fixtures/ledger_v1_*.sqlite,
made with that release's code by tests/fixtures/make_ledger_v1.py) opens with this code, is
migrated, and every piece of state reads back as that release's API read it
(tests/fixtures/ledger_v1_*.expected.json); newer ledgers are refused; a failed migration
leaves the previous version; a new ledger has exactly the schema a migrated one has."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import pseudolabel.data.schema as schema_mod
from pseudolabel.data.ledger import Ledger
from pseudolabel.data.schema import SCHEMA_VERSION, LedgerVersionError
from pseudolabel.types import Annotation

FIXTURES = Path(__file__).parent / "fixtures"
MOVED_META = ("holdout_truth", "relabel_requested", "freematch_state", "termination", "retrain_history")


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / f"{name}.sqlite"
    shutil.copyfile(FIXTURES / f"{name}.sqlite", dst)
    return dst


def _expected(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def _plain(x: Any) -> Any:
    """As the fixture's JSON holds it (tuples become lists, dataclasses dicts)."""
    return json.loads(json.dumps(x, default=str))


NEW_BOX_FLAGS = ("crowd", "difficult")
"""Box fields the first release did not have (issue 14): a box from its ledger must read back
with both False; they are then left out of the comparison with what that release read."""


def _as_release(x: Any) -> Any:
    """``x`` (plain JSON) without :data:`NEW_BOX_FLAGS`, each asserted False first."""
    if isinstance(x, list):
        return [_as_release(v) for v in x]
    if isinstance(x, dict):
        if {"x1", "y1", "x2", "y2", "label"} <= set(x):
            assert all(x.get(f) is False for f in NEW_BOX_FLAGS), x
            x = {k: v for k, v in x.items() if k not in NEW_BOX_FLAGS}
        return {k: _as_release(v) for k, v in x.items()}
    return x


def _read_back(led: Ledger) -> dict[str, Any]:
    """Everything the first release's API read, through this release's API (boxes as that
    release's :class:`Box` had them, see :func:`_as_release`)."""
    return _as_release(_plain({
        "items": {s: [[i.id, str(i.path), i.width, i.height] for i in led.items(s)] for s in ("seed", "pool", "holdout")},
        "all_items": [[i.id, str(i.path), i.width, i.height] for i in led.items()],
        "split_counts": led.split_counts(),
        "all_labels": [dataclasses.asdict(r) for r in led.all_labels()],
        "current_labels": {k: dataclasses.asdict(r) for k, r in led.current_labels().items()},
        "label_counts": led.label_counts(),
        "human_labelled_ids": sorted(led.human_labelled_ids()),
        "rounds": led.rounds(),
        "stage_info": {f"{r['id']}:{s}": led.stage_info(r["id"], s) for r in led.rounds() for s in r["stages"]},
        "review_tasks": led.review_tasks(),
        "task_counts": led.task_counts(),
        "queued_item_ids": sorted(led.queued_item_ids()),
        "known_files": {k: list(v) for k, v in led.known_files().items()},
    }))


@pytest.mark.parametrize("name", ["ledger_v1_classify", "ledger_v1_detect"])
def test_release_ledger_is_migrated_and_reads_back_the_same(tmp_path: Path, name: str) -> None:
    path = _copy(name, tmp_path)
    want = _expected(name)
    assert _user_version(path) == 0                      # the first release set no version
    with Ledger(path) as led:
        assert led.schema_version() == SCHEMA_VERSION == 3
        got = _read_back(led)
        for key, value in got.items():
            assert value == want[key], key
        meta = want["meta"]
        # state that moved out of meta reads back the same through its table's methods
        assert led.holdout_truth() == meta["holdout_truth"]
        assert _plain(led.termination()) == meta["termination"]
        assert led.relabel_requests() == meta.get("relabel_requested", {})
        assert _plain(led.freematch_state()) == meta.get("freematch_state")
        assert led.retrain_history() == meta.get("retrain_history", [])
        projects = [k.split(":", 1)[1] for k in meta if k.startswith("consensus:")]
        for p in projects:
            assert _plain(led.consensus(p)) == meta[f"consensus:{p}"], p
            assert _plain(led.adjudications(p)) == meta[f"adjudications:{p}"], p
        # what stays in meta is still there; what moved is gone from it
        stays = {k: v for k, v in meta.items() if k.startswith("last_sync:")}
        assert {k: led.get_meta(k) for k in stays} == stays
        left = {r[0] for r in led._db.execute("SELECT key FROM meta")}
        assert left == set(stays)
    # opening again migrates nothing and reads the same
    with Ledger(path) as led:
        assert _read_back(led) == got


def test_migrated_values_spelled_out(tmp_path: Path) -> None:
    """The same check with the values written out by hand (not read from the expected JSON)."""
    with Ledger(_copy("ledger_v1_classify", tmp_path)) as led:
        assert led.termination() == {"round": 2, "reason": "target_reached: holdout accuracy 0.9500 >= 0.95"}
        fm = led.freematch_state()
        assert fm is not None and fm["tau"] == 0.7231 and fm["class_probs"][:2] == [0.05, 0.15]
        assert sorted(led.holdout_truth().values()) == ["1", "9"]
        assert list(led.relabel_requests().values()) == [1]
        adj = led.adjudications("digits review")
        assert [a.get("settled") for a in adj.values()] == ["2025-03-01T13:18:00+01:00", None]  # by request time
        assert len(led.adjudications("digits review", open_only=True)) == 1
        assert [a["seen"] for a in led.adjudications("digits review", open_only=True).values()] == [[102, 103]]
        cons = led.consensus("digits review")
        assert sorted((c["label"], c["needs_adjudication"]) for c in cons.values() if c["label"]) == [("9", False)]
        assert [c["method"] for c in led.consensus("shelf: v2").values()] == ["dawid_skene"]
        assert led.adjudications("shelf: v2") == {}
        assert [(r["accepted"], r["published"]) for r in led.retrain_history()] == [(True, "/w/models/v1.pt"),
                                                                                   (False, None)]
        assert [r["status"] for r in led.rounds()] == ["done", "stopped", "running"]
        assert led.open_round() == (3, True)                # the running round resumes after the upgrade
        assert led.get_meta("last_sync:digits review") == "2025-03-01T13:20:00+01:00"


def test_migrated_ledger_keeps_working(tmp_path: Path) -> None:
    with Ledger(_copy("ledger_v1_classify", tmp_path)) as led:
        it = led.items("pool")[0]
        assert led.add_labels([Annotation(it, label="2", source="human", round=3, ls_annotation_id=999)]) == 1
        led.set_termination("max_rounds: round 3 of 3", round_id=3)
        assert led.termination() == {"round": 3, "reason": "max_rounds: round 3 of 3"}
        led.add_retrain({"accepted": True, "reason": "r", "published": None, "finished_at": "t"})
        assert len(led.retrain_history()) == 3
        assert led.mark_gone({it.id: "file deleted since it was scanned"}) == 1
        assert it.id not in {i.id for i in led.items()}


def _schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
        cols = {t: [c[1:3] for c in db.execute(f"PRAGMA table_info({t})")]
                for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return [(t, n) for t, n in rows] + sorted((t, json.dumps(c)) for t, c in cols.items())


def test_new_ledger_has_the_migrated_schema(tmp_path: Path) -> None:
    migrated = _copy("ledger_v1_classify", tmp_path)
    Ledger(migrated).close()
    Ledger(tmp_path / "new.sqlite").close()
    assert _user_version(tmp_path / "new.sqlite") == SCHEMA_VERSION
    assert _schema(tmp_path / "new.sqlite") == _schema(migrated)


def test_newer_ledger_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 2}")
    with pytest.raises(LedgerVersionError) as e:
        Ledger(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"schema version {SCHEMA_VERSION + 2} is newer" in msg and f"schema version {SCHEMA_VERSION};" in msg
    assert _user_version(path) == SCHEMA_VERSION + 2       # untouched


def test_failed_migration_leaves_the_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _copy("ledger_v1_classify", tmp_path)

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("disk full")

    monkeypatch.setattr(schema_mod, "MIGRATIONS", (*schema_mod.MIGRATIONS, (4, broken)))
    monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", 4)
    with pytest.raises(RuntimeError, match="disk full"):
        Ledger(path)
    assert _user_version(path) == 3                       # versions 2 and 3 committed, 4 rolled back
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    monkeypatch.undo()
    with Ledger(path) as led:
        assert led.termination() is not None


def test_two_processes_opening_an_old_ledger_migrate_it_once(tmp_path: Path) -> None:
    path = _copy("ledger_v1_classify", tmp_path)
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def open_it() -> None:
        try:
            barrier.wait()
            Ledger(path).close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Ledger(path) as led:
        assert len(led.retrain_history()) == 2 and len(led.holdout_truth()) == 2   # moved once, not thrice
        assert len(led.consensus("digits review")) == 2
