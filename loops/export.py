"""Export the campaign's current labels for training elsewhere.

Which labels: every seed and human label (a human label always wins over the seed's), and with
``include_pseudo`` the confident pseudo-labels of images nobody labelled. The holdout is
exported as its own split (``val``) so that the exported dataset trains and validates as is.

Formats: detection / segmentation ``yolo``, ``coco``, ``voc`` (via
:func:`pseudolabel.data.detformats.export_labels`); classification ``imagefolder``
(``<out>/<split>/<class>/<image>``) or ``csv`` (``path,label,source`` with images copied).
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pseudolabel.config import Config
from pseudolabel.data.detformats import EXPORT_FORMATS, export_labels
from pseudolabel.data.ledger import Ledger

CLASSIFY_FORMATS = ("imagefolder", "csv")


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    counts: dict[str, int] = field(default_factory=dict)   # labels by source exported (train split)
    holdout: int = 0
    entry: Path | None = None                               # data.yaml / JSON / list file / CSV


def formats_for(task: str) -> tuple[str, ...]:
    return CLASSIFY_FORMATS if task == "classify" else EXPORT_FORMATS


def export_campaign(cfg: Config, ledger: Ledger, out_dir: Path, *, fmt: str, include_pseudo: bool = False,
                    include_holdout: bool = True) -> ExportResult:
    """Write the current labels of the campaign in ``fmt`` under ``out_dir``; see the module doc."""
    allowed = formats_for(cfg.task)
    if fmt not in allowed:
        raise ValueError(f"export format {fmt!r} does not fit task {cfg.task}; choose one of: {', '.join(allowed)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} exists and is not empty; export into a new folder")
    holdout_ids = {it.id for it in ledger.items("holdout")}
    items = {it.id: it for it in ledger.items()}
    rows = {k: r for k, r in ledger.current_labels().items()
            if k not in holdout_ids and (include_pseudo or r.source != "pseudo")}
    res = ExportResult(out_dir=out_dir, format=fmt)
    for r in rows.values():
        res.counts[r.source] = res.counts.get(r.source, 0) + 1
    if not rows:
        raise ValueError(f"nothing to export: the ledger in {cfg.workdir} has no seed or human labels yet")
    train_items = [items[k] for k in sorted(rows)]
    holdout_items = sorted((items[k] for k in holdout_ids), key=lambda it: it.id) if include_holdout else []
    truth: dict[str, Any] = ledger.holdout_truth()
    if cfg.task == "classify":
        labels = {k: r.label for k, r in rows.items()}
        res.entry = _export_classify(fmt, out_dir, "train", train_items, labels, {k: r.source for k, r in rows.items()})
        if holdout_items:
            _export_classify(fmt, out_dir, "val", holdout_items, {it.id: truth[it.id] for it in holdout_items},
                             {it.id: "holdout" for it in holdout_items})
    else:
        from pseudolabel.data.ledger import boxes_from_json

        task = "segment" if cfg.task == "segment" else "detect"
        res.entry = export_labels(fmt, out_dir, train_items, {k: r.boxes for k, r in rows.items()},
                                  classes=cfg.classes, task=task, split="train")
        if holdout_items:
            export_labels(fmt, out_dir, holdout_items, {it.id: boxes_from_json(truth[it.id]) for it in holdout_items},
                          classes=cfg.classes, task=task, split="val")
    res.holdout = len(holdout_items)
    return res


def _export_classify(fmt: str, out_dir: Path, split: str, items: list[Any], labels: dict[str, str],
                     sources: dict[str, str]) -> Path:
    used: set[str] = set()
    rows = []
    for it in items:
        name = it.path.name if it.path.name not in used else f"{it.id[:12]}_{it.path.name}"
        used.add(name)
        label = labels[it.id]
        dest = out_dir / split / label / name if fmt == "imagefolder" else out_dir / "images" / split / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(it.path, dest)
        rows.append((str(dest.relative_to(out_dir)), label, sources[it.id]))
    if fmt == "imagefolder":
        return out_dir / split
    path = out_dir / f"{split}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "source"])
        w.writerows(rows)
    return path
