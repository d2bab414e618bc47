"""Label sources in the config, through the round's ingest into the ledger."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from loops.ingest import holdout_truth, ingest
from loops.round import ledger_for
from pseudolabel.config import ConfigError, load_config
from pseudolabel.data import formats
from pseudolabel.data.formats import cvat, labelstudio
from pseudolabel.data.errors import DataError, DataWarning
from pseudolabel.data.ingest import scan_files
from pseudolabel.types import Box


def read_labelled(cfg, which: str):  # noqa: ANN001, ANN201
    """A labelled set read as the round's ingest reads it (the task's reader, first read)."""
    from pseudolabel.tasks import task_for

    return task_for(cfg).read(which)


def _png(path: Path, w: int, h: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _cfg(tmp_path: Path, task: str, seed: dict[str, Any], holdout: dict[str, Any], classes: list[str]) -> Any:
    (tmp_path / "pool").mkdir(exist_ok=True)
    raw = {"project": "sources", "task": task, "workdir": str(tmp_path / "work"), "classes": classes,
           "data": {"seed": seed, "holdout": holdout, "pool": {"path": str(tmp_path / "pool")}}}
    return load_config(data=raw, environ={})


@pytest.mark.parametrize("task,fmt,ok", [
    ("detect", "labelme", True), ("detect", "cvat", True), ("detect", "labelstudio", True),
    ("segment", "coco", True), ("classify", "labelme", True), ("classify", "cvat", True),
    ("classify", "labelstudio", True), ("classify", "yolo", False), ("detect", "csv", False),
])
def test_config_formats_per_task(tmp_path: Path, task: str, fmt: str, ok: bool) -> None:
    src = {"format": fmt, "path": str(tmp_path / "x")}
    classes = ["a", "b"]
    if ok:
        cfg = _cfg(tmp_path, task, src, src, classes)
        assert cfg.data.seed.format == fmt
    else:
        with pytest.raises(ConfigError, match=f"data.seed.format '{fmt}' does not fit task {task}"):
            _cfg(tmp_path, task, src, src, classes)


@pytest.mark.parametrize("src,match", [
    ({"format": "coco", "split": "train"}, "format 'coco' does not use split; it takes: path, image_root, multipart"),
    ({"format": "voc", "names": "data.yaml"}, "format 'voc' does not use names"),
    ({"format": "labelstudio", "multipart": "largest"}, "format 'labelstudio' does not use multipart"),
    ({"format": "yolo", "multipart": "everything"}, "multipart: 'everything' is not accepted"),
])
def test_config_options_must_fit_the_format(tmp_path: Path, src: dict[str, Any], match: str) -> None:
    src = src | {"path": str(tmp_path / "x")}
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, "detect", src, {"format": "coco", "path": str(tmp_path / "y")}, ["a"])


def test_detection_ingest_from_cvat_and_coco_keeps_flags_for_evaluation(tmp_path: Path) -> None:
    """Seed in CVAT XML (difficult attribute), holdout in COCO (a crowd object): the seed's
    training boxes leave both out unless train_difficult; the holdout truth in the ledger keeps
    the flags for evaluation."""
    seed_imgs = [_png(tmp_path / "seed" / "images" / f"s{i}.png", 40, 30, i) for i in range(2)]
    items = scan_files(seed_imgs).items
    seed_boxes = {items[0].id: (Box(1, 1, 10, 10, "car"), Box(20, 5, 30, 25, "car", difficult=True)),
                  items[1].id: ()}
    cvat.write_cvat(tmp_path / "seed" / "annotations.xml", items, seed_boxes, classes=["car", "bus"],
                    image_root=tmp_path / "seed" / "images")
    hold = scan_files([_png(tmp_path / "hold" / "h.png", 40, 30, 9)]).items
    formats.write_coco(tmp_path / "hold" / "c.json", hold,
                          {hold[0].id: (Box(2, 2, 12, 12, "bus"), Box(15, 0, 40, 30, "car", crowd=True))},
                          classes=["car", "bus"], image_root=tmp_path / "hold")
    cfg = _cfg(tmp_path, "detect", {"format": "cvat", "path": str(tmp_path / "seed" / "annotations.xml")},
               {"format": "coco", "path": str(tmp_path / "hold" / "c.json")}, ["car", "bus"])
    with ledger_for(cfg) as ledger:
        new = ingest(cfg, ledger)
        assert (new["seed"], new["holdout"], new["quarantined"]) == (2, 1, 0)
        seed = {r.item_id: r.boxes for r in ledger.all_labels(source="seed")}
        assert seed[items[0].id] == (Box(1, 1, 10, 10, "car"),) and seed[items[1].id] == ()
        truth = holdout_truth(cfg, ledger)[hold[0].id]
        assert [(b.label, b.crowd) for b in truth] == [("bus", False), ("car", True)]
    cfg.data.seed.train_difficult = True
    ds = read_labelled(cfg, "seed")
    assert ds.labels[items[0].id][1] == Box(20, 5, 30, 25, "car")  # trained on, as an ordinary box


def test_notes_are_warned_and_an_empty_holdout_is_an_error(tmp_path: Path) -> None:
    imgs = scan_files([_png(tmp_path / "d" / "images" / "a.png", 50, 50, 1)]).items
    (tmp_path / "d" / "labels").mkdir()
    (tmp_path / "d" / "labels" / "a.txt").write_text("0 0.95 0.5 0.2 0.2\n")  # x2 = 1.05: clipped
    (tmp_path / "d" / "classes.txt").write_text("bus\ncar\n")
    ls = labelstudio.labelstudio_tasks(imgs, {imgs[0].id: ()}, document_root=tmp_path / "d")
    ls[0]["annotations"] = []  # not labelled yet
    (tmp_path / "ls.json").write_text(json.dumps(ls))
    cfg = _cfg(tmp_path, "detect", {"format": "yolo", "path": str(tmp_path / "d" / "images")},
               {"format": "labelstudio", "path": str(tmp_path / "ls.json"), "image_root": str(tmp_path / "d")},
               ["car", "bus"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seed = read_labelled(cfg, "seed")
    assert next(iter(seed.labels.values()))[0].label == "bus"  # id 0 is "bus" in classes.txt
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("1 box(es)" in m and "clipped" in m for m in msgs) and any("mapped by name" in m for m in msgs)
    with pytest.raises(DataError, match=r"data\.holdout \(labelstudio .*ls\.json\): no usable labelled image; "
                                        r"quarantined: .*task #1: no annotation"):
        read_labelled(cfg, "holdout")


def test_classification_ingest_from_a_label_studio_export(tmp_path: Path) -> None:
    imgs = scan_files([_png(tmp_path / "docs" / "images" / f"{i}.png", 8, 8, i) for i in range(3)]).items
    labels = {imgs[0].id: "cat", imgs[1].id: "dog", imgs[2].id: "cat"}
    labelstudio.write_labelstudio_choices(tmp_path / "seed.json", imgs[:2], labels, classes=["cat", "dog"],
                                          document_root=tmp_path / "docs")
    labelstudio.write_labelstudio_choices(tmp_path / "hold.json", imgs[2:], labels, classes=["cat", "dog"],
                                          document_root=tmp_path / "docs")
    src = {"format": "labelstudio", "image_root": str(tmp_path / "docs")}
    cfg = _cfg(tmp_path, "classify", src | {"path": str(tmp_path / "seed.json")},
               src | {"path": str(tmp_path / "hold.json")}, ["cat", "dog"])
    with ledger_for(cfg) as ledger:
        ingest(cfg, ledger)
        assert {r.item_id: r.label for r in ledger.all_labels(source="seed")} == {imgs[0].id: "cat", imgs[1].id: "dog"}
        assert holdout_truth(cfg, ledger) == {imgs[2].id: "cat"}
