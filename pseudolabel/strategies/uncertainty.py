"""Uncertainty scores: pure functions from class probabilities to one score per item.

Every public score function has the :data:`ScoreFn` shape::

    (N, C) probabilities  ->  (N,) float64 scores, higher = more uncertain = reviewed first

The public functions validate their input (2-D, finite, non-negative, rows summing to 1
within ``ROW_SUM_ATOL``) and raise :class:`ValueError` naming the first bad row and its
value. The ``*_kernel`` functions (:data:`KERNELS`) compute the same scores and trust their
input; callers that have already validated (``select``, the detection scores, BALD) use them
to avoid a second pass over a large pool.

Bounds for ``C`` classes:

=====================  ==========================  ===================================
function               range                       maximum reached at
=====================  ==========================  ===================================
``least_confidence``   ``[0, 1 - 1/C]``            the uniform row
``margin``             ``[0, 1]``                  a tie between the two top classes
``entropy``            ``[0, log C]`` (nats)       the uniform row
``entropy(normalise)`` ``[0, 1]``                  the uniform row (divided by log C)
=====================  ==========================  ===================================
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""(N, C) probabilities -> (N,) scores; higher = more uncertain."""

ROW_SUM_ATOL = 1e-3
"""Absolute tolerance on ``|sum(row) - 1|`` accepted by :func:`validate_probs`."""

__all__ = [
    "KERNELS",
    "ROW_SUM_ATOL",
    "SCORE_FUNCTIONS",
    "ScoreFn",
    "entropy",
    "entropy_kernel",
    "least_confidence",
    "least_confidence_kernel",
    "margin",
    "margin_kernel",
    "random_scores",
    "validate_probs",
]


def validate_probs(probs: object, *, name: str = "probs") -> np.ndarray:
    """Check that ``probs`` is an (N, C) probability matrix and return it as float64.

    Accepted: any array-like of real numbers with shape (N, C), N >= 0, C >= 1, every entry
    finite and >= 0, every row summing to 1 within ``ROW_SUM_ATOL``.

    Raises:
        ValueError: naming the shape, or the first bad row index and the offending value.
    """
    try:
        arr = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric (N, C) array of probabilities: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (N, C) (one row of class probabilities per item); "
            f"got {arr.ndim}-D array of shape {arr.shape}"
        )
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class column; got shape {arr.shape}")
    if arr.shape[0] == 0:
        return arr
    finite = np.isfinite(arr)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(
            f"{name} row {row} has a non-finite value {float(arr[row, col])!r} at column {col}; "
            "probabilities must be finite numbers in [0, 1]"
        )
    negative = arr < 0
    if negative.any():
        row, col = np.argwhere(negative)[0]
        raise ValueError(
            f"{name} row {row} has a negative value {float(arr[row, col])!r} at column {col}; "
            "probabilities must be in [0, 1]"
        )
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_ATOL
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"{name} row {row} sums to {float(sums[row])!r}, not 1 (tolerance {ROW_SUM_ATOL}); "
            "pass softmax probabilities, not logits or unnormalised scores"
        )
    return arr


# --- kernels: trust their (N, C) float64 input (validated once by the caller) ------------


def least_confidence_kernel(probs: np.ndarray) -> np.ndarray:
    """:func:`least_confidence` of already validated ``(N, C)`` float64 probabilities -> ``(N,)``."""
    return 1.0 - probs.max(axis=1)


def margin_kernel(probs: np.ndarray) -> np.ndarray:
    """:func:`margin` of already validated ``(N, C)`` float64 probabilities -> ``(N,)``."""
    if probs.shape[1] == 1:
        # One class: the runner-up has probability 0, the margin is the top probability.
        return 1.0 - probs[:, 0]
    # np.partition is O(C) per row; only the two largest are needed.
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy_kernel(probs: np.ndarray, *, normalise: bool = False) -> np.ndarray:
    """:func:`entropy` (nats; ``normalise``: divided by ``log C``) of already validated
    ``(N, C)`` float64 probabilities -> ``(N,)``."""
    # 0 * log 0 = 0: take log(1) = 0 where p == 0 instead of producing nan.
    logp = np.log(np.where(probs > 0, probs, 1.0))
    ent = -(probs * logp).sum(axis=1)
    # Rows that sum to 1 +/- atol can give a tiny negative value; entropy is >= 0.
    np.maximum(ent, 0.0, out=ent)
    if normalise:
        n_classes = probs.shape[1]
        if n_classes == 1:
            return np.zeros_like(ent)
        ent /= np.log(n_classes)
    return ent


# --- public score functions ------------------------------------------------------------


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``1 - max_c p[n, c]``: (N, C) probabilities -> (N,) in ``[0, 1 - 1/C]``.

    Higher = more uncertain. Raises ValueError on invalid probabilities.
    """
    return least_confidence_kernel(validate_probs(probs))


def margin(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)``: (N, C) probabilities -> (N,) in ``[0, 1]``.

    Higher = more uncertain (a tie between the two most likely classes scores 1). With a
    single class the runner-up probability is taken as 0. Raises ValueError on invalid
    probabilities.
    """
    return margin_kernel(validate_probs(probs))


def entropy(probs: np.ndarray, *, normalise: bool = False) -> np.ndarray:
    """Shannon entropy in **nats** (natural log): (N, C) probabilities -> (N,).

    Range ``[0, log C]``; with ``normalise=True`` the result is divided by ``log C`` so it
    lies in ``[0, 1]`` (0 for a single class). ``0 * log 0`` is taken as 0. Higher = more
    uncertain. Raises ValueError on invalid probabilities.
    """
    return entropy_kernel(validate_probs(probs), normalise=normalise)


def random_scores(n: int, *, rng: np.random.Generator | int | None) -> np.ndarray:
    """``n`` independent uniform scores in ``[0, 1)`` as float64, shape (n,).

    ``rng`` is a ``numpy.random.Generator`` or an int seed (``None`` draws fresh OS entropy,
    so pass a seed wherever results must be reproducible). A random "score" carries no
    information; it only fixes a random review order.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int; got {n!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return gen.random(int(n))


SCORE_FUNCTIONS: dict[str, ScoreFn] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}
"""Validated uncertainty score functions by name (the ``uncertainty=`` choices of ``select``)."""

KERNELS: dict[str, ScoreFn] = {
    "least_confidence": least_confidence_kernel,
    "margin": margin_kernel,
    "entropy": entropy_kernel,
}
"""The same scores as :data:`SCORE_FUNCTIONS`, without validation (see the module docstring)."""
