"""The batched augmentations agree with torchvision's one-image functions, image by image,
and a strong view of many images is a fixed number of tensor calls (no per-image loop)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pseudolabel.augment import STRONG_OPS, apply_op, cutout, strong_augment

BILINEAR = TF.InterpolationMode.BILINEAR


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 12, h: int = 20, w: int = 24) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=_gen(9))


def _affine(img: torch.Tensor, **kw: object) -> torch.Tensor:
    params: dict[str, object] = {"angle": 0.0, "translate": [0.0, 0.0], "scale": 1.0, "shear": [0.0, 0.0]}
    params.update(kw)
    return TF.affine(img, interpolation=BILINEAR, fill=0.5, **params)  # type: ignore[arg-type]


# For each op at magnitude 1, the two torchvision results (one per random sign) an image may get.
REFERENCES = {
    "rotate": lambda img, side: [_affine(img, angle=30.0), _affine(img, angle=-30.0)],
    "shear_x": lambda img, side: [_affine(img, shear=[math.degrees(s * 0.3), 0.0]) for s in (1, -1)],
    "shear_y": lambda img, side: [_affine(img, shear=[0.0, math.degrees(s * 0.3)]) for s in (1, -1)],
    "scale": lambda img, side: [_affine(img, scale=1.3), _affine(img, scale=0.7)],
    "translate_x": lambda img, side: [_affine(img, translate=[s * 0.3 * side[1], 0.0]) for s in (1, -1)],
    "translate_y": lambda img, side: [_affine(img, translate=[0.0, s * 0.3 * side[0]]) for s in (1, -1)],
    "brightness": lambda img, side: [TF.adjust_brightness(img, f) for f in (1.9, 0.1)],
    "contrast": lambda img, side: [TF.adjust_contrast(img, f) for f in (1.9, 0.1)],
    "saturation": lambda img, side: [TF.adjust_saturation(img, f) for f in (1.9, 0.1)],
    "sharpness": lambda img, side: [TF.adjust_sharpness(img, f) for f in (1.9, 0.1)],
    "posterize": lambda img, side: [TF.posterize(img, 4)],
    "hflip": lambda img, side: [TF.horizontal_flip(img)],
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_batched_op_equals_torchvision_per_image(name: str) -> None:
    x = _images()
    y = apply_op(x, name, 1.0, generator=_gen(1))
    # Compare where the output pixel lies fully inside the source image: at the edges
    # torchvision composites the fill as sample * mask + (1 - mask) * fill, which darkens
    # partly covered pixels twice; we use sample + (1 - mask) * fill.
    geometric = name in ("rotate", "shear_x", "shear_y", "scale", "translate_x", "translate_y")
    inside = (apply_op(torch.ones_like(x), name, 1.0, generator=_gen(1), fill=0.0) > 1 - 1e-6 if geometric
              else torch.ones_like(x, dtype=torch.bool))
    used = set()
    for img, out, ok in zip(x, y, inside):
        refs = [r.clamp(0, 1) for r in REFERENCES[name](img, x.shape[-2:])]
        err = [float((out - r).abs()[ok].max()) for r in refs]
        best = min(range(len(refs)), key=err.__getitem__)
        assert err[best] < 1e-4, (name, err)
        assert float(ok.float().mean()) > 0.4
        used.add(best)
    if len(REFERENCES[name](x[0], x.shape[-2:])) == 2:
        assert used == {0, 1}, f"{name}: both signs should occur in 12 images"


def test_crop_equals_torchvision_resized_crop_of_some_window() -> None:
    """Inside the image; the outermost output pixels blend with the pixels just outside the
    crop window where torchvision repeats the window's edge."""
    x = _images(6, 20, 20)
    y = apply_op(x, "crop", 1.0, generator=_gen(2))
    side = round(20 * 0.6)
    for img, out in zip(x, y):
        errs = [float((out - TF.resized_crop(img, t, left, side, side, [20, 20], interpolation=BILINEAR,
                                             antialias=False))[:, 1:-1, 1:-1].abs().max())
                for t in range(0, 20 - side + 1) for left in range(0, 20 - side + 1)]
        assert min(errs) < 1e-4


def test_strong_view_of_a_big_batch_is_a_bounded_number_of_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per slot: one call per colour op drawn and one resampling for all geometric ops,
    whatever the batch size; every image goes through exactly one op per slot."""
    import importlib

    aug = importlib.import_module("pseudolabel.augment")
    calls: list[int] = []

    def counting(fn):  # type: ignore[no-untyped-def]
        def wrapped(x: torch.Tensor, *a: object) -> torch.Tensor:
            calls.append(len(x))
            return fn(x, *a)
        return wrapped

    geometric = {"rotate", "shear_x", "shear_y", "scale", "translate_x", "translate_y", "crop"}
    for name, fn in list(aug._OPS.items()):
        if name not in geometric:
            monkeypatch.setitem(aug._OPS, name, counting(fn))
    monkeypatch.setattr(aug, "_warp", counting(aug._warp))
    per_size = {}
    for n in (300, 900):
        calls.clear()
        strong_augment(torch.rand(n, 3, 16, 16, generator=_gen()), generator=_gen(), n_ops=2)
        assert sum(calls) == 2 * n                       # each image: one op per slot
        per_size[n] = len(calls)
    n_colour = len(STRONG_OPS) - len(geometric)
    assert per_size[300] == per_size[900] == 2 * (n_colour + 1)


def test_cutout_batch_matches_the_square_it_drew() -> None:
    x = torch.zeros(40, 3, 12, 12)
    y = cutout(x, 1.0, generator=_gen(4), fill=0.25)
    filled = (y[:, 0] == 0.25)
    assert bool(filled.flatten(1).any(1).all())
    assert torch.equal(filled.unsqueeze(1).expand(-1, 3, -1, -1), y == 0.25)
