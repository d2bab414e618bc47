"""The pseudo-labelling engine: shards, alignment, resume, stale versions.

Most tests use a fake model (probabilities derived from the item number) so that they check
the engine, not a network; one test runs a real small CNN end to end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudolabel.data.images import sha256_file
from pseudolabel.inference import InferenceResult, load_predictions, pseudo_label
from pseudolabel.models.torchvision_cls import TorchvisionClassifier
from pseudolabel.types import Annotation, Item, Prediction

CLASSES = ["cat", "dog", "fox"]


def _items(n: int) -> list[Item]:
    return [Item(id=f"{i:064x}", path=Path(f"/pool/{i}.png"), width=8, height=8) for i in range(n)]


def _fake_probs(item: Item) -> np.ndarray:
    i = int(item.id, 16)
    logits = np.array([np.sin(i), np.cos(i), np.sin(2 * i)], dtype=np.float32) * 3
    e = np.exp(logits - logits.max())
    return (e / e.sum()).astype(np.float32)


class FakeModel:
    """Deterministic probabilities per item; counts what ``predict`` was asked for and can
    fail after a given number of predictions (a killed run)."""

    task = "classify"

    def __init__(self, version: str = "v1", *, fail_after: int | None = None) -> None:
        self.classes = list(CLASSES)
        self.model_version = version
        self.fail_after = fail_after
        self.calls = 0
        self.seen: list[str] = []

    def predict(self, images: Iterable[Item], *, batch_size: int) -> Iterator[Prediction]:
        self.calls += 1
        for item in images:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise RuntimeError("killed")
            self.seen.append(item.id)
            yield Prediction(
                item_id=item.id,
                model_version=self.model_version,
                probs=_fake_probs(item),
                embedding=np.full(4, int(item.id, 16), dtype=np.float32),
            )


def test_shards_written_and_loaded_in_item_order(tmp_path: Path) -> None:
    items = _items(25)
    result = pseudo_label(FakeModel(), items, tmp_path, shard_size=10, progress=False)
    assert isinstance(result, InferenceResult)
    assert (result.n_items, result.n_scored, result.n_skipped) == (25, 25, 0)
    assert [p.name for p in result.shards] == [f"predictions-0000{i}.parquet" for i in range(3)]
    assert all((tmp_path / f"embeddings-0000{i}.npy").is_file() for i in range(3))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    frame, probs, emb = load_predictions(tmp_path)
    assert list(frame.columns) == ["item_id", "label", "confidence", "model_version"]
    assert frame["item_id"].tolist() == [it.id for it in items]
    expected = np.stack([_fake_probs(it) for it in items])
    np.testing.assert_array_equal(probs, expected)
    assert probs.dtype == np.float32 and emb.dtype == np.float32
    np.testing.assert_array_equal(emb[:, 0], np.arange(25, dtype=np.float32))
    assert frame["label"].tolist() == [CLASSES[k] for k in expected.argmax(axis=1)]
    np.testing.assert_allclose(frame["confidence"].to_numpy(), expected.max(axis=1))
    assert set(frame["model_version"]) == {"v1"}


def test_resume_skips_items_in_complete_shards(tmp_path: Path) -> None:
    items = _items(35)
    with pytest.raises(RuntimeError, match="killed"):
        pseudo_label(FakeModel(fail_after=25), items, tmp_path, shard_size=10, progress=False)
    # Shards 0 and 1 completed; the third was in flight and left nothing behind.
    assert sorted(p.name for p in tmp_path.glob("predictions-*")) == [
        "predictions-00000.parquet",
        "predictions-00001.parquet",
    ]

    model = FakeModel()
    result = pseudo_label(model, items, tmp_path, shard_size=10, progress=False)
    assert model.seen == [it.id for it in items[20:]]
    assert model.calls == 2  # one call per new shard: items 20-29, 30-34
    assert (result.n_scored, result.n_skipped) == (15, 20)

    frame, probs, _ = load_predictions(tmp_path)
    assert frame["item_id"].tolist() == [it.id for it in items]
    np.testing.assert_array_equal(probs, np.stack([_fake_probs(it) for it in items]))

    again = FakeModel()
    result = pseudo_label(again, items, tmp_path, shard_size=10, progress=False)
    assert again.seen == [] and result.n_scored == 0 and result.n_skipped == 35


def test_new_items_are_appended_on_rerun(tmp_path: Path) -> None:
    items = _items(12)
    pseudo_label(FakeModel(), items[:7], tmp_path, shard_size=5, progress=False)
    model = FakeModel()
    pseudo_label(model, items, tmp_path, shard_size=5, progress=False)
    assert model.seen == [it.id for it in items[7:]]
    frame, _, _ = load_predictions(tmp_path)
    assert frame["item_id"].tolist() == [it.id for it in items]


def test_changed_model_version_rescores_everything(tmp_path: Path) -> None:
    items = _items(15)
    pseudo_label(FakeModel("v1"), items, tmp_path, shard_size=10, progress=False)
    model = FakeModel("v2")
    result = pseudo_label(model, items, tmp_path, shard_size=10, progress=False)
    assert model.seen == [it.id for it in items]
    assert (result.n_scored, result.n_skipped) == (15, 0)
    frame, probs, emb = load_predictions(tmp_path)
    assert set(frame["model_version"]) == {"v2"}
    assert len(frame) == len(probs) == len(emb) == 15


def test_duplicate_item_ids_rejected(tmp_path: Path) -> None:
    items = _items(3)
    dup = Item(id=items[0].id, path=Path("/pool/copy.png"), width=8, height=8)
    with pytest.raises(ValueError, match="duplicate item id"):
        pseudo_label(FakeModel(), [*items, dup], tmp_path, progress=False)


@pytest.mark.parametrize("kwargs", [dict(shard_size=0), dict(batch_size=-1)])
def test_bad_sizes_rejected(kwargs: dict[str, int], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        pseudo_label(FakeModel(), _items(2), tmp_path, progress=False, **kwargs)


def test_out_of_order_model_is_caught(tmp_path: Path) -> None:
    class Reversed(FakeModel):
        def predict(self, images: Iterable[Item], *, batch_size: int) -> Iterator[Prediction]:
            return super().predict(list(images)[::-1], batch_size=batch_size)

    with pytest.raises(RuntimeError, match="input order"):
        pseudo_label(Reversed(), _items(4), tmp_path, progress=False)


def test_load_predictions_empty_and_missing(tmp_path: Path) -> None:
    frame, probs, emb = load_predictions(tmp_path)
    assert len(frame) == 0 and probs.shape == (0, 0) and emb.shape == (0, 0)
    with pytest.raises(ValueError, match="no such"):
        load_predictions(tmp_path / "absent")


def test_load_predictions_detects_missing_embeddings(tmp_path: Path) -> None:
    pseudo_label(FakeModel(), _items(3), tmp_path, progress=False)
    (tmp_path / "embeddings-00000.npy").unlink()
    with pytest.raises(ValueError, match="embeddings"):
        load_predictions(tmp_path)


def test_progress_bar_runs(tmp_path: Path) -> None:
    result = pseudo_label(FakeModel(), _items(5), tmp_path, shard_size=2, progress=True)
    assert result.n_scored == 5


def test_real_small_cnn_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items, anns = [], []
    for i in range(24):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
        item = Item(sha256_file(path), path, 20, 20)
        items.append(item)
        anns.append(Annotation(item=item, label=CLASSES[i % 3], source="seed"))
    model = TorchvisionClassifier(CLASSES, epochs=1, batch_size=8, device="cpu").fit(anns[:12])
    out = tmp_path / "pred"
    result = pseudo_label(model, items, out, batch_size=5, shard_size=10, progress=False)
    assert result.model_version == model.model_version and result.n_scored == 24
    frame, probs, emb = load_predictions(out)
    assert frame["item_id"].tolist() == [it.id for it in items]
    assert probs.shape == (24, 3) and emb.shape == (24, 64)
    direct, direct_emb = model.predict_proba_embed(items, batch_size=24)
    np.testing.assert_allclose(probs, direct, atol=1e-6)
    np.testing.assert_allclose(emb, direct_emb, atol=1e-5)
