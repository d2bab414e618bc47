"""TypiClust: typical, clustered picks for the cold start (Hacohen, Dekel & Weinshall, ICML 2022).

With few or no labels, uncertainty is unreliable; the best first labels are *typical*
examples spread over the data. TypiClust clusters the (self-supervised or pretrained)
embeddings into ``M + k`` clusters (M = already labelled), then repeatedly takes the
cluster with the fewest labelled-or-picked members (ties: the larger cluster) and picks its
most typical unpicked point::

    typicality(x) = 1 / mean_{j in kNN(x)} ||x - x_j||        (K = min(20, cluster size - 1))

where the neighbours are searched within the cluster. Higher = denser neighbourhood.

Memory: sklearn ``KMeans`` (``MiniBatchKMeans`` above ``MINIBATCH_ABOVE`` points) and a
``NearestNeighbors`` search per cluster (tree or sklearn's chunked brute force), never an
N x N matrix.
"""

from __future__ import annotations

import numpy as np

from .diversity import validate_embeddings, validate_labelled
from .registry import register
from .selection import Selection, SelectionRequest

__all__ = ["MINIBATCH_ABOVE", "TYPICALITY_NEIGHBOURS", "pick_by_cluster", "typicality", "typiclust"]

TYPICALITY_NEIGHBOURS = 20
"""K nearest neighbours for typicality (the paper's value)."""

MINIBATCH_ABOVE = 20_000
"""Points (pool + labelled) above which MiniBatchKMeans replaces KMeans."""


def typicality(embeddings: np.ndarray, *, n_neighbors: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """(N, D) embeddings -> (N,) float64 inverse mean Euclidean distance to the K nearest others.

    ``K = min(n_neighbors, N - 1)``; higher = more typical (denser). A single point gets
    ``inf`` (nothing to compare with); a point with K exact duplicates gets ``inf`` too.
    """
    from sklearn.neighbors import NearestNeighbors

    x = validate_embeddings(embeddings)
    n = x.shape[0]
    kk = min(int(n_neighbors), n - 1)
    if kk < 1:
        return np.full(n, np.inf)
    dist, _ = NearestNeighbors(n_neighbors=kk + 1).fit(x).kneighbors(x)
    # Column 0 is the point itself (distance 0), unless it has duplicates; either way the
    # K smallest distances to *other* points are the K+1 smallest minus one zero.
    mean = dist[:, 1:].astype(np.float64).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 1.0 / mean


def typiclust(
    embeddings: np.ndarray,
    k: int,
    *,
    labelled_embeddings: np.ndarray | None = None,
    seed: int | None = 0,
    n_neighbors: int = TYPICALITY_NEIGHBOURS,
) -> np.ndarray:
    """Pick ``k`` pool rows: the most typical point of each least-covered cluster.

    Args:
        embeddings: (N, D) pool embeddings.
        k: number of picks, ``1 <= k <= N``.
        labelled_embeddings: (M, D) embeddings of already-labelled items (not pool rows);
            they are clustered with the pool and mark their clusters as covered.
        seed: ``random_state`` for k-means; same seed, same picks.
        n_neighbors: K for :func:`typicality`.

    Returns:
        (k,) int64 pool indices, unique, in pick order (uncovered large clusters first).

    Raises:
        ValueError: bad shapes or values, ``k`` outside ``[1, N]``, D mismatch.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = validate_embeddings(embeddings)
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}]; got {k!r}")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be an int >= 1; got {n_neighbors!r}")
    k = int(k)
    lab = validate_labelled(labelled_embeddings, x.shape[1])
    m = lab.shape[0]
    allx = np.concatenate([x, lab]) if m else x
    n_clusters = min(m + k, allx.shape[0])
    if allx.shape[0] > MINIBATCH_ABOVE:
        km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3)
    cluster = km.fit_predict(allx)
    pool_cluster, lab_cluster = cluster[:n], cluster[n:]

    # Per cluster: its pool rows ordered most typical first (ties to the lower index).
    rank = np.zeros(n, dtype=np.float64)
    by_cluster = np.argsort(pool_cluster, kind="stable")
    _, starts = np.unique(pool_cluster[by_cluster], return_index=True)
    for rows in np.split(by_cluster, starts[1:]):
        if rows.shape[0]:
            rank[rows] = -typicality(x[rows], n_neighbors=int(n_neighbors))
    return pick_by_cluster(pool_cluster, lab_cluster, n_clusters, rank, k)


def pick_by_cluster(
    pool_cluster: np.ndarray, labelled_cluster: np.ndarray, n_clusters: int, rank: np.ndarray, k: int
) -> np.ndarray:
    """Cluster-coverage picking shared by TypiClust and the centroid cold start.

    Repeatedly take the cluster with the fewest labelled-or-picked members (ties: the larger
    cluster, then the lower cluster id) and pick its best unpicked pool row, best = lowest
    ``rank`` (ties to the lower row index).

    Args:
        pool_cluster: (N,) int cluster id of each pool row, in ``[0, n_clusters)``.
        labelled_cluster: (M,) int cluster id of each already-labelled item (may be empty).
        n_clusters: number of clusters.
        rank: (N,) float, lower = picked first within its cluster (TypiClust: minus the
            typicality; centroid: the distance to the cluster centre).
        k: number of picks, ``1 <= k <= N``.

    Returns:
        (k,) int64 pool indices, unique, in pick order.
    """
    n = pool_cluster.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}]; got {k!r}")
    sizes = np.bincount(np.concatenate([pool_cluster, labelled_cluster]).astype(np.int64), minlength=n_clusters)
    covered = np.bincount(labelled_cluster.astype(np.int64), minlength=n_clusters).astype(np.int64)
    order: dict[int, np.ndarray] = {}
    by_cluster = np.argsort(pool_cluster, kind="stable")
    ids, starts = np.unique(pool_cluster[by_cluster], return_index=True)
    for c, rows in zip(ids.tolist(), np.split(by_cluster, starts[1:])):
        if rows.shape[0]:
            order[c] = rows[np.lexsort((rows, rank[rows]))]
    next_pos = dict.fromkeys(order, 0)

    picks = np.empty(k, dtype=np.int64)
    for i in range(k):
        live = [c for c in order if next_pos[c] < order[c].shape[0]]
        # Fewest labelled-or-picked members first, then the larger cluster, then lower id.
        c = min(live, key=lambda c: (covered[c], -sizes[c], c))
        picks[i] = order[c][next_pos[c]]
        next_pos[c] += 1
        covered[c] += 1
    return picks


@register("typiclust", labelled_embeddings=True)
def _typiclust_strategy(req: SelectionRequest) -> Selection:
    """TypiClust on embeddings (and labelled_embeddings); no probs needed (cold start).

    ``scores`` = entropy (nats) of each pick when probs are given, else 0 (as ``kcenter``).
    ``class_balance`` is not supported: at the cold start there is no trustworthy class.
    """
    emb = req.need_embeddings()
    if req.class_balance:
        raise ValueError(
            "strategy 'typiclust' does not support class_balance=True; it is a cold-start "
            "strategy that needs no predicted classes"
        )
    picks = typiclust(emb, req.k, labelled_embeddings=req.labelled_embeddings, seed=req.seed)
    return Selection(picks, req.entropy_or_zero(picks))
