"""Fashion-MNIST from its original IDX files (Debian's ``dataset-fashion-mnist`` package), and
an export to PNG folders for labelling campaigns and benchmarks.

Fashion-MNIST: 70,000 grayscale 28x28 images of clothing in 10 classes (60,000 train,
10,000 test). The files are read with gzip + numpy; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
# The official class names with filesystem-safe spellings ("T-shirt/top" -> "T-shirt_top").
FASHION_CLASSES: list[str] = [
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_DTYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                                    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetMissing(FileNotFoundError):
    """The Fashion-MNIST files are not installed; the message says how to install them."""


@dataclass(frozen=True)
class ExportedDataset:
    """An exported image set (same fields as ``pseudolabel.sim.demo.DemoData``).

    ``root``: folder holding ``seed/<class>/``, ``holdout/<class>/`` and ``pool/``;
    ``truth``: item id (sha256 of the PNG bytes) -> true class name, for every exported image.
    """

    root: Path
    truth: dict[str, str]


def fashion_dir(root: Path | str | None = None) -> Path:
    """The folder with the IDX files: ``root``, else ``$PSEUDOLABEL_FASHION_DIR``, else
    :data:`DEFAULT_DIR`."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("PSEUDOLABEL_FASHION_DIR") or DEFAULT_DIR)


def read_idx(path: Path | str) -> np.ndarray:
    """Read one IDX file (gzip-compressed when the name ends in ``.gz``) into an array whose
    shape is the one the header declares. Raises ``ValueError`` naming the file for a bad
    header or a size that does not match it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] < 1:
        raise ValueError(f"{path}: not an IDX file (magic bytes {data[:4].hex()!r}; expected 0000<type><ndim>)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: header declares shape {shape} ({expected} bytes of data) "
                         f"but the file holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def load_fashion(split: Literal["train", "test"] = "train", *,
                 root: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 (0 = background) and labels ``(N,)`` int64 in 0..9
    (indices into :data:`FASHION_CLASSES`). N = 60,000 for ``train``, 10,000 for ``test``.

    Raises :class:`DatasetMissing` (telling how to install the package) when the files are
    absent, ``ValueError`` for an unknown split or inconsistent files.
    """
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    d = fashion_dir(root)
    img_path, lab_path = (d / n for n in _FILES[split])
    missing = [str(p) for p in (img_path, lab_path) if not p.is_file()]
    if missing:
        raise DatasetMissing(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            f"`apt-get install dataset-fashion-mnist` (files go to {DEFAULT_DIR}), or point "
            "PSEUDOLABEL_FASHION_DIR at a folder holding the four *-ubyte.gz files"
        )
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{d}: images {images.shape} and labels {labels.shape} do not match "
                         "(expected (N, 28, 28) and (N,))")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_CLASSES)):
        raise ValueError(f"{lab_path}: labels outside 0..{len(FASHION_CLASSES) - 1}")
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)


def export_fashion(
    root: Path, *, n_pool: int = 3000, n_holdout: int = 1000, seed_per_class: int = 2, seed: int = 0,
    size: int = 28, source: Path | str | None = None,
) -> ExportedDataset:
    """Write a Fashion-MNIST subset as PNGs: ``seed/<class>/``, ``holdout/<class>/``, ``pool/``.

    Seed (``seed_per_class`` per class) and pool (``n_pool`` images, class mix as drawn) come
    from the train split, the holdout (``n_holdout``) from the test split, so the holdout never
    shares an image with the training data. ``size``: side in pixels (28 = native). Deterministic
    for a given ``seed``; existing ``seed``/``holdout``/``pool`` folders under ``root`` are
    replaced. Two identical images would share an item id; the truth keeps the later one.
    """
    from PIL import Image

    from pseudolabel.data.images import resize_image, sha256_file

    if seed_per_class < 1:
        raise ValueError(f"seed_per_class must be >= 1, got {seed_per_class}")
    if n_pool < 1 or n_holdout < 1:
        raise ValueError(f"n_pool and n_holdout must be >= 1, got n_pool={n_pool}, n_holdout={n_holdout}")
    x_tr, y_tr = load_fashion("train", root=source)
    x_te, y_te = load_fashion("test", root=source)
    if n_pool + seed_per_class * len(FASHION_CLASSES) > len(x_tr):
        raise ValueError(f"n_pool={n_pool} is larger than the train split allows ({len(x_tr)} images)")
    if n_holdout > len(x_te):
        raise ValueError(f"n_holdout={n_holdout} is larger than the test split ({len(x_te)} images)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_tr))
    seed_idx: list[int] = []
    for c in range(len(FASHION_CLASSES)):
        seed_idx += order[y_tr[order] == c][:seed_per_class].tolist()
    taken = set(seed_idx)
    pool_idx = [int(i) for i in order if int(i) not in taken][:n_pool]
    hold_idx = rng.permutation(len(x_te))[:n_holdout].tolist()

    for sub in ("seed", "holdout", "pool"):
        shutil.rmtree(root / sub, ignore_errors=True)
    truth: dict[str, str] = {}

    def write(img: np.ndarray, label: int, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        resize_image(Image.fromarray(img, mode="L"), size, resample=Image.Resampling.BICUBIC).save(path)
        truth[sha256_file(path)] = FASHION_CLASSES[label]

    for i in seed_idx:
        write(x_tr[i], int(y_tr[i]), root / "seed" / FASHION_CLASSES[y_tr[i]] / f"train_{i:05d}.png")
    for i in hold_idx:
        write(x_te[i], int(y_te[i]), root / "holdout" / FASHION_CLASSES[y_te[i]] / f"test_{i:05d}.png")
    for i in pool_idx:
        # The pool is unlabelled: no class in the path.
        write(x_tr[i], int(y_tr[i]), root / "pool" / f"train_{i:05d}.png")
    return ExportedDataset(root=root, truth=truth)
