"""kill -9 of a round at every stage, then a rerun; two rounds at once on one workdir.

One campaign per test; each fault is one round of it: the round runs as its own process
(``tests/faults/driver.py``) that stops dead at the point under test and is killed with
SIGKILL there; the same command run again must finish the round, and the invariants of
:mod:`faults.invariants` must all be 0. Between faults the simulated reviewer answers and
skips some tasks through the API, so every round has answers to pull and queued tasks left.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import pytest

from . import table
from .campaign import Campaign, Spawned
from .invariants import INVARIANTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Representative in CI: training, an import cut in half, imported but not recorded.
CI_POINTS = ("train", "mid_push", "import_record")
OTHER_POINTS = ("sync", "evaluate", "pseudo_label", "select", "finish")


def _summary(output: str) -> dict[str, Any]:
    """The JSON line ``round`` prints last."""
    line = next(ln for ln in reversed(output.splitlines()) if ln.startswith("{"))
    return json.loads(line)


def _state(c: Campaign) -> dict[str, Any]:
    """What the killed process left: tasks in Label Studio, tasks in the ledger, the running round's stages."""
    from pseudolabel.data.ledger import Ledger

    with Ledger(c.ledger_path) as ledger:
        rid = ledger.running_round()
        return {"ls_tasks": c.client.count_tasks(), "ledger_tasks": len(ledger.review_tasks()),
                "running": rid, "stages": [] if rid is None else ledger.round(rid)["stages"]}


def _check_left(point: str, before: dict[str, Any], left: dict[str, Any], batch: int) -> None:
    """The kill happened where it was meant to (so each row tests what it says)."""
    new_ls = left["ls_tasks"] - before["ls_tasks"]
    if point == "sync":
        assert left["running"] is None  # a new round's sync runs before the round opens
    else:
        assert left["running"] is not None
    expect_stages = {"train": ["sync"], "evaluate": ["sync", "train"], "pseudo_label": ["sync", "train", "evaluate",
                     "stop_check"], "select": ["sync", "train", "evaluate", "stop_check", "pseudo_label"]}
    if point in expect_stages:
        assert left["stages"] == expect_stages[point] and new_ls == 0
    if point == "mid_push":
        assert 0 < new_ls < batch and left["ledger_tasks"] == before["ledger_tasks"], (before, left)
    if point == "import_record":
        assert new_ls == batch and left["ledger_tasks"] == before["ledger_tasks"], (before, left)
    if point == "finish":
        assert "push" in left["stages"] and new_ls == batch


def kill_chain(c: Campaign, points: tuple[str, ...]) -> None:
    batch = 10
    first = c.cli("round")
    assert first.code == 0, first.output
    c.answer()
    for point in points:
        snap = c.snapshot()
        before = _state(c)
        t0 = time.perf_counter()
        proc = c.spawn(point)
        line = proc.wait_point()
        code = proc.kill()
        left = _state(c)
        rerun = c.cli("round")
        seconds = time.perf_counter() - t0
        counts = c.check(snap)
        table.record("kill -9", f"round killed at {point}", run=f"killed ({code})", rerun=f"exit {rerun.code}",
                     counts=counts, seconds=seconds,
                     note=f"left: {left['ls_tasks'] - before['ls_tasks']} new tasks in Label Studio, "
                          f"{left['ledger_tasks'] - before['ledger_tasks']} in the ledger")
        assert line.startswith(point) and code == -9
        _check_left(point, before, left, batch)
        assert rerun.code == 0, rerun.output
        res = _summary(rerun.output)
        assert res["resumed"] == (point != "sync"), res
        assert res["queued"] == batch
        assert {k: counts[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0), counts["detail"]
        assert counts["tasks"] == before["ls_tasks"] + batch
        # Mixed states for the next fault: some answered, some skipped, some left queued.
        c.answer(limit=5)
        c.skip(2)


def test_kill_at_representative_points(make_campaign: Callable[..., Campaign]) -> None:
    kill_chain(make_campaign("kill-ci"), CI_POINTS)


@pytest.mark.faults_full
def test_kill_at_every_other_point(make_campaign: Callable[..., Campaign]) -> None:
    kill_chain(make_campaign("kill-full"), OTHER_POINTS)


@pytest.mark.faults_full
def test_ctrl_c_says_where_the_round_stopped(make_campaign: Callable[..., Campaign]) -> None:
    """Ctrl-C (SIGINT) during a round: one line saying where it stopped, exit 130; the same
    command resumes there."""
    import os
    import signal

    c = make_campaign("ctrl-c")
    assert c.cli("round").code == 0
    c.answer()
    snap = c.snapshot()
    t0 = time.perf_counter()
    proc = c.spawn("evaluate", hold=True)
    proc.wait_point()
    os.kill(proc.proc.pid, signal.SIGINT)
    code = proc.proc.wait(timeout=120)
    out = proc.log.read_text()
    rerun = c.cli("round")
    counts = c.check(snap)
    table.record("kill -9", "Ctrl-C during evaluate", run=f"exit {code}", rerun=f"exit {rerun.code}", counts=counts,
                 seconds=time.perf_counter() - t0, note="says: round 2 stopped in stage evaluate")
    assert code == 130, out
    assert ("error: interrupted: round 2 stopped in stage evaluate (completed: sync, train); run the same command "
            "again to resume") in out and "Traceback" not in out
    assert rerun.code == 0 and _summary(rerun.output)["resumed"], rerun.output
    assert {k: counts[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0), counts["detail"]


def _holder(c: Campaign) -> Spawned:
    """A round held at its train stage (holding the workdir lock)."""
    holder = c.spawn("train", hold=True)
    holder.wait_point()
    return holder


def test_two_rounds_at_once(make_campaign: Callable[..., Campaign]) -> None:
    """A second round (and a sync) while one runs: exit 3 naming the holder, nothing touched."""
    c = make_campaign("concurrent")
    assert c.cli("round").code == 0
    c.answer(limit=6)
    snap = c.snapshot()
    t0 = time.perf_counter()
    holder = _holder(c)
    try:
        second = c.run_process("round", "-c", str(c.config_path))
        sync = c.run_process("sync", "-c", str(c.config_path))
    finally:
        code = holder.release()
    counts = c.check(snap)
    table.record("concurrency", "a second round (and a sync) while a round runs", run=f"exit {second.code}, "
                 f"sync exit {sync.code}", rerun=f"holder exit {code}", counts=counts,
                 seconds=time.perf_counter() - t0, note="the second names the holder's pid")
    for r in (second, sync):
        assert r.code == 3, r.output
        assert f"pid {holder.proc.pid}" in r.output and "Traceback" not in r.output
        assert len(r.lines()) <= 2, r.output
    assert code == 0
    assert {k: counts[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0), counts["detail"]
    assert counts["tasks"] == 20


@pytest.mark.faults_full
def test_two_rounds_started_together(make_campaign: Callable[..., Campaign]) -> None:
    """Two plain rounds started at the same moment: one runs, the other exits 3 (or, if the
    first was already done, runs after it); never a duplicate."""
    c = make_campaign("together")
    assert c.cli("round").code == 0
    c.answer()
    snap = c.snapshot()
    t0 = time.perf_counter()
    import subprocess
    import sys

    from .campaign import REPO

    cmd = [sys.executable, "-m", "pseudolabel.cli", "round", "-c", str(c.config_path)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    counts = c.check(snap)
    table.record("concurrency", "two rounds started at the same moment", run=f"exits {codes}", rerun="-",
                 counts=counts, seconds=time.perf_counter() - t0)
    assert codes in ([0, 3], [0, 0]), outs
    assert {k: counts[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0), counts["detail"]
