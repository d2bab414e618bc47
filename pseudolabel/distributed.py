"""Pseudo-labelling past one machine, on Ray Data.

The single-machine engine (:func:`pseudolabel.inference.pseudo_label`) stays the default.
This module runs the same model over the same items on a Ray cluster and writes **the same
shards** (``predictions-NNNNN.parquet`` + ``embeddings-NNNNN.npy``, through the engine's own
shard writer), so everything downstream (``load_predictions``, selection, the round) does not
know which engine produced them, and a run killed half-way resumes the same way: items
already in complete shards of the same model version are skipped, shards of another model
version are deleted.

How the work is split:

- the driver lists the items still to score and builds a Ray Dataset of plain rows
  (``id``, ``path``, ``width``, ``height``) with ``ray.data.from_items``;
- ``map_batches`` runs a pool of ``num_actors`` actors (a callable class); each actor loads
  the model **once** from ``model_path`` (any checkpoint written by an adapter's ``save``),
  on the GPU when it was given ``num_gpus_per_actor > 0``, and returns per batch the
  prediction fields (probabilities, embeddings, boxes as JSON);
- the driver streams the results back **in input order** (``preserve_order``) and writes a
  shard every ``shard_size`` items, so driver memory is bounded by one shard.

Image paths and ``model_path`` must be readable from every node (a shared file system or a
mounted bucket); see docs/ray.md for object-store and folder sources.

Network: Ray probes cloud metadata addresses and reports usage statistics by default.
:func:`ray_safe_env` / :func:`init_ray` switch all of that off *before* Ray is imported
(see /work/shared/FACTS.md, "Ray").
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.inference import InferenceResult, check_items, completed_shards, shard_paths, write_shard
from pseudolabel.types import Box, Item, Prediction

__all__ = ["init_ray", "load_model", "pseudo_label_ray", "ray_safe_env"]

# A port nobody listens on: anything that ignores no_proxy and tries to go out through the
# proxy gets "connection refused" on loopback instead of reaching the network.
_DEAD_PROXY = "http://127.0.0.1:9"
_LOOPBACK = "127.0.0.1,localhost,::1"

# Checkpoint "format" prefix -> adapter name in pseudolabel.models.registry.
_FORMATS = {"pseudolabel.torchvision_cls/": "torchvision", "pseudolabel.ultralytics_yolo/": "yolo"}


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
    """Load any adapter checkpoint (written by ``TorchvisionClassifier.save`` or
    ``YoloModel.save``), choosing the adapter from the checkpoint's ``format`` field.

    Raises ValueError naming the file when it is not one of ours.
    """
    import torch

    from pseudolabel.models.registry import get_adapter

    model_path = Path(model_path)
    if not model_path.is_file():
        raise ValueError(f"{model_path}: no such model checkpoint")
    try:
        obj = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{model_path}: not readable with torch.load(weights_only=True) ({e})") from e
    fmt = obj.get("format") if isinstance(obj, dict) else None
    for prefix, adapter in _FORMATS.items():
        if isinstance(fmt, str) and fmt.startswith(prefix):
            return get_adapter(adapter).load(model_path, device=device)
    raise ValueError(
        f"{model_path}: checkpoint format {fmt!r} is not one of {sorted(p + '*' for p in _FORMATS)}; "
        "save the model with its adapter's save()"
    )


# --- shards: the engine's own writer and resume rule ---------------------------------------


# --- the actor -------------------------------------------------------------------------------


def _boxes_json(pred: Prediction) -> str:
    """Boxes (pixel xyxy, label, score, pixel polygon) and their (B, C) class vectors as JSON."""
    if not pred.boxes and pred.box_probs is None:
        return ""
    return json.dumps(
        {
            "boxes": [
                [b.x1, b.y1, b.x2, b.y2, b.label, b.score, [list(p) for p in b.polygon] if b.polygon else None]
                for b in pred.boxes
            ],
            "box_probs": None if pred.box_probs is None else np.asarray(pred.box_probs, dtype=np.float32).tolist(),
            "box_probs_shape": None if pred.box_probs is None else list(np.shape(pred.box_probs)),
        }
    )


def _boxes_from_json(text: str) -> tuple[tuple[Box, ...], np.ndarray | None]:
    if not text:
        return (), None
    obj = json.loads(text)
    boxes = tuple(
        Box(x1, y1, x2, y2, label, score, tuple(tuple(p) for p in poly) if poly else None)
        for x1, y1, x2, y2, label, score, poly in obj["boxes"]
    )
    bp = obj["box_probs"]
    return boxes, None if bp is None else np.asarray(bp, dtype=np.float32).reshape(obj["box_probs_shape"])


class _Predictor:
    """Ray Data callable class: one model per actor, loaded once in ``__init__``.

    ``__call__`` takes a numpy batch ``{"id", "path", "width", "height"}`` and returns
    ``{"item_id", "model_version", "probs" (n, C) float32 (C = 0 without probabilities),
    "embedding" (n, D) float32 (D = 0 without embeddings), "boxes" (JSON str, "" if none)}``.
    """

    def __init__(self, model_path: str, batch_size: int, device: str) -> None:
        import torch

        # One intra-op thread per CPU the actor was given keeps actors from fighting for cores.
        if device == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.model = load_model(Path(model_path), device=device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        items = [
            Item(str(i), Path(str(p)), int(w), int(h))
            for i, p, w, h in zip(batch["id"], batch["path"], batch["width"], batch["height"], strict=True)
        ]
        preds = list(self.model.predict(items, batch_size=self.batch_size))
        if [p.item_id for p in preds] != [it.id for it in items]:
            raise RuntimeError("model.predict did not answer every item of the batch in input order")
        n = len(preds)
        probs = (
            np.stack([np.asarray(p.probs, dtype=np.float32) for p in preds])
            if n and all(p.probs is not None for p in preds)
            else np.zeros((n, 0), dtype=np.float32)
        )
        emb = (
            np.stack([np.asarray(p.embedding, dtype=np.float32).reshape(-1) for p in preds])
            if n and all(p.embedding is not None for p in preds)
            else np.zeros((n, 0), dtype=np.float32)
        )
        return {
            "item_id": np.array([p.item_id for p in preds], dtype=object),
            "model_version": np.array([p.model_version for p in preds], dtype=object),
            "probs": probs,
            "embedding": emb,
            "boxes": np.array([_boxes_json(p) for p in preds], dtype=object),
        }


def _predictions(batch: dict[str, np.ndarray]) -> Iterator[Prediction]:
    probs, emb = np.asarray(batch["probs"]), np.asarray(batch["embedding"])
    for j, item_id in enumerate(batch["item_id"]):
        boxes, box_probs = _boxes_from_json(str(batch["boxes"][j]))
        yield Prediction(
            item_id=str(item_id),
            model_version=str(batch["model_version"][j]),
            probs=probs[j] if probs.ndim == 2 and probs.shape[1] else None,
            embedding=emb[j] if emb.ndim == 2 and emb.shape[1] else None,
            boxes=boxes,
            box_probs=box_probs,
        )


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


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
            divided by ``num_actors``: on 2 CPUs, two actors at 1 CPU each starve the rest
            of the pipeline (FACTS.md), hence the 0.5 default.
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
    batch_size = _check_int("batch_size", batch_size, 1)
    shard_size = _check_int("shard_size", shard_size, 1)
    num_actors = _check_int("num_actors", num_actors, 1)
    for name, value in (("num_gpus_per_actor", num_gpus_per_actor), ("num_cpus_per_actor", num_cpus_per_actor)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    items = check_items(items)

    # The driver reads version and classes from the checkpoint (on CPU) to apply the resume rule.
    model_path = Path(model_path).resolve()
    local = load_model(model_path, device="cpu")
    version, classes = str(local.model_version), list(local.classes)
    del local
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_index = completed_shards(out_dir, version)
    todo = [it for it in items if it.id not in done]

    if todo:
        import ray

        started = False
        if not ray.is_initialized():
            started = init_ray(
                address=address, temp_dir=Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="plray-"))
            )
        try:
            next_index = _run(
                todo, out_dir, next_index, classes, version,
                model_path=model_path, batch_size=batch_size, num_actors=num_actors,
                num_gpus=float(num_gpus_per_actor), num_cpus=float(num_cpus_per_actor), shard_size=shard_size,
            )
        finally:
            if started:
                ray.shutdown()

    return InferenceResult(
        out_dir=out_dir,
        model_version=version,
        n_items=len(items),
        n_scored=len(todo),
        n_skipped=len(items) - len(todo),
        shards=shard_paths(out_dir),
        seconds=time.monotonic() - start,
    )


def _run(
    todo: list[Item], out_dir: Path, next_index: int, classes: list[str], version: str, *,
    model_path: Path, batch_size: int, num_actors: int, num_gpus: float, num_cpus: float, shard_size: int,
) -> int:
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    # Shards must hold items in input order, like the single-machine engine's.
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    try:
        rows = [{"id": it.id, "path": str(it.path), "width": it.width, "height": it.height} for it in todo]
        blocks = max(1, min(len(rows) // batch_size, 1000))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        ds = ds.map_batches(
            _Predictor,
            fn_constructor_kwargs={
                "model_path": str(model_path), "batch_size": batch_size, "device": "cuda" if num_gpus > 0 else "cpu",
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        expected = iter(todo)
        buffer: list[Prediction] = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for pred in _predictions(batch):
                want = next(expected, None)
                if want is None or pred.item_id != want.id:
                    raise RuntimeError(
                        f"Ray returned item {pred.item_id!r} where {getattr(want, 'id', None)!r} was expected; "
                        "results must come in input order"
                    )
                if pred.model_version != version:
                    raise RuntimeError(
                        f"an actor tagged {pred.item_id!r} with model_version {pred.model_version!r}, expected "
                        f"{version!r}: is {model_path} the same file on every node?"
                    )
                buffer.append(pred)
                if len(buffer) == shard_size:
                    write_shard(out_dir, next_index, buffer, classes)
                    next_index += 1
                    buffer = []
        if next(expected, None) is not None:
            raise RuntimeError("Ray returned fewer predictions than items")
        if buffer:
            write_shard(out_dir, next_index, buffer, classes)
            next_index += 1
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
    return next_index
