"""DBAL (uncertain items clustered by k-means, one pick per cluster): it spreads a batch over
the uncertain regions where top-k piles into one, through ``select`` and with class
balance, and rejects bad input with a clear error. Also: the class-balanced ``kcenter`` /
``hybrid`` picks are unchanged by the shared per-class helper."""

from __future__ import annotations

import numpy as np
import pytest

from pseudolabel.strategies import STRATEGIES, dbal, select
from pseudolabel.strategies.uncertainty import margin


def _two_uncertain_regions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Region A (10 tight points, the most uncertain), region B (10 tight points, a little less
    uncertain), region C (80 confident points). Embeddings (100, 4), probs (100, 3)."""
    rng = np.random.default_rng(seed)
    emb = np.concatenate([rng.normal(0, 0.01, (10, 4)), rng.normal(5, 0.01, (10, 4)),
                          rng.normal(-5, 1.0, (80, 4))]).astype(np.float32)
    probs = np.tile([0.9, 0.05, 0.05], (100, 1))
    probs[:10] = [0.36, 0.34, 0.30]
    probs[10:20] = [0.40, 0.35, 0.25]
    probs[:20] += rng.uniform(0, 1e-3, (20, 3))
    return emb, probs / probs.sum(1, keepdims=True)


def test_dbal_is_registered() -> None:
    assert "dbal" in STRATEGIES


def test_dbal_spreads_the_batch_over_uncertain_regions_where_top_k_piles_up() -> None:
    emb, probs = _two_uncertain_regions()
    top = select("margin", k=4, probs=probs, uncertainty="margin").indices
    assert set(top.tolist()) <= set(range(10))  # all four from region A
    sel = select("dbal", k=4, probs=probs, embeddings=emb, uncertainty="margin", hybrid_factor=5)
    regions = {int(i) // 10 for i in sel.indices}
    assert regions == {0, 1}  # both uncertain regions, never the confident one
    assert len(set(sel.indices.tolist())) == 4
    u = margin(probs)
    np.testing.assert_allclose(sel.scores, u[sel.indices])
    assert np.all(np.diff(sel.scores) <= 0)  # most uncertain first


def test_dbal_picks_the_most_uncertain_member_of_each_cluster() -> None:
    emb, probs = _two_uncertain_regions()
    u = margin(probs)
    picks = dbal(emb, u, 2, factor=10)  # 20 candidates = regions A and B, two clusters
    assert {int(p) // 10 for p in picks} == {0, 1}
    for p in picks:
        region = np.arange(10) + 10 * (int(p) // 10)
        assert int(p) == int(region[np.argmax(u[region])])


def test_dbal_is_deterministic_and_factor_one_is_top_k() -> None:
    emb, probs = _two_uncertain_regions()
    u = margin(probs)
    a = dbal(emb, u, 5, factor=3, seed=7)
    b = dbal(emb, u, 5, factor=3, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dbal(emb, u, 5, factor=1), np.argsort(-u, kind="stable")[:5])


def test_dbal_fills_the_batch_when_candidates_are_duplicates() -> None:
    emb = np.zeros((30, 3), dtype=np.float32)  # k-means cannot make 6 distinct clusters
    u = np.linspace(1.0, 0.0, 30)
    picks = dbal(emb, u, 6, factor=2)
    assert len(set(picks.tolist())) == 6
    assert set(picks.tolist()) <= set(range(12))  # from the 12 candidates only


def test_dbal_with_class_balance_spreads_over_predicted_classes() -> None:
    emb, probs = _two_uncertain_regions()
    labels_pred = np.zeros(100, dtype=np.int64)
    labels_pred[50:] = 1  # half of the confident region is predicted class 1
    sel = select("dbal", k=4, probs=probs, embeddings=emb, labels_pred=labels_pred, class_balance=True,
                 uncertainty="margin")
    assert sorted(labels_pred[sel.indices].tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"k": 0}, "k must be an int in 1..100"),
    ({"k": 3, "factor": 0}, "factor must be an int >= 1"),
    ({"k": 3, "uncertainty": np.ones(99)}, r"uncertainty must have shape \(100,\)"),
])
def test_dbal_rejects_bad_input(kwargs: dict, match: str) -> None:
    emb, probs = _two_uncertain_regions()
    args = {"uncertainty": margin(probs)} | kwargs
    with pytest.raises(ValueError, match=match):
        dbal(emb, args.pop("uncertainty"), args.pop("k"), **args)


def test_dbal_needs_embeddings_through_select() -> None:
    _, probs = _two_uncertain_regions()
    with pytest.raises(ValueError, match="'dbal' needs embeddings"):
        select("dbal", k=3, probs=probs)


def _brute_class_balanced(strategy: str, emb: np.ndarray, probs: np.ndarray, labels_pred: np.ndarray) -> np.ndarray:
    return select(strategy, k=6, probs=probs, embeddings=emb, labels_pred=labels_pred, class_balance=True,
                  seed=3).indices


@pytest.mark.parametrize("strategy", ["kcenter", "hybrid"])
def test_class_balanced_diversity_strategies_pick_per_class_quota(strategy: str) -> None:
    emb, probs = _two_uncertain_regions()
    labels_pred = np.repeat([0, 1, 2], [20, 50, 30])
    picks = _brute_class_balanced(strategy, emb, probs, labels_pred)
    assert len(set(picks.tolist())) == 6
    assert sorted(labels_pred[picks].tolist()) == [0, 0, 1, 1, 2, 2]
    # round-robin interleaving: the first three picks cover three different classes
    assert len(set(labels_pred[picks[:3]].tolist())) == 3


def test_dbal_ranks_detection_images_by_their_image_scores() -> None:
    from pseudolabel.strategies.detection import detection_strategies, select_images

    emb, probs = _two_uncertain_regions()
    scores = margin(probs)  # stands for the image scores a detector's boxes aggregate to
    assert "dbal" in detection_strategies()
    sel = select_images(scores, 4, strategy="dbal", embeddings=emb)
    assert {int(i) // 10 for i in sel.indices} == {0, 1}
