"""The model seam: every adapter is built from the config and loaded from its own checkpoint
through one registry, follows the protocol the loops use, and does what it declares.

Real small models on real images (scikit-learn digits as PNG files; Fashion-MNIST scenes for
YOLO detection); YOLO classification also runs a whole offline round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pseudolabel.sim.demo import demo_config, export_digits
from pseudolabel.config import load_config
from pseudolabel.models import Model, registry
from pseudolabel.models.base import CAPABILITIES, capabilities, predict_arrays, require
from pseudolabel.tasks import task_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("registry")
    data = export_digits(root / "data", seed_per_class=3, holdout=60, seed=0)
    for p in sorted((root / "data" / "pool").glob("*.png"))[80:]:
        p.unlink()
    return root, data


def _cfg(root: Path, data: Any, name: str, **over: Any) -> Any:
    raw = demo_config(root / name, data.root, strategy="entropy", project=name,
                      **{"model.epochs": 2, "model.min_steps": 0, "model.device": "cpu", **over})
    (root / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return load_config(root / f"{name}.yaml", environ={})


ARCHS = {
    "small_cnn": {},
    "resnet18": {"model.arch": "resnet18", "model.image_size": 16},
    "frozen": {"model.arch": "frozen"},
    "yolo_cls": {"model.arch": "yolo", "model.image_size": 32, "model.batch_size": 16},
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_build_fit_save_and_load_by_the_checkpoint_itself(arch: str, digits: Any, tmp_path: Path) -> None:
    root, data = digits
    cfg = _cfg(root, data, f"reg-{arch}", **ARCHS[arch])
    seed = task_for(cfg).read("seed")
    train = [task_for(cfg).seed_annotation(it, seed.labels[it.id]) for it in seed.items]
    model = registry.build(cfg, n_train=len(train))
    assert model.task == "classify" and capabilities(model) <= set(CAPABILITIES)
    assert model.fit(train) is model
    assert isinstance(model, Model)                              # (model_version exists once fitted)
    items = seed.items[:7]
    probs, emb = predict_arrays(model, items, batch_size=3)
    assert probs.shape == (7, 10) and emb.shape[0] == 7 and emb.shape[1] > 0
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    model.save(tmp_path / "model.pt")
    loaded = registry.load(tmp_path / "model.pt", cfg=cfg)       # no arch given: the checkpoint says
    assert type(loaded) is type(model) and loaded.model_version == model.model_version
    np.testing.assert_allclose(predict_arrays(loaded, items)[0], probs, atol=1e-5)
    # What a model declares, it does; what it does not, the loops refuse by name.
    if "mc_dropout" in capabilities(model):
        assert model.mc_dropout_probs(items, T=3).shape == (3, 7, 10)
    else:
        with pytest.raises(ValueError, match="stochastic forward passes"):
            require(model, "mc_dropout", "strategy 'bald'")
    if "unlabelled" in capabilities(model):
        assert model.fit(train, unlabelled=seed.items) is model
    if "hflip_tta" in capabilities(model):
        assert len(list(model.predict(items, batch_size=4, hflip=True))) == 7


def test_a_foreign_file_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights.bin: not a pseudolabel model checkpoint"):
        registry.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        registry.load(tmp_path / "missing.pt")


def test_yolo_classification_through_the_round(digits: Any) -> None:
    from loops.round import run_round

    root, data = digits
    cfg = _cfg(root, data, "yolo-cls-round", **ARCHS["yolo_cls"])
    res = run_round(cfg, None, progress=False)
    assert res.round_id == 1 and res.metrics["accuracy"] is not None
    assert (cfg.workdir / "rounds" / "0001" / "selection.csv").read_text().count("\n") == 1 + 20
    assert type(registry.load(cfg.workdir / "rounds" / "0001" / "model.pt", cfg=cfg)).__name__ == "YoloModel"


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_yolo_detect_and_segment_follow_the_same_contract(task: str, tmp_path: Path) -> None:
    """The YOLO box and polygon adapters through the same seam: built from the config, fitted,
    predicting boxes (with per-box class vectors) and image embeddings, saved, and loaded from
    the checkpoint alone with the same predictions; capabilities declared and honoured."""
    from test_round_detect import _config, _write_set

    data = tmp_path / "data"
    anns = _write_set(data / "seed", 8, seed=1, polygons=task == "segment")
    _write_set(data / "holdout", 4, seed=2, polygons=task == "segment")
    (data / "pool").mkdir()
    cfg = _config(tmp_path, data, task, tmp_path)
    model = registry.build(cfg, n_train=len(anns))
    assert model.task == task and capabilities(model) <= set(CAPABILITIES)
    assert model.fit(anns) is model and isinstance(model, Model)
    items = [a.item for a in anns[:5]]
    preds = list(model.predict(items, batch_size=2))
    assert [p.item_id for p in preds] == [it.id for it in items]
    for p in preds:
        assert p.embedding is not None and np.asarray(p.embedding).ndim == 1 and len(p.embedding) > 0
        assert p.boxes is not None
        for b in p.boxes:
            assert b.label in cfg.classes and 0.0 <= b.score <= 1.0
            assert b.x1 <= b.x2 and b.y1 <= b.y2
            if task == "segment" and b.polygon is not None:
                assert len(b.polygon) >= 3
    model.save(tmp_path / "model.pt")
    loaded = registry.load(tmp_path / "model.pt", cfg=cfg)        # the checkpoint says what it is
    assert type(loaded) is type(model) and loaded.task == task and loaded.model_version == model.model_version
    again = list(loaded.predict(items, batch_size=2))
    for a, b in zip(preds, again):
        assert len(a.boxes or ()) == len(b.boxes or ())
        np.testing.assert_allclose(np.asarray(a.embedding), np.asarray(b.embedding), atol=1e-3)
    if "hflip_tta" in capabilities(model):
        assert len(list(model.predict(items, batch_size=2, hflip=True))) == 5
    with pytest.raises(ValueError, match="stochastic forward passes"):
        require(model, "mc_dropout", "strategy 'bald'")
