"""pseudolabel.data.images: the one decode + resize every fixed-input model uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pseudolabel.data.images import load_chw, load_chw_batch, load_resized, load_rgb, resize_image


def _files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    rgba = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (30, 50, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    grey = tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(grey)
    # A JPEG stored sideways with EXIF orientation 6: upright it is 20 wide, 40 high.
    rotated = tmp_path / "c.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(rotated, exif=exif.tobytes())
    return [rgba, grey, rotated]


def _by_hand(path: Path, size: int) -> np.ndarray:
    """What the classifiers, SimCLR and MC dropout each did before: decode, bilinear resize
    unless already square of that size, channels first."""
    img = load_rgb(path)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def test_load_chw_gives_the_pixels_of_the_pipeline_it_replaces(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert load_rgb(files[2]).size == (20, 40)                  # EXIF applied before resizing
    for path in files:
        x = load_chw(path, 16)
        assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and x.is_contiguous()
        np.testing.assert_array_equal(x.numpy(), _by_hand(path, 16))
    batch = load_chw_batch(files, 16)
    assert batch.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(batch[2].numpy(), _by_hand(files[2], 16))
    assert load_chw_batch([], 16).shape == (0, 3, 16, 16)


def test_resize_image_sizes_and_resampling(tmp_path: Path) -> None:
    img = load_rgb(_files(tmp_path)[0])                          # 50 x 30
    assert resize_image(img, (50, 30)) is img                   # already that size: untouched
    assert resize_image(img, np.int64(8)).size == (8, 8)
    assert load_resized(tmp_path / "a.png", (10, 6)).size == (10, 6)
    near = np.asarray(resize_image(img, 100, resample=Image.Resampling.NEAREST))
    assert set(np.unique(near)) <= set(np.unique(np.asarray(img)))  # nearest invents no grey level
    with pytest.raises(ValueError, match="positive pixels"):
        resize_image(img, 0)
