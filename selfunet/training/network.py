"""The U-Net template (docs/explanation/design.md#network), built from a planned :class:`NetworkTopology`.

One class serves 2D and 3D: the dimension only picks the operators (convolution, instance norm,
transposed convolution); and both encoders: the topology's ``architecture`` picks plain conv
stages or the residual encoder of :mod:`selfunet.training.resenc_network` (same decoder).
The network also measures itself: :meth:`UNet.count_feature_map_elements`
counts the activations the planner's memory estimate counts, by running a weightless twin on the
``meta`` device, so a test can check that the planner's arithmetic and the real modules agree;
:meth:`UNet.conv_flops` gives the convolution work of one forward pass, which turns a measured
iteration time into achieved GFLOP/s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import NetworkTopology
from selfunet.training.resenc_network import (
    INSTANCE_NORM_EPS,
    LEAKY_RELU_SLOPE,
    ResidualBlock,
    residual_stage,
    residual_stem,
)

_OPS: dict[int, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    2: (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d),
    3: (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d),
}

_CONV_TYPES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class ConvBlock(nn.Module):
    """conv -> instance norm (affine) -> leaky ReLU, the template's only building block."""

    def __init__(
        self, dimension: int, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int]
    ) -> None:
        super().__init__()
        conv, _, norm = _OPS[dimension]
        self.conv = conv(
            in_channels,
            out_channels,
            kernel_size=tuple(kernel),
            stride=tuple(stride),
            padding=tuple(k // 2 for k in kernel),
            bias=True,
        )
        self.norm = norm(out_channels, eps=INSTANCE_NORM_EPS, affine=True)
        self.act = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _stacked(
    dimension: int, n: int, in_channels: int, out_channels: int, kernel: Sequence[int], first_stride: Sequence[int]
) -> nn.Sequential:
    """``n`` conv blocks; only the first one strides (downsampling by convolution, not pooling)."""
    ones = [1] * dimension
    return nn.Sequential(
        *[
            ConvBlock(dimension, in_channels if i == 0 else out_channels, out_channels, kernel,
                      first_stride if i == 0 else ones)
            for i in range(n)
        ]
    )


def validate_topology(topology: NetworkTopology, source: str = "topology") -> None:
    """Reject inconsistent per-stage lists here, with the field named, instead of deep in torch."""
    n = topology.num_stages
    d = topology.dimension
    if n < 2:
        raise SelfUNetError(f"{source}: a U-Net needs at least 2 stages, got {n} (features_per_stage).")
    for name in ("kernel_sizes", "strides", "convs_per_stage_encoder"):
        if len(getattr(topology, name)) != n:
            raise SelfUNetError(
                f"{source}: '{name}' has {len(getattr(topology, name))} entries but features_per_stage "
                f"has {n}; give one entry per stage."
            )
    if len(topology.convs_per_stage_decoder) != n - 1:
        raise SelfUNetError(
            f"{source}: 'convs_per_stage_decoder' has {len(topology.convs_per_stage_decoder)} entries; "
            f"it needs one per decoder stage ({n - 1})."
        )
    for name in ("kernel_sizes", "strides"):
        for s, entry in enumerate(getattr(topology, name)):
            if len(entry) != d or any(v < 1 for v in entry):
                raise SelfUNetError(
                    f"{source}: '{name}[{s}]' = {entry} must hold {d} positive integers (dimension {d})."
                )
    if any(v != 1 for v in topology.strides[0]):
        raise SelfUNetError(f"{source}: 'strides[0]' = {topology.strides[0]} must be all 1 "
                            "(docs/explanation/design.md#network).")
    if any(f < 1 for f in topology.features_per_stage):
        raise SelfUNetError(f"{source}: 'features_per_stage' must be positive, got {topology.features_per_stage}.")
    if any(c < 1 for c in [*topology.convs_per_stage_encoder, *topology.convs_per_stage_decoder]):
        raise SelfUNetError(f"{source}: every stage needs at least one conv block.")
    blocks = topology.blocks_per_stage_encoder
    if topology.architecture == "residual_encoder":
        if blocks is None or len(blocks) != n or any(b < 1 for b in blocks):
            raise SelfUNetError(
                f"{source}: a residual_encoder needs 'blocks_per_stage_encoder' with one positive entry per "
                f"stage ({n}), got {blocks}."
            )
        if list(topology.convs_per_stage_encoder) != [2 * b for b in blocks]:
            raise SelfUNetError(
                f"{source}: 'convs_per_stage_encoder' {topology.convs_per_stage_encoder} must be twice "
                f"'blocks_per_stage_encoder' {blocks} (two convs per residual block); edit both together."
            )
    elif blocks is not None:
        raise SelfUNetError(
            f"{source}: 'blocks_per_stage_encoder' is only for architecture 'residual_encoder'; remove it or "
            "set the architecture."
        )


class UNet(nn.Module):
    """A U-Net (plain or residual encoder) with one segmentation head per decoder stage (deep supervision).

    ``forward`` returns a list of logits, full resolution first, while ``deep_supervision`` is
    True (training); set it False for prediction, and ``forward`` returns only the full-resolution
    logits and skips the other heads.
    """

    def __init__(
        self, topology: NetworkTopology, in_channels: int, num_classes: int, deep_supervision: bool = True
    ) -> None:
        super().__init__()
        validate_topology(topology)
        if in_channels < 1:
            raise SelfUNetError(f"in_channels must be >= 1, got {in_channels}.")
        if num_classes < 2:
            raise SelfUNetError(f"num_classes counts the background and must be >= 2, got {num_classes}.")
        self.topology = topology
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        d = topology.dimension
        feats = topology.features_per_stage
        n = topology.num_stages
        conv, transp, _ = _OPS[d]

        self.encoder = nn.ModuleList()
        self.stem: nn.Module | None = None
        if topology.architecture == "residual_encoder":
            self.stem = residual_stem(topology, in_channels)
            self.encoder.extend(residual_stage(topology, s) for s in range(n))
        else:
            prev = in_channels
            for s in range(n):
                self.encoder.append(
                    _stacked(d, topology.convs_per_stage_encoder[s], prev, feats[s], topology.kernel_sizes[s],
                             topology.strides[s])
                )
                prev = feats[s]

        # Decoder stage i (deepest first) upsamples stage (n-1-i) to the skip of stage (n-2-i).
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.seg_heads = nn.ModuleList()
        for i in range(n - 1):
            below, skip = n - 1 - i, n - 2 - i
            stride = tuple(topology.strides[below])
            self.upsample.append(transp(feats[below], feats[skip], kernel_size=stride, stride=stride, bias=True))
            self.decoder.append(
                _stacked(d, topology.convs_per_stage_decoder[i], 2 * feats[skip], feats[skip],
                         topology.kernel_sizes[skip], [1] * d)
            )
            self.seg_heads.append(conv(feats[skip], num_classes, kernel_size=1, stride=1, padding=0, bias=True))
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                module.zero_init_last_norm()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs: list[torch.Tensor] = []
        last = len(self.decoder) - 1
        for i, (up, stage, head) in enumerate(zip(self.upsample, self.decoder, self.seg_heads)):
            x = up(x)
            x = stage(torch.cat((x, skips[-(i + 2)]), dim=1))
            if self.deep_supervision or i == last:
                outputs.append(head(x))
        outputs.reverse()
        return outputs if self.deep_supervision else outputs[0]

    # --- self-measurement -------------------------------------------------------------------

    def _meta_twin(self, deep_supervision: bool) -> UNet:
        """Same modules without weights, so measuring a 3D patch costs no memory or time."""
        with torch.device("meta"):
            return UNet(self.topology, self.in_channels, self.num_classes, deep_supervision)

    def _check_patch(self, patch_size: Sequence[int]) -> tuple[int, ...]:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != self.topology.dimension or any(p < 1 for p in patch):
            raise SelfUNetError(
                f"patch_size {list(patch_size)} must hold {self.topology.dimension} positive sizes."
            )
        return patch

    def count_feature_map_elements(self, patch_size: Sequence[int]) -> int:
        """Activation elements per sample that the planner's estimate counts (docs/explanation/design.md#network).

        Measured from the real module outputs: every encoder and decoder conv (with a residual
        encoder also the stem and each shortcut that pools or projects), every transposed conv, and
        the full-resolution segmentation output only (no deep-supervision heads).
        """
        patch = self._check_patch(patch_size)
        twin = self._meta_twin(deep_supervision=False)
        counted: list[nn.Module] = [] if twin.stem is None else [twin.stem.conv]
        for stage in (*twin.encoder, *twin.decoder):
            for block in stage:
                counted += block.counted_modules() if isinstance(block, ResidualBlock) else [block.conv]
        counted += list(twin.upsample)
        counted.append(twin.seg_heads[-1])
        total = 0

        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            nonlocal total
            total += math.prod(out.shape[1:])

        self._run_hooked(twin, counted, hook, patch)
        return int(total)

    def conv_flops(self, patch_size: Sequence[int], deep_supervision: bool | None = None) -> int:
        """FLOPs (2 x multiply-adds) of all (transposed) convolutions in one forward pass of one sample.

        Multiply by the batch size, and by about 3 for forward + backward, to get the work of a
        training iteration. ``deep_supervision`` defaults to the model's current setting.
        """
        patch = self._check_patch(patch_size)
        ds = self.deep_supervision if deep_supervision is None else deep_supervision
        twin = self._meta_twin(deep_supervision=ds)
        total = 0

        def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            nonlocal total
            kernel = math.prod(m.kernel_size)  # type: ignore[arg-type]
            if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                # every input voxel scatters a kernel-sized block into every output channel
                total += 2 * math.prod(inputs[0].shape[1:]) * m.out_channels * kernel
            else:
                total += 2 * math.prod(out.shape[1:]) * (m.in_channels // m.groups) * kernel  # type: ignore[operator]

        self._run_hooked(twin, [m for m in twin.modules() if isinstance(m, _CONV_TYPES)], hook, patch)
        return int(total)

    def _run_hooked(self, twin: UNet, modules: Sequence[nn.Module], hook, patch: Sequence[int]) -> None:
        """One forward pass of a one-sample meta tensor through ``twin`` with ``hook`` on ``modules``."""
        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            with torch.no_grad():
                twin(torch.empty((1, self.in_channels, *patch), device="meta"))
        finally:
            for h in handles:
                h.remove()


def _init_weights(module: nn.Module) -> None:
    """He init matched to the leaky ReLU slope; zero biases, so every run starts alike."""
    if isinstance(module, _CONV_TYPES):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_RELU_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_network(
    topology: NetworkTopology, in_channels: int, num_classes: int, deep_supervision: bool = True
) -> UNet:
    """The one entry point training and prediction use to turn a plan into a model."""
    return UNet(topology, in_channels, num_classes, deep_supervision)


def memory_format_for(dimension: int) -> torch.memory_format:
    """``channels_last`` for 2D, ``channels_last_3d`` for 3D (inputs must use the same one)."""
    return torch.channels_last_3d if dimension == 3 else torch.channels_last


def to_channels_last(model: UNet) -> UNet:
    """Move weights to the channels-last layout, which oneDNN / cuDNN convolutions run faster on."""
    return model.to(memory_format=memory_format_for(model.topology.dimension))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
