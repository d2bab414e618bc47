"""Bringing the campaign's files into the ledger, and checking them again before a push.

``ingest`` scans the seed, holdout and pool every round (files known by path, size and mtime
are not re-read), adds new items and the seed labels once, keeps the holdout truth, and marks
items whose files vanished or changed as gone; ``recheck_before_push`` makes sure a selected
file still holds the bytes that were scanned before it is shown to a reviewer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pseudolabel.config import Config
from pseudolabel.data.ingest import Presence, Quarantined, recheck, reconcile, scan_folder, write_quarantine_csv
from pseudolabel.data.ledger import Ledger
from pseudolabel.tasks import task_for
from pseudolabel.types import Candidate


def ingest(cfg: Config, ledger: Ledger, *, progress: bool = False,
           log: Callable[[str], None] = lambda s: None) -> dict[str, int]:
    """Scan seed, holdout and pool into the ledger; quarantine unusable files.

    Seed labels are added once (a re-run adds nothing); the pool is re-scanned every round so
    newly dropped images join it (files known by path, size and mtime are not re-read).
    The sets are read in their configured format by the task (:meth:`Task.read`). Images
    above ``data.max_pixels`` are quarantined.

    Files deleted or replaced since the last scan never stop the campaign: an item whose
    every known file vanished or now holds other bytes is marked gone (its labels kept; new
    bytes are a new item) with a quarantine row saying why, and nothing reads it any more.
    A seed or holdout set read for the first time must be complete (a listed file that does
    not exist is an error: a typo to fix); afterwards such a file is quarantined.
    Returns counts of what was new, quarantined and gone.
    """
    seen_splits = ledger.split_counts(include_gone=True)

    def on_missing(split: str) -> Literal["error", "quarantine"]:
        return "quarantine" if seen_splits[split] else "error"

    task = task_for(cfg)
    seed_set = task.read("seed", progress=progress, on_missing=on_missing("seed"))
    holdout_set = task.read("holdout", progress=progress, on_missing=on_missing("holdout"))
    seed_anns = (task.seed_annotation(it, seed_set.labels[it.id]) for it in seed_set.items)
    truth = {it.id: task.truth_to_ledger(holdout_set.labels[it.id]) for it in holdout_set.items}
    pool, known_before = _scan_pool(cfg, ledger, progress=progress)
    new = {
        "holdout": ledger.add_items(holdout_set.items, split="holdout"),
        "seed": ledger.add_items(seed_set.items, split="seed"),
        "pool": ledger.add_items(pool.items, split="pool"),
    }
    have_seed = {r.item_id for r in ledger.all_labels(source="seed")}
    ledger.add_labels(a for a in seed_anns if a.item.id not in have_seed)
    ledger.set_holdout_truth(truth)
    quarantined = [*seed_set.quarantined, *holdout_set.quarantined, *pool.quarantined]
    presence = _reconcile(ledger, [seed_set, holdout_set, pool], quarantined, known_before)
    quarantined += presence.quarantined
    if quarantined:
        write_quarantine_csv(cfg.workdir / "quarantine.csv", quarantined)
    new["quarantined"] = len(quarantined)
    new["gone"] = len(presence.gone)
    if presence.gone:
        log(f"  ingest: {len(presence.gone)} item(s) gone (files deleted or replaced; labels kept), "
            f"see {cfg.workdir / 'quarantine.csv'}")
    return new


def _scan_pool(cfg: Config, ledger: Ledger, *, progress: bool) -> tuple[Any, dict[str, Any]]:
    """Scan the pool folder; files already known by (path, size, mtime) are not re-read.
    Returns the scan and the file records as they were before it."""
    known = ledger.known_files()
    pool = scan_folder(cfg.data.pool.path, recursive=cfg.data.pool.recursive, progress=progress, known=known,
                       max_pixels=cfg.data.max_pixels)
    ledger.remember_files(pool.file_rows())
    gone = set(known) - set(pool.files)
    if gone:
        ledger.forget_files(gone)
    return pool, known


def _reconcile(ledger: Ledger, sets: Sequence[Any], quarantined: Sequence[Quarantined],
               known_before: Mapping[str, Any]) -> Presence:
    """Mark gone the items no scanned file holds any more, move those found elsewhere
    (:func:`pseudolabel.data.ingest.reconcile`)."""
    found: dict[Path, str] = {}
    for s in sets:  # seed / holdout / pool: items, then files with the same bytes as one
        found.update({Path(it.path): it.id for it in s.items})
        found.update({Path(p): i for p, i in s.duplicates})
    present = ledger.items()
    found_ids = set(found.values())
    missing = {it.id for it in present if it.id not in found_ids}
    others: dict[str, list[Path]] = {}
    for path, rec in known_before.items():  # the pool files that held them at the last scan
        if rec[2] in missing:
            others.setdefault(rec[2], []).append(Path(path))
    presence = reconcile(present, found, other_paths=others, quarantined={q.path: q.reason for q in quarantined})
    if presence.gone:
        ledger.mark_gone(presence.gone)
    if presence.moved:
        ledger.move_items(presence.moved)
    return presence


def recheck_before_push(cfg: Config, ledger: Ledger, cands: Sequence[Candidate], *,
                        log: Callable[[str], None] = lambda s: None) -> list[Candidate]:
    """The candidates whose files are still the ones scanned; the others are not pushed: they
    are quarantined with the reason and their items marked gone (a replaced file's new bytes
    join the pool at the next scan as a new item)."""
    ok, bad = recheck([c.item for c in cands], ledger.known_files([c.item.path for c in cands]))
    if bad:
        ledger.mark_gone({item_id: q.reason for item_id, q in bad.items()})
        write_quarantine_csv(cfg.workdir / "quarantine.csv", list(bad.values()))
        log(f"  push: {len(bad)} selected file(s) deleted or changed since the scan, not pushed (quarantined)")
    keep = {it.id for it in ok}
    return [c for c in cands if c.item.id in keep]


def holdout_truth(cfg: Config, ledger: Ledger) -> dict[str, Any]:
    """Item id -> true label of every holdout item (a class name, or a tuple of Box)."""
    task = task_for(cfg)
    return {k: task.truth_from_ledger(v) for k, v in ledger.holdout_truth().items()}
