"""Detection / instance-segmentation scenes composited from real Fashion-MNIST items.

A scene is a ``size`` x ``size`` RGB canvas with a textured background (smooth noise and a
colour gradient, never plain black) on which 1..4 Fashion-MNIST items are pasted, each
scaled, mirrored at random and tinted with a random colour and contrast. Later items occlude
earlier ones. Each object's ground truth is its **visible** silhouette:

- mask: the item's pixels above :data:`MASK_THRESHOLD` after scaling (largest 4-connected
  region, holes filled), minus what later items cover;
- :class:`~pseudolabel.types.Box`: the tight pixel box of the visible mask, ``xyxy`` with
  pixel-corner coordinates (pixel ``(row i, col j)`` spans ``[j, j+1) x [i, i+1)``, so
  ``x2 = last column + 1``), as :mod:`pseudolabel.data.geometry` uses;
- polygon: the mask's outline from :func:`~pseudolabel.data.geometry.mask_to_polygon`.

Placements that would hide most of an earlier object, split its visible part in two, punch
a hole in it, or make two visible boxes overlap more than ``max_overlap`` (IoU) are redrawn,
so every mask is one solid region and its polygon describes it exactly.

:func:`export_scenes` writes a seed set and a holdout set in YOLO format, an unlabelled
pool, and ``truth.json`` (every image's true objects, keyed by item id = sha256 of the PNG
bytes) for the simulated reviewer. Nothing is downloaded: the items come from the IDX files
of Debian's ``dataset-fashion-mnist`` package (see :mod:`pseudolabel.sim.fashion`).

Why this module is over 400 lines: it is one generator (backgrounds, placement with its
occlusion rules, ground truth, export) whose parts share the scene parameters; it serves the
demos, tests and benchmarks only.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.data.boxes import box_from_dict, box_to_dict
from pseudolabel.sim.fashion import FASHION_CLASSES, DatasetMissing, fashion_dir, load_fashion
from pseudolabel.data.formats import DetTask, write_yolo
from pseudolabel.data.geometry import box_iou, mask_to_polygon
from pseudolabel.data.images import sha256_bytes
from pseudolabel.types import Box, Item, Split

ITEM_SIDE = 28
"""Side of a Fashion-MNIST item in pixels."""
MASK_THRESHOLD = 24
"""Item intensity (0..255, after scaling) above which a pixel belongs to the object."""
DEFAULT_CLASSES: tuple[str, ...] = ("T-shirt_top", "Trouser", "Sneaker", "Bag")
"""Four classes that differ in shape. Names are :data:`~pseudolabel.sim.fashion.FASHION_CLASSES`
spellings (``"T-shirt_top"``, not ``"T-shirt/top"``: a ``/`` would end up in folder names)."""
BACKGROUNDS: tuple[str, ...] = ("noise", "gradient")
TRUTH_FILE = "truth.json"
INSTALL_HINT = (
    "install the Fashion-MNIST IDX files with `sudo apt-get install dataset-fashion-mnist` "
    "(or run `bash scripts/setup.sh` as root), or point PSEUDOLABEL_FASHION_DIR at a folder "
    "holding the four *-ubyte.gz files"
)


@dataclass(frozen=True)
class CompositeDataset:
    """What :func:`export_scenes` wrote under ``root``.

    - ``seed_images`` / ``seed_labels``: labelled training scenes (PNG + YOLO ``.txt``);
    - ``holdout_images`` / ``holdout_labels``: labelled evaluation scenes;
    - ``pool_dir``: unlabelled scenes (PNG only);
    - ``data_yaml``: Ultralytics dataset file (``train`` = seed, ``val`` = holdout);
    - ``truth_json``: the JSON form of ``truth`` (read it back with :func:`load_truth`);
    - ``truth``: item id (sha256 of the PNG bytes) -> true objects (pixel boxes, polygons),
      for every scene of every split; ``()`` = a scene with no objects;
    - ``paths``: item id -> image path relative to ``root`` (POSIX);
    - ``splits``: item id -> ``"seed"``, ``"pool"`` or ``"holdout"``;
    - ``size``: scene side in pixels (scenes are square).
    """

    root: Path
    task: DetTask
    classes: tuple[str, ...]
    size: int
    seed_images: Path
    seed_labels: Path
    holdout_images: Path
    holdout_labels: Path
    pool_dir: Path
    data_yaml: Path
    truth_json: Path
    truth: dict[str, tuple[Box, ...]]
    paths: dict[str, str]
    splits: dict[str, Split]


# --------------------------------------------------------------------------- classes


def resolve_classes(classes: Sequence[str | int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``(names, fashion_indices)`` for ``classes`` given as Fashion-MNIST class names
    (:data:`~pseudolabel.sim.fashion.FASHION_CLASSES` spellings) or indices 0..9."""
    if isinstance(classes, (str, int)):
        raise ValueError(f"classes must be a sequence of class names or indices, not {classes!r}")
    idx: list[int] = []
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) < len(FASHION_CLASSES):
            idx.append(int(c))
        elif isinstance(c, str) and c in FASHION_CLASSES:
            idx.append(FASHION_CLASSES.index(c))
        else:
            raise ValueError(
                f"class {c!r} is not a Fashion-MNIST class; accepted names "
                f"{FASHION_CLASSES!r} or indices 0..{len(FASHION_CLASSES) - 1}"
            )
    if not idx:
        raise ValueError("classes is empty: give at least one Fashion-MNIST class")
    if len(set(idx)) != len(idx):
        raise ValueError(f"classes {list(classes)!r} name a class twice")
    return tuple(FASHION_CLASSES[i] for i in idx), tuple(idx)


# --------------------------------------------------------------------------- one scene


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """``(size, size, 3)`` float32 texture in about 0..255: a colour gradient, plus smooth
    noise at two scales for ``kind="noise"``. Built on a 16x16 grid and upsampled once."""
    import cv2

    g = 16
    t = np.linspace(0.0, 1.0, g, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    grid = (c0[None, None, :] + (c1 - c0)[None, None, :] * ramp[:, :, None]).astype(np.float32)
    if kind == "noise":
        coarse = rng.uniform(-45, 45, (4, 4, 3)).astype(np.float32)
        grid += cv2.resize(coarse, (g, g), interpolation=cv2.INTER_CUBIC)
        grid += rng.uniform(-20, 20, (g, g, 3)).astype(np.float32)
    return np.asarray(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), dtype=np.float32)


def _item_sprite(
    rng: np.random.Generator, image: np.ndarray, *, scale: tuple[float, float], size: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale (and maybe mirror) one 28x28 item; returns ``(intensity (h, w) float32 0..1,
    mask (h, w) bool)`` cropped to the mask, or None when nothing is left of it."""
    import cv2
    from scipy import ndimage

    side = int(np.clip(round(ITEM_SIDE * rng.uniform(*scale)), 8, size))
    img = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    mask = img > MASK_THRESHOLD
    lab, n = ndimage.label(mask)
    if n == 0:
        return None
    if n > 1:
        mask = lab == (1 + int(np.argmax(np.bincount(lab.ravel())[1:])))
    mask = ndimage.binary_fill_holes(mask)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return img[sl].astype(np.float32) / 255.0, mask[sl]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _solid(mask: np.ndarray) -> bool:
    """One 4-connected region without holes (so its outline polygon describes it exactly)."""
    from scipy import ndimage

    x1, y1, x2, y2 = _bbox(mask)
    crop = mask[y1:y2, x1:x2]
    _, n = ndimage.label(crop)
    return n == 1 and int(ndimage.binary_fill_holes(crop).sum()) == int(crop.sum())


def make_scene(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray | Sequence[int],
    *,
    classes: Sequence[str],
    size: int = 128,
    min_objects: int = 1,
    max_objects: int = 4,
    scale: tuple[float, float] = (1.0, 2.5),
    max_overlap: float = 0.3,
    background: str = "noise",
    min_visible: float = 0.5,
    min_area: int = 16,
    tries: int = 25,
) -> tuple[np.ndarray, list[Box]]:
    """Composite one scene from the items ``images`` ``(K, 28, 28)`` uint8 (0 = background)
    with classes ``labels`` ``(K,)`` (indices into ``classes``).

    The number of objects n is drawn uniformly from ``min_objects..max_objects`` (at most K);
    items ``0..n-1`` are placed in order, each scaled by a factor drawn from ``scale``
    (side = 28 x factor pixels), so item k occludes items < k. A placement is redrawn (up to
    ``tries`` times, then the item is left out) when an earlier object would keep less than
    ``min_visible`` of its area or fewer than ``min_area`` pixels, would be split or holed,
    or when two visible boxes would overlap with IoU > ``max_overlap``.

    Returns the ``(size, size, 3)`` uint8 RGB image and one :class:`Box` per object in
    placement order: pixel ``xyxy`` tight around the visible mask (``x2``/``y2`` exclusive
    edges), ``label`` = class name, ``polygon`` = the visible mask's outline (pixels).
    Deterministic for a given ``rng`` state.
    """
    image, boxes, _ = _compose(
        rng, images, labels, classes=classes, size=size, min_objects=min_objects,
        max_objects=max_objects, scale=scale, max_overlap=max_overlap, background=background,
        min_visible=min_visible, min_area=min_area, tries=tries,
    )
    return image, boxes


def _compose(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray | Sequence[int],
    *,
    classes: Sequence[str],
    size: int,
    min_objects: int,
    max_objects: int,
    scale: tuple[float, float],
    max_overlap: float,
    background: str,
    min_visible: float,
    min_area: int,
    tries: int,
) -> tuple[np.ndarray, list[Box], list[np.ndarray]]:
    """:func:`make_scene`, also returning each object's visible ``(size, size)`` bool mask."""
    names = tuple(classes)
    imgs = np.asarray(images)
    labs = np.asarray(labels)
    if imgs.ndim != 3 or imgs.shape[1:] != (ITEM_SIDE, ITEM_SIDE) or imgs.dtype != np.uint8:
        raise ValueError(f"images must be (K, 28, 28) uint8, got shape {imgs.shape} dtype {imgs.dtype}")
    if labs.shape != (len(imgs),) or (labs.size and not np.issubdtype(labs.dtype, np.integer)):
        raise ValueError(f"labels must be (K,) = ({len(imgs)},) integers, got shape {labs.shape} dtype {labs.dtype}")
    if labs.size and (labs.min() < 0 or labs.max() >= len(names)):
        raise ValueError(f"labels must index classes {list(names)!r} (0..{len(names) - 1}); "
                         f"got values {labs.min()}..{labs.max()}")
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if size < ITEM_SIDE:
        raise ValueError(f"size {size} must be >= {ITEM_SIDE} pixels")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale {scale!r} must be (low, high) with 0 < low <= high")
    if not 0.0 <= max_overlap <= 1.0:
        raise ValueError(f"max_overlap {max_overlap!r} must be an IoU between 0 and 1")
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r} is not one of {BACKGROUNDS!r}")

    canvas = _background(rng, size, background)
    n = min(int(rng.integers(min_objects, max_objects + 1)), len(imgs))
    full: list[np.ndarray] = []      # each placed object's whole mask on the canvas
    visible: list[np.ndarray] = []
    placed: list[int] = []           # item index of each placed object
    layers: list[tuple[tuple[slice, slice], np.ndarray, np.ndarray]] = []
    for k in range(n):
        sprite = _item_sprite(rng, imgs[k], scale=scale, size=size)
        if sprite is None or int(sprite[1].sum()) < min_area:
            continue
        inten, m = sprite
        h, w = m.shape
        for _ in range(tries):
            y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            new = np.zeros((size, size), dtype=bool)
            sl = (slice(y0, y0 + h), slice(x0, x0 + w))
            new[sl] = m
            vis = [v & ~new for v in visible] + [new]
            ok = all(
                int(v.sum()) >= max(min_area, min_visible * int(f.sum())) and _solid(v)
                for v, f in zip(vis[:-1], full)
            )
            if ok:
                bbs = np.array([_bbox(v) for v in vis], dtype=np.float64)  # (k, 4) pixel xyxy
                ok = bool((np.triu(box_iou(bbs, bbs), k=1) <= max_overlap).all())
            if ok:
                break
        else:
            continue
        # Appearance: the item's own shading mapped onto a random contrast range and tint,
        # so colour alone does not give the class away.
        lo, hi = rng.uniform(0, 90), rng.uniform(150, 255)
        tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        rgb = (lo + (hi - lo) * inten)[:, :, None] * tint[None, None, :]
        layers.append((sl, m, rgb))
        full.append(new)
        visible = vis
        placed.append(k)
    for sl, m, rgb in layers:
        region = canvas[sl]
        region[m] = rgb[m]
    canvas += np.float32(rng.uniform(2.0, 8.0)) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    boxes: list[Box] = []
    for k, v in zip(placed, visible):
        x1, y1, x2, y2 = _bbox(v)
        # Traced on the crop (the tracer upsamples its input): same outline, shifted back.
        poly = [(px + x1, py + y1) for px, py in mask_to_polygon(v[y1:y2, x1:x2])]
        boxes.append(Box(float(x1), float(y1), float(x2), float(y2), names[int(labs[k])],
                         polygon=tuple(poly) if len(poly) >= 3 else None))
    return image, boxes, visible


# --------------------------------------------------------------------------- export


def load_truth(path: Path | str) -> dict[str, tuple[Box, ...]]:
    """Item id -> true objects (pixel boxes, polygons) from a ``truth.json`` written by
    :func:`export_scenes`."""
    return _read_truth(Path(path))[0]


def _read_truth(path: Path) -> tuple[dict[str, tuple[Box, ...]], dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"truth file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), dict):
        raise ValueError(f"{path}: expected an object with an 'items' mapping (item id -> entry)")
    truth = {
        str(iid): tuple(box_from_dict(b, where=f"{path}: item {iid!r}") for b in entry.get("boxes", []))
        for iid, entry in data["items"].items()
    }
    return truth, data


def load_scenes(root: Path | str) -> CompositeDataset:
    """The :class:`CompositeDataset` that :func:`export_scenes` wrote under ``root``."""
    root = Path(root)
    truth, data = _read_truth(root / TRUTH_FILE)
    return _dataset(
        root, task=data["task"], classes=tuple(data["classes"]), size=int(data["size"]),
        truth=truth, paths={k: v["path"] for k, v in data["items"].items()},
        splits={k: v["split"] for k, v in data["items"].items()},
    )


def _dataset(
    root: Path, *, task: DetTask, classes: tuple[str, ...], size: int,
    truth: dict[str, tuple[Box, ...]], paths: dict[str, str], splits: dict[str, Split],
) -> CompositeDataset:
    return CompositeDataset(
        root=root, task=task, classes=classes, size=size,
        seed_images=root / "seed" / "images", seed_labels=root / "seed" / "labels",
        holdout_images=root / "holdout" / "images", holdout_labels=root / "holdout" / "labels",
        pool_dir=root / "pool", data_yaml=root / "data.yaml", truth_json=root / TRUTH_FILE,
        truth=truth, paths=paths, splits=splits,
    )


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # Level 1: scenes are noisy, higher levels cost time and save little.
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def export_scenes(
    root: Path | str,
    *,
    classes: Sequence[str | int] = DEFAULT_CLASSES,
    n_seed: int = 40,
    n_pool: int = 400,
    n_holdout: int = 100,
    size: int = 128,
    seed: int = 0,
    task: DetTask = "detect",
    min_objects: int = 1,
    max_objects: int = 4,
    scale: tuple[float, float] = (1.0, 2.5),
    max_overlap: float = 0.3,
    background: str = "noise",
    source: Path | str | None = None,
) -> CompositeDataset:
    """Write composited scenes under ``root`` and return where they are.

    Layout: ``seed/images/*.png`` + ``seed/labels/*.txt``, ``holdout/images`` +
    ``holdout/labels`` (YOLO: ``cls cx cy w h`` normalised for ``task="detect"``, polygons
    for ``"segment"``; class index = position in ``classes``), ``pool/*.png`` (no labels),
    ``data.yaml`` (``train: seed/images``, ``val: holdout/images``, ``names``) and
    ``truth.json`` (every scene's objects, keyed by item id = sha256 of the PNG bytes).
    Existing ``seed``/``holdout``/``pool`` folders under ``root`` are replaced.

    ``classes``: Fashion-MNIST class names or indices (see :func:`resolve_classes`).
    Items come from disjoint Fashion-MNIST images: seed and pool from the train split, the
    holdout from the test split. ``source``: folder of the IDX files (default
    :func:`~pseudolabel.sim.fashion.fashion_dir`). Deterministic for a given ``seed``
    (seed and holdout scenes do not depend on ``n_pool``).
    Raises :class:`~pseudolabel.sim.fashion.DatasetMissing` when the IDX files are absent.
    """
    if task not in ("detect", "segment"):
        raise ValueError(f"task {task!r} is not one of 'detect', 'segment'")
    for name, v in (("n_seed", n_seed), ("n_pool", n_pool), ("n_holdout", n_holdout)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    names, fidx = resolve_classes(classes)
    try:
        x_tr, y_tr = load_fashion("train", root=source)
        x_te, y_te = load_fashion("test", root=source)
    except DatasetMissing as e:
        raise DatasetMissing(f"Fashion-MNIST not found in {fashion_dir(source)} ({e}); {INSTALL_HINT}") from None
    to_ours = np.full(len(FASHION_CLASSES), -1, dtype=np.int64)
    to_ours[list(fidx)] = np.arange(len(fidx))
    base = np.random.default_rng(seed)
    tr = base.permutation(np.flatnonzero(to_ours[y_tr] >= 0))
    te = base.permutation(np.flatnonzero(to_ours[y_te] >= 0))
    need_tr, need_te = (n_seed + n_pool) * max_objects, n_holdout * max_objects
    if need_tr > len(tr) or need_te > len(te):
        raise ValueError(
            f"{n_seed} seed + {n_pool} pool scenes need {need_tr} train items and {n_holdout} "
            f"holdout scenes {need_te} test items of classes {list(names)!r}; the splits hold "
            f"{len(tr)} and {len(te)}: ask for fewer scenes or max_objects"
        )

    root = Path(root)
    for sub in ("seed", "holdout", "pool"):
        shutil.rmtree(root / sub, ignore_errors=True)
    truth: dict[str, tuple[Box, ...]] = {}
    paths: dict[str, str] = {}
    splits: dict[str, Split] = {}
    plan: list[tuple[Split, int, np.ndarray, np.ndarray, np.ndarray, Path]] = [
        ("seed", n_seed, tr[:n_seed * max_objects], x_tr, y_tr, root / "seed" / "images"),
        ("pool", n_pool, tr[n_seed * max_objects:need_tr], x_tr, y_tr, root / "pool"),
        ("holdout", n_holdout, te[:need_te], x_te, y_te, root / "holdout" / "images"),
    ]
    for code, (split, n, idx, xs, ys, folder) in enumerate(plan):
        folder.mkdir(parents=True, exist_ok=True)
        items: list[Item] = []
        for i in range(n):
            chunk = idx[i * max_objects:(i + 1) * max_objects]
            rng = np.random.default_rng([seed, code, i])
            image, boxes = make_scene(
                rng, xs[chunk], to_ours[ys[chunk]], classes=names, size=size,
                min_objects=min_objects, max_objects=max_objects, scale=scale,
                max_overlap=max_overlap, background=background,
            )
            data = _png_bytes(image)
            iid = sha256_bytes(data)  # the item id ingest will give the file
            if iid in truth:
                raise ValueError(f"scene {split} {i} has the same bytes as {paths[iid]}; change the seed")
            path = folder / f"{split}_{i:05d}.png"
            path.write_bytes(data)
            items.append(Item(iid, path, size, size))
            truth[iid] = tuple(boxes)
            paths[iid] = path.relative_to(root).as_posix()
            splits[iid] = split
        if split != "pool":
            write_yolo(folder.parent / "labels", items, {it.id: truth[it.id] for it in items},
                       classes=names, task=task, image_root=folder)

    yaml_lines = [f"path: {json.dumps(str(root.resolve()))}", "train: seed/images",
                  "val: holdout/images", "names:"]
    yaml_lines += [f"  {i}: {json.dumps(c)}" for i, c in enumerate(names)]
    (root / "data.yaml").write_text("\n".join(yaml_lines) + "\n", encoding="utf-8")
    doc = {
        "format": "pseudolabel composite truth v1",
        "task": task, "classes": list(names), "size": size, "seed": seed,
        "units": "pixels, xyxy with exclusive x2/y2 edges; polygon points are pixel corners",
        "items": {iid: {"path": paths[iid], "split": splits[iid],
                        "boxes": [box_to_dict(b) for b in truth[iid]]} for iid in truth},
    }
    (root / TRUTH_FILE).write_text(json.dumps(doc), encoding="utf-8")
    return _dataset(root, task=task, classes=names, size=size, truth=truth, paths=paths, splits=splits)
