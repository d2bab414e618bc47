"""BADGE: batch active learning by diverse gradient embeddings (Ash et al., ICLR 2020).

Each pool item gets the gradient of the cross-entropy loss w.r.t. the last linear layer's
weights, taking the model's own prediction ``yhat = argmax p`` as the label::

    g_n = (onehot(yhat_n) - p_n) (x) h_n        shape (C * D,), row-major (class-major)

for penultimate features ``h`` (N, D) and probabilities ``p`` (N, C). Its norm
``||onehot - p|| * ||h||`` is large for uncertain items (the model would change a lot),
and directions differ between items the model would learn different things from. k-means++
seeding on ``g`` then picks a batch that is both uncertain (large norms are far from
everything) and diverse (points near a chosen one are unlikely to be chosen).

Memory: :func:`badge` never forms the (N, C*D) matrix. It uses
``<g_i, g_j> = <a_i, a_j> * <h_i, h_j>`` with ``a = onehot - p`` (N, C), so the state is a
few (N,) vectors and distances are computed in row blocks of ``chunk_size``: O(N * (C + D))
memory, O(N * k * (C + D)) time. :func:`gradient_embeddings` materialises ``g`` (block by
block) for callers who want it.
"""

from __future__ import annotations

import numpy as np

from .diversity import DEFAULT_CHUNK_SIZE, validate_embeddings
from .registry import register
from .selection import Selection, SelectionRequest
from .uncertainty import validate_probs

__all__ = ["badge", "gradient_embeddings"]


def _check_pair(probs: object, embeddings: object, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    p = validate_probs(probs)
    h = validate_embeddings(embeddings, chunk_size=int(chunk_size))
    if p.shape[0] != h.shape[0]:
        raise ValueError(
            f"probs has N={p.shape[0]} rows but embeddings has N={h.shape[0]}; one row per pool item in both"
        )
    return p, h


def _residual(p: np.ndarray) -> np.ndarray:
    """(N, C) float32 ``onehot(argmax p) - p``."""
    a = -p.astype(np.float32)
    a[np.arange(p.shape[0]), p.argmax(axis=1)] += 1.0
    return a


def gradient_embeddings(
    probs: np.ndarray, embeddings: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """BADGE gradient embeddings: probs (N, C), features (N, D) -> (N, C*D) float32.

    Row ``n`` is ``np.outer(onehot(argmax p_n) - p_n, h_n).ravel()``. Filled in row blocks
    of ``chunk_size`` so no (chunk, C, D) temporary is larger than needed; the output itself
    is N*C*D floats, so prefer :func:`badge` (which never builds it) for large pools.
    """
    p, h = _check_pair(probs, embeddings, chunk_size)
    a = _residual(p)
    n, c = a.shape
    d = h.shape[1]
    out = np.empty((n, c * d), dtype=np.float32)
    for lo in range(0, n, int(chunk_size)):
        hi = lo + int(chunk_size)
        np.multiply(a[lo:hi, :, None], h[lo:hi, None, :], out=out[lo:hi].reshape(-1, c, d))
    return out


def badge(
    probs: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    *,
    seed: int | np.random.Generator | None = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Pick ``k`` pool rows by k-means++ seeding on BADGE gradient embeddings.

    The first pick is the item with the largest gradient norm (as in the authors' code);
    each next pick is drawn with probability proportional to its squared distance (in
    gradient space) to the nearest pick so far.

    Args:
        probs: (N, C) class probabilities, rows summing to 1.
        embeddings: (N, D) penultimate features ``h`` of the same items.
        k: number of picks, ``1 <= k <= N``.
        seed: int seed or ``numpy.random.Generator`` for the D^2 sampling.
        chunk_size: rows per distance block (memory knob only).

    Returns:
        (k,) int64 pool indices, unique, in pick order. If every remaining item is at
        distance 0 from the picks (duplicates, or all-confident rows with ``g = 0``), the
        rest are drawn uniformly from the unpicked items.

    Raises:
        ValueError: invalid probabilities / embeddings, N mismatch, ``k`` outside ``[1, N]``.
    """
    p, h = _check_pair(probs, embeddings, chunk_size)
    n = p.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}]; got {k!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cs = int(chunk_size)
    a = _residual(p)
    a_sq = np.einsum("ij,ij->i", a, a)
    h_sq = np.einsum("ij,ij->i", h, h)
    g_sq = (a_sq * h_sq).astype(np.float64)  # ||g||^2 = ||a||^2 ||h||^2

    min_dist = np.full(n, np.inf, dtype=np.float64)
    picks = np.empty(int(k), dtype=np.int64)
    pick = int(np.argmax(g_sq))
    for i in range(int(k)):
        picks[i] = pick
        ac, hc = a[pick], h[pick]
        for lo in range(0, n, cs):
            hi = lo + cs
            dot = (a[lo:hi] @ ac).astype(np.float64) * (h[lo:hi] @ hc).astype(np.float64)
            d = g_sq[lo:hi] - 2.0 * dot + g_sq[pick]
            np.maximum(d, 0.0, out=d)
            np.minimum(min_dist[lo:hi], d, out=min_dist[lo:hi])
        min_dist[picks[: i + 1]] = 0.0
        if i + 1 == k:
            break
        total = float(min_dist.sum())
        if total > 0.0 and np.isfinite(total):
            pick = int(rng.choice(n, p=min_dist / total))
        else:
            free = np.setdiff1d(np.arange(n), picks[: i + 1])
            pick = int(rng.choice(free))
    return picks


@register("badge", probs=True)
def _badge_strategy(req: SelectionRequest) -> Selection:
    """k-means++ on gradient embeddings (needs probs and embeddings).

    ``scores`` = the gradient-embedding norm ``||onehot - p|| * ||h||`` of each pick
    (higher = larger expected update = more informative). ``class_balance`` is not
    supported: BADGE's diversity already spreads picks, and a quota would bypass it.
    """
    p = req.need_probs()
    h = req.need_embeddings()
    if req.class_balance:
        raise ValueError(
            "strategy 'badge' does not support class_balance=True; use 'kcenter' or 'hybrid' "
            "for class-balanced diverse batches"
        )
    picks = badge(p, h, req.k, seed=req.seed)
    a = _residual(p[picks])
    norms = np.linalg.norm(a, axis=1).astype(np.float64) * np.linalg.norm(h[picks], axis=1)
    return Selection(picks, norms)
