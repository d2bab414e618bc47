"""ProbCover: maximum probability coverage for low budgets (Yehuda, Dekel, Hacohen & Weinshall,
NeurIPS 2022, "Active Learning Through a Covering Lens").

Every point covers the ball of radius ``delta`` around it in a (self-supervised or
pretrained) embedding space. With few labels the best picks are those that cover the most
not-yet-covered points: greedily take the pool point whose ``delta``-ball holds the most
uncovered points, mark them covered, repeat. Already-labelled items cover their balls
before the first pick. When everything is covered, the remaining picks are uniformly random
(as in the paper).

Choosing ``delta`` (the paper's rule): cluster the embeddings with k-means into as many
clusters as there are classes and call a ball *pure* when every point in it has the centre's
cluster; take the **largest** ``delta`` whose share of pure balls is at least ``purity``
(``alpha = 0.95`` in the paper). A ball around ``x`` is pure exactly when ``delta`` is at most
the distance from ``x`` to the nearest point of another cluster, so the purity of every
``delta`` follows from that one distance per point: the answer is a quantile of it, with no
search over ``delta`` (the reference code bisects).

Embeddings are L2-normalised first (as in the reference code), so distances lie in [0, 2].

Memory: never an N x N matrix. Distances are computed in row blocks of at most
``BLOCK_FLOATS`` floats; the graph is a sparse (CSR) adjacency matrix of the pairs closer
than ``delta``, whose size is N times the average ball size; :func:`probcover` refuses to
build more than ``max_edges`` pairs (a too-large ``delta`` for the pool) with an error that
says what to change. Time: O(N^2 D) for the graph, O(edges) for the greedy picks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .diversity import l2_normalise, validate_embeddings, validate_labelled
from .registry import register
from .selection import Selection, SelectionRequest

__all__ = [
    "BLOCK_FLOATS",
    "DEFAULT_PURITY",
    "MAX_EDGES",
    "PURITY_SAMPLE",
    "ball_graph",
    "nearest_other_cluster",
    "probcover",
    "purity_delta",
]

DEFAULT_PURITY = 0.95
"""Share of pure balls ``delta`` must keep (the paper's alpha)."""

PURITY_SAMPLE = 10_000
"""Points whose distance to another cluster is measured to choose ``delta`` (against all points)."""

MAX_EDGES = 50_000_000
"""Default cap on the pairs of the ball graph (about 400 MB of indices)."""

BLOCK_FLOATS = 1 << 24
"""Floats in one distance block (64 MB)."""

MINIBATCH_ABOVE = 20_000
"""Points above which MiniBatchKMeans replaces KMeans when clustering for ``delta``."""


def _block_rows(n_cols: int) -> int:
    return max(1, min(4096, BLOCK_FLOATS // max(n_cols, 1)))


def _sq_dist_block(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    # In place: one (R, N) block, no temporaries of its size.
    d = a @ b.T
    d *= -2.0
    d += a_sq[:, None]
    d += b_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def _cluster(x: np.ndarray, n_clusters: int, seed: int | None) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if x.shape[0] > MINIBATCH_ABOVE:
        km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3)
    return km.fit_predict(x).astype(np.int64)


def nearest_other_cluster(x: np.ndarray, clusters: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(R,) float64 Euclidean distance from each ``x[rows]`` to the nearest point of ``x``
    (N, D) in another cluster (``clusters`` (N,)); ``inf`` when there is none. Row blocks,
    no (R, N) matrix."""
    x_sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(rows.shape[0], dtype=np.float64)
    step = _block_rows(x.shape[0])
    for lo in range(0, rows.shape[0], step):
        r = rows[lo : lo + step]
        d = _sq_dist_block(x[r], x_sq[r], x, x_sq)
        d[clusters[r][:, None] == clusters[None, :]] = np.inf
        out[lo : lo + step] = np.sqrt(d.min(axis=1))
    return out


def purity_delta(
    embeddings: np.ndarray,
    *,
    n_clusters: int,
    purity: float = DEFAULT_PURITY,
    seed: int | None = 0,
    sample: int = PURITY_SAMPLE,
    normalise: bool = True,
) -> float:
    """The largest ball radius whose share of pure balls is at least ``purity``.

    Args:
        embeddings: (N, D) points (pool and labelled together); L2-normalised first when
            ``normalise``.
        n_clusters: k-means clusters standing in for the classes (the number of classes).
        purity: required share of pure balls, in (0, 1].
        seed: k-means ``random_state`` and the sample's seed.
        sample: at most this many points are measured (each against all N), so the cost is
            O(sample x N x D); purity is a share over points, which a uniform sample
            estimates without bias.

    Returns:
        ``delta`` (Euclidean distance, in the normalised space when ``normalise``): balls are
        the points *closer* than ``delta``. 0.0 when more than ``1 - purity`` of the points
        have an exact duplicate in another cluster.

    Raises:
        ValueError: bad values, fewer than 2 points or clusters, or every point in one cluster.
    """
    x = validate_embeddings(embeddings)
    n = x.shape[0]
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 2:
        raise ValueError(f"n_clusters must be an int >= 2 (the number of classes); got {n_clusters!r}")
    if isinstance(purity, bool) or not isinstance(purity, (int, float)) or not 0 < purity <= 1:
        raise ValueError(f"purity must be in (0, 1]; got {purity!r}")
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
        raise ValueError(f"sample must be an int >= 1; got {sample!r}")
    if n < 2:
        raise ValueError(f"purity_delta needs at least 2 points; got {n}")
    if normalise:
        x = l2_normalise(x)
    clusters = _cluster(x, min(int(n_clusters), n), seed)
    if np.unique(clusters).shape[0] < 2:
        raise ValueError("k-means put every point in one cluster (identical embeddings?); "
                         "set delta explicitly")
    rows = np.arange(n)
    if n > sample:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=int(sample), replace=False))
    d_other = np.sort(nearest_other_cluster(x, clusters, rows))
    # Ball(x, delta) = {y : |x - y| < delta} is pure  <=>  delta <= d_other(x). The share of
    # pure balls is #{d_other >= delta} / R; the largest delta keeping it >= purity is the
    # m-th smallest d_other with m = floor((1 - purity) * R).
    m = int(np.floor((1.0 - float(purity)) * d_other.shape[0] + 1e-9))
    return float(d_other[min(m, d_other.shape[0] - 1)])


def ball_graph(x: np.ndarray, delta: float, *, max_edges: int = MAX_EDGES) -> Any:
    """Symmetric (N, N) boolean ``scipy.sparse.csr_matrix`` of the pairs of ``x`` (N, D) closer than ``delta``
    (each point is its own neighbour when ``delta > 0``).

    Raises:
        ValueError: more than ``max_edges`` pairs (the error gives the average ball size and
        what to change).
    """
    import scipy.sparse as sp

    n = x.shape[0]
    x_sq = np.einsum("ij,ij->i", x, x)
    d2 = float(delta) ** 2
    step = _block_rows(n)
    rows_parts: list[np.ndarray] = []
    cols_parts: list[np.ndarray] = []
    total = 0
    for lo in range(0, n, step):
        d = _sq_dist_block(x[lo : lo + step], x_sq[lo : lo + step], x, x_sq)
        r, c = np.nonzero(d < d2)
        total += r.shape[0]
        if total > max_edges:
            done = lo + d.shape[0]
            raise ValueError(
                f"ProbCover graph at delta={delta:.4g} would hold more than {max_edges:,} pairs (about "
                f"{total / done:,.0f} neighbours per point over the first {done:,} of {n:,} points); "
                "set a smaller delta (selection.probcover.delta) or a lower purity, or select on a "
                "subsample of the pool"
            )
        rows_parts.append((r + lo).astype(np.int32))
        cols_parts.append(c.astype(np.int32))
    rows = np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int32)
    cols = np.concatenate(cols_parts) if cols_parts else np.zeros(0, np.int32)
    a = sp.csr_matrix((np.ones(rows.shape[0], dtype=bool), (rows, cols)), shape=(n, n))
    # Float rounding can make |a - b| < delta hold one way only: keep every pair both ways so
    # that in-neighbours are out-neighbours (the greedy update relies on it).
    a = a.maximum(a.T).tocsr()
    a.sort_indices()
    return a


def _covered_by(x: np.ndarray, lab: np.ndarray, delta: float) -> np.ndarray:
    """(N,) bool: pool rows closer than ``delta`` to some labelled row."""
    covered = np.zeros(x.shape[0], dtype=bool)
    if lab.shape[0] == 0:
        return covered
    x_sq = np.einsum("ij,ij->i", x, x)
    l_sq = np.einsum("ij,ij->i", lab, lab)
    d2 = float(delta) ** 2
    step = _block_rows(lab.shape[0])
    for lo in range(0, x.shape[0], step):
        d = _sq_dist_block(x[lo : lo + step], x_sq[lo : lo + step], lab, l_sq)
        covered[lo : lo + step] = (d < d2).any(axis=1)
    return covered


def probcover(
    embeddings: np.ndarray,
    k: int,
    *,
    labelled_embeddings: np.ndarray | None = None,
    delta: float | None = None,
    n_clusters: int | None = None,
    purity: float = DEFAULT_PURITY,
    seed: int | None = 0,
    normalise: bool = True,
    max_edges: int = MAX_EDGES,
) -> np.ndarray:
    """Pick ``k`` pool rows by greedy maximum coverage of ``delta``-balls.

    Args:
        embeddings: (N, D) pool embeddings.
        k: number of picks, ``1 <= k <= N``.
        labelled_embeddings: (M, D) embeddings of already-labelled items (not pool rows);
            the pool points within ``delta`` of them count as covered from the start.
        delta: ball radius (Euclidean, in the L2-normalised space when ``normalise``; at most
            2 there). ``None``: chosen by :func:`purity_delta` on pool + labelled with
            ``n_clusters`` and ``purity``.
        n_clusters: clusters for choosing ``delta``: the number of classes. Needed when
            ``delta`` is None.
        purity: see :func:`purity_delta`.
        seed: k-means seed, purity sample and the random picks once all is covered.
        normalise: L2-normalise the embeddings (the reference code's choice).
        max_edges: refuse graphs with more pairs than this (see the module docstring).

    Returns:
        (k,) int64 pool indices, unique, in pick order (largest new coverage first; once
        every point is covered, seeded random picks among the rest). Ties go to the lower
        index.

    Raises:
        ValueError: bad shapes or values, ``k`` outside ``[1, N]``, D mismatch, ``delta`` and
        ``n_clusters`` both missing, or a graph over ``max_edges``.
    """
    x = validate_embeddings(embeddings)
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}]; got {k!r}")
    lab = validate_labelled(labelled_embeddings, x.shape[1])
    if isinstance(max_edges, bool) or not isinstance(max_edges, (int, np.integer)) or max_edges < 1:
        raise ValueError(f"max_edges must be an int >= 1; got {max_edges!r}")
    if normalise:
        x, lab = l2_normalise(x), l2_normalise(lab)
    if delta is None:
        if n_clusters is None:
            raise ValueError("probcover needs delta or n_clusters (the number of classes) to choose delta")
        delta = purity_delta(np.concatenate([x, lab]) if lab.shape[0] else x, n_clusters=int(n_clusters),
                             purity=purity, seed=seed, normalise=False)
    elif isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating)) or not np.isfinite(delta) \
            or delta < 0:
        raise ValueError(f"delta must be a finite number >= 0; got {delta!r}")

    graph = ball_graph(x, float(delta), max_edges=int(max_edges))
    indptr, indices = graph.indptr, graph.indices
    covered = _covered_by(x, lab, float(delta))
    # degree[i] = uncovered points in i's ball.
    degree = np.diff(indptr).astype(np.int64) - np.bincount(
        np.repeat(np.arange(n), np.diff(indptr)), weights=covered[indices], minlength=n
    ).astype(np.int64)
    picked = np.zeros(n, dtype=bool)
    picks = np.empty(int(k), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for i in range(int(k)):
        degree[picked] = -1
        cur = int(np.argmax(degree))
        if degree[cur] <= 0:
            # Everything is covered: the paper falls back to random picks.
            rest = np.flatnonzero(~picked)
            picks[i:] = rng.choice(rest, size=int(k) - i, replace=False)
            break
        picks[i] = cur
        picked[cur] = True
        ball = indices[indptr[cur] : indptr[cur + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        # Each newly covered point leaves the ball of every one of its neighbours.
        nbrs = np.concatenate([indices[indptr[v] : indptr[v + 1]] for v in new.tolist()])
        degree -= np.bincount(nbrs, minlength=n)
    return picks


@register("probcover", labelled_embeddings=True)
def _probcover_strategy(req: SelectionRequest) -> Selection:
    """ProbCover on embeddings; ``delta`` from ``options['probcover']`` or chosen from the
    purity with as many clusters as classes (``probs``' C, or ``options['probcover']
    ['n_clusters']``). ``scores`` = entropy (nats) of each pick when probs are given, else 0."""
    emb = req.need_embeddings()
    if req.class_balance:
        raise ValueError(
            "strategy 'probcover' does not support class_balance=True; it covers the embedding "
            "space, not the predicted classes"
        )
    opts = dict(req.options.get("probcover") or {})
    n_clusters = opts.get("n_clusters")
    if n_clusters is None:
        n_clusters = req.n_classes
    picks = probcover(emb, req.k, labelled_embeddings=req.labelled_embeddings, delta=opts.get("delta"),
                      n_clusters=n_clusters, purity=float(opts.get("purity", DEFAULT_PURITY)), seed=req.seed)
    return Selection(picks, req.entropy_or_zero(picks))
