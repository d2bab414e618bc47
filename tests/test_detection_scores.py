"""Directional and invariant checks for pseudolabel.strategies.detection (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pseudolabel.strategies.detection import (
    aggregate,
    box_uncertainty,
    hflip_boxes,
    image_uncertainty,
    localisation_stability,
    normalise_box_probs,
)
from pseudolabel.types import Box, Prediction


def _pred(boxes: list[tuple[float, float, float, float, float]], probs: list[list[float]]) -> Prediction:
    bx = tuple(Box(x1, y1, x2, y2, "a", score=s) for x1, y1, x2, y2, s in boxes)
    return Prediction("id", "v", boxes=bx, box_probs=np.array(probs, dtype=np.float64).reshape(len(bx), 2))


@pytest.mark.parametrize("score", ["entropy", "margin", "least_confidence"])
def test_uniform_box_vector_more_uncertain_than_confident(score: str) -> None:
    # Independent sigmoids: rows need not sum to 1.
    probs = np.array([[0.4, 0.4, 0.4], [0.9, 0.05, 0.02]])
    s = box_uncertainty(probs, score=score)
    assert s.shape == (2,)
    assert s[0] > s[1]


def test_normalise_box_probs_rows_sum_to_one_and_keep_argmax() -> None:
    raw = np.array([[0.9, 0.3], [0.0, 0.0], [0.1, 0.7]])
    p = normalise_box_probs(raw)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [0.5, 0.5])  # nothing known -> uniform
    assert (p.argmax(axis=1)[[0, 2]] == raw.argmax(axis=1)[[0, 2]]).all()
    with pytest.raises(ValueError, match="row 0"):
        normalise_box_probs(np.array([[-0.1, 0.5]]))


def test_empty_image_scores_as_uncertain() -> None:
    confident = _pred([(0, 0, 10, 10, 0.95)], [[0.95, 0.01]])
    empty = _pred([], [])
    assert image_uncertainty(empty) > image_uncertainty(confident)
    assert aggregate(np.zeros(0)) == 1.0
    assert aggregate(np.zeros(0), empty_score=0.3) == 0.3


def test_low_confidence_box_is_uncertain_even_with_peaked_class_vector() -> None:
    # Normalised, [0.2, 0.001] is peaked; but the detector barely believes the box exists.
    weak = _pred([(0, 0, 10, 10, 0.2)], [[0.2, 0.001]])
    strong = _pred([(0, 0, 10, 10, 0.95)], [[0.95, 0.001]])
    assert image_uncertainty(weak) > image_uncertainty(strong)


def test_min_box_score_ignores_background_boxes() -> None:
    """Near-empty boxes (below the floor) no longer drag every image's mean towards 1: an image
    with one confident box plus background ranks below one with a half-believed box."""
    background = [(50, 50, 60, 60, 0.02), (70, 70, 80, 80, 0.03), (20, 20, 30, 30, 0.02)]
    sure = _pred([(0, 0, 10, 10, 0.95), *background], [[0.95, 0.01]] + [[0.02, 0.01]] * 3)
    unsure = _pred([(0, 0, 10, 10, 0.5)], [[0.5, 0.4]])
    # With every box counted the confident image looks as uncertain as the unsure one.
    assert image_uncertainty(sure, how="mean") > 0.7
    assert image_uncertainty(sure, how="mean", min_box_score=0.1) < 0.2
    assert image_uncertainty(unsure, how="mean", min_box_score=0.1) > image_uncertainty(
        sure, how="mean", min_box_score=0.1)
    # Only background left: the image scores like an empty one.
    only_bg = _pred(background, [[0.02, 0.01]] * 3)
    assert image_uncertainty(only_bg, min_box_score=0.1, empty_score=0.7) == 0.7
    with pytest.raises(ValueError, match="min_box_score"):
        image_uncertainty(sure, min_box_score=1.5)


def test_box_that_moves_under_flip_is_less_stable() -> None:
    width = 100.0
    boxes = np.array([[10.0, 10.0, 30.0, 40.0]])
    same = hflip_boxes(boxes, width)  # the detector found the same box on the mirrored image
    moved = hflip_boxes(boxes + np.array([15.0, 0.0, 15.0, 0.0]), width)
    assert localisation_stability(boxes, same, width) == pytest.approx(0.0, abs=1e-12)
    assert localisation_stability(boxes, moved, width) > localisation_stability(boxes, same, width)
    assert localisation_stability(boxes, np.zeros((0, 4)), width) == 1.0
    assert localisation_stability(np.zeros((0, 4)), np.zeros((0, 4)), width) == 0.0
    # Not un-flipping would be wrong: the un-mirrored box sits elsewhere for an off-centre box.
    assert localisation_stability(boxes, boxes, width) > 0.5


def test_image_uncertainty_with_tta_rises_when_boxes_move() -> None:
    width = 64.0
    p = _pred([(5, 5, 25, 25, 0.9)], [[0.9, 0.05]])
    stable = _pred([(width - 25, 5, width - 5, 25, 0.9)], [[0.9, 0.05]])
    unstable = _pred([(0, 40, 10, 60, 0.9)], [[0.9, 0.05]])
    assert image_uncertainty(p, unstable, width=width) > image_uncertainty(p, stable, width=width)
    with pytest.raises(ValueError, match="width"):
        image_uncertainty(p, stable)


def test_mismatched_box_probs_rejected() -> None:
    bad = Prediction("x", "v", boxes=(Box(0, 0, 1, 1, "a", score=0.5),), box_probs=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="1 boxes"):
        image_uncertainty(bad)


def test_aggregate_rejects_unknown_how_and_bad_k() -> None:
    with pytest.raises(ValueError, match="topk_mean"):
        aggregate(np.ones(3), how="median")
    with pytest.raises(ValueError, match="k must"):
        aggregate(np.ones(3), how="topk_mean", k=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12), st.integers(1, 15))
def test_aggregation_invariants(scores: list[float], k: int) -> None:
    s = np.array(scores)
    mx, mean, total = (aggregate(s, how=h) for h in ("max", "mean", "sum"))
    topk = aggregate(s, how="topk_mean", k=k)
    assert mean <= topk + 1e-12 and topk <= mx + 1e-12
    assert aggregate(s, how="topk_mean", k=1) == pytest.approx(mx)
    assert aggregate(s, how="topk_mean", k=len(s)) == pytest.approx(mean)
    assert total == pytest.approx(mean * len(s))
    # Order does not matter; adding a more uncertain box never lowers max / topk.
    assert aggregate(s[::-1], how="topk_mean", k=k) == pytest.approx(topk)
    assert aggregate(np.append(s, 1.0), how="max") >= mx
    assert aggregate(np.append(s, 1.0), how="topk_mean", k=k) >= topk - 1e-12
