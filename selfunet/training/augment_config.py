"""What the augmentation does, as one typed config (SPEC section 3 defaults).

Every probability and range of every transform is a field, so the CLI and task descriptors can
change any of them without a subclass per value; bad values are rejected when the config is made,
with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from selfunet.errors import SelfUNetError

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities (per sample unless noted) and ranges of every augmentation (SPEC section 3)."""

    p_rotation: float = 0.2
    rotation_degrees_3d: Range = (-30.0, 30.0)
    """per axis, each axis drawn independently."""
    rotation_degrees_2d: Range = (-180.0, 180.0)
    """2D configurations, and the in-plane rotation of per-slice (anisotropic) 3D patches."""
    p_scaling: float = 0.2
    scale_range: Range = (0.7, 1.4)
    """magnification; the same on every (rotated) axis."""
    p_noise: float = 0.1
    noise_variance: Range = (0.0, 0.1)
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

    def __post_init__(self) -> None:
        for name in (
            "p_rotation", "p_scaling", "p_noise", "p_blur", "p_blur_per_channel", "p_brightness",
            "p_contrast", "p_lowres", "p_lowres_per_channel", "p_gamma", "p_inverted_gamma", "p_mirror",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SelfUNetError(f"augmentation: {name}={value} is not a probability in [0, 1].")
        for name in (
            "rotation_degrees_3d", "rotation_degrees_2d", "scale_range", "noise_variance", "blur_sigma",
            "brightness_range", "contrast_range", "lowres_zoom", "gamma_range",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise SelfUNetError(f"augmentation: {name}={(lo, hi)} has its lower bound above the upper.")
        for name in ("scale_range", "lowres_zoom", "gamma_range", "blur_sigma"):
            if getattr(self, name)[0] <= 0:
                raise SelfUNetError(f"augmentation: {name} must be positive, got {getattr(self, name)}.")
        if self.lowres_zoom[1] > 1.0:
            raise SelfUNetError(f"augmentation: lowres_zoom {self.lowres_zoom} must not exceed 1.")
        if self.noise_variance[0] < 0:
            raise SelfUNetError(f"augmentation: noise_variance {self.noise_variance} must be >= 0.")

    def uses_per_slice(self, patch_size: Sequence[int]) -> bool:
        """Whether a patch gets in-plane-only spatial transforms (only ever for 3D patches)."""
        if len(patch_size) != 3:
            return False
        if self.per_slice is not None:
            return self.per_slice
        return max(patch_size) > self.anisotropy_ratio * patch_size[0]


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
