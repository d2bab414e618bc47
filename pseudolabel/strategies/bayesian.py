"""BALD: Bayesian active learning by disagreement (Houlsby et al. 2011; Gal et al. 2017).

With ``T`` stochastic forward passes (Monte-Carlo dropout) per item, BALD scores the mutual
information between the prediction and the model parameters::

    bald[n] = H[ mean_t p_t[n] ]  -  mean_t H[ p_t[n] ]        (nats)

High when the passes disagree with each other (epistemic uncertainty: more labels would
help), low when every pass gives the same distribution, *even if that distribution is
uncertain* (aleatoric uncertainty: the image is ambiguous, a label teaches little).

Pure functions on arrays, as in :mod:`~pseudolabel.strategies.uncertainty`:

- :func:`bald`: ``(T, N, C)`` MC probabilities -> ``(N,)`` scores, higher = more uncertain;
- :func:`select_bald`: top-k selection returning a
  :class:`~pseudolabel.strategies.selection.Selection`;
- ``"bald"`` in the registry: ``select("bald", ..., mc_probs=...)``.

The samples come from a model with the ``mc_dropout`` capability
(:meth:`~pseudolabel.models.torchvision_cls.TorchvisionClassifier.mc_dropout_probs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .registry import register
from .selection import Selection, SelectionRequest, balanced_top_k, top_k
from .uncertainty import ROW_SUM_ATOL, entropy_kernel

__all__ = ["bald", "select_bald", "validate_mc_probs"]


def validate_mc_probs(mc_probs: object, *, name: str = "mc_probs") -> np.ndarray:
    """Check ``mc_probs`` is a (T, N, C) array of probability rows; return it as float64.

    Accepted: T >= 1, N >= 0, C >= 1, every entry finite and >= 0, every (t, n) row summing
    to 1 within ``ROW_SUM_ATOL``.

    Raises:
        ValueError: naming the shape, or the first bad (sample, row) and its value.
    """
    try:
        arr = np.asarray(mc_probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric (T, N, C) array: {exc}") from exc
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must be 3-D with shape (T, N, C) (T stochastic passes x N items x C "
            f"classes); got {arr.ndim}-D array of shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{name} needs T >= 1 passes and C >= 1 classes; got shape {arr.shape}")
    if arr.size == 0:
        return arr
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        t, n, c = np.argwhere(bad)[0]
        raise ValueError(
            f"{name}[{t}, {n}, {c}] = {float(arr[t, n, c])!r}; probabilities must be finite and in [0, 1]"
        )
    sums = arr.sum(axis=2)
    off = np.abs(sums - 1.0) > ROW_SUM_ATOL
    if off.any():
        t, n = np.argwhere(off)[0]
        raise ValueError(
            f"{name}[{t}, {n}] sums to {float(sums[t, n])!r}, not 1 (tolerance {ROW_SUM_ATOL}); "
            "pass softmax probabilities, not logits"
        )
    return arr


def _compute_bald(mc: np.ndarray) -> np.ndarray:
    t, n, c = mc.shape
    mean_entropy = entropy_kernel(mc.reshape(t * n, c)).reshape(t, n).mean(axis=0)
    entropy_of_mean = entropy_kernel(mc.mean(axis=0))
    # Jensen: H[mean] >= mean H, so the MI is >= 0; rounding can dip a hair below.
    return np.maximum(entropy_of_mean - mean_entropy, 0.0)


def bald(mc_probs: np.ndarray) -> np.ndarray:
    """BALD mutual information: (T, N, C) MC-dropout probabilities -> (N,) float64, nats.

    ``H[mean_t p_t] - mean_t H[p_t]``; range ``[0, log C]``; 0 when all T passes agree
    (whatever their entropy). Higher = more uncertain = reviewed first.

    Raises:
        ValueError: not (T, N, C), or invalid probabilities (see :func:`validate_mc_probs`).
    """
    return _compute_bald(validate_mc_probs(mc_probs))


def select_bald(
    mc_probs: np.ndarray,
    *,
    k: int,
    class_balance: bool = False,
    labels_pred: np.ndarray | None = None,
) -> Selection:
    """Top-k pool items by :func:`bald`; most uncertain first.

    Args:
        mc_probs: (T, N, C) MC-dropout probabilities of the N pool items.
        k: batch size > 0 (clipped to N).
        class_balance: spread picks round-robin over predicted classes (``labels_pred``, or
            ``argmax`` of the mean probabilities), as in ``select``.
        labels_pred: (N,) int predicted class per item for ``class_balance``.

    Returns:
        :class:`Selection` named ``"bald"``; ``scores`` = BALD (nats) of each pick.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive int (the batch size); got {k!r}")
    mc = validate_mc_probs(mc_probs)
    n = mc.shape[1]
    lp = None
    if labels_pred is not None:
        lp = np.asarray(labels_pred)
        if lp.shape != (n,) or not np.issubdtype(lp.dtype, np.integer):
            raise ValueError(
                f"labels_pred must be a 1-D integer array of shape ({n},); got dtype {lp.dtype} shape {lp.shape}"
            )
    scores = _compute_bald(mc)
    picks = _rank(scores, mc, min(int(k), n), class_balance, lp)
    return Selection(picks, scores[picks], "bald")


def _rank(
    scores: np.ndarray, mc: np.ndarray, k: int, class_balance: bool, labels_pred: np.ndarray | None
) -> np.ndarray:
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if not class_balance:
        return top_k(scores, k).astype(np.int64)
    classes = labels_pred if labels_pred is not None else mc.mean(axis=0).argmax(axis=1)
    picks = balanced_top_k(scores, np.asarray(classes, dtype=np.int64), k)
    return picks[np.lexsort((picks, -scores[picks]))].astype(np.int64)


@register("bald", probs=True)
def _bald_strategy(req: SelectionRequest) -> Selection:
    """Top-k by BALD; needs ``mc_probs`` (T, N, C) on the request (see module docstring)."""
    mc_probs: Any = getattr(req, "mc_probs", None)
    if mc_probs is None:
        raise ValueError(
            "strategy 'bald' needs Monte-Carlo dropout samples mc_probs (T, N, C): pass "
            "select(..., mc_probs=model.mc_dropout_probs(items, T=...)) (a model with the "
            "mc_dropout capability), or call select_bald(mc_probs, k=...)"
        )
    mc = validate_mc_probs(mc_probs)
    if mc.shape[1] != req.n:
        raise ValueError(f"mc_probs has N={mc.shape[1]} items but the pool has {req.n}")
    scores = _compute_bald(mc)
    lp = req.labels_pred
    picks = _rank(scores, mc, req.k, req.class_balance, lp)
    return Selection(picks, scores[picks])
