"""What the augmentation does, as one typed config (defaults: docs/explanation/design.md#augmentation).

Every probability and range of every transform is a field, so the CLI and task descriptors can
change any of them without a subclass per value; bad values are rejected when the config is made,
with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selfunet.errors import SelfUNetError

if TYPE_CHECKING:  # annotations only: the command line reads this config without loading torch
    import torch

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities (per sample unless noted) and ranges of each transform (docs/explanation/design.md#augmentation).

    The defaults are the reference method's (nnU-Net v2's default trainer), including its quirks
    where the method keeps them (e.g. the read-patch rule uses its own scale range).
    """

    p_rotation: float = 0.2
    rotation_degrees_3d: Range = (-30.0, 30.0)
    """per axis, each axis drawn independently."""
    rotation_degrees_2d: Range = (-180.0, 180.0)
    """2D configurations (unless elongated), and the in-plane rotation of per-slice 3D patches."""
    rotation_degrees_2d_elongated: Range = (-15.0, 15.0)
    """2D patches whose longest edge exceeds ``elongation_ratio_2d`` x the shortest."""
    elongation_ratio_2d: float = 1.5
    p_scaling: float = 0.2
    scale_range: Range = (0.7, 1.4)
    """sampling-extent factor, the same on every axis: 1.4 shows a region 1.4x the patch (objects
    look smaller), 0.7 zooms in (the reference's convention)."""
    read_scale_range: Range = (0.85, 1.25)
    """the scale range the read-patch rule assumes (not ``scale_range``: the reference's rule)."""
    read_rotation_cap_degrees: float = 90.0
    """the read-patch rule never assumes a rotation above this (the reference's cap)."""
    p_noise: float = 0.1
    noise_std: Range = (0.0, 0.1)
    """standard deviation of the Gaussian noise, one per sample for all channels (the papers call
    it the variance; the reference uses the drawn value as the standard deviation)."""
    p_blur: float = 0.2
    blur_sigma: Range = (0.5, 1.0)
    """drawn per channel and per axis."""
    p_blur_per_channel: float = 0.5
    p_brightness: float = 0.15
    brightness_range: Range = (0.75, 1.25)
    """multiplicative, drawn per channel."""
    p_contrast: float = 0.15
    contrast_range: Range = (0.75, 1.25)
    """drawn per channel; the channel's value range is preserved."""
    p_lowres: float = 0.25
    lowres_zoom: Range = (0.5, 1.0)
    p_lowres_per_channel: float = 0.5
    """as in the reference implementation: each channel of a selected sample with this probability."""
    p_gamma: float = 0.3
    p_inverted_gamma: float = 0.1
    gamma_range: Range = (0.7, 1.5)
    """half of the draws below 1, half above (when the range straddles 1); mean and std retained."""
    p_mirror: float = 0.5
    """per axis."""
    mirror_axes: tuple[int, ...] | None = None
    """spatial axes that may be mirrored (0-based); ``None`` = all."""
    anisotropy_ratio: float = 3.0
    """3D patches with max edge > ratio x first edge get in-plane (per-slice) spatial transforms."""
    per_slice: bool | None = None
    """force per-slice spatial transforms on (True) or off (False); ``None`` = decide by the ratio."""
    p_seg_morphology: float = 0.4
    """cascade: a sample's previous-stage segmentation gets random binary morphology."""
    p_seg_morphology_per_class: float = 0.5
    seg_morphology_radius: Range = (1.0, 8.0)
    """radius (voxels) of the ball / disk structuring element, drawn per class."""
    p_seg_component_removal: float = 0.2
    """cascade: a sample's previous-stage segmentation loses random connected components."""
    p_seg_component_removal_per_class: float = 0.5
    seg_component_max_fraction: float = 0.15
    """only components smaller than this fraction of the patch are removed."""

    def __post_init__(self) -> None:
        for name in (
            "p_rotation", "p_scaling", "p_noise", "p_blur", "p_blur_per_channel", "p_brightness",
            "p_contrast", "p_lowres", "p_lowres_per_channel", "p_gamma", "p_inverted_gamma", "p_mirror",
            "p_seg_morphology", "p_seg_morphology_per_class", "p_seg_component_removal",
            "p_seg_component_removal_per_class", "seg_component_max_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SelfUNetError(f"augmentation: {name}={value} is not a probability in [0, 1].")
        for name in (
            "rotation_degrees_3d", "rotation_degrees_2d", "rotation_degrees_2d_elongated", "scale_range",
            "read_scale_range", "noise_std", "blur_sigma", "brightness_range", "contrast_range", "lowres_zoom",
            "gamma_range", "seg_morphology_radius",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise SelfUNetError(f"augmentation: {name}={(lo, hi)} has its lower bound above the upper.")
        for name in ("scale_range", "read_scale_range", "lowres_zoom", "gamma_range", "blur_sigma"):
            if getattr(self, name)[0] <= 0:
                raise SelfUNetError(f"augmentation: {name} must be positive, got {getattr(self, name)}.")
        if self.lowres_zoom[1] > 1.0:
            raise SelfUNetError(f"augmentation: lowres_zoom {self.lowres_zoom} must not exceed 1.")
        if self.noise_std[0] < 0:
            raise SelfUNetError(f"augmentation: noise_std {self.noise_std} must be >= 0.")
        if self.seg_morphology_radius[0] < 0:
            raise SelfUNetError(f"augmentation: seg_morphology_radius {self.seg_morphology_radius} must be >= 0.")
        if not 0.0 <= self.read_rotation_cap_degrees <= 180.0:
            raise SelfUNetError(
                f"augmentation: read_rotation_cap_degrees={self.read_rotation_cap_degrees} must be in [0, 180]."
            )
        for name in ("elongation_ratio_2d", "anisotropy_ratio"):
            if getattr(self, name) < 1.0:
                raise SelfUNetError(f"augmentation: {name}={getattr(self, name)} must be >= 1.")

    def uses_per_slice(self, patch_size: Sequence[int]) -> bool:
        """Whether a patch gets in-plane-only spatial transforms (only ever for 3D patches)."""
        if len(patch_size) != 3:
            return False
        if self.per_slice is not None:
            return self.per_slice
        return max(patch_size) > self.anisotropy_ratio * patch_size[0]

    def rotation_degrees(self, patch_size: Sequence[int]) -> Range:
        """The rotation range a patch gets (the reference's rule): 3D +-30 deg per axis; 2D and the
        in-plane rotation of per-slice 3D patches +-180 deg, but +-15 deg for 2D patches whose
        longest edge is more than 1.5x their shortest."""
        if len(patch_size) == 3:
            return self.rotation_degrees_2d if self.uses_per_slice(patch_size) else self.rotation_degrees_3d
        if max(patch_size) > self.elongation_ratio_2d * min(patch_size):
            return self.rotation_degrees_2d_elongated
        return self.rotation_degrees_2d


@dataclass
class AugmentationParams:
    """Everything random about one batch (CPU tensors; leading dimension = batch)."""

    spatial: torch.Tensor
    """[B] bool: rotation or scaling applied."""
    matrix: torch.Tensor
    """[B, k, k] float64: output offset -> input offset (rotation / scale), k = spatial dims
    transformed (2 in per-slice mode)."""
    rotate: torch.Tensor
    scale: torch.Tensor
    """[B] float: magnification (1 where not scaled)."""
    noise: torch.Tensor
    noise_std: torch.Tensor
    noise_seed: int
    blur: torch.Tensor
    """[B, C] bool (sample and channel selected)."""
    blur_sigma: torch.Tensor
    """[B, C, d]."""
    brightness: torch.Tensor
    brightness_factor: torch.Tensor
    """[B, C]."""
    contrast: torch.Tensor
    contrast_factor: torch.Tensor
    lowres: torch.Tensor
    """[B, C] bool."""
    lowres_zoom: torch.Tensor
    """[B, C]."""
    inverted_gamma: torch.Tensor
    inverted_gamma_value: torch.Tensor
    """[B, C]."""
    gamma: torch.Tensor
    gamma_value: torch.Tensor
    mirror: torch.Tensor
    """[B, d] bool."""
    seg_morphology: torch.Tensor | None = None
    """cascade, [B, K] bool (sample and previous-stage class selected); K = one-hot channels."""
    seg_morphology_op: torch.Tensor | None = None
    """[B, K] int64: 0 dilation, 1 erosion, 2 closing, 3 opening."""
    seg_morphology_radius: torch.Tensor | None = None
    """[B, K] float."""
    seg_morphology_order: torch.Tensor | None = None
    """[B, K] int64: the order in which the classes of a sample are processed (a permutation)."""
    seg_component_removal: torch.Tensor | None = None
    """[B, K] bool."""
    seg_component_pick: torch.Tensor | None = None
    """[B, K] uniform [0, 1): which of the eligible components is removed."""
