"""Surface metrics: hand-counted tiny cases, analytic spheres on anisotropic grids, both methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from selfunet.errors import SelfUNetError
from selfunet.evaluation.surface import (
    bounding_box,
    hd95,
    image_diagonal_mm,
    normalized_surface_dice,
    surface,
    surface_distances,
)

ANISO = (3.0, 0.8, 0.8)


def sphere(shape: tuple[int, ...], spacing: tuple[float, ...], radius_mm: float,
           centre_mm: tuple[float, ...] | None = None) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of the image centre (or ``centre_mm``)."""
    centre = centre_mm or tuple(0.0 for _ in shape)
    axes = [(np.arange(n) - (n - 1) / 2) * s - c for n, s, c in zip(shape, spacing, centre)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    return sum(g**2 for g in grids) <= radius_mm**2


def random_blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5


@pytest.mark.parametrize("shape", [(9, 11, 13), (17, 19)])
def test_surface_equals_mask_xor_face_erosion(shape):
    for seed in range(3):
        mask = random_blobs(shape, seed)
        mask[0] = True  # touches the image border: border voxels are surface
        expected = mask ^ ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
        np.testing.assert_array_equal(surface(mask), expected)


def test_full_image_mask_surface_is_the_outer_shell():
    mask = np.ones((4, 5, 6), dtype=bool)
    shell = np.ones_like(mask)
    shell[1:-1, 1:-1, 1:-1] = False
    np.testing.assert_array_equal(surface(mask), shell)


def test_single_voxels_distance_uses_spacing_in_array_order():
    a = np.zeros((5, 5, 5), dtype=bool)
    b = np.zeros_like(a)
    a[1, 2, 0] = True
    b[3, 2, 4] = True  # 2 voxels along z (3.0 mm), 4 along x (0.8 mm)
    expected = math.hypot(2 * 3.0, 4 * 0.8)
    assert hd95(a, b, ANISO) == pytest.approx(expected)
    assert normalized_surface_dice(a, b, ANISO, expected + 1e-6) == 1.0
    assert normalized_surface_dice(a, b, ANISO, expected - 1e-6) == 0.0


def test_hand_counted_line_segments():
    # a: voxels x=0..2, b: x=1..3 in one row, 2D, spacing 1 x 2 mm: every voxel is a surface voxel.
    a = np.zeros((3, 6), dtype=bool)
    b = np.zeros_like(a)
    a[1, 0:3] = True
    b[1, 1:4] = True
    distances = surface_distances(a, b, (1.0, 2.0))
    # a -> b: x=0 is 2 mm from x=1, the others are shared (0); b -> a: x=3 is 2 mm from x=2.
    assert sorted(distances.a_to_b.tolist()) == [0.0, 0.0, 2.0]
    assert sorted(distances.b_to_a.tolist()) == [0.0, 0.0, 2.0]
    # numpy's linear 95th percentile of [0, 0, 2] is 0 + 0.9 * 2
    assert distances.hd95() == pytest.approx(1.8)
    assert distances.nsd(1.0) == pytest.approx(4 / 6)
    assert distances.nsd(2.0) == 1.0


def test_sphere_vs_itself_is_perfect():
    mask = sphere((24, 64, 64), ANISO, 15.0)
    assert hd95(mask, mask, ANISO) == 0.0
    assert normalized_surface_dice(mask, mask, ANISO, 0.0) == 1.0


@pytest.mark.parametrize("r1,r2", [(10.0, 16.0), (12.0, 20.0)])
def test_concentric_spheres_hd95_is_radius_difference(r1, r2):
    shape = (24, 96, 96)
    inner, outer = sphere(shape, ANISO, r1), sphere(shape, ANISO, r2)
    gap = r2 - r1
    assert abs(hd95(inner, outer, ANISO) - gap) <= max(ANISO)
    assert abs(hd95(outer, inner, ANISO) - gap) <= max(ANISO)
    # tolerance just above the gap (by half the coarsest voxel): all surface points agree
    assert normalized_surface_dice(inner, outer, ANISO, gap + max(ANISO) / 2) >= 0.99
    # well below the gap: none do
    assert normalized_surface_dice(inner, outer, ANISO, gap / 2) <= 0.01


def test_kdtree_and_edt_give_the_same_distances():
    shape = (12, 30, 34)
    for seed in range(3):
        a, b = random_blobs(shape, seed), random_blobs(shape, seed + 10)
        fast = surface_distances(a, b, ANISO, method="kdtree")
        exact = surface_distances(a, b, ANISO, method="edt")
        np.testing.assert_allclose(np.sort(fast.a_to_b), np.sort(exact.a_to_b), atol=1e-9)
        np.testing.assert_allclose(np.sort(fast.b_to_a), np.sort(exact.b_to_a), atol=1e-9)


def test_crop_gives_the_same_result_as_padding_the_image():
    small_a = sphere((10, 30, 30), ANISO, 9.0)
    small_b = sphere((10, 30, 30), ANISO, 8.0, centre_mm=(3.0, 1.6, 0.0))
    big_a, big_b = np.zeros((30, 90, 90), dtype=bool), np.zeros((30, 90, 90), dtype=bool)
    big_a[10:20, 30:60, 30:60] = small_a
    big_b[10:20, 30:60, 30:60] = small_b
    small = surface_distances(small_a, small_b, ANISO, method="edt")
    big = surface_distances(big_a, big_b, ANISO)
    assert big.hd95() == pytest.approx(small.hd95())
    assert big.nsd(1.0) == pytest.approx(small.nsd(1.0))


def test_bounding_box():
    mask = np.zeros((5, 6, 7), dtype=bool)
    assert bounding_box(mask) is None
    mask[1, 2, 3] = mask[3, 4, 5] = True
    assert bounding_box(mask) == (slice(1, 4), slice(2, 5), slice(3, 6))


def test_empty_mask_rejected():
    a = np.zeros((4, 4, 4), dtype=bool)
    b = a.copy()
    b[1, 1, 1] = True
    with pytest.raises(SelfUNetError, match="empty"):
        surface_distances(a, b, (1.0, 1.0, 1.0))


def test_bad_spacing_rejected():
    a = np.ones((3, 3), dtype=bool)
    with pytest.raises(SelfUNetError, match="spacing"):
        hd95(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(SelfUNetError, match="positive"):
        hd95(a, a, (1.0, 0.0))


def test_image_diagonal_mm():
    assert image_diagonal_mm((10, 20, 30), (3.0, 0.8, 0.8)) == pytest.approx(math.sqrt(30**2 + 16**2 + 24**2))
