"""Detection and segmentation rounds: YOLO-format seed/holdout on disk, real YOLO training on
tiny Fashion-MNIST scenes, real Label Studio (RectangleLabels predictions pre-drawn, corrections
pulled back as boxes into the ledger)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loops.round import ledger_for, run_round
from pseudolabel.config import load_config
from pseudolabel.data.formats import write_yolo
from pseudolabel.inference import load_box_predictions
from pseudolabel.review.client import LabelStudioClient
from pseudolabel.types import Annotation
from test_yolo import CLASSES, SIZE, make_scenes

pytestmark = [pytest.mark.slow]


def _write_set(root: Path, n: int, *, seed: int, polygons: bool) -> list[Annotation]:
    anns = make_scenes(root / "images", n, seed=seed, polygons=polygons)
    write_yolo(root / "labels", [a.item for a in anns], {a.item.id: a.boxes for a in anns}, classes=CLASSES,
               task="segment" if polygons else "detect", image_root=root / "images")
    return anns


def _config(tmp_path: Path, data: Path, task: str, images_root: Path, **over: Any):  # noqa: ANN202
    raw: dict[str, Any] = {
        "project": f"det-{task}-{tmp_path.name[-12:]}",
        "task": task,
        "workdir": str(tmp_path / "work"),
        "classes": CLASSES,
        "data": {
            "seed": {"format": "yolo", "path": str(data / "seed" / "images")},
            "holdout": {"format": "yolo", "path": str(data / "holdout" / "images")},
            "pool": {"path": str(data / "pool")},
        },
        "model": {"image_size": SIZE, "epochs": 2, "min_steps": 0, "batch_size": 8, "device": "cpu",
                  "infer_batch_size": 16, "train_args": {"mosaic": 0.0}},
        "selection": {"strategy": "entropy", "batch_size": 4},
        "pseudo": {"enabled": True, "box_threshold": 0.5},
        "stop": {"target": 0.999, "label_budget": 100, "max_rounds": 5},
        "label_studio": {"images_root": str(images_root)},
    }
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(raw))
    return load_config(f, environ={}, overrides=[f"{k}={v}" for k, v in over.items()])


@pytest.mark.integration
def test_detect_round_pushes_rectangles_and_pulls_boxes(tmp_path: Path, label_studio) -> None:  # noqa: ANN001
    data = Path(label_studio.images_root) / f"det-{tmp_path.name}"
    seed = _write_set(data / "seed", 8, seed=1, polygons=False)
    _write_set(data / "holdout", 6, seed=2, polygons=False)
    pool = make_scenes(data / "pool", 12, seed=3)
    truth = {a.item.id: a.boxes for a in pool}
    cfg = _config(tmp_path, data, "detect", Path(label_studio.images_root))
    client = LabelStudioClient(url=label_studio.url, token=label_studio.token, project_title=cfg.project,
                               classes=cfg.classes, task_type="detect", images_root=Path(label_studio.images_root))
    client.ensure_project()

    r1 = run_round(cfg, client, progress=False)
    assert r1.stop_reason is None
    assert set(r1.metrics) >= {"map50", "map50_95", "map75", "labels_used"}
    assert r1.labels_used == len(seed)
    assert r1.queued == 4
    df, preds = load_box_predictions(cfg.workdir / "rounds" / "0001" / "predictions")
    assert len(df) == len(pool) and all(p.box_probs is not None for p in preds)

    pending = client.pending()
    assert len(pending) == 4 and {t.item_id for t in pending} <= set(truth)
    # Pre-drawn boxes are the model's boxes at or above selection.predraw_conf.
    by_id = {p.item_id: p for p in preds}
    for t in pending:
        expected = [b for b in by_id[t.item_id].boxes if (b.score or 0) >= cfg.selection.predraw_conf]
        assert len(t.predicted_boxes) == len(expected)
    # Reviewer: the first task gets "no objects" (empty submission), the others the true boxes.
    items = {a.item.id: a.item for a in pool}
    for n, t in enumerate(pending):
        boxes = () if n == 0 else truth[t.item_id]
        it = items[t.item_id]
        client.annotate(t.task_id, boxes=boxes, width=it.width, height=it.height, parent_prediction=t.prediction_id)

    r2 = run_round(cfg, client, progress=False)
    assert r2.sync["added"] == 4
    assert r2.labels_used == len(seed) + 4
    with ledger_for(cfg) as ledger:
        current = ledger.current_labels()
        for n, t in enumerate(pending):
            row = current[t.item_id]
            assert row.source == "human"
            want = () if n == 0 else truth[t.item_id]
            assert len(row.boxes) == len(want)
            for got, exp in zip(sorted(row.boxes, key=lambda b: b.x1), sorted(want, key=lambda b: b.x1)):
                assert got.label == exp.label
                assert max(abs(got.x1 - exp.x1), abs(got.y2 - exp.y2)) < 0.5
        # Pseudo-labels never sit on a human-labelled image as its current label.
        human = ledger.human_labelled_ids()
        assert all(current[i].source != "pseudo" for i in human)
        info = ledger.stage_info(2, "train")
        assert info["human_or_seed"] == len(seed) + 4
    # The reviewed items are not queued again.
    assert not {t.item_id for t in client.pending()} & {t.item_id for t in pending}


def test_segment_round_reports_mask_metrics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_set(data / "seed", 8, seed=1, polygons=True)
    _write_set(data / "holdout", 6, seed=2, polygons=True)
    make_scenes(data / "pool", 8, seed=3)
    cfg = _config(tmp_path, data, "segment", data)
    assert cfg.stop.metric == "mask_map50"
    r = run_round(cfg, None, progress=False)
    assert {"map50", "mask_map50", "mask_map50_95", "miou", "pixel_accuracy"} <= set(r.metrics)
    sel = (cfg.workdir / "rounds" / "0001" / "selection.csv").read_text().splitlines()
    assert len(sel) == 1 + 4


def test_detection_selects_on_pretrained_backbone_embeddings(tmp_path: Path) -> None:
    """``selection.embeddings: efficientnet_lite0``: k-center picks from the pretrained
    backbone's image embeddings (offline ImageNet weights, embedded once per image and cached),
    not the young detector's; an off-task or unknown value is a one-line config error."""
    import numpy as np
    import pandas as pd

    from loops.round import round_dir
    from pseudolabel.models.backbone import FrozenBackboneClassifier

    data = tmp_path / "data"
    _write_set(data / "seed", 6, seed=1, polygons=False)
    _write_set(data / "holdout", 4, seed=2, polygons=False)
    pool = make_scenes(data / "pool", 10, seed=3)
    cfg = _config(tmp_path, data, "detect", tmp_path, **{"selection.strategy": "kcenter",
                                                         "selection.embeddings": "efficientnet_lite0",
                                                         "pseudo.enabled": False})
    assert run_round(cfg, None, progress=False).round_id == 1
    sel = pd.read_csv(round_dir(cfg, 1) / "selection.csv")
    assert len(sel) == cfg.selection.batch_size and set(sel["strategy"]) == {"kcenter"}
    assert set(sel["item_id"]) <= {a.item.id for a in pool}
    # The round embedded every pool image with the backbone (the cache holds them all).
    emb = FrozenBackboneClassifier(list(cfg.classes), backbone="efficientnet_lite0",
                                   cache_dir=cfg.workdir / "embeddings", device="cpu", progress=False)
    emb.embed([pool[0].item])                                   # builds the backbone and opens its cache
    assert emb.cache_.missing([a.item.id for a in pool]) == []
    vectors = emb.embed([a.item for a in pool])
    assert vectors.shape == (10, 704) and vectors.dtype == np.float32 and np.isfinite(vectors).all()

    with pytest.raises(ValueError, match="unknown embeddings 'nonsense'"):
        _config(tmp_path, data, "detect", tmp_path, **{"selection.embeddings": "nonsense"})
    raw = {"project": "cls", "task": "classify", "workdir": str(tmp_path / "w2"), "classes": ["a", "b"],
           "data": {"seed": {"path": str(tmp_path)}, "holdout": {"path": str(tmp_path)}, "pool": {"path": str(tmp_path)}},
           "selection": {"embeddings": "efficientnet_lite0"}}
    with pytest.raises(ValueError, match="selection.embeddings is for boxes"):
        load_config(data=raw, environ={})
