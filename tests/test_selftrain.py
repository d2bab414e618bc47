"""Pseudo-label selection: invariants (human items never chosen, caps, monotonicity) and the
direction of the class-adaptive thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pseudolabel.selftrain import (
    class_thresholds,
    flexmatch_thresholds,
    freematch_thresholds,
    pseudo_weights,
    select_pseudo_labels,
)


def _probs(rng: np.random.Generator, n: int, c: int, sharp: float = 3.0) -> np.ndarray:
    logits = rng.normal(size=(n, c)) * sharp
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _onehotish(labels: list[int], confs: list[float], c: int) -> np.ndarray:
    p = np.zeros((len(labels), c))
    for i, (y, q) in enumerate(zip(labels, confs)):
        p[i, :] = (1 - q) / (c - 1)
        p[i, y] = q
    return p


seeds = st.integers(0, 10_000)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, mode=st.sampled_from(["global", "flexmatch", "freematch"]))
def test_never_selects_a_human_labelled_item(seed: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    p = _probs(rng, 60, 4)
    human = rng.random(60) < 0.4
    p[0] = np.eye(4)[1] * 0.96 + 0.01          # a very confident row ...
    human[0] = True                            # ... that a human already labelled
    sel = select_pseudo_labels(p, threshold=0.6, mode=mode, human_mask=human, floor=0.3)  # type: ignore[arg-type]
    assert not human[sel.indices].any()
    # without the mask that row is picked: the mask is what excludes it
    free = select_pseudo_labels(p, threshold=0.6, mode=mode, floor=0.3)  # type: ignore[arg-type]
    assert 0 in free.indices
    if mode == "global":
        assert set(sel.indices) == set(free.indices) - set(np.flatnonzero(human))


@settings(max_examples=40, deadline=None)
@given(seed=seeds, cap=st.integers(0, 6))
def test_per_class_cap_keeps_the_most_confident(seed: int, cap: int) -> None:
    rng = np.random.default_rng(seed)
    p = _probs(rng, 80, 3)
    sel = select_pseudo_labels(p, threshold=0.5, per_class_cap=cap)
    full = select_pseudo_labels(p, threshold=0.5)
    for c in range(3):
        got = sel.indices[sel.labels == c]
        assert len(got) == min(cap, int((full.labels == c).sum()))
        # the kept ones are the top of the uncapped list for that class
        assert set(got) == set(full.indices[full.labels == c][:cap])
    assert np.all(np.diff(sel.confidences) <= 0)
    assert np.array_equal(sel.labels, p[sel.indices].argmax(1))


@settings(max_examples=60, deadline=None)
@given(seed=seeds, t1=st.floats(0.3, 1.0), t2=st.floats(0.3, 1.0),
       mode=st.sampled_from(["global", "flexmatch", "freematch"]))
def test_raising_the_threshold_never_adds_items(seed: int, t1: float, t2: float, mode: str) -> None:
    lo, hi = sorted((t1, t2))
    rng = np.random.default_rng(seed)
    p = _probs(rng, 50, 5)
    kw = {"mode": mode, "status_threshold": 0.7, "floor": 0.2, "per_class_cap": 4}
    a = set(select_pseudo_labels(p, threshold=lo, **kw).indices)  # type: ignore[arg-type]
    b = set(select_pseudo_labels(p, threshold=hi, **kw).indices)  # type: ignore[arg-type]
    assert b <= a


def test_global_threshold_known_answer() -> None:
    p = _onehotish([0, 1, 1, 2], [0.99, 0.80, 0.96, 0.95], 3)
    sel = select_pseudo_labels(p, threshold=0.95)
    assert sel.indices.tolist() == [0, 2, 3]
    assert sel.labels.tolist() == [0, 1, 2]
    assert np.allclose(sel.confidences, [0.99, 0.96, 0.95])


def test_flexmatch_lowers_the_threshold_of_a_poorly_learned_class() -> None:
    # class 0: 30 confident predictions; class 1: 3; class 2: none confident
    labels = [0] * 30 + [1] * 3 + [1] * 10 + [2] * 10
    confs = [0.99] * 33 + [0.7] * 10 + [0.6] * 10
    p = _onehotish(labels, confs, 3)
    t = flexmatch_thresholds(p, threshold=0.95, warmup=False)
    assert t[0] == pytest.approx(0.95)             # best-learned class keeps the full threshold
    assert t[0] > t[1] > t[2] >= 0
    beta1 = 3 / 30
    assert t[1] == pytest.approx(0.95 * beta1 / (2 - beta1))
    # so a class-1 item at 0.7 confidence is pseudo-labelled in flexmatch mode but not in global
    flex = select_pseudo_labels(p, threshold=0.95, mode="flexmatch", warmup=False, floor=0.0)
    glob = select_pseudo_labels(p, threshold=0.95, mode="global")
    assert 40 in flex.indices and 40 not in glob.indices
    # warm-up: while most of the pool is unconfident, every class counts as less learned
    warm = flexmatch_thresholds(p, threshold=0.95, warmup=True)
    assert np.all(warm <= t + 1e-12)


def test_freematch_follows_model_confidence_and_class_balance() -> None:
    # class 2 gets little probability mass: its threshold must be the lowest
    p = _onehotish([0] * 10 + [1] * 10 + [2] * 2, [0.9] * 22, 3)
    t, state = freematch_thresholds(p)
    assert state.tau == pytest.approx(0.9)
    assert t.max() == pytest.approx(0.9)
    assert t[2] < t[0] and t[2] < t[1]
    # a less confident pool lowers the global level, smoothed by the EMA
    q = _onehotish([0] * 10 + [1] * 10 + [2] * 2, [0.5] * 22, 3)
    t2, state2 = freematch_thresholds(q, state=state, momentum=0.5)
    assert state2.tau == pytest.approx(0.7)
    assert t2.max() == pytest.approx(0.7)
    capped, _ = freematch_thresholds(p, threshold=0.8)
    assert capped.max() == pytest.approx(0.8)


def test_thresholds_ignore_human_rows_and_respect_the_floor() -> None:
    p = _onehotish([0, 0, 1], [0.99, 0.99, 0.6], 2)
    human = np.array([True, True, False])
    t, _ = class_thresholds(p, threshold=0.95, mode="flexmatch", human_mask=human, floor=0.5, warmup=False)
    assert np.all(t >= 0.5)        # class 0 is not confident among the unlabelled rows: floor
    assert np.all(t <= 0.95)


def test_pseudo_weight_is_below_human() -> None:
    w = pseudo_weights(np.array([1.0, 0.9, 0.5]), base=0.5)
    assert np.all(w < 1.0) and w[0] > w[1] > w[2]
    with pytest.raises(ValueError, match="base weight"):
        pseudo_weights(np.array([0.9]), base=1.0)


@pytest.mark.parametrize("bad, match", [
    (np.ones((3, 1)), "C >= 2"),
    (np.array([[0.5, 0.6]]), "sum to 1"),
    (np.array([[np.nan, 1.0]]), "finite"),
])
def test_bad_probs_are_rejected(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_pseudo_labels(bad)


def test_bad_options_are_rejected() -> None:
    p = np.array([[0.9, 0.1]])
    with pytest.raises(ValueError, match="unknown pseudo-label mode"):
        select_pseudo_labels(p, mode="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="human_mask"):
        select_pseudo_labels(p, human_mask=np.array([1]))
    with pytest.raises(ValueError, match="per_class_cap"):
        select_pseudo_labels(p, per_class_cap=-1)
    with pytest.raises(ValueError, match="threshold"):
        select_pseudo_labels(p, threshold=1.5)
