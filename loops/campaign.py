"""Rounds until a stop condition: the loop behind ``pseudolabel run`` and the demo.

Between rounds the queued tasks must be answered: ``answer`` is called with the round result
(the demo passes a simulated reviewer; a real project waits for people, polling Label Studio
until the queue is answered or a time-out passes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from loops.round import Reviewer, RoundResult, ledger_for, run_round
from pseudolabel.config import Config


@dataclass
class CampaignResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    termination: str | None = None
    seconds: float = 0.0


AnswerFn = Callable[[RoundResult], dict[str, Any]]


def run_campaign(
    cfg: Config,
    reviewer: Reviewer | None,
    *,
    answer: AnswerFn | None = None,
    console: Console | None = None,
    progress: bool = True,
    max_rounds: int | None = None,
) -> CampaignResult:
    """Run rounds until the config's stop rule fires; returns one row per round.

    ``answer(result) -> {"corrections": n, ...}`` is called after every round that queued
    tasks. The termination condition is recorded in the ledger (``meta.termination``).
    """
    console = console or Console()
    out = CampaignResult()
    t0 = time.perf_counter()
    limit = max_rounds if max_rounds is not None else cfg.stop.max_rounds + 1
    with ledger_for(cfg) as ledger:
        for _ in range(limit):
            t_round = time.perf_counter()
            res = run_round(cfg, reviewer, ledger=ledger, progress=progress, log=console.print)
            row: dict[str, Any] = {
                "round": res.round_id, "labels": res.labels_used, "pseudo": res.pseudo_used,
                "accuracy": res.metrics.get("accuracy"), "macro_f1": res.metrics.get("macro_f1"),
                "queued": res.queued, "corrections": 0, "seconds": 0.0,
            }
            if res.stop_reason is None and answer is not None and res.queued:
                stats = answer(res)
                row["corrections"] = int(stats.get("corrections", 0))
                ledger.update_round(res.round_id, info={"review": stats})
            row["seconds"] = round(time.perf_counter() - t_round, 1)
            out.rows.append(row)
            if res.stop_reason is not None:
                out.termination = res.stop_reason
                break
            if res.queued == 0 and answer is None:
                out.termination = "waiting_for_reviews: tasks are queued in Label Studio; run again later"
                break
        else:
            out.termination = f"max_rounds: stopped after {limit} rounds"
            ledger.set_meta("termination", {"reason": out.termination})
    out.seconds = time.perf_counter() - t0
    return out


def rounds_table(rows: list[dict[str, Any]], *, title: str = "rounds") -> Table:
    """labels = seed + human labels used for training; pseudo = pseudo-labels used; accuracy and
    macro-F1 on the holdout; queued = tasks pushed; fixed = predictions the reviewer corrected."""
    t = Table(title=title, caption="labels: seed+human used in training; fixed: corrections by reviewers")
    for name in ("round", "labels", "pseudo", "accuracy", "macro-F1", "queued", "fixed", "sec"):
        t.add_column(name, justify="right")
    for r in rows:
        t.add_row(
            str(r["round"]), str(r["labels"]), str(r.get("pseudo", 0)),
            f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-",
            f"{r['macro_f1']:.4f}" if r["macro_f1"] is not None else "-",
            str(r["queued"]), str(r["corrections"]), f"{r['seconds']:.1f}",
        )
    return t
