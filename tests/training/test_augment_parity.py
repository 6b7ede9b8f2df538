"""Augmentation rules of the reference method (docs/explanation/design.md#augmentation), checked statistically on many
draws: noise standard deviation, rotation ranges (2D elongated patches), scaling, the read patch,
zero-filled corners, and the non-zero mask set back to 0 after augmentation."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from selfunet.training.augment import AugmentationConfig, AugmentationParams, Augmenter, generator_for
from selfunet.training.augment_spatial import read_patch_size, read_region

OFF = AugmentationConfig(
    p_rotation=0, p_scaling=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_lowres=0,
    p_gamma=0, p_inverted_gamma=0, p_mirror=0,
)
N = 20000


@functools.cache
def draws(patch: tuple[int, ...]) -> AugmentationParams:
    return Augmenter(AugmentationConfig(), patch, len(patch)).draw(N, 2, torch.Generator().manual_seed(7))


def angles_2d(params: AugmentationParams) -> np.ndarray:
    """In-plane angle (degrees) of the rotated, unscaled samples."""
    chosen = (params.rotate & ~(params.scale != 1)).numpy()
    m = params.matrix[chosen].numpy()
    return np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))


def test_noise_standard_deviation_is_drawn_uniformly_not_its_variance() -> None:
    std = draws((16, 32, 32)).noise_std.numpy()
    assert stats.kstest(std, stats.uniform(0.0, 0.1).cdf).pvalue > 1e-3
    assert abs(std.mean() - 0.05) < 0.002  # sqrt of a U(0, 0.1) variance would average 0.21
    # and the applied noise has that standard deviation
    aug = Augmenter(dataclasses.replace(OFF, p_noise=1.0), (8, 32, 32), 3)
    params = aug.draw(6, 2, torch.Generator().manual_seed(1))
    image = torch.zeros(6, 2, 8, 32, 32)
    out, _ = aug.apply(image, torch.zeros(6, 1, 8, 32, 32, dtype=torch.int8), params)
    measured = out.reshape(6, 2, -1).std(2)
    assert torch.allclose(measured, params.noise_std.float()[:, None].expand(6, 2), rtol=0.03, atol=1e-4)


@pytest.mark.parametrize(
    ("patch", "limit"), [((40, 24), 15.0), ((512, 320), 15.0), ((24, 20), 180.0), ((64, 64), 180.0)]
)
def test_2d_rotation_range_follows_the_aspect_ratio(patch: tuple[int, int], limit: float) -> None:
    """+-15 deg when the longest edge exceeds 1.5x the shortest, else +-180 deg, uniform."""
    angles = angles_2d(draws(patch))
    assert angles.size > 0.2 * 0.8 * N * 0.9
    assert stats.kstest(angles, stats.uniform(-limit, 2 * limit).cdf).pvalue > 1e-3


def test_per_slice_3d_patches_rotate_in_plane_over_the_full_circle() -> None:
    params = draws((6, 64, 64))
    assert stats.kstest(angles_2d(params), stats.uniform(-180, 360).cdf).pvalue > 1e-3


def test_3d_rotation_and_scaling_distributions() -> None:
    params = draws((32, 48, 48))
    assert abs(params.rotate.double().mean() - 0.2) < 0.01
    scaled = params.scale != 1
    assert abs(scaled.double().mean() - 0.2) < 0.01
    # scale: sampling extent U(0.7, 1.4), the matrix is rotation x scale
    s = params.scale[scaled].numpy()
    assert stats.kstest(s, stats.uniform(0.7, 0.7).cdf).pvalue > 1e-3
    det = torch.linalg.det(params.matrix[scaled]).numpy()
    np.testing.assert_allclose(det, s**3, rtol=1e-9)
    # rotation only: orthonormal, and the composed rotation's angle (from its trace) stays within
    # what three 30 degree turns reach (the oracle compares the whole distribution with the reference)
    rotated = params.matrix[params.rotate & ~scaled]
    assert torch.allclose(rotated @ rotated.transpose(1, 2), torch.eye(3, dtype=rotated.dtype).expand_as(rotated))
    trace = rotated.diagonal(dim1=1, dim2=2).sum(1).numpy()
    total = np.degrees(np.arccos(np.clip((trace - 1) / 2, -1, 1)))
    assert total.max() < 90.0 and np.median(total) > 10.0


def test_read_patch_follows_the_reference_rule() -> None:
    """Values worked out by hand from the rule (and checked against the reference by the oracle)."""
    cases = {
        (128, 128, 128): (205, 205, 205),  # 128 (cos 30 + sin 30) / 0.85
        (64, 192, 160): (178, 289, 200),
        (6, 48, 48): (6, 56, 56),  # per-slice: first axis kept, +-180 capped at 90 deg
        (512, 512): (602, 602),
        (40, 24): (52, 28),  # elongated 2D: +-15 deg
        (24, 20): (28, 28),
    }
    for patch, read in cases.items():
        assert read_patch_size(patch) == read
    assert read_patch_size((10, 20, 30), OFF) == (10, 20, 30)


def test_boxes_give_the_same_result_as_the_whole_read_region() -> None:
    """Reading only each sample's box changes nothing: same image (to float rounding), same labels."""
    patch = (12, 28, 24)
    cfg = dataclasses.replace(AugmentationConfig(), p_rotation=0.7, p_scaling=0.7, p_noise=0)
    aug = Augmenter(cfg, patch, 3)
    read = aug.read_patch_size
    b = 6
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 3, (b, 1, *(math.ceil(r / 4) for r in read)))
    blocks = coarse.repeat(4, 2).repeat(4, 3).repeat(4, 4)
    label = torch.from_numpy(blocks[:, :, : read[0], : read[1], : read[2]].copy())
    image = torch.cat([label.float() * 3 + torch.randn(b, 1, *read) * 0.1, torch.randn(b, 1, *read)], 1)
    params = next(p for s in range(50) if not (p := aug.draw(b, 2, torch.Generator().manual_seed(s))).spatial.all())
    assert params.spatial.any()
    full_image, full_label = aug.apply(image, label, params)
    boxes = aug.read_boxes(params)
    region = read_region(patch, cfg)
    images, labels = [], []
    for i in range(b):
        assert (boxes[i, :, 0] >= region[:, 0]).all() and (boxes[i, :, 1] <= region[:, 1]).all()
        if not params.spatial[i]:
            assert (boxes[i, :, 0] == 0).all() and (boxes[i, :, 1] == patch).all()
        sl = tuple(slice(int(lo - r0), int(hi - r0)) for (lo, hi), r0 in zip(boxes[i], region[:, 0]))
        images.append(image[i][(slice(None), *sl)])
        labels.append(label[i][(slice(None), *sl)])
    box_image, box_label = aug.apply_boxes(images, labels, boxes[:, :, 0], params)
    assert torch.allclose(box_image, full_image, atol=1e-4)
    assert (box_label != full_label).double().mean() < 1e-3  # nearest ties may fall either way
    box_volume = np.prod(boxes[:, :, 1] - boxes[:, :, 0], axis=1).sum()
    assert box_volume < b * np.prod(read)


def test_corners_beyond_the_read_region_are_zero_filled() -> None:
    """Zooming out (extent 1.4) reaches beyond the reference's read region (0.85): image 0, label -1."""
    patch = (16, 32, 32)
    cfg = dataclasses.replace(OFF, p_scaling=1.0, scale_range=(1.4, 1.4))
    aug = Augmenter(cfg, patch, 3)
    read = aug.read_patch_size
    image = torch.full((1, 1, *read), 5.0)
    label = torch.ones((1, 1, *read), dtype=torch.int8)
    out_image, out_label = aug(image, label, torch.Generator().manual_seed(0))
    assert out_label[0, 0, 0, 0, 0] == -1 and out_image[0, 0, 0, 0, 0] == 0
    assert out_label[0, 0, 8, 16, 16] == 1 and abs(float(out_image[0, 0, 8, 16, 16]) - 5.0) < 1e-5
    # exactly where the sampled position leaves the read region (voxels low..high-1 around the patch)
    low, high = read_region(patch, cfg)[2]
    position = 15.5 + 1.4 * (np.arange(32) - 15.5)
    row = out_label[0, 0, 8, 16].numpy()
    assert (row[(position < low - 1) | (position > high)] == -1).all()
    assert (row[(position >= low) & (position <= high - 1)] == 1).all()


def test_mask_channels_are_exactly_zero_outside_the_mask_after_augmentation() -> None:
    """Every intensity transform on, then the masked channel is 0 wherever the label is negative
    (outside the non-zero mask, and the zero-filled corners); the unmasked channel is not."""
    patch = (12, 24, 24)
    cfg = AugmentationConfig(p_rotation=0.5, p_scaling=0.5, p_noise=1.0, p_blur=1.0, p_brightness=1.0,
                             p_contrast=1.0, p_lowres=1.0, p_gamma=1.0, p_inverted_gamma=1.0)
    aug = Augmenter(cfg, patch, 3, mask_channels=[1])
    read = aug.read_patch_size
    b = 8
    label = torch.zeros((b, 1, *read), dtype=torch.int8)
    label[:, :, :, : read[1] // 3] = -1  # a third of every sample lies outside the body
    label[:, :, 4:8, 10:20, 10:20] = 1
    image = torch.randn(b, 2, *read)
    image[:, 1][label[:, 0] < 0] = 0  # as preprocessing leaves it
    for seed in range(3):
        out_image, out_label = aug(image, label, generator_for(seed, 0))
        outside = out_label[:, 0] < 0
        assert outside.any() and (~outside).any()
        assert (out_image[:, 1][outside] == 0).all()
        assert (out_image[:, 0][outside] != 0).float().mean() > 0.9  # channel 0 is not masked
        assert (out_image[:, 1][~outside] != 0).float().mean() > 0.9
