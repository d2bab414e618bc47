"""Selection: turn scores and embeddings into the batch of pool items to review.

``select(strategy, k=..., probs=..., embeddings=...)`` validates its input once, resolves the
strategy by name from the registry and returns a :class:`Selection`: the picked pool indices,
most uncertain / first picked first, with each pick's uncertainty score.

Built-in strategies
-------------------
``least_confidence`` / ``margin`` / ``entropy``
    top-k by that score (needs ``probs``). O(N) ``np.argpartition``, then only the k picks
    are sorted. ``scores`` = that score.
``random``
    a seeded random k (needs ``probs`` or ``embeddings`` to know N). ``scores`` = entropy
    (nats) of each pick when ``probs`` is given, else 0.
``kcenter``
    greedy k-center on ``embeddings``, keeping away from ``labelled_embeddings``; first
    pick is a seeded random item when nothing is labelled. ``scores`` = entropy (nats) when
    ``probs`` is given, else 0.
``hybrid``
    take the ``hybrid_factor * k`` most uncertain items by ``uncertainty`` and run greedy
    k-center among them (needs ``probs`` and ``embeddings``): uncertain *and* spread out.
    The first pick is the most uncertain candidate when nothing is labelled, else the
    candidate farthest from the labelled set. ``scores`` = the ``uncertainty`` score.

Class balance
-------------
With ``class_balance=True`` the k picks are spread over predicted classes (``labels_pred``,
or ``argmax(probs)``) round-robin: every class with items left gets its r-th pick before any
class gets its (r+1)-th. Score-ranked strategies take each class's items by descending score
(in a partial last round, the classes whose next item scores higher go first) and the
result is then ordered by score, most uncertain first. ``kcenter`` and ``hybrid`` run per
class on the round-robin quota (``hybrid``'s quota follows its uncertainty ranking,
``kcenter``'s gives a partial last round to the larger classes) and the result is
interleaved round by round.

Why this module is over 400 lines: the selection entry point, its request validation and the
built-in score-ranked and hybrid strategies share the request type and the class-balance rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .diversity import kcenter_greedy, validate_embeddings
from .registry import get_strategy, register
from .uncertainty import KERNELS, SCORE_FUNCTIONS, entropy_kernel, random_scores, validate_probs

__all__ = ["Selection", "SelectionRequest", "balanced_top_k", "per_class_picks", "select", "top_k"]


@dataclass(frozen=True, eq=False)
class Selection:
    """The batch picked for review.

    Attributes:
        indices: (k,) int64 pool row indices, unique, most uncertain / first picked first.
        scores: (k,) float64 uncertainty score of each pick (higher = more uncertain); what
            the score is depends on the strategy (see the module docstring).
        strategy: the strategy name that produced it (``"schedule:margin"`` when a strategy
            delegated to another).
    """

    indices: np.ndarray
    scores: np.ndarray
    strategy: str = ""

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True, eq=False)
class SelectionRequest:
    """Validated input handed to a strategy function; built by :func:`select`.

    ``k`` is already clipped to ``1 <= k <= n``. Arrays: ``probs`` (n, C) float64,
    ``embeddings`` (n, D) float32, ``labelled_embeddings`` (M, D) float32, ``labels_pred``
    (n,) int64 — each ``None`` when not given.
    """

    strategy: str
    k: int
    n: int
    probs: np.ndarray | None
    embeddings: np.ndarray | None
    labelled_embeddings: np.ndarray | None
    labels_pred: np.ndarray | None
    class_balance: bool
    hybrid_factor: int
    uncertainty: str
    seed: int | None
    mc_probs: np.ndarray | None = None   # (T, n, C) MC-dropout samples, for ``bald``
    scores: np.ndarray | None = None     # (n,) precomputed uncertainty (detection: image scores)
    n_classes: int | None = None         # C: from probs, or given (detection)
    # Strategy-specific options by strategy name, e.g. {"probcover": {"delta": 0.3}}.
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))

    def need_probs(self) -> np.ndarray:
        """``probs`` ``(N, C)`` float; ValueError naming the strategy when it is missing."""
        if self.probs is None:
            raise ValueError(f"strategy {self.strategy!r} needs probs, an (N, C) probability array")
        return self.probs

    def need_embeddings(self) -> np.ndarray:
        """``embeddings`` ``(N, D)`` float; ValueError naming the strategy when missing."""
        if self.embeddings is None:
            raise ValueError(f"strategy {self.strategy!r} needs embeddings, an (N, D) array")
        return self.embeddings

    def classes(self) -> np.ndarray:
        """(n,) predicted class per item for class balancing."""
        if self.labels_pred is not None:
            return self.labels_pred
        if self.probs is not None:
            return self.probs.argmax(axis=1).astype(np.int64)
        raise ValueError(
            "class_balance=True needs labels_pred (N,) or probs (N, C) to know each item's class"
        )

    def uncertainty_scores(self, name: str | None = None) -> np.ndarray:
        """(n,) uncertainty, higher = more uncertain: the precomputed ``scores`` when given
        (detection's image scores), else score ``name`` (default ``uncertainty``) of ``probs``."""
        if self.scores is not None:
            return self.scores
        if self.probs is None:
            raise ValueError(f"strategy {self.strategy!r} needs probs (N, C) or scores (N,) to rank by uncertainty")
        return KERNELS[name or self.uncertainty](self.probs)

    def entropy_or_zero(self, indices: np.ndarray) -> np.ndarray:
        """What a strategy that does not rank by uncertainty reports for its picks: the given
        ``scores``, else the entropy of ``probs``, else 0."""
        if self.scores is not None:
            return self.scores[indices]
        if self.probs is None:
            return np.zeros(indices.shape[0], dtype=np.float64)
        return entropy_kernel(self.probs[indices])


def select(
    strategy: str,
    *,
    k: int,
    probs: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    labelled_embeddings: np.ndarray | None = None,
    labels_pred: np.ndarray | None = None,
    class_balance: bool = False,
    hybrid_factor: int = 5,
    uncertainty: str = "entropy",
    seed: int | None = 0,
    mc_probs: np.ndarray | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    scores: np.ndarray | None = None,
    n_classes: int | None = None,
) -> Selection:
    """Pick ``k`` pool items to review with the named strategy.

    Args:
        strategy: a registered name (``random``, ``least_confidence``, ``margin``,
            ``entropy``, ``kcenter``, ``hybrid``, or one registered later).
        k: batch size, > 0. When ``k >= N`` all N items are returned (in strategy order).
        probs: (N, C) class probabilities, rows summing to 1.
        embeddings: (N, D) pool embeddings (computed in float32).
        labelled_embeddings: (M, D) embeddings of already-labelled items, for ``kcenter`` /
            ``hybrid``.
        labels_pred: (N,) int predicted class per item for ``class_balance``; default
            ``argmax(probs)``.
        class_balance: spread the picks over predicted classes round-robin.
        hybrid_factor: ``hybrid`` pre-selects the ``hybrid_factor * k`` most uncertain items.
        uncertainty: the score ``hybrid`` ranks by: ``entropy``, ``margin`` or
            ``least_confidence``.
        seed: seed for ``random`` and the first ``kcenter`` pick; same seed, same result.
        mc_probs: (T, N, C) Monte-Carlo dropout samples, needed by ``bald``.
        scores: (N,) uncertainty computed elsewhere (higher = more uncertain), used instead of
            a score of ``probs`` by every strategy that ranks by uncertainty: detection passes
            its image scores, so any registered strategy that does not need class
            probabilities works for detection too.
        n_classes: the number of classes when there are no ``probs`` (``schedule`` counts
            labels per class, ``probcover`` clusters into that many groups).
        options: strategy-specific options by strategy name, e.g.
            ``{"probcover": {"delta": 0.3, "purity": 0.95}, "schedule": {"low": "typiclust",
            "high": "margin", "switch_per_class": 5}}`` (see each strategy's module); other
            strategies ignore them.

    Returns:
        :class:`Selection` with (min(k, N),) ``indices`` and ``scores``.

    Raises:
        ValueError: unknown strategy or uncertainty name, ``k <= 0``, invalid or
        inconsistent arrays, or an array the strategy needs is missing.
    """
    fn = get_strategy(strategy)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive int (the batch size); got {k!r}")
    if uncertainty not in SCORE_FUNCTIONS:
        raise ValueError(
            f"unknown uncertainty {uncertainty!r}; choose one of: {', '.join(SCORE_FUNCTIONS)}"
        )
    if isinstance(hybrid_factor, bool) or not isinstance(hybrid_factor, (int, np.integer)) or hybrid_factor < 1:
        raise ValueError(f"hybrid_factor must be an int >= 1; got {hybrid_factor!r}")

    if options is not None and (not isinstance(options, Mapping)
                                or not all(isinstance(v, Mapping) for v in options.values())):
        raise ValueError(f"options must map strategy names to option mappings, e.g. "
                         f"{{'probcover': {{'delta': 0.3}}}}; got {options!r}")
    p = validate_probs(probs) if probs is not None else None
    sc = None
    if scores is not None:
        sc = np.asarray(scores, dtype=np.float64)
        if sc.ndim != 1 or not np.all(np.isfinite(sc)):
            raise ValueError(f"scores must be a 1-D array (N,) of finite uncertainty values; got shape {sc.shape}")
    emb = validate_embeddings(embeddings) if embeddings is not None else None
    lab = (
        validate_embeddings(labelled_embeddings, name="labelled_embeddings")
        if labelled_embeddings is not None
        else None
    )
    lp = None
    if labels_pred is not None:
        lp_raw = np.asarray(labels_pred)
        if lp_raw.ndim != 1 or not (np.issubdtype(lp_raw.dtype, np.integer) or lp_raw.size == 0):
            raise ValueError(
                f"labels_pred must be a 1-D integer array (N,); got dtype {lp_raw.dtype} "
                f"shape {lp_raw.shape}"
            )
        lp = lp_raw.astype(np.int64)

    sizes = {
        name: arr.shape[0] for name, arr in (("probs", p), ("embeddings", emb), ("labels_pred", lp), ("scores", sc))
        if arr is not None
    }
    if not sizes:
        raise ValueError("select needs probs (N, C), scores (N,) or embeddings (N, D) to know the pool")
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{name} has {size}" for name, size in sizes.items())
        raise ValueError(f"pool arrays disagree on the number of items N: {detail}")
    n = next(iter(sizes.values()))
    if emb is not None and lab is not None and lab.shape[0] > 0 and lab.shape[1] != emb.shape[1]:
        raise ValueError(
            f"labelled_embeddings have D={lab.shape[1]} but embeddings have D={emb.shape[1]}; both must come "
            "from the same backbone"
        )

    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return Selection(_frozen(empty), _frozen(np.empty(0, dtype=np.float64)), strategy)
    req = SelectionRequest(
        strategy=strategy,
        k=int(min(k, n)),
        n=n,
        probs=p,
        embeddings=emb,
        labelled_embeddings=lab,
        labels_pred=lp,
        class_balance=bool(class_balance),
        hybrid_factor=int(hybrid_factor),
        uncertainty=uncertainty,
        seed=seed,
        mc_probs=mc_probs,
        scores=sc,
        n_classes=int(p.shape[1]) if p is not None else (None if n_classes is None else int(n_classes)),
        options=MappingProxyType({str(name): dict(v) for name, v in (options or {}).items()}),
    )
    sel = fn(req)
    # A strategy that delegates (``schedule``) names the one it ran: "schedule:typiclust".
    name = strategy if not sel.strategy or sel.strategy == strategy else f"{strategy}:{sel.strategy}"
    return Selection(
        _frozen(np.asarray(sel.indices, dtype=np.int64)),
        _frozen(np.asarray(sel.scores, dtype=np.float64)),
        name,
    )


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


# --- ranking helpers --------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(k,) indices of the k highest ``scores`` (N,), highest first, ties to the lower index.

    O(N + k log k): ``np.argpartition`` finds the k, only those are sorted.
    """
    n = scores.shape[0]
    if k >= n:
        part = np.arange(n)
    else:
        part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def balanced_top_k(scores: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    """Round-robin over ``classes`` (N,) by descending ``scores`` (N,); (k,) indices.

    Every class gives its r-th best item before any class gives its (r+1)-th; within a
    round, higher score first. Returned in pick order (round, then score).
    """
    n = scores.shape[0]
    order = np.lexsort((np.arange(n), -scores, classes))
    sorted_cls = classes[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_cls[1:], sorted_cls[:-1], out=new_group[1:])
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    rank = np.arange(n) - group_start
    pick_order = np.lexsort((order, -scores[order], rank))[:k]
    return order[pick_order]


def _by_score(indices: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return indices[np.lexsort((indices, -scores[indices]))]


def _interleave(per_class: list[np.ndarray], scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-class pick lists round by round (r-th pick of every class, by score)."""
    idx = np.concatenate(per_class)
    sc = np.concatenate(scores)
    rounds = np.concatenate([np.arange(len(p)) for p in per_class])
    order = np.lexsort((idx, -sc, rounds))
    return idx[order], sc[order]


def _class_groups(classes: np.ndarray) -> list[np.ndarray]:
    """Indices of each class's items, ascending within a class, classes ascending."""
    order = np.argsort(classes, kind="stable")
    _, starts = np.unique(classes[order], return_index=True)
    return np.split(order, starts[1:])


def per_class_picks(classes: np.ndarray, quota_picks: np.ndarray, scores: np.ndarray,
                    pick: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Class-balanced picks of a diversity strategy: each predicted class (``classes`` (N,))
    gets as many picks as it has in ``quota_picks`` (a round-robin quota), chosen by
    ``pick(indices of the class, q)``; the per-class lists are interleaved round by round
    (higher ``scores`` first within a round)."""
    per_class: list[np.ndarray] = []
    per_scores: list[np.ndarray] = []
    for g in _class_groups(classes):
        q = int(np.count_nonzero(classes[quota_picks] == classes[g[0]]))
        if q == 0:
            continue
        picks = pick(g, q)
        per_class.append(picks)
        per_scores.append(scores[picks])
    return _interleave(per_class, per_scores)[0]


# --- built-in strategies ----------------------------------------------------------------


def _score_ranked(req: SelectionRequest, scores: np.ndarray, reported: np.ndarray | None) -> Selection:
    if req.class_balance:
        picks = _by_score(balanced_top_k(scores, req.classes(), req.k), scores)
    else:
        picks = top_k(scores, req.k)
    out = scores[picks] if reported is None else reported[picks]
    return Selection(picks, out)


def _make_uncertainty_strategy(name: str) -> None:
    kernel = KERNELS[name]

    def strategy(req: SelectionRequest) -> Selection:
        return _score_ranked(req, req.scores if req.scores is not None else kernel(req.need_probs()), None)

    strategy.__name__ = f"_{name}_strategy"
    strategy.__doc__ = f"Top-k by {name} of probs (or by the given scores); scores = the ranking score."
    register(name)(strategy)


@register("random")
def _random_strategy(req: SelectionRequest) -> Selection:
    """A seeded uniformly random k; scores = the given scores, else entropy of probs, else 0."""
    order_scores = random_scores(req.n, rng=req.seed)
    return _score_ranked(req, order_scores, req.entropy_or_zero(np.arange(req.n)))


for _name in ("least_confidence", "margin", "entropy"):
    _make_uncertainty_strategy(_name)


@register("kcenter", labelled_embeddings=True)
def _kcenter_strategy(req: SelectionRequest) -> Selection:
    """Greedy k-center on embeddings; scores = entropy of the picks if probs, else 0."""
    emb = req.need_embeddings()
    rng = np.random.default_rng(req.seed)
    if not req.class_balance:
        picks = kcenter_greedy(emb, req.k, already_selected=req.labelled_embeddings, seed=rng)
        return Selection(picks, req.entropy_or_zero(picks))
    classes = req.classes()
    # Quota: round-robin; a partial last round goes to the larger classes.
    _, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    sizes = counts[inverse].astype(np.float64)
    quota_picks = balanced_top_k(sizes, classes, req.k)

    def pick(group: np.ndarray, q: int) -> np.ndarray:
        return group[kcenter_greedy(emb[group], q, already_selected=req.labelled_embeddings, seed=rng)]

    idx = per_class_picks(classes, quota_picks, np.zeros(req.n), pick)
    return Selection(idx, req.entropy_or_zero(idx))


def _hybrid_pick(req: SelectionRequest, pool: np.ndarray, u: np.ndarray, q: int) -> np.ndarray:
    """Top hybrid_factor*q of ``pool`` by ``u``, then k-center among them; pool indices."""
    emb = req.need_embeddings()
    cand = pool[top_k(u[pool], min(req.hybrid_factor * q, pool.shape[0]))]
    lab = req.labelled_embeddings
    nothing_labelled = lab is None or lab.shape[0] == 0
    # Start from the most uncertain candidate (cand[0]) unless the labelled set decides.
    local = kcenter_greedy(
        emb[cand], q, already_selected=lab, start=0 if nothing_labelled else None, seed=req.seed
    )
    return cand[local]


@register("hybrid", labelled_embeddings=True)
def _hybrid_strategy(req: SelectionRequest) -> Selection:
    """Top hybrid_factor*k by uncertainty, then k-center; scores = the uncertainty score."""
    u = req.uncertainty_scores()
    req.need_embeddings()
    if not req.class_balance:
        picks = _hybrid_pick(req, np.arange(req.n), u, req.k)
        return Selection(picks, u[picks])
    classes = req.classes()
    idx = per_class_picks(classes, balanced_top_k(u, classes, req.k), u,
                          lambda group, q: _hybrid_pick(req, group, u, q))
    return Selection(idx, u[idx])
