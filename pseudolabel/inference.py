"""The pseudo-labelling engine: stream a pool of items through a model into shards on disk.

On-disk layout of ``out_dir`` (one directory per model version is the normal use, e.g.
``rounds/0003/predictions/``):

- ``predictions-00000.parquet``: one row per item, columns ``item_id`` (str),
  ``model_version`` (str), ``label`` (argmax class name), ``confidence`` (max probability,
  float32 in [0, 1]), ``probs`` (``list<float32>``, length C, in ``model.classes`` order);
- ``embeddings-00000.npy``: float32 ``(rows, D)`` array, row ``i`` belongs to row ``i`` of
  the parquet shard with the same number (``D = 0`` when the model gives no embedding).
  Kept out of the parquet file so that a strategy can memory-map embeddings without
  decoding a list column.

Each shard is written atomically (temp file + ``os.replace``), embeddings first and the
parquet file last: a parquet shard on disk is the mark that the shard is complete. A run
killed half-way resumes: items already in complete shards for the same ``model_version`` are
skipped. Shards from another model version are stale: they are deleted and everything is
re-scored (a mixed directory would pair probabilities from two models).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pseudolabel.data.boxes import boxes_and_probs_from_json, boxes_to_json
from pseudolabel.types import Item, Prediction
from pseudolabel.utils import atomic_write

_SHARD_RE = re.compile(r"^predictions-(\d{5,})\.parquet$")
_COLUMNS = ["item_id", "model_version", "label", "confidence"]


@dataclass(frozen=True)
class InferenceResult:
    """What one :func:`pseudo_label` call did.

    ``n_items``: items asked for; ``n_scored``: items run through the model by this call;
    ``n_skipped``: items found in complete shards of an earlier run (same model version);
    ``shards``: every parquet shard in ``out_dir`` afterwards, in order; ``seconds``: wall time.
    """

    out_dir: Path
    model_version: str
    n_items: int
    n_scored: int
    n_skipped: int
    shards: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _shard_paths(out_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in out_dir.iterdir():
        m = _SHARD_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _embedding_path(shard: Path) -> Path:
    return shard.with_name(shard.name.replace("predictions-", "embeddings-").replace(".parquet", ".npy"))


def _boxes_json(pred: Prediction, classes: Sequence[str]) -> str:
    """The ``boxes`` cell of one detection prediction: its boxes, each with its full class vector."""
    bp = pred.box_probs
    if bp is not None and len(pred.boxes) and np.shape(bp) != (len(pred.boxes), len(classes)):
        raise ValueError(
            f"prediction for {pred.item_id!r}: box_probs has shape {np.shape(bp)}, expected "
            f"({len(pred.boxes)}, {len(classes)}) (one class vector per box)"
        )
    return boxes_to_json(pred.boxes, probs=bp if len(pred.boxes) else None, empty=True, compact=True)


def _is_detection(preds: Sequence[Prediction]) -> bool:
    return any(p.probs is None for p in preds)


def write_shard(out_dir: Path, index: int, preds: Sequence[Prediction], classes: Sequence[str]) -> Path:
    """Write ``preds`` as shard number ``index`` of ``out_dir`` (embeddings first, parquet last,
    each atomically). Classification predictions need ``probs``; detection predictions (no
    ``probs``) are stored with a ``boxes`` JSON column: a list of ``{"xyxy": pixels, "label",
    "score", "polygon": pixel points or null, "probs": the box's class vector}``; their
    ``label``/``confidence`` columns hold the top box's class and score (null / 0.0 when the
    image has no box) and ``probs`` is an empty list."""
    if not preds:
        raise ValueError("write_shard needs at least one prediction")
    emb: np.ndarray  # (N, D) float32; D = 0 when a prediction has no embedding
    if any(p.embedding is None for p in preds):
        emb = np.zeros((len(preds), 0), dtype=np.float32)
    else:
        emb = np.stack([np.asarray(p.embedding, dtype=np.float32).reshape(-1) for p in preds])
    n = len(preds)
    columns: dict[str, Any] = {
        "item_id": pa.array([p.item_id for p in preds], type=pa.string()),
        "model_version": pa.array([p.model_version for p in preds], type=pa.string()),
    }
    if _is_detection(preds):
        labels, conf = [], []
        for p in preds:
            top = max(p.boxes, key=lambda b: b.score or 0.0, default=None)
            labels.append(None if top is None else top.label)
            conf.append(0.0 if top is None else float(top.score or 0.0))
        columns |= {
            "label": pa.array(labels, type=pa.string()),
            "confidence": pa.array(np.asarray(conf, dtype=np.float32), type=pa.float32()),
            "probs": pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)),
                                              pa.array([], type=pa.float32())),
            "boxes": pa.array([_boxes_json(p, classes) for p in preds], type=pa.string()),
        }
    else:
        probs = np.stack([np.asarray(p.probs, dtype=np.float32) for p in preds])  # (n, C)
        if probs.ndim != 2 or probs.shape[1] != len(classes):
            raise ValueError(
                f"model returned probability vectors of shape {probs.shape[1:]}, but has {len(classes)} classes"
            )
        top = probs.argmax(axis=1)
        c = probs.shape[1]
        columns |= {
            "label": pa.array([classes[i] for i in top], type=pa.string()),
            "confidence": pa.array(probs[np.arange(n), top], type=pa.float32()),
            "probs": pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * c + 1, c, dtype=np.int32)), pa.array(probs.reshape(-1), type=pa.float32())
            ),
        }
    table = pa.table(columns)
    shard = out_dir / f"predictions-{index:05d}.parquet"

    def _save_npy(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, emb)

    atomic_write(_embedding_path(shard), _save_npy)
    atomic_write(shard, lambda tmp: pq.write_table(table, tmp))
    return shard


def _classify_predictions(
    model: Any, items: Sequence[Item], batch_size: int | None
) -> Iterator[Prediction]:
    """``model.predict`` with a check that it answers every item, in order."""
    preds = model.predict(items, batch_size=batch_size)
    for item, pred in zip(items, preds, strict=True):
        if pred.item_id != item.id:
            raise RuntimeError(
                f"model.predict answered item {pred.item_id!r} where {item.id!r} ({item.path}) was expected: "
                "predictions must come in input order"
            )
        if pred.probs is None and getattr(model, "task", "classify") == "classify":
            raise ValueError(f"model returned no class probabilities for {item.path}")
        yield pred


def check_items(items: Sequence[Item]) -> list[Item]:
    """``items`` as a list, after checking each is an :class:`Item` and no id repeats."""
    items = list(items)
    seen: dict[str, Path] = {}
    for i, item in enumerate(items):
        if not isinstance(item, Item):
            raise ValueError(f"items[{i}] is a {type(item).__name__}, expected an Item")
        if item.id in seen:
            raise ValueError(
                f"duplicate item id {item.id!r}: {seen[item.id]} and {item.path} (items[{i}]); "
                "ids are content hashes, pass each item once"
            )
        seen[item.id] = item.path
    return items


def completed_shards(out_dir: Path, version: str) -> tuple[set[str], int]:
    """Item ids in complete shards of ``version`` under ``out_dir``, and the next free shard
    number. Shards of another model version are stale: they are deleted so that the directory
    never mixes models (the resume rule of every engine writing this format)."""
    done: set[str] = set()
    next_index = 0
    for index, shard in _shard_paths(out_dir):
        meta = pq.read_table(shard, columns=["item_id", "model_version"])
        if set(meta.column("model_version").to_pylist()) != {version}:
            _embedding_path(shard).unlink(missing_ok=True)
            shard.unlink()
            continue
        done.update(meta.column("item_id").to_pylist())
        next_index = max(next_index, index + 1)
    return done, next_index


def shard_paths(out_dir: Path) -> list[Path]:
    """The complete parquet shards of ``out_dir``, in shard order."""
    return [p for _, p in _shard_paths(Path(out_dir))]


def pseudo_label(
    model: Any,
    items: Sequence[Item],
    out_dir: Path,
    *,
    batch_size: int | None = None,
    shard_size: int = 10_000,
    progress: bool = True,
) -> InferenceResult:
    """Run ``model`` over ``items`` and write prediction shards to ``out_dir``.

    ``model`` follows :class:`~pseudolabel.models.base.Model` (``predict``, ``classes``,
    ``model_version``). Items are streamed in order, ``shard_size`` per shard (and per
    ``model.predict`` call); items already in complete shards for the same model version are
    skipped, so calling this again after a crash only scores what is missing. Item ids must be
    unique (ids are content hashes: ingest dedupes copies). ``batch_size``: images per forward
    pass, passed to ``model.predict`` (``None``: the model's automatic choice).
    """
    start = time.monotonic()
    checked = ([] if batch_size is None else [("batch_size", batch_size)]) + [("shard_size", shard_size)]
    for name, value in checked:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    items = check_items(items)
    version = str(model.model_version)
    classes = list(model.classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_index = completed_shards(out_dir, version)
    todo = [it for it in items if it.id not in done]
    n_skipped = len(items) - len(todo)

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("pseudo-labelling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        bar.start()
        task = bar.add_task("pseudo-labelling", total=len(items), completed=n_skipped)
    try:
        it = iter(todo)
        while chunk := list(islice(it, shard_size)):
            preds: list[Prediction] = []
            for pred in _classify_predictions(model, chunk, batch_size):
                if pred.model_version != version:
                    raise RuntimeError(
                        f"model.predict tagged {pred.item_id!r} with model_version {pred.model_version!r}, "
                        f"expected {version!r}"
                    )
                preds.append(pred)
                if bar is not None:
                    bar.advance(task)
            write_shard(out_dir, next_index, preds, classes)
            next_index += 1
    finally:
        if bar is not None:
            bar.stop()
    return InferenceResult(
        out_dir=out_dir,
        model_version=version,
        n_items=len(items),
        n_scored=len(todo),
        n_skipped=n_skipped,
        shards=shard_paths(out_dir),
        seconds=time.monotonic() - start,
    )


def load_predictions(out_dir: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Read every shard in ``out_dir``, in shard order.

    Returns ``(frame, probs, embeddings)`` aligned row by row: ``frame`` has columns
    ``item_id, label, confidence, model_version``; ``probs`` is float32 ``(N, C)``;
    ``embeddings`` is float32 ``(N, D)``. An existing directory without shards gives empty
    results (``(0, 0)`` arrays). Raises ``ValueError`` for a missing directory, a shard
    without its embeddings file, or shards from different model versions.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: no such predictions directory")
    frames: list[pd.DataFrame] = []
    probs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    for _, shard in _shard_paths(out_dir):
        table = pq.read_table(shard)
        n = table.num_rows
        if n == 0:
            continue  # pseudo_label never writes one; nothing to add
        emb_path = _embedding_path(shard)
        if not emb_path.is_file():
            raise ValueError(f"{shard}: embeddings file {emb_path.name} is missing")
        emb = np.load(emb_path, allow_pickle=False)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise ValueError(f"{emb_path}: shape {emb.shape} does not match {n} rows in {shard.name}")
        flat = table.column("probs").combine_chunks()
        values = flat.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        probs.append(values.reshape(n, values.size // n))  # detection shards: (n, 0)
        embs.append(emb.astype(np.float32, copy=False))
        frames.append(table.select(_COLUMNS).to_pandas())
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in _COLUMNS})
        empty["confidence"] = empty["confidence"].astype(np.float32)
        z = np.zeros((0, 0), dtype=np.float32)
        return empty[["item_id", "label", "confidence", "model_version"]], z, z.copy()
    frame = pd.concat(frames, ignore_index=True)[["item_id", "label", "confidence", "model_version"]]
    versions = sorted(frame["model_version"].unique())
    if len(versions) > 1:
        raise ValueError(f"{out_dir}: shards from several model versions {versions!r}; re-run pseudo_label")
    for name, arrays in (("classes", probs), ("embedding dimensions", embs)):
        widths = sorted({a.shape[1] for a in arrays})
        if len(widths) > 1:
            raise ValueError(f"{out_dir}: shards disagree on the number of {name} {widths!r}")
    return frame, np.concatenate(probs), np.concatenate(embs)


def load_box_predictions(out_dir: Path) -> tuple[pd.DataFrame, list[Prediction]]:
    """Detection shards of ``out_dir`` as ``(frame, predictions)`` aligned row by row:
    ``frame`` as in :func:`load_predictions`; each :class:`Prediction` carries ``boxes``
    (pixels), ``box_probs`` ``(B, C)`` and ``embedding``. ``C`` is taken from the boxes' class
    vectors (0 boxes anywhere: ``(0, 0)``)."""
    frame, _, emb = load_predictions(out_dir)
    texts: list[str | None] = []
    for _, shard in _shard_paths(Path(out_dir)):
        table = pq.read_table(shard)
        if table.num_rows == 0:
            continue
        if "boxes" not in table.column_names:
            raise ValueError(f"{shard}: a classification shard (no boxes column); use load_predictions")
        texts.extend(table.column("boxes").to_pylist())
    n_classes = 0
    for t in texts:
        first = json.loads(t or "[]")
        if first and first[0].get("probs") is not None:
            n_classes = len(first[0]["probs"])
            break
    preds = []
    for i, (iid, ver, text) in enumerate(zip(frame["item_id"], frame["model_version"], texts, strict=True)):
        boxes, bp = boxes_and_probs_from_json(text, n_classes=n_classes, where=f"{out_dir}: item {iid}")
        preds.append(Prediction(item_id=iid, model_version=ver, boxes=boxes, box_probs=bp,
                                embedding=emb[i] if emb.shape[1] else None))
    return frame, preds
