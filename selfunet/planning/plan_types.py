"""The plan artifact (docs/explanation/design.md#plan-rules): every rule-based decision, per configuration.

Only the data model lives here; the rules are in :mod:`selfunet.planning.plan` and
:mod:`selfunet.planning.topology`. Every constant of the rules is a field of :class:`PlannerSettings`
with the method's default (docs/explanation/design.md#plan-rules), so a user changes it with an option, not a subclass.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from selfunet.artifacts import Artifact
from selfunet.data.labels import LabelScheme


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- bounds -------------------------------------------------------------------------------------
# A plan is read from a work directory and from model archives someone else made: every number that
# sizes an allocation is bounded here, far above any plan the planner makes (docs/guide/security.md),
# so an absurd value is refused with its field named instead of asking for terabytes.

#: a configuration name and a data identifier become folder names (``train/<name>``,
#: ``preprocessed/<id>``): letters, digits, ``_ . -``, starting with a letter or digit.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PlanName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
MAX_STAGES = 16
MAX_FEATURES = 4096
MAX_KERNEL = 15
MAX_STRIDE = 16
MAX_CONVS_PER_STAGE = 64
MAX_PATCH_EDGE = 4096
#: voxels of one patch (the planner starts from 256^3 = 2^24 in 3D and 2048^2 in 2D).
MAX_PATCH_VOXELS = 2**27
MAX_BATCH_SIZE = 65536
#: elements of the first feature map of one training batch (batch x features x patch voxels):
#: 2^34 float32 values are 64 GiB; the default 3D plan has 2 x 32 x 128^3 = 2^27.
MAX_BATCH_ACTIVATIONS = 2**34
#: the network's parameters (the default 3D U-Net has 3e7, the largest residual presets ~2e8).
MAX_PARAMETERS = 2**31
MAX_INPUT_CHANNELS = 256
MAX_CLASSES = 4096
MAX_SHAPE_EDGE = 2**24
MIN_SPACING_MM, MAX_SPACING_MM = 1e-6, 1e4

Features = Annotated[int, Field(ge=1, le=MAX_FEATURES)]
Edge = Annotated[int, Field(ge=1, le=MAX_PATCH_EDGE)]
Spacing = Annotated[float, Field(gt=MIN_SPACING_MM, le=MAX_SPACING_MM, allow_inf_nan=False)]
Kernel = Annotated[list[Annotated[int, Field(ge=1, le=MAX_KERNEL)]], Field(min_length=2, max_length=3)]
Stride = Annotated[list[Annotated[int, Field(ge=1, le=MAX_STRIDE)]], Field(min_length=2, max_length=3)]
Convs = Annotated[int, Field(ge=1, le=MAX_CONVS_PER_STAGE)]


NormalizationScheme = Literal["ct", "zscore", "none", "rescale01"]
ConfigurationName = Literal["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]


class ChannelNormalization(_Frozen):
    scheme: NormalizationScheme
    use_nonzero_mask: bool = False
    """z-score: compute statistics inside the non-zero mask only and keep the outside at 0."""
    clip_low: float | None = None
    """CT: the dataset's foreground 0.5th percentile."""
    clip_high: float | None = None
    """CT: the dataset's foreground 99.5th percentile."""
    mean: float | None = None
    """CT: the dataset's foreground mean."""
    std: float | None = None
    """CT: the dataset's foreground standard deviation."""


class ResamplingSettings(_Frozen):
    image_order: int = 3
    image_order_out_of_plane: int = 0
    label_order: int = 1
    label_order_out_of_plane: int = 0
    probabilities_order: int = 1
    probabilities_order_out_of_plane: int = 0
    anisotropy_threshold: float = 3.0
    """a case is anisotropic when max spacing / min spacing exceeds this."""


Architecture = Literal["plain", "residual_encoder"]


class NetworkTopology(_Frozen):
    """A U-Net described by per-stage lists; the network and the memory estimate both read it.

    ``architecture`` picks the encoder: ``plain`` stacks ``convs_per_stage_encoder[s]`` conv
    blocks per stage; ``residual_encoder`` (the residual-encoder presets) puts one conv block (the
    stem) before stage 0 and ``blocks_per_stage_encoder[s]`` residual blocks (two convs each, so
    ``convs_per_stage_encoder[s]`` is twice that) per stage. The decoder is the same for both.
    """

    dimension: Literal[2, 3]
    features_per_stage: Annotated[list[Features], Field(min_length=1, max_length=MAX_STAGES)]
    kernel_sizes: list[Kernel]
    strides: list[Stride]
    """stage 0 has stride 1 on every axis."""
    convs_per_stage_encoder: list[Convs]
    convs_per_stage_decoder: list[Convs]
    """one entry per decoder stage (stages - 1), deepest first."""
    architecture: Architecture = "plain"
    blocks_per_stage_encoder: list[Convs] | None = None
    """residual blocks per encoder stage (``residual_encoder`` only; None for ``plain``)."""

    @model_validator(mode="after")
    def _consistent(self) -> NetworkTopology:
        n = len(self.features_per_stage)
        for name in ("kernel_sizes", "strides", "convs_per_stage_encoder"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, features_per_stage {n} "
                                 "(one per stage)")
        if len(self.convs_per_stage_decoder) != n - 1:
            raise ValueError(f"convs_per_stage_decoder has {len(self.convs_per_stage_decoder)} entries, "
                             f"expected {n - 1} (stages - 1)")
        if self.blocks_per_stage_encoder is not None and len(self.blocks_per_stage_encoder) != n:
            raise ValueError(f"blocks_per_stage_encoder has {len(self.blocks_per_stage_encoder)} entries, expected {n}")
        for name in ("kernel_sizes", "strides"):
            if any(len(entry) != self.dimension for entry in getattr(self, name)):
                raise ValueError(f"every entry of {name} must have {self.dimension} values (the dimension)")
        if self.estimated_parameters() > MAX_PARAMETERS:
            raise ValueError(f"features_per_stage {self.features_per_stage} with these kernels and conv counts make "
                             f"about {self.estimated_parameters():.3g} parameters, more than {MAX_PARAMETERS:.3g}")
        return self

    def estimated_parameters(self) -> int:
        """An upper estimate of the weights (encoder, transposed convs and decoder), before building."""
        total = 0
        for s, features in enumerate(self.features_per_stage):
            widest = max(features, self.features_per_stage[s - 1] if s else 1)
            convs = self.convs_per_stage_encoder[s] + (self.convs_per_stage_decoder[s] if s < len(
                self.convs_per_stage_decoder) else 0) + 2
            total += convs * 2 * widest * widest * math.prod(max(k, st) for k, st in zip(
                self.kernel_sizes[s], self.strides[s]))
        return total

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)


class Configuration(_Frozen):
    name: PlanName
    dimension: Literal[2, 3]
    data_identifier: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    """name of the preprocessed data folder; configurations with equal preprocessing share it."""
    spacing: Annotated[list[Spacing], Field(min_length=2, max_length=3)]
    """target spacing in plan axis order (``Plan.transpose_forward`` applied); for 2D the first
    entry is the (unresampled) median out-of-plane spacing."""
    median_shape: Annotated[list[Annotated[int, Field(ge=1, le=MAX_SHAPE_EDGE)]], Field(min_length=2, max_length=3)]
    """median case shape at the target spacing, plan axis order."""
    patch_size: Annotated[list[Edge], Field(min_length=2, max_length=3)]
    """2 entries for 2D, 3 for 3D (plan axis order)."""
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]
    normalization: list[ChannelNormalization]
    topology: NetworkTopology
    resampling: ResamplingSettings = ResamplingSettings()
    batch_dice: bool
    estimated_feature_map_elements: Annotated[int, Field(ge=0)]
    previous_stage: PlanName | None = None
    """cascade: the configuration whose predictions are extra input channels."""
    next_stage: PlanName | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Configuration:
        if self.topology.dimension != self.dimension:
            raise ValueError(f"topology.dimension {self.topology.dimension} differs from dimension {self.dimension}")
        if len(self.patch_size) != self.dimension:
            raise ValueError(f"patch_size {self.patch_size} must have {self.dimension} entries (the dimension)")
        voxels = math.prod(self.patch_size)
        if voxels > MAX_PATCH_VOXELS:
            raise ValueError(f"patch_size {self.patch_size} has {voxels:,} voxels, more than {MAX_PATCH_VOXELS:,}")
        activations = self.batch_size * self.topology.features_per_stage[0] * voxels
        if activations > MAX_BATCH_ACTIVATIONS:
            raise ValueError(
                f"batch_size {self.batch_size} x features_per_stage[0] {self.topology.features_per_stage[0]} x "
                f"patch_size {self.patch_size} is {activations:.3g} activations, more than {MAX_BATCH_ACTIVATIONS:.3g}")
        return self


class PlannerSettings(_Frozen):
    """Every constant of the planning rules, with the method's default (docs/explanation/design.md#plan-rules)."""

    preset: str = "default"
    """the named preset these settings came from (:mod:`selfunet.planning.presets`)."""
    gpu_memory_gb: float = 8.0
    reference_memory_gb: float = 8.0
    reference_budget_3d: float = 560e6
    reference_budget_2d: float = 85e6
    reference_batch_3d: int = 2
    reference_batch_2d: int = 12
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    convs_per_stage: int = 2
    """plain encoder: conv blocks per stage; also the decoder's unless ``decoder_convs_per_stage`` is set."""
    decoder_convs_per_stage: int | None = None
    architecture: Architecture = "plain"
    residual_blocks_per_stage: list[int] = [1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6]
    """residual encoder: blocks of stage s (a network deeper than this list repeats its last entry)."""
    budget_per_reference_batch: bool = True
    """True (default planner): the budget holds the reference batch, so the estimate of one sample
    is compared after scaling to two samples (``estimate / reference_batch * 2``); False (residual
    presets): the estimate of one sample is compared with the budget directly."""
    min_feature_map_edge: int = 4
    initial_patch_voxels_3d: int = 256**3
    initial_patch_voxels_2d: int = 2048**2
    initial_patch_rule: Literal["isotropic_extent", "median_shape"] = "isotropic_extent"
    anisotropy_spacing_ratio: float = 3.0
    anisotropy_size_ratio: float = 3.0
    anisotropy_percentile: float = 10.0
    batch_cap_fraction: float = 0.05
    min_batch_size: int = 2
    cascade_trigger_fraction: float = 0.125
    """plan a lowres stage when the fullres patch covers less than this fraction of the median image."""
    lowres_target_fraction: float = 0.25
    lowres_spacing_step: float = 1.01
    lowres_min_size_ratio: float = 2.0
    crop_ratio_for_nonzero_mask: float = 0.75


class Plan(Artifact):
    SCHEMA_VERSION: ClassVar[int] = 2
    """2: topologies name their architecture (plain or residual encoder); version-1 plans are
    plain U-Nets and load unchanged."""
    PRODUCED_BY: ClassVar[str] = "`selfunet plan WORK`"

    schema_version: int = 2

    dataset_name: Annotated[str, Field(max_length=1000)]
    num_input_channels: Annotated[int, Field(ge=1, le=MAX_INPUT_CHANNELS)]
    num_classes: Annotated[int, Field(ge=1, le=MAX_CLASSES)]
    """label classes including the background, not counting the ignore label."""
    labels: Annotated[dict[str, str], Field(max_length=MAX_CLASSES + 1)]
    transpose_forward: list[int]
    """array axes -> plan axes (coarsest spacing first)."""
    transpose_backward: list[int]
    settings: PlannerSettings
    configurations: Annotated[dict[PlanName, Configuration], Field(max_length=64)]
    label_scheme: LabelScheme = LabelScheme()
    """regions (sigmoid outputs) and the ignore label, from the dataset."""

    @field_validator("transpose_forward", "transpose_backward")
    @classmethod
    def _permutation(cls, value: list[int]) -> list[int]:
        if sorted(value) != [0, 1, 2]:
            raise ValueError(f"{value} is not a permutation of the axes 0, 1, 2")
        return value

    @model_validator(mode="after")
    def _stages_exist(self) -> Plan:
        for name, configuration in self.configurations.items():
            previous = configuration.previous_stage
            if previous is not None and previous not in self.configurations:
                raise ValueError(f"configurations.{name}.previous_stage names '{previous}', which is not a "
                                 "configuration of the plan")
        return self

    @property
    def num_outputs(self) -> int:
        """Network output channels: one per region for region-based training, else num_classes."""
        return self.label_scheme.num_outputs(self.num_classes)

    def input_channels(self, configuration: str) -> int:
        """Network input channels: the image channels, plus for a cascade stage one channel per
        foreground class holding the previous stage's one-hot prediction."""
        extra = self.num_classes - 1 if self.configurations[configuration].previous_stage else 0
        return self.num_input_channels + extra
