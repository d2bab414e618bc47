"""Inference throughput benchmark: our engine vs Ultralytics ``predict`` vs a naive loop vs
the model alone, on real JPEG files (Fashion-MNIST items composited on a canvas), with a
model that **detects**.

``run_bench_infer(out_dir)`` writes ``out_dir/bench-infer.json`` and returns the same dict;
``pseudolabel bench-infer`` (CLI) calls it.

The model: yolo11n (nc=4, built from YAML: nothing is downloaded) trained briefly on
composited scenes (:func:`train_detector`: 64 scenes of 128 px, 30 epochs at 128 px, the
detection demo's optimiser settings; 1.5 to 3 minutes on one CPU core), through the model
registry and the :class:`~pseudolabel.models.base.Model` protocol only. Every method then
predicts with the same weights and the same fixed ``conf`` (:data:`CONF` = 0.05, the
config's default ``model.conf``, what a round pseudo-labels with) and ``iou``. An untrained
yolo11n keeps no box at 0.25 or 0.05 (its class scores are ~1e-4), so NMS and the per-box
class vectors cost nothing; briefly trained, it keeps about 21 boxes per 640 px scene at
0.05 (6.6 true objects) but hardly any at Ultralytics' default 0.25, hence the fixed low threshold. Boxes per image are
reported for every method, beside the scenes' true objects per image.

The scenes (:func:`bench_scenes`): ``scene_size`` pixels, items at the trained pixel scale
(28-70 px), 1 to ``max(4, min(12, (scene_size // 128) ** 2 // 2))`` objects, JPEG quality 90.

Methods:

- ``engine``: the trained model's ``predict`` (pseudolabel.engine: decoding workers,
  letterbox on the device, fused network, fp16 autocast on CUDA, NMS on the device, full
  per-box class vectors + embeddings) on the ``runtime`` chosen (``auto``: ONNX Runtime on a
  CPU, PyTorch on CUDA; see pseudolabel.runtime); when that is ONNX Runtime,
  ``engine_torch`` is the same checkpoint loaded with ``model.runtime: torch``;
- :func:`ultralytics_baselines` (the one place that imports Ultralytics): the same
  checkpoint's weights in an Ultralytics network, and

  - ``ultralytics``: ``YOLO.predict(source=paths, batch=batch_size, stream=True)``, results
    consumed (``half=True`` on CUDA); ``ultralytics_b1``: the same with ``batch=1`` (on a
    CPU its fastest setting). ``x ultra`` divides by the **faster** of the two, so the engine
    is compared with Ultralytics at its best;
  - ``naive``: one image at a time: PIL decode, Ultralytics' cv2 ``LetterBox``, forward of
    the plain (unfused) network, Ultralytics' NMS;
  - ``model_alone``: forward of the fused network on the engine's runtime, on pre-decoded,
    pre-letterboxed batches already on the device (head output only): the ceiling for any
    pipeline around this network (``model_alone_torch``: the same on PyTorch, when the
    engine runs ONNX Runtime).

Images/s = images / wall seconds (best of ``repeats`` rounds; each round runs every method
once, in turn; one untimed warm-up batch first).
Peak RSS (this process + its children, sampled every 10 ms) and peak CUDA memory per method.

Over 400 lines because the baselines live beside what they are compared with, and
:func:`make_scenes` (the plain scenes of ``bench-memory``) stays here until the benchmarks
move to their own package.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pseudolabel.data.images import load_rgb, sha256_file
from pseudolabel.types import Annotation, Item

if TYPE_CHECKING:
    from pseudolabel.config import Config

CONF = 0.05
"""NMS confidence of every method: the config's default ``model.conf`` (see the module docstring)."""
TRAIN_ARGS: dict[str, Any] = {"optimizer": "AdamW", "lr0": 0.004, "warmup_epochs": 1}
"""Ultralytics training arguments of :func:`train_detector`: the detection demo's."""

Method = Callable[[], tuple[int, int | None]]
"""A timed method: runs once over the images; returns (images, boxes kept or None)."""


def make_scenes(root: Path, n: int, *, scene_size: int = 640, seed: int = 0, jpeg: bool = True) -> list[Item]:
    """``n`` RGB scenes of ``scene_size`` pixels: 2-6 Fashion-MNIST items, each scaled 2-6x,
    pasted on a noisy grey background; written as JPEG (quality 90) or PNG. Used by
    ``bench-memory``; ``bench-infer`` measures :func:`bench_scenes`."""
    from pseudolabel.sim.fashion import load_fashion

    images, _labels = load_fashion("test")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        canvas = rng.normal(60, 12, (scene_size, scene_size)).clip(0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(2, 7))):
            obj = images[int(rng.integers(len(images)))]
            side = int(28 * rng.uniform(2, 6))
            side = min(side, scene_size)
            patch = np.asarray(Image.fromarray(obj).resize((side, side), Image.Resampling.BILINEAR))
            y, x = (int(rng.integers(0, scene_size - side + 1)) for _ in range(2))
            region = canvas[y : y + side, x : x + side]
            np.maximum(region, patch, out=region)
        rgb = np.stack([canvas, canvas, (canvas * 0.9).astype(np.uint8)], axis=-1)
        path = root / (f"scene_{k:05d}.jpg" if jpeg else f"scene_{k:05d}.png")
        Image.fromarray(rgb).save(path, quality=90) if jpeg else Image.fromarray(rgb).save(path)
        items.append(Item(sha256_file(path), path, scene_size, scene_size))
    return items


class _PeakMemory:
    """Peak RSS (MiB) of this process and its children while the block runs."""

    def __enter__(self) -> _PeakMemory:
        import psutil

        self._proc = psutil.Process()
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a worker that just exited
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._rss() / 2**20)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self._rss() / 2**20)


def _timed(fn: Method, device: torch.device) -> dict[str, Any]:
    """One timed run of ``fn``: images, boxes, seconds, images/s, peak RSS (and CUDA) MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with _PeakMemory() as mem:
        t0 = time.perf_counter()
        n, boxes = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"images": n, "seconds": round(seconds, 4), "images_per_s": round(n / seconds, 2),
                           "peak_rss_mib": round(mem.peak_mib, 1)}
    if boxes is not None:
        out |= {"boxes": boxes, "boxes_per_image": round(boxes / max(n, 1), 3)}
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def bench_scenes(root: Path, n: int, *, scene_size: int = 640, seed: int = 1,
                 jpeg: bool = True) -> tuple[list[Item], list[int]]:
    """``n`` composited scenes (:func:`pseudolabel.sim.composites.export_scenes`, its default
    classes) of ``scene_size`` pixels, items at the trained pixel scale (28-70 px) and 1 to
    ``max(4, min(12, (scene_size // 128) ** 2 // 2))`` objects (12 at 640 px); written under
    ``root/images`` as JPEG (quality 90) or kept as the exported PNG. Returns the items, in
    file order, and the number of true objects on each."""
    from pseudolabel.sim.composites import export_scenes

    max_objects = max(4, min(12, (scene_size // 128) ** 2 // 2))
    ds = export_scenes(root / "composites", n_seed=0, n_pool=n, n_holdout=0, size=scene_size, seed=seed,
                       max_objects=max_objects)
    (root / "images").mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    truth: list[int] = []
    for iid, rel in sorted(ds.paths.items(), key=lambda kv: kv[1]):
        path = ds.root / rel
        if jpeg:
            dst = root / "images" / f"{path.stem}.jpg"
            Image.open(path).convert("RGB").save(dst, quality=90)
            path = dst
        items.append(Item(sha256_file(path), path, ds.size, ds.size))
        truth.append(len(ds.truth[iid]))
    return items, truth


def detector_config(workdir: Path, *, train_images: Path, pool: Path, image_size: int, train_size: int,
                    epochs: int, conf: float, iou: float, device: str, runtime: str, model_yaml: str,
                    seed: int = 0) -> Config:
    """The campaign config the benchmark's model is built (and loaded) from: detect, yolo at
    ``image_size`` for inference, trained at ``train_size`` (``train_args.imgsz``) with
    :data:`TRAIN_ARGS`; ``train_images``: the YOLO-format training scenes; ``pool``: the
    benchmark's images. ``device``: ``"cpu"`` or ``"cuda"``."""
    from pseudolabel.config import load_config
    from pseudolabel.sim.composites import DEFAULT_CLASSES

    labels = train_images.parent / "labels"
    return load_config(data={
        "project": "bench-infer", "task": "detect", "workdir": str(workdir), "classes": list(DEFAULT_CLASSES),
        "data": {"seed": {"format": "yolo", "path": str(train_images), "labels": str(labels)},
                 "pool": {"path": str(pool)},
                 "holdout": {"format": "yolo", "path": str(train_images), "labels": str(labels)}},
        "model": {"arch": "yolo", "yolo_yaml": model_yaml, "image_size": image_size, "epochs": epochs,
                  "min_steps": 0, "batch_size": 8, "seed": seed, "device": device, "conf": conf, "iou": iou,
                  "runtime": runtime, "train_args": {**TRAIN_ARGS, "imgsz": train_size}},
    })


def train_detector(root: Path, *, n_train: int = 64, train_size: int = 128, epochs: int = 30,
                   image_size: int = 640, conf: float = CONF, iou: float = 0.7, device: str = "cpu",
                   runtime: str = "auto", model_yaml: str = "yolo11n.yaml", seed: int = 0) -> dict[str, Any]:
    """Train the benchmark's detector and save it to ``root/model.pt``.

    ``n_train`` composited scenes of ``train_size`` pixels (:func:`export_scenes`, seed
    ``seed``: other scenes than :func:`bench_scenes`' seed 1, from the same Fashion-MNIST
    train split), ``epochs`` epochs at
    ``train_size`` px; the model predicts at ``image_size`` with ``conf`` / ``iou``. Built
    with :func:`pseudolabel.models.registry.build` from :func:`detector_config` and trained
    with the protocol's ``fit``. Returns the recipe, the checkpoint path and the seconds.
    """
    from pseudolabel.sim.composites import export_scenes
    from pseudolabel.models import registry

    ds = export_scenes(root / "train-scenes", n_seed=n_train, n_pool=0, n_holdout=0, size=train_size, seed=seed)
    cfg = detector_config(root, train_images=ds.seed_images, pool=ds.pool_dir, image_size=image_size,
                          train_size=train_size, epochs=epochs, conf=conf, iou=iou, device=device, runtime=runtime,
                          model_yaml=model_yaml, seed=seed)
    train = [Annotation(Item(iid, ds.root / rel, ds.size, ds.size), boxes=ds.truth[iid], source="seed")
             for iid, rel in sorted(ds.paths.items(), key=lambda kv: kv[1])]
    model = registry.build(cfg, n_train=len(train))
    t0 = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - t0
    model.save(root / "model.pt")
    return {"checkpoint": str(root / "model.pt"), "train_images": n_train, "train_size": train_size,
            "epochs": epochs, "train_args": {**TRAIN_ARGS, "imgsz": train_size}, "seed": seed,
            "train_seconds": round(seconds, 1), "model_version": model.model_version}


def engine_method(model: Any, items: Sequence[Item], *, batch_size: int, workers: int | None) -> Method:
    """Our engine: ``model.predict`` over ``items`` (after one untimed warm-up batch, which
    also exports the network for ONNX Runtime). ``workers``: decode workers (``None``: the
    engine's default)."""
    extra = {} if workers is None else {"workers": workers}
    list(model.predict(items[:batch_size], batch_size=batch_size))  # warm-up

    def run() -> tuple[int, int | None]:
        n = nb = 0
        for pred in model.predict(items, batch_size=batch_size, **extra):
            n += 1
            nb += len(pred.boxes)
        return n, nb

    return run


class _HeadOnly(torch.nn.Module):
    """An Ultralytics detection network returning only its head output ``(N, 4 + C, A)``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def ultralytics_baselines(checkpoint: Path, items: Sequence[Item], *, image_size: int, conf: float, iou: float,
                          batch_size: int, device: torch.device, runtime: str) -> dict[str, Method]:
    """The baselines, on the weights of ``checkpoint`` (a detection checkpoint written by the
    model's ``save``: its ``state_dict`` and network ``yaml`` are loaded into Ultralytics'
    own ``DetectionModel``): ``ultralytics``, ``ultralytics_b1``, ``naive``,
    ``model_alone`` (+ ``model_alone_torch`` when ``runtime`` is ``"onnx"``); see the module
    docstring. Each is warmed up once here.

    The only function of the benchmark that imports Ultralytics. It must run after the model
    was built or loaded through the registry, which imports Ultralytics with its network
    calls switched off (``YOLO_OFFLINE``, its own settings folder).
    """
    if "ultralytics" not in sys.modules:
        raise RuntimeError("ultralytics_baselines: load the model through pseudolabel.models.registry first "
                           "(it imports Ultralytics with its network calls switched off)")
    import copy

    import ultralytics
    from ultralytics.data.augment import LetterBox
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import nms

    from pseudolabel.engine import letterbox
    from pseudolabel.runtime import OnnxForward

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if ckpt.get("task") != "detect":
        raise ValueError(f"{checkpoint}: a {ckpt.get('task')!r} checkpoint; bench-infer measures a detector")
    classes = list(ckpt["classes"])
    net = DetectionModel(cfg=dict(ckpt["yaml"]), nc=len(classes), verbose=False)
    net.load_state_dict(ckpt["state_dict"])
    net = net.float().eval().to(device)
    net.names = dict(enumerate(classes))
    threads = torch.get_num_threads()  # Ultralytics' device selection resets it: restored below
    paths = [str(i.path) for i in items]
    methods: dict[str, Method] = {}

    # (a) Ultralytics predict on a copy of the network (it fuses its copy in place)
    yolo = ultralytics.YOLO(ckpt["yaml"].get("yaml_file") or "yolo11n.yaml", task="detect")
    yolo.model = copy.deepcopy(net)  # type: ignore[assignment]  # typed as the model name there
    args: dict[str, Any] = dict(imgsz=image_size, conf=conf, iou=iou, batch=batch_size, verbose=False, stream=True,
                                device="cpu" if device.type == "cpu" else str(device.index or 0))
    if device.type == "cuda":
        args["half"] = True
    for _ in yolo.predict(source=paths[:batch_size], **args):  # warm-up (builds the predictor)
        pass
    torch.set_num_threads(threads)

    def predict_at(batch: int) -> Method:
        def run() -> tuple[int, int | None]:
            n = nb = 0
            for res in yolo.predict(source=paths, **{**args, "batch": batch}):
                n += 1
                nb += len(res.boxes)  # type: ignore[union-attr,arg-type]  # detect Results always hold boxes
            return n, nb

        return run

    methods["ultralytics"] = predict_at(batch_size)
    if batch_size != 1:
        methods["ultralytics_b1"] = predict_at(1)

    # (b) naive per-image loop on the plain network
    lb = LetterBox((image_size, image_size), auto=False, stride=32)

    def naive() -> tuple[int, int | None]:
        nb = 0
        for path in paths:
            arr = lb(image=np.asarray(load_rgb(path)))
            x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(device).float() / 255.0
            with torch.inference_mode():
                head = _HeadOnly(net)(x)
            kept = nms.non_max_suppression(head, conf, iou, max_det=300, nc=len(classes))
            nb += sum(len(k.cpu()) for k in kept)
        return len(paths), nb

    methods["naive"] = naive

    # (c) the fused network alone on pre-letterboxed batches already on the device
    fused = copy.deepcopy(net).fuse(verbose=False).to(device, memory_format=torch.channels_last).eval()
    batches = []
    for start in range(0, len(paths), batch_size):
        imgs = [torch.from_numpy(np.array(load_rgb(p))).permute(2, 0, 1).to(device)
                for p in paths[start : start + batch_size]]
        batches.append(letterbox(imgs, image_size)[0])

    def alone_torch() -> tuple[int, int | None]:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            for x in batches:
                fused(x.contiguous(memory_format=torch.channels_last))
        return len(paths), None

    alone: dict[str, Method] = {"model_alone": alone_torch}
    if runtime == "onnx":
        onnx = OnnxForward(_HeadOnly(fused), torch.zeros(1, 3, image_size, image_size), ["head"])

        def alone_onnx() -> tuple[int, int | None]:
            for x in batches:
                onnx(x)
            return len(paths), None

        alone = {"model_alone": alone_onnx, "model_alone_torch": alone_torch}
    for name, fn in alone.items():
        fn()  # warm-up
        methods[name] = fn
    return methods


def run_bench_infer(
    out_dir: Path,
    *,
    n_images: int = 200,
    image_size: int = 640,
    scene_size: int = 640,
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    model_yaml: str = "yolo11n.yaml",
    repeats: int = 1,
    jpeg: bool = True,
    conf: float = CONF,
    iou: float = 0.7,
    runtime: str = "auto",
    model: Path | None = None,
    train_images: int = 64,
    train_size: int = 128,
    train_epochs: int = 30,
) -> dict[str, Any]:
    """Time the methods (see the module docstring) on ``n_images`` scenes; write
    ``out_dir/bench-infer.json``; print a table; return the dict written.

    ``batch_size``: for every method (``None``: the engine's automatic choice for the device
    and image size). ``model``: a detection checkpoint to measure (written by a YOLO model's
    ``save``, e.g. a round's model; its own ``conf`` / ``iou`` / ``image_size`` apply); ``None``:
    train one first with :func:`train_detector` (``train_images`` scenes of ``train_size`` px,
    ``train_epochs`` epochs) into ``out_dir/model``.
    """
    from pseudolabel.engine import default_batch_size, default_workers
    from pseudolabel.models import registry
    from pseudolabel.models.base import resolve_device
    from pseudolabel.runtime import resolve_runtime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    runtime = resolve_runtime(runtime, dev)
    batch_size = default_batch_size(dev, image_size) if batch_size is None else batch_size
    threads = torch.get_num_threads()  # Ultralytics' training / device selection reset it: restored below
    items, truth = bench_scenes(out_dir, n_images, scene_size=scene_size, jpeg=jpeg)
    torch.manual_seed(0)
    workdir = out_dir / "model"
    if model is None:
        trained = train_detector(workdir, n_train=train_images, train_size=train_size, epochs=train_epochs,
                                 image_size=image_size, conf=conf, iou=iou, device=dev.type, runtime=runtime,
                                 model_yaml=model_yaml)
        checkpoint = Path(trained["checkpoint"])
        torch.set_num_threads(threads)
    else:
        checkpoint = Path(model)
        trained = {"checkpoint": str(checkpoint), "given": True}

    def loaded(rt: str) -> Any:
        cfg = detector_config(workdir, train_images=out_dir / "images", pool=out_dir / "images",
                              image_size=image_size, train_size=train_size, epochs=train_epochs, conf=conf, iou=iou,
                              device=dev.type, runtime=rt, model_yaml=model_yaml)
        m = registry.load(checkpoint, cfg=cfg, device=str(dev))
        if m.task != "detect":
            raise ValueError(f"{checkpoint}: a {m.task!r} model; bench-infer measures a detector")
        return m

    detector = loaded(runtime)
    if model is not None:  # the checkpoint's own settings apply to every method
        image_size, conf, iou = int(detector.image_size), float(detector.conf), float(detector.iou)
    trained["model_version"] = detector.model_version

    methods: dict[str, Method] = {"engine": engine_method(detector, items, batch_size=batch_size, workers=workers)}
    if runtime == "onnx":
        methods["engine_torch"] = engine_method(loaded("torch"), items, batch_size=batch_size, workers=workers)
    methods |= ultralytics_baselines(checkpoint, items, image_size=image_size, conf=conf, iou=iou,
                                     batch_size=batch_size, device=dev, runtime=runtime)
    torch.set_num_threads(threads)

    # Rounds interleave the methods (best of ``repeats`` per method), so that a load change
    # on a shared machine does not favour whichever method ran first.
    results: dict[str, Any] = {}
    for _round in range(repeats):
        for name, fn in methods.items():
            r = _timed(fn, dev)
            if name not in results or r["seconds"] < results[name]["seconds"]:
                results[name] = {**r, "peak_rss_mib": max(r["peak_rss_mib"], results.get(name, r)["peak_rss_mib"])}
    base = max(r["images_per_s"] for name, r in results.items() if name.startswith("ultralytics"))
    for name in results:
        results[name]["vs_ultralytics"] = round(results[name]["images_per_s"] / base, 3) if base else None

    import ultralytics as ul_mod

    report: dict[str, Any] = {
        "settings": dict(n_images=n_images, image_size=image_size, scene_size=scene_size, batch_size=batch_size,
                         device=str(dev), runtime=runtime, workers=default_workers() if workers is None else workers,
                         model_yaml=model_yaml, repeats=repeats, jpeg=jpeg, conf=conf, iou=iou,
                         torch_threads=torch.get_num_threads()),
        "model": trained,
        "truth_boxes_per_image": round(sum(truth) / max(len(truth), 1), 3),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "versions": {"torch": torch.__version__, "ultralytics": ul_mod.__version__,
                     "onnxruntime": _version("onnxruntime"), "python": platform.python_version()},
        "results": results,
    }
    tmp = out_dir / ".bench-infer.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out_dir / "bench-infer.json")
    print(format_table(report))
    return report


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def format_table(report: dict[str, Any]) -> str:
    """The results as a fixed-width text table (boxes/img: boxes kept per image; ``-`` for the
    model alone, which runs no NMS)."""
    s = report["settings"]
    m = report.get("model", {})
    trained = (f"yolo trained {m['epochs']} epochs on {m['train_images']} scenes of {m['train_size']} px"
               if "epochs" in m else f"model {m.get('checkpoint')}")
    lines = [f"bench-infer: {s['n_images']} images, imgsz {s['image_size']}, batch {s['batch_size']}, "
             f"{report['device_name']} ({s['device']}, engine runtime {s.get('runtime', 'torch')}), "
             f"workers {s['workers']}, threads {s['torch_threads']}; x ultra = vs the faster Ultralytics setting",
             f"{trained}; conf {s['conf']}, iou {s['iou']}; true objects per image "
             f"{report.get('truth_boxes_per_image', float('nan')):.2f}",
             f"{'method':<18}{'img/s':>9}{'x ultra':>9}{'seconds':>9}{'boxes/img':>11}{'peak RSS MiB':>14}"
             f"{'peak CUDA MiB':>15}"]
    for name, r in report["results"].items():
        bpi = f"{r['boxes_per_image']:.2f}" if "boxes_per_image" in r else "-"
        lines.append(f"{name:<18}{r['images_per_s']:>9.1f}{(r['vs_ultralytics'] or 0):>9.2f}{r['seconds']:>9.2f}"
                     f"{bpi:>11}{r['peak_rss_mib']:>14.0f}{r.get('peak_cuda_mib', float('nan')):>15.0f}")
    return "\n".join(lines)
