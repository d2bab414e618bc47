"""Write the report folder: ``round-NNNN.html`` per round and ``index.html`` (default folder:
``<workdir>/reports``). Each page is one self-contained file, written atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from pseudolabel.config import Config
from pseudolabel.data.ledger import LabelRow, Ledger
from pseudolabel.report.data import RoundReport, RoundSummary, SelectedItem, gather_round, summaries
from pseudolabel.utils import atomic_write_text

logger = logging.getLogger(__name__)
Log = Callable[[str], None]


def _write(path: Path, page: str) -> None:
    atomic_write_text(path, page)
    path.chmod(0o644)  # a page to share (the temp file behind the atomic write is private: 0600)


def default_out_dir(cfg: Config) -> Path:
    """``<workdir>/reports``."""
    return cfg.workdir / "reports"


def _figures(r: RoundReport) -> dict[str, bytes]:
    from pseudolabel.report import plots

    rounds = [h.round_id for h in r.history]
    figs: dict[str, bytes] = {
        "learning_curve": plots.learning_curve([h.labels_used for h in r.history], [h.metric for h in r.history],
                                               rounds, metric=r.metric_name, target=r.target, current=r.round.round_id),
        "sources": plots.stacked_bars(
            rounds, {k: [getattr(c, k) for c in r.sources] for k in ("seed", "human", "consensus", "pseudo")},
            plots.SOURCE_COLOURS, ylabel="labelled items"),
    }
    if any(c.answered or c.skipped for c in r.reviews):
        figs["reviews"] = plots.stacked_bars(
            rounds, {k: [getattr(c, k) for c in r.reviews] for k in ("accepted", "corrected", "skipped")},
            plots.OUTCOME_COLOURS, ylabel="answers to the round's queue",
            rate=[c.acceptance for c in r.reviews], rate_label="acceptance")
    if any(v is not None for vals in r.per_class.values() for v in vals):
        figs["per_class"] = plots.per_class_heatmap(r.per_class, rounds, name=r.per_class_name)
    if r.confusion is not None:
        figs["confusion"] = plots.confusion(r.confusion, r.classes)
    elif r.task != "classify" and any(v is not None for v in (r.round.metrics.get("per_class_ap50") or {}).values()):
        figs["per_class_bars"] = plots.per_class_bars(
            {c: (r.round.metrics.get("per_class_ap50") or {}).get(c) for c in r.classes}, name="AP50")
    if r.pool is not None:
        figs["uncertainty"] = plots.uncertainty_histogram(r.pool.uncertainty, r.pool.selected,
                                                          name=r.pool.uncertainty_name)
        if r.pool.map_xy is not None and r.pool.map_rows is not None:
            rows = r.pool.map_rows
            figs["map"] = plots.embedding_map(r.pool.map_xy, [r.pool.predicted[i] for i in rows],
                                              r.pool.selected[rows], r.classes, explained=r.pool.explained)
    return figs


def _thumbnails(cfg: Config, r: RoundReport) -> list[tuple[SelectedItem, bytes | None, str]]:
    from pseudolabel.report import plots

    out: list[tuple[SelectedItem, bytes | None, str]] = []
    for it in r.selected:
        try:
            data, mime = plots.thumbnail(it.path, boxes=it.boxes, classes=r.classes,
                                         min_score=cfg.selection.predraw_conf)
            out.append((it, data, mime))
        except (OSError, ValueError) as e:  # a file moved or damaged since the round: say so on the page
            out.append((it, None, f"{it.path}: {e}"))
    return out


def write_round_page(cfg: Config, ledger: Ledger, round_id: int, *, out_dir: Path | None = None,
                     rows: Sequence[LabelRow] | None = None, all_summaries: Sequence[RoundSummary] | None = None,
                     ) -> Path:
    """Write ``round-NNNN.html`` for ``round_id`` into ``out_dir`` (default
    :func:`default_out_dir`); returns its path. ``ValueError`` for an unknown round. Map points
    and thumbnails are capped by ``report.max_points`` / ``report.max_thumbnails``."""
    from pseudolabel.report.html import page_name, round_page

    t0 = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(cfg)
    hist = list(all_summaries) if all_summaries is not None else summaries(cfg, ledger)
    report, _ = gather_round(cfg, ledger, round_id, rows=rows, all_summaries=hist)
    figs = _figures(report)
    thumbs = _thumbnails(cfg, report)
    ids = [h.round_id for h in hist]
    pos = ids.index(round_id)
    neighbours = (ids[pos - 1] if pos > 0 else None, ids[pos + 1] if pos + 1 < len(ids) else None)
    page = round_page(report, figs, thumbs, neighbours=neighbours,
                      seconds_note=f" in {time.perf_counter() - t0:.1f} s")
    path = out_dir / page_name(round_id)
    _write(path, page)
    return path


def write_index(cfg: Config, ledger: Ledger, *, out_dir: Path | None = None,
                all_summaries: Sequence[RoundSummary] | None = None) -> Path:
    """Write ``index.html`` into ``out_dir``: headline figures, the learning curve, one row per
    round, linked to the round pages present in the folder. Returns its path."""
    from pseudolabel.report import plots
    from pseudolabel.report.html import index_page, page_name
    from pseudolabel.types import utcnow

    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(cfg)
    hist = list(all_summaries) if all_summaries is not None else summaries(cfg, ledger)
    pages = {h.round_id for h in hist if (out_dir / page_name(h.round_id)).exists()}
    curve = None
    if hist:
        curve = plots.learning_curve([h.labels_used for h in hist], [h.metric for h in hist],
                                     [h.round_id for h in hist], metric=cfg.stop.metric, target=cfg.stop.target)
    page = index_page(cfg.project, cfg.task, cfg.stop.metric, cfg.stop.target, hist, pages, curve=curve,
                      termination=ledger.termination(), generated_at=utcnow().isoformat(),
                      labels_by_source=ledger.label_counts())
    path = out_dir / "index.html"
    _write(path, page)
    return path


def write_reports(cfg: Config, ledger: Ledger, *, rounds: Sequence[int] | None = None, out_dir: Path | None = None,
                  log: Log | None = None) -> list[Path]:
    """Write the pages of ``rounds`` (default: every round in the ledger), then the index.

    Returns the paths written, the index last. ``log`` gets one line per page (path and
    seconds). Raises ``ValueError`` when the ledger has no round yet or a round is unknown.
    """
    hist = summaries(cfg, ledger)
    if not hist:
        raise ValueError(f"no round in {ledger.path} yet: run `pseudolabel round` first")
    known = {h.round_id for h in hist}
    wanted = [h.round_id for h in hist] if rounds is None else list(rounds)
    bad = [r for r in wanted if r not in known]
    if bad:
        raise ValueError(f"no round {bad[0]} in {ledger.path}; rounds there: {min(known)}..{max(known)}")
    rows = ledger.all_labels()
    written = []
    for rid in wanted:
        t0 = time.perf_counter()
        p = write_round_page(cfg, ledger, rid, out_dir=out_dir, rows=rows, all_summaries=hist)
        written.append(p)
        if log is not None:
            log(f"  report: round {rid} -> {p} ({time.perf_counter() - t0:.1f} s)")
    idx = write_index(cfg, ledger, out_dir=out_dir, all_summaries=hist)
    written.append(idx)
    if log is not None:
        log(f"  report: index -> {idx}")
    return written


def report_round(cfg: Config, ledger: Ledger, round_id: int, *, log: Log | None = None) -> Path | None:
    """The report step at the end of a round: write the round's page and the index (nothing
    when ``report.enabled`` is false).

    Never raises (except on ``KeyboardInterrupt`` / ``SystemExit``): a report that cannot be
    written is a warning in the log and in :mod:`logging`, and the round's result stands.
    Returns the page written, or None after a failure."""
    if not cfg.report.enabled:
        return None
    try:
        t0 = time.perf_counter()
        paths = write_reports(cfg, ledger, rounds=[round_id])
        if log is not None:
            log(f"  report: {paths[0]} ({time.perf_counter() - t0:.1f} s)")
        return paths[0]
    except Exception as e:  # noqa: BLE001 - any failure of the report must leave the round intact
        msg = f"report of round {round_id} not written: {type(e).__name__}: {e}"
        logger.warning(msg, exc_info=True)
        if log is not None:
            log(f"  warning: {msg}")
        return None
