"""Your labelled data as a benchmark: split it into seed / holdout / pool and export it in the
layout the campaigns read.

``pseudolabel benchmark --data DIR`` takes a fully labelled set and pretends most of it is
not labelled: a small seed set starts the campaign, a holdout set scores every model, the
rest is the pool whose labels only the simulated reviewer sees. Accepted layouts (one-line
errors name what was found and what would be accepted):

- **ImageFolder** (classification): ``DIR/<class>/<image>`` (sub-folders inside a class
  folder are fine), at least 2 classes;
- **YOLO** (detection): ``DIR/images/`` + ``DIR/labels/`` (the same relative paths, ``.txt``
  per image, sub-folders such as ``train/`` / ``val/`` are fine) and the class names in
  ``DIR/data.yaml`` (``names``) or ``DIR/classes.txt`` (one per line);
- **COCO** (detection): a ``*.json`` instances file (``--data path/to/instances.json``, or
  a ``DIR`` holding exactly one ``.json``, or ``DIR/annotations/*.json``); image
  ``file_name`` values resolve against the JSON's folder or ``DIR/images``.

The split is seeded (``data_seed``). Classification is stratified: ``seed_per_class`` random
images of every class (or, with a cold-start method, ``seed_per_class x classes`` images
chosen label-free on image embeddings, see :func:`pixel_embeddings`), a holdout with every
class in its share of the data, the rest as the pool (optionally a stratified subsample).
Detection: random images. Files are hard-linked into ``dest`` when the file system allows
(else copied); the pool is flat (no class in the path). Unreadable images are left out and
listed in ``dest/quarantine.csv``; identical files are kept once.

Why this module is over 400 lines: one exporter: detecting the layout of a user's data set
(ImageFolder, YOLO, COCO), splitting it and linking it into the benchmark's layout.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pseudolabel.types import Box, Item

Layout = Literal["imagefolder", "yolo", "coco"]
LAYOUT_HELP = ("an ImageFolder tree DIR/<class>/<image> (classification, >= 2 classes), a YOLO set "
               "DIR/images + DIR/labels + DIR/data.yaml (or classes.txt), or a COCO instances .json")

Embedder = Callable[[Sequence[Path]], np.ndarray]
"""Paths -> (N, D) float32 image embeddings (label-free), for the cold-start seed set."""


class BenchDataError(ValueError):
    """The folder given to ``--data`` cannot be used; the message is one line."""


@dataclass
class BenchData:
    """What :func:`prepare` wrote under ``root``.

    - ``task``: ``"classify"`` or ``"detect"``; ``layout``: the source layout;
    - ``classes``: class names in order;
    - ``truth``: item id (sha256) -> class name (classification) or tuple of pixel boxes;
    - ``seed`` / ``holdout`` / ``pool``: item ids of each split;
    - ``sizes``: item id -> (width, height) pixels;
    - ``image_size``: a sensible square training size from the data (median shorter side,
      clipped to 16..128 for classification; 320 for detection unless the images are smaller);
    - ``seed_dir`` (+ ``seed_labels`` for YOLO), ``holdout_dir`` (+ ``holdout_labels``),
      ``pool_dir``: where the campaign config points;
    - ``skipped``: counts of quarantined / duplicate files left out.
    """

    root: Path
    task: Literal["classify", "detect"]
    layout: Layout
    classes: list[str]
    truth: dict[str, Any]
    seed: list[str]
    holdout: list[str]
    pool: list[str]
    sizes: dict[str, tuple[int, int]]
    image_size: int
    seed_dir: Path
    holdout_dir: Path
    pool_dir: Path
    seed_labels: Path | None = None
    holdout_labels: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# finding the layout


def detect_layout(path: Path) -> tuple[Layout, dict[str, Path]]:
    """Which layout ``path`` holds, and its parts (``images``, ``labels``, ``names`` for YOLO;
    ``json`` and ``image_root`` for COCO; ``root`` for ImageFolder).

    Raises:
        BenchDataError: a one-line message naming the path, what was found, and
        :data:`LAYOUT_HELP`.
    """
    from pseudolabel.data.ingest import is_image_path

    path = Path(path)
    if not path.exists():
        raise BenchDataError(f"--data {path}: does not exist; expected {LAYOUT_HELP}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco", {"json": path, "image_root": _coco_image_root(path)}
        raise BenchDataError(f"--data {path}: is a file, not a folder or a COCO .json; expected {LAYOUT_HELP}")
    if (path / "images").is_dir() and (path / "labels").is_dir():
        names = next((p for p in (path / "data.yaml", path / "data.yml", path / "classes.txt") if p.is_file()), None)
        if names is None:
            raise BenchDataError(f"--data {path}: has images/ and labels/ (YOLO) but no data.yaml or classes.txt "
                                 "naming the classes; add one (names: [...] or one class per line)")
        return "yolo", {"images": path / "images", "labels": path / "labels", "names": names}
    jsons = sorted(path.glob("*.json")) or sorted((path / "annotations").glob("*.json"))
    if len(jsons) == 1:
        return "coco", {"json": jsons[0], "image_root": _coco_image_root(jsons[0], path)}
    if len(jsons) > 1:
        raise BenchDataError(f"--data {path}: holds {len(jsons)} .json files ({', '.join(p.name for p in jsons[:3])}"
                             f"{', ...' if len(jsons) > 3 else ''}); pass the COCO instances file itself: --data FILE.json")
    folders = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    stray = [p for p in path.iterdir() if p.is_file() and is_image_path(p)]
    if stray:
        raise BenchDataError(f"--data {path}: {len(stray)} image(s) sit directly in the folder (e.g. {stray[0].name}), "
                             f"so they have no class; expected {LAYOUT_HELP}")
    if len(folders) < 2:
        raise BenchDataError(f"--data {path}: found {len(folders)} class folder(s); expected {LAYOUT_HELP}")
    return "imagefolder", {"root": path}


def _coco_image_root(json_path: Path, data_dir: Path | None = None) -> Path:
    for cand in (json_path.parent / "images", *(() if data_dir is None else (data_dir / "images",))):
        if cand.is_dir():
            return cand
    return json_path.parent


# ------------------------------------------------------------------------------------------
# embeddings for a label-free seed set


def pixel_embeddings(paths: Sequence[Path], *, side: int = 16, dims: int = 50, seed: int = 0) -> np.ndarray:
    """(N, min(dims, N, 3 side^2)) float32: each image resized to ``side`` x ``side`` RGB,
    flattened, standardised per feature and reduced by PCA. A weak representation, but one
    that needs no model: the cold start of a benchmark without a pretrained backbone."""
    from sklearn.decomposition import PCA

    from pseudolabel.data.images import load_resized

    rows = np.empty((len(paths), 3 * side * side), dtype=np.float32)
    for i, p in enumerate(paths):
        img = load_resized(Path(p), side)
        rows[i] = np.asarray(img, dtype=np.float32).reshape(-1) / 255.0
    rows -= rows.mean(axis=0)
    rows /= rows.std(axis=0) + 1e-6
    k = min(dims, rows.shape[0], rows.shape[1])
    return PCA(n_components=k, random_state=seed).fit_transform(rows).astype(np.float32)


# ------------------------------------------------------------------------------------------
# splitting


def _check_count(name: str, v: int | None, lo: int) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
        raise BenchDataError(f"{name} must be an integer >= {lo}, got {v!r}")


def _stratified_take(ids_by_class: dict[str, list[str]], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` ids spread over classes in proportion to their sizes (largest remainders),
    every class with at least one item getting at least one when ``n`` allows."""
    total = sum(len(v) for v in ids_by_class.values())
    n = min(n, total)
    names = sorted(ids_by_class)
    quota = {c: len(ids_by_class[c]) * n / max(total, 1) for c in names}
    take = {c: min(len(ids_by_class[c]), int(math.floor(quota[c]))) for c in names}
    if n >= len(names):
        for c in names:
            if take[c] == 0 and ids_by_class[c]:
                take[c] = 1
    left = n - sum(take.values())
    for c in sorted(names, key=lambda c: -(quota[c] - math.floor(quota[c]))):
        if left <= 0:
            break
        if take[c] < len(ids_by_class[c]):
            take[c] += 1
            left -= 1
    while sum(take.values()) > n:        # the at-least-one rule overshot: trim the biggest
        c = max(names, key=lambda c: take[c])
        take[c] -= 1
    out: list[str] = []
    for c in names:
        ids = ids_by_class[c]
        out += [ids[i] for i in rng.permutation(len(ids))[: take[c]]]
    return out


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _unique_name(item: Item) -> str:
    return f"{item.id[:12]}_{Path(item.path).name}"


def prepare(
    data: Path,
    dest: Path,
    *,
    seed_per_class: int = 2,
    n_seed: int | None = None,
    n_holdout: int | None = None,
    n_pool: int | None = None,
    data_seed: int = 0,
    seed_strategy: str = "random",
    embed: Embedder | None = None,
    progress: bool = False,
) -> BenchData:
    """Read the labelled set at ``data``, split it, export it under ``dest`` (replacing
    ``dest/seed``, ``dest/holdout``, ``dest/pool``).

    Sizes: classification takes ``seed_per_class`` per class (``n_seed`` overrides the total
    for a cold-start seed set); detection takes ``n_seed`` images (default 20). ``n_holdout``:
    default 20 % of the images, at most 1,000 (classification) / 200 (detection).
    ``n_pool``: cap on the pool (default: everything left). ``seed_strategy``: ``random``
    (stratified for classification) or a cold-start method of
    :func:`pseudolabel.strategies.cold_start` (``centroid``, ``typiclust``, ``probcover``,
    ``kcenter``) run on ``embed(paths)`` (default :func:`pixel_embeddings`) of the images
    outside the holdout, without looking at their labels.

    Raises:
        BenchDataError: bad folder, unknown classes, too few images for the split, or bad sizes.
    """
    from pseudolabel.strategies import COLD_START_METHODS

    _check_count("seed_per_class", seed_per_class, 1)
    _check_count("n_seed", n_seed, 1)
    _check_count("n_holdout", n_holdout, 1)
    _check_count("n_pool", n_pool, 1)
    if seed_strategy != "random" and seed_strategy not in COLD_START_METHODS:
        raise BenchDataError(f"seed strategy {seed_strategy!r} is not one of: random, "
                             f"{', '.join(m for m in COLD_START_METHODS if m != 'random')}")
    layout, parts = detect_layout(Path(data))
    dest = Path(dest)
    for sub in ("seed", "holdout", "pool"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if layout == "imagefolder":
            return _prepare_classify(parts["root"], dest, seed_per_class=seed_per_class, n_seed=n_seed,
                                     n_holdout=n_holdout, n_pool=n_pool, data_seed=data_seed,
                                     seed_strategy=seed_strategy, embed=embed, progress=progress)
        return _prepare_detect(layout, parts, dest, n_seed=n_seed, n_holdout=n_holdout, n_pool=n_pool,
                               data_seed=data_seed, seed_strategy=seed_strategy, embed=embed, progress=progress)
    except BenchDataError:
        raise
    except ValueError as e:
        # The readers name the file and line; keep it on one line and say where it came from.
        raise BenchDataError(f"--data {data}: {' '.join(str(e).split())}") from None


def _quarantine(dest: Path, quarantined: Sequence[Any]) -> None:
    if quarantined:
        from pseudolabel.data.ingest import write_quarantine_csv

        write_quarantine_csv(dest / "quarantine.csv", quarantined)


def _holdout_size(n_holdout: int | None, n: int, cap: int) -> int:
    return n_holdout if n_holdout is not None else max(1, min(cap, round(0.2 * n)))


def _cold_seed(items: Sequence[Item], k: int, *, method: str, n_classes: int, seed: int,
               embed: Embedder | None) -> list[int]:
    from pseudolabel.strategies import cold_start

    emb = (embed or pixel_embeddings)([Path(it.path) for it in items])
    if emb.shape[0] != len(items):
        raise BenchDataError(f"the embedder returned {emb.shape[0]} rows for {len(items)} images")
    return cold_start(emb, k, method=method, n_classes=n_classes, seed=seed).tolist()


def _prepare_classify(root: Path, dest: Path, *, seed_per_class: int, n_seed: int | None, n_holdout: int | None,
                      n_pool: int | None, data_seed: int, seed_strategy: str, embed: Embedder | None,
                      progress: bool) -> BenchData:
    from pseudolabel.data.formats import read_imagefolder

    ls = read_imagefolder(root, progress=progress)
    classes = list(ls.classes)
    by_id = {it.id: it for it in ls.items}
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for it in ls.items:
        by_class[ls.labels[it.id]].append(it.id)
    empty = [c for c in classes if not by_class[c]]
    if empty:
        raise BenchDataError(f"--data {root}: class folder(s) {', '.join(empty)} hold no readable image")
    if len(classes) < 2:
        raise BenchDataError(f"--data {root}: found 1 class ({classes[0]}); classification needs at least 2")
    rng = np.random.default_rng(data_seed)
    n = len(ls.items)
    hold_n = _holdout_size(n_holdout, n, 1000)
    seed_total = n_seed if n_seed is not None else seed_per_class * len(classes)
    if hold_n + seed_total >= n:
        raise BenchDataError(f"--data {root}: {n} usable images leave no pool after a {seed_total}-image seed set "
                             f"and a {hold_n}-image holdout; lower --holdout / --seed-per-class or add images")
    holdout = _stratified_take(by_class, hold_n, rng)
    taken = set(holdout)
    rest = {c: [i for i in ids if i not in taken] for c, ids in by_class.items()}
    if seed_strategy == "random":
        short = [c for c in classes if len(rest[c]) <= seed_per_class]
        if short and n_seed is None:
            raise BenchDataError(f"--data {root}: class {short[0]!r} has {len(rest[short[0]])} image(s) outside the "
                                 f"holdout, not more than --seed-per-class {seed_per_class}; lower it or add images")
        seed: list[str] = []
        if n_seed is None:
            for c in classes:
                ids = rest[c]
                seed += [ids[i] for i in rng.permutation(len(ids))[:seed_per_class]]
        else:
            seed = _stratified_take(rest, n_seed, rng)
    else:
        cand = [i for c in classes for i in rest[c]]
        picks = _cold_seed([by_id[i] for i in cand], seed_total, method=seed_strategy, n_classes=len(classes),
                           seed=data_seed, embed=embed)
        seed = [cand[j] for j in picks]
    taken |= set(seed)
    pool_by_class = {c: [i for i in rest[c] if i not in taken] for c in classes}
    pool = [i for c in classes for i in pool_by_class[c]]
    if n_pool is not None and n_pool < len(pool):
        pool = _stratified_take(pool_by_class, n_pool, rng)
    for name, ids in (("seed", seed), ("holdout", holdout)):
        for i in ids:
            _link(Path(by_id[i].path), dest / name / ls.labels[i] / _unique_name(by_id[i]))
    for i in pool:
        _link(Path(by_id[i].path), dest / "pool" / _unique_name(by_id[i]))
    _quarantine(dest, ls.quarantined)
    sides = [min(it.width, it.height) for it in ls.items]
    size = int(np.clip(np.median(sides), 16, 128))
    return BenchData(root=dest, task="classify", layout="imagefolder", classes=classes,
                     truth={i: ls.labels[i] for i in (*seed, *holdout, *pool)}, seed=seed, holdout=holdout, pool=pool,
                     sizes={it.id: (it.width, it.height) for it in ls.items}, image_size=size,
                     seed_dir=dest / "seed", holdout_dir=dest / "holdout", pool_dir=dest / "pool",
                     skipped={"quarantined": len(ls.quarantined), "duplicates": len(ls.duplicates)})


def _read_names(path: Path) -> list[str]:
    from pseudolabel.data.formats.yolo import read_yolo_names

    if path.suffix in (".yaml", ".yml"):
        return list(read_yolo_names(path))
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise BenchDataError(f"{path}: no class names (one per line expected)")
    return names


def _prepare_detect(layout: Layout, parts: dict[str, Path], dest: Path, *, n_seed: int | None,
                    n_holdout: int | None, n_pool: int | None, data_seed: int, seed_strategy: str,
                    embed: Embedder | None, progress: bool) -> BenchData:
    from pseudolabel.data import formats

    if layout == "yolo":
        classes = _read_names(parts["names"])
        ds = formats.read_yolo(parts["images"], parts["labels"], classes=classes, progress=progress)
        where = parts["images"].parent
    else:
        ds = formats.read_coco(parts["json"], image_root=parts["image_root"], progress=progress)
        classes = list(ds.classes)
        where = parts["json"]
    items = sorted(ds.items, key=lambda it: it.id)
    n = len(items)
    seed_n = n_seed if n_seed is not None else 20
    hold_n = _holdout_size(n_holdout, n, 200)
    if seed_n + hold_n >= n:
        raise BenchDataError(f"--data {where}: {n} usable images leave no pool after a {seed_n}-image seed set and a "
                             f"{hold_n}-image holdout; lower --seed-size / --holdout or add images")
    rng = np.random.default_rng(data_seed)
    order = rng.permutation(n)
    holdout = [items[i] for i in order[:hold_n]]
    rest = [items[i] for i in order[hold_n:]]
    if seed_strategy == "random":
        seed = rest[:seed_n]
    else:
        picks = set(_cold_seed(rest, seed_n, method=seed_strategy, n_classes=max(len(classes), 2), seed=data_seed,
                               embed=embed))
        seed = [it for j, it in enumerate(rest) if j in picks]
    seed_ids = {it.id for it in seed}
    pool = [it for it in rest if it.id not in seed_ids]
    if n_pool is not None:
        pool = pool[:n_pool]
    for name, split in (("seed", seed), ("holdout", holdout)):
        img_dir = dest / name / "images"
        linked = []
        for it in split:
            target = img_dir / _unique_name(it)
            _link(Path(it.path), target)
            linked.append(Item(it.id, target, it.width, it.height))
        formats.write_yolo(dest / name / "labels", linked, {it.id: ds.boxes[it.id] for it in split},
                              classes=classes, image_root=img_dir)
    for it in pool:
        _link(Path(it.path), dest / "pool" / _unique_name(it))
    _quarantine(dest, ds.quarantined)
    sides = [min(it.width, it.height) for it in items]
    size = int(min(320, max(32, 32 * round(float(np.median(sides)) / 32))))
    truth: dict[str, tuple[Box, ...]] = {it.id: tuple(ds.boxes[it.id]) for it in (*seed, *holdout, *pool)}
    return BenchData(root=dest, task="detect", layout=layout, classes=classes, truth=truth,
                     seed=[it.id for it in seed], holdout=[it.id for it in holdout], pool=[it.id for it in pool],
                     sizes={it.id: (it.width, it.height) for it in items}, image_size=size,
                     seed_dir=dest / "seed" / "images", holdout_dir=dest / "holdout" / "images",
                     pool_dir=dest / "pool", seed_labels=dest / "seed" / "labels",
                     holdout_labels=dest / "holdout" / "labels",
                     skipped={"quarantined": len(ds.quarantined), "duplicates": len(ds.duplicates)})
