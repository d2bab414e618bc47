"""Stopping rules: each fires on a constructed case and not on one just short of it."""

from __future__ import annotations

import numpy as np
import pytest

from pseudolabel.stopping import (
    RULE_ORDER,
    StopDecision,
    StoppingRules,
    acceptance_rate_high,
    budget_spent,
    check_all,
    plateau,
    pool_uncertainty_low,
    predictions_stable,
    target_reached,
)


def _hist(*values: float, metric: str = "accuracy") -> list[dict[str, float]]:
    return [{"round": r, metric: v} for r, v in enumerate(values)]


def test_target_reached_fires_at_target_not_just_below():
    fired, reason = target_reached(_hist(0.5, 0.9), metric="accuracy", target=0.9)
    assert fired and reason.startswith("target_reached:") and "0.9000 >= target 0.9000" in reason
    fired, reason = target_reached(_hist(0.5, 0.95, 0.8999), metric="accuracy", target=0.9)
    assert not fired and "0.8999 < target" in reason  # only the latest round counts
    assert target_reached(_hist(0.2), metric="accuracy", target=0.25, higher_is_better=False)[0]
    assert not target_reached([], metric="accuracy", target=0.9)[0]


def test_target_reached_names_a_missing_metric():
    with pytest.raises(ValueError, match=r"history\[1\] has no metric 'macro_f1'"):
        target_reached([{"macro_f1": 0.5}, {"accuracy": 0.6}], metric="macro_f1", target=0.9)


def test_budget_spent_fires_at_budget_not_one_short():
    assert budget_spent(200, 200) == (True, "budget_spent: 200 labels used >= budget 200")
    assert budget_spent(199, 200)[0] is False
    with pytest.raises(ValueError, match="labels_used"):
        budget_spent(-1, 200)


def test_plateau_fires_when_gain_is_at_most_min_delta():
    # Best before the window 0.75; best in the last 3 rounds 0.75 + 0.0078125 (exact in binary).
    hist = _hist(0.5, 0.75, 0.7, 0.75 + 2**-7, 0.74)
    fired, reason = plateau(hist, metric="accuracy", patience=3, min_delta=2**-7)
    assert fired and reason.startswith("plateau:") and "<= min_delta" in reason
    # Gain = min_delta + eps: not a plateau.
    hist_short = _hist(0.5, 0.75, 0.7, 0.75 + 2**-7 + 1e-6, 0.74)
    fired, reason = plateau(hist_short, metric="accuracy", patience=3, min_delta=2**-7)
    assert not fired and "> min_delta" in reason
    # A decline is a plateau too; lower-is-better flips the sign.
    assert plateau(_hist(0.9, 0.8, 0.7), metric="accuracy", patience=2)[0]
    assert not plateau(_hist(0.9, 0.8, 0.7), metric="accuracy", patience=2, higher_is_better=False)[0]


def test_plateau_needs_patience_plus_one_rounds():
    fired, reason = plateau(_hist(0.5, 0.5, 0.5), metric="accuracy", patience=3)
    assert not fired and "need 4" in reason
    assert plateau(_hist(0.5, 0.5, 0.5, 0.5), metric="accuracy", patience=3)[0]
    with pytest.raises(ValueError, match="patience"):
        plateau(_hist(0.5), metric="accuracy", patience=0)


def test_predictions_stable_fires_above_kappa_threshold():
    rng = np.random.default_rng(0)
    prev = rng.integers(4, size=400)
    cur = prev.copy()
    cur[:4] = (cur[:4] + 1) % 4  # 1% changed -> kappa ~ 0.987
    fired, reason = predictions_stable(prev, cur, kappa_threshold=0.98)
    assert fired and reason.startswith("predictions_stable:") and "4 of 400" in reason
    cur[:20] = (prev[:20] + 1) % 4  # 5% changed -> kappa ~ 0.93
    assert not predictions_stable(prev, cur, kappa_threshold=0.98)[0]
    # Identical single-class predictions: kappa is taken as 1, not nan.
    assert predictions_stable(np.zeros(5, int), np.zeros(5, int), kappa_threshold=0.99)[0]
    with pytest.raises(ValueError, match="same shape"):
        predictions_stable(prev, cur[:-1])


def test_predictions_stable_threshold_edge():
    from sklearn.metrics import cohen_kappa_score

    prev = np.array([0, 1] * 50)
    cur = prev.copy()
    cur[0] = 1
    kappa = cohen_kappa_score(prev, cur)
    assert predictions_stable(prev, cur, kappa_threshold=kappa)[0]
    assert not predictions_stable(prev, cur, kappa_threshold=kappa + 1e-9)[0]


def test_pool_uncertainty_low_mean_and_max():
    scores = np.array([0.125, 0.25, 0.375])  # exact in binary: mean 0.25, max 0.375
    assert pool_uncertainty_low(scores, threshold=0.25)[0]
    fired, reason = pool_uncertainty_low(scores, threshold=0.2499)
    assert not fired and reason.startswith("pool_uncertainty_low: mean uncertainty 0.25 >")
    assert not pool_uncertainty_low(scores, threshold=0.25, stat="max")[0]
    assert pool_uncertainty_low(scores, threshold=0.375, stat="max")[0]
    assert pool_uncertainty_low(np.array([]), threshold=0.1)[0]  # nothing left to review
    with pytest.raises(ValueError, match="stat"):
        pool_uncertainty_low(scores, threshold=0.1, stat="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        pool_uncertainty_low(np.array([0.1, np.nan]), threshold=0.1)


def test_acceptance_rate_high_needs_rate_and_sample_size():
    fired, reason = acceptance_rate_high(19, 20, threshold=0.95, min_answered=20)
    assert fired and reason == "acceptance_rate_high: 19/20 = 0.9500 accepted >= threshold 0.9500"
    assert not acceptance_rate_high(18, 20, threshold=0.95, min_answered=20)[0]  # 0.90
    assert not acceptance_rate_high(19, 19, threshold=0.95, min_answered=20)[0]  # too few answers
    assert not acceptance_rate_high(0, 0, threshold=0.5, min_answered=0)[0]
    with pytest.raises(ValueError, match="cannot exceed"):
        acceptance_rate_high(5, 4)


def test_check_all_returns_first_firing_rule_in_fixed_order():
    rules = StoppingRules(budget=100, target=0.9, patience=2, min_delta=0.01, kappa_threshold=0.99)
    hist = _hist(0.80, 0.80, 0.80)  # plateau fires, target does not
    d = check_all(rules, history=hist, labels_used=50, prev_labels=np.zeros(3), cur_labels=np.zeros(3))
    assert isinstance(d, StopDecision) and d.stop
    assert d.reason.startswith("plateau:")  # plateau comes before predictions_stable
    assert [c[0] for c in d.checks] == ["budget_spent", "target_reached", "plateau", "predictions_stable"]
    assert [c[1] for c in d.checks] == [False, False, True, True]
    # Budget is first in the order, so it wins when it fires too.
    d = check_all(rules, history=hist, labels_used=100)
    assert d.stop and d.reason.startswith("budget_spent:")
    assert RULE_ORDER[0] == "budget_spent"


def test_check_all_continues_and_skips_rules_without_input():
    rules = StoppingRules(budget=100, target=0.9, kappa_threshold=0.99, acceptance_threshold=0.9)
    d = check_all(rules, history=_hist(0.5, 0.6), labels_used=10)
    assert not d.stop and d.reason.startswith("continue: budget_spent:")
    skipped = {name for name, _, reason in d.checks if "not evaluated" in reason}
    assert skipped == {"predictions_stable", "acceptance_rate_high"}
    assert check_all(StoppingRules()).reason == "continue: no stopping rule configured"
    d = check_all(StoppingRules(acceptance_threshold=0.9, min_answered=10), accepted=10, answered=10)
    assert d.stop and d.reason.startswith("acceptance_rate_high:")
    d = check_all(StoppingRules(uncertainty_threshold=0.2, uncertainty_stat="max"), pool_scores=np.array([0.1, 0.3]))
    assert not d.stop
