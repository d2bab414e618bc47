"""Pseudo-labelling past one machine, on Ray Data.

The single-machine engine (:func:`pseudolabel.inference.pseudo_label`) stays the default.
This module runs the same model over the same items on a Ray cluster and writes **the same
shards** (``predictions-NNNNN.parquet`` + ``embeddings-NNNNN.npy``, through the engine's own
shard writer), so everything downstream (``load_predictions``, selection, the round) does not
know which engine produced them, and a run killed half-way resumes the same way: items
already in complete shards of the same model version are skipped, shards of another model
version are deleted.

Two entry points, one actor pool and one shard writer:

- :func:`pseudo_label_ray` takes ``Item``s (the ledger's pool): the driver builds a Ray
  Dataset of plain rows (``id``, ``path``, ``width``, ``height``) with ``ray.data.from_items``;
- :func:`pseudo_label_ray_source` takes a folder or an object-store prefix (any URI pyarrow
  resolves: ``s3://``, ``gs://``, ``hdfs://``; or a ``pyarrow.fs.FileSystem``): the driver lists
  the image files, the workers read them with ``ray.data.read_binary_files`` and the actors
  hash (item id = sha256 of the bytes, as ingest does), check and decode them; files that do
  not decode are quarantined with the reason, copies are scored once;
- ``map_batches`` runs a pool of ``num_actors`` actors (a callable class); each actor loads
  the model **once** from ``model_path`` (any checkpoint written by an adapter's ``save``),
  on the GPU when it was given ``num_gpus_per_actor > 0``, and returns per batch the
  prediction fields (probabilities, embeddings, boxes as JSON);
- the driver streams the results back **in input order** (``preserve_order``) and writes a
  shard every ``shard_size`` items, so driver memory is bounded by one shard.

Item paths, the source and ``model_path`` must be readable from every node (a shared file
system, a mounted bucket, or the object store itself); see docs/ray.md.

Network: Ray probes cloud metadata addresses (169.254.169.254, metadata.google.internal; even
with ``RAY_USAGE_STATS_ENABLED=0``), reports usage statistics, and a local node finds its own
address with a UDP connect to 8.8.8.8. :func:`ray_safe_env` / :func:`init_ray` switch all of
that off *before* Ray is imported (see docs/ray.md).

Why this module is over 400 lines: the Ray path is one unit (actor pool, shard writer hand-off,
resume, the cluster's error reporting); it must stay importable without Ray and separate from
the single-machine engine.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pseudolabel.data.boxes import boxes_and_probs_from_json, boxes_to_json
from pseudolabel.data.images import IMAGE_SUFFIXES, ImageError, sha256_bytes
from pseudolabel.data.ingest import Quarantined, reason_of, usable_size
from pseudolabel.inference import (
    InferenceResult,
    check_items,
    completed_shards,
    shard_paths,
    write_shard,
)
from pseudolabel.types import Item, Prediction
from pseudolabel.utils import atomic_write

__all__ = ["SourceResult", "init_ray", "load_model", "pseudo_label_ray", "pseudo_label_ray_source", "ray_safe_env"]

# A port nobody listens on: anything that ignores no_proxy and tries to go out through the
# proxy gets "connection refused" on loopback instead of reaching the network.
_DEAD_PROXY = "http://127.0.0.1:9"
_LOOPBACK = "127.0.0.1,localhost,::1"

def ray_safe_env(temp_dir: Path, *, local: bool = True) -> dict[str, str]:
    """Environment variables that keep a Ray node offline and inside ``temp_dir``.

    - ``RAY_USAGE_STATS_ENABLED=0`` (and the prompt off): no usage report;
    - ``RAY_AUTH_MODE=disabled``: no token set-up;
    - ``http_proxy`` / ``https_proxy`` (both spellings) -> a dead port on 127.0.0.1 and
      ``no_proxy`` = loopback: the cloud-metadata probes Ray makes through ``requests`` even
      with usage stats off (169.254.169.254, metadata.google.internal) end on loopback, while
      Ray's own loopback HTTP (runtime-env agent) goes direct;
    - ``RAY_TMPDIR``: session files under ``temp_dir``;
    - ``local=True`` (a node started here, not joining a cluster):
      ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which makes Ray use 127.0.0.1 as the node
      address. Without it Ray turns "127.0.0.1" into the machine's outward address (found by a
      UDP ``connect`` to 8.8.8.8:53) and serves GCS / raylet on that interface.

    Returned, not applied: :func:`init_ray` puts them into ``os.environ`` before importing
    Ray (worker processes inherit them from there).
    """
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": str(Path(temp_dir)),
        "RAY_DISABLE_IMPORT_WARNING": "1",
    }
    if local:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = _DEAD_PROXY
    for name in ("no_proxy", "NO_PROXY"):
        env[name] = _LOOPBACK
    return env


def init_ray(
    *,
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    temp_dir: Path,
) -> bool:
    """Start (``address=None``) or join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``)
    a Ray cluster with the switches of :func:`ray_safe_env`; no dashboard.

    A local node binds to 127.0.0.1 and keeps its session files in ``temp_dir`` (Unix socket
    paths must stay under ~100 bytes: keep ``temp_dir`` short). ``num_cpus`` / ``num_gpus``
    cap a local node and are ignored when joining a cluster. Returns ``True`` when this call
    started/joined Ray, ``False`` when Ray was already initialised in this process (nothing is
    changed then).
    """
    temp_dir = Path(temp_dir)
    temp_dir.mkdir(parents=True, exist_ok=True)
    constants = sys.modules.get("ray._private.ray_constants")
    os.environ.update(ray_safe_env(temp_dir, local=address is None))
    import ray  # after the environment: Ray reads some switches once, at import

    if ray.is_initialized():
        return False
    if address is None and constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        # Read at import time: a Ray imported before this call would serve the node on the
        # machine's outward address instead of 127.0.0.1.
        raise RuntimeError(
            "ray was imported before init_ray set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; call init_ray "
            "(or set the variables of ray_safe_env in the environment) before importing ray"
        )
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        # Local node: loopback only (without it Ray asks the OS for the outgoing interface).
        kwargs.update(_temp_dir=str(temp_dir.resolve()), _node_ip_address="127.0.0.1")
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        kwargs["address"] = address
    ray.init(**kwargs)
    return True


def load_model(model_path: Path, *, device: str = "auto") -> Any:
    """Load any adapter checkpoint, choosing the adapter from the checkpoint's ``format``
    (:func:`pseudolabel.models.registry.load`). Raises ValueError naming the file when it is
    not one of ours."""
    from pseudolabel.models.registry import load

    return load(Path(model_path), device=device)


# --- shards: the engine's own writer and resume rule, plus a record of source files ---------

_SOURCES_RE = re.compile(r"^sources-(\d{5,})\.parquet$")


@dataclass(frozen=True)
class _File:
    """One input row as the driver expects it back: ``path`` (an item's path, or a file's path
    inside the source filesystem), the item id when known beforehand (items), and the listing's
    ``size`` / ``mtime_ns`` (source files; ``mtime_ns`` is None where the store gives none)."""

    path: str
    item_id: str | None = None
    size: int | None = None
    mtime_ns: int | None = None


def _write_sources(out_dir: Path, index: int, files: Sequence[tuple[_File, str]]) -> None:
    """Record ``(file, item_id)`` pairs read for shard ``index`` as ``sources-NNNNN.parquet``
    (columns ``path, size, mtime_ns, item_id``), atomically. Written before the shard itself,
    so a complete shard always has its complete record."""
    table = pa.table({
        "path": pa.array([f.path for f, _ in files], type=pa.string()),
        "size": pa.array([f.size for f, _ in files], type=pa.int64()),
        "mtime_ns": pa.array([f.mtime_ns for f, _ in files], type=pa.int64()),
        "item_id": pa.array([i for _, i in files], type=pa.string()),
    })
    atomic_write(out_dir / f"sources-{index:05d}.parquet", lambda tmp: pq.write_table(table, tmp))


def _known_sources(out_dir: Path, done: set[str]) -> dict[str, tuple[int | None, int | None]]:
    """``path -> (size, mtime_ns)`` of source files already in complete shards (their item id in
    ``done``). A record whose shard is gone (deleted as stale, or a run killed between the two
    writes) is deleted with it."""
    known: dict[str, tuple[int | None, int | None]] = {}
    for record in sorted(out_dir.iterdir()):
        m = _SOURCES_RE.match(record.name)
        if not m:
            continue
        if not (out_dir / f"predictions-{m.group(1)}.parquet").is_file():
            record.unlink()
            continue
        cols = pq.read_table(record).to_pydict()
        for path, size, mtime, item_id in zip(
            cols["path"], cols["size"], cols["mtime_ns"], cols["item_id"], strict=True
        ):
            if item_id in done:
                known[path] = (size, mtime)
    return known


# --- the actor -------------------------------------------------------------------------------


def _boxes_cell(pred: Prediction) -> str:
    """The ``boxes`` cell of one actor row: the prediction's boxes with their class vectors, in
    the shards' codec (:func:`~pseudolabel.data.boxes.boxes_to_json`); ``""`` for no box."""
    if not pred.boxes:
        return ""
    return boxes_to_json(pred.boxes, probs=pred.box_probs, empty=True, compact=True)


def _batch_output(
    paths: Sequence[str], ids: Sequence[str], status: Sequence[str], reasons: Sequence[str], preds: Sequence[Prediction]
) -> dict[str, Any]:
    """The actor's answer: one row per input row; ``preds`` belong to the ``"ok"`` rows, in order."""
    n = len(paths)
    by_row = dict(zip([k for k, s in enumerate(status) if s == "ok"], preds, strict=True))
    probs0 = preds[0].probs if preds else None
    emb0 = preds[0].embedding if preds else None
    c = len(probs0) if probs0 is not None and all(p.probs is not None for p in preds) else 0
    d = int(np.size(emb0)) if emb0 is not None and all(p.embedding is not None for p in preds) else 0
    probs = np.zeros((n, c), dtype=np.float32)
    emb = np.zeros((n, d), dtype=np.float32)
    for k, p in by_row.items():
        if c:
            probs[k] = np.asarray(p.probs, dtype=np.float32)
        if d:
            emb[k] = np.asarray(p.embedding, dtype=np.float32).reshape(-1)
    return {
        "path": np.array(paths, dtype=object),
        "item_id": np.array(ids, dtype=object),
        "status": np.array(status, dtype=object),
        "reason": np.array(reasons, dtype=object),
        "model_version": np.array([by_row[k].model_version if k in by_row else "" for k in range(n)], dtype=object),
        "probs": probs,
        "embedding": emb,
        "boxes": np.array([_boxes_cell(by_row[k]) if k in by_row else "" for k in range(n)], dtype=object),
    }


class _Predictor:
    """Ray Data callable class: one model per actor, loaded once in ``__init__``.

    ``__call__`` takes a numpy batch of items ``{"id", "path", "width", "height"}``
    (:func:`pseudo_label_ray`) or of files ``{"bytes", "path"}`` (``read_binary_files``,
    :func:`pseudo_label_ray_source`) and returns one row per input row, in input order:
    ``{"path", "item_id", "status", "reason", "model_version", "probs" (n, C) float32 (C = 0
    without probabilities), "embedding" (n, D) float32 (D = 0 without embeddings), "boxes" (JSON
    str, "" if none)}``. ``status`` is ``"ok"`` (predicted), ``"known"`` (a file whose content
    hash is in ``known_ids``: not decoded, not run) or ``"bad"`` (a file that does not decode;
    ``reason`` says why). Rows that are not ``"ok"`` carry zeros and no boxes.
    """

    def __init__(self, model_path: str, batch_size: int, device: str, known_ids: np.ndarray | None = None) -> None:
        import torch

        # One intra-op thread per CPU the actor was given keeps actors from fighting for cores.
        if device == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.model = load_model(Path(model_path), device=device)
        self.batch_size = batch_size
        # Sorted hex digests as bytes ("S64"): 64 bytes an id, a third of a Python set of str.
        self.known_ids = np.empty(0, dtype="S64") if known_ids is None else known_ids

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if "bytes" in batch:
            return self._files(batch)
        items = [
            Item(str(i), Path(str(p)), int(w), int(h))
            for i, p, w, h in zip(batch["id"], batch["path"], batch["width"], batch["height"], strict=True)
        ]
        n = len(items)
        return _batch_output([str(it.path) for it in items], [it.id for it in items], ["ok"] * n, [""] * n,
                             self._predict(items))

    def _predict(self, items: list[Item]) -> list[Prediction]:
        preds = list(self.model.predict(items, batch_size=self.batch_size))
        if [p.item_id for p in preds] != [it.id for it in items]:
            raise RuntimeError("model.predict did not answer every item of the batch in input order")
        return preds

    def _is_known(self, item_id: str) -> bool:
        key = item_id.encode()
        i = int(np.searchsorted(self.known_ids, key))
        return i < len(self.known_ids) and self.known_ids[i] == key

    def _files(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Hash, check and predict files given as bytes.

        The bytes are written to a node-local temporary folder and run through the adapter's
        own ``model.predict``, rather than decoded here and fed to the network: ``predict`` is
        the one entry point every adapter has (the torchvision classifier has no decoded-image
        API; YoloModel's take different private inputs per task), and running it on the very
        same bytes gives the single-machine engine's preprocessing, hence its outputs, by
        construction. The cost is one extra decode per new file (the check below, which names
        the file in the store and gives the Item its size) and a local write, small next to
        reading from an object store.
        """
        paths = [str(p) for p in batch["path"]]
        blobs = [bytes(b) for b in batch["bytes"]]
        ids = [sha256_bytes(b) for b in blobs]  # = sha256_file of the same file
        status, reasons = ["ok"] * len(paths), [""] * len(paths)
        with tempfile.TemporaryDirectory(prefix="plray-") as tmp:
            todo: list[Item] = []
            for k, (path, data, item_id) in enumerate(zip(paths, blobs, ids, strict=True)):
                if self._is_known(item_id):
                    status[k] = "known"
                    continue
                try:
                    # As ingest checks a file, without a max_pixels of its own (Pillow's limit).
                    width, height = usable_size(data, name=path, max_pixels=None)
                except ImageError as e:
                    status[k], reasons[k] = "bad", reason_of(str(e), path)
                    continue
                local = Path(tmp) / f"{k}{PurePosixPath(path).suffix.lower()}"
                local.write_bytes(data)
                todo.append(Item(item_id, local, width, height))
            preds = self._predict(todo) if todo else []
        return _batch_output(paths, ids, status, reasons, preds)


def _predictions(batch: dict[str, np.ndarray]) -> Iterator[Prediction | None]:
    """The actor's rows back as predictions; ``None`` for a row that is not ``"ok"``."""
    for j, item_id in enumerate(batch["item_id"]):
        if batch["status"][j] != "ok":
            yield None
            continue
        # Row by row: a block mixing batches of different widths (a batch with no "ok" row has
        # C = D = 0) comes back as an object column of 1-d arrays instead of one 2-d array.
        probs = np.asarray(batch["probs"][j], dtype=np.float32)
        emb = np.asarray(batch["embedding"][j], dtype=np.float32)
        boxes, box_probs = boxes_and_probs_from_json(str(batch["boxes"][j]), where=f"actor answer for {item_id}")
        yield Prediction(
            item_id=str(item_id),
            model_version=str(batch["model_version"][j]),
            probs=probs if probs.size else None,
            embedding=emb if emb.size else None,
            boxes=boxes,
            box_probs=box_probs,
        )


# --- the driver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceResult(InferenceResult):
    """What one :func:`pseudo_label_ray_source` call did.

    The fields of :class:`~pseudolabel.inference.InferenceResult`, with ``n_items`` = image
    files listed under the source, ``n_scored`` = new items written to shards by this call,
    ``n_skipped`` = files whose content is already in a shard (skipped by path before reading,
    or listed in ``duplicates``), so ``n_items = n_scored + n_skipped + len(quarantined)``; and:

    - ``quarantined``: files with an image suffix that do not decode, with the reason (as ingest
      reports them; ``path`` as the filesystem names it, e.g. ``bucket/key`` for ``s3://``).
      They are in no shard and are read again by the next call;
    - ``duplicates``: ``(path, item_id)`` of each file read by this call whose bytes equal an
      item already in a shard or scored earlier in this call (a copy, or a renamed file).
    """

    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Options:
    batch_size: int
    shard_size: int
    num_actors: int
    num_gpus: float
    num_cpus: float
    address: str | None
    temp_dir: Path | None


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _options(
    *, batch_size: int, shard_size: int, num_actors: int, num_gpus_per_actor: float, num_cpus_per_actor: float,
    address: str | None, temp_dir: Path | None,
) -> _Options:
    for name, value in (("num_gpus_per_actor", num_gpus_per_actor), ("num_cpus_per_actor", num_cpus_per_actor)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return _Options(
        batch_size=_check_int("batch_size", batch_size, 1),
        shard_size=_check_int("shard_size", shard_size, 1),
        num_actors=_check_int("num_actors", num_actors, 1),
        num_gpus=float(num_gpus_per_actor),
        num_cpus=float(num_cpus_per_actor),
        address=address,
        temp_dir=Path(temp_dir) if temp_dir else None,
    )


def _model_meta(model_path: Path) -> tuple[Path, str, list[str]]:
    """The resolved checkpoint path, its model version and classes (read on CPU by the driver,
    which needs them for the resume rule and the shard writer)."""
    model_path = Path(model_path).resolve()
    local = load_model(model_path, device="cpu")
    return model_path, str(local.model_version), list(local.classes)


def _blocks(n: int, batch_size: int) -> int:
    """Input blocks for ``n`` rows: about one batch each, at most 1000."""
    return max(1, min(n // batch_size, 1000))


def pseudo_label_ray(
    model_path: Path,
    items: Sequence[Item],
    out_dir: Path,
    *,
    batch_size: int = 64,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0.0,
    num_cpus_per_actor: float = 0.5,
    shard_size: int = 10_000,
    address: str | None = None,
    temp_dir: Path | None = None,
) -> InferenceResult:
    """Pseudo-label ``items`` with the checkpoint at ``model_path`` on Ray Data; same shards,
    same resume rule as :func:`pseudolabel.inference.pseudo_label`.

    Args:
        model_path: a checkpoint written by an adapter's ``save`` (readable on every node).
        items: the pool; ids unique (content hashes), paths readable on every node.
        out_dir: the shard directory (``predictions-NNNNN.parquet`` + ``embeddings-NNNNN.npy``).
        batch_size: rows per ``map_batches`` call and per forward pass.
        num_actors: size of the actor pool (one model copy each).
        num_gpus_per_actor: GPUs per actor (``> 0`` loads the model on ``cuda``; fractions
            pack several actors on one GPU).
        num_cpus_per_actor: CPUs reserved per actor. Keep it below the node's CPU count
            divided by ``num_actors``: on 2 CPUs, two actors at 1 CPU each starve the read
            stage until it deadlocks (measured), hence the 0.5 default.
        shard_size: items per shard written by the driver.
        address: ``None`` uses the Ray already initialised in this process, or starts a
            local one (and stops it afterwards); ``"auto"`` / ``"ray://host:10001"`` joins a
            cluster (see docs/ray.md).
        temp_dir: session folder for a local Ray started here (default: a new short folder
            under the system temp dir).

    Returns:
        :class:`~pseudolabel.inference.InferenceResult` (``n_scored`` = items run here).

    Raises:
        ValueError: bad options, duplicate item ids, a checkpoint that is not ours.
        RuntimeError: results came back out of order or from another model version.
    """
    start = time.monotonic()
    opts = _options(
        batch_size=batch_size, shard_size=shard_size, num_actors=num_actors, num_gpus_per_actor=num_gpus_per_actor,
        num_cpus_per_actor=num_cpus_per_actor, address=address, temp_dir=temp_dir,
    )
    items = check_items(items)
    model_path, version, classes = _model_meta(model_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_index = completed_shards(out_dir, version)
    todo = [it for it in items if it.id not in done]

    if todo:
        rows = [{"id": it.id, "path": str(it.path), "width": it.width, "height": it.height} for it in todo]
        _run(
            lambda data: data.from_items(rows, override_num_blocks=_blocks(len(rows), opts.batch_size)),
            [_File(str(it.path), it.id) for it in todo],
            out_dir, next_index, classes, version, model_path=model_path, opts=opts, record_sources=False,
        )

    return InferenceResult(
        out_dir=out_dir,
        model_version=version,
        n_items=len(items),
        n_scored=len(todo),
        n_skipped=len(items) - len(todo),
        shards=shard_paths(out_dir),
        seconds=time.monotonic() - start,
    )


def _open_source(source: str | Path, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path ``source`` names; see :func:`pseudo_label_ray_source`."""
    if filesystem is not None:
        if not isinstance(filesystem, pafs.FileSystem):
            raise ValueError(
                f"filesystem must be a pyarrow.fs.FileSystem, got {type(filesystem).__name__}; wrap an fsspec "
                "filesystem as pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))"
            )
        return filesystem, str(source)
    text = str(source)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(text)
    except (ValueError, NotImplementedError, OSError) as e:
        raise ValueError(
            f"source {text!r}: pyarrow cannot open this URI ({e}); give a local folder, a URI pyarrow resolves "
            "(s3://, gs://, hdfs://, file://) or a path together with filesystem="
        ) from e


def _list_source(fs: pafs.FileSystem, root: str, source: str | Path) -> list[_File]:
    """Image-suffixed files under ``root`` (recursive), sorted by path, with size and mtime."""
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        raise ValueError(f"source {str(source)!r}: no such folder or prefix ({root} on {fs.type_name})")
    if kind != pafs.FileType.Directory:
        raise ValueError(f"source {str(source)!r}: {root} is a file; give the folder or prefix that holds the images")
    files = [
        _File(info.path, None, info.size, info.mtime_ns)
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if info.type == pafs.FileType.File and PurePosixPath(info.path).suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise ValueError(
            f"source {str(source)!r}: no image files under {root} (suffixes {', '.join(sorted(IMAGE_SUFFIXES))}, "
            "any case)"
        )
    return sorted(files, key=lambda f: f.path)


def pseudo_label_ray_source(
    model_path: Path,
    source: str | Path,
    out_dir: Path,
    *,
    filesystem: pafs.FileSystem | None = None,
    batch_size: int = 64,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0.0,
    num_cpus_per_actor: float = 0.5,
    shard_size: int = 10_000,
    address: str | None = None,
    temp_dir: Path | None = None,
) -> SourceResult:
    """Pseudo-label every image file under a folder or object-store prefix on Ray Data, without
    a ledger; same shards as :func:`pseudolabel.inference.pseudo_label` over the same files.

    The driver lists ``source`` (recursive, image suffixes of any case, sorted by path); Ray
    reads the files with ``ray.data.read_binary_files`` on the workers; each actor hashes the
    bytes (item id = sha256 of the bytes, as ingest does), decodes them with
    :func:`~pseudolabel.data.images.rgb_from_bytes` (the decoder of ``load_rgb``) and predicts.

    Resume: besides each shard, ``sources-NNNNN.parquet`` records the files read for it
    (``path, size, mtime_ns, item_id``). A later call skips, without reading it, a listed file
    whose path, size and mtime match a record of a complete shard of the same model version
    (like ingest's ``known`` files, this trusts mtimes); a file read again whose content is
    already in a shard (a renamed copy) is hashed, not decoded or run, and listed in
    ``duplicates``. Copies within one call are scored once.

    Args:
        model_path: a checkpoint written by an adapter's ``save`` (readable on every node).
        source: a local folder (absolute or relative), or a URI pyarrow resolves to a
            filesystem (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``, ``file:///...``);
            with ``filesystem``, a path inside that filesystem.
        out_dir: the shard directory, as for :func:`pseudo_label_ray`.
        filesystem: a ``pyarrow.fs.FileSystem`` to read ``source`` from (e.g. an
            ``S3FileSystem`` with explicit endpoint / credentials, or
            ``PyFileSystem(FSSpecHandler(fsspec_fs))``). It is pickled to the workers.
        batch_size, num_actors, num_gpus_per_actor, num_cpus_per_actor, shard_size, address,
        temp_dir: as for :func:`pseudo_label_ray`.

    Returns:
        :class:`SourceResult`, with the quarantined files and duplicates.

    Raises:
        ValueError: bad options; a source that does not exist, is a file, holds no image
            files, or a URI pyarrow cannot open; a checkpoint that is not ours.
        RuntimeError: results came back out of order or from another model version.
    """
    start = time.monotonic()
    opts = _options(
        batch_size=batch_size, shard_size=shard_size, num_actors=num_actors, num_gpus_per_actor=num_gpus_per_actor,
        num_cpus_per_actor=num_cpus_per_actor, address=address, temp_dir=temp_dir,
    )
    fs, root = _open_source(source, filesystem)
    files = _list_source(fs, root, source)
    model_path, version, classes = _model_meta(model_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_index = completed_shards(out_dir, version)
    known = _known_sources(out_dir, done)
    todo = [f for f in files if known.get(f.path) != (f.size, f.mtime_ns)]

    tally = _Tally(next_index)
    if todo:
        paths = [f.path for f in todo]
        tally = _run(
            lambda data: data.read_binary_files(
                paths, include_paths=True, filesystem=fs, override_num_blocks=_blocks(len(paths), opts.batch_size)
            ),
            todo, out_dir, next_index, classes, version, model_path=model_path, opts=opts, record_sources=True,
            seen=done,
        )

    return SourceResult(
        out_dir=out_dir,
        model_version=version,
        n_items=len(files),
        n_scored=tally.n_written,
        n_skipped=len(files) - len(todo) + len(tally.duplicates),
        shards=shard_paths(out_dir),
        seconds=time.monotonic() - start,
        quarantined=tally.quarantined,
        duplicates=tally.duplicates,
    )


@dataclass
class _Tally:
    """What :func:`_run` did: the next free shard number, items written, files quarantined and
    files whose content was already scored."""

    next_index: int
    n_written: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)


def _run(
    make_dataset: Callable[[Any], Any], files: Sequence[_File], out_dir: Path, next_index: int, classes: list[str],
    version: str, *, model_path: Path, opts: _Options, record_sources: bool, seen: set[str] | None = None,
) -> _Tally:
    """Run the actor pool over ``make_dataset(ray.data)`` (rows in the order of ``files``) and
    write shards as results stream back, starting at shard ``next_index``.

    ``seen``: item ids already in complete shards; files with that content are not run (their
    ids go to the actors) and a copy of an item scored here is written once. With
    ``record_sources``, each shard gets its ``sources-NNNNN.parquet`` record.
    """
    import ray

    seen = set(seen or ())
    started = False
    if not ray.is_initialized():
        started = init_ray(
            address=opts.address,
            temp_dir=opts.temp_dir if opts.temp_dir else Path(tempfile.mkdtemp(prefix="plray-")),
        )
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    # Shards must hold items in input order, like the single-machine engine's.
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    tally = _Tally(next_index)
    buffer: list[Prediction] = []
    read: list[tuple[_File, str]] = []  # files read since the last shard, with their item id

    def flush() -> None:
        if record_sources:
            _write_sources(out_dir, tally.next_index, read)
        write_shard(out_dir, tally.next_index, buffer, classes)
        tally.next_index += 1
        tally.n_written += len(buffer)
        buffer.clear()
        read.clear()

    try:
        ds = make_dataset(ray.data).map_batches(
            _Predictor,
            fn_constructor_kwargs={
                "model_path": str(model_path), "batch_size": opts.batch_size,
                "device": "cuda" if opts.num_gpus > 0 else "cpu",
                "known_ids": np.array(sorted(seen), dtype="S64"),
            },
            batch_size=opts.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=opts.num_actors),
            num_cpus=opts.num_cpus,
            num_gpus=opts.num_gpus,
        )
        expected = iter(files)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for path, status, reason, item_id, pred in zip(
                batch["path"], batch["status"], batch["reason"], batch["item_id"], _predictions(batch), strict=True
            ):
                want = next(expected, None)
                if want is None or str(path) != want.path or want.item_id not in (None, str(item_id)):
                    raise RuntimeError(
                        f"Ray returned {path!r} (item {item_id!r}) where {getattr(want, 'path', None)!r} was "
                        "expected; results must come in input order"
                    )
                if status == "bad":
                    tally.quarantined.append(Quarantined(Path(want.path), str(reason)))
                    continue
                read.append((want, str(item_id)))
                if pred is None or pred.item_id in seen:
                    tally.duplicates.append((want.path, str(item_id)))
                    continue
                if pred.model_version != version:
                    raise RuntimeError(
                        f"an actor tagged {pred.item_id!r} with model_version {pred.model_version!r}, expected "
                        f"{version!r}: is {model_path} the same file on every node?"
                    )
                seen.add(pred.item_id)
                buffer.append(pred)
                if len(buffer) == opts.shard_size:
                    flush()
        if next(expected, None) is not None:
            raise RuntimeError("Ray returned fewer results than rows")
        # Files read after the last new item (copies only) get no record: the next call reads
        # them again and skips them by content hash.
        if buffer:
            flush()
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if started:
            ray.shutdown()
    return tally
