"""The image side of batched inference: stream items from disk to a device, letterbox there.

Model-agnostic building blocks that model adapters compose into a streaming ``predict``
(:meth:`pseudolabel.models.ultralytics_yolo.YoloModel.predict` for detect / segment):

- :func:`stream_images`: items -> batches of decoded images **on the device**. Files are read
  and decoded (EXIF orientation applied, exactly as :func:`pseudolabel.data.images.load_rgb`)
  in DataLoader worker processes, batches are collated as lists (sizes differ) into pinned
  memory when the device is CUDA, and copied with ``non_blocking=True``. On CUDA, plain
  (upright, RGB / grey) JPEG files can instead be decoded in one call on the GPU with
  ``torchvision.io.decode_jpeg(..., device="cuda")``; anything else, or a GPU decode that
  fails, is decoded on the CPU. Items are pulled from the input iterable lazily (a few batches
  ahead of the consumer), so memory stays flat however long the stream is;
- :func:`letterbox`: the resize + pad that Ultralytics' ``LetterBox(auto=False, center=True)``
  does with OpenCV, in torch on the device (bilinear, ``align_corners=False``, no antialias =
  ``cv2.INTER_LINEAR``; same rounding of the new size and of the padding, pad value 114);
- :func:`default_batch_size`, :func:`default_workers`: defaults that fit the machine.

Nothing here imports a model framework.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pseudolabel.data.images import load_rgb
from pseudolabel.types import Item

PAD_VALUE = 114  # Ultralytics' letterbox grey
# On a CPU small batches run fastest (measured with yolo11n at 640 px, ONNX Runtime, one
# thread: 9.2 img/s at batch 2, 8.5 at 4, 7.9 at 16), but per-call overhead dominates for small
# inputs: a CPU batch holds about this many input pixels (two 640x640 images).
CPU_BATCH_PIXELS = 2 * 640 * 640
# Peak device memory of one image through a nano-size YOLO at inference, per input pixel
# (fp16 activations alive at once, NMS buffers, protos for segment), with a safety factor.
# 256 B/pixel = 105 MB per 640x640 image.
BYTES_PER_PIXEL = 256
MAX_AUTO_BATCH = 256
_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})


def default_workers() -> int:
    """Decoding worker processes: ``min(4, cpu_count - 1)``, at least 0 (0 = decode in the
    main process)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def default_batch_size(device: torch.device | str, image_size: int, *,
                       bytes_per_pixel: int = BYTES_PER_PIXEL, max_batch: int = MAX_AUTO_BATCH) -> int:
    """Images per forward pass.

    CUDA: half the currently free device memory divided by ``bytes_per_pixel * image_size**2``
    (a per-image estimate; the default suits nano/small YOLO models, pass a larger one for
    bigger networks), rounded down to a power of two, clamped to ``[1, max_batch]``.
    CPU: :data:`CPU_BATCH_PIXELS` divided by ``image_size**2``, rounded down to a power of two,
    clamped to ``[1, max_batch]`` (2 at 640 px, 32 at 128 px: large batches of large images do
    not run faster on a CPU).
    """
    device = torch.device(device)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer (pixels), got {image_size!r}")
    if device.type != "cuda":
        fit = CPU_BATCH_PIXELS // (image_size * image_size)
    else:
        free, _total = torch.cuda.mem_get_info(device)
        fit = int(0.5 * free) // (bytes_per_pixel * image_size * image_size)
    if fit < 1:
        return 1
    return max(1, min(max_batch, 2 ** int(math.log2(fit))))


# --------------------------------------------------------------------------------------
# reading and decoding (runs in DataLoader workers)


class _Sample(NamedTuple):
    """One decoded (or, for GPU decoding, read) file: ``data`` is ``(H, W, 3)`` uint8 when
    ``encoded`` is False, else the JPEG file's bytes as a 1-D uint8 tensor; ``position`` is the
    item's index in the streamed input."""

    position: int
    data: torch.Tensor
    encoded: bool


def _plain_jpeg_bytes(path: Path) -> torch.Tensor | None:
    """The file's bytes when the GPU can decode it to the same pixels as :func:`load_rgb`:
    a JPEG (by content, not by name) in RGB or greyscale with no EXIF rotation. Else None."""
    from PIL import Image

    try:
        with Image.open(path) as img:  # reads the header only
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            if img.getexif().get(0x0112, 1) != 1:  # EXIF orientation: let PIL rotate it
                return None
    except Exception:  # unreadable here: load_rgb will raise a proper ImageError
        return None
    data = path.read_bytes()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class _DecodeDataset(torch.utils.data.Dataset):
    """Map-style dataset whose keys are ``(index, path)``: the sampler carries the paths, so
    the workers never need the item list (which is streamed, not known up front)."""

    def __init__(self, *, encoded_jpeg: bool) -> None:
        self.encoded_jpeg = encoded_jpeg

    def __getitem__(self, key: tuple[int, str]) -> _Sample:
        index, path = key
        if self.encoded_jpeg and Path(path).suffix.lower() in _JPEG_SUFFIXES:
            raw = _plain_jpeg_bytes(Path(path))
            if raw is not None:
                return _Sample(index, raw, True)
        return _Sample(index, _decode_cpu(path), False)

    def __len__(self) -> int:  # never asked: the sampler drives iteration
        raise TypeError("_DecodeDataset is streamed; it has no length")


def _decode_cpu(path: str | Path) -> torch.Tensor:
    return torch.from_numpy(np.array(load_rgb(path), dtype=np.uint8))  # (H, W, 3), writable copy


def _collate_list(batch: list[_Sample]) -> list[_Sample]:
    return batch


def _gpu_decode(samples: Sequence[_Sample], paths: Sequence[Path], device: torch.device) -> list[torch.Tensor]:
    """Decode JPEG bytes on the GPU in one batched call; CPU fallback (whole batch) on failure."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg([s.data for s in samples], mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        return [_decode_cpu(p).to(device).permute(2, 0, 1) for p in paths]


# --------------------------------------------------------------------------------------
# streaming


def stream_images(
    items: Iterable[Item],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    workers: int | None = None,
    gpu_decode: bool | None = None,
    hflip: bool = False,
    prefetch_batches: int = 2,
) -> Iterator[tuple[list[Item], list[torch.Tensor]]]:
    """Yield ``(items, images)`` batches in input order; ``images[i]`` is item ``i`` decoded
    as a ``(3, H, W)`` uint8 RGB tensor on ``device`` (``H, W`` = the item's pixel size after
    EXIF orientation), mirrored left-right when ``hflip``.

    ``workers``: decoding processes (``None``: :func:`default_workers`; 0: decode in this
    process). ``gpu_decode``: decode plain JPEGs on the GPU (``None``: when ``device`` is CUDA).
    ``prefetch_batches``: batches each worker decodes ahead. At most about
    ``batch_size * (workers + 1) * prefetch_batches`` items are held at any time.

    Unreadable files raise :class:`pseudolabel.data.images.ImageError` naming the file.
    """
    device = torch.device(device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0 = decode in this process), got {workers!r}")
    cuda = device.type == "cuda"
    if gpu_decode is None:
        gpu_decode = cuda
    if gpu_decode and not cuda:
        raise ValueError(f"gpu_decode=True needs a CUDA device, got device {str(device)!r}")

    pending: dict[int, Item] = {}

    def keys() -> Iterator[tuple[int, str]]:
        for i, item in enumerate(items):
            if not isinstance(item, Item):
                raise ValueError(f"images[{i}] is {type(item).__name__} {item!r}; expected a pseudolabel.types.Item")
            pending[i] = item
            yield i, str(item.path)

    loader = torch.utils.data.DataLoader(
        _DecodeDataset(encoded_jpeg=bool(gpu_decode)),
        sampler=keys(),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate_list,
        prefetch_factor=prefetch_batches if workers else None,
        # Pinned host memory (filled by the loader's pinning thread) makes the non_blocking
        # copies below asynchronous: the host moves on while the copy engine works.
        pin_memory=cuda,
    )
    for batch in loader:
        batch_items = [pending.pop(s.position) for s in batch]
        images: list[torch.Tensor | None] = [None] * len(batch)
        enc = [k for k, s in enumerate(batch) if s.encoded]
        if enc:
            decoded = _gpu_decode([batch[k] for k in enc], [batch_items[k].path for k in enc], device)
            for k, img in zip(enc, decoded):
                images[k] = img
        for k, s in enumerate(batch):
            if not s.encoded:
                images[k] = s.data.to(device, non_blocking=True).permute(2, 0, 1)  # (3, H, W) view
        out = [img.flip(-1) if hflip else img for img in images if img is not None]
        yield batch_items, out


# --------------------------------------------------------------------------------------
# letterbox


@dataclass(frozen=True)
class LetterboxInfo:
    """Where an original image sits in the letterboxed square: ``shape`` = original
    ``(H, W)`` pixels; ``new_shape`` = resized ``(h, w)``; ``pad`` = ``(top, left)`` pixels."""

    shape: tuple[int, int]
    new_shape: tuple[int, int]
    pad: tuple[int, int]


def letterbox_params(height: int, width: int, size: int) -> LetterboxInfo:
    """Ultralytics ``LetterBox(new_shape=(size, size), auto=False, center=True)`` geometry:
    ``r = min(size / H, size / W)``, resized to ``(max(round(H r), 1), max(round(W r), 1))``,
    padding split with ``top = round(dh / 2 - 0.1)``, ``left = round(dw / 2 - 0.1)``."""
    r = min(size / height, size / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    return LetterboxInfo((height, width), (new_h, new_w), (round(dh - 0.1), round(dw - 0.1)))


def letterbox(
    images: Sequence[torch.Tensor],
    size: int,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    pad_value: int = PAD_VALUE,
) -> tuple[torch.Tensor, list[LetterboxInfo]]:
    """Resize and pad ``images`` (each ``(3, H, W)`` uint8, all on one device) into one
    ``(N, 3, size, size)`` batch in ``[0, 1]`` (``dtype``), as Ultralytics' ``LetterBox`` +
    ``/255`` would; returns it with the geometry of each image.

    The resize is bilinear with ``align_corners=False`` and no antialias (what
    ``cv2.INTER_LINEAR`` computes), rounded to whole grey levels as OpenCV's uint8 output is.
    Images of the same size are resized in one call.
    """
    if not images:
        raise ValueError("letterbox needs at least one image")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer (pixels), got {size!r}")
    device = images[0].device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((len(images), 3, size, size), dtype=dtype, device=device, memory_format=fmt)
    out.fill_(pad_value / 255.0)
    infos: list[LetterboxInfo] = []
    groups: dict[tuple[int, int], list[int]] = {}
    for n, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
            raise ValueError(f"images[{n}] has shape {tuple(img.shape)} dtype {img.dtype}; expected (3, H, W) uint8")
        h, w = int(img.shape[1]), int(img.shape[2])
        infos.append(letterbox_params(h, w, size))
        groups.setdefault((h, w), []).append(n)
    for (h, w), idxs in groups.items():
        info = infos[idxs[0]]
        (nh, nw), (top, left) = info.new_shape, info.pad
        x = torch.stack([images[i] for i in idxs]).float()  # (G, 3, h, w)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
            x = x.round_().clamp_(0, 255)
        x = x.div_(255.0).to(dtype)
        for j, i in enumerate(idxs):
            out[i, :, top : top + nh, left : left + nw] = x[j]
    return out, infos
