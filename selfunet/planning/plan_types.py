"""The plan artifact (docs/explanation/design.md#plan-rules): every rule-based decision, per configuration.

Only the data model lives here; the rules are in :mod:`selfunet.planning.plan` and
:mod:`selfunet.planning.topology`. Every constant of the rules is a field of :class:`PlannerSettings`
with the method's default (docs/explanation/design.md#plan-rules), so a user changes it with an option, not a subclass.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from selfunet.artifacts import Artifact
from selfunet.data.labels import LabelScheme


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    """stage 0 has stride 1 on every axis."""
    convs_per_stage_encoder: list[int]
    convs_per_stage_decoder: list[int]
    """one entry per decoder stage (stages - 1), deepest first."""
    architecture: Architecture = "plain"
    blocks_per_stage_encoder: list[int] | None = None
    """residual blocks per encoder stage (``residual_encoder`` only; None for ``plain``)."""

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)


class Configuration(_Frozen):
    name: str
    dimension: Literal[2, 3]
    data_identifier: str
    """name of the preprocessed data folder; configurations with equal preprocessing share it."""
    spacing: list[float]
    """target spacing in plan axis order (``Plan.transpose_forward`` applied); for 2D the first
    entry is the (unresampled) median out-of-plane spacing."""
    median_shape: list[int]
    """median case shape at the target spacing, plan axis order."""
    patch_size: list[int]
    """2 entries for 2D, 3 for 3D (plan axis order)."""
    batch_size: int
    normalization: list[ChannelNormalization]
    topology: NetworkTopology
    resampling: ResamplingSettings = ResamplingSettings()
    batch_dice: bool
    estimated_feature_map_elements: int
    previous_stage: str | None = None
    """cascade: the configuration whose predictions are extra input channels."""
    next_stage: str | None = None


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

    dataset_name: str
    num_input_channels: int
    num_classes: int
    """label classes including the background, not counting the ignore label."""
    labels: dict[str, str]
    transpose_forward: list[int]
    """array axes -> plan axes (coarsest spacing first)."""
    transpose_backward: list[int]
    settings: PlannerSettings
    configurations: dict[str, Configuration]
    label_scheme: LabelScheme = LabelScheme()
    """regions (sigmoid outputs) and the ignore label, from the dataset."""

    @property
    def num_outputs(self) -> int:
        """Network output channels: one per region for region-based training, else num_classes."""
        return self.label_scheme.num_outputs(self.num_classes)

    def input_channels(self, configuration: str) -> int:
        """Network input channels: the image channels, plus for a cascade stage one channel per
        foreground class holding the previous stage's one-hot prediction."""
        extra = self.num_classes - 1 if self.configurations[configuration].previous_stage else 0
        return self.num_input_channels + extra
