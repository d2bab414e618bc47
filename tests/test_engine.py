"""The inference engine (pseudolabel/engine.py + YoloModel.predict for detect / segment), on CPU.

The reference is Ultralytics itself: ``YOLO.predict`` run on the same files with the same
network. An untrained network is degenerate (its outputs barely depend on the input), so the
fixtures calibrate its BatchNorm statistics on the test images and set the class-logit scale:
boxes then depend on the image, with spread-out scores, in a second and without training.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pseudolabel.data.images import load_rgb, sha256_file
from pseudolabel.engine import (
    default_batch_size,
    default_workers,
    letterbox,
    letterbox_params,
    stream_images,
)
from pseudolabel.models.ultralytics_yolo import YoloModel, _HeadAndEmbedding
from pseudolabel.runtime import OnnxForward, resolve_runtime
from pseudolabel.types import Item

CLASSES = ["a", "b", "c"]
S = 128
CONF = 0.05
# (height, width): longest side = S, so the letterbox only pads (odd and even paddings,
# portrait, landscape, square) and both pipelines see bit-identical pixels.
SHAPES_NO_RESIZE = [(80, 128), (128, 53), (128, 128), (101, 128), (128, 96)]


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a = np.full((h, w, 3), 30, np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, h - 10), rng.integers(0, w - 10)
        hh, ww = rng.integers(8, max(9, h // 2)), rng.integers(8, max(9, w // 2))
        a[y0 : y0 + hh, x0 : x0 + ww] = rng.integers(0, 255, 3)
    return np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)


def _write(root: Path, shapes: list[tuple[int, int]], *, seed: int = 0, suffix: str = ".png") -> list[Item]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for k, (h, w) in enumerate(shapes):
        path = root / f"im{k:03d}{suffix}"
        Image.fromarray(_scene(rng, h, w)).save(path)
        items.append(Item(sha256_file(path), path, w, h))
    return items


def _calibrated(task: str, workdir: Path, items: list[Item]) -> YoloModel:
    """An untrained yolo11n whose BatchNorm statistics come from ``items`` and whose class
    logits have bias -3 (scores spread around 0.05 instead of all ~1e-4)."""
    torch.manual_seed(0)
    model = YoloModel.from_yaml(CLASSES, task=task, image_size=S, device="cpu", conf=CONF, max_det=100,
                                workdir=workdir)
    net = model.net_
    x, _ = letterbox([torch.from_numpy(np.array(load_rgb(i.path))).permute(2, 0, 1) for i in items], S)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    net.train()
    with torch.no_grad():
        net(x)
        for seq in net.model[-1].cv3:
            seq[-1].bias.fill_(-3.0)
    net.eval()
    model._set_net(net, model.yaml_)
    return model


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Item]:
    return _write(tmp_path_factory.mktemp("engine-images"), SHAPES_NO_RESIZE)


@pytest.fixture(scope="module")
def detector(images: list[Item], tmp_path_factory: pytest.TempPathFactory) -> YoloModel:
    return _calibrated("detect", tmp_path_factory.mktemp("engine-detect"), images)


def _ultralytics_predict(model: YoloModel, items: list[Item], *, batch: int) -> list:
    """Ultralytics' own predictor on the same files and the same (fused) network."""
    ul = model._ultralytics()
    yolo = ul.YOLO(model._yaml_name(), task=model.task)
    yolo.model = copy.deepcopy(model._inference_net())
    yolo.model.names = dict(enumerate(CLASSES))
    return list(yolo.predict(source=[str(i.path) for i in items], imgsz=S, conf=model.conf, iou=model.iou,
                             max_det=model.max_det, batch=batch, rect=False, verbose=False, device="cpu"))


def _arrays(pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xyxy = np.array([[b.x1, b.y1, b.x2, b.y2] for b in pred.boxes], np.float64).reshape(-1, 4)
    score = np.array([b.score for b in pred.boxes], np.float64)
    cls = np.array([CLASSES.index(b.label) for b in pred.boxes], int)
    return xyxy, score, cls


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _match(ref_xyxy: np.ndarray, ref_score: np.ndarray, xyxy: np.ndarray, score: np.ndarray) -> np.ndarray:
    """For each reference box, the index of our box nearest in coordinates and score."""
    d = np.abs(ref_xyxy[:, None, :] - xyxy[None, :, :]).max(-1) + 1000 * np.abs(ref_score[:, None] - score[None, :])
    return d.argmin(1)


def _check_box_probs(pred) -> None:
    _, score, cls = _arrays(pred)
    assert pred.box_probs is not None and pred.box_probs.shape == (len(pred.boxes), len(CLASSES))
    if len(score):
        np.testing.assert_allclose(pred.box_probs.max(1), score, atol=1e-6)
        assert (pred.box_probs.argmax(1) == cls).all()


# --------------------------------------------------------------------------------------
# letterbox


def test_letterbox_geometry_known_answers() -> None:
    assert letterbox_params(480, 640, 640).new_shape == (480, 640)
    assert letterbox_params(480, 640, 640).pad == (80, 0)
    # odd padding: 27 rows to split -> 13 on top (Ultralytics rounds dh/2 - 0.1), 14 below
    assert letterbox_params(101, 128, 128).pad == (13, 0)
    # r = 128 / 300; width 225 * r = 96 exactly; height 128
    info = letterbox_params(300, 225, 128)
    assert info.new_shape == (128, 96) and info.pad == (0, 16)
    assert letterbox_params(1, 3000, 64).new_shape == (1, 64)  # thin images keep one pixel


@pytest.mark.parametrize("shape", [(75, 120), (145, 91), (195, 60), (49, 49), (300, 225), (37, 200), (128, 80)])
def test_letterbox_matches_ultralytics_pixels(shape: tuple[int, int], detector: YoloModel) -> None:
    detector._ultralytics()  # imports Ultralytics offline
    from ultralytics.data.augment import LetterBox

    a = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref = LetterBox((S, S), auto=False, stride=32)(image=a).astype(int)  # (S, S, 3), cv2 INTER_LINEAR
    x, infos = letterbox([torch.from_numpy(a).permute(2, 0, 1)], S)
    assert x.shape == (1, 3, S, S) and x.dtype == torch.float32
    ours = (x[0].permute(1, 2, 0) * 255).round().numpy().astype(int)
    diff = np.abs(ours - ref)
    # OpenCV resizes uint8 in fixed point: a grey level off by one on some pixels, never more
    # (a one-pixel shift of random content would give differences of ~85 on average).
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.15
    (top, left), (nh, nw) = infos[0].pad, infos[0].new_shape
    assert (ours[:top] == 114).all() and (ours[top + nh :] == 114).all()
    assert (ours[:, :left] == 114).all() and (ours[:, left + nw :] == 114).all()


def test_letterbox_rejects_bad_images() -> None:
    with pytest.raises(ValueError, match="at least one"):
        letterbox([], S)
    with pytest.raises(ValueError, match=r"images\[0\].*\(3, H, W\) uint8"):
        letterbox([torch.zeros(3, 10, 10)], S)


# --------------------------------------------------------------------------------------
# agreement with Ultralytics' predictor


def _on(model: YoloModel, runtime: str) -> YoloModel:
    """``model`` (same network) predicting on ``runtime``."""
    other = copy.copy(model)
    other.runtime = runtime
    return other


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_detect_agrees_with_ultralytics_predict(detector: YoloModel, images: list[Item], runtime: str) -> None:
    ours = list(_on(detector, runtime).predict(images, batch_size=2, workers=0))
    ref = _ultralytics_predict(detector, images, batch=2)
    assert [p.item_id for p in ours] == [i.id for i in images]
    assert sum(len(p.boxes) for p in ours) >= 20  # the fixture gives a real workload
    for pred, res, item in zip(ours, ref, images):
        _check_box_probs(pred)
        xyxy, score, cls = _arrays(pred)
        r_xyxy, r_score, r_cls = (res.boxes.xyxy.numpy(), res.boxes.conf.numpy(), res.boxes.cls.numpy().astype(int))
        assert len(xyxy) == len(r_xyxy)
        assert res.orig_shape == (item.height, item.width)
        if not len(xyxy):
            continue
        j = _match(r_xyxy, r_score, xyxy, score)
        assert len(set(j.tolist())) == len(j)  # one-to-one
        ious = _iou(r_xyxy, xyxy)[np.arange(len(j)), j]
        degenerate = np.prod(r_xyxy[:, 2:] - r_xyxy[:, :2], axis=1) < 1e-6  # zero-area clipped boxes
        assert (ious[~degenerate] >= 0.99).all()
        np.testing.assert_allclose(xyxy[j], r_xyxy, atol=0.05)
        assert (cls[j] == r_cls).all()
        assert np.abs(score[j] - r_score).max() < 1e-3
        assert (xyxy[:, 0] >= 0).all() and (xyxy[:, 2] <= item.width).all() and (xyxy[:, 3] <= item.height).all()


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_segment_agrees_with_ultralytics_predict(images: list[Item], tmp_path: Path, runtime: str) -> None:
    model = _calibrated("segment", tmp_path, images)
    ours = list(_on(model, runtime).predict(images, batch_size=3, workers=0))
    ref = _ultralytics_predict(model, images, batch=3)
    n_polys = 0
    for pred, res in zip(ours, ref):
        _check_box_probs(pred)
        xyxy, score, cls = _arrays(pred)
        r_xyxy, r_score, r_cls = (res.boxes.xyxy.numpy(), res.boxes.conf.numpy(), res.boxes.cls.numpy().astype(int))
        # Ultralytics drops boxes whose mask is empty; we keep them (with polygon None).
        assert len(r_xyxy) <= len(xyxy)
        if not len(r_xyxy):
            continue
        j = _match(r_xyxy, r_score, xyxy, score)
        np.testing.assert_allclose(xyxy[j], r_xyxy, atol=0.05)
        assert (cls[j] == r_cls).all() and np.abs(score[j] - r_score).max() < 1e-3
        for k, poly_ref in zip(j, res.masks.xy):
            poly = pred.boxes[k].polygon
            if len(poly_ref) < 3:
                continue
            n_polys += 1
            assert poly is not None
            if runtime == "torch":  # the same kernels: the same outline
                np.testing.assert_allclose(np.array(poly), poly_ref, atol=1e-3)
            else:  # float rounding flips a few mask pixels at the 0.5 level: compare areas
                assert _mask_iou(poly, poly_ref, res.orig_shape) >= 0.97
    assert n_polys >= 5


def _mask_iou(a, b, shape: tuple[int, int]) -> float:
    from PIL import ImageDraw

    masks = []
    for poly in (a, b):
        img = Image.new("1", (shape[1], shape[0]))
        ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in poly], fill=1)
        masks.append(np.array(img))
    return float((masks[0] & masks[1]).sum() / max((masks[0] | masks[1]).sum(), 1))


# --------------------------------------------------------------------------------------
# invariances


def _same(a: list, b: list) -> None:
    """Same predictions up to the order of near-equal scores: every box of ``a`` has one in ``b``
    at the same place (0.01 px) with the same class vector (1e-4) and the same label, except
    where the class vector's two best scores are within 1e-4 (a tie either runtime may break)."""
    assert [p.item_id for p in a] == [p.item_id for p in b]
    for p, q in zip(a, b):
        assert len(p.boxes) == len(q.boxes)
        np.testing.assert_allclose(p.embedding, q.embedding, atol=1e-4)
        xa, xb = _arrays(p)[0], _arrays(q)[0]
        pa, pb = np.asarray(p.box_probs), np.asarray(q.box_probs)
        free = set(range(len(q.boxes)))
        for i, box in enumerate(p.boxes):
            j = next((j for j in sorted(free) if np.abs(xa[i] - xb[j]).max() <= 0.01
                      and np.abs(pa[i] - pb[j]).max() <= 1e-4), None)
            assert j is not None, f"{p.item_id}: box {i} {box} has no twin on the other runtime"
            free.discard(j)
            top2 = np.sort(pa[i])[-2:]
            assert box.label == q.boxes[j].label or top2[1] - top2[0] <= 1e-4, (box, q.boxes[j])


def test_onnx_runtime_equals_torch_runtime(detector: YoloModel, images: list[Item]) -> None:
    """Boxes, per-box class vectors and embeddings are the same on both runtimes."""
    assert detector.runtime == "auto" and resolve_runtime("auto", "cpu") == "onnx"  # the CPU default
    _same(list(_on(detector, "torch").predict(images, batch_size=2, workers=0)),
          list(_on(detector, "onnx").predict(images, batch_size=2, workers=0)))


def test_onnx_forward_leaves_the_module_alone_and_follows_threads(detector: YoloModel, images: list[Item]) -> None:
    net = detector._inference_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    module = _HeadAndEmbedding(net, detector._embedding_layer(net))
    fwd = OnnxForward(module, torch.zeros(1, 3, S, S), ["head", "embedding"], threads=1)
    assert fwd.threads == 1
    # 3 images: a batch size other than the example's (the batch axis is dynamic)
    x, _ = letterbox([torch.from_numpy(np.array(load_rgb(i.path))).permute(2, 0, 1) for i in images[:3]], S)
    with torch.inference_mode():
        ref = module(x)
    got = fwd(x)
    assert [t.shape for t in got] == [t.shape for t in ref]
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), atol=0.05)  # pixels and scores
    np.testing.assert_allclose(got[1].numpy(), ref[1].numpy(), atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(RuntimeError, match="exported graph has outputs"):
        OnnxForward(net, torch.zeros(1, 3, S, S), ["head"])  # the raw net has more outputs
    with pytest.raises(ValueError, match="batch with at least one item"):
        OnnxForward(net, torch.zeros(0, 3, S, S), ["head"])


def test_runtime_choice() -> None:
    assert resolve_runtime("torch", "cpu") == "torch"
    assert resolve_runtime("onnx", "cpu") == "onnx"
    assert resolve_runtime("auto", "cuda") == "torch"  # no device needed to decide
    with pytest.raises(ValueError, match="CPU only"):
        resolve_runtime("onnx", "cuda")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        resolve_runtime("tensorrt", "cpu")
    with pytest.raises(ValueError, match="unknown runtime"):
        YoloModel(CLASSES, runtime="fast", device="cpu")._check_params()


def test_output_independent_of_batch_size_and_workers(detector: YoloModel, tmp_path: Path) -> None:
    items = _write(tmp_path, [(60, 90), (128, 128), (200, 41), (33, 77), (128, 90), (90, 90), (17, 128)], seed=3)
    base = list(detector.predict(items, batch_size=1, workers=0))
    assert sum(len(p.boxes) for p in base) > 0
    _same(base, list(detector.predict(items, batch_size=3, workers=2)))
    _same(base, list(detector.predict(iter(items), batch_size=16, workers=2)))  # a one-shot iterator


def test_hflip_equals_prediction_on_the_mirrored_file(detector: YoloModel, images: list[Item], tmp_path: Path) -> None:
    mirrored = []
    for k, item in enumerate(images):
        path = tmp_path / f"m{k}.png"
        Image.fromarray(np.array(load_rgb(item.path))[:, ::-1]).save(path)
        mirrored.append(Item(item.id, path, item.width, item.height))
    a = list(detector.predict(images, batch_size=4, workers=0, hflip=True))
    b = list(detector.predict(mirrored, batch_size=4, workers=0))
    _same(a, b)
    plain = list(detector.predict(images, batch_size=4, workers=0))
    assert any(len(p.boxes) != len(q.boxes) or not np.allclose(_arrays(p)[0], _arrays(q)[0]) for p, q in zip(a, plain))


def test_inference_net_is_close_to_the_plain_net(detector: YoloModel, images: list[Item]) -> None:
    """Conv+BN fusion and channels-last change rounding only."""
    x, _ = letterbox([torch.from_numpy(np.array(load_rgb(i.path))).permute(2, 0, 1) for i in images], S)
    with torch.inference_mode():
        plain = detector.net_(x)[0]
        fast = detector._inference_net()(x.contiguous(memory_format=torch.channels_last))[0]
    np.testing.assert_allclose(fast[:, 4:].numpy(), plain[:, 4:].numpy(), atol=2e-3)  # class scores
    np.testing.assert_allclose(fast[:, :4].numpy(), plain[:, :4].numpy(), atol=0.5)  # pixels at 128 px
    assert detector._inference_net() is detector._inference_net()  # built once per network


# --------------------------------------------------------------------------------------
# streaming


def test_stream_images_applies_exif_orientation_and_keeps_order(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (20, 36, 3), dtype=np.uint8)
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    items = [Item(f"id{k}", path if k % 2 else tmp_path / f"p{k}.png", 1, 1) for k in range(5)]
    for k in range(0, 5, 2):
        Image.fromarray(arr[: 10 + k]).save(tmp_path / f"p{k}.png")
    got = [(it.id, img) for batch, imgs in stream_images(items, batch_size=2, workers=2) for it, img in zip(batch, imgs)]
    assert [g[0] for g in got] == [f"id{k}" for k in range(5)]
    for k, (_, img) in enumerate(got):
        expect = np.array(load_rgb(items[k].path))
        assert img.shape == (3, *expect.shape[:2]) and img.dtype == torch.uint8
        assert np.array_equal(img.permute(1, 2, 0).numpy(), expect)
    assert got[1][1].shape[1:] == (36, 20)  # rotated by the EXIF tag


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="Item"):
        list(stream_images(["not-an-item"], batch_size=2, workers=0))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        list(stream_images([], batch_size=0))
    with pytest.raises(ValueError, match="workers"):
        list(stream_images([], batch_size=1, workers=-1))
    with pytest.raises(ValueError, match="gpu_decode"):
        list(stream_images([], batch_size=1, device="cpu", gpu_decode=True))


def test_bad_predict_arguments_raise(detector: YoloModel, images: list[Item]) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        list(detector.predict(images, batch_size=0))


def test_defaults() -> None:
    assert default_batch_size("cpu", 640) == 2
    assert default_batch_size("cpu", 128) == 32 and default_batch_size("cpu", 64) == 128
    assert default_batch_size("cpu", 2048) == 1  # never 0
    assert default_batch_size("cpu", 32) == 256  # clamped to max_batch
    assert 0 <= default_workers() <= 4
    with pytest.raises(ValueError, match="image_size"):
        default_batch_size("cpu", 0)


def test_memory_stays_flat_while_streaming(detector: YoloModel, tmp_path: Path) -> None:
    """RSS growth while streaming 250 items stays within a small bound of the growth for 50:
    decoded images (here 0.5 MB each) and predictions are not kept."""
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    files = _write(tmp_path, [(300, 600)] * 4, seed=5)
    def items(n: int) -> list[Item]:
        return [Item(f"{k:06d}", files[k % 4].path, 600, 300) for k in range(n)]

    def peak_growth(n: int) -> float:
        base = proc.memory_info().rss
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        t = threading.Thread(target=sample)
        t.start()
        count = 0
        for _pred in detector.predict(items(n), batch_size=16, workers=0):
            count += 1
        done.set()
        t.join()
        assert count == n
        return (peak[0] - base) / 2**20

    peak_growth(50)  # warm-up: allocator pools, first-call imports
    small = peak_growth(50)
    large = peak_growth(250)
    # Keeping 200 more decoded images would add ~100 MB.
    assert large - small < 30, (small, large)
