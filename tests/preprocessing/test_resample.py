"""Resampling: analytic volumes keep their physical size and position; labels keep their classes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import ResamplingSettings
from selfunet.preprocessing.resample import (
    anisotropic_axis,
    compute_new_shape,
    resample_image,
    resample_probabilities,
    resample_segmentation,
    resample_volume,
)


def _sphere(shape, spacing, center_mm, radius_mm, smooth=True):
    """A sphere in physical mm, voxel i sitting at (i + 0.5) * spacing; soft edge of ~1 voxel."""
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, center_mm)))
    if not smooth:
        return dist <= radius_mm
    width = 0.5 * min(spacing)
    return (1.0 / (1.0 + np.exp((dist - radius_mm) / width))).astype(np.float32)


def _volume_and_centroid(mask, spacing):
    voxel = float(np.prod(spacing))
    coords = np.argwhere(mask)
    centroid = (coords.mean(axis=0) + 0.5) * np.asarray(spacing)
    return mask.sum() * voxel, centroid


SPHERE_CASES = [
    # spacing, target spacing  (isotropic; anisotropic input; anisotropic target)
    ((1.0, 1.0, 1.0), (1.6, 0.7, 1.3)),
    ((4.0, 0.8, 0.8), (2.0, 1.1, 0.6)),
    ((1.0, 1.0, 1.0), (5.0, 1.0, 1.0)),
]


@pytest.mark.parametrize(("spacing", "target"), SPHERE_CASES)
def test_sphere_keeps_physical_radius_and_position(spacing, target):
    extent = np.array([60.0, 48.0, 52.0])
    shape = tuple(round(e / s) for e, s in zip(extent, spacing))
    center, radius = np.array([29.0, 23.0, 27.0]), 14.0
    image = _sphere(shape, spacing, center, radius)[None]
    out = resample_image(image, spacing, target_spacing=target)
    expected_shape = tuple(round(n * s / t) for n, s, t in zip(shape, spacing, target))
    assert out.shape == (1, *expected_shape)
    assert out.dtype == np.float32
    effective = [n * s / m for n, s, m in zip(shape, spacing, expected_shape)]
    volume, centroid = _volume_and_centroid(out[0] > 0.5, effective)
    true_volume = 4.0 / 3.0 * np.pi * radius**3
    assert abs(volume - true_volume) / true_volume < 0.04
    assert np.all(np.abs(centroid - center) < 0.5 * np.asarray(effective) + 0.05)


@pytest.mark.parametrize(("spacing", "target"), SPHERE_CASES)
def test_label_sphere_keeps_volume_and_classes(spacing, target):
    extent = np.array([60.0, 48.0, 52.0])
    shape = tuple(round(e / s) for e, s in zip(extent, spacing))
    labels = _sphere(shape, spacing, (29.0, 23.0, 27.0), 14.0, smooth=False).astype(np.int8)
    labels[_sphere(shape, spacing, (29.0, 23.0, 27.0), 6.0, smooth=False)] = 2
    labels[:, :2] = -1
    out = resample_segmentation(labels, spacing, target_spacing=target)
    assert out.dtype == np.int8
    assert set(np.unique(out)) == {-1, 0, 1, 2}
    effective = [n * s / m for n, s, m in zip(shape, spacing, out.shape)]
    for value, radius in ((2, 6.0),):
        volume, _ = _volume_and_centroid(out == value, effective)
        true_volume = 4.0 / 3.0 * np.pi * radius**3
        assert abs(volume - true_volume) / true_volume < 0.15
    volume, _ = _volume_and_centroid(out >= 1, effective)
    assert abs(volume - 4.0 / 3.0 * np.pi * 14.0**3) / (4.0 / 3.0 * np.pi * 14.0**3) < 0.05


def test_new_shape_is_rounded_physical_extent():
    assert compute_new_shape((10, 100, 101), (3.0, 0.8, 0.8), (1.5, 1.0, 1.0)) == (20, 80, 81)
    assert compute_new_shape((1, 5, 5), (1.0, 1.0, 1.0), (9.0, 1.0, 1.0)) == (1, 5, 5)


def test_bad_spacing_rejected():
    with pytest.raises(SelfUNetError, match="positive"):
        compute_new_shape((4, 4, 4), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("order", [0, 1, 3])
def test_separable_resampling_matches_scipy_zoom(order):
    """The axis-by-axis implementation equals SciPy's full 3D zoom (grid_mode, same boundaries)."""
    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.normal(size=(13, 21, 17)), 1.0).astype(np.float32)
    new_shape = (29, 12, 23)
    ours = resample_volume(volume, new_shape, [order] * 3)
    mode = "mirror" if order == 3 else "nearest"
    reference = ndimage.zoom(
        volume.astype(np.float64), np.divide(new_shape, volume.shape), order=order, mode=mode, grid_mode=True
    )
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_anisotropic_case_uses_nearest_out_of_plane():
    """Thick slices are not blurred into each other: every output slice equals an input slice's
    in-plane resampling."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 6, 20, 20)).astype(np.float32)
    out = resample_image(image, (5.0, 1.0, 1.0), target_spacing=(2.5, 1.0, 1.0))
    assert out.shape == (1, 12, 20, 20)
    for i in range(12):
        np.testing.assert_allclose(out[0, i], image[0, i // 2], atol=1e-5)
    assert anisotropic_axis((5.0, 1.0, 1.0), (2.5, 1.0, 1.0), 3.0) == 0
    assert anisotropic_axis((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), 3.0) == 1
    assert anisotropic_axis((1.0, 5.0, 5.0), (1.0, 5.0, 5.0), 3.0) is None
    assert anisotropic_axis((2.0, 1.0, 1.0), (2.0, 1.0, 1.0), 3.0) is None


def test_isotropic_case_interpolates_between_slices():
    image = np.zeros((1, 4, 5, 5), dtype=np.float32)
    image[0, 2:] = 1.0
    out = resample_image(image, (2.0, 1.0, 1.0), target_spacing=(1.0, 1.0, 1.0))
    middle = out[0, 3, 2, 2]
    assert 0.05 < middle < 0.95


def test_probabilities_are_linear_and_stay_normalized():
    rng = np.random.default_rng(2)
    logits = ndimage.gaussian_filter(rng.normal(size=(3, 8, 16, 16)), (0, 1, 2, 2))
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    out = resample_probabilities(probs.astype(np.float32), (1.0, 1.0, 1.0), new_shape=(11, 9, 20))
    assert out.shape == (3, 11, 9, 20)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    assert out.min() >= 0.0


def test_unchanged_shape_is_a_copy():
    image = np.arange(2 * 27, dtype=np.float32).reshape(2, 3, 3, 3)
    out = resample_image(image, (1.0, 1.0, 1.0), target_spacing=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_unsupported_order_rejected():
    with pytest.raises(SelfUNetError, match="order 2"):
        resample_image(
            np.zeros((1, 4, 4, 4), np.float32),
            (1.0, 1.0, 1.0),
            new_shape=(5, 5, 5),
            settings=ResamplingSettings(image_order=2),
        )
