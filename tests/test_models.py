"""Contract suite for model adapters, plus adapter-specific checks for TorchvisionClassifier.

Every adapter in ``ADAPTERS`` must pass the contract tests. A later adapter (Ultralytics
YOLO-cls, ...) joins by adding an :class:`AdapterSpec` to the list: ``make(classes, **kw)``
returns an unfitted model with settings small enough to train in about a second; ``kw`` may
hold ``seed``, ``weights`` (a local file written by ``save``) and ``epochs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from pseudolabel.data.images import sha256_file
from pseudolabel.models import Model, NotFittedError, get_adapter, resolve_device
from pseudolabel.models.backbone import FrozenBackboneClassifier
from pseudolabel.models.torchvision_cls import ARCHS, TorchvisionClassifier
from pseudolabel.types import Annotation, Item

CLASSES = [str(d) for d in range(10)]


# ---------------------------------------------------------------------------------------
# data: scikit-learn's digits as 32x32 PNG files


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[Annotation]:
    """500 digit images (8x8 upscaled to 32x32 grayscale PNG), as seed annotations."""
    root = tmp_path_factory.mktemp("digits")
    data = load_digits()
    out: list[Annotation] = []
    seen: set[str] = set()
    for i, (img, target) in enumerate(zip(data.images, data.target)):
        path = root / f"{i:04d}.png"
        pixels = (img * (255.0 / 16.0)).round().astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).save(path)
        item_id = sha256_file(path)
        if item_id in seen:  # identical images: ids are content hashes
            continue
        seen.add(item_id)
        out.append(Annotation(item=Item(item_id, path, 32, 32), label=str(target), source="seed"))
        if len(out) == 500:
            break
    return out


def _items(anns: Sequence[Annotation]) -> list[Item]:
    return [a.item for a in anns]


def _probs(model: Any, items: Sequence[Item]) -> np.ndarray:
    return np.stack([p.probs for p in model.predict(items, batch_size=64)])


# ---------------------------------------------------------------------------------------
# adapters under contract


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    make: Callable[..., Any]  # make(classes, **overrides) -> unfitted model
    n_train: int  # how many digits to train on in the contract tests
    embedding_dim: int
    learn_epochs: int  # epochs after which n_train digits are clearly learnt
    embed_cache: bool = False  # make() takes a cache_dir (one per adapter, for the module)


def _make_small_cnn(classes: Sequence[str], **kw: Any) -> TorchvisionClassifier:
    params: dict[str, Any] = dict(arch="small_cnn", epochs=3, batch_size=32, lr=3e-3, device="cpu")
    return TorchvisionClassifier(classes, **{**params, **kw})


def _make_resnet18(classes: Sequence[str], **kw: Any) -> TorchvisionClassifier:
    # 16 px keeps the CIFAR-style stem cheap on CPU (compute grows with the pixel count).
    params: dict[str, Any] = dict(arch="resnet18", image_size=16, epochs=1, batch_size=32, lr=1e-3, device="cpu")
    return TorchvisionClassifier(classes, **{**params, **kw})


def _make_frozen(classes: Sequence[str], **kw: Any) -> FrozenBackboneClassifier:
    # efficientnet_lite0 from its wheel (offline), a linear head on cached embeddings.
    params: dict[str, Any] = dict(backbone="efficientnet_lite0", epochs=3, min_steps=100, device="cpu")
    return FrozenBackboneClassifier(classes, **{**params, **kw})


def _make_frozen_finetune(classes: Sequence[str], **kw: Any) -> FrozenBackboneClassifier:
    # the last block trains too (on cached trunk features), with an MLP head
    params: dict[str, Any] = dict(backbone="efficientnet_lite0", finetune="last", head="mlp", hidden=64, epochs=3,
                                  min_steps=30, device="cpu")
    return FrozenBackboneClassifier(classes, **{**params, **kw})


ADAPTERS = [
    pytest.param(AdapterSpec("small_cnn", _make_small_cnn, 120, 64, 8), id="small_cnn"),
    pytest.param(AdapterSpec("resnet18", _make_resnet18, 48, 512, 2), id="resnet18"),
    pytest.param(AdapterSpec("frozen", _make_frozen, 120, 704, 8, embed_cache=True), id="frozen_lite0"),
    pytest.param(AdapterSpec("frozen_last", _make_frozen_finetune, 60, 704, 8, embed_cache=True),
                 id="frozen_lite0_finetune_last"),
]


@pytest.fixture(scope="module", params=ADAPTERS)
def spec(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AdapterSpec:
    s: AdapterSpec = request.param
    if s.embed_cache:
        return replace(s, make=partial(s.make, cache_dir=tmp_path_factory.mktemp(f"emb-{s.name}")))
    return s


@pytest.fixture(scope="module")
def fitted(spec: AdapterSpec, digits: list[Annotation]) -> Any:
    return spec.make(CLASSES).fit(digits[: spec.n_train])


# ---------------------------------------------------------------------------------------
# the contract


def test_fit_returns_self(spec: AdapterSpec, digits: list[Annotation]) -> None:
    model = spec.make(CLASSES, epochs=1)
    assert model.fit(digits[:40]) is model
    assert isinstance(model, Model)
    assert model.task == "classify"


def test_predict_one_prediction_per_item_in_order(fitted: Any, spec: AdapterSpec, digits: list[Annotation]) -> None:
    items = _items(digits[300:337])  # 37 items with batch_size 8: a ragged last batch
    preds = list(fitted.predict((it for it in items), batch_size=8))  # a generator: streaming input
    assert [p.item_id for p in preds] == [it.id for it in items]
    probs = np.stack([p.probs for p in preds])
    assert probs.shape == (len(items), len(CLASSES))
    assert probs.dtype == np.float32
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for p in preds:
        assert p.embedding is not None
        assert p.embedding.shape == (spec.embedding_dim,)
        assert p.embedding.dtype == np.float32
        assert p.model_version == fitted.model_version
    assert isinstance(fitted.model_version, str) and fitted.model_version


def test_predict_batch_size_does_not_change_results(fitted: Any, digits: list[Annotation]) -> None:
    items = _items(digits[300:340])
    a = np.stack([p.probs for p in fitted.predict(items, batch_size=1)])
    b = np.stack([p.probs for p in fitted.predict(items, batch_size=40)])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_save_load_roundtrip(fitted: Any, digits: list[Annotation], tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    fitted.save(path)
    ckpt = torch.load(path, weights_only=True)  # plain types + tensors only
    assert isinstance(ckpt, dict)
    loaded = type(fitted).load(path)
    assert loaded.model_version == fitted.model_version
    assert list(loaded.classes) == CLASSES
    items = _items(digits[300:340])
    np.testing.assert_array_equal(_probs(loaded, items), _probs(fitted, items))


def test_unknown_class_raises_naming_item_and_class(spec: AdapterSpec, digits: list[Annotation]) -> None:
    bad = replace(digits[5], label="eleven")
    with pytest.raises(ValueError, match="eleven") as err:
        spec.make(CLASSES).fit([*digits[:10], bad])
    assert str(bad.item.path) in str(err.value)


def test_same_seed_same_probabilities(spec: AdapterSpec, digits: list[Annotation]) -> None:
    train, items = digits[:40], _items(digits[300:330])
    a = _probs(spec.make(CLASSES, seed=3, epochs=1).fit(train), items)
    b = _probs(spec.make(CLASSES, seed=3, epochs=1).fit(train), items)
    c = _probs(spec.make(CLASSES, seed=4, epochs=1).fit(train), items)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)  # the seed matters, so the equality above means something


def test_weights_from_local_file_are_the_starting_point(
    fitted: Any, spec: AdapterSpec, digits: list[Annotation], tmp_path: Path
) -> None:
    path = tmp_path / "start.pt"
    fitted.save(path)
    items = _items(digits[300:330])
    # epochs=0: the model is exactly its starting point.
    started = spec.make(CLASSES, weights=path, epochs=0).fit(digits[:10])
    np.testing.assert_allclose(_probs(started, items), _probs(fitted, items), atol=1e-6)
    scratch = spec.make(CLASSES, epochs=0).fit(digits[:10])
    assert not np.allclose(_probs(scratch, items), _probs(fitted, items), atol=1e-3)


def test_annotation_weights_are_honoured(spec: AdapterSpec, digits: list[Annotation]) -> None:
    """Half the training set relabelled '0': at weight 1 the model learns to say '0' for
    those images, at weight 0 the wrong labels must pull far less."""
    train = digits[: spec.n_train]
    clean = [a for a in train if a.label != "0"]
    corrupt, keep = clean[: len(clean) // 2], clean[len(clean) // 2 :]

    def prob_zero(weight: float) -> float:
        anns = keep + [replace(a, label="0", source="pseudo", weight=weight) for a in corrupt]
        model = spec.make(CLASSES, epochs=spec.learn_epochs).fit(anns)
        return float(_probs(model, _items(corrupt))[:, 0].mean())

    ignored, learnt = prob_zero(0.0), prob_zero(1.0)
    assert ignored < learnt - 0.1, (ignored, learnt)


# ---------------------------------------------------------------------------------------
# TorchvisionClassifier specifics


def test_small_cnn_learns_digits(digits: list[Annotation]) -> None:
    model = TorchvisionClassifier(CLASSES, arch="small_cnn", epochs=12, batch_size=32, lr=3e-3, device="cpu")
    model.fit(digits[:300], val=digits[300:])
    held_out = digits[300:]
    pred = [CLASSES[i] for i in _probs(model, _items(held_out)).argmax(axis=1)]
    accuracy = np.mean([p == a.label for p, a in zip(pred, held_out)])
    assert accuracy > 0.7  # chance is 0.1
    assert len(model.history_) == 12
    assert model.history_[-1]["val_accuracy"] == pytest.approx(accuracy)
    assert model.history_[-1]["loss"] < model.history_[0]["loss"]


def test_hflip_option_changes_training_and_progress_bar_runs(digits: list[Annotation]) -> None:
    items = _items(digits[300:330])
    plain = TorchvisionClassifier(CLASSES, epochs=2, device="cpu").fit(digits[:60])
    flipped = TorchvisionClassifier(CLASSES, epochs=2, device="cpu", hflip=True, progress=True).fit(digits[:60])
    assert not np.allclose(_probs(plain, items), _probs(flipped, items))
    assert len(flipped.history_) == 2


def test_decoding_workers_give_the_same_predictions(digits: list[Annotation]) -> None:
    model = TorchvisionClassifier(CLASSES, epochs=1, device="cpu").fit(digits[:20])
    items = _items(digits[300:340])
    expected = _probs(model, items)
    model.num_workers = 1
    np.testing.assert_array_equal(_probs(model, items), expected)


def test_unknown_arch_lists_choices(digits: list[Annotation]) -> None:
    with pytest.raises(ValueError, match="small_cnn") as err:
        TorchvisionClassifier(CLASSES, arch="vgg").fit(digits[:4])
    assert all(a in str(err.value) for a in ARCHS) and "'vgg'" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(epochs=-1), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(image_size=4), "image_size"),
        (dict(lr=0.0), "lr"),
        (dict(dropout=1.0), "dropout"),
        (dict(device="tpu"), "tpu"),
    ],
)
def test_bad_parameters_raise(kwargs: dict[str, Any], word: str, digits: list[Annotation]) -> None:
    with pytest.raises(ValueError, match=word):
        TorchvisionClassifier(CLASSES, **kwargs).fit(digits[:4])


def test_duplicate_or_too_few_classes_raise(digits: list[Annotation]) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        TorchvisionClassifier([*CLASSES, "3"]).fit(digits[:4])
    with pytest.raises(ValueError, match="at least 2"):
        TorchvisionClassifier(["only"]).fit(digits[:4])


@pytest.mark.parametrize("weight", [-1.0, float("nan")])
def test_bad_weight_raises_naming_item(weight: float, digits: list[Annotation]) -> None:
    bad = replace(digits[0], weight=weight)
    with pytest.raises(ValueError, match="weight") as err:
        TorchvisionClassifier(CLASSES, epochs=1).fit([bad, *digits[1:5]])
    assert str(bad.item.path) in str(err.value)


def test_missing_label_raises(digits: list[Annotation]) -> None:
    with pytest.raises(ValueError, match="no class label"):
        TorchvisionClassifier(CLASSES, epochs=1).fit([replace(digits[0], label=None)])


def test_not_fitted_raises() -> None:
    model = TorchvisionClassifier(CLASSES)
    with pytest.raises(NotFittedError, match="fit"):
        model.predict([], batch_size=4)
    with pytest.raises(NotFittedError):
        model.save(Path("never-written.pt"))


def test_init_only_stores_parameters() -> None:
    model = TorchvisionClassifier(CLASSES, arch="nonsense", epochs=-5)  # checked by fit, not here
    assert model.get_params()["arch"] == "nonsense"
    assert not hasattr(model, "net_")


def test_missing_or_foreign_weights_file_raises(digits: list[Annotation], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TorchvisionClassifier(CLASSES, weights=tmp_path / "nope.pt", epochs=0).fit(digits[:4])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        TorchvisionClassifier(CLASSES, weights=junk, epochs=0).fit(digits[:4])
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="unexpected keys"):
        TorchvisionClassifier(CLASSES, weights=other, epochs=0).fit(digits[:4])


def test_weights_for_other_classes_keep_the_backbone(digits: list[Annotation], tmp_path: Path) -> None:
    base = TorchvisionClassifier(CLASSES, epochs=1, device="cpu").fit(digits[:40])
    path = tmp_path / "base.pt"
    base.save(path)
    few = ["0", "1", "2"]
    model = TorchvisionClassifier(few, weights=path, epochs=0, device="cpu")
    model.fit([a for a in digits[:40] if a.label in few])
    assert model.weights_skipped_ == ["fc.bias", "fc.weight"]
    own = model.net_.state_dict()
    for key, value in base.net_.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key


def test_plain_torchvision_state_dict_loads(digits: list[Annotation], tmp_path: Path) -> None:
    """A raw torchvision resnet18 state_dict (1000-class head) starts a 64 px model."""
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    model = TorchvisionClassifier(CLASSES, arch="resnet18", image_size=64, weights=path, epochs=0, device="cpu")
    model.fit(digits[:2])
    assert model.weights_skipped_ == ["fc.bias", "fc.weight"]
    assert torch.equal(model.net_.conv1.weight, reference.conv1.weight)
    # The small-image stem cannot take ImageNet's 7x7 conv1: a clear error, not a silent skip.
    small = TorchvisionClassifier(CLASSES, arch="resnet18", image_size=32, weights=path, epochs=0, device="cpu")
    with pytest.raises(ValueError, match="conv1.weight"):
        small.fit(digits[:2])


def test_resnet_stem_depends_on_image_size() -> None:
    small = TorchvisionClassifier(CLASSES, arch="resnet18", image_size=32)._build_net(10)
    large = TorchvisionClassifier(CLASSES, arch="resnet18", image_size=64)._build_net(10)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7)


def test_small_cnn_size_and_dropout() -> None:
    net = TorchvisionClassifier(CLASSES)._build_net(10)
    n_params = sum(p.numel() for p in net.parameters())
    assert 25_000 <= n_params <= 100_000
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())


def test_model_version_changes_with_weights_and_can_be_set(digits: list[Annotation]) -> None:
    a = TorchvisionClassifier(CLASSES, epochs=1, seed=0, device="cpu").fit(digits[:20])
    b = TorchvisionClassifier(CLASSES, epochs=1, seed=1, device="cpu").fit(digits[:20])
    assert a.model_version != b.model_version
    a.model_version = "round-0003"
    assert next(a.predict(_items(digits[:1]), batch_size=1)).model_version == "round-0003"
    with pytest.raises(ValueError):
        a.model_version = ""


def test_fit_does_not_disturb_global_rng(digits: list[Annotation]) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TorchvisionClassifier(CLASSES, epochs=1, device="cpu").fit(digits[:10])
    assert torch.equal(torch.rand(3), expected)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="quantum"):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_registry() -> None:
    assert get_adapter("torchvision") is TorchvisionClassifier
    with pytest.raises(ValueError, match="torchvision"):
        get_adapter("caffe")
