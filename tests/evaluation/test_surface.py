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
    normalized_surface_dice_voxels,
    surface,
    surface_distances,
    surfel_distances,
    surfels,
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
    assert normalized_surface_dice_voxels(a, b, ANISO, expected + 1e-6) == 1.0
    assert normalized_surface_dice_voxels(a, b, ANISO, expected - 1e-6) == 0.0
    # surfels sit on the voxel's corners: the farthest corner's nearest neighbour is as far as the centres
    assert normalized_surface_dice(a, b, ANISO, expected + 1e-6) == 1.0
    assert 0.0 < normalized_surface_dice(a, b, ANISO, expected - 1e-6) < 1.0


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
    assert distances.nsd_voxel_count(1.0) == pytest.approx(4 / 6)
    assert distances.nsd_voxel_count(2.0) == 1.0


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
    assert big.nsd_voxel_count(1.0) == pytest.approx(small.nsd_voxel_count(1.0))


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


# ---- NSD as the Decathlon and FLARE compute it: surfels weighted by area --------------------------


def cube(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (3.0, 0.8, 0.7)])
def test_surfel_area_of_a_box_is_the_marching_cubes_area(spacing):
    """Marching cubes through the voxel centres of an n0 x n1 x n2 box: flat faces half a voxel out,
    45-degree bevels along the edges, a triangle at each corner, all in mm (area scales with spacing)."""
    n = (4, 6, 8)
    mask = cube((8, 10, 12), (2, 2, 2), tuple(2 + k for k in n))
    s = spacing
    expected = 0.0
    for i in range(3):
        j, k = (a for a in range(3) if a != i)
        expected += 2 * (n[j] - 1) * s[j] * (n[k] - 1) * s[k]  # faces perpendicular to axis i
        expected += 4 * (n[i] - 1) * s[i] * math.hypot(s[j] / 2, s[k] / 2)  # bevels along axis i
    expected += 8 * 0.5 * math.sqrt((s[1] * s[2] / 4) ** 2 + (s[0] * s[2] / 4) ** 2 + (s[0] * s[1] / 4) ** 2)
    _, areas = surfels(mask, spacing)
    assert areas.sum() == pytest.approx(expected, rel=1e-12)


def test_surfel_length_of_a_rectangle_is_the_marching_squares_perimeter():
    spacing = (0.5, 2.0)
    n = (5, 6)
    mask = cube((10, 12), (2, 3), (7, 9))
    expected = 2 * (n[0] - 1) * spacing[0] + 2 * (n[1] - 1) * spacing[1] + 4 * math.hypot(*(x / 2 for x in spacing))
    _, lengths = surfels(mask, spacing)
    assert lengths.sum() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("r1", "r2"), [(10.0, 16.0)])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), ANISO])
def test_concentric_spheres_nsd_steps_at_the_radius_gap(r1, r2, spacing):
    shape = tuple(int(2 * r2 / s) + 6 for s in spacing)
    inner, outer = sphere(shape, spacing, r1), sphere(shape, spacing, r2)
    gap = r2 - r1
    # the voxelised spheres are up to a voxel (or two, diagonally) closer or farther than the radii
    assert normalized_surface_dice(inner, outer, spacing, gap + max(spacing)) == 1.0
    assert normalized_surface_dice(inner, outer, spacing, gap - 2 * max(spacing)) == 0.0


def test_shifted_cube_nsd_is_the_area_share_of_the_faces_that_stay():
    """A cube shifted by 2 voxels along x, tolerance below one voxel: the faces perpendicular to x
    are 2 voxels off; of the four side faces, the parts over the shared extent coincide. With a
    tolerance of 0 the surfels that coincide are exactly those of the shared part, so NSD is their
    area share, computed here from the surfels on each side."""
    spacing = (1.0, 1.0, 1.0)
    a = cube((14, 14, 16), (2, 2, 2), (12, 12, 12))
    b = cube((14, 14, 16), (2, 2, 4), (12, 12, 14))
    points_a, area_a = surfels(a, spacing)
    points_b, area_b = surfels(b, spacing)
    shared_a = np.array([any(np.all(p == q) for q in points_b) for p in points_a])
    shared_b = np.array([any(np.all(p == q) for q in points_a) for p in points_b])
    expected = (area_a[shared_a].sum() + area_b[shared_b].sum()) / (area_a.sum() + area_b.sum())
    assert 0.3 < expected < 0.9
    assert normalized_surface_dice(a, b, spacing, 0.0) == pytest.approx(expected)
    assert normalized_surface_dice(a, b, spacing, 2.0) == 1.0  # every surfel within the shift


def test_2d_case_is_evaluated_with_contour_lengths():
    a = cube((20, 30), (5, 5), (15, 20))
    assert normalized_surface_dice(a, a, (0.5, 2.0), 0.0) == 1.0
    b = cube((20, 30), (5, 6), (15, 21))  # shifted one column (2 mm)
    assert 0.0 < normalized_surface_dice(a, b, (0.5, 2.0), 1.0) < 1.0
    assert normalized_surface_dice(a, b, (0.5, 2.0), 2.0) == 1.0


@pytest.mark.parametrize(("shape", "spacing"), [((30, 40, 35), (3.0, 0.8, 0.7)), ((60, 50), (0.5, 1.5)),
                                                ((20, 20, 20), (1.0, 1.0, 1.0))])
def test_same_surfels_distances_and_nsd_as_deepminds_package(shape, spacing):
    """DeepMind's ``surface-distance`` (the Decathlon's and FLARE's NSD) as the oracle. Our nearest
    surfels come from a k-d tree, theirs from a distance transform: equal up to rounding, so the
    tolerances avoid distances that equal them exactly (e.g. the 3-4-5 triangle of 3.0 and 0.8 mm)."""
    import surface_distance

    a, b = random_blobs(shape, 1), random_blobs(shape, 2)
    ours = surfel_distances(a, b, spacing)
    theirs = surface_distance.compute_surface_distances(a, b, spacing)
    for mine, key_d, key_a in ((ours.a_to_b, "distances_gt_to_pred", "surfel_areas_gt"),
                               (ours.b_to_a, "distances_pred_to_gt", "surfel_areas_pred")):
        area = ours.area_a if key_a.endswith("gt") else ours.area_b
        pairs = np.array(sorted(zip(np.round(mine, 9), area)))
        expected = np.array(sorted(zip(np.round(theirs[key_d], 9), theirs[key_a])))
        np.testing.assert_allclose(pairs, expected, atol=1e-9)
    for tolerance in (0.0, 0.3, 1.1, 2.3, 4.9):
        assert ours.nsd(tolerance) == pytest.approx(
            surface_distance.compute_surface_dice_at_tolerance(theirs, tolerance), abs=1e-12)


def test_voxel_count_and_area_nsd_differ_on_anisotropic_grids():
    a, b = random_blobs((30, 40, 35), 1), random_blobs((30, 40, 35), 2)
    area = normalized_surface_dice(a, b, (3.0, 0.8, 0.7), 1.0)
    count = normalized_surface_dice_voxels(a, b, (3.0, 0.8, 0.7), 1.0)
    assert abs(area - count) > 0.01
