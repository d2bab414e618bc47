"""Ultralytics YOLO adapter: tiny real training runs (1 epoch, 64 px, yolo11n) on composites of
Fashion-MNIST items pasted at known boxes, with the netguard active (tests/conftest.py)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pseudolabel.data.images import sha256_file
from pseudolabel.models import get_adapter
from pseudolabel.models.ultralytics_yolo import YoloModel
from pseudolabel.types import Annotation, Box, Item

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["trouser", "bag"]
_FM_LABELS = {1: "trouser", 8: "bag"}
SIZE = 64


def _read_idx(name: str) -> np.ndarray:
    with gzip.open(FASHION / name) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def make_scenes(root: Path, n: int, *, seed: int = 0, polygons: bool = False) -> list[Annotation]:
    """``n`` 64x64 RGB PNGs, each with one or two 28x28 Fashion-MNIST trousers/bags pasted at
    random non-overlapping places; boxes are the tight pixel extent of each item."""
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION} (apt-get install dataset-fashion-mnist)")
    images, labels = _read_idx("t10k-images-idx3-ubyte.gz"), _read_idx("t10k-labels-idx1-ubyte.gz")
    pool = [i for i in range(3000) if int(labels[i]) in _FM_LABELS]
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        canvas = np.zeros((SIZE, SIZE), np.uint8)
        boxes = []
        slots = [(rng.integers(0, 4), rng.integers(0, SIZE - 28))]  # left strip
        if k % 2:
            slots.append((rng.integers(32, SIZE - 28), rng.integers(0, SIZE - 28)))  # right strip
        for x, y in slots:
            i = pool[int(rng.integers(len(pool)))]
            canvas[y : y + 28, x : x + 28] = images[i]
            ys, xs = np.nonzero(images[i] > 20)
            x1, y1, x2, y2 = x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1
            poly = ((x1, y1), (x2, y1), (x2, y2), (x1, y2)) if polygons else None
            boxes.append(Box(float(x1), float(y1), float(x2), float(y2), _FM_LABELS[int(labels[i])], polygon=poly))
        path = root / f"scene_{k:03d}.png"
        Image.fromarray(canvas).convert("RGB").save(path)
        out.append(Annotation(Item(sha256_file(path), path, SIZE, SIZE), boxes=tuple(boxes), source="seed"))
    return out


def _tiny(task: str, workdir: Path, **kw: object) -> YoloModel:
    params: dict = dict(task=task, image_size=SIZE, epochs=1, batch_size=8, device="cpu", conf=0.001,
                        max_det=20, workdir=workdir)
    params.update(kw)
    return YoloModel(CLASSES, **params)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HOME points to an empty folder while this module's models train and predict."""
    fake = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(fake))
        mp.delenv("XDG_CONFIG_HOME", raising=False)
        yield fake


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Annotation]:
    return make_scenes(tmp_path_factory.mktemp("scenes"), 16)


@pytest.fixture(scope="module")
def detector(home: Path, scenes: list[Annotation], tmp_path_factory: pytest.TempPathFactory) -> YoloModel:
    return _tiny("detect", tmp_path_factory.mktemp("yolo-detect")).fit(scenes)


def _check_boxes(preds: list, items: list[Item]) -> None:
    assert [p.item_id for p in preds] == [it.id for it in items]
    for p, it in zip(preds, items):
        assert p.box_probs is not None and p.box_probs.shape == (len(p.boxes), len(CLASSES))
        for b, row in zip(p.boxes, p.box_probs):
            assert 0 <= b.x1 < b.x2 <= it.width and 0 <= b.y1 < b.y2 <= it.height
            assert b.label in CLASSES and b.score is not None
            assert abs(float(row.max()) - b.score) < 1e-4  # raw sigmoid vector: its max is the confidence
            assert CLASSES[int(row.argmax())] == b.label
        assert p.embedding is not None and p.embedding.ndim == 1 and np.isfinite(p.embedding).all()


@pytest.mark.slow
def test_detect_fit_predict_save_load(detector: YoloModel, scenes: list[Annotation], tmp_path: Path, home: Path) -> None:
    items = [a.item for a in scenes]
    preds = list(detector.predict(items, batch_size=5))
    _check_boxes(preds, items)
    assert sum(len(p.boxes) for p in preds) > 0  # conf=0.001 keeps some boxes even after 1 epoch
    assert len({p.model_version for p in preds}) == 1

    ckpt = tmp_path / "yolo.pt"
    detector.save(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # no pickle needed to read it
    assert raw["classes"] == CLASSES
    loaded = YoloModel.load(ckpt)
    assert loaded.model_version == detector.model_version
    again = list(loaded.predict(items, batch_size=16))
    for a, b in zip(preds, again):
        assert len(a.boxes) == len(b.boxes)
        np.testing.assert_allclose(a.box_probs, b.box_probs, atol=1e-5)
        xyxy_a = np.array([[x.x1, x.y1, x.x2, x.y2] for x in a.boxes]).reshape(-1, 4)
        xyxy_b = np.array([[x.x1, x.y1, x.x2, x.y2] for x in b.boxes]).reshape(-1, 4)
        np.testing.assert_allclose(xyxy_a, xyxy_b, atol=1e-3)
        assert [x.label for x in a.boxes] == [x.label for x in b.boxes]
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)

    # Ultralytics kept its settings and fonts in our workdir, never in ~/.config.
    assert not (home / ".config" / "Ultralytics").exists()
    assert (Path(detector.workdir) / "runs" / "train").is_dir()


@pytest.mark.slow
def test_hflip_predictions_are_in_mirrored_coordinates(detector: YoloModel, scenes: list[Annotation]) -> None:
    items = [a.item for a in scenes[:4]]
    flipped = list(detector.predict(items, batch_size=4, hflip=True))
    _check_boxes(flipped, items)


@pytest.mark.slow
def test_fit_from_saved_weights_starts_from_them(
    detector: YoloModel, scenes: list[Annotation], tmp_path: Path
) -> None:
    ckpt = tmp_path / "start.pt"
    detector.save(ckpt)
    # A near-zero learning rate: the result must stay next to the starting weights.
    tuned = _tiny("detect", tmp_path / "wd", weights=ckpt, seed=1,
                  train_args={"optimizer": "SGD", "lr0": 1e-8, "lrf": 1.0, "warmup_epochs": 0, "momentum": 0.0})
    tuned.fit(scenes[:8])
    first = "model.0.conv.weight"
    start = detector.net_.state_dict()[first]
    assert torch.allclose(tuned.net_.state_dict()[first], start, atol=1e-4)
    scratch = _tiny("detect", tmp_path / "wd2", seed=1).fit(scenes[:8])
    assert not torch.allclose(scratch.net_.state_dict()[first], start, atol=1e-4)


@pytest.mark.slow
def test_segment_fit_predict_polygons(home: Path, tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "img", 8, seed=3, polygons=True)
    model = _tiny("segment", tmp_path / "wd").fit(scenes)
    items = [a.item for a in scenes]
    preds = list(model.predict(items, batch_size=8))
    _check_boxes(preds, items)
    polys = [b.polygon for p in preds for b in p.boxes if b.polygon is not None]
    assert polys, "segment predictions carry polygons"
    for poly in polys:
        pts = np.array(poly)
        assert pts.shape[1] == 2 and len(pts) >= 3
        assert (pts >= -1e-3).all() and (pts[:, 0] <= SIZE + 1e-3).all() and (pts[:, 1] <= SIZE + 1e-3).all()


@pytest.mark.slow
def test_classify_fit_predict_softmax(home: Path, scenes: list[Annotation], tmp_path: Path) -> None:
    labelled = [replace(a, label=a.boxes[0].label, boxes=()) for a in scenes[:10]]
    model = _tiny("classify", tmp_path / "wd", image_size=32).fit(labelled)
    preds = list(model.predict([a.item for a in labelled], batch_size=4))
    assert [p.item_id for p in preds] == [a.item.id for a in labelled]
    for p in preds:
        assert p.probs is not None and p.probs.shape == (len(CLASSES),)
        assert abs(float(p.probs.sum()) - 1.0) < 1e-5 and (p.probs >= 0).all()
        assert p.embedding is not None and p.embedding.ndim == 1
    model.save(tmp_path / "cls.pt")
    again = next(YoloModel.load(tmp_path / "cls.pt").predict([labelled[0].item], batch_size=1))
    np.testing.assert_allclose(again.probs, preds[0].probs, atol=1e-5)


def test_missing_weights_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "yolo11n.pt"
    model = _tiny("detect", tmp_path / "wd", weights=missing)
    with pytest.raises(ValueError, match=r"does not exist.*never downloaded"):
        model.fit([])
    with pytest.raises(ValueError, match="does not exist"):
        YoloModel.load(missing)


def test_bad_parameters_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        _tiny("detect", tmp_path, image_size=70).fit([])
    with pytest.raises(ValueError, match="unknown task 'pose'"):
        _tiny("pose", tmp_path).fit([])
    with pytest.raises(ValueError, match="not fitted"):
        next(_tiny("detect", tmp_path).predict([], batch_size=1))


def test_registered_and_importing_does_not_import_ultralytics() -> None:
    assert get_adapter("yolo") is YoloModel
    code = "import sys, pseudolabel.models.ultralytics_yolo, pseudolabel.models; print('ultralytics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fresh_import_keeps_settings_out_of_home(tmp_path: Path) -> None:
    """In a fresh process, _import_ultralytics points Ultralytics' config dir at ours and
    provides the fonts, so nothing lands in ~/.config/Ultralytics."""
    home, cfg = tmp_path / "home", tmp_path / "cfg"
    home.mkdir()
    code = (
        "from pathlib import Path; from pseudolabel.models.ultralytics_yolo import _import_ultralytics;"
        f"_import_ultralytics(Path({str(cfg)!r}));"
        "from ultralytics.utils import USER_CONFIG_DIR, SETTINGS; from ultralytics.utils.checks import check_font;"
        "print(USER_CONFIG_DIR); print(check_font('Arial.ttf')); print(SETTINGS['sync'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_CONFIG_DIR", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    config_dir, font, sync = out.stdout.strip().splitlines()[-3:]
    assert Path(config_dir) == cfg / "Ultralytics"
    assert Path(font) == cfg / "Ultralytics" / "Arial.ttf"
    assert sync == "False"
    assert not (home / ".config" / "Ultralytics").exists()


def test_importing_ultralytics_keeps_pil_errors(tmp_path: Path) -> None:
    """Ultralytics patches PIL.Image.open to pip-install pi-heif on unreadable files; our import
    undoes it, so a broken file still raises PIL's own error (and ingest quarantines it)."""
    from PIL import UnidentifiedImageError

    from pseudolabel.models.ultralytics_yolo import _import_ultralytics

    _import_ultralytics(tmp_path / "cfg")
    bad = tmp_path / "text.jpg"
    bad.write_text("not an image")
    with pytest.raises(UnidentifiedImageError):
        Image.open(bad)
