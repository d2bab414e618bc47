"""Inference throughput benchmark: our engine vs Ultralytics ``predict`` vs a naive loop vs
the model alone, on real JPEG files (Fashion-MNIST items composited on a canvas).

``run_bench_infer(out_dir)`` writes ``out_dir/bench-infer.json`` and returns the same dict;
``pseudolabel bench-infer`` (CLI) calls it. Every method runs the same untrained yolo11n
(nc=10, built from YAML: nothing is downloaded) with the same ``imgsz``, ``conf``, ``iou``:

- ``engine``: ``YoloModel.predict`` (pseudolabel.engine: decoding workers, letterbox on the
  device, fused network, fp16 autocast on CUDA, NMS on the device, full per-box class
  vectors + embeddings) on the ``runtime`` chosen (``auto``: ONNX Runtime on a CPU, PyTorch
  on CUDA; see pseudolabel.runtime); when that is ONNX Runtime, ``engine_torch`` is the same
  engine on PyTorch;
- ``ultralytics``: ``YOLO.predict(source=paths, batch=batch_size, stream=True)`` on a copy of
  the same network (``half=True`` on CUDA), results consumed; ``ultralytics_b1``: the same
  with ``batch=1`` (on a CPU its fastest setting). ``x ultra`` divides by the **faster** of
  the two, so the engine is compared with Ultralytics at its best;
- ``naive``: one image at a time: PIL decode, Ultralytics' cv2 ``LetterBox``, forward of the
  plain (unfused) network, NMS;
- ``model_alone``: forward of the engine's network, on the engine's runtime, on pre-decoded,
  pre-letterboxed batches already on the device: the ceiling for any pipeline around this
  network (``model_alone_torch``: the same on PyTorch, when the engine runs ONNX Runtime).

Images/s = images / wall seconds (best of ``repeats`` rounds; each round runs every method
once, in turn; one untimed warm-up batch first).
Peak RSS (this process + its children, sampled every 10 ms) and peak CUDA memory per method.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pseudolabel.data.images import load_rgb, sha256_file
from pseudolabel.types import Item


def make_scenes(root: Path, n: int, *, scene_size: int = 640, seed: int = 0, jpeg: bool = True) -> list[Item]:
    """``n`` RGB scenes of ``scene_size`` pixels: 2-6 Fashion-MNIST items, each scaled 2-6x,
    pasted on a noisy grey background; written as JPEG (quality 90) or PNG."""
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


def _timed(fn: Callable[[], int], device: torch.device, repeats: int) -> dict[str, Any]:
    best = float("inf")
    n = 0
    peak_rss = 0.0
    peak_cuda = 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with _PeakMemory() as mem:
            t0 = time.perf_counter()
            n = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
        peak_rss = max(peak_rss, mem.peak_mib)
        if device.type == "cuda":
            peak_cuda = max(peak_cuda, torch.cuda.max_memory_allocated(device) / 2**20)
    out: dict[str, Any] = {"images": n, "seconds": round(best, 4), "images_per_s": round(n / best, 2),
                           "peak_rss_mib": round(peak_rss, 1)}
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(peak_cuda, 1)
    return out


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
    conf: float = 0.25,
    iou: float = 0.7,
    runtime: str = "auto",
) -> dict[str, Any]:
    """Time the methods (see the module docstring) on ``n_images`` scenes; write
    ``out_dir/bench-infer.json``; print a table; return the dict written. ``batch_size``: for
    every method (``None``: the engine's automatic choice for the device and image size)."""
    from pseudolabel.engine import default_batch_size, default_workers
    from pseudolabel.models.base import resolve_device
    from pseudolabel.models.ultralytics_yolo import YoloModel
    from pseudolabel.runtime import resolve_runtime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    runtime = resolve_runtime(runtime, dev)
    batch_size = default_batch_size(dev, image_size) if batch_size is None else batch_size
    threads = torch.get_num_threads()  # Ultralytics' device selection resets it: restored below
    workers = default_workers() if workers is None else workers
    items = make_scenes(out_dir / "images", n_images, scene_size=scene_size, jpeg=jpeg)
    paths = [str(i.path) for i in items]
    torch.manual_seed(0)
    model = YoloModel.from_yaml([f"c{k}" for k in range(10)], task="detect", model_yaml=model_yaml,
                                image_size=image_size, device=str(dev), conf=conf, iou=iou,
                                workdir=out_dir / "work", runtime=runtime)
    ul = model._ultralytics()
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import nms

    results: dict[str, Any] = {}
    boxes_seen: dict[str, int] = {}

    # (a) our engine (and, when it runs ONNX Runtime, the same engine on PyTorch)
    def engine_on(m: YoloModel, name: str) -> Callable[[], int]:
        def run() -> int:
            n = 0
            nb = 0
            for pred in m.predict(items, batch_size=batch_size, workers=workers):
                n += 1
                nb += len(pred.boxes)
            boxes_seen[name] = nb
            return n

        list(m.predict(items[:batch_size], batch_size=batch_size, workers=0))  # warm-up (exports for ONNX)
        return run

    methods: dict[str, Callable[[], int]] = {"engine": engine_on(model, "engine")}
    if runtime == "onnx":
        on_torch = copy.copy(model)
        on_torch.runtime = "torch"
        methods["engine_torch"] = engine_on(on_torch, "engine_torch")

    # (b) Ultralytics predict on a copy of the same network (it fuses its copy in place)
    yolo = ul.YOLO(model._yaml_name(), task="detect")
    yolo.model = copy.deepcopy(model.net_)
    yolo.model.names = dict(enumerate(model.classes_))
    ul_args = dict(imgsz=image_size, conf=conf, iou=iou, batch=batch_size, verbose=False, stream=True,
                   device="cpu" if dev.type == "cpu" else str(dev.index or 0))
    if dev.type == "cuda":
        ul_args["half"] = True

    def ultralytics_at(batch: int, name: str) -> Callable[[], int]:
        args = {**ul_args, "batch": batch}

        def run() -> int:
            n = 0
            nb = 0
            for res in yolo.predict(source=paths, **args):
                n += 1
                nb += len(res.boxes)
            boxes_seen[name] = nb
            return n

        return run

    for _ in yolo.predict(source=paths[:batch_size], **ul_args):  # warm-up (builds the predictor)
        pass
    torch.set_num_threads(threads)
    methods["ultralytics"] = ultralytics_at(batch_size, "ultralytics")
    if batch_size != 1:
        methods["ultralytics_b1"] = ultralytics_at(1, "ultralytics_b1")

    # (c) naive per-image loop on the plain network
    lb = LetterBox((image_size, image_size), auto=False, stride=32)
    net = model.net_

    def naive() -> int:
        nb = 0
        for path in paths:
            arr = lb(image=np.asarray(load_rgb(path)))
            x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(dev).float() / 255.0
            with torch.inference_mode():
                out = net(x)
            head = out[0] if isinstance(out, (tuple, list)) else out
            kept = nms.non_max_suppression(head, conf, iou, max_det=300, nc=10)
            nb += sum(len(k.cpu()) for k in kept)
        boxes_seen["naive"] = nb
        return len(paths)

    methods["naive"] = naive

    # (d) the model alone on pre-letterboxed batches already on the device
    from pseudolabel.engine import letterbox

    fast = model._inference_net()
    batches = []
    for start in range(0, len(items), batch_size):
        imgs = [torch.from_numpy(np.array(load_rgb(p))).permute(2, 0, 1).to(dev) for p in paths[start : start + batch_size]]
        batches.append(letterbox(imgs, image_size, channels_last=runtime == "torch")[0])

    def model_alone_torch() -> int:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            for x in batches:
                fast(x.contiguous(memory_format=torch.channels_last))
        return len(paths)

    def model_alone_onnx() -> int:
        fwd = model._onnx_forward()
        for x in batches:
            fwd(x)
        return len(paths)

    alone = {"model_alone": model_alone_onnx if runtime == "onnx" else model_alone_torch}
    if runtime == "onnx":
        alone["model_alone_torch"] = model_alone_torch
    for name, fn in alone.items():
        fn()  # warm-up
        methods[name] = fn
    # Rounds interleave the methods (best of ``repeats`` per method), so that a load change
    # on a shared machine does not favour whichever method ran first.
    for _round in range(repeats):
        for name, fn in methods.items():
            r = _timed(fn, dev, 1)
            if name not in results or r["seconds"] < results[name]["seconds"]:
                results[name] = {**r, "peak_rss_mib": max(r["peak_rss_mib"], results.get(name, r)["peak_rss_mib"])}
    del batches

    for name, n in boxes_seen.items():
        results[name]["boxes"] = n
    base = max(r["images_per_s"] for name, r in results.items() if name.startswith("ultralytics"))
    for name in results:
        results[name]["vs_ultralytics"] = round(results[name]["images_per_s"] / base, 3) if base else None

    import ultralytics as ul_mod

    report: dict[str, Any] = {
        "settings": dict(n_images=n_images, image_size=image_size, scene_size=scene_size, batch_size=batch_size,
                         device=str(dev), runtime=runtime, workers=workers, model_yaml=model_yaml, repeats=repeats, jpeg=jpeg,
                         conf=conf, iou=iou, torch_threads=torch.get_num_threads()),
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
    """The results as a fixed-width text table."""
    s = report["settings"]
    lines = [f"bench-infer: {s['n_images']} images, imgsz {s['image_size']}, batch {s['batch_size']}, "
             f"{report['device_name']} ({s['device']}, engine runtime {s.get('runtime', 'torch')}), "
             f"workers {s['workers']}, threads {s['torch_threads']}; x ultra = vs the faster Ultralytics setting",
             f"{'method':<18}{'img/s':>9}{'x ultra':>9}{'seconds':>9}{'peak RSS MiB':>14}{'peak CUDA MiB':>15}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<18}{r['images_per_s']:>9.1f}{(r['vs_ultralytics'] or 0):>9.2f}{r['seconds']:>9.2f}"
                     f"{r['peak_rss_mib']:>14.0f}{r.get('peak_cuda_mib', float('nan')):>15.0f}")
    return "\n".join(lines)
