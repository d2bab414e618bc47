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
    """A finished campaign: one row per round (the round's summary), why it stopped, wall seconds."""

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
    force: bool = False,
) -> CampaignResult:
    """Run rounds until a stop rule fires, nothing is left to do, or (``answer`` None) after
    one round; returns one row per round.

    ``answer(result) -> {"corrections": n, ...}`` is called after every round that did not
    stop: the demo answers through a simulated reviewer, ``pseudolabel run --wait M`` waits
    for people. Without ``answer`` a single round runs (the next scheduled run continues).
    A round that finds nothing new to learn from ends the loop (no retraining on unchanged
    labels). The termination condition is recorded in the ledger (``Ledger.termination()``).
    """
    console = console or Console()
    out = CampaignResult()
    t0 = time.perf_counter()
    limit = max_rounds if max_rounds is not None else cfg.stop.max_rounds + 1
    with ledger_for(cfg) as ledger:
        for _ in range(limit):
            t_round = time.perf_counter()
            res = run_round(cfg, reviewer, ledger=ledger, progress=progress, log=console.print, force=force)
            if res.idle is not None:
                out.termination = res.idle
                break
            row: dict[str, Any] = {
                "round": res.round_id, "labels": res.labels_used, "pseudo": res.pseudo_used,
                "accuracy": res.metrics.get("accuracy"), "macro_f1": res.metrics.get("macro_f1"),
                "queued": res.queued, "corrections": 0, "seconds": 0.0,
            }
            if cfg.task != "classify":
                row |= {k: res.metrics.get(k) for k in ("map50", "map50_95", "mask_map50", "mask_map50_95", "miou")
                        if k in res.metrics}
            if res.stop_reason is None and answer is not None:
                stats = answer(res)
                row["corrections"] = int(stats.get("corrections", 0))
                if "edits_per_image" in stats:
                    row["edits_per_image"] = float(stats["edits_per_image"])
                ledger.update_round(res.round_id, info={"review": stats})
            row["seconds"] = round(time.perf_counter() - t_round, 1)
            out.rows.append(row)
            if res.stop_reason is not None:
                out.termination = res.stop_reason
                break
            if answer is None:
                waiting = len(ledger.review_tasks(state="queued"))
                out.termination = (f"waiting for reviewers: {waiting} tasks queued in Label Studio; "
                                   "the next run continues")
                break
        else:
            out.termination = f"max_rounds: stopped after {limit} rounds"
            ledger.set_termination(out.termination)
    out.seconds = time.perf_counter() - t0
    return out


def rounds_table(rows: list[dict[str, Any]], *, title: str = "rounds") -> Table:
    """labels = seed + human labels used for training; pseudo = pseudo-labels used; the holdout
    metrics (accuracy and macro-F1, or mAP50 / mAP50-95 (+ mask mAP50, mIoU) for detection);
    queued = tasks pushed; fixed = predictions the reviewer corrected; edits = box edits."""
    det = any("map50" in r for r in rows)
    metrics = [("map50", "mAP50"), ("map50_95", "mAP50-95")] if det else [("accuracy", "accuracy"),
                                                                          ("macro_f1", "macro-F1")]
    if any("mask_map50" in r for r in rows):
        metrics += [("mask_map50", "mask mAP50"), ("miou", "mIoU")]
    t = Table(title=title, caption="labels: seed+human used in training; fixed: corrections by reviewers")
    cols = ["round", "labels", "pseudo", *[m[1] for m in metrics], "queued", "fixed"]
    if det:
        cols.append("edits/img")
    for name in (*cols, "sec"):
        t.add_column(name, justify="right")
    for r in rows:
        vals = [f"{r[k]:.4f}" if r.get(k) is not None else "-" for k, _ in metrics]
        extra = [f"{r['edits_per_image']:.2f}" if r.get("edits_per_image") is not None else "-"] if det else []
        t.add_row(str(r["round"]), str(r["labels"]), str(r.get("pseudo", 0)), *vals,
                  str(r["queued"]), str(r["corrections"]), *extra, f"{r['seconds']:.1f}")
    return t
