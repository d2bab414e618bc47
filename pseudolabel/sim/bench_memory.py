"""Memory of pseudo-labelling at pool scale: is resident memory flat from 10^4 to 10^5 images?

``run_bench_memory(out_dir)`` writes ``out_dir/bench-memory.json``, prints a table and returns
the same dict; ``pseudolabel bench-memory`` (CLI) calls it.

What runs is the real single-machine path, :func:`pseudolabel.inference.pseudo_label`, with an
untrained yolo11n detector built from YAML (nothing is downloaded), on real, distinct JPEG
files:

- the pool: ``base`` Fashion-MNIST scenes (:func:`pseudolabel.sim.bench_infer.make_scenes`) copied into
  ``max(sizes)`` files, each with its own JPEG comment (COM) segment, so every file has its own
  bytes and thus its own content-hash id while the pixels stay those of a real scene. The pool
  and its manifest (id, path) are written once and reused: a size ``n`` run takes the first
  ``n`` files;
- each size runs in a fresh Python process (peak memory is that size's, not left over from the
  previous one); a thread there samples the resident memory (RSS) of the process and its
  children (the decoding workers) every ``interval`` seconds, with the number of predictions
  made so far (counted by a thin wrapper around the model's ``predict``);
- per size: peak RSS (sampled, and the kernel's own high-water mark of the main process), RSS
  at 10 / 50 / 90 % of the items, the slope of RSS against items over the second half of the
  run (MiB per 10k items, least squares), images/s, the shards written and their total rows
  (checked == n); the same peak and slope for the main process alone and for the PSS;
- the item list is held in memory by design (``pseudo_label`` takes a sequence); its Python
  heap size is measured (``tracemalloc``, with each path's cached string form: see
  :func:`measure_size`) and reported as ``items_mib``, so that "flat" is a claim about the
  streaming part: decoding, inference and shard writing.

RSS sums the processes, so the pages a forked decoding worker shares with its parent (the
libraries, the model, the item list) count twice; PSS (proportional set size, from
``/proc/<pid>/smaps_rollup``) splits each shared page between the processes that map it, so it
sums to the memory actually used (it also splits the library pages that other Python processes
on the machine map: it moves with what else runs). pseudo_label makes one ``predict`` call per shard, hence one
decoding worker per shard, forked from the main process as it is then.

Why this module is over 400 lines: one benchmark: building a distinct-file pool, running the
engine in a child process per size, sampling its memory and reporting.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.types import Item

POOL_FORMAT = 1
_MANIFEST = "manifest.tsv"
_POOL_INFO = "pool.json"


# --------------------------------------------------------------------------------------
# the pool of distinct JPEG files


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """``jpeg`` with a COM segment holding ``text`` inserted after the SOI marker and any APPn
    segments (JFIF / EXIF stay first, as the standards want). Pixels are unchanged."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError(f"not a JPEG stream: starts with {jpeg[:2]!r}, expected the SOI marker b'\\xff\\xd8'")
    if len(text) > 65_533:
        raise ValueError(f"a JPEG comment holds at most 65533 bytes, got {len(text)}")
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and 0xE0 <= jpeg[pos + 1] <= 0xEF:
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    return jpeg[:pos] + segment + jpeg[pos:]


def make_pool(root: Path, n: int, *, scene_size: int = 96, base: int = 500) -> Path:
    """Write (or reuse) a pool of ``n`` distinct JPEG files under ``root``: ``base`` scenes,
    file ``k`` = scene ``k % base`` with the comment ``pool-k``. Returns the manifest path
    (lines ``sha256<TAB>path relative to root``, in file order). A pool already there with
    the same ``scene_size`` and ``base`` and at least ``n`` files is reused as it is."""
    from pseudolabel.sim.bench_infer import make_scenes

    for name, value in (("n", n), ("scene_size", scene_size), ("base", base)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_pool: {name} must be an integer >= 1, got {value!r}")
    root = Path(root)
    info_path, manifest = root / _POOL_INFO, root / _MANIFEST
    want = {"format": POOL_FORMAT, "scene_size": scene_size, "base": base}
    if info_path.is_file() and manifest.is_file():
        info = json.loads(info_path.read_text())
        if {k: info.get(k) for k in want} == want and int(info.get("n", 0)) >= n:
            return manifest
    info_path.unlink(missing_ok=True)  # the pool is incomplete until pool.json is written again
    scenes = make_scenes(root / "base", base, scene_size=scene_size)
    blobs = [Path(s.path).read_bytes() for s in scenes]
    lines = []
    total = 0
    for k in range(n):
        rel = Path(f"{k // 1000:04d}") / f"img_{k:07d}.jpg"
        data = with_comment(blobs[k % base], f"pool-{k}".encode())
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}\t{rel.as_posix()}\n")
    manifest.write_text("".join(lines))
    info_path.write_text(json.dumps({**want, "n": n, "bytes": total}))
    return manifest


def read_items(manifest: Path, n: int, *, size: int) -> list[Item]:
    """The first ``n`` items of a pool manifest (``size`` x ``size`` pixels each)."""
    root = Path(manifest).parent
    items: list[Item] = []
    with open(manifest) as f:
        for line in f:
            if len(items) == n:
                break
            digest, rel = line.rstrip("\n").split("\t")
            items.append(Item(digest, root / rel, size, size))
    if len(items) < n:
        raise ValueError(f"{manifest}: holds {len(items)} files, {n} asked for")
    return items


# --------------------------------------------------------------------------------------
# figures from the samples (pure)


def rss_slope(done: Sequence[float], rss_mib: Sequence[float], *, per: int = 10_000) -> float:
    """Least-squares slope of RSS (MiB) against items processed, in MiB per ``per`` items.
    Needs at least two distinct item counts; NaN otherwise."""
    x = np.asarray(done, dtype=np.float64)
    y = np.asarray(rss_mib, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"rss_slope: done and rss_mib must be 1-D of one length, got {x.shape} and {y.shape}")
    if len(np.unique(x)) < 2:
        return float("nan")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum() * per)


def rss_at(done: Sequence[float], rss_mib: Sequence[float], count: float, *, window: float = 0.0) -> float:
    """Highest RSS among the samples taken with ``count - window`` to ``count + window`` items
    done; where there is none, the first sample taken once ``count`` items were done (the last
    sample if never). The window keeps a sample taken between two shards (old decoding worker
    gone, next one not yet started) from standing for that stage of the run."""
    x = np.asarray(done, dtype=np.float64)
    y = np.asarray(rss_mib, dtype=np.float64)
    if len(x) == 0 or x.shape != y.shape:
        raise ValueError(f"rss_at: needs samples, done and rss_mib of one length; got {x.shape} and {y.shape}")
    near = np.abs(x - count) <= window
    if near.any():
        return float(y[near].max())
    hit = np.flatnonzero(x >= count)
    return float(y[int(hit[0]) if len(hit) else len(x) - 1])


def summarise(samples: Sequence[tuple[float, int, float, float, float]], n: int) -> dict[str, float]:
    """Figures of one run of ``n`` items from its ``(seconds, items done, main process RSS MiB,
    workers' RSS MiB, PSS MiB of all)`` samples, taken while ``pseudo_label`` ran: peak RSS
    (main + workers), RSS at 10/50/90 % of the items (highest within +-1 % of ``n``), the slope
    of RSS against items over the second half (samples with items done >= n/2); the peak and
    slope of the main process alone, and of the PSS.

    When decoding workers ran, the slopes use only the samples taken while one was alive: a
    sample between two shards, or after the last one (worker gone, shard being written) is
    not the same kind of measurement, and at the end of a run it would weigh heavily on the
    least-squares slope."""
    if not samples:
        raise ValueError("summarise: no samples")
    done = [s[1] for s in samples]
    main = [s[2] for s in samples]
    total = [s[2] + s[3] for s in samples]
    pss = [s[4] for s in samples]
    had_workers = any(s[3] > 0 for s in samples)
    half = [k for k, d in enumerate(done) if d >= n / 2 and (samples[k][3] > 0 or not had_workers)]

    def slope(rss: list[float]) -> float:
        return round(rss_slope([done[k] for k in half], [rss[k] for k in half]), 3) if half else float("nan")

    return {
        "peak_rss_mib": round(max(total), 1),
        **{f"rss_at_{p}pct_mib": round(rss_at(done, total, n * p / 100, window=n / 100), 1) for p in (10, 50, 90)},
        "slope_mib_per_10k": slope(total),
        "main_peak_rss_mib": round(max(main), 1),
        "main_slope_mib_per_10k": slope(main),
        "peak_pss_mib": round(max(pss), 1),
        "pss_slope_mib_per_10k": slope(pss),
    }


# --------------------------------------------------------------------------------------
# one size, in its own process


def _pss_mib(pid: int) -> float:
    """Proportional set size of process ``pid`` (MiB): its private pages plus its share of the
    pages it shares (a forked worker's copy-on-write pages count half to each process)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024


class _Sampler:
    """Samples ``(seconds, items done, RSS MiB of this process, RSS MiB of its children, PSS
    MiB of all)`` every ``interval`` seconds in a thread while the block runs, and on entry and
    exit. Linux only (PSS from ``/proc/<pid>/smaps_rollup``)."""

    def __init__(self, counter: list[int], interval: float) -> None:
        import psutil

        self._proc = psutil.Process()
        self._gone = (OSError, psutil.Error)  # what reading a worker that just exited raises
        self._counter = counter
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[tuple[float, int, float, float, float]] = []

    def rss(self) -> tuple[float, float, float]:
        """RSS (MiB) of this process, of its children together, and the PSS (MiB) of all.
        Children are listed first: a worker forked after this process's PSS was read would
        otherwise count its share of pages this process was already counted for."""
        kids = self._proc.children(recursive=True)
        children = 0.0
        pss = _pss_mib(self._proc.pid)
        for child in kids:
            try:
                child_pss, child_rss = _pss_mib(child.pid), child.memory_info().rss / 2**20
            except self._gone:  # a worker that just exited
                continue
            pss += child_pss
            children += child_rss
        return self._proc.memory_info().rss / 2**20, children, pss

    def _take(self) -> None:
        self.samples.append((time.monotonic() - self._t0, self._counter[0], *self.rss()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._take()

    def __enter__(self) -> _Sampler:
        self._t0 = time.monotonic()
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()  # the last shard's write can end between two ticks


class _CountingModel:
    """``model`` with a ``predict`` that counts the predictions it yields (for the sampler);
    everything else is the model's own."""

    def __init__(self, model: Any, counter: list[int]) -> None:
        self._model = model
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, items: Iterable[Item], **kwargs: Any) -> Iterator[Any]:
        for pred in self._model.predict(items, **kwargs):
            self._counter[0] += 1
            yield pred


def measure_size(spec: dict[str, Any]) -> dict[str, Any]:
    """One size, in this process: build the model and the items, pseudo-label them (the model
    wrapped to count its predictions) while sampling memory; return the figures (see the module
    docstring). ``spec``: ``manifest, n,
    out_dir, image_size, scene_size, batch_size, shard_size, threads, interval``."""
    import torch

    from pseudolabel.engine import default_workers
    from pseudolabel.inference import pseudo_label
    from pseudolabel.models.ultralytics_yolo import YoloModel

    n = int(spec["n"])
    out_dir = Path(spec["out_dir"])
    torch.manual_seed(0)
    model = YoloModel.from_yaml([f"c{k}" for k in range(10)], task="detect", model_yaml="yolo11n.yaml",
                                image_size=int(spec["image_size"]), device="cpu", conf=0.25,
                                workdir=out_dir / "work")
    torch.set_num_threads(int(spec["threads"]))  # after Ultralytics' set-up, which may change it
    tracemalloc.start()
    items = read_items(Path(spec["manifest"]), n, size=int(spec["scene_size"]))
    for item in items:
        # pathlib caches a path's string form on its first str(), which the decoding stream
        # makes for each item: ~90 B per item, kept with the item list; counted here with it
        str(item.path)
    items_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    counter = [0]
    with _Sampler(counter, float(spec["interval"])) as sampler:
        result = pseudo_label(_CountingModel(model, counter), items, out_dir / "predictions",
                              batch_size=int(spec["batch_size"]), shard_size=int(spec["shard_size"]),
                              progress=False)
    if counter[0] != n:
        raise RuntimeError(f"the model made {counter[0]} predictions for {n} items")
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    workers_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "n": n,
        **summarise(sampler.samples, n),
        "rss_start_mib": round(sum(sampler.samples[0][2:4]), 1),
        "rss_after_mib": round(sum(sampler.samples[-1][2:4]), 1),
        "main_maxrss_mib": round(kib / 1024, 1),
        "worker_maxrss_mib": round(workers_kib / 1024, 1),
        "items_mib": round(items_bytes / 2**20, 2),
        "items_bytes_each": round(items_bytes / n, 1),
        "seconds": round(result.seconds, 2),
        "images_per_s": round(n / result.seconds, 2),
        "shards": len(result.shards),
        "n_samples": len(sampler.samples),
        "workers": default_workers(),
        "torch_threads": torch.get_num_threads(),
        "samples": [[round(t, 2), d, round(m, 1), round(w, 1), round(p, 1)] for t, d, m, w, p in sampler.samples],
    }


def _run_child(spec: dict[str, Any], spec_path: Path, result_path: Path) -> dict[str, Any]:
    """``measure_size(spec)`` in a fresh interpreter (``python -m pseudolabel.sim.bench_memory``)."""
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.run([sys.executable, "-m", "pseudolabel.sim.bench_memory", str(spec_path), str(result_path)], env=env)
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"the n={spec['n']} run failed (exit status {proc.returncode}); its spec is {spec_path}")
    return dict(json.loads(result_path.read_text()))


def _check_shards(pred_dir: Path, n: int) -> dict[str, int]:
    """Rows, distinct ids and images with a box over the shards of ``pred_dir``; raises when
    the rows are not ``n`` distinct items."""
    import pyarrow.parquet as pq

    from pseudolabel.inference import shard_paths

    ids: set[str] = set()
    rows = with_box = 0
    for shard in shard_paths(pred_dir):
        table = pq.read_table(shard, columns=["item_id", "label"])
        rows += table.num_rows
        ids.update(table.column("item_id").to_pylist())
        with_box += table.num_rows - table.column("label").null_count
    if rows != n or len(ids) != n:
        raise RuntimeError(f"{pred_dir}: {rows} rows, {len(ids)} distinct ids; expected {n} of each")
    return {"rows": rows, "images_with_boxes": with_box}


# --------------------------------------------------------------------------------------
# the benchmark


def run_bench_memory(
    out_dir: Path,
    *,
    sizes: Sequence[int] = (10_000, 100_000),
    image_size: int = 64,
    scene_size: int = 96,
    batch_size: int = 16,
    shard_size: int = 10_000,
    threads: int = 1,
    base: int = 500,
    interval: float = 0.2,
    pool_dir: Path | None = None,
) -> dict[str, Any]:
    """Pseudo-label the first ``n`` files of one pool for each ``n`` in ``sizes`` (increasing),
    each in a fresh process; write ``out_dir/bench-memory.json`` (with every RSS sample) and
    print a table; return the dict written. ``pool_dir`` (default ``out_dir/pool``) is written
    once and reused while its ``scene_size`` and ``base`` match."""
    sizes = sorted(set(sizes))
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be integers >= 1, got {sizes!r}")
    for name, value in (("image_size", image_size), ("scene_size", scene_size), ("batch_size", batch_size),
                        ("shard_size", shard_size), ("threads", threads), ("base", base)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool_dir = out_dir / "pool" if pool_dir is None else Path(pool_dir)
    t0 = time.monotonic()
    manifest = make_pool(pool_dir, max(sizes), scene_size=scene_size, base=base)
    pool_seconds = time.monotonic() - t0
    results = []
    for n in sizes:
        run_dir = out_dir / f"n{n}"
        shutil.rmtree(run_dir / "predictions", ignore_errors=True)  # a fresh run, not a resume
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = {"manifest": str(manifest), "n": n, "out_dir": str(run_dir), "image_size": image_size,
                "scene_size": scene_size, "batch_size": batch_size, "shard_size": shard_size,
                "threads": threads, "interval": interval}
        r = _run_child(spec, run_dir / "spec.json", run_dir / "result.json")
        r |= _check_shards(run_dir / "predictions", n)
        results.append(r)
        print(format_row(r), flush=True)

    report: dict[str, Any] = {
        "settings": dict(sizes=sizes, image_size=image_size, scene_size=scene_size, batch_size=batch_size,
                         shard_size=shard_size, threads=threads, base=base, interval=interval,
                         model_yaml="yolo11n.yaml", device="cpu", pool=str(pool_dir)),
        "pool_seconds": round(pool_seconds, 1),
        "pool_bytes": int(json.loads((pool_dir / _POOL_INFO).read_text())["bytes"]),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # from the package metadata: importing ultralytics here (not through YoloModel, which
        # switches its network calls off first) would probe the network
        "versions": {"torch": version("torch"), "ultralytics": version("ultralytics"),
                     "python": platform.python_version()},
        "results": results,
    }
    if len(results) > 1:
        first, last = results[0], results[-1]
        report["peak_growth_mib"] = round(last["peak_rss_mib"] - first["peak_rss_mib"], 1)
        report["pss_growth_mib"] = round(last["peak_pss_mib"] - first["peak_pss_mib"], 1)
        report["items_growth_mib"] = round(last["items_mib"] - first["items_mib"], 1)
    tmp = out_dir / ".bench-memory.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out_dir / "bench-memory.json")
    print(format_table(report))
    return report


_HEADER = (f"{'n':>8}{'peak MiB':>10}{'@10%':>8}{'@50%':>8}{'@90%':>8}{'MiB/10k':>9}{'main peak':>11}"
           f"{'main/10k':>10}{'PSS peak':>10}{'PSS/10k':>9}{'items MiB':>10}{'img/s':>8}{'seconds':>9}"
           f"{'shards':>7}{'rows':>8}")


def format_row(r: dict[str, Any]) -> str:
    """One size's figures as a fixed-width line (columns of :data:`_HEADER`)."""
    return (f"{r['n']:>8}{r['peak_rss_mib']:>10.0f}{r['rss_at_10pct_mib']:>8.0f}{r['rss_at_50pct_mib']:>8.0f}"
            f"{r['rss_at_90pct_mib']:>8.0f}{r['slope_mib_per_10k']:>9.2f}{r['main_peak_rss_mib']:>11.0f}"
            f"{r['main_slope_mib_per_10k']:>10.2f}{r['peak_pss_mib']:>10.0f}{r['pss_slope_mib_per_10k']:>9.2f}"
            f"{r['items_mib']:>10.1f}{r['images_per_s']:>8.1f}"
            f"{r['seconds']:>9.1f}{r['shards']:>7}{r['rows']:>8}")


def format_table(report: dict[str, Any]) -> str:
    """The results as a fixed-width text table."""
    s = report["settings"]
    lines = [f"bench-memory: pseudo_label, untrained yolo11n, imgsz {s['image_size']}, {s['scene_size']}px JPEG "
             f"scenes, batch {s['batch_size']}, shard {s['shard_size']}, {s['threads']} thread(s), "
             f"RSS = process + workers (main = process alone; PSS = shared pages split), sampled every "
             f"{s['interval']} s; MiB/10k = slope over the second half of the items", _HEADER]
    lines += [format_row(r) for r in report["results"]]
    if "peak_growth_mib" in report:
        lines.append(f"from n={s['sizes'][0]} to n={s['sizes'][-1]}: peak RSS {report['peak_growth_mib']:+.1f} MiB, "
                     f"peak PSS {report['pss_growth_mib']:+.1f} MiB, item list {report['items_growth_mib']:+.1f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":  # the per-size child process of run_bench_memory
    _spec_path, _result_path = (Path(a) for a in sys.argv[1:3])
    _result = measure_size(json.loads(_spec_path.read_text()))
    _result_path.write_text(json.dumps(_result))
