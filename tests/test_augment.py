"""pseudolabel.augment: shapes and range kept, determinism per generator, every op changes the
image, strong views change images more than weak ones, salt-and-pepper hits the asked fraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pseudolabel.augment import (
    OP_RANGES,
    STRONG_OPS,
    apply_op,
    cutout,
    salt_and_pepper,
    strong_augment,
    weak_augment,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _colour_images(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth coloured images (gradients and a bright blob) with some texture: every op,
    saturation and sharpness included, has something to change."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        c = torch.rand(3, 3, generator=g)
        cy, cx = torch.rand(2, generator=g).tolist()
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        img = torch.stack([c[k, 0] * xx + c[k, 1] * yy + c[k, 2] * blob for k in range(3)])
        img = img + 0.1 * torch.rand(3, size, size, generator=g)
        out.append(img / img.max())
    return torch.stack(out).clamp(0, 1)


def _digits(n: int = 64, size: int = 32) -> torch.Tensor:
    """sklearn digits, upscaled to ``size`` pixels, grey RGB in [0, 1]."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:n] / 16.0).float().unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def test_op_table_is_complete() -> None:
    assert set(STRONG_OPS) == set(OP_RANGES)
    assert {"rotate", "shear_x", "scale", "crop", "brightness", "contrast", "gaussian_noise", "salt_and_pepper"} <= set(
        STRONG_OPS
    )


@pytest.mark.parametrize("name", STRONG_OPS)
def test_each_op_keeps_shape_range_and_changes_the_image(name: str) -> None:
    x = _colour_images()
    y = apply_op(x, name, 1.0, generator=_gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # Every image changes, by more than float noise.
    per_image = (y - x).abs().flatten(1).mean(1)
    assert bool((per_image > 1e-3).all()), f"{name}: {per_image.tolist()}"
    assert torch.equal(x, _colour_images()), "input must not be modified in place"


@pytest.mark.parametrize("name", [n for n in STRONG_OPS if n != "hflip"])
def test_magnitude_zero_is_near_identity_and_larger_magnitude_changes_more(name: str) -> None:
    x = _colour_images()
    d0 = float((apply_op(x, name, 0.0, generator=_gen()) - x).abs().mean())
    d1 = float((apply_op(x, name, 1.0, generator=_gen()) - x).abs().mean())
    assert d0 < 0.02, (name, d0)
    assert d1 > d0, (name, d0, d1)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(0, 3),
    h=st.integers(4, 20),
    w=st.integers(4, 20),
    seed=st.integers(0, 2**31 - 1),
    magnitude=st.floats(0, 1),
)
def test_weak_and_strong_keep_shape_and_range(n: int, h: int, w: int, seed: int, magnitude: float) -> None:
    x = torch.rand((n, 3, h, w), generator=_gen(seed))
    for y in (
        weak_augment(x, generator=_gen(seed)),
        strong_augment(x, generator=_gen(seed), magnitude=magnitude),
    ):
        assert y.shape == x.shape and y.dtype == x.dtype
        if n:
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_same_generator_seed_same_output_other_seed_differs() -> None:
    x = _colour_images(8)
    for fn in (weak_augment, strong_augment):
        a = fn(x, generator=_gen(3))
        b = fn(x, generator=_gen(3))
        c = fn(x, generator=_gen(4))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_global_rng_untouched() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    strong_augment(_colour_images(4), generator=_gen())
    weak_augment(_colour_images(4), generator=_gen())
    assert torch.equal(torch.rand(3), expected)


def test_strong_changes_images_more_than_weak_on_average() -> None:
    x = _digits()
    weak = float((weak_augment(x, generator=_gen(), hflip=False) - x).abs().mean())
    strong = float((strong_augment(x, generator=_gen(), hflip=False) - x).abs().mean())
    assert strong > 1.3 * weak, (weak, strong)


def test_weak_is_a_shift_of_at_most_pad_pixels() -> None:
    # A single bright pixel in the middle moves by at most ``pad`` in each direction.
    x = torch.zeros(50, 3, 17, 17)
    x[:, :, 8, 8] = 1.0
    y = weak_augment(x, generator=_gen(), pad=2, hflip=False)
    pos = torch.stack([(img[0] == 1).nonzero()[0] for img in y])
    shift = (pos - 8).abs()
    assert int(shift.max()) <= 2 and int(shift.max()) == 2  # reaches the limit over 50 draws
    assert torch.equal(weak_augment(x, generator=_gen(), pad=0, hflip=False), x)


def test_weak_flips_about_half_when_hflip() -> None:
    x = torch.zeros(200, 3, 8, 8)
    x[:, :, :, 0] = 1.0  # left column bright
    y = weak_augment(x, generator=_gen(), pad=0, hflip=True)
    flipped = float((y[:, 0, 0, -1] == 1).float().mean())
    assert 0.35 < flipped < 0.65


def test_strong_without_hflip_never_mirrors() -> None:
    # Only hflip among the ops: with hflip=False there is nothing left to pick.
    with pytest.raises(ValueError, match="n_ops"):
        strong_augment(_colour_images(2), generator=_gen(), ops=["hflip"], hflip=False, n_ops=1)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_salt_and_pepper_hits_the_requested_fraction(fraction: float) -> None:
    x = torch.full((4, 3, 64, 64), 0.5)
    y = salt_and_pepper(x, fraction, generator=_gen())
    pix = y[:, 0]
    black, white = float((pix == 0).float().mean()), float((pix == 1).float().mean())
    assert black + white == pytest.approx(fraction, abs=0.01)
    assert black == pytest.approx(fraction / 2, abs=0.01) and white == pytest.approx(fraction / 2, abs=0.01)
    # The three channels of a pixel change together.
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])
    assert bool(((y == 0.5) | (y == 0) | (y == 1)).all())


def test_cutout_fills_one_square_with_grey() -> None:
    x = torch.zeros(20, 3, 16, 16)
    y = cutout(x, 0.5, generator=_gen(), fill=0.5)
    filled = (y[:, 0] == 0.5).flatten(1).sum(1).numpy()
    assert filled.max() <= 8 * 8 and filled.min() >= 1
    for img in y[:, 0]:
        rows, cols = np.nonzero(img.numpy() == 0.5)
        # One axis-aligned rectangle: its bounding box is fully filled.
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda x: weak_augment(x[0], generator=_gen()), "shape"),
        (lambda x: weak_augment((x * 255).to(torch.uint8), generator=_gen()), "float"),
        (lambda x: weak_augment(x, generator=_gen(), pad=-1), "pad"),
        (lambda x: weak_augment(x, generator=None), "generator"),  # type: ignore[arg-type]
        (lambda x: apply_op(x, "blur", 0.5, generator=_gen()), "rotate"),
        (lambda x: apply_op(x, "rotate", 1.5, generator=_gen()), "magnitude"),
        (lambda x: strong_augment(x, generator=_gen(), ops="rotate"), "string"),
        (lambda x: strong_augment(x, generator=_gen(), n_ops=99), "n_ops"),
        (lambda x: strong_augment(x, generator=_gen(), cutout_size=2.0), "cutout_size"),
        (lambda x: salt_and_pepper(x, -0.1, generator=_gen()), "fraction"),
        (lambda x: cutout(x, 0.0, generator=_gen()), "size"),
    ],
)
def test_bad_input_raises_naming_the_value(call, word: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=word):
        call(_colour_images(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_result_on_gpu_as_on_cpu() -> None:
    x = _colour_images(8)
    for fn in (weak_augment, strong_augment):
        cpu = fn(x, generator=_gen(5))
        gpu = fn(x.cuda(), generator=_gen(5))
        assert gpu.device.type == "cuda"
        assert torch.allclose(cpu, gpu.cpu(), atol=2e-3)
