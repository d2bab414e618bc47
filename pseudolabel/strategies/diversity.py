"""Diversity: greedy k-center (core-set) selection on embeddings, memory-bounded.

Greedy k-center (Sener & Savarese, 2018) repeatedly picks the pool item farthest from every
item picked so far (and from the already-labelled set), which spreads a batch over the
embedding space instead of spending it on near-duplicates.

Memory: never an N x N matrix. The state is a running min-distance vector (N,) float32;
distances are computed in row blocks of ``chunk_size`` (at most ``chunk_size x 1024``
floats at once against the labelled set), so a 1,000,000 x 128 pool needs the embeddings
(512 MB in float32) plus a few (N,) vectors. Time: O(N * D * (k + M)).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_CHUNK_SIZE", "kcenter_greedy", "l2_normalise", "validate_embeddings"]

DEFAULT_CHUNK_SIZE = 4096
"""Pool rows per distance block."""

_LABELLED_BLOCK = 1024
"""Labelled rows per block: a pool-vs-labelled block is at most chunk_size x 1024 floats."""


def validate_embeddings(embeddings: object, *, name: str = "embeddings", chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Return ``embeddings`` as a C-contiguous (N, D) float32 array, checking it is finite.

    No copy is made when the input already is C-contiguous float32. The finiteness check
    runs in row blocks so it does not allocate an (N, D) boolean array.

    Raises:
        ValueError: not 2-D, D == 0, or a non-finite value (naming its row).
    """
    try:
        arr = np.ascontiguousarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric (N, D) array: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (N, D) (one embedding per row); "
            f"got {arr.ndim}-D array of shape {arr.shape}"
        )
    if arr.shape[1] == 0 and arr.shape[0] > 0:
        raise ValueError(f"{name} must have at least one dimension; got shape {arr.shape}")
    for lo in range(0, arr.shape[0], chunk_size):
        block = arr[lo : lo + chunk_size]
        finite = np.isfinite(block)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise ValueError(
                f"{name} row {lo + row} has a non-finite value {float(block[row, col])!r} "
                f"at column {col}; embeddings must be finite"
            )
    return arr


def validate_labelled(labelled_embeddings: object | None, d: int) -> np.ndarray:
    """The labelled set's embeddings checked against the pool's dimension ``d``: ``(M, d)``
    float32; ``None`` or an empty array gives ``(0, d)``. Another D is an error (both must come
    from the same embedding model)."""
    if labelled_embeddings is None:
        return np.empty((0, d), dtype=np.float32)
    lab = validate_embeddings(labelled_embeddings, name="labelled_embeddings")
    if lab.shape[0] == 0:
        return np.empty((0, d), dtype=np.float32)
    if lab.shape[1] != d:
        raise ValueError(f"labelled_embeddings have D={lab.shape[1]} but embeddings have D={d}; "
                         "both must come from the same embedding model")
    return lab


def l2_normalise(x: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """(N, D) float32 -> a new (N, D) float32 array with unit-length rows (all-zero rows stay
    zero), block by block. Distances between normalised rows lie in [0, 2]."""
    out = np.empty_like(x, dtype=np.float32)
    for lo in range(0, x.shape[0], chunk_size):
        block = np.asarray(x[lo : lo + chunk_size], dtype=np.float32)
        norm = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        np.divide(block, norm, out=out[lo : lo + chunk_size], where=norm > 0)
        out[lo : lo + chunk_size][(norm == 0)[:, 0]] = 0.0
    return out


def _sq_norms(x: np.ndarray, chunk_size: int) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float32)
    for lo in range(0, x.shape[0], chunk_size):
        block = x[lo : lo + chunk_size]
        out[lo : lo + chunk_size] = np.einsum("ij,ij->i", block, block)
    return out


def _update_min_dist(
    min_dist: np.ndarray,
    x: np.ndarray,
    x_sq: np.ndarray,
    center: np.ndarray,
    center_sq: np.float32,
    chunk_size: int,
) -> None:
    """min_dist <- min(min_dist, ||x - center||^2), in place, block by block."""
    for lo in range(0, x.shape[0], chunk_size):
        hi = lo + chunk_size
        d = x_sq[lo:hi] - 2.0 * (x[lo:hi] @ center) + center_sq
        # ||a||^2 - 2ab + ||b||^2 can dip below 0 by rounding; a distance cannot.
        np.maximum(d, 0.0, out=d)
        np.minimum(min_dist[lo:hi], d, out=min_dist[lo:hi])


def _min_dist_to_set(
    x: np.ndarray, x_sq: np.ndarray, others: np.ndarray, chunk_size: int
) -> np.ndarray:
    """(N,) squared distance from each row of ``x`` to its nearest row of ``others``."""
    min_dist = np.full(x.shape[0], np.inf, dtype=np.float32)
    if others.shape[0] == 0:
        return min_dist
    o_sq = _sq_norms(others, chunk_size)
    for lo in range(0, x.shape[0], chunk_size):
        hi = lo + chunk_size
        xb, xb_sq = x[lo:hi], x_sq[lo:hi]
        for olo in range(0, others.shape[0], _LABELLED_BLOCK):
            ohi = olo + _LABELLED_BLOCK
            block = xb_sq[:, None] - 2.0 * (xb @ others[olo:ohi].T) + o_sq[None, olo:ohi]
            np.minimum(min_dist[lo:hi], block.min(axis=1), out=min_dist[lo:hi])
    np.maximum(min_dist, 0.0, out=min_dist)
    return min_dist


def kcenter_greedy(
    embeddings: np.ndarray,
    k: int,
    *,
    already_selected: np.ndarray | None = None,
    seed: int | np.random.Generator | None = 0,
    start: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Pick ``k`` pool rows by greedy k-center (farthest-first traversal).

    Args:
        embeddings: (N, D) pool embeddings (any real dtype; computed in float32).
        k: number of picks, ``1 <= k <= N``.
        already_selected: (M, D) **embeddings** (not indices) of items that are already
            labelled, usually not part of the pool. Picks keep away from them. ``None`` or
            M == 0 means nothing is labelled yet.
        seed: int seed or ``numpy.random.Generator`` for the first pick; used only when
            neither ``start`` nor ``already_selected`` decides it.
        start: pool index of the first pick. Default: with ``already_selected`` the first
            pick is the pool row farthest from the labelled set; without, a seeded random row.
        chunk_size: rows per distance block (memory knob; the result does not depend on it
            beyond float rounding).

    Returns:
        (k,) int64 pool indices, unique, in pick order (first picked first). Distances are
        squared Euclidean; ties go to the lowest index, so the result is deterministic given
        ``seed``.

    Raises:
        ValueError: bad shapes, non-finite values, ``k`` outside ``[1, N]``, bad ``start``
        or ``chunk_size``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    chunk_size = int(chunk_size)
    x = validate_embeddings(embeddings, chunk_size=chunk_size)
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}]; got {k!r}")
    k = int(k)
    if start is not None and (
        isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < n
    ):
        raise ValueError(f"start must be a pool index in [0, {n}); got {start!r}")

    x_sq = _sq_norms(x, chunk_size)
    labelled = None
    if already_selected is not None:
        labelled = validate_embeddings(already_selected, name="already_selected", chunk_size=chunk_size)
        if labelled.shape[0] > 0 and labelled.shape[1] != x.shape[1]:
            raise ValueError(
                f"already_selected has dimension D={labelled.shape[1]} but embeddings have "
                f"D={x.shape[1]}; both must come from the same embedding model"
            )
    if labelled is not None and labelled.shape[0] > 0:
        min_dist = _min_dist_to_set(x, x_sq, labelled, chunk_size)
        first = int(start) if start is not None else int(np.argmax(min_dist))
    else:
        min_dist = np.full(n, np.inf, dtype=np.float32)
        if start is not None:
            first = int(start)
        else:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            first = int(rng.integers(n))

    picks = np.empty(k, dtype=np.int64)
    pick = first
    for i in range(k):
        picks[i] = pick
        _update_min_dist(min_dist, x, x_sq, x[pick], x_sq[pick], chunk_size)
        # A picked row must never be picked again, even if every distance is 0 (duplicates).
        min_dist[pick] = -np.inf
        if i + 1 < k:
            pick = int(np.argmax(min_dist))
    return picks
