"""Label-quality check by confident learning (cleanlab): find labels the model strongly doubts.

Two steps, as in cleanlab's own workflow:

1. :func:`out_of_sample_probs`: K-fold cross-validated predicted probabilities, so that no
   item is scored by a model that was trained on its (possibly wrong) label;
2. :func:`label_issues`: ``cleanlab.filter.find_label_issues`` on those probabilities,
   ranked by self-confidence (the probability the model gives to the *given* label;
   lower = more suspicious).

:func:`relabel_candidates` turns the issues into :class:`~pseudolabel.types.Candidate`
objects with ``kind="relabel"`` (pre-drawn with the model's suggestion) for a second review.
Classification only. Pure apart from training the models it is given; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pseudolabel.types import Annotation, Candidate, Prediction, validate_classes

if TYPE_CHECKING:
    from pseudolabel.models.base import Model

__all__ = ["LabelIssue", "label_issues", "out_of_sample_probs", "relabel_candidates"]


@dataclass(frozen=True)
class LabelIssue:
    """One suspicious label.

    Attributes:
        index: position of the item in the ``labels`` / ``probs`` given to :func:`label_issues`.
        given: the label as it stands.
        suggested: the class the out-of-sample model prefers (argmax of its probabilities).
        self_confidence: out-of-sample probability of ``given``, in [0, 1];
            **lower = more suspicious**.
    """

    index: int
    given: str
    suggested: str
    self_confidence: float


def out_of_sample_probs(
    make_model: Callable[[], Model],
    labelled: Sequence[Annotation],
    *,
    folds: int = 3,
    seed: int = 0,
    batch_size: int | None = None,
) -> np.ndarray:
    """K-fold cross-validated class probabilities for every labelled item.

    For each of ``folds`` stratified folds (``sklearn.model_selection.StratifiedKFold``,
    shuffled with ``seed``) a fresh model from ``make_model()`` is fitted on the other folds
    and predicts the held-out one. Returns ``(N, C)`` float64, row ``i`` for
    ``labelled[i]``, columns in the model's class order (every model from ``make_model``
    must use the same classes); rows sum to 1.

    Raises:
        ValueError: fewer than 2 folds, fewer items than folds, an annotation without a
        class label (detection labels are not supported), a repeated item, or models that
        disagree on the number of classes / predict no probabilities.
    """
    from sklearn.model_selection import StratifiedKFold

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2; got {folds!r}")
    anns = list(labelled)
    if len(anns) < folds:
        raise ValueError(f"{len(anns)} labelled items are too few for {folds} folds; need at least {folds}")
    for pos, a in enumerate(anns):
        if not isinstance(a.label, str) or not a.label:
            raise ValueError(
                f"labelled[{pos}] (item {a.item.id!r}, {a.item.path}) has no class label "
                f"({a.label!r}); confident learning here needs classification labels"
            )
    ids = [a.item.id for a in anns]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"labelled repeats item ids {dupes[:5]!r}; give one label per item")
    y = np.array([a.label for a in anns])
    counts = np.unique(y, return_counts=True)[1]
    # StratifiedKFold needs every class in every fold; rare classes fall back to plain K-fold.
    if counts.min() >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(anns)), y))
    else:
        from sklearn.model_selection import KFold

        splits = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(anns))))
    out: np.ndarray | None = None
    for k, (train_idx, test_idx) in enumerate(splits):
        model = make_model().fit([anns[i] for i in train_idx])
        held = [anns[i].item for i in test_idx]
        got = {p.item_id: p for p in model.predict(held, batch_size=batch_size)}
        for row, i in zip(test_idx, (anns[j].item.id for j in test_idx)):
            pred = got.get(i)
            if pred is None or pred.probs is None:
                raise ValueError(f"fold {k}: the model returned no probabilities for item {i!r}")
            p = np.asarray(pred.probs, dtype=np.float64)
            if out is None:
                out = np.zeros((len(anns), p.shape[0]))
            if p.shape != (out.shape[1],):
                raise ValueError(
                    f"fold {k}: item {i!r} has probs of shape {p.shape}; earlier folds gave "
                    f"{out.shape[1]} classes: make_model must build models with the same classes"
                )
            out[row] = p
    assert out is not None  # len(anns) >= folds >= 2
    return out


def label_issues(
    labels: Sequence[str | None],
    probs: np.ndarray,
    *,
    classes: Sequence[str],
    max_issues: int | None = None,
) -> list[LabelIssue]:
    """Labels that confident learning flags as likely wrong, most suspicious first.

    ``labels``: N class names (``None``, no class, is an error); ``probs``: ``(N, C)`` out-of-sample probabilities with
    columns in ``classes`` order (from :func:`out_of_sample_probs`). Uses
    ``cleanlab.filter.find_label_issues(..., return_indices_ranked_by="self_confidence")``;
    the result is sorted by ``self_confidence`` ascending (lower = more suspicious) and cut to
    ``max_issues`` when given.

    Raises:
        ValueError: a label not in ``classes``, ``probs`` of the wrong shape, with negative
        entries or rows not summing to 1, or a bad ``max_issues``.
    """
    from cleanlab.filter import find_label_issues

    cls = validate_classes(classes)
    if len(cls) < 2:
        raise ValueError(f"classes needs at least 2 names for confident learning; got {list(cls)!r}")
    index = {c: j for j, c in enumerate(cls)}
    labs = list(labels)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(labs), len(cls)):
        raise ValueError(
            f"probs has shape {p.shape}; expected (N, C) = ({len(labs)}, {len(cls)}) for "
            f"{len(labs)} labels and classes {list(cls)!r}"
        )
    if max_issues is not None and (isinstance(max_issues, bool) or not isinstance(max_issues, int) or max_issues < 0):
        raise ValueError(f"max_issues must be None or an int >= 0; got {max_issues!r}")
    if not np.all(np.isfinite(p)) or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs must be finite, non-negative, and every row must sum to 1")
    y = np.empty(len(labs), dtype=np.int64)
    for i, lab in enumerate(labs):
        if lab is None or lab not in index:
            raise ValueError(f"labels[{i}] = {lab!r} is not one of classes {list(cls)!r}")
        y[i] = index[lab]
    if len(labs) == 0 or max_issues == 0:
        return []
    ranked = find_label_issues(y, p, return_indices_ranked_by="self_confidence")
    out = [
        LabelIssue(
            index=int(i), given=cls[int(y[int(i)])], suggested=cls[int(np.argmax(p[int(i)]))],
            self_confidence=float(p[int(i), y[int(i)]]),
        )
        for i in ranked
    ]
    out.sort(key=lambda issue: (issue.self_confidence, issue.index))
    return out if max_issues is None else out[:max_issues]


def relabel_candidates(
    labelled: Sequence[Annotation],
    probs: np.ndarray,
    issues: Sequence[LabelIssue],
    *,
    model_version: str,
) -> list[Candidate]:
    """Candidates for a second review, one per issue, in the issues' order.

    ``probs[i]`` (the out-of-sample probabilities of ``labelled[i]``) becomes the pre-drawn
    prediction, so the reviewer sees the model's suggestion; ``score = 1 - self_confidence``
    (higher = more suspicious = reviewed first); ``kind="relabel"``,
    ``strategy="confident_learning"``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(labelled):
        raise ValueError(f"probs has shape {p.shape}; expected one row per labelled item ({len(labelled)})")
    out = []
    for issue in issues:
        if not 0 <= issue.index < len(labelled):
            raise ValueError(f"issue index {issue.index} is outside labelled (0..{len(labelled) - 1})")
        item = labelled[issue.index].item
        out.append(Candidate(
            item=item,
            score=1.0 - issue.self_confidence,
            prediction=Prediction(item_id=item.id, model_version=model_version, probs=p[issue.index].copy()),
            strategy="confident_learning",
            kind="relabel",
        ))
    return out
