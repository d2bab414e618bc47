"""Confident learning: out-of-sample probabilities and label issues (cleanlab)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pytest

from pseudolabel.quality import LabelIssue, label_issues, out_of_sample_probs, relabel_candidates
from pseudolabel.types import Annotation, Item, Prediction

CLASSES = ["a", "b", "c"]


def _synthetic(n: int = 300, flips: Sequence[int] = (3, 50, 120, 200, 290), seed: int = 0):
    """Probabilities of a good model (true class 0.55..0.99); the labels at ``flips`` are
    swapped to another class on items the model is sure about (true class 0.95)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(3, size=n)
    top = rng.uniform(0.55, 0.99, size=n)
    top[list(flips)] = 0.95
    rest = rng.dirichlet(np.ones(2), size=n) * (1 - top)[:, None]
    probs = np.zeros((n, 3))
    for i in range(n):
        probs[i, truth[i]] = top[i]
        probs[i, [c for c in range(3) if c != truth[i]]] = rest[i]
    given = truth.copy()
    for i in flips:
        given[i] = (truth[i] + 1) % 3
    return [CLASSES[g] for g in given], probs, set(flips)


def test_flipped_labels_are_found_and_ranked_first() -> None:
    labels, probs, flipped = _synthetic()
    issues = label_issues(labels, probs, classes=CLASSES)
    top = {i.index for i in issues[: len(flipped)]}
    assert top == flipped
    scores = [i.self_confidence for i in issues]
    assert scores == sorted(scores)  # most suspicious (lowest self-confidence) first
    first = issues[0]
    assert first.given == labels[first.index]
    assert first.suggested == CLASSES[int(np.argmax(probs[first.index]))] != first.given
    assert np.isclose(first.self_confidence, probs[first.index, CLASSES.index(first.given)])
    assert label_issues(labels, probs, classes=CLASSES, max_issues=2) == issues[:2]


def test_clean_labels_give_few_issues() -> None:
    labels, probs, _ = _synthetic(flips=())
    assert len(label_issues(labels, probs, classes=CLASSES)) <= 3  # of 300


@pytest.mark.parametrize(
    "labels, probs, match",
    [
        (["a", "z"], np.full((2, 3), 1 / 3), "'z' is not one of classes"),
        (["a", "b"], np.full((3, 3), 1 / 3), "shape"),
        (["a", "b"], np.full((2, 3), 0.5), "sum to 1"),
    ],
)
def test_label_issues_rejects_bad_input(labels, probs, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        label_issues(labels, probs, classes=CLASSES)


class _LogReg:
    """Tiny Model adapter over scikit-learn's LogisticRegression on the images' pixels."""

    task = "classify"

    def __init__(self, pixels: dict[str, np.ndarray], classes: Sequence[str]) -> None:
        self.pixels = pixels
        self.classes = list(classes)

    def fit(self, train: Sequence[Annotation], *, val: Sequence[Annotation] | None = None) -> "_LogReg":
        from sklearn.linear_model import LogisticRegression

        x = np.stack([self.pixels[a.item.id] for a in train])
        y = np.array([self.classes.index(a.label) for a in train])  # type: ignore[arg-type]
        self.clf_ = LogisticRegression(max_iter=300, C=0.05).fit(x, y)
        return self

    def predict(self, images: Iterable[Item], *, batch_size: int) -> Iterator[Prediction]:
        items = list(images)
        p = self.clf_.predict_proba(np.stack([self.pixels[i.id] for i in items]))
        full = np.zeros((len(items), len(self.classes)))
        full[:, self.clf_.classes_] = p  # a class absent from a training fold gets 0
        for it, row in zip(items, full):
            yield Prediction(item_id=it.id, model_version="logreg", probs=row)


def test_real_digits_with_flipped_labels_precision_beats_base_rate() -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    n = 600
    rng = np.random.default_rng(0)
    classes = [str(d) for d in range(10)]
    flipped = set(rng.choice(n, size=n // 20, replace=False).tolist())  # 5 %
    pixels, anns = {}, []
    for i in range(n):
        true = int(data.target[i])
        lab = (true + 1 + int(rng.integers(9))) % 10 if i in flipped else true
        item = Item(id=f"d{i}", path=Path(f"d{i}.png"), width=8, height=8)
        pixels[item.id] = data.data[i] / 16.0
        anns.append(Annotation(item=item, label=classes[lab], source="seed"))
    t0 = time.perf_counter()
    probs = out_of_sample_probs(lambda: _LogReg(pixels, classes), anns, folds=3, seed=0)  # type: ignore[arg-type,return-value]
    assert probs.shape == (n, 10) and np.allclose(probs.sum(axis=1), 1)
    issues = label_issues([a.label for a in anns], probs, classes=classes)  # type: ignore[misc]
    flagged = {i.index for i in issues}
    precision = len(flagged & flipped) / max(1, len(flagged))
    recall = len(flagged & flipped) / len(flipped)
    print(f"flagged {len(flagged)}, precision {precision:.2f}, recall {recall:.2f}, {time.perf_counter() - t0:.1f}s")
    assert precision > 0.5 and recall > 0.5  # base rate 0.05
    top10 = {i.index for i in issues[:10]}
    assert len(top10 & flipped) >= 8

    cands = relabel_candidates(anns, probs, issues[:5], model_version="cv")
    assert [c.item.id for c in cands] == [anns[i.index].item.id for i in issues[:5]]
    assert all(c.kind == "relabel" and c.prediction is not None for c in cands)
    assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True)
    assert cands[0].prediction.label_index == classes.index(issues[0].suggested)  # type: ignore[union-attr]


def test_out_of_sample_probs_never_scores_an_item_with_a_model_trained_on_it() -> None:
    seen_at_fit: list[set[str]] = []

    class Spy:
        task = "classify"

        def fit(self, train: Sequence[Annotation], *, val: object = None) -> "Spy":
            self.train = {a.item.id for a in train}
            seen_at_fit.append(self.train)
            return self

        def predict(self, images: Iterable[Item], *, batch_size: int) -> Iterator[Prediction]:
            for it in images:
                assert it.id not in self.train
                yield Prediction(item_id=it.id, model_version="spy", probs=np.array([0.5, 0.5]))

    anns = [Annotation(item=Item(f"i{k}", Path(f"{k}.png"), 4, 4), label="ab"[k % 2]) for k in range(12)]
    probs = out_of_sample_probs(Spy, anns, folds=3)  # type: ignore[arg-type]
    assert probs.shape == (12, 2) and len(seen_at_fit) == 3
    assert all(len(s) == 8 for s in seen_at_fit)
    with pytest.raises(ValueError, match="no class label"):
        out_of_sample_probs(Spy, [*anns[:3], Annotation(item=anns[3].item)], folds=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too few"):
        out_of_sample_probs(Spy, anns[:2], folds=3)  # type: ignore[arg-type]


def test_small_cnn_flags_flipped_digits(tmp_path: Path) -> None:
    """The real adapter end to end: 5 % flipped labels, precision well above the base rate."""
    import torch

    from sklearn.datasets import load_digits
    from PIL import Image

    from pseudolabel.models.torchvision_cls import TorchvisionClassifier

    torch.set_num_threads(1)
    data = load_digits()
    n = 300
    rng = np.random.default_rng(1)
    classes = [str(d) for d in range(10)]
    flipped = set(rng.choice(n, size=15, replace=False).tolist())
    anns = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray((data.images[i] / 16 * 255).astype(np.uint8)).save(path)
        true = int(data.target[i])
        lab = (true + 1 + int(rng.integers(9))) % 10 if i in flipped else true
        anns.append(Annotation(item=Item(f"d{i}", path, 8, 8), label=classes[lab], source="seed"))
    t0 = time.perf_counter()
    probs = out_of_sample_probs(
        lambda: TorchvisionClassifier(classes, arch="small_cnn", image_size=16, epochs=8, batch_size=32,
                                      lr=3e-3, device="cpu", augment=False),
        anns, folds=3,
    )
    issues = label_issues([a.label for a in anns], probs, classes=classes)  # type: ignore[misc]
    flagged = {i.index for i in issues}
    precision = len(flagged & flipped) / max(1, len(flagged))
    print(f"small_cnn: flagged {len(flagged)}, precision {precision:.2f}, "
          f"recall {len(flagged & flipped) / 15:.2f}, {time.perf_counter() - t0:.1f}s")
    assert precision > 0.5  # 10x the 5 % base rate
    assert isinstance(issues[0], LabelIssue)
