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
:data:`OP_RANGES`. Every op works on the whole batch at once with per-image parameters
(geometric ops: one ``affine_grid`` + ``grid_sample`` call with a matrix per image; colour
ops: torchvision's blend formulas with a factor per image), so a strong view of B images
costs a few dozen tensor calls, not B Python iterations; the ops follow torchvision's
definitions (``adjust_contrast``, ``adjust_sharpness``, ``posterize`` ...) without its
one-image-at-a-time parameters.

Why this module is over 400 lines: every augmentation op of RandAugment as a batched,
generator-driven tensor function, with its analytical inverse for the weak view; the ops share
helpers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

# (batch (n, 3, H, W), magnitudes (n,) on the CPU, generator, fill) -> batch
Op = Callable[[torch.Tensor, torch.Tensor, torch.Generator, float], torch.Tensor]

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
# batched ops: x (n, 3, H, W) in [0, 1], m (n,) magnitudes in [0, 1] on the CPU, one call per
# op for the whole batch (random signs / positions drawn per image from the generator)


def _signs(n: int, g: torch.Generator) -> torch.Tensor:
    """(n,) of +1 / -1, each with probability 1/2."""
    return torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n,) CPU values -> (n, 1, 1, 1) on ``x``'s device and dtype, for broadcasting."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _warp(x: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor, fill: float) -> torch.Tensor:
    """Resample every image through its own affine map, in one ``grid_sample`` call.

    ``linear`` (n, 2, 2) and ``shift`` (n, 2) map an output pixel position to the input one,
    both in pixels relative to the image centre (x right, y down); bilinear; pixels that fall
    outside the image take ``fill``.
    """
    n, _, h, w = x.shape
    # Centred pixels u relate to grid_sample's normalised coordinates (align_corners=False)
    # by u = x_norm * W / 2, so theta = D^-1 (linear) D with D = diag(W/2, H/2).
    d = torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64)
    theta = torch.empty(n, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = linear.to(torch.float64) * d.view(1, 1, 2) / d.view(1, 2, 1)
    theta[:, :, 2] = shift.to(torch.float64) / d.view(1, 2)
    grid = torch.nn.functional.affine_grid(theta.to(device=x.device, dtype=x.dtype), [n, 3, h, w],
                                           align_corners=False)
    # A channel of ones, resampled alongside, says how much of each output pixel came from
    # inside the image; the rest is filled.
    both = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    out = torch.nn.functional.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :3] + fill * (1.0 - out[:, 3:])


def _eye(n: int) -> torch.Tensor:
    return torch.eye(2, dtype=torch.float64).expand(n, 2, 2).clone()


# Geometric ops as maps: (n, H, W, m (n,), generator) -> (linear (n, 2, 2), shift (n, 2)), the
# output -> input map of :func:`_warp`. Every image's map is drawn here; one warp applies them
# all, so a strong view resamples each image once per slot whatever op it drew.
Geometry = Callable[[int, int, int, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _no_shift(n: int) -> torch.Tensor:
    return torch.zeros(n, 2, dtype=torch.float64)


def _rotate_map(n: int, h: int, w: int, m: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.deg2rad(_signs(n, g).double() * 30.0 * m.double())
    cos, sin = torch.cos(a), torch.sin(a)
    # The inverse of a rotation by a is the rotation by -a (the transpose).
    inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    return inv, _no_shift(n)


def _shear_map(n: int, m: torch.Tensor, g: torch.Generator, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = _eye(n)
    # The inverse of the shear [[1, t], [0, 1]] is [[1, -t], [0, 1]].
    inv[:, axis, 1 - axis] = -torch.tan(_signs(n, g).double() * 0.3 * m.double())
    return inv, _no_shift(n)


def _shear_x_map(n: int, h: int, w: int, m: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return _shear_map(n, m, g, 0)


def _shear_y_map(n: int, h: int, w: int, m: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return _shear_map(n, m, g, 1)


def _scale_map(n: int, h: int, w: int, m: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    f = 1.0 + _signs(n, g).double() * 0.3 * m.double()
    return _eye(n) / f.view(-1, 1, 1), _no_shift(n)


def _translate_map(n: int, side: int, m: torch.Tensor, g: torch.Generator, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    shift = _no_shift(n)
    # Output pixel u shows input u - t: the content moves by t.
    shift[:, axis] = -_signs(n, g).double() * 0.3 * m.double() * side
    return _eye(n), shift


def _translate_x_map(n: int, h: int, w: int, m: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return _translate_map(n, w, m, g, 0)


def _translate_y_map(n: int, h: int, w: int, m: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return _translate_map(n, h, m, g, 1)


def _crop_map(n: int, h: int, w: int, m: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a (1 - 0.4 m) part of each side at a random place, resized back (bilinear)."""
    ch = torch.clamp(torch.round(h * (1 - 0.4 * m.double())), min=1)
    cw = torch.clamp(torch.round(w * (1 - 0.4 * m.double())), min=1)
    top = torch.floor(torch.rand(n, generator=g).double() * (h - ch + 1))
    left = torch.floor(torch.rand(n, generator=g).double() * (w - cw + 1))
    # Output pixel i samples input left + (i + 0.5) * cw / W - 0.5 (resize, align_corners=False);
    # in centred pixels: u' = u * cw / W + left + cw / 2 - W / 2.
    linear = torch.zeros(n, 2, 2, dtype=torch.float64)
    linear[:, 0, 0], linear[:, 1, 1] = cw / w, ch / h
    return linear, torch.stack([left + cw / 2 - w / 2, top + ch / 2 - h / 2], -1)


_GEOMETRY: dict[str, Geometry] = {
    "rotate": _rotate_map,
    "shear_x": _shear_x_map,
    "shear_y": _shear_y_map,
    "scale": _scale_map,
    "translate_x": _translate_x_map,
    "translate_y": _translate_y_map,
    "crop": _crop_map,
}


def _geometric(name: str) -> Op:
    def op(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
        linear, shift = _GEOMETRY[name](len(x), x.shape[-2], x.shape[-1], m, g)
        return _warp(x, linear, shift, fill)

    op.__name__ = f"_{name}"
    return op


def _hflip(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    return x.flip(-1)


def _factor(m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return 1.0 + _signs(len(m), g) * 0.9 * m.float()


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) luma (ITU-R 601, as torchvision's rgb_to_grayscale)."""
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``f * x + (1 - f) * other`` per image, clamped to [0, 1] (torchvision's blend)."""
    f4 = _per_image(f, x)
    return (f4 * x + (1.0 - f4) * other).clamp(0.0, 1.0)


def _brightness(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), _factor(m, g))


def _contrast(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), _factor(m, g))


def _saturation(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    return _blend(x, _grey(x), _factor(m, g))


def _sharpness(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    """Blend with a 3x3 smoothed copy (1s around a 5, / 13; border pixels kept), as torchvision."""
    f = _factor(m, g)
    h, w = x.shape[-2:]
    if h <= 2 or w <= 2:
        return x.clone()
    kernel = torch.full((3, 3), 1.0 / 13.0, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0 / 13.0
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = torch.nn.functional.conv2d(x, kernel.expand(3, 1, 3, 3), groups=3)
    return _blend(x, blurred, f)


def _posterize(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    levels = _per_image(torch.pow(2.0, 8 - torch.round(4 * m.double())), x)
    return torch.minimum((x * levels).floor(), levels - 1) / levels


def _gaussian_noise(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    return (x + 0.15 * _per_image(m, x) * noise).clamp(0.0, 1.0)


def _salt_and_pepper(x: torch.Tensor, m: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    return _sp(x, 0.1 * m.double(), g)


_OPS: dict[str, Op] = {
    "hflip": _hflip,
    **{name: _geometric(name) for name in _GEOMETRY},
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
    "sharpness": _sharpness,
    "posterize": _posterize,
    "gaussian_noise": _gaussian_noise,
    "salt_and_pepper": _salt_and_pepper,
}


def _sp(x: torch.Tensor, fraction: float | torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Salt and pepper with one ``fraction`` or a (n,) fraction per image."""
    n, _, h, w = x.shape
    u = torch.rand((n, 1, h, w), generator=g).to(x.device)
    frac = torch.as_tensor(fraction, dtype=torch.float64).expand(n).to(device=x.device, dtype=u.dtype).view(-1, 1, 1, 1)
    out = torch.where(u < frac / 2, torch.zeros((), dtype=x.dtype, device=x.device), x)
    return torch.where((u >= frac / 2) & (u < frac), torch.ones((), dtype=x.dtype, device=x.device), out)


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
    (the square is clipped at the borders). ``size`` in (0, 1]. One masked write for the
    whole batch."""
    _check_batch(x)
    _check_generator(generator)
    size = _check_unit("size", size, lo_open=True)
    fill = _check_unit("fill", fill)
    n, _, h, w = x.shape
    max_side = max(1, round(size * min(h, w)))
    sides = torch.randint(1, max_side + 1, (n,), generator=generator)
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    top, left = (cy - sides // 2).clamp(min=0), (cx - sides // 2).clamp(min=0)
    bottom, right = (cy - sides // 2 + sides).clamp(max=h), (cx - sides // 2 + sides).clamp(max=w)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    mask = ((rows >= top.view(-1, 1, 1)) & (rows < bottom.view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1)) & (cols < right.view(-1, 1, 1)))
    value = torch.tensor(fill, dtype=x.dtype, device=x.device)
    return torch.where(mask.unsqueeze(1).to(x.device), value, x)


def weak_augment(
    x: torch.Tensor, *, generator: torch.Generator, pad: int | None = None, hflip: bool = True
) -> torch.Tensor:
    """FixMatch's weak view: a per-image random shift of up to ``pad`` pixels each way
    (pad with repeated edge pixels, crop back to ``H x W``), then a horizontal flip with
    probability 1/2 when ``hflip``. ``pad`` defaults to 12.5% of the width (4 px at 32 px);
    0 turns the shift off. Whole-batch tensor ops (no per-image loop).

    Shape- and value-preserving, so it also works on normalised batches (the classifier uses
    it there).
    """
    _check_batch(x)
    _check_generator(generator)
    n, c, h, w = x.shape
    if pad is None:
        pad = round(0.125 * w)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0 (pixels), got {pad!r}")
    if pad > 0 and n > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).to(x.device)
        # Images that drew the same offset share one slice: at most (2 pad + 1)^2 copies,
        # whatever the batch size.
        key = offsets[:, 0] * (2 * pad + 1) + offsets[:, 1]
        out = torch.empty_like(x)
        for k in torch.unique(key).tolist():
            idx = torch.nonzero(key == k).view(-1)
            dy, dx = divmod(int(k), 2 * pad + 1)
            out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
        x = out
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def apply_op(
    x: torch.Tensor, name: str, magnitude: float, *, generator: torch.Generator, fill: float = 0.5
) -> torch.Tensor:
    """Apply op ``name`` (one of :data:`STRONG_OPS`) to every image at ``magnitude`` in
    [0, 1] (random sign / position per image), in one batched call. Geometric ops fill
    uncovered pixels with ``fill``. Output clamped to [0, 1]."""
    _check_batch(x)
    _check_generator(generator)
    if name not in _OPS:
        raise ValueError(f"unknown augmentation op {name!r}; choose from {list(STRONG_OPS)!r}")
    m = _check_unit("magnitude", magnitude)
    fill = _check_unit("fill", fill)
    if len(x) == 0:
        return x.clone()
    return _OPS[name](x, torch.full((len(x),), m, dtype=torch.float64), generator, fill).clamp_(0.0, 1.0)


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

    Cost: the images are grouped by the op they drew, so the work is a fixed number of
    batched calls whatever the batch size (no per-image Python loop): per slot, one call per
    colour op drawn and a single resampling for all the geometric ones.
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
    y = weak_augment(x, generator=generator, pad=pad, hflip=hflip)
    if y is x:              # no shift and no flip: weak_augment returned the input itself
        y = x.clone()
    n, _, h, w = y.shape
    # n_ops distinct ops per image: the first n_ops of a random permutation (argsort of noise).
    choice = torch.rand(n, len(names), generator=generator).argsort(dim=1)[:, :n_ops]
    mags = torch.rand(n, n_ops, generator=generator, dtype=torch.float64) * magnitude
    for slot in range(n_ops):
        linear = torch.empty(n, 2, 2, dtype=torch.float64)
        shift = torch.empty(n, 2, dtype=torch.float64)
        warped: list[torch.Tensor] = []
        # The images of each op, from one sort: op k owns order[start_k : start_k + count_k].
        order = torch.argsort(choice[:, slot], stable=True)
        counts = torch.bincount(choice[:, slot], minlength=len(names)).tolist()
        starts = [0]
        for c in counts[:-1]:
            starts.append(starts[-1] + c)
        for k, name in enumerate(names):
            if not counts[k]:
                continue
            rows = order[starts[k] : starts[k] + counts[k]]
            if name in _GEOMETRY:
                linear[rows], shift[rows] = _GEOMETRY[name](len(rows), h, w, mags[rows, slot], generator)
                warped.append(rows)
            else:
                idx = rows.to(y.device)
                y[idx] = _OPS[name](y[idx], mags[rows, slot], generator, fill)
        if warped:
            # One resampling for every image that drew a geometric op in this slot.
            rows = torch.cat(warped)
            idx = rows.to(y.device)
            y[idx] = _warp(y[idx], linear[rows], shift[rows], fill)
    y = y.clamp(0.0, 1.0)
    if cutout_size > 0:
        y = cutout(y, float(cutout_size), generator=generator, fill=fill)
    return y
