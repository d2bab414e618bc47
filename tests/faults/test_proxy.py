"""Network faults between pseudolabel and the real Label Studio, injected by a loopback proxy.

Each fault is one round of one campaign whose config points at :class:`faults.proxy.FaultProxy`:
connections dropped, HTTP 500, a server that hangs, an import the server applied but whose
answer was lost (at once, or seconds after the client gave up), a server that sends garbage
for some answers or for the whole listing. The round either absorbs the fault (retries,
reconcile) or stops with one line and exit 4; then the same command, the proxy passing
everything again, finishes the round, and the invariants must all be 0.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import table
from .campaign import Campaign
from .invariants import INVARIANTS
from .proxy import FaultProxy, Rule

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMPORT = r"^/api/projects/\d+/import"
LISTING = r"^/api/tasks/?\?"     # task listings (pull, lookups), not GET /api/tasks/<id>
# Small retry settings so that a fault that outlasts them ends a round in seconds.
TIMEOUT, RETRY = 4.0, 8.0


@pytest.fixture
def proxy(label_studio: Any) -> Iterator[FaultProxy]:
    with FaultProxy(label_studio.url) as p:
        yield p
        assert not p.errors, p.errors


@pytest.fixture
def proxied(make_campaign: Callable[..., Campaign], proxy: FaultProxy) -> Callable[[str], Campaign]:
    def make(name: str) -> Campaign:
        c = make_campaign(name, url=proxy.url, **{"label_studio.timeout": TIMEOUT,
                                                  "label_studio.retry_seconds": RETRY})
        first = c.cli("round")
        assert first.code == 0, first.output
        c.answer()
        return c
    return make


def zero(counts: dict[str, Any]) -> bool:
    return {k: counts[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0)


def fault_round(c: Campaign, proxy: FaultProxy, fault: str, rules: list[Rule], *, expect: int,
                settle: float = 0.0, sync: bool = False, note: str = "") -> tuple[Any, dict[str, Any]]:
    """One round under ``rules``; a failed round is run again without faults. Records the row
    and checks: exit code ``expect``, the fault fired, one error line, all invariants 0.
    ``sync``: run a sync before counting (a write the server applies late is cleaned up by
    the next sync, at the latest at the start of the next round)."""
    snap = c.snapshot()
    n_before = c.client.count_tasks()
    proxy.set(*rules)
    t0 = time.perf_counter()
    run = c.cli("round")
    took = time.perf_counter() - t0
    fired = proxy.fired()
    proxy.clear()
    time.sleep(settle)  # a write the proxy still holds lands meanwhile
    rerun = c.cli("round") if run.code != 0 else None
    if sync:
        swept = c.cli("sync")
        assert swept.code == 0, swept.output
    counts = c.check(snap)
    errors = [ln for ln in run.output.splitlines() if ln.startswith("error:")]
    table.record("network", fault, run=f"exit {run.code} after {took:.1f} s",
                 rerun="-" if rerun is None else f"exit {rerun.code}", counts=counts,
                 seconds=time.perf_counter() - t0, note=note or (errors[0][7:90] + "…" if errors else ""))
    assert fired > 0, f"the fault never fired: {proxy.log[-5:]}"
    assert run.code == expect, run.output
    assert "Traceback" not in run.output and run.exception is None, run.output
    if expect != 0:
        assert len(errors) == 1, run.output
        assert rerun is not None and rerun.code == 0, rerun.output if rerun else None
    assert zero(counts), counts["detail"]
    assert counts["tasks"] == n_before + 10  # the round's batch, exactly once
    c.answer()
    return run, counts


def test_network_faults(proxied: Callable[[str], Campaign], proxy: FaultProxy) -> None:
    c = proxied("network")
    fault_round(c, proxy, "connections dropped (3 reads, 1 import)",
                [Rule("drop", method="GET", times=3), Rule("drop", method="POST", path=IMPORT, times=1)], expect=0)
    fault_round(c, proxy, "import applied, its answer lost",
                [Rule("forward_drop", method="POST", path=IMPORT, times=1)], expect=0)
    fault_round(c, proxy, f"import applied {TIMEOUT + 4:g} s late, after the client timed out and imported again",
                [Rule("slow_commit", method="POST", path=IMPORT, times=1, seconds=TIMEOUT + 4)], expect=0, settle=5,
                sync=True)
    fault_round(c, proxy, "Label Studio fails during the push (every import HTTP 500)",
                [Rule("status", method="POST", path=IMPORT)], expect=4)
    # A dead server: retries within the budget, then one line; HTTP 500 / no answer at all.
    run, _ = fault_round(c, proxy, f"HTTP 500 for everything (timeout {TIMEOUT:g} s, retry_seconds {RETRY:g} s)",
                         [Rule("status")], expect=4)
    assert "HTTP 500" in run.output and "nothing is lost" in run.output
    assert run.seconds <= TIMEOUT + RETRY + 5, run.seconds
    run, _ = fault_round(c, proxy, f"server hangs (timeout {TIMEOUT:g} s, retry_seconds {RETRY:g} s)",
                         [Rule("hang", seconds=120)], expect=4)
    assert f"did not answer GET /api/version within {TIMEOUT:g} s" in run.output
    assert run.seconds <= TIMEOUT + RETRY + 5, run.seconds
    # After a sync, `pseudolabel status` sees what the invariants see: ledger and server agree.
    assert c.cli("sync").code == 0
    st = c.cli("status", "--json")
    assert st.code == 0, st.output
    info = json.loads(st.output)
    ls = info["label_studio"]
    assert ls["checked"] and ls["duplicates"] == 0 and ls["missing_in_label_studio"] == 0, ls
    assert ls["unknown_to_ledger"] == 0 and ls["tasks"] == 70, ls
    assert {k: ls["by_state"].get(k, 0) for k in info["review_tasks"]} == info["review_tasks"], (ls, info)


@pytest.mark.faults_full
def test_more_network_faults(proxied: Callable[[str], Campaign], proxy: FaultProxy) -> None:
    c = proxied("network-more")
    fault_round(c, proxy, "import answered HTTP 500 (not applied)",
                [Rule("status", method="POST", path=IMPORT, times=1)], expect=0)
    fault_round(c, proxy, "import applied, its answer lost twice",
                [Rule("forward_drop", method="POST", path=IMPORT, times=2)], expect=0)
    fault_round(c, proxy, "the project update's answer lost (model version)",
                [Rule("forward_drop", method="PATCH", path=r"^/api/projects/\d+/?$", times=1)], expect=0)
    fault_round(c, proxy, "Label Studio restarts during the sync (task listings dropped 8 s)",
                [Rule("drop", method="GET", path=LISTING, times=40)], expect=4)


def _poison(kinds: list[Callable[[dict[str, Any]], None]], *, newest: bool = True) -> Callable[[Any, str], Any]:
    """A rewrite that spoils the newest (else the oldest) answers of a task listing, one kind each."""
    def rewrite(body: Any, path: str) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
            return body
        tasks = sorted(body["tasks"], key=lambda t: -t["id"] if newest else t["id"])
        answers = [a for t in tasks for a in t.get("annotations") or []]
        for spoil, ann in zip(kinds, answers):
            spoil(ann)
        return body
    return rewrite


NESTED = "NESTED-RESULT"
GARBAGE = {
    "annotation id 'abc'": lambda a: a.update(id="abc"),
    "result is a string": lambda a: a.update(result="choices: 3"),
    "garbage timestamps": lambda a: a.update(updated_at="yesterday", created_at="yesterday"),
    "result nested 100 deep": lambda a: a.update(result=NESTED),
    "completed_by is a list": lambda a: a.update(completed_by=[1, 2]),
}


def test_server_sends_garbage_answers(proxied: Callable[[str], Campaign], proxy: FaultProxy) -> None:
    """Wrong types in some answers: those are quarantined and flagged, all others pulled, the
    round goes on; once the server sends them right, the next sync pulls them and unflags."""
    c = proxied("garbage")
    snap = c.snapshot()

    def nested(body: Any, path: str, *, newest: bool = True) -> bytes:
        spoilt = _poison(list(GARBAGE.values()), newest=newest)(body, path)
        return json.dumps(spoilt).replace(f'"{NESTED}"', "[" * 100 + "]" * 100).encode()

    proxy.set(Rule("rewrite", method="GET", path=LISTING, rewrite=nested))
    t0 = time.perf_counter()
    run = c.cli("round")
    proxy.clear()
    with open(c.workdir / "answers_quarantine.csv", newline="") as f:
        reasons = [r["reason"] for r in csv.DictReader(f)]
    flagged = flagged_tasks(c)
    sync = c.cli("sync")
    unflagged = flagged_tasks(c)
    counts = c.check(snap)
    table.record("server garbage", "5 new answers arrive with wrong types (" + ", ".join(GARBAGE) + ")",
                 run=f"exit {run.code}, {len(reasons)} quarantined, {len(flagged)} flagged",
                 rerun=f"clean sync exit {sync.code}, {len(unflagged)} still flagged", counts=counts,
                 seconds=time.perf_counter() - t0)
    assert run.code == 0 and "Traceback" not in run.output, run.output
    assert len(reasons) == len(GARBAGE) == len(flagged), reasons
    assert any("'abc' is not an integer" in r for r in reasons)
    assert any("result is str" in r for r in reasons)
    assert any("'yesterday' is not an ISO date-time" in r for r in reasons)
    assert sync.code == 0 and unflagged == set()
    assert zero(counts), counts["detail"]

    # Garbage for 5 answers the ledger already holds (a server glitch): flagged while it
    # lasts, unflagged by the first clean sync, nothing stored twice or changed.
    snap = c.snapshot()
    t0 = time.perf_counter()
    proxy.set(Rule("rewrite", method="GET", path=LISTING, rewrite=lambda b, p: nested(b, p, newest=False)))
    glitch = c.cli("sync")
    proxy.clear()
    flagged = flagged_tasks(c)
    sync = c.cli("sync")
    unflagged = flagged_tasks(c)
    counts = c.check(snap)
    table.record("server garbage", "the same garbage for 5 other answers, already in the ledger",
                 run=f"sync exit {glitch.code}, {len(flagged)} flagged",
                 rerun=f"clean sync exit {sync.code}, {len(unflagged)} still flagged", counts=counts,
                 seconds=time.perf_counter() - t0)
    assert glitch.code == 0 and sync.code == 0, (glitch.output, sync.output)
    assert len(flagged) == len(GARBAGE) and unflagged == set(), (flagged, unflagged)
    assert zero(counts), counts["detail"]


def flagged_tasks(c: Campaign) -> set[int]:
    return {t.task_id for t in c.client.listing() if str(t.data.get("note", "")).startswith("Could not use")}


@pytest.mark.faults_full
def test_server_sends_unparseable_listings(proxied: Callable[[str], Campaign], proxy: FaultProxy) -> None:
    """The whole listing is not JSON, or nested deeper than any parser takes: one line, exit 4."""
    c = proxied("unparseable")
    fault_round(c, proxy, "task listing is an HTML page (HTTP 200)",
                [Rule("body", method="GET", path=LISTING, status=200, body=b"<html><body>Bad gateway</body></html>")],
                expect=4)
    fault_round(c, proxy, "task listing nested 100,000 deep",
                [Rule("rewrite", method="GET", path=LISTING, rewrite=lambda b, p: b"[" * 100_000 + b"]" * 100_000)],
                expect=4)
    fault_round(c, proxy, "task listing is JSON of the wrong shape (a list of strings)",
                [Rule("rewrite", method="GET", path=LISTING, rewrite=lambda b, p: ["a", "b"])], expect=4)


@pytest.mark.faults_full
def test_retry_budget_with_defaults(proxied: Callable[[str], Campaign], proxy: FaultProxy) -> None:
    """How long a dead server takes to give up with the default timeout (30 s) and
    retry_seconds (60 s): bounded by their sum."""
    c = proxied("defaults")
    c.overrides = {}
    c.write_config()
    for fault, rule in (("HTTP 500 for everything (defaults: timeout 30 s, retry_seconds 60 s)", Rule("status")),
                        ("server hangs (defaults: timeout 30 s, retry_seconds 60 s)", Rule("hang", seconds=600))):
        run, _ = fault_round(c, proxy, fault, [rule], expect=4)
        assert run.seconds <= 30 + 60 + 15, run.seconds
