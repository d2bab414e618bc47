"""Stopping rules for the labelling loop: pure functions, each ``-> (fired, reason)``.

Every rule returns ``(bool, str)``: whether it says *stop*, and a reason that starts with
the rule's name and gives the numbers it compared (fired or not), e.g.
``"plateau: best accuracy 0.9120 in the last 3 rounds vs 0.9100 before (gain 0.0020 <= min_delta 0.0050)"``.
:func:`check_all` evaluates the rules configured in a :class:`StoppingRules` in the fixed
order of :data:`RULE_ORDER` and returns the first that fires as a :class:`StopDecision`.

``history`` is a sequence of per-round mappings (oldest first), e.g.
``[{"round": 0, "accuracy": 0.71, "macro_f1": 0.69}, ...]``; metrics are "higher is better"
unless ``higher_is_better=False`` is passed.

=========================  ==================================================================
rule                       fires when
=========================  ==================================================================
``budget_spent``           ``labels_used >= budget``
``target_reached``         latest ``metric >= target`` (``<=`` when lower is better)
``plateau``                best ``metric`` in the last ``patience`` rounds improves on the best
                           before them by ``<= min_delta`` (needs ``patience + 1`` rounds)
``predictions_stable``     Cohen's kappa between consecutive models' pool predictions
                           ``>= kappa_threshold`` (Bloodgood & Vijay-Shanker, 2009)
``pool_uncertainty_low``   mean (or max) pool uncertainty score ``<= threshold`` (or an empty pool)
``acceptance_rate_high``   ``answered >= min_answered`` and ``accepted / answered >= threshold``
=========================  ==================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "RULE_ORDER",
    "StopDecision",
    "StoppingRules",
    "acceptance_rate_high",
    "budget_spent",
    "check_all",
    "plateau",
    "pool_uncertainty_low",
    "predictions_stable",
    "target_reached",
]

RuleResult = tuple[bool, str]

RULE_ORDER: tuple[str, ...] = (
    "budget_spent",
    "target_reached",
    "plateau",
    "predictions_stable",
    "pool_uncertainty_low",
    "acceptance_rate_high",
)
"""The order :func:`check_all` evaluates rules in: hard limits first, then quality, then
signs of diminishing returns."""


def _metric_series(history: Sequence[Mapping[str, float]], metric: str) -> list[float]:
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise ValueError(
            f"history must be a sequence of per-round mappings; got {type(history).__name__}"
        )
    out = []
    for r, row in enumerate(history):
        if not isinstance(row, Mapping) or metric not in row:
            keys = sorted(row) if isinstance(row, Mapping) else type(row).__name__
            raise ValueError(f"history[{r}] has no metric {metric!r}; it has {keys}")
        v = row[metric]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
            raise ValueError(f"history[{r}][{metric!r}] must be a finite number; got {v!r}")
        out.append(float(v))
    return out


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def target_reached(
    history: Sequence[Mapping[str, float]],
    *,
    metric: str,
    target: float,
    higher_is_better: bool = True,
) -> RuleResult:
    """Fires when the latest round's ``metric`` reaches ``target`` (>=, or <= if lower is better)."""
    target = _finite("target", target)
    series = _metric_series(history, metric)
    if not series:
        return False, f"target_reached: no rounds evaluated yet (target {metric} {target:.4f})"
    last = series[-1]
    fired = last >= target if higher_is_better else last <= target
    op = (">=" if fired else "<") if higher_is_better else ("<=" if fired else ">")
    return fired, f"target_reached: {metric} {last:.4f} {op} target {target:.4f} (round {len(series) - 1})"


def budget_spent(labels_used: int, budget: int) -> RuleResult:
    """Fires when ``labels_used >= budget`` (human labels, seed included)."""
    for name, v in (("labels_used", labels_used), ("budget", budget)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0; got {v!r}")
    fired = labels_used >= budget
    return fired, f"budget_spent: {labels_used} labels used {'>=' if fired else '<'} budget {budget}"


def plateau(
    history: Sequence[Mapping[str, float]],
    *,
    metric: str,
    patience: int,
    min_delta: float = 0.0,
    higher_is_better: bool = True,
) -> RuleResult:
    """Fires when the last ``patience`` rounds gained no more than ``min_delta`` on ``metric``.

    gain = best in the last ``patience`` rounds - best in all rounds before them (signs
    flipped when lower is better). Fires when ``gain <= min_delta``; needs at least
    ``patience + 1`` rounds, otherwise does not fire.
    """
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience must be an int >= 1 (rounds); got {patience!r}")
    min_delta = _finite("min_delta", min_delta)
    if min_delta < 0:
        raise ValueError(f"min_delta must be >= 0; got {min_delta!r}")
    series = _metric_series(history, metric)
    if len(series) < patience + 1:
        return False, f"plateau: {len(series)} rounds of {metric}, need {patience + 1} (patience {patience} + 1)"
    sign = 1.0 if higher_is_better else -1.0
    before = max(sign * v for v in series[:-patience])
    recent = max(sign * v for v in series[-patience:])
    gain = recent - before
    fired = gain <= min_delta
    return fired, (
        f"plateau: best {metric} {sign * recent:.4f} in the last {patience} rounds vs "
        f"{sign * before:.4f} before (gain {gain:.4g} {'<=' if fired else '>'} min_delta {min_delta:.4g})"
    )


def predictions_stable(
    prev_labels: np.ndarray, cur_labels: np.ndarray, *, kappa_threshold: float = 0.99
) -> RuleResult:
    """Fires when Cohen's kappa between two models' pool predictions is ``>= kappa_threshold``.

    ``prev_labels`` and ``cur_labels`` are (N,) predicted classes (ints or names) for the
    same N pool items from consecutive rounds' models. Identical predictions count as
    kappa = 1 (sklearn gives nan when both predict a single class).
    """
    from sklearn.metrics import cohen_kappa_score

    thr = _finite("kappa_threshold", kappa_threshold)
    prev, cur = np.asarray(prev_labels), np.asarray(cur_labels)
    if prev.ndim != 1 or prev.shape != cur.shape:
        raise ValueError(
            f"prev_labels and cur_labels must be 1-D with the same shape (N,) (same pool items, "
            f"same order); got {prev.shape} and {cur.shape}"
        )
    n = prev.shape[0]
    if n == 0:
        return False, "predictions_stable: empty pool, nothing to compare"
    changed = int(np.count_nonzero(prev != cur))
    kappa = 1.0 if changed == 0 else float(cohen_kappa_score(prev, cur))
    if not math.isfinite(kappa):
        kappa = 0.0
    fired = kappa >= thr
    return fired, (
        f"predictions_stable: kappa {kappa:.4f} {'>=' if fired else '<'} threshold {thr:.4f} "
        f"({changed} of {n} pool predictions changed)"
    )


def pool_uncertainty_low(
    scores: np.ndarray, *, threshold: float, stat: Literal["mean", "max"] = "mean"
) -> RuleResult:
    """Fires when the ``stat`` (mean or max) of (N,) pool uncertainty scores is ``<= threshold``.

    Scores are higher = more uncertain (any strategy score, e.g. entropy in nats). An empty
    pool fires: nothing is left to review.
    """
    thr = _finite("threshold", threshold)
    if stat not in ("mean", "max"):
        raise ValueError(f"stat must be 'mean' or 'max'; got {stat!r}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (N,); got shape {s.shape}")
    if s.shape[0] == 0:
        return True, "pool_uncertainty_low: pool is empty, nothing left to review"
    if not np.isfinite(s).all():
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"scores[{bad}] = {s[bad]!r}; uncertainty scores must be finite")
    value = float(s.mean() if stat == "mean" else s.max())
    fired = value <= thr
    return fired, (
        f"pool_uncertainty_low: {stat} uncertainty {value:.4g} {'<=' if fired else '>'} "
        f"threshold {thr:.4g} over {s.shape[0]} pool items"
    )


def acceptance_rate_high(
    accepted: int, answered: int, *, threshold: float = 0.95, min_answered: int = 20
) -> RuleResult:
    """Fires when reviewers accepted the model's suggestion unchanged often enough.

    ``accepted``: reviewed items whose pre-drawn prediction was kept; ``answered``: reviewed
    items (skips excluded). Fires when ``answered >= min_answered`` and
    ``accepted / answered >= threshold``.
    """
    for name, v in (("accepted", accepted), ("answered", answered), ("min_answered", min_answered)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0; got {v!r}")
    if accepted > answered:
        raise ValueError(f"accepted ({accepted}) cannot exceed answered ({answered})")
    thr = _finite("threshold", threshold)
    if answered < min_answered or answered == 0:
        return False, f"acceptance_rate_high: only {answered} answered, need {max(min_answered, 1)}"
    rate = accepted / answered
    fired = rate >= thr
    return fired, (
        f"acceptance_rate_high: {accepted}/{answered} = {rate:.4f} accepted "
        f"{'>=' if fired else '<'} threshold {thr:.4f}"
    )


@dataclass(frozen=True)
class StoppingRules:
    """Which rules :func:`check_all` evaluates: a rule is on when its main parameter is set.

    ``budget`` (labels) -> budget_spent; ``target`` -> target_reached on ``metric``;
    ``patience`` -> plateau on ``metric`` with ``min_delta``; ``kappa_threshold`` ->
    predictions_stable; ``uncertainty_threshold`` -> pool_uncertainty_low with
    ``uncertainty_stat``; ``acceptance_threshold`` -> acceptance_rate_high with
    ``min_answered``.
    """

    metric: str = "accuracy"
    higher_is_better: bool = True
    budget: int | None = None
    target: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    kappa_threshold: float | None = None
    uncertainty_threshold: float | None = None
    uncertainty_stat: Literal["mean", "max"] = "mean"
    acceptance_threshold: float | None = None
    min_answered: int = 20


@dataclass(frozen=True)
class StopDecision:
    """Result of :func:`check_all`.

    Attributes:
        stop: whether to stop.
        reason: the first firing rule's reason (starts with its name), or
            ``"continue: ..."`` joining every evaluated rule's reason.
        checks: ``(rule name, fired, reason)`` for every configured rule, in order;
            rules whose input was not given are reported as not evaluated.
    """

    stop: bool
    reason: str
    checks: tuple[tuple[str, bool, str], ...] = ()


def check_all(
    rules: StoppingRules,
    *,
    history: Sequence[Mapping[str, float]] = (),
    labels_used: int | None = None,
    prev_labels: np.ndarray | None = None,
    cur_labels: np.ndarray | None = None,
    pool_scores: np.ndarray | None = None,
    accepted: int | None = None,
    answered: int | None = None,
) -> StopDecision:
    """Evaluate every configured rule in :data:`RULE_ORDER`; stop on the first that fires.

    All configured rules are evaluated (so ``checks`` is a complete log), but the decision's
    reason is the first firing one's. A configured rule whose input is ``None`` (e.g.
    ``prev_labels`` in the first round) is skipped and logged as not evaluated.
    """
    if not isinstance(rules, StoppingRules):
        raise ValueError(f"rules must be a StoppingRules; got {type(rules).__name__}")
    checks: list[tuple[str, bool, str]] = []

    def skipped(name: str, missing: str) -> None:
        checks.append((name, False, f"{name}: not evaluated ({missing} not given)"))

    for name in RULE_ORDER:
        if name == "budget_spent" and rules.budget is not None:
            if labels_used is None:
                skipped(name, "labels_used")
            else:
                checks.append((name, *budget_spent(labels_used, rules.budget)))
        elif name == "target_reached" and rules.target is not None:
            checks.append(
                (name, *target_reached(history, metric=rules.metric, target=rules.target,
                                       higher_is_better=rules.higher_is_better))
            )
        elif name == "plateau" and rules.patience is not None:
            checks.append(
                (name, *plateau(history, metric=rules.metric, patience=rules.patience,
                                min_delta=rules.min_delta, higher_is_better=rules.higher_is_better))
            )
        elif name == "predictions_stable" and rules.kappa_threshold is not None:
            if prev_labels is None or cur_labels is None:
                skipped(name, "prev_labels/cur_labels")
            else:
                checks.append(
                    (name, *predictions_stable(prev_labels, cur_labels, kappa_threshold=rules.kappa_threshold))
                )
        elif name == "pool_uncertainty_low" and rules.uncertainty_threshold is not None:
            if pool_scores is None:
                skipped(name, "pool_scores")
            else:
                checks.append(
                    (name, *pool_uncertainty_low(pool_scores, threshold=rules.uncertainty_threshold,
                                                 stat=rules.uncertainty_stat))
                )
        elif name == "acceptance_rate_high" and rules.acceptance_threshold is not None:
            if accepted is None or answered is None:
                skipped(name, "accepted/answered")
            else:
                checks.append(
                    (name, *acceptance_rate_high(accepted, answered, threshold=rules.acceptance_threshold,
                                                 min_answered=rules.min_answered))
                )
    for _, fired, reason in checks:
        if fired:
            return StopDecision(True, reason, tuple(checks))
    detail = "; ".join(r for _, _, r in checks) or "no stopping rule configured"
    return StopDecision(False, f"continue: {detail}", tuple(checks))
