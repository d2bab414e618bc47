"""Reading image files robustly: EXIF orientation, grayscale/RGBA/16-bit/CMYK/palette modes.

Every loader in the project goes through :func:`load_rgb` (or :func:`rgb_from_bytes` for bytes
read from an object store: the same decoder) so that training, inference and ingest see the
same pixels. Models that take a fixed square input read files with :func:`load_resized`,
:func:`load_chw` or :func:`load_chw_batch` (decode, then :func:`resize_image`), so every
classifier, MC-dropout pass and self-supervised pretraining resizes the same way.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


class ImageError(ValueError):
    """A file that cannot be used as an image; the message says why."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``: the item id of a file holding these bytes (= :func:`sha256_file`)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes (the item id), read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer grayscale: rescale to 8 bits by the actual range, not by
        # truncation (which would turn most 16-bit images black).
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency on white, as viewers (and Label Studio) show it.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1, ...


def rgb_from_bytes(data: bytes, *, name: str | Path) -> Image.Image:
    """Decode the bytes of an image file exactly as :func:`load_rgb` decodes the file: fully
    decoded 8-bit RGB, EXIF orientation applied. For bytes that never sat in a local file
    (an object-store read); ``name`` (the file's path or URI) starts every error message.

    Raises :class:`ImageError` for zero bytes, non-image, truncated or corrupt data.
    """
    if not data:
        raise ImageError(f"{name}: zero-byte file")
    return _decode(io.BytesIO(data), name)


def load_rgb(path: Path | str) -> Image.Image:
    """Open ``path`` fully decoded as 8-bit RGB with EXIF orientation applied.

    Raises :class:`ImageError` naming the file for anything unreadable: missing, zero bytes,
    not an image, truncated or corrupt.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageError(f"{path}: cannot read file ({e.strerror or e})") from e
    if size == 0:
        raise ImageError(f"{path}: zero-byte file")
    return _decode(path, path)


def _decode(src: Path | BinaryIO, name: str | Path) -> Image.Image:
    """The one decoder behind :func:`load_rgb` and :func:`rgb_from_bytes`; errors start with ``name``."""
    try:
        with Image.open(src) as img:
            img.load()  # force a full decode: truncated files fail here, not later
            upright = ImageOps.exif_transpose(img) or img
            return _to_rgb(upright)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise ImageError(f"{name}: truncated image file ({msg})") from e
        if "cannot identify image file" in msg:
            raise ImageError(f"{name}: not an image (cannot identify format)") from e
        raise ImageError(f"{name}: corrupt or unreadable image ({msg})") from e


# --------------------------------------------------------------------------- fixed-size input


def resize_image(img: Image.Image, size: int | tuple[int, int], *,
                 resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """``img`` resized to ``size`` pixels (a square side, or ``(width, height)``; aspect ratio
    not kept) with ``resample``; returned as it is when it already has that size."""
    wh = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if wh[0] <= 0 or wh[1] <= 0:
        raise ValueError(f"resize size {size!r} must be positive pixels")
    return img if img.size == wh else img.resize(wh, resample)


def load_resized(path: Path | str, size: int | tuple[int, int], *,
                 resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """:func:`load_rgb` then :func:`resize_image`: 8-bit RGB of ``size`` pixels."""
    return resize_image(load_rgb(path), size, resample=resample)


def load_chw(path: Path | str, size: int, *,
             resample: Image.Resampling = Image.Resampling.BILINEAR) -> torch.Tensor:
    """One file as a ``(3, size, size)`` uint8 tensor (RGB, channels first, not normalised),
    decoded and resized by :func:`load_resized`."""
    import torch

    arr = np.array(load_resized(path, size, resample=resample), dtype=np.uint8)  # (S, S, 3), writable
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_chw_batch(paths: Sequence[Path | str], size: int, *,
                   resample: Image.Resampling = Image.Resampling.BILINEAR) -> torch.Tensor:
    """Files as one ``(N, 3, size, size)`` uint8 tensor (:func:`load_chw` of each, in order)."""
    import torch

    out = torch.empty((len(paths), 3, int(size), int(size)), dtype=torch.uint8)
    for i, path in enumerate(paths):
        out[i] = load_chw(path, size, resample=resample)
    return out
