"""Self-supervised pretraining on the pool: batched views, the NT-Xent loss, a directional test
on real images (a linear probe on the pretrained backbone beats the same network at random
initialisation), resume from a checkpoint, budgets, the cache, and the backbone it produces
for FrozenBackboneClassifier."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pseudolabel.sim.fashion import export_fashion, fashion_dir
from pseudolabel.data.images import sha256_file
from pseudolabel.models.backbone import FrozenBackboneClassifier
from pseudolabel.models.backbone.nets import SSLNet
from pseudolabel.models.backbone.ssl import (
    PretrainNotAllowed,
    PretrainSettings,
    nt_xent,
    pool_key,
    pretrain_backbone,
    ssl_views,
)
from pseudolabel.types import Annotation, Item


def _need_fashion() -> None:
    if (fashion_dir() / "train-images-idx3-ubyte.gz").is_file():
        return
    msg = f"Fashion-MNIST not installed at {fashion_dir()} (apt-get install dataset-fashion-mnist)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs the dataset: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Item], np.ndarray]:
    """1,200 Fashion-MNIST pool images (28 px PNG files) and their true classes (0..9)."""
    _need_fashion()
    root = tmp_path_factory.mktemp("fashion")
    data = export_fashion(root, n_pool=1200, n_holdout=10, seed_per_class=1, seed=0)
    classes = sorted(set(data.truth.values()))
    items, labels = [], []
    for path in sorted((root / "pool").glob("*.png")):
        item_id = sha256_file(path)
        items.append(Item(item_id, path, 28, 28))
        labels.append(classes.index(data.truth[item_id]))
    return items, np.array(labels)


@pytest.fixture()
def small_pool(make_digit_pngs, tmp_path: Path) -> list[Item]:  # type: ignore[no-untyped-def]
    return make_digit_pngs(tmp_path / "digits", 40)


def _fast(**kw: object) -> PretrainSettings:
    base: dict[str, object] = dict(image_size=16, width=4, batch_size=8, max_steps=20, checkpoint_every=10,
                                   max_minutes=5.0, log_every=1000.0)
    return PretrainSettings(**{**base, **kw})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# views and loss


def test_views_are_batched_random_and_reproducible() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 20, 20)
    a = ssl_views(x, generator=torch.Generator().manual_seed(1))
    b = ssl_views(x, generator=torch.Generator().manual_seed(1))
    c = ssl_views(x, generator=torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a, x)
    grey = x[:, :1].expand(-1, 3, -1, -1)
    g = ssl_views(grey, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(g[:, 0], g[:, 2])  # grey images stay grey (no colour invented)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        ssl_views(torch.rand(3, 20, 20), generator=torch.Generator())


def test_nt_xent_rewards_agreeing_views() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    agree = nt_xent(z, z + 0.01 * torch.randn(16, 8), temperature=0.2)
    disagree = nt_xent(z, torch.randn(16, 8), temperature=0.2)
    assert float(agree) < float(disagree) - 1.0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="pretrain.batch_size"):
        PretrainSettings(batch_size=1).check()
    with pytest.raises(ValueError, match="pretrain.max_minutes"):
        PretrainSettings(max_minutes=0).check()


# ---------------------------------------------------------------------------------------
# the run: cache, resume, budgets, logs


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(
        small_pool: list[Item], tmp_path: Path) -> None:
    straight = pretrain_backbone(small_pool, settings=_fast(), cache_dir=tmp_path / "a", progress=False,
                                 log=lambda s: None)
    assert (straight.steps, straight.trained_now, straight.stopped) == (20, 20, "max_steps")

    lines: list[str] = []

    def crash_at_15(line: str) -> None:
        lines.append(line)
        if "step 15/" in line:
            raise KeyboardInterrupt  # killed between checkpoints (step 10 saved, 11-15 lost)

    with pytest.raises(KeyboardInterrupt):
        pretrain_backbone(small_pool, settings=_fast(log_every=1e-9), cache_dir=tmp_path / "b", progress=False,
                          log=crash_at_15)
    assert not (tmp_path / "b" / straight.key / "backbone.pt").exists()
    lines.clear()
    resumed = pretrain_backbone(small_pool, settings=_fast(), cache_dir=tmp_path / "b", progress=False,
                                log=lines.append)
    assert any("resuming" in s and "at step 10" in s for s in lines), lines
    assert (resumed.steps, resumed.trained_now) == (20, 10)
    a = torch.load(straight.path, weights_only=True)["state_dict"]
    b = torch.load(resumed.path, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run must end where an uninterrupted one does"


def test_cache_reuse_budget_extension_and_time_budget(small_pool: list[Item], tmp_path: Path) -> None:
    first = pretrain_backbone(small_pool, settings=_fast(), cache_dir=tmp_path, progress=False, log=lambda s: None)
    again = pretrain_backbone(small_pool, settings=_fast(), cache_dir=tmp_path, progress=False, log=lambda s: None)
    assert again.path == first.path and again.trained_now == 0
    more = pretrain_backbone(small_pool, settings=_fast(max_steps=30), cache_dir=tmp_path, progress=False,
                             log=lambda s: None)
    assert more.key == first.key and (more.steps, more.trained_now) == (30, 10)
    # the key follows the pool: another pool trains anew
    assert pool_key([it.id for it in small_pool[:-1]], _fast()) != first.key
    assert pool_key([it.id for it in small_pool], _fast(max_steps=99, max_minutes=1.0)) == first.key
    # a tiny time budget stops after the first step, counted over runs
    timed = pretrain_backbone(small_pool, settings=_fast(max_minutes=1e-6, seed=1), cache_dir=tmp_path,
                              progress=False, log=lambda s: None)
    assert timed.stopped == "time_budget" and timed.steps == 1
    with pytest.raises(PretrainNotAllowed, match="pretrain.enabled"):
        pretrain_backbone(small_pool, settings=_fast(seed=2), cache_dir=tmp_path, allow_train=False,
                          progress=False, log=lambda s: None)


def test_log_lines_without_a_terminal(small_pool: list[Item], tmp_path: Path) -> None:
    lines: list[str] = []
    pretrain_backbone(small_pool, settings=_fast(), cache_dir=tmp_path, progress=True, log=lines.append)
    step_lines = [s for s in lines if "step 10/20" in s or "step 20/20" in s]
    assert len(step_lines) == 2, lines
    assert all("loss" in s and "steps/s" in s and "ETA" in s for s in step_lines)
    assert "done (max_steps)" in lines[-1]


def test_pretrained_file_is_a_frozen_backbone(small_pool: list[Item], tmp_path: Path) -> None:
    res = pretrain_backbone(small_pool, settings=_fast(), cache_dir=tmp_path / "p", progress=False,
                            log=lambda s: None)
    anns = [Annotation(item=it, label=it.path.stem.rsplit("_", 1)[1], source="seed") for it in small_pool]
    classes = [str(d) for d in range(10)]
    model = FrozenBackboneClassifier(classes, backbone=f"ssl:{res.path}", epochs=2, min_steps=0, device="cpu",
                                     cache_dir=tmp_path / "emb").fit(anns)
    assert model.input_size_ == 16  # the pretraining size
    assert model.embedding_dim_ == 4 * 4 + 4 * 8  # pooled stage 3 + stage 4 at width 4
    ckpt = tmp_path / "m.pt"
    model.save(ckpt)
    res.path.unlink()  # the checkpoint carries the ssl backbone itself
    loaded = FrozenBackboneClassifier.load(ckpt, device="cpu")
    a, _ = model.predict_proba_embed([a.item for a in anns])
    b, _ = loaded.predict_proba_embed([a.item for a in anns])
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------
# directional: pretraining helps a linear probe


def _probe_accuracy(net: SSLNet, x: torch.Tensor, y: np.ndarray, n_labels: int) -> float:
    net.eval()
    with torch.inference_mode():
        feats = torch.cat([net((x[i:i + 256] - 0.5) / 0.5) for i in range(0, len(x), 256)]).numpy()
    scores = []
    for rep in range(3):
        order = np.random.default_rng(rep).permutation(len(y))
        train, test = order[:n_labels], order[400:]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1)).fit(feats[train], y[train])
        scores.append(clf.score(feats[test], y[test]))
    return float(np.mean(scores))


def test_pretraining_beats_random_initialisation_on_real_images(
        fashion: tuple[list[Item], np.ndarray], tmp_path: Path) -> None:
    items, labels = fashion
    settings = PretrainSettings(image_size=28, width=16, batch_size=64, max_steps=200, checkpoint_every=100,
                                max_minutes=10.0, seed=0)
    res = pretrain_backbone(items, settings=settings, cache_dir=tmp_path, progress=False, log=lambda s: None)
    assert res.steps == 200
    from PIL import Image

    x = torch.stack([torch.from_numpy(np.asarray(Image.open(it.path).convert("RGB"), dtype=np.uint8).copy())
                     .permute(2, 0, 1) for it in items]).float() / 255.0
    pretrained = SSLNet(width=16)
    pretrained.load_state_dict(torch.load(res.path, weights_only=True)["state_dict"])
    torch.manual_seed(0)  # the same initialisation pretraining started from
    random_init = SSLNet(width=16)
    acc_ssl = _probe_accuracy(pretrained, x, labels, 100)
    acc_rand = _probe_accuracy(random_init, x, labels, 100)
    assert acc_ssl > acc_rand + 0.03, (acc_ssl, acc_rand)


def test_round_with_ssl_backbone_pretrains_once(tmp_path: Path) -> None:
    """`model.backbone: ssl` in a real offline round: the pool is pretrained on once (cached
    under <workdir>/pretrain), the next round reuses it; `pretrain.enabled: false` without a
    finished pretraining is a clear error."""
    import yaml

    from pseudolabel.sim.demo import demo_config, export_digits
    from loops.round import run_round
    from pseudolabel.config import load_config

    export_digits(tmp_path / "data", seed_per_class=2, holdout=60, seed=0)
    for p in sorted((tmp_path / "data" / "pool").glob("*.png"))[120:]:
        p.unlink()
    raw = demo_config(tmp_path / "work", tmp_path / "data", strategy="kcenter", project="ssl",
                      **{"model.arch": "frozen", "model.backbone": "ssl", "model.epochs": 2, "model.min_steps": 20,
                         "pretrain.max_steps": 20, "pretrain.width": 4, "pretrain.image_size": 16,
                         "pretrain.batch_size": 16, "stop.target": 0.999})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml")
    res = run_round(cfg, None, progress=False)
    assert 0.0 <= res.metrics["accuracy"] <= 1.0
    backbones = list((tmp_path / "work" / "pretrain").glob("*/backbone.pt"))
    assert len(backbones) == 1
    stamp = backbones[0].stat().st_mtime_ns
    run_round(cfg, None, progress=False)
    assert backbones[0].stat().st_mtime_ns == stamp, "round 2 must reuse the pretrained backbone"
    ckpt = torch.load(tmp_path / "work" / "rounds" / "0002" / "model.pt", weights_only=True)
    assert ckpt["config"]["backbone_info"]["family"] == "ssl"
    other = load_config(tmp_path / "c.yaml", overrides=["pretrain.enabled=false", "pretrain.width=8"])
    with pytest.raises(PretrainNotAllowed):
        run_round(other, None, progress=False)
