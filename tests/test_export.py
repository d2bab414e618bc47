"""`pseudolabel export`: current labels (seed + human, optionally pseudo) in a training-ready layout."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pseudolabel.sim.demo import demo_config, export_digits
from loops.export import export_campaign
from loops.ingest import ingest
from loops.round import ledger_for
from pseudolabel.config import load_config
from pseudolabel.data.formats import read_yolo
from pseudolabel.data.formats import read_labels
from pseudolabel.types import Annotation, Box


@pytest.fixture()
def digits_campaign(tmp_path: Path):  # noqa: ANN201
    data = export_digits(tmp_path / "data", seed_per_class=1, holdout=20, seed=0)
    cfg = load_config(data=demo_config(tmp_path / "work", data.root, strategy="entropy", project="export-test"),
                      environ={})
    with ledger_for(cfg) as ledger:
        ingest(cfg, ledger)
        pool = ledger.items("pool")
        # One human label (a correction of what truth says, to see that the ledger is exported, not truth),
        # and one pseudo-label.
        ledger.add_labels([Annotation(item=pool[0], label="7", source="human", round=1)])
        ledger.add_labels([Annotation(item=pool[1], label="3", source="pseudo", round=1, weight=0.5)])
    return cfg, pool


def test_classify_export_csv_and_imagefolder(tmp_path: Path, digits_campaign) -> None:  # noqa: ANN001
    cfg, pool = digits_campaign
    with ledger_for(cfg) as ledger:
        res = export_campaign(cfg, ledger, tmp_path / "out-csv", fmt="csv")
        assert res.counts == {"seed": 10, "human": 1} and res.holdout == 20
        rows = list(csv.DictReader(open(res.entry)))
        assert len(rows) == 11
        assert all((tmp_path / "out-csv" / r["path"]).is_file() for r in rows)
        assert sum(r["source"] == "human" and r["label"] == "7" for r in rows) == 1

        res = export_campaign(cfg, ledger, tmp_path / "out-if", fmt="imagefolder", include_pseudo=True)
        assert res.counts == {"seed": 10, "human": 1, "pseudo": 1}
        assert len(list((tmp_path / "out-if" / "train").rglob("*.png"))) == 12
        assert len(list((tmp_path / "out-if" / "val").rglob("*.png"))) == 20

        with pytest.raises(ValueError, match="not empty"):
            export_campaign(cfg, ledger, tmp_path / "out-if", fmt="imagefolder")
        with pytest.raises(ValueError, match="does not fit task classify; choose one of: imagefolder, csv, labelme, "
                                             "cvat, labelstudio"):
            export_campaign(cfg, ledger, tmp_path / "out-yolo", fmt="yolo")


@pytest.mark.parametrize("fmt", ["labelme", "cvat", "labelstudio"])
def test_classify_export_in_tool_formats_reads_back(tmp_path: Path, digits_campaign, fmt: str) -> None:  # noqa: ANN001
    cfg, pool = digits_campaign
    with ledger_for(cfg) as ledger:
        res = export_campaign(cfg, ledger, tmp_path / "out", fmt=fmt)
        current = {k: r.label for k, r in ledger.current_labels().items() if r.source != "pseudo"}
    root = tmp_path / "out"
    back = read_labels(fmt, res.entry, classes=cfg.classes, image_root=root if fmt == "labelstudio" else None)
    assert back.labels == {k: v for k, v in current.items() if k in back.labels} and len(back.labels) == 11
    assert back.labels[pool[0].id] == "7"  # the human correction, not the truth


def test_detection_export_yolo_round_trip(tmp_path: Path) -> None:
    from test_round_detect import _config, _write_set

    data = tmp_path / "data"
    seed = _write_set(data / "seed", 4, seed=1, polygons=False)
    _write_set(data / "holdout", 3, seed=2, polygons=False)
    (data / "pool").mkdir()
    cfg = _config(tmp_path, data, "detect", data)
    with ledger_for(cfg) as ledger:
        ingest(cfg, ledger)
        # A reviewer replaced the seed boxes of the first image with one box.
        new = (Box(1.0, 2.0, 30.0, 40.0, "bag"),)
        ledger.add_labels([Annotation(item=seed[0].item, boxes=new, source="human", round=1)])
        res = export_campaign(cfg, ledger, tmp_path / "out", fmt="yolo")
    assert res.counts == {"seed": 3, "human": 1}
    back = read_yolo(tmp_path / "out" / "images" / "train", tmp_path / "out" / "labels" / "train",
                     classes=cfg.classes)
    assert len(back.items) == 4
    got = back.boxes[seed[0].item.id]
    assert len(got) == 1 and got[0].label == "bag" and abs(got[0].x2 - 30.0) < 0.01
    for a in seed[1:]:
        assert len(back.boxes[a.item.id]) == len(a.boxes)
    assert (tmp_path / "out" / "data.yaml").read_text().count("val: images/val") == 1
