"""Augmentation: geometry invariants, exact mirroring, probabilities, reproducibility, per-slice mode."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from selfunet.errors import SelfUNetError
from selfunet.training.augment import (
    AugmentationConfig,
    AugmentationParams,
    Augmenter,
    generator_for,
    read_patch_size,
)

#: every transform off; tests switch on the one they look at.
OFF = AugmentationConfig(
    p_rotation=0, p_scaling=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_lowres=0,
    p_gamma=0, p_inverted_gamma=0, p_mirror=0,
)
SPATIAL = dataclasses.replace(OFF, p_rotation=1.0, p_scaling=1.0)


def blocky(shape: tuple[int, ...], block: int, seed: int = 0, classes: int = 3) -> torch.Tensor:
    """Piecewise-constant integer volume of random blocks, [1, 1, *shape]."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, [math.ceil(s / block) for s in shape])
    for axis in range(len(shape)):
        coarse = np.repeat(coarse, block, axis=axis)
    return torch.from_numpy(coarse[tuple(slice(0, s) for s in shape)].copy())[None, None]


def test_image_and_label_stay_aligned_under_spatial_transforms() -> None:
    patch = (10, 24, 24)
    read = read_patch_size(patch, SPATIAL)
    label = blocky(read, 6, seed=1)
    # channel 1 is a non-linear function of channel 0, so a blend of two blocks (0 and 2 -> 1)
    # is told apart from a single block
    image = torch.cat([label.float(), 10.0 ** label.float()], 1).repeat(3, 1, 1, 1, 1)
    aug = Augmenter(SPATIAL, patch, 3)
    out_image, out_label = aug(image, label.repeat(3, 1, 1, 1, 1), torch.Generator().manual_seed(3))
    assert out_image.shape == (3, 2, *patch) and out_label.shape == (3, 1, *patch)
    assert out_label.dtype == torch.int64
    value = out_image[:, :1].round()
    exact = ((out_image[:, :1] - value).abs() < 1e-4) & ((out_image[:, 1:] - 10.0**value).abs() < 1e-3)
    exact &= out_label >= 0  # zero-filled corners (label -1) are checked elsewhere
    # where linear interpolation saw one block only, nearest must pick the same block
    assert exact.float().mean() > 0.5
    assert torch.equal(value[exact].long(), out_label[exact])
    # and the transform really moved something
    assert not torch.equal(out_label, aug.center_crop(image, label.repeat(3, 1, 1, 1, 1))[1])


def test_mirroring_is_exact_flip() -> None:
    cfg = dataclasses.replace(OFF, p_mirror=1.0)
    patch = (6, 10, 12)
    image = torch.randn(2, 2, 8, 14, 12)
    label = torch.randint(-1, 3, (2, 1, 8, 14, 12), dtype=torch.int8)
    aug = Augmenter(cfg, patch, 3)
    out_image, out_label = aug(image, label, torch.Generator().manual_seed(0))
    crop_image, crop_label = aug.center_crop(image, label)
    assert torch.equal(out_image, crop_image.flip(2, 3, 4))
    assert torch.equal(out_label, crop_label.flip(2, 3, 4))


@pytest.mark.parametrize("patch", [(6, 10, 12), (5, 40, 40), (20, 24)], ids=["3d", "per-slice 3d", "2d"])
def test_mirroring_folded_into_the_warp_equals_flipping_afterwards(patch) -> None:
    """Mirroring costs no pass of its own (a reversed copy, or negated matrix columns): the result
    must be the unmirrored augmentation flipped, for cropped and rotated/scaled samples alike."""
    cfg = dataclasses.replace(SPATIAL, p_rotation=0.5, p_scaling=0.5, p_mirror=1.0)
    aug = Augmenter(cfg, patch, len(patch))
    read = aug.read_patch_size
    torch.manual_seed(1)
    image = torch.randn(6, 2, *read)
    label = blocky(read, 3).repeat(6, 1, *([1] * len(patch))).to(torch.int8)
    params = aug.draw(6, 2, torch.Generator().manual_seed(3))
    assert params.spatial.any() and not params.spatial.all()  # both kinds of sample
    mirrored_image, mirrored_label = aug.apply(image, label, params)
    unmirrored = dataclasses.replace(params, mirror=torch.zeros_like(params.mirror))
    plain_image, plain_label = aug.apply(image, label, unmirrored)
    assert params.mirror.any()
    for b in range(6):
        dims = [a + 1 for a in torch.nonzero(params.mirror[b]).flatten().tolist()]
        expected_image = plain_image[b].flip(dims) if dims else plain_image[b]
        expected_label = plain_label[b].flip(dims) if dims else plain_label[b]
        assert torch.equal(mirrored_label[b], expected_label), f"sample {b}, axes {dims}"
        assert torch.allclose(mirrored_image[b], expected_image, atol=1e-5), f"sample {b}, axes {dims}"


def _reference_gamma(x: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """The reference's gamma on one channel, written out plainly (float64)."""
    x = x.double()
    if invert:
        x = -x
    mean, std = x.mean(), x.std()
    lo, span = x.min(), x.max() - x.min()
    x = ((x - lo) / (span + 1e-7)) ** gamma * (span + 1e-7) + lo
    x = (x - x.mean()) / (x.std() + 1e-7) * std + mean
    return -x if invert else x


@pytest.mark.parametrize("invert", [False, True])
def test_in_place_gamma_matches_the_plain_formula(invert) -> None:
    patch = (6, 12, 12)
    key = "p_inverted_gamma" if invert else "p_gamma"
    aug = Augmenter(dataclasses.replace(OFF, **{key: 1.0}), patch, 3)
    image = torch.randn(3, 2, *patch) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1, 1) + 2
    image[2, 1] = 4.0  # a constant channel stays constant
    params = aug.draw(3, 2, torch.Generator().manual_seed(7))
    out = aug.apply(image, torch.zeros(3, 1, *patch, dtype=torch.int8), params)[0]
    values = params.inverted_gamma_value if invert else params.gamma_value
    for b in range(3):
        for c in range(2):
            expected = _reference_gamma(image[b, c], float(values[b, c]), invert)
            assert torch.allclose(out[b, c].double(), expected, atol=2e-4), (b, c)
    assert torch.equal(out[2, 1], image[2, 1])


def test_no_augmentation_is_exact_center_crop_and_input_untouched() -> None:
    image = np.random.default_rng(0).standard_normal((2, 1, 10, 12, 14)).astype(np.float32)
    label = np.zeros((2, 1, 10, 12, 14), dtype=np.int8)
    before = image.copy()
    aug = Augmenter(OFF, (6, 8, 10), 3)
    out_image, _ = aug(image, label, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(out_image.numpy(), image[:, :, 2:8, 2:10, 2:12])
    np.testing.assert_array_equal(image, before)
    full = Augmenter(AugmentationConfig(p_noise=1.0, p_gamma=1.0), (10, 12, 14), 3)
    full(image, label, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(image, before)


@functools.cache
def _many_draws() -> AugmentationParams:
    """The draw step alone, for 20000 samples of 2 channels (shared by the probability tests)."""
    return Augmenter(AugmentationConfig(), (16, 32, 32), 3).draw(20000, 2, torch.Generator().manual_seed(42))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rotate", 0.2), ("noise", 0.1), ("brightness", 0.15), ("contrast", 0.15),
        ("inverted_gamma", 0.1), ("gamma", 0.3), ("blur", 0.2 * 0.5), ("lowres", 0.25 * 0.5), ("mirror", 0.5),
    ],
)
def test_draw_probabilities_hold(name: str, expected: float) -> None:
    params = _many_draws()
    fraction = getattr(params, name).double().mean().item()
    tolerance = 4 * math.sqrt(expected * (1 - expected) / 20000) + 1e-3
    assert abs(fraction - expected) < tolerance


def test_drawn_ranges_hold() -> None:
    cfg = AugmentationConfig()
    params = Augmenter(cfg, (16, 32, 32), 3).draw(5000, 2, torch.Generator().manual_seed(1))
    scale = params.scale[params.scale != 1]
    assert 0.15 < scale.numel() / 5000 < 0.25
    assert scale.min() >= 0.7 and scale.max() <= 1.4
    angles = params.matrix[params.rotate & (params.scale == 1)]
    # rotation matrices: orthonormal, and the smallest cos of the angle box is cos(30 deg)^k
    assert torch.allclose(angles @ angles.transpose(1, 2), torch.eye(3, dtype=angles.dtype).expand_as(angles))
    assert params.blur_sigma.min() >= 0.5 and params.blur_sigma.max() <= 1.0
    for value in (params.gamma_value, params.inverted_gamma_value):
        assert value.min() >= 0.7 and value.max() <= 1.5
        assert 0.4 < (value < 1).double().mean() < 0.6


def test_seed_reproduces_batch_exactly() -> None:
    aug = Augmenter(
        dataclasses.replace(AugmentationConfig(), p_rotation=0.5, p_noise=0.5, p_blur=0.5, p_lowres=0.5),
        (8, 16, 16), 3,
    )
    read = read_patch_size((8, 16, 16))
    image = torch.randn(4, 2, *read)
    label = blocky(read, 4).repeat(4, 1, 1, 1, 1).to(torch.int8)
    a = aug(image, label, generator_for(7, 3))
    b = aug(image, label, generator_for(7, 3))
    c = aug(image, label, generator_for(7, 4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_per_slice_mode_never_mixes_slices() -> None:
    patch = (5, 40, 40)
    aug = Augmenter(SPATIAL, patch, 3)
    assert aug.per_slice
    read = read_patch_size(patch, SPATIAL)
    z = torch.arange(read[0], dtype=torch.float32).view(1, 1, -1, 1, 1) * 10
    # channel 1 is 1 everywhere: channel 0 / channel 1 undoes any blend with the zero-filled corners
    image = torch.cat([z + 1 + torch.rand(4, 1, *read) * 0.01, torch.ones(4, 1, *read)], 1)
    label = blocky(read, 5).repeat(4, 1, 1, 1, 1)
    out_image, out_label = aug(image, label, torch.Generator().manual_seed(0))
    offset = (read[0] - patch[0]) // 2
    assert offset == 0  # per-slice: the read patch keeps the first axis
    weight = out_image[:, 1]
    assert (weight < 1e-6).any() and (weight > 1 - 1e-6).any()  # corners were zero-filled, the middle not
    for k in range(patch[0]):
        seen = weight[:, k] > 1e-3
        ratio = out_image[:, 0, k][seen] / weight[:, k][seen]
        assert ratio.min() >= 10 * k + 1 - 1e-3 and ratio.max() <= 10 * k + 1.01 + 1e-3
    # labels: each output slice only holds values of its own input slice
    for k in range(patch[0]):
        for b in range(4):
            allowed = set(label[0, 0, k + offset].unique().tolist()) | {-1}  # -1: zero-filled corners
            assert set(out_label[b, 0, k].unique().tolist()) <= allowed


def test_ignore_label_survives_spatial_transforms() -> None:
    patch = (8, 20, 20)
    read = read_patch_size(patch, SPATIAL)
    label = blocky(read, 5, classes=4) - 1  # values -1..2
    aug = Augmenter(SPATIAL, patch, 3)
    _, out_label = aug(torch.randn(2, 1, *read), label.repeat(2, 1, 1, 1, 1).to(torch.int8), generator_for(0, 0))
    values = set(out_label.unique().tolist())
    assert -1 in values and values <= {-1, 0, 1, 2}


def test_2d_shapes_and_rotation_keeps_alignment() -> None:
    patch = (24, 20)
    read = read_patch_size(patch)
    assert read == (28, 28)  # the reference's rule: +-180 deg capped at 90, zoom 0.85
    label = blocky(read, 4)
    image = torch.cat([label.float(), 10.0 ** label.float()], 1)
    aug = Augmenter(SPATIAL, patch, 2)
    out_image, out_label = aug(image.repeat(3, 1, 1, 1), label.repeat(3, 1, 1, 1), generator_for(1, 1))
    assert out_image.shape == (3, 2, *patch) and out_label.shape == (3, 1, *patch)
    value = out_image[:, :1].round()
    exact = ((out_image[:, :1] - value).abs() < 1e-4) & ((out_image[:, 1:] - 10.0**value).abs() < 1e-3)
    exact &= out_label >= 0
    assert exact.float().mean() > 0.5
    assert torch.equal(value[exact].long(), out_label[exact])


def test_intensity_transforms_keep_their_invariants() -> None:
    patch = (6, 12, 12)
    torch.manual_seed(0)
    image = torch.randn(4, 2, *patch) * 2 + 1
    label = torch.zeros(4, 1, *patch, dtype=torch.int8)
    g = torch.Generator().manual_seed(5)

    def run(**kwargs: float) -> tuple[torch.Tensor, Augmenter]:
        aug = Augmenter(dataclasses.replace(OFF, **kwargs), patch, 3)
        params = aug.draw(4, 2, g)
        return aug.apply(image, label, params)[0], params

    out, params = run(p_brightness=1.0)
    assert torch.allclose(out, image * params.brightness_factor.float().view(4, 2, 1, 1, 1))
    out, _ = run(p_contrast=1.0)
    flat_in, flat_out = image.reshape(8, -1), out.reshape(8, -1)
    assert (flat_out.amin(1) >= flat_in.amin(1) - 1e-5).all() and (flat_out.amax(1) <= flat_in.amax(1) + 1e-5).all()
    for key in ("p_gamma", "p_inverted_gamma"):
        out, _ = run(**{key: 1.0})
        assert torch.allclose(out.reshape(8, -1).mean(1), flat_in.mean(1), atol=1e-4)
        assert torch.allclose(out.reshape(8, -1).std(1), flat_in.std(1), atol=1e-3)
        assert not torch.allclose(out, image)
    out, params = run(p_noise=1.0)
    residual = (out - image).reshape(4, -1).std(1)
    assert torch.allclose(residual, params.noise_std.float(), rtol=0.2, atol=0.02)
    # blur and low resolution keep a constant image constant and change a noisy one
    constant = torch.full((4, 2, *patch), 3.0)
    for key in ("p_blur", "p_lowres"):
        # zoom <= 0.8: every axis really loses resolution (12 x 0.97 would round back to 12)
        aug = Augmenter(dataclasses.replace(OFF, **{key: 1.0}, lowres_zoom=(0.5, 0.8)), patch, 3)
        params = aug.draw(4, 2, g)
        assert torch.allclose(aug.apply(constant, label, params)[0], constant, atol=1e-5)
        out = aug.apply(image, label, params)[0]
        selected = (params.blur if key == "p_blur" else params.lowres).view(4, 2)
        changed = (out - image).abs().reshape(4, 2, -1).amax(2) > 1e-4
        assert torch.equal(changed, selected)


def test_bad_config_rejected() -> None:
    with pytest.raises(SelfUNetError, match="p_rotation"):
        AugmentationConfig(p_rotation=1.5)
    with pytest.raises(SelfUNetError, match="scale_range"):
        AugmentationConfig(scale_range=(1.4, 0.7))
    with pytest.raises(SelfUNetError, match="smaller than the patch size"):
        Augmenter(OFF, (8, 8, 8), 3)(torch.zeros(1, 1, 4, 8, 8), torch.zeros(1, 1, 4, 8, 8), generator_for(0, 0))


def _plain_lowres(x: np.ndarray, zoom: float, keep_first: bool) -> np.ndarray:
    """Nearest down to round(L * zoom) pixel centres, linear back up (align_corners=False), per axis.
    Positions in float32 with the scale ``in / out`` rounded to float32 first, as the reference's
    ``interpolate`` computes them (at exact ties such as 14.5 * 30/29 that decides the pixel)."""
    for axis, length in enumerate(x.shape):
        if axis == 0 and keep_first:
            continue
        n = max(1, round(zoom * length))
        down, up = np.float32(length / n), np.float32(n / length)
        centres = np.arange(max(n, length), dtype=np.float32) + np.float32(0.5)
        source = np.minimum(np.floor(centres[:n] * down).astype(int), length - 1)
        low = np.take(x, source, axis=axis)
        pos = np.clip(centres[:length] * up - np.float32(0.5), 0, n - 1).astype(np.float64)
        k0 = np.floor(pos).astype(int)
        k1 = np.minimum(k0 + 1, n - 1)
        w = (pos - k0).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        x = np.take(low, k0, axis=axis) * (1 - w) + np.take(low, k1, axis=axis) * w
    return x


@pytest.mark.parametrize(("patch", "per_slice"), [((24, 30), False), ((6, 20, 18), False), ((6, 20, 18), True)])
def test_low_resolution_matches_the_plain_resampling(patch, per_slice) -> None:
    from selfunet.training.augment_intensity import _simulate_lowres_

    rng = np.random.default_rng(0)
    for zoom in (0.5, 0.63, 0.8, 0.97):
        x = rng.standard_normal(patch).astype(np.float32)
        row = torch.from_numpy(x.copy()).reshape(-1)
        _simulate_lowres_(row, zoom, torch.Size(patch), per_slice)
        expected = _plain_lowres(x.astype(np.float64), zoom, per_slice)
        np.testing.assert_allclose(row.view(patch).numpy(), expected, atol=1e-5)
