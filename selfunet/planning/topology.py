"""U-Net topology from (spacing, patch size), and its activation-memory estimate (docs/explanation/design.md#topology).

The planner cannot afford to build a torch module for every candidate patch size it tries, so the
topology rules and the memory estimate are plain arithmetic here. :mod:`selfunet.training.network` builds
the module from the same :class:`~selfunet.planning.plan_types.NetworkTopology`, and its tests check that
:func:`estimate_feature_map_elements` counts exactly the feature maps that module produces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import NetworkTopology, PlannerSettings


def _pooling_steps(
    spacing: Sequence[float], patch_size: Sequence[float], min_edge: int
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Run the pooling rule; return (strides per stage, kernels per stage, pools per axis).

    Sizes may be non-integer (a median over an even number of cases can end in .5); the rule only
    compares them, halves them with ceil and pads them, so that is harmless and keeps the plan
    identical to the reference implementation's.
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        # an axis may pool only if the feature map stays >= min_edge after halving
        candidates = [d for d in range(dim) if current_size[d] >= 2 * min_edge]
        if not candidates:
            break
        finest = min(current_spacing[d] for d in candidates)
        # pool only axes whose resolution is within 2x of the finest poolable axis, so anisotropic
        # axes wait until the others have caught up physically
        candidates = [d for d in candidates if current_spacing[d] / finest < 2]
        # pooling a single axis alone is only worth it when it leaves a 3*min_edge margin
        if len(candidates) == 1 and current_size[candidates[0]] < 3 * min_edge:
            break
        # a 3-wide kernel on an axis only once its voxels are within 2x of the finest voxels;
        # before that a 1-wide kernel avoids mixing physically distant slices
        smallest = min(current_spacing)
        for d in range(dim):
            if kernel[d] == 1 and current_spacing[d] / smallest < 2:
                kernel[d] = 3
        stride = [1] * dim
        for d in candidates:
            stride[d] = 2
            pools[d] += 1
            current_spacing[d] *= 2
            current_size[d] = math.ceil(current_size[d] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)  # the bottleneck always sees 3 voxels on every axis
    return strides, kernels, pools


def pad_to_divisor(patch_size: Sequence[float], divisor: Sequence[int]) -> list[int]:
    """Round each axis up to the next multiple of its divisor (an integer patch afterwards)."""
    return [int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisor)]


def divisor_of(topology: NetworkTopology) -> list[int]:
    """Per axis, what every input size must be a multiple of: the product of that axis's strides."""
    result = [1] * topology.dimension
    for stride in topology.strides:
        result = [r * s for r, s in zip(result, stride)]
    return result


def derive_topology(
    spacing: Sequence[float],
    patch_size: Sequence[float],
    settings: PlannerSettings,
    dimension: Literal[2, 3],
) -> tuple[NetworkTopology, list[int]]:
    """Pooling, kernels, features and block counts for a patch; returns (topology, padded patch).

    The padded patch is the input patch rounded up per axis to a multiple of 2^(pools on that
    axis), so every strided conv halves an even size and the decoder's skips line up.
    """
    if len(spacing) != dimension or len(patch_size) != dimension:
        raise SelfUNetError(
            f"derive_topology: spacing {list(spacing)} and patch size {list(patch_size)} must both have "
            f"{dimension} entries for a {dimension}D network."
        )
    if any(s <= 0 for s in spacing) or any(p <= 0 for p in patch_size):
        raise SelfUNetError(
            f"derive_topology: spacing {list(spacing)} and patch size {list(patch_size)} must be positive; "
            "check the spacings in the fingerprint."
        )
    strides, kernels, pools = _pooling_steps(spacing, patch_size, settings.min_feature_map_edge)
    num_stages = len(strides)
    max_features = settings.max_features_3d if dimension == 3 else settings.max_features_2d
    decoder_convs = settings.decoder_convs_per_stage or settings.convs_per_stage
    if settings.architecture == "residual_encoder":
        table = settings.residual_blocks_per_stage
        blocks: list[int] | None = [table[min(i, len(table) - 1)] for i in range(num_stages)]
        encoder_convs = [2 * b for b in blocks]
    else:
        blocks, encoder_convs = None, [settings.convs_per_stage] * num_stages
    topology = NetworkTopology(
        dimension=dimension,
        features_per_stage=[min(settings.base_features * 2**i, max_features) for i in range(num_stages)],
        kernel_sizes=kernels,
        strides=strides,
        convs_per_stage_encoder=encoder_convs,
        convs_per_stage_decoder=[decoder_convs] * (num_stages - 1),
        architecture=settings.architecture,
        blocks_per_stage_encoder=blocks,
    )
    padded = pad_to_divisor(patch_size, [2**p for p in pools])
    return topology, padded


def estimate_feature_map_elements(topology: NetworkTopology, patch_size: Sequence[int], num_classes: int) -> int:
    """Count the elements of every feature map one forward pass of the U-Net produces.

    This is the planner's proxy for activation memory (batch size 1, no deep-supervision heads).
    It counts exactly, and only, these outputs of the module :mod:`selfunet.training.network` builds:

    - encoder stage s (input size x_(s-1), x_(-1) = patch; stride t_s): each of its
      ``convs_per_stage_encoder[s]`` conv blocks outputs F_s x prod(x_s) with
      x_s = floor(x_(s-1) / t_s) (only the first conv is strided; "same" padding);
    - residual encoder only: the stem conv outputs F_0 x prod(patch), and the shortcut of a
      stage's first block, when it strides or changes the width, outputs F_s x prod(x_s);
    - decoder stage j (deepest first), working at the skip size x_k of encoder stage
      k = stages - 2 - j with F_k features: its transposed conv outputs F_k x prod(x_k) and each of
      its ``convs_per_stage_decoder[j]`` conv blocks outputs F_k x prod(x_k);
    - the final 1x1 segmentation conv outputs num_classes (incl. background) x prod(x_0).

    Normalization and non-linearity outputs, the concatenation and the bottleneck's absence of a
    skip are deliberately not counted; the budget constants were calibrated on this count.
    """
    if len(patch_size) != topology.dimension:
        raise SelfUNetError(
            f"estimate_feature_map_elements: patch size {list(patch_size)} does not have "
            f"{topology.dimension} entries."
        )
    sizes: list[list[int]] = []
    size = [int(p) for p in patch_size]
    total = 0
    residual = topology.architecture == "residual_encoder"
    previous_features = topology.features_per_stage[0]
    if residual:
        total += topology.features_per_stage[0] * math.prod(size)  # the stem
    for stage, stride in enumerate(topology.strides):
        size = [x // t for x, t in zip(size, stride)]
        sizes.append(size)
        features = topology.features_per_stage[stage]
        total += topology.convs_per_stage_encoder[stage] * features * math.prod(size)
        if residual and (features != previous_features or any(t != 1 for t in stride)):
            total += features * math.prod(size)  # the first block's shortcut (pooled / projected)
        previous_features = features
    for j, convs in enumerate(topology.convs_per_stage_decoder):
        k = topology.num_stages - 2 - j
        maps = topology.features_per_stage[k] * math.prod(sizes[k])
        total += convs * maps + maps
    total += num_classes * math.prod(sizes[0])
    return total
