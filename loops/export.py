"""Export the campaign's current labels for training elsewhere.

Which labels: every seed and human label (a human label always wins over the seed's), and with
``include_pseudo`` the confident pseudo-labels of images nobody labelled. The holdout is
exported as its own split (``val``) so that the exported dataset trains and validates as is.

Formats: detection / segmentation ``yolo``, ``coco``, ``voc``, ``labelme``, ``cvat``,
``labelstudio`` (via :func:`pseudolabel.data.formats.export_labels`; YOLO also writes
``classes.txt`` beside ``data.yaml``); classification ``imagefolder``
(``<out>/<split>/<class>/<image>``), ``csv`` (``path,label,source`` with images copied),
``labelme`` (``<out>/<split>/`` images with their JSON, the class as a flag), ``cvat``
(``<out>/<split>/images/`` + ``annotations.xml`` with one ``<tag>`` per image) or
``labelstudio`` (``<out>/images/<split>/`` + ``<split>.json``, one ``choices`` annotation per task).
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pseudolabel.config import Config
from pseudolabel.data.boxes import boxes_from_json
from pseudolabel.data.errors import DataError
from pseudolabel.data.formats import (
    DetTask,
    export_labels,
    write_cvat_tags,
    write_labelme_classes,
    write_labelstudio_choices,
)
from pseudolabel.data.ledger import Ledger
from pseudolabel.types import CLASSIFY_FORMATS, OBJECT_FORMATS, Item


@dataclass
class ExportResult:
    """What an export wrote: the folder, the format, labels per source, holdout count, entry file."""

    out_dir: Path
    format: str
    counts: dict[str, int] = field(default_factory=dict)   # labels by source exported (train split)
    holdout: int = 0
    entry: Path | None = None                               # data.yaml / JSON / list file / CSV


def formats_for(task: str) -> tuple[str, ...]:
    """The export formats available for ``task`` (classify, or detect / segment)."""
    return CLASSIFY_FORMATS if task == "classify" else OBJECT_FORMATS


def export_campaign(cfg: Config, ledger: Ledger, out_dir: Path, *, fmt: str, include_pseudo: bool = False,
                    include_holdout: bool = True) -> ExportResult:
    """Write the current labels of the campaign in ``fmt`` under ``out_dir``; see the module doc."""
    allowed = formats_for(cfg.task)
    if fmt not in allowed:
        raise DataError(f"export format {fmt!r} does not fit task {cfg.task}; choose one of: {', '.join(allowed)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} exists and is not empty; export into a new folder")
    holdout_ids = {it.id for it in ledger.items("holdout")}
    items = {it.id: it for it in ledger.items()}
    rows = {k: r for k, r in ledger.current_labels().items()
            if k not in holdout_ids and (include_pseudo or r.source != "pseudo")}
    res = ExportResult(out_dir=out_dir, format=fmt)
    for r in rows.values():
        res.counts[r.source] = res.counts.get(r.source, 0) + 1
    if not rows:
        raise DataError(f"nothing to export: the ledger in {cfg.workdir} has no seed or human labels yet")
    train_items = [items[k] for k in sorted(rows)]
    holdout_items = sorted((items[k] for k in holdout_ids), key=lambda it: it.id) if include_holdout else []
    truth: dict[str, Any] = ledger.holdout_truth()
    if cfg.task == "classify":
        labels = {k: r.label for k, r in rows.items() if r.label is not None}
        res.entry = _export_classify(fmt, out_dir, "train", train_items, labels, {k: r.source for k, r in rows.items()},
                                     list(cfg.classes))
        if holdout_items:
            _export_classify(fmt, out_dir, "val", holdout_items, {it.id: truth[it.id] for it in holdout_items},
                             {it.id: "holdout" for it in holdout_items}, list(cfg.classes))
    else:
        task: DetTask = "segment" if cfg.task == "segment" else "detect"
        res.entry = export_labels(fmt, out_dir, train_items, {k: r.boxes for k, r in rows.items()},
                                  classes=cfg.classes, task=task, split="train")
        if holdout_items:
            export_labels(fmt, out_dir, holdout_items, {it.id: boxes_from_json(truth[it.id]) for it in holdout_items},
                          classes=cfg.classes, task=task, split="val")
    res.holdout = len(holdout_items)
    return res


def _export_classify(fmt: str, out_dir: Path, split: str, items: list[Any], labels: dict[str, str],
                     sources: dict[str, str], classes: list[str]) -> Path:
    used: set[str] = set()
    rows = []
    copied = []
    img_root = {"labelme": out_dir / split, "cvat": out_dir / split / "images"}.get(fmt, out_dir / "images" / split)
    for it in items:
        name = it.path.name if it.path.name not in used else f"{it.id[:12]}_{it.path.name}"
        used.add(name)
        label = labels[it.id]
        dest = out_dir / split / label / name if fmt == "imagefolder" else img_root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(it.path, dest)
        copied.append(Item(it.id, dest, it.width, it.height))
        rows.append((str(dest.relative_to(out_dir)), label, sources[it.id]))
    if fmt == "imagefolder":
        return out_dir / split
    if fmt == "labelme":
        write_labelme_classes(img_root, copied, labels, classes=classes, image_root=img_root)
        return img_root
    if fmt == "cvat":
        return write_cvat_tags(out_dir / split / "annotations.xml", copied, labels, classes=classes,
                               image_root=img_root)
    if fmt == "labelstudio":
        return write_labelstudio_choices(out_dir / f"{split}.json", copied, labels, classes=classes,
                                         document_root=out_dir)
    path = out_dir / f"{split}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "source"])
        w.writerows(rows)
    return path
