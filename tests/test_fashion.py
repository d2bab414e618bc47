"""Fashion-MNIST reader (the real IDX files) and the PNG export."""

from __future__ import annotations

import gzip
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pseudolabel.sim.fashion import (
    FASHION_CLASSES,
    DatasetMissing,
    export_fashion,
    fashion_dir,
    load_fashion,
    read_idx,
)
from pseudolabel.data.images import sha256_file


def _need_dataset() -> None:
    if (fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        return
    msg = (f"Fashion-MNIST not installed at {fashion_dir()} "
           "(apt-get install dataset-fashion-mnist)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs the dataset: {msg}")
    pytest.skip(msg)


def test_reader_returns_images_and_labels() -> None:
    _need_dataset()
    x, y = load_fashion("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10_000,) and set(np.unique(y).tolist()) == set(range(10))
    assert x.max() > 200 and x.min() == 0      # real images, not an empty buffer
    assert np.bincount(y).tolist() == [1000] * 10   # the test split is balanced


def test_export_writes_pngs_and_truth(tmp_path: Path) -> None:
    _need_dataset()
    data = export_fashion(tmp_path / "f", n_pool=50, n_holdout=30, seed_per_class=1, seed=3)
    seed_files = sorted((tmp_path / "f" / "seed").rglob("*.png"))
    assert {p.parent.name for p in seed_files} == set(FASHION_CLASSES)
    assert len(seed_files) == 10
    assert len(list((tmp_path / "f" / "pool").glob("*.png"))) == 50
    assert len(list((tmp_path / "f" / "holdout").rglob("*.png"))) == 30
    for p in seed_files:               # truth agrees with the folder a labelled image sits in
        assert data.truth[sha256_file(p)] == p.parent.name
    assert set(Counter(data.truth.values())) <= set(FASHION_CLASSES)
    again = export_fashion(tmp_path / "f", n_pool=50, n_holdout=30, seed_per_class=1, seed=3)
    assert again.truth == data.truth   # deterministic: same ids


def test_missing_files_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match="apt-get install dataset-fashion-mnist"):
        load_fashion("train", root=tmp_path)


def test_read_idx_checks_header_and_size(tmp_path: Path) -> None:
    good = tmp_path / "ok-idx1-ubyte.gz"
    with gzip.open(good, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 8, 9]))
    assert read_idx(good).tolist() == [7, 8, 9]
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes([7, 8, 9]))
    with pytest.raises(ValueError, match="short.gz.*declares shape"):
        read_idx(short)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
