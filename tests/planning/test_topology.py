"""The topology rules (pooling, kernels, padding, features) and the memory estimate, rule by rule."""

from __future__ import annotations

import math

import pytest

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import NetworkTopology, PlannerSettings
from selfunet.planning.topology import derive_topology, divisor_of, estimate_feature_map_elements

SETTINGS = PlannerSettings()


def pools_per_axis(topology: NetworkTopology) -> list[int]:
    return [sum(1 for stride in topology.strides if stride[d] == 2) for d in range(topology.dimension)]


def test_isotropic_patch_pools_every_axis_until_min_edge() -> None:
    topology, padded = derive_topology([1.0, 1.0, 1.0], [128, 128, 128], SETTINGS, 3)
    # 128 -> 64 -> 32 -> 16 -> 8 -> 4: five halvings, the last one from 8 (= 2 * min edge 4)
    assert pools_per_axis(topology) == [5, 5, 5]
    assert topology.num_stages == 6
    assert all(k == [3, 3, 3] for k in topology.kernel_sizes)
    assert padded == [128, 128, 128]


def test_first_stage_has_stride_one_and_bottleneck_kernel_three() -> None:
    topology, _ = derive_topology([4.0, 0.7, 0.7], [24, 256, 256], SETTINGS, 3)
    assert topology.strides[0] == [1, 1, 1]
    assert topology.kernel_sizes[-1] == [3, 3, 3]
    assert len(topology.kernel_sizes) == len(topology.strides) == topology.num_stages


def test_coarse_axis_waits_until_within_2x_of_finest() -> None:
    topology, _ = derive_topology([3.6, 0.62, 0.62], [20, 320, 256], SETTINGS, 3)
    # in-plane spacing doubles per pool: 0.62 -> 1.24 -> 2.48; z (3.6) joins once 3.6 / 2.48 < 2
    assert topology.strides[1] == [1, 2, 2]
    assert topology.strides[2] == [1, 2, 2]
    assert topology.strides[3] == [2, 2, 2]
    # a 3-wide kernel on z only once its spacing is within 2x of the finest spacing
    assert topology.kernel_sizes[0] == [1, 3, 3]
    assert topology.kernel_sizes[1] == [1, 3, 3]
    assert topology.kernel_sizes[2] == [3, 3, 3]


def test_kernel_stays_three_once_set() -> None:
    topology, _ = derive_topology([2.5, 1.0, 1.0], [64, 256, 256], SETTINGS, 3)
    first_three = next(i for i, k in enumerate(topology.kernel_sizes) if k[0] == 3)
    assert all(k[0] == 3 for k in topology.kernel_sizes[first_three:])


def test_single_poolable_axis_needs_size_12() -> None:
    # only the second axis is >= 8; alone it must be >= 12 (3 x min edge) to pool
    no_pool, _ = derive_topology([1.0, 1.0], [4, 11], SETTINGS, 2)
    assert no_pool.strides == [[1, 1]]
    assert no_pool.num_stages == 1
    one_pool, padded = derive_topology([1.0, 1.0], [4, 12], SETTINGS, 2)
    assert one_pool.strides == [[1, 1], [1, 2]]
    assert padded == [4, 12]


def test_single_poolable_axis_by_spacing_needs_size_12() -> None:
    # z is large enough but 3x coarser: only x/y may pool... here only x is large enough
    topology, _ = derive_topology([3.0, 1.0, 1.0], [64, 6, 10], SETTINGS, 3)
    assert topology.num_stages == 1


def test_patch_padded_to_multiple_of_two_to_the_pools() -> None:
    patch = [100, 70, 33]
    topology, padded = derive_topology([1.0, 1.0, 1.0], patch, SETTINGS, 3)
    divisor = divisor_of(topology)
    assert divisor == [2**p for p in pools_per_axis(topology)]
    for size, pad, div in zip(patch, padded, divisor):
        assert pad % div == 0
        assert size <= pad < size + div


def test_fractional_median_sizes_are_padded_up() -> None:
    # a median over an even number of cases can be x.5; padding makes it an integer
    _, padded = derive_topology([1.0, 1.0], [4, 35.5], SETTINGS, 2)
    assert padded == [4, 36]


def test_features_double_and_cap_per_dimension() -> None:
    topo_3d, _ = derive_topology([1.0, 1.0, 1.0], [256, 256, 256], SETTINGS, 3)
    assert topo_3d.features_per_stage == [min(32 * 2**i, 320) for i in range(topo_3d.num_stages)]
    assert max(topo_3d.features_per_stage) == 320
    topo_2d, _ = derive_topology([1.0, 1.0], [1024, 1024], SETTINGS, 2)
    assert topo_2d.features_per_stage == [min(32 * 2**i, 512) for i in range(topo_2d.num_stages)]
    assert max(topo_2d.features_per_stage) == 512
    assert topo_2d.convs_per_stage_encoder == [2] * topo_2d.num_stages
    assert topo_2d.convs_per_stage_decoder == [2] * (topo_2d.num_stages - 1)


def test_bad_inputs_rejected() -> None:
    with pytest.raises(SelfUNetError, match="3 entries"):
        derive_topology([1.0, 1.0], [64, 64], SETTINGS, 3)
    with pytest.raises(SelfUNetError, match="positive"):
        derive_topology([1.0, 0.0, 1.0], [64, 64, 64], SETTINGS, 3)


def test_estimate_follows_the_spec_formula_by_hand() -> None:
    topology = NetworkTopology(
        dimension=2,
        features_per_stage=[32, 64],
        kernel_sizes=[[3, 3], [3, 3]],
        strides=[[1, 1], [2, 2]],
        convs_per_stage_encoder=[2, 2],
        convs_per_stage_decoder=[2],
    )
    encoder = 2 * 32 * 8 * 8 + 2 * 64 * 4 * 4
    decoder = 2 * 32 * 8 * 8 + 32 * 8 * 8  # convs + transposed conv output, at the skip size
    segmentation = 3 * 8 * 8
    assert estimate_feature_map_elements(topology, [8, 8], num_classes=3) == encoder + decoder + segmentation


def test_estimate_floors_odd_sizes() -> None:
    topology = NetworkTopology(
        dimension=2,
        features_per_stage=[1, 1],
        kernel_sizes=[[3, 3], [3, 3]],
        strides=[[1, 1], [2, 2]],
        convs_per_stage_encoder=[1, 1],
        convs_per_stage_decoder=[1],
    )
    # stage 1 sees floor(9/2) x floor(9/2); decoder and head work at 9 x 9
    assert estimate_feature_map_elements(topology, [9, 9], 1) == 81 + 16 + (81 + 81) + 81


def test_estimate_grows_with_classes_by_full_resolution_map() -> None:
    topology, patch = derive_topology([1.0, 1.0, 1.0], [64, 64, 64], SETTINGS, 3)
    two = estimate_feature_map_elements(topology, patch, 2)
    five = estimate_feature_map_elements(topology, patch, 5)
    assert five - two == 3 * math.prod(patch)


@pytest.mark.parametrize(
    ("spacing", "patch", "dimension"),
    [
        ([1.0, 1.0, 1.0], [40, 56, 40], 3),
        ([3.6, 0.62, 0.62], [20, 96, 80], 3),
        ([1.0, 1.0], [96, 64], 2),
    ],
)
def test_estimate_equals_feature_maps_of_built_network(spacing, patch, dimension) -> None:
    """The planner's arithmetic must count exactly what the real U-Net produces."""
    from selfunet.training.network import build_network

    topology, padded = derive_topology(spacing, patch, SETTINGS, dimension)
    model = build_network(topology, in_channels=2, num_classes=4, deep_supervision=True)
    assert estimate_feature_map_elements(topology, padded, 4) == model.count_feature_map_elements(padded)
