"""The round's pseudo-labelling: thresholds per class (global / FlexMatch / FreeMatch / overrides),
human labels never overridden, detection pseudo-boxes with per-class thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loops.round import pseudo_cap
from pseudolabel.config import load_config
from pseudolabel.data.ledger import Ledger
from pseudolabel.strategies.detection import select_images
from pseudolabel.tasks import PoolPredictions, PseudoContext, task_for
from pseudolabel.types import Annotation, Box, Item, Prediction


def _confident(cfg, led: Ledger, df: pd.DataFrame, probs: np.ndarray, rid: int, version: str):  # noqa: ANN001, ANN202
    """The round's pseudo-label step on these probabilities (the task's policy, the round's context)."""
    preds = PoolPredictions(df.assign(label=None, confidence=probs.max(1), model_version=version),
                            [Prediction(i, version, probs=p) for i, p in zip(df["item_id"], probs)],
                            np.zeros((len(df), 0), np.float32), probs)
    ctx = PseudoContext(items={it.id: it for it in led.items("pool")}, labelled=led.human_labelled_ids(),
                        round_id=rid, model_version=version, cap=pseudo_cap(cfg, led), ledger=led)
    return task_for(cfg).confident(preds, ctx)


def _cfg(tmp_path: Path, task: str = "classify", **pseudo):  # noqa: ANN003, ANN202
    # Thresholds are what these tests are about: no class-balance cap unless a test sets one.
    pseudo.setdefault("max_ratio", None)
    det = task != "classify"
    fmt = "yolo" if det else "imagefolder"
    return load_config(data={
        "project": "pseudo-test", "task": task, "workdir": str(tmp_path / "w"), "classes": ["a", "b"],
        "data": {"seed": {"format": fmt, "path": "s/images"}, "pool": {"path": "p"},
                 "holdout": {"format": fmt, "path": "h/images"}},
        "pseudo": pseudo,
    }, environ={})


def _pool(tmp_path: Path, n: int) -> tuple[Ledger, list[Item]]:
    led = Ledger(tmp_path / "l.sqlite")
    items = [Item(f"{i:064x}", tmp_path / f"{i}.png", 32, 32) for i in range(n)]
    led.add_items(items, split="pool")
    led.open_round()
    return led, items


def test_class_adaptive_thresholds_and_human_rows(tmp_path: Path) -> None:
    # Class a is learned (confident), class b is not: FlexMatch lowers b's threshold.
    probs = np.array([[0.99, 0.01]] * 6 + [[0.1, 0.9]] * 3 + [[0.3, 0.7]] * 3)
    led, items = _pool(tmp_path, len(probs))
    df = pd.DataFrame({"item_id": [it.id for it in items]})
    led.add_labels([Annotation(item=items[0], label="b", source="human", round=1)])

    glob = _confident(_cfg(tmp_path, threshold=0.95), led, df, probs, 1, "v")
    assert {a.item.id for a in glob} == {it.id for it in items[1:6]}        # human row 0 never pseudo-labelled
    flex = _confident(_cfg(tmp_path, threshold=0.95, mode="flexmatch"), led, df, probs, 1, "v")
    assert {a.item.id for a in glob} < {a.item.id for a in flex}            # b's threshold fell
    assert items[0].id not in {a.item.id for a in flex}
    assert all(a.source == "pseudo" and a.weight == 0.5 for a in flex)
    thr = led.round(1)["info"]["pseudo_thresholds"]
    assert thr["a"] > thr["b"]
    over = _confident(_cfg(tmp_path, threshold=0.95, class_thresholds={"b": 0.85}), led, df, probs, 1, "v")
    assert {a.item.id for a in over} == {it.id for it in items[1:9]}
    free = _confident(_cfg(tmp_path, threshold=0.95, mode="freematch"), led, df, probs, 1, "v")
    assert led.freematch_state() is not None and len(free) >= 1


def test_class_balance_cap_follows_the_labelled_set(tmp_path: Path) -> None:
    # 10 confident a's and 2 confident b's; 2 labelled items (1 per class) and max_ratio 3:
    # at most 3 pseudo-labels per class, the most confident ones.
    probs = np.array([[0.99 - 0.001 * i, 0.01 + 0.001 * i] for i in range(10)] + [[0.01, 0.99]] * 2)
    led, items = _pool(tmp_path, len(probs) + 2)
    led.add_labels([Annotation(item=items[-2], label="a", source="human", round=1),
                    Annotation(item=items[-1], label="b", source="human", round=1)])
    df = pd.DataFrame({"item_id": [it.id for it in items[:-2]]})
    out = _confident(_cfg(tmp_path, threshold=0.95, max_ratio=3), led, df, probs, 1, "v")
    assert [a.item.id for a in out if a.label == "a"] == [it.id for it in items[:3]]
    assert sorted(a.item.id for a in out if a.label == "b") == [items[10].id, items[11].id]
    capped = _confident(_cfg(tmp_path, threshold=0.95, max_ratio=3, max_per_class=1), led, df, probs, 1, "v")
    assert sorted(a.label for a in capped) == ["a", "b"]                    # the smaller cap wins


def _pred(iid: str, *scores_labels: tuple[float, str]) -> Prediction:
    boxes = tuple(Box(2.0 * i, 0, 2.0 * i + 5, 5, lab, s) for i, (s, lab) in enumerate(scores_labels))
    bp = np.array([[s, 0.0] if lab == "a" else [0.0, s] for s, lab in scores_labels]).reshape(len(boxes), 2)
    return Prediction(item_id=iid, model_version="v", boxes=boxes, box_probs=bp)


def test_detection_pseudo_boxes_per_class_thresholds(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "detect", box_threshold=0.6, class_thresholds={"b": 0.9})
    led, items = _pool(tmp_path, 5)
    by_id = {it.id: it for it in items}
    preds = [
        _pred(items[0].id, (0.95, "a"), (0.1, "a")),   # confident a + noise far below half: kept (1 box)
        _pred(items[1].id, (0.8, "b")),                  # b needs 0.9: 0.8 is ambiguous -> image skipped
        _pred(items[2].id, (0.95, "b"), (0.4, "a")),   # 0.4 is in a's ambiguous band [0.3, 0.6): skipped
        _pred(items[3].id, (0.99, "a")),                 # human-labelled: never pseudo-labelled
        _pred(items[4].id),                              # no boxes: no pseudo-label (empty says nothing)
    ]
    ctx = PseudoContext(items=by_id, labelled={items[3].id}, round_id=1, model_version="v", cap=None)
    out = task_for(cfg).confident(PoolPredictions.of(preds), ctx)
    assert [a.item.id for a in out] == [items[0].id]
    assert [(b.label, b.score) for b in out[0].boxes] == [("a", 0.95)]
    assert out[0].source == "pseudo"


@pytest.mark.parametrize("strategy", ["random", "entropy", "kcenter", "hybrid"])
def test_detection_select_returns_k_unique(tmp_path: Path, strategy: str) -> None:
    cfg = load_config(data={**_cfg(tmp_path, "detect").snapshot(), "selection": {"strategy": strategy}}, environ={})
    rng = np.random.default_rng(0)
    scores = rng.random(50)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    s = cfg.selection
    sel = select_images(scores, 7, strategy=s.strategy, embeddings=emb, labelled_embeddings=None,
                        hybrid_factor=s.hybrid_factor, n_classes=len(cfg.classes), seed=0, options=s.strategy_options())
    assert len(set(sel.indices.tolist())) == 7
    if strategy == "entropy":
        assert set(sel.indices.tolist()) == set(np.argsort(-scores)[:7].tolist())
    if strategy == "hybrid":
        assert set(sel.indices.tolist()) <= set(np.argsort(-scores)[:35].tolist())


def test_classification_strategy_rejected_for_detection(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'bald' is for classification; task detect accepts: random"):
        load_config(data={**_cfg(tmp_path, "detect").snapshot(), "selection": {"strategy": "bald"}}, environ={})


def test_round_trains_with_consistency_on_the_pool(tmp_path: Path) -> None:
    from pseudolabel.sim.demo import demo_config, export_digits
    from loops.round import run_round
    from pseudolabel.models.torchvision_cls import TorchvisionClassifier

    data = export_digits(tmp_path / "data", seed_per_class=1, holdout=50, seed=0)
    raw = demo_config(tmp_path / "w", data.root, strategy="entropy", project="fixmatch-round", **{
        "consistency.enabled": True, "model.epochs": 2, "model.min_steps": 10, "model.image_size": 16})
    cfg = load_config(data=raw, environ={})
    res = run_round(cfg, None, progress=False)
    model = TorchvisionClassifier.load(cfg.workdir / "rounds" / "0001" / "model.pt")
    n_pool = len(list((data.root / "pool").glob("*.png")))
    assert model.consistency is True and model.n_unlabelled_ == n_pool
    assert np.isfinite(model.history_[-1]["loss_u"])      # the unsupervised term was computed
    assert res.metrics["accuracy"] is not None
    with pytest.raises(ValueError, match="consistency \\(FixMatch\\) training is for classification"):
        load_config(data={**_cfg(tmp_path, "detect").snapshot(), "consistency": {"enabled": True}}, environ={})
