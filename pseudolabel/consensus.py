"""Consensus over several reviewers per item: majority vote and Dawid-Skene.

- :func:`majority_vote`: per item, the most frequent label, its agreement (fraction of
  votes) and whether the top is tied. A tie has ``label=None``: it is a disagreement for a
  human to adjudicate, never settled silently by an arbitrary order.
- :func:`needs_adjudication`: a tie, or agreement below a threshold.
- :func:`dawid_skene`: EM estimate of each annotator's confusion matrix and each item's
  true-class posterior (Dawid & Skene, 1979). Unlike majority vote it learns who is
  reliable, and a consistently wrong annotator (say, one who swaps two classes) becomes
  informative instead of noise.

Pure functions: no I/O. Labels are class-name strings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ConsensusResult",
    "DawidSkeneResult",
    "dawid_skene",
    "majority_vote",
    "needs_adjudication",
]


@dataclass(frozen=True)
class ConsensusResult:
    """Majority-vote outcome for one item.

    Attributes:
        label: the most voted label, or ``None`` when two or more labels tie for the top.
        agreement: top vote count / n, in ``(0, 1]`` (for a tie, the tied labels' share each).
        n: number of votes.
        tie: True when the top count is shared by more than one label.
        votes: label -> count.
    """

    label: str | None
    agreement: float
    n: int
    tie: bool
    votes: Mapping[str, int] = field(default_factory=dict)


def _check_label(label: object, where: str) -> str:
    if not isinstance(label, str) or not label:
        raise ValueError(f"{where}: label must be a non-empty class-name string; got {label!r}")
    return label


def majority_vote(labels_per_item: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, ConsensusResult]:
    """Majority vote per item: ``{item_id: [label, ...]}`` -> ``{item_id: ConsensusResult}``.

    Raises:
        ValueError: an item with no votes, a bare string instead of a list of labels, or a
        label that is not a non-empty string (naming the item).
    """
    if not isinstance(labels_per_item, Mapping):
        raise ValueError(
            f"labels_per_item must be a mapping item_id -> sequence of labels; got {type(labels_per_item).__name__}"
        )
    out: dict[Hashable, ConsensusResult] = {}
    for item_id, labels in labels_per_item.items():
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise ValueError(
                f"item {item_id!r}: expected a sequence of labels (one per reviewer); got {labels!r}"
            )
        if len(labels) == 0:
            raise ValueError(f"item {item_id!r} has no votes; drop it or collect at least one label")
        counts = Counter(_check_label(lab, f"item {item_id!r}") for lab in labels)
        top = max(counts.values())
        leaders = [lab for lab, c in counts.items() if c == top]
        tie = len(leaders) > 1
        out[item_id] = ConsensusResult(
            label=None if tie else leaders[0],
            agreement=top / len(labels),
            n=len(labels),
            tie=tie,
            votes=dict(counts),
        )
    return out


def needs_adjudication(result: ConsensusResult, *, min_agreement: float = 0.66) -> bool:
    """True when ``result`` is a tie or its agreement is below ``min_agreement`` (in [0, 1])."""
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1]; got {min_agreement!r}")
    return result.tie or result.agreement < min_agreement


@dataclass(frozen=True, eq=False)
class DawidSkeneResult:
    """Output of :func:`dawid_skene`; unpacks as ``labels, confusions, posteriors``.

    Attributes:
        labels: item_id -> most probable true class.
        confusions: annotator -> (C, C) float64 row-stochastic matrix; entry ``[i, j]`` =
            P(annotator says ``classes[j]`` | true class is ``classes[i]``).
        posteriors: item_id -> (C,) float64 posterior over ``classes``, sums to 1.
        priors: (C,) float64 estimated class frequencies.
        n_iter: EM iterations run.
    """

    labels: dict[Hashable, str]
    confusions: dict[Hashable, np.ndarray]
    posteriors: dict[Hashable, np.ndarray]
    priors: np.ndarray
    n_iter: int

    def __iter__(self) -> Iterator[Any]:
        # Lets callers write ``labels, confusions, posteriors = dawid_skene(...)``.
        return iter((self.labels, self.confusions, self.posteriors))


def dawid_skene(
    annotations: Sequence[tuple[Hashable, Hashable, str]],
    classes: Sequence[str],
    *,
    iters: int = 50,
    tol: float = 1e-6,
    smoothing: float = 0.01,
) -> DawidSkeneResult:
    """Dawid-Skene EM over ``(item_id, annotator, label)`` triples.

    Initialised from soft majority vote; M-step estimates class priors and per-annotator
    confusion matrices (with additive ``smoothing`` pseudo-counts so no probability is 0);
    E-step recomputes item posteriors. Stops after ``iters`` iterations or when no posterior
    moves by more than ``tol``. An annotator may label an item more than once (each label
    counts as evidence). Ties in the final posterior go to the earlier class in ``classes``.

    Raises:
        ValueError: empty ``annotations``, a malformed triple, a label not in ``classes``,
        duplicate or empty ``classes``, bad ``iters`` / ``tol`` / ``smoothing``.
    """
    cls = list(classes)
    if not cls or len(set(cls)) != len(cls):
        raise ValueError(f"classes must be a non-empty list of distinct class names; got {cls!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an int >= 1; got {iters!r}")
    if not tol >= 0 or not smoothing > 0:
        raise ValueError(f"need tol >= 0 and smoothing > 0; got tol={tol!r}, smoothing={smoothing!r}")
    if len(annotations) == 0:
        raise ValueError("annotations is empty; dawid_skene needs at least one (item, annotator, label)")
    cindex = {c: j for j, c in enumerate(cls)}
    items: dict[Hashable, int] = {}
    annotators: dict[Hashable, int] = {}
    i_idx, a_idx, l_idx = [], [], []
    for pos, triple in enumerate(annotations):
        if not isinstance(triple, (tuple, list)) or len(triple) != 3:
            raise ValueError(f"annotations[{pos}] must be (item_id, annotator, label); got {triple!r}")
        item, annotator, label = triple
        if label not in cindex:
            raise ValueError(f"annotations[{pos}]: label {label!r} is not one of classes {cls!r}")
        i_idx.append(items.setdefault(item, len(items)))
        a_idx.append(annotators.setdefault(annotator, len(annotators)))
        l_idx.append(cindex[label])
    ii, aa, ll = np.array(i_idx), np.array(a_idx), np.array(l_idx)
    n_items, n_ann, n_cls = len(items), len(annotators), len(cls)

    # Init: soft majority vote.
    post = np.zeros((n_items, n_cls))
    np.add.at(post, (ii, ll), 1.0)
    post /= post.sum(axis=1, keepdims=True)

    n_iter = 0
    for n_iter in range(1, iters + 1):
        # M-step.
        priors = (post.sum(axis=0) + smoothing) / (n_items + n_cls * smoothing)
        conf = np.full((n_ann, n_cls, n_cls), smoothing)
        np.add.at(conf, (aa, slice(None), ll), post[ii])
        conf /= conf.sum(axis=2, keepdims=True)
        # E-step in log space: log prior + sum over the item's labels of log P(label | class).
        log_post = np.tile(np.log(priors), (n_items, 1))
        np.add.at(log_post, ii, np.log(conf[aa, :, ll]))
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(axis=1, keepdims=True)
        delta = float(np.abs(new - post).max())
        post = new
        if delta <= tol:
            break

    item_ids = list(items)
    best = post.argmax(axis=1)
    return DawidSkeneResult(
        labels={it: cls[int(best[r])] for r, it in enumerate(item_ids)},
        confusions={a: conf[j].copy() for a, j in annotators.items()},
        posteriors={it: post[r].copy() for r, it in enumerate(item_ids)},
        priors=priors,
        n_iter=n_iter,
    )
