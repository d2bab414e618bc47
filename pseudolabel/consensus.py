"""Consensus over several reviewers per item: majority vote and Dawid-Skene.

- :func:`majority_vote`: per item, the most frequent label, its agreement (fraction of
  votes) and whether the top is tied. A tie has ``label=None``: it is a disagreement for a
  human to adjudicate, never settled silently by an arbitrary order.
- :func:`needs_adjudication`: a tie, or agreement below a threshold.
- :func:`dawid_skene`: EM estimate of each annotator's confusion matrix and each item's
  true-class posterior (Dawid & Skene, 1979). Unlike majority vote it learns who is
  reliable, and a consistently wrong annotator (say, one who swaps two classes) becomes
  informative instead of noise.

For reviews as :class:`~pseudolabel.types.Annotation` objects, :func:`decide` (one item) and
:func:`decide_many` (a whole project, so Dawid-Skene can learn who is reliable) return a
:class:`Decision`. Detection / segmentation answers are settled by picking the one answer
that agrees best with the others (matched F1 at IoU 0.5), not by fusing boxes.

Pure functions: no I/O. Labels are class-name strings.

Why this module is over 400 lines: majority vote and Dawid-Skene with their adjudication rules
operate on the same vote tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pseudolabel.data.geometry import box_iou
from pseudolabel.types import Annotation, Box

__all__ = [
    "ConsensusResult",
    "DawidSkeneResult",
    "Decision",
    "box_f1",
    "dawid_skene",
    "decide",
    "decide_many",
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
        # numpy's stub types ufunc.at's indices as an int array, but a tuple with slices is accepted
        np.add.at(conf, (aa, slice(None), ll), post[ii])  # type: ignore[arg-type]
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


# --------------------------------------------------------------------------- decisions on reviews

Method = Literal["majority", "dawid_skene"]
METHODS: tuple[str, ...] = ("majority", "dawid_skene")
# Dawid-Skene estimates one confusion matrix per reviewer: with fewer items answered by
# several reviewers than this, the estimates are noise and majority vote is used instead.
DS_MIN_SHARED_ITEMS = 20


@dataclass(frozen=True)
class Decision:
    """The settled answer for one item.

    Attributes:
        label: the decided class (classification); ``None`` for a tie or for detection.
        agreement: classification: share of the votes that chose ``label`` (for a tie,
            the tied labels' share each); detection: mean matched F1 (IoU >= 0.5, same class) of the
            chosen answer against every other answer. In [0, 1], higher = more agreement.
        n_votes: answers that counted (skipped reviews do not vote).
        needs_adjudication: True when a human should settle it: a tie, or ``confidence``
            below ``min_agreement``.
        method: ``"majority"``, ``"dawid_skene"`` or ``"boxes"`` (detection), i.e. what
            actually decided (Dawid-Skene falls back to majority without enough overlap).
        confidence: what ``min_agreement`` is compared with: ``agreement`` for majority and
            boxes, the posterior probability of ``label`` for Dawid-Skene.
        boxes: detection / segmentation: the chosen answer's boxes (pixels, xyxy).
        chosen: detection: index (in the given annotations) of the answer taken.
    """

    label: str | None
    agreement: float
    n_votes: int
    needs_adjudication: bool
    method: str
    confidence: float
    boxes: tuple[Box, ...] = ()
    chosen: int | None = None


def _votes(annotations: Sequence[Annotation], where: str) -> tuple[list[Annotation], bool]:
    """The annotations that vote, and whether they are detection answers."""
    if isinstance(annotations, (str, bytes)) or not isinstance(annotations, Sequence):
        raise ValueError(f"{where}: expected a sequence of Annotation objects; got {annotations!r}")
    for pos, a in enumerate(annotations):
        if not isinstance(a, Annotation):
            raise ValueError(f"{where}: annotations[{pos}] is {type(a).__name__}, not an Annotation")
    votes = [a for a in annotations if a.review_outcome != "skipped" and (a.label is not None or a.boxes or a.empty_ok)]
    cls_votes = [a for a in votes if a.label is not None]
    if cls_votes and len(cls_votes) != len(votes):
        raise ValueError(
            f"{where}: mixes class labels and box answers; give one task type per item"
        )
    return votes, bool(votes) and not cls_votes


def _match(a: Sequence[Box], b: Sequence[Box], iou: float) -> tuple[float, float]:
    """(F1, mean IoU of the matched pairs) under the max-IoU one-to-one matching."""
    if not a and not b:
        return 1.0, 1.0
    if not a or not b:
        return 0.0, 0.0
    from scipy.optimize import linear_sum_assignment

    m = box_iou(a, b, same_label=True)  # (len(a), len(b)); 0 across classes
    rows, cols = linear_sum_assignment(-m)
    hits = m[rows, cols][m[rows, cols] >= iou]
    return 2.0 * len(hits) / (len(a) + len(b)), float(hits.mean()) if len(hits) else 0.0


def box_f1(a: Sequence[Box], b: Sequence[Box], *, iou: float = 0.5) -> float:
    """F1 of two answers' boxes under a one-to-one matching (same class, IoU >= ``iou``).

    Matching maximises total IoU (``scipy.optimize.linear_sum_assignment``). Two empty
    answers agree fully (1.0); one empty and one not: 0.0. Symmetric, in [0, 1].
    Polygons are compared through their ``xyxy`` boxes.
    """
    return _match(a, b, iou)[0]


def _decide_boxes(votes: Sequence[Annotation], annotations: Sequence[Annotation], min_agreement: float) -> Decision:
    n = len(votes)
    f1, tight = np.eye(n), np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            f, t = _match(votes[i].boxes, votes[j].boxes, 0.5)
            f1[i, j] = f1[j, i] = f
            tight[i, j] = tight[j, i] = t
    mean = (f1.sum(axis=1) - 1.0) / max(1, n - 1) if n > 1 else np.ones(1)
    mean_iou = (tight.sum(axis=1) - 1.0) / max(1, n - 1) if n > 1 else np.ones(1)
    # Highest mean F1; among equals, the tightest boxes (mean matched IoU); then the earliest.
    best = max(range(n), key=lambda k: (round(float(mean[k]), 12), float(mean_iou[k]), -k))
    agreement = float(mean[best])
    return Decision(
        label=None, agreement=agreement, n_votes=n, needs_adjudication=agreement < min_agreement,
        method="boxes", confidence=agreement, boxes=votes[best].boxes,
        chosen=next(k for k, a in enumerate(annotations) if a is votes[best]),
    )


def _check_options(method: str, min_agreement: float) -> None:
    if method not in METHODS:
        raise ValueError(f"consensus method {method!r} is not one of {list(METHODS)}")
    if isinstance(min_agreement, bool) or not isinstance(min_agreement, (int, float)) or not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be a number in [0, 1]; got {min_agreement!r}")


def _annotator(a: Annotation, k: int) -> str:
    # A review without a known reviewer is its own annotator (it cannot share a confusion matrix).
    return a.reviewer if a.reviewer else f"anonymous:{a.ls_annotation_id if a.ls_annotation_id is not None else k}"


def decide_many(
    by_item: Mapping[str, Sequence[Annotation]],
    *,
    method: Method = "majority",
    classes: Sequence[str] | None = None,
    min_agreement: float = 0.5,
) -> dict[str, Decision]:
    """A :class:`Decision` for every item of ``{item_id: [Annotation, ...]}`` that has a vote.

    Skipped reviews (``review_outcome="skipped"``) do not vote; items with no vote are left
    out of the result. Classification: ``method="majority"`` uses :func:`majority_vote`
    (a tie has ``label=None`` and needs adjudication); ``"dawid_skene"`` runs
    :func:`dawid_skene` over all items at once when at least ``DS_MIN_SHARED_ITEMS`` items have
    two or more votes (else majority; ``Decision.method`` says which ran), needing
    ``classes``. Detection / segmentation: the answer with the highest mean matched F1
    against the others (see :func:`box_f1`) is taken whole.

    ``needs_adjudication`` = no label (tie) or ``confidence < min_agreement``.
    """
    _check_options(method, min_agreement)
    votes: dict[str, list[Annotation]] = {}
    det: dict[str, bool] = {}
    given: dict[str, Sequence[Annotation]] = {}
    for item_id, anns in by_item.items():
        v, is_det = _votes(anns, f"item {item_id!r}")
        if v:
            votes[item_id], det[item_id], given[item_id] = v, is_det, anns
    out: dict[str, Decision] = {}
    cls_items = [i for i in votes if not det[i]]
    for i in votes:
        if det[i]:
            out[i] = _decide_boxes(votes[i], given[i], min_agreement)
    if not cls_items:
        return out
    mv = majority_vote({i: [a.label for a in votes[i]] for i in cls_items})  # type: ignore[misc]
    shared = sum(1 for i in cls_items if len(votes[i]) >= 2)
    if method == "dawid_skene":
        if classes is None:
            raise ValueError("method='dawid_skene' needs classes (the class names, in any order)")
        cls = list(classes)
        bad = sorted({a.label for i in cls_items for a in votes[i]} - set(cls))  # type: ignore[type-var]
        if bad:
            raise ValueError(f"labels {bad!r} are not among classes {cls!r}")
    if method == "dawid_skene" and shared >= DS_MIN_SHARED_ITEMS:
        triples = [(i, _annotator(a, k), a.label) for i in cls_items for k, a in enumerate(votes[i])]
        ds = dawid_skene(triples, cls)  # type: ignore[arg-type]
        for i in cls_items:
            post = ds.posteriors[i]
            order = np.argsort(post)[::-1]
            top = float(post[order[0]])
            tie = len(post) > 1 and bool(np.isclose(top, float(post[order[1]]), rtol=0, atol=1e-9))
            label = None if tie else cls[int(order[0])]
            n = len(votes[i])
            share = mv[i].agreement if label is None else mv[i].votes.get(label, 0) / n
            out[i] = Decision(
                label=label, agreement=share, n_votes=n, needs_adjudication=tie or top < min_agreement,
                method="dawid_skene", confidence=top,
            )
        return out
    for i in cls_items:
        r = mv[i]
        out[i] = Decision(
            label=r.label, agreement=r.agreement, n_votes=r.n,
            needs_adjudication=needs_adjudication(r, min_agreement=min_agreement),
            method="majority", confidence=0.0 if r.tie else r.agreement,
        )
    return out


def decide(
    annotations: Sequence[Annotation],
    *,
    method: Method = "majority",
    classes: Sequence[str] | None = None,
    min_agreement: float = 0.5,
    context: Mapping[str, Sequence[Annotation]] | None = None,
) -> Decision:
    """The :class:`Decision` for one item's reviews (see :func:`decide_many` for the rules).

    ``context``: other items' reviews (``{item_id: [...]}``), which Dawid-Skene needs to
    learn each reviewer's reliability; without it Dawid-Skene falls back to majority.
    Raises ``ValueError`` when no annotation votes (all skipped, or none given).
    """
    key = "\x00item"  # cannot clash with a sha256 item id
    items: dict[str, Sequence[Annotation]] = dict(context or {})
    items[key] = annotations
    got = decide_many(items, method=method, classes=classes, min_agreement=min_agreement)
    if key not in got:
        raise ValueError(
            f"no vote among {len(annotations)} annotation(s): all skipped or without a label; "
            "decide needs at least one answer"
        )
    return got[key]
