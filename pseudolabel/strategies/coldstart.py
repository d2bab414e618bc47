"""Cold start: which pool items to label first, when there are no or very few labels.

With no labels there is no classifier to be uncertain, and a randomly initialised network's
embeddings are noise; the first labels should be *representative* items spread over the data,
chosen on embeddings from a pretrained or self-supervised backbone (Hacohen et al. 2022;
Yehuda et al. 2022; Gupte et al. 2024 "Revisiting Active Learning in the Era of Vision
Foundation Models", whose centroid initialisation this module provides):

- ``centroid``: k-means into ``M + k`` clusters (M = already labelled), then per cluster the
  pool point nearest its centre, least-covered and larger clusters first
  (:func:`centroid`, registered as the ``centroid`` strategy);
- ``typiclust``: the most typical point per cluster (:mod:`.typiclust`);
- ``probcover``: greedy coverage of ``delta``-balls (:mod:`.probcover`);
- ``kcenter``: farthest-first traversal (:mod:`.diversity`);
- ``random``: a seeded uniform sample, the baseline.

:func:`cold_start` picks by method name from an (N, D) embedding array from any source: the
seed round (before any model exists) and the benchmark's seed set use it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .diversity import kcenter_greedy, l2_normalise, validate_embeddings, validate_labelled
from .registry import register
from .selection import Selection, SelectionRequest
from .typiclust import MINIBATCH_ABOVE, pick_by_cluster, typiclust

__all__ = ["COLD_START_METHODS", "ColdStartMethod", "centroid", "cold_start"]

ColdStartMethod = Literal["centroid", "typiclust", "probcover", "kcenter", "random"]
COLD_START_METHODS: tuple[str, ...] = ("centroid", "typiclust", "probcover", "kcenter", "random")


def _check_k(k: object, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= n:
        raise ValueError(f"k must be an int in [1, N={n}]; got {k!r}")
    return int(k)


def centroid(
    embeddings: np.ndarray,
    k: int,
    *,
    labelled_embeddings: np.ndarray | None = None,
    seed: int | None = 0,
    normalise: bool = True,
) -> np.ndarray:
    """Pick ``k`` pool rows: the point nearest the centre of each least-covered k-means cluster.

    Args:
        embeddings: (N, D) pool embeddings.
        k: number of picks, ``1 <= k <= N``.
        labelled_embeddings: (M, D) embeddings of already-labelled items (not pool rows);
            clustered with the pool, they mark their clusters as covered.
        seed: k-means ``random_state``; same seed, same picks.
        normalise: L2-normalise rows first (cosine geometry, as in Gupte et al.'s code).

    Returns:
        (k,) int64 pool indices, unique, in pick order: clusters without labels first,
        larger first; within a cluster nearest its centre first. Past ``M + k`` clusters'
        worth of picks a cluster gives its second-nearest point, and so on.

    Raises:
        ValueError: bad shapes or values, ``k`` outside ``[1, N]``, D mismatch.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = validate_embeddings(embeddings)
    n = x.shape[0]
    k = _check_k(k, n)
    lab = validate_labelled(labelled_embeddings, x.shape[1])
    if normalise:
        x, lab = l2_normalise(x), l2_normalise(lab)
    allx = np.concatenate([x, lab]) if lab.shape[0] else x
    n_clusters = min(lab.shape[0] + k, allx.shape[0])
    if allx.shape[0] > MINIBATCH_ABOVE:
        km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3)
    cluster = km.fit_predict(allx).astype(np.int64)
    centres = km.cluster_centers_.astype(np.float32)
    diff = x - centres[cluster[:n]]
    dist = np.einsum("ij,ij->i", diff, diff).astype(np.float64)
    return pick_by_cluster(cluster[:n], cluster[n:], n_clusters, dist, k)


def cold_start(
    embeddings: np.ndarray,
    k: int,
    *,
    method: ColdStartMethod | str = "typiclust",
    labelled_embeddings: np.ndarray | None = None,
    n_classes: int | None = None,
    seed: int | None = 0,
    delta: float | None = None,
) -> np.ndarray:
    """Pick the first ``k`` pool rows to label, by ``method`` (see the module docstring).

    Args:
        embeddings: (N, D) pool embeddings from any backbone (pretrained, self-supervised,
            or raw pixels as a last resort).
        k: number of picks, ``1 <= k <= N``.
        method: one of :data:`COLD_START_METHODS`.
        labelled_embeddings: (M, D) embeddings of items labelled already, if any.
        n_classes: the number of classes; ``probcover`` needs it to choose ``delta`` (unless
            ``delta`` is given).
        seed: makes every method deterministic.
        delta: ``probcover`` ball radius (default: chosen from the purity).

    Returns:
        (k,) int64 unique pool indices in pick order.

    Raises:
        ValueError: unknown method (listing the accepted ones), or bad input.
    """
    from .probcover import probcover

    x = validate_embeddings(embeddings)
    k = _check_k(k, x.shape[0])
    if method == "centroid":
        return centroid(x, k, labelled_embeddings=labelled_embeddings, seed=seed)
    if method == "typiclust":
        return typiclust(x, k, labelled_embeddings=labelled_embeddings, seed=seed)
    if method == "probcover":
        return probcover(x, k, labelled_embeddings=labelled_embeddings, n_clusters=n_classes, delta=delta, seed=seed)
    if method == "kcenter":
        return kcenter_greedy(x, k, already_selected=labelled_embeddings, seed=seed)
    if method == "random":
        return np.random.default_rng(seed).permutation(x.shape[0])[:k].astype(np.int64)
    raise ValueError(f"unknown cold-start method {method!r}; choose one of: {', '.join(COLD_START_METHODS)}")


@register("centroid", labelled_embeddings=True)
def _centroid_strategy(req: SelectionRequest) -> Selection:
    """Centroid cold start on embeddings (and labelled_embeddings); no probs needed.
    ``scores`` = entropy (nats) of each pick when probs are given, else 0."""
    emb = req.need_embeddings()
    if req.class_balance:
        raise ValueError(
            "strategy 'centroid' does not support class_balance=True; it is a cold-start "
            "strategy that needs no predicted classes"
        )
    picks = centroid(emb, req.k, labelled_embeddings=req.labelled_embeddings, seed=req.seed)
    return Selection(picks, req.entropy_or_zero(picks))
