"""Batch image augmentations for consistency training (FixMatch's weak and strong views).

Every function takes a batch ``x`` of shape ``(N, 3, H, W)``, float, values in [0, 1], on any
device, and returns a new batch of the same shape, dtype and device with values in [0, 1].
Randomness comes only from the ``generator`` argument (a CPU :class:`torch.Generator`): random
parameters are drawn on the CPU and moved to ``x``'s device, so a given generator state gives
the same result on CPU and GPU (up to floating-point rounding of the ops) and the global RNG
is never touched.

- :func:`weak_augment`: random shift of up to ``pad`` pixels (pad-and-crop, edge pixels
  repeated) and, when ``hflip``, a horizontal flip with probability 1/2;
- :func:`strong_augment`: RandAugment as in FixMatch: per image, ``n_ops`` distinct ops drawn
  uniformly from :data:`STRONG_OPS`, each at a magnitude drawn uniformly from
  ``[0, magnitude]``, then Cutout (a square of side up to ``cutout`` x the image side filled
  with grey);
- :func:`apply_op`: one named op on every image at a fixed magnitude;
- :func:`salt_and_pepper`, :func:`cutout`: the two ops with a parameter of their own.

Magnitudes are normalised: 0 = identity (or nearly), 1 = the strongest setting, listed in
:data:`OP_RANGES`. Ops come from ``torchvision.transforms.v2.functional`` where one exists;
Gaussian and salt-and-pepper noise are written here because torchvision's ``gaussian_noise``
draws from the global RNG and has no salt-and-pepper op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.v2.functional as TF

Op = Callable[[torch.Tensor, float, torch.Generator, float], torch.Tensor]

# What magnitude 1 means for each op (magnitude m scales it linearly; signs are random).
OP_RANGES: dict[str, str] = {
    "hflip": "horizontal flip (magnitude ignored)",
    "rotate": "rotation by up to +-30 degrees",
    "shear_x": "horizontal shear by up to +-17 degrees (0.3 rad)",
    "shear_y": "vertical shear by up to +-17 degrees (0.3 rad)",
    "scale": "zoom by a factor 1 +- 0.3",
    "translate_x": "horizontal shift by up to +-30% of the width",
    "translate_y": "vertical shift by up to +-30% of the height",
    "crop": "crop keeping 1 - 0.4 of each side at a random place, resized back",
    "brightness": "brightness factor 1 +- 0.9",
    "contrast": "contrast factor 1 +- 0.9",
    "saturation": "saturation factor 1 +- 0.9 (no effect on grey images)",
    "sharpness": "sharpness factor 1 +- 0.9",
    "posterize": "keep 8 - 4 bits per channel",
    "gaussian_noise": "additive Gaussian noise, sigma up to 0.15",
    "salt_and_pepper": "up to 10% of pixels set to black or white",
}
STRONG_OPS: tuple[str, ...] = tuple(OP_RANGES)
_BILINEAR = TF.InterpolationMode.BILINEAR


# --------------------------------------------------------------------------------------
# validation


def _check_batch(x: torch.Tensor, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a float tensor with values in [0, 1], got dtype {x.dtype}")


def _check_unit(name: str, v: float, *, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
    if not (0 < v <= 1 if lo_open else 0 <= v <= 1):
        raise ValueError(f"{name} must be in {'(0, 1]' if lo_open else '[0, 1]'}, got {v!r}")
    return float(v)


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got {generator!r}")


# --------------------------------------------------------------------------------------
# single-image ops: img (3, H, W) in [0, 1], m in [0, 1]


def _sign(g: torch.Generator) -> float:
    return 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0


def _affine(img: torch.Tensor, fill: float, **kw: float | list[float]) -> torch.Tensor:
    params: dict[str, float | list[float]] = {"angle": 0.0, "translate": [0.0, 0.0], "scale": 1.0, "shear": [0.0, 0.0]}
    params.update(kw)
    return TF.affine(img, interpolation=_BILINEAR, fill=fill, **params)


def _rotate(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return _affine(img, fill, angle=_sign(g) * 30.0 * m)


def _shear_x(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return _affine(img, fill, shear=[_sign(g) * math.degrees(0.3 * m), 0.0])


def _shear_y(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return _affine(img, fill, shear=[0.0, _sign(g) * math.degrees(0.3 * m)])


def _scale(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return _affine(img, fill, scale=1.0 + _sign(g) * 0.3 * m)


def _translate_x(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return _affine(img, fill, translate=[_sign(g) * 0.3 * m * img.shape[-1], 0.0])


def _translate_y(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return _affine(img, fill, translate=[0.0, _sign(g) * 0.3 * m * img.shape[-2]])


def _crop(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    h, w = img.shape[-2:]
    ch, cw = max(1, round(h * (1 - 0.4 * m))), max(1, round(w * (1 - 0.4 * m)))
    top = int(torch.randint(0, h - ch + 1, (), generator=g))
    left = int(torch.randint(0, w - cw + 1, (), generator=g))
    return TF.resized_crop(img, top, left, ch, cw, [h, w], interpolation=_BILINEAR, antialias=True)


def _hflip(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return TF.horizontal_flip(img)


def _factor(m: float, g: torch.Generator) -> float:
    return 1.0 + _sign(g) * 0.9 * m


def _brightness(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return TF.adjust_brightness(img, _factor(m, g))


def _contrast(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return TF.adjust_contrast(img, _factor(m, g))


def _saturation(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return TF.adjust_saturation(img, _factor(m, g))


def _sharpness(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return TF.adjust_sharpness(img, _factor(m, g))


def _posterize(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return TF.posterize(img, 8 - round(4 * m))


def _gaussian_noise(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    noise = torch.randn(img.shape, generator=g).to(img.device, img.dtype)
    return (img + 0.15 * m * noise).clamp(0.0, 1.0)


def _salt_and_pepper(img: torch.Tensor, m: float, g: torch.Generator, fill: float) -> torch.Tensor:
    return _sp(img.unsqueeze(0), 0.1 * m, g)[0]


_OPS: dict[str, Op] = {
    "hflip": _hflip,
    "rotate": _rotate,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "scale": _scale,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
    "crop": _crop,
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
    "sharpness": _sharpness,
    "posterize": _posterize,
    "gaussian_noise": _gaussian_noise,
    "salt_and_pepper": _salt_and_pepper,
}


def _sp(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    u = torch.rand((n, 1, h, w), generator=g).to(x.device)
    out = torch.where(u < fraction / 2, torch.zeros((), dtype=x.dtype, device=x.device), x)
    return torch.where((u >= fraction / 2) & (u < fraction), torch.ones((), dtype=x.dtype, device=x.device), out)


# --------------------------------------------------------------------------------------
# public batch functions


def salt_and_pepper(x: torch.Tensor, fraction: float, *, generator: torch.Generator) -> torch.Tensor:
    """Set a random ``fraction`` of the pixels of each image to black (0) or white (1), half
    each on average; a pixel's three channels change together. ``x``: ``(N, 3, H, W)``."""
    _check_batch(x)
    _check_generator(generator)
    return _sp(x, _check_unit("fraction", fraction), generator)


def cutout(x: torch.Tensor, size: float, *, generator: torch.Generator, fill: float = 0.5) -> torch.Tensor:
    """Fill one square per image with ``fill`` (grey by default, as FixMatch): side drawn
    uniformly from 1 to ``size`` x min(H, W) pixels, centre uniformly anywhere on the image
    (the square is clipped at the borders). ``size`` in (0, 1]."""
    _check_batch(x)
    _check_generator(generator)
    size = _check_unit("size", size, lo_open=True)
    fill = _check_unit("fill", fill)
    n, _, h, w = x.shape
    max_side = max(1, round(size * min(h, w)))
    sides = torch.randint(1, max_side + 1, (n,), generator=generator).tolist()
    cy = torch.randint(0, h, (n,), generator=generator).tolist()
    cx = torch.randint(0, w, (n,), generator=generator).tolist()
    value = torch.tensor(fill, dtype=x.dtype, device=x.device)
    out = []
    for img, s, y, xc in zip(x, sides, cy, cx):
        top, left = max(0, y - s // 2), max(0, xc - s // 2)
        bottom, right = min(h, y - s // 2 + s), min(w, xc - s // 2 + s)
        out.append(TF.erase(img, top, left, bottom - top, right - left, value))
    return torch.stack(out)


def weak_augment(
    x: torch.Tensor, *, generator: torch.Generator, pad: int | None = None, hflip: bool = True
) -> torch.Tensor:
    """FixMatch's weak view: a per-image random shift of up to ``pad`` pixels each way
    (pad with repeated edge pixels, crop back to ``H x W``), then a horizontal flip with
    probability 1/2 when ``hflip``. ``pad`` defaults to 12.5% of the width (4 px at 32 px);
    0 turns the shift off.

    Shape- and value-preserving, so it also works on normalised batches (the classifier uses
    it there).
    """
    _check_batch(x)
    _check_generator(generator)
    n, _, h, w = x.shape
    if pad is None:
        pad = round(0.125 * w)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0 (pixels), got {pad!r}")
    if pad > 0 and n > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def apply_op(
    x: torch.Tensor, name: str, magnitude: float, *, generator: torch.Generator, fill: float = 0.5
) -> torch.Tensor:
    """Apply op ``name`` (one of :data:`STRONG_OPS`) to every image at ``magnitude`` in
    [0, 1] (random sign / position per image). Geometric ops fill uncovered pixels with
    ``fill``. Output clamped to [0, 1]."""
    _check_batch(x)
    _check_generator(generator)
    if name not in _OPS:
        raise ValueError(f"unknown augmentation op {name!r}; choose from {list(STRONG_OPS)!r}")
    m = _check_unit("magnitude", magnitude)
    fill = _check_unit("fill", fill)
    if len(x) == 0:
        return x.clone()
    return torch.stack([_OPS[name](img, m, generator, fill) for img in x]).clamp_(0.0, 1.0)


def strong_augment(
    x: torch.Tensor,
    *,
    generator: torch.Generator,
    n_ops: int = 2,
    magnitude: float = 1.0,
    cutout_size: float = 0.5,
    ops: Sequence[str] | None = None,
    hflip: bool = True,
    pad: int | None = None,
    fill: float = 0.5,
) -> torch.Tensor:
    """FixMatch's strong view: the weak view, then RandAugment with random magnitudes, then
    Cutout.

    First :func:`weak_augment` with ``pad`` and ``hflip`` (as the FixMatch reference code
    does, so a strong view is never milder than a weak one). Then per image: ``n_ops`` distinct ops drawn uniformly from ``ops`` (default
    :data:`STRONG_OPS`, without ``"hflip"`` when ``hflip`` is False, e.g. for digits or text),
    each applied at a magnitude drawn uniformly from ``[0, magnitude]``; then
    :func:`cutout` with ``cutout_size`` (0 turns it off). ``fill`` is the grey level of pixels
    uncovered by geometric ops and of the Cutout square.
    """
    _check_batch(x)
    _check_generator(generator)
    if isinstance(ops, str):
        raise ValueError(f"ops must be a sequence of op names, not the string {ops!r}")
    names = list(STRONG_OPS if ops is None else ops)
    unknown = [o for o in names if o not in _OPS]
    if unknown:
        raise ValueError(f"unknown augmentation ops {unknown!r}; choose from {list(STRONG_OPS)!r}")
    if not hflip:
        names = [o for o in names if o != "hflip"]
    if isinstance(n_ops, bool) or not isinstance(n_ops, int) or not 0 <= n_ops <= len(names):
        raise ValueError(f"n_ops must be an integer in [0, {len(names)}] (the number of ops to pick from), got {n_ops!r}")
    magnitude = _check_unit("magnitude", magnitude)
    fill = _check_unit("fill", fill)
    if not (isinstance(cutout_size, (int, float)) and not isinstance(cutout_size, bool) and 0 <= cutout_size <= 1):
        raise ValueError(f"cutout_size must be in [0, 1] (fraction of the image side), got {cutout_size!r}")
    if len(x) == 0:
        return x.clone()
    x = weak_augment(x, generator=generator, pad=pad, hflip=hflip)
    out = []
    for img in x:
        choice = torch.randperm(len(names), generator=generator)[:n_ops].tolist()
        mags = (torch.rand(n_ops, generator=generator) * magnitude).tolist()
        for k, m in zip(choice, mags):
            img = _OPS[names[k]](img, m, generator, fill)
        out.append(img)
    y = torch.stack(out).clamp_(0.0, 1.0)
    if cutout_size > 0:
        y = cutout(y, float(cutout_size), generator=generator, fill=fill)
    return y
