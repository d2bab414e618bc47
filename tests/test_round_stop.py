"""The round's stop check reads the rules from the config and the history from the ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from loops.round import round_dir
from loops.stop import pool_stop_reason, stop_reason
from pseudolabel.config import load_config
from pseudolabel.data.ledger import Ledger
from pseudolabel.tasks import PoolPredictions, task_for
from pseudolabel.types import Annotation, Item, Prediction


def _cfg(tmp_path: Path, **stop):  # noqa: ANN003, ANN202
    return load_config(data={
        "project": "stop-test", "workdir": str(tmp_path / "w"), "classes": ["a", "b"],
        "data": {"seed": {"path": "s"}, "pool": {"path": "p"}, "holdout": {"path": "h"}},
        "stop": {"target": 0.99, "label_budget": 1000, "max_rounds": 50, **stop},
    }, environ={})


def _ledger(tmp_path: Path, accs: list[float]) -> Ledger:
    led = Ledger(tmp_path / "l.sqlite")
    for acc in accs:
        rid, _ = led.open_round()
        led.update_round(rid, metrics={"accuracy": acc, "macro_f1": acc})
        led.finish_round(rid)
    return led


def test_plateau_fires_only_when_gain_is_small(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, plateau_rounds=2, plateau_min_delta=0.01)
    flat = _ledger(tmp_path / "flat", [0.80, 0.90, 0.905, 0.908])
    assert (stop_reason(cfg, flat, 4, {"accuracy": 0.908}, 100) or "").startswith("plateau")
    rising = _ledger(tmp_path / "rising", [0.80, 0.90, 0.91, 0.925])
    assert stop_reason(cfg, rising, 4, {"accuracy": 0.925}, 100) is None
    off = _cfg(tmp_path)  # rule not configured: never fires
    assert stop_reason(off, flat, 4, {"accuracy": 0.908}, 100) is None


def test_acceptance_rate_uses_the_last_rounds_answers(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, acceptance_rate=0.9, min_answered=10)
    led = _ledger(tmp_path, [0.8, 0.85])
    items = [Item(f"{i:064x}", Path(f"/{i}.png"), 8, 8) for i in range(10)]
    led.add_items(items, split="pool")
    outcomes = ["accepted"] * 9 + ["corrected"]
    led.add_labels(Annotation(it, label="a", source="human", round=1, review_outcome=o, ls_annotation_id=i)
                   for i, (it, o) in enumerate(zip(items, outcomes)))
    assert (stop_reason(cfg, led, 2, {"accuracy": 0.85}, 100) or "").startswith("acceptance_rate_high")
    stricter = _cfg(tmp_path, acceptance_rate=0.95, min_answered=10)
    assert stop_reason(stricter, led, 2, {"accuracy": 0.85}, 100) is None


def _pool(ids: list[str], labels: np.ndarray, probs: np.ndarray) -> PoolPredictions:
    """The current round's pool predictions (labels as given, probabilities per row)."""
    frame = pd.DataFrame({"item_id": ids, "label": labels, "confidence": probs.max(1), "model_version": "v2"})
    return PoolPredictions(frame, [Prediction(i, "v2", probs=p) for i, p in zip(ids, probs)],
                           np.zeros((len(ids), 0), np.float32), probs)


def test_stable_predictions_and_low_pool_uncertainty(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, stable_kappa=0.95)
    prev_dir = round_dir(cfg, 1) / "predictions"
    prev_dir.mkdir(parents=True)
    ids = [f"{i:064x}" for i in range(40)]
    labels = np.array(["a", "b"] * 20)
    pd.DataFrame({"item_id": ids, "model_version": "v1", "label": labels, "confidence": 0.9,
                  "probs": [[0.9, 0.1]] * 40}).to_parquet(prev_dir / "predictions-00000.parquet")
    np.save(prev_dir / "embeddings-00000.npy", np.zeros((40, 4), np.float32))
    prev = task_for(cfg).read_predictions(prev_dir)               # the same shard format a round writes
    probs = np.tile([[0.9, 0.1]], (40, 1))
    same = _pool(ids, labels, probs)
    assert (pool_stop_reason(cfg, same, prev, {}) or "").startswith("predictions_stable")
    flipped = labels.copy()
    flipped[:6] = np.where(flipped[:6] == "a", "b", "a")     # 6 of 40 changed: kappa 0.7
    assert pool_stop_reason(cfg, _pool(ids, flipped, probs), prev, {}) is None

    low = _cfg(tmp_path, pool_uncertainty=0.2)
    confident = np.tile([[0.995, 0.005]], (40, 1))
    assert (pool_stop_reason(low, _pool(ids, labels, confident), prev, {}) or "").startswith("pool_uncertainty_low")
    assert pool_stop_reason(low, _pool(ids, labels, np.full((40, 2), 0.5)), prev, {}) is None
