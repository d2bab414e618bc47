"""On-disk cache of per-image feature vectors, keyed by item id within a backbone key.

An image is embedded once per backbone: later rounds (and other models on the same backbone)
read the vector back. Layout under the cache folder::

    <root>/<key>/manifest.json             what the key means (backbone, sha256, size, ...)
    <root>/<key>/part-<stamp>.feats.npy    (n, dim) float16
    <root>/<key>/part-<stamp>.ids.npy      (n,) item ids (unicode)

``key`` is a hash of everything that changes the vectors (backbone name and weights sha256,
input size, normalisation, which features). A shard is complete when its ``ids`` file exists:
features are written first, each file atomically (temp file + rename), so a crash leaves at
worst an orphan features file, never a half-read shard. Several processes may add shards to
the same key; an id present twice holds the same vector (same key, deterministic network).

Vectors are stored as float16 (half the disk and memory; the rounding, ~1e-3 relative, is far
below what a linear head or a k-center distance notices) and read memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.utils import atomic_write, atomic_write_text

MANIFEST = "manifest.json"


def cache_key(meta: Mapping[str, Any]) -> str:
    """24 hex chars of the sha256 of ``meta`` as canonical JSON (sorted keys)."""
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class EmbeddingCache:
    """Feature vectors ``(dim,)`` by item id for one key; on disk under ``root/key`` when
    ``root`` is given, else in memory only (for one model's lifetime).

    ``meta``: what the key means, written to ``manifest.json`` (a manifest with another
    ``dim`` is an error naming the folder).
    """

    def __init__(self, root: Path | str | None, meta: Mapping[str, Any], dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        self.meta = dict(meta)
        self.key = cache_key(self.meta)
        self.dim = dim
        self.folder = None if root is None else Path(root) / self.key
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._seen: set[str] = set()
        self.n_written = 0  # vectors added by this object (a test and log hook: 0 means all came from the cache)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            manifest = self.folder / MANIFEST
            if manifest.is_file():
                have = json.loads(manifest.read_text(encoding="utf-8"))
                if int(have.get("dim", -1)) != dim:
                    raise ValueError(f"{manifest}: cached vectors have dim {have.get('dim')}, expected {dim}; "
                                     "the cache folder is inconsistent: delete it")
            else:
                atomic_write_text(manifest, json.dumps({**self.meta, "key": self.key, "dim": dim}, indent=2,
                                                       default=str))
            self._scan()

    def __len__(self) -> int:
        return len(self._index)

    def _scan(self) -> None:
        """Index shards written since the last scan (by this or another process)."""
        assert self.folder is not None
        for ids_path in sorted(self.folder.glob("part-*.ids.npy")):
            stem = ids_path.name[: -len(".ids.npy")]
            if stem in self._seen:
                continue
            feats_path = self.folder / f"{stem}.feats.npy"
            ids = np.load(ids_path, allow_pickle=False)
            feats = np.load(feats_path, mmap_mode="r", allow_pickle=False)
            if feats.shape != (len(ids), self.dim):
                raise ValueError(f"{feats_path}: shape {feats.shape}, expected ({len(ids)}, {self.dim}); "
                                 "the cache shard is corrupt: delete it")
            self._seen.add(stem)
            k = len(self._shards)
            self._shards.append(feats)
            for row, item_id in enumerate(ids.tolist()):
                self._index.setdefault(str(item_id), (k, row))

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids of ``ids`` with no cached vector (first looking for shards added meanwhile)."""
        out = [i for i in ids if i not in self._index]
        if out and self.folder is not None:
            self._scan()
            out = [i for i in out if i not in self._index]
        return out

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Vectors ``(len(ids), dim)`` float32, rows in the order of ``ids``; every id must be
        cached (see :meth:`missing`)."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for r, item_id in enumerate(ids):
            loc = self._index.get(item_id)
            if loc is None:
                raise KeyError(f"item {item_id!r} is not in the embedding cache {self.folder or '(memory)'}")
            out[r] = self._shards[loc[0]][loc[1]]
        return out

    def put(self, ids: Sequence[str], feats: np.ndarray) -> None:
        """Add vectors ``feats`` ``(len(ids), dim)`` for ``ids`` (stored as float16)."""
        feats = np.asarray(feats)
        if feats.shape != (len(ids), self.dim):
            raise ValueError(f"feats has shape {feats.shape}, expected ({len(ids)}, {self.dim})")
        if not len(ids):
            return
        half = np.ascontiguousarray(feats, dtype=np.float16)
        if not np.isfinite(half).all():
            raise ValueError("embeddings contain NaN/inf (or values beyond float16's range); refusing to cache them")
        ids_arr = np.asarray([str(i) for i in ids])
        if self.folder is not None:
            stem = f"part-{time.time_ns():020d}-{os.getpid()}"
            atomic_write(self.folder / f"{stem}.feats.npy", lambda p: _save(p, half))
            atomic_write(self.folder / f"{stem}.ids.npy", lambda p: _save(p, ids_arr))
            self._seen.add(stem)
        k = len(self._shards)
        self._shards.append(half)
        for row, item_id in enumerate(ids_arr.tolist()):
            self._index.setdefault(item_id, (k, row))
        self.n_written += len(ids)


def _save(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare temp name
        np.save(f, arr, allow_pickle=False)
