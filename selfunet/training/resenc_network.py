"""The residual encoder of the residual-encoder presets (``NetworkTopology.architecture``).

ResNet-D style basic blocks ("nnU-Net Revisited", MICCAI 2024, after He et al., "Bag of tricks",
CVPR 2019): two conv -> norm (-> leaky ReLU) steps on the main path; a shortcut that, when the
block strides, average-pools first and, when the width changes, projects with a 1x1 conv + norm
(average-pooling instead of a strided 1x1 conv keeps every input voxel in the shortcut); the sum
goes through the non-linearity. Only a stage's first block strides or changes width. A stem (one
conv block, no stride) lifts the input channels to stage 0's width before the first block.

The decoder is the plain U-Net's (:mod:`selfunet.training.network`), which imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from selfunet.planning.plan_types import NetworkTopology

LEAKY_RELU_SLOPE = 0.01
INSTANCE_NORM_EPS = 1e-5

_OPS: dict[int, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    2: (nn.Conv2d, nn.InstanceNorm2d, nn.AvgPool2d),
    3: (nn.Conv3d, nn.InstanceNorm3d, nn.AvgPool3d),
}


class ConvNorm(nn.Module):
    """conv -> instance norm (affine), optionally -> leaky ReLU."""

    def __init__(self, dimension: int, in_channels: int, out_channels: int, kernel: Sequence[int],
                 stride: Sequence[int], bias: bool = True, activation: bool = True) -> None:
        super().__init__()
        conv, norm, _ = _OPS[dimension]
        self.conv = conv(in_channels, out_channels, kernel_size=tuple(kernel), stride=tuple(stride),
                         padding=tuple(k // 2 for k in kernel), bias=bias)
        self.norm = norm(out_channels, eps=INSTANCE_NORM_EPS, affine=True)
        self.act = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """Basic residual block: ``act(conv_norm(conv_norm_act(x)) + shortcut(x))``."""

    def __init__(self, dimension: int, in_channels: int, out_channels: int, kernel: Sequence[int],
                 stride: Sequence[int]) -> None:
        super().__init__()
        _, _, pool = _OPS[dimension]
        self.conv1 = ConvNorm(dimension, in_channels, out_channels, kernel, stride)
        self.conv2 = ConvNorm(dimension, out_channels, out_channels, kernel, [1] * dimension, activation=False)
        shortcut: list[nn.Module] = []
        if any(s != 1 for s in stride):
            shortcut.append(pool(kernel_size=tuple(stride), stride=tuple(stride)))
        if in_channels != out_channels:
            shortcut.append(ConvNorm(dimension, in_channels, out_channels, [1] * dimension, [1] * dimension,
                                     bias=False, activation=False))
        self.shortcut = nn.Sequential(*shortcut) if shortcut else None
        self.act = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.conv2(self.conv1(x)) + residual)

    def counted_modules(self) -> list[nn.Module]:
        """Modules whose outputs the planner's estimate counts: both convs and the shortcut."""
        counted: list[nn.Module] = [self.conv1.conv, self.conv2.conv]
        if self.shortcut is not None:
            counted.append(self.shortcut[-1])
        return counted

    def zero_init_last_norm(self) -> None:
        """Start the block as (nearly) the identity: a deep residual stack then trains stably
        from the first step (Goyal et al. 2017; the reference does the same)."""
        nn.init.zeros_(self.conv2.norm.weight)


def residual_stem(topology: NetworkTopology, in_channels: int) -> ConvNorm:
    d = topology.dimension
    return ConvNorm(d, in_channels, topology.features_per_stage[0], topology.kernel_sizes[0], [1] * d)


def residual_stage(topology: NetworkTopology, stage: int) -> nn.Sequential:
    """``blocks_per_stage_encoder[stage]`` blocks; the first one strides and changes width."""
    feats = topology.features_per_stage
    blocks = topology.blocks_per_stage_encoder or []
    in_channels = feats[max(stage - 1, 0)]
    d = topology.dimension
    return nn.Sequential(*[
        ResidualBlock(d, in_channels if i == 0 else feats[stage], feats[stage], topology.kernel_sizes[stage],
                      topology.strides[stage] if i == 0 else [1] * d)
        for i in range(blocks[stage])
    ])
