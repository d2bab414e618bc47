"""Pseudo-labelled epochs are bounded: with many pseudo-labels an epoch trains on every human
label plus a fresh sample of the pseudo-labels (``pseudo_per_epoch`` / ``pseudo_ratio``), so a
round does not slow down as pseudo-labels pile up. Real digits, real small CNN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.types import Annotation, Item

CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Annotation], list[Annotation]]:
    """20 human labels and 200 pseudo-labels (weight 0.5) on 16 px digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    root = tmp_path_factory.mktemp("digits16")
    anns = []
    for i in range(220):
        p = root / f"d{i:04d}.png"
        Image.fromarray(images[i], mode="L").resize((16, 16), Image.Resampling.BICUBIC).save(p)
        item = Item(id=f"d{i}", path=p, width=16, height=16)
        src = "human" if i < 20 else "pseudo"
        anns.append(Annotation(item=item, label=str(d.target[i]), source=src, weight=1.0 if i < 20 else 0.5))
    return anns[:20], anns[20:]


def _model(**kw: Any) -> TorchvisionClassifier:
    params: dict[str, Any] = dict(image_size=16, epochs=3, batch_size=16, min_steps=0, seed=0, device="cpu")
    params.update(kw)
    return TorchvisionClassifier(CLASSES, **params)


def _steps(monkeypatch: pytest.MonkeyPatch, model: TorchvisionClassifier, train: list[Annotation]) -> int:
    count = [0]
    real = torch.optim.AdamW.step

    def counted(self: torch.optim.AdamW, *a: Any, **k: Any) -> Any:
        count[0] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    model.fit(train)
    monkeypatch.setattr(torch.optim.AdamW, "step", real)
    return count[0]


def test_epochs_sample_a_bounded_number_of_pseudo_labels(
    sets: tuple[list[Annotation], list[Annotation]], monkeypatch: pytest.MonkeyPatch
) -> None:
    human, pseudo = sets
    train = human + pseudo
    # all 220 each epoch: 14 batches of 16 x 3 epochs
    assert _steps(monkeypatch, _model(), train) == 3 * 14
    # ratio 1: 20 human + 20 pseudo = 40 per epoch -> 3 batches (16, 16, 8) x 3 epochs
    bounded = _model(pseudo_ratio=1.0)
    assert _steps(monkeypatch, bounded, train) == 3 * 3
    assert bounded.pseudo_per_epoch_ == 20
    # an absolute cap: 20 + 12 = 32 -> 2 batches; the smaller bound wins
    assert _steps(monkeypatch, _model(pseudo_per_epoch=12, pseudo_ratio=5.0), train) == 3 * 2
    # fewer pseudo-labels than the cap: the plain path (same model as no cap at all)
    few = human + pseudo[:10]
    assert _model(pseudo_ratio=1.0).fit(few).model_version == _model().fit(few).model_version


def test_bounded_epochs_are_deterministic_and_differ_from_unbounded(
    sets: tuple[list[Annotation], list[Annotation]], tmp_path: Path
) -> None:
    human, pseudo = sets
    a = _model(pseudo_ratio=1.0, min_steps=30).fit(human + pseudo)
    b = _model(pseudo_ratio=1.0, min_steps=30).fit(human + pseudo)
    c = _model(min_steps=30).fit(human + pseudo)
    assert a.model_version == b.model_version != c.model_version
    a.save(tmp_path / "m.pt")
    loaded = TorchvisionClassifier.load(tmp_path / "m.pt", device="cpu")
    assert loaded.get_params()["pseudo_ratio"] == 1.0 and loaded.pseudo_per_epoch_ == 20


def test_every_pseudo_label_gets_its_turn(sets: tuple[list[Annotation], list[Annotation]]) -> None:
    """Each epoch draws a fresh sample: over enough epochs every pseudo-label is trained on.
    Each pseudo-label carries its own weight, so the batches the loop receives tell which
    ones were drawn."""
    from torch.utils.data import DataLoader

    human, pseudo = sets
    tagged = [Annotation(item=a.item, label=a.label, source="pseudo", weight=0.5 + k / 1000)
              for k, a in enumerate(pseudo)]
    seen: set[int] = set()
    per_epoch: list[int] = []
    real_iter = DataLoader.__iter__

    def spy(self: DataLoader, *a: Any, **k: Any) -> Any:   # type: ignore[type-arg]
        drawn = 0
        for batch in real_iter(self, *a, **k):
            if isinstance(batch, (list, tuple)) and len(batch) == 3:       # (x, y, weight) training batches
                w = batch[2].numpy()
                keys = np.round((w[w < 1.0] - 0.5) * 1000).astype(int)
                seen.update(keys.tolist())
                drawn += len(keys)
            yield batch
        if drawn:
            per_epoch.append(drawn)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DataLoader, "__iter__", spy)
        _model(pseudo_ratio=1.0, epochs=40).fit(human + tagged)
    assert per_epoch == [20] * 40                     # 20 pseudo-labels in every epoch
    # 40 epochs x 20 of 200 pseudo-labels: (1 - 1/10)^40 = 1.5 % are expected never to be drawn
    assert len(seen) >= 185


@pytest.mark.parametrize("kw, word", [({"pseudo_ratio": -1.0}, "pseudo_ratio"), ({"pseudo_per_epoch": 2.5}, "pseudo_per_epoch"),
                                      ({"strong_ratio": 0.0}, "strong_ratio"), ({"strong_ratio": 1.5}, "strong_ratio")])
def test_bad_bounds_raise(kw: dict[str, Any], word: str, sets: tuple[list[Annotation], list[Annotation]]) -> None:
    with pytest.raises(ValueError, match=word):
        _model(**kw).fit(sets[0])


def test_a_pseudo_only_set_is_bounded_by_the_count_alone(sets: tuple[list[Annotation], list[Annotation]]) -> None:
    _, pseudo = sets
    m = _model(pseudo_ratio=1.0, epochs=1).fit(pseudo[:30])
    assert m.pseudo_per_epoch_ == 30
    assert _model(pseudo_per_epoch=10, epochs=1).fit(pseudo[:30]).pseudo_per_epoch_ == 10
    with pytest.raises(ValueError, match="nothing to train on"):
        _model(pseudo_per_epoch=0).fit(pseudo[:30])
