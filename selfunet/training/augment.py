"""On-the-fly data augmentation (SPEC section 3), batched on the training device.

Why this shape: every transform has a *draw* step (all random numbers of a batch, from one CPU
``torch.Generator``, always the same number of draws whatever the outcomes) and a deterministic
*apply* step. A seed therefore reproduces a batch exactly, the draw step alone is cheap enough to
test probabilities statistically, and the apply step can be tested with hand-made parameters.

The transforms themselves live by kind: :mod:`selfunet.training.augment_spatial` (rotation,
scaling, the read patch, mirroring) and :mod:`selfunet.training.augment_intensity`; what they do is
:class:`selfunet.training.augment_config.AugmentationConfig`. This module draws and applies them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from selfunet.errors import SelfUNetError
from selfunet.training.augment_config import AugmentationConfig, AugmentationParams, Range
from selfunet.training.augment_intensity import apply_intensity
from selfunet.training.augment_spatial import (
    crop_slices,
    enlarged_patch_size,
    mirror,
    rotation_matrices,
    warp,
)

__all__ = [
    "AugmentationConfig", "AugmentationParams", "Augmenter", "enlarged_patch_size", "generator_for",
]


def generator_for(seed: int, batch_index: int) -> torch.Generator:
    """The CPU generator for batch ``batch_index`` of a run: a pure function of its arguments."""
    state = np.random.SeedSequence([int(seed), int(batch_index), 0xA6]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _rand(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform [0, 1) float64 on the CPU, drawn on the generator's own device (CPU or CUDA)."""
    return torch.rand(shape, generator=g, device=g.device, dtype=torch.float64).cpu()


def _uniform(g: torch.Generator, shape: tuple[int, ...], bounds: Range) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * _rand(g, shape)


def _gamma_values(g: torch.Generator, shape: tuple[int, ...], bounds: Range) -> torch.Tensor:
    lo, hi = bounds
    below = _rand(g, shape) < 0.5
    u = _rand(g, shape)
    if lo < 1.0 < hi:
        return torch.where(below, lo + (1.0 - lo) * u, 1.0 + (hi - 1.0) * u)
    return lo + (hi - lo) * u


class Augmenter:
    """Draws and applies the SPEC augmentation to a batch, on ``device``.

    Input: image [B, C, *read] and label [B, 1, *read] (the sampler's enlarged patch, any read
    size >= the patch). Output: image [B, C, *patch] float32 and label [B, 1, *patch] int64, on
    ``device``; label -1 (outside the image, ignore) is kept as is.
    """

    def __init__(
        self,
        config: AugmentationConfig,
        patch_size: Sequence[int],
        dimension: int,
        device: torch.device | str = "cpu",
        intensity_channels: int | None = None,
    ) -> None:
        """``intensity_channels``: only the first N channels get intensity transforms (a cascade's
        extra one-hot channels must stay one-hot); None = all channels."""
        if dimension not in (2, 3) or len(patch_size) != dimension:
            raise SelfUNetError(
                f"augmentation: patch size {list(patch_size)} does not match dimension {dimension}."
            )
        self.config = config
        self.intensity_channels = intensity_channels
        self.patch_size = tuple(int(p) for p in patch_size)
        self.dimension = dimension
        self.device = torch.device(device)
        self.per_slice = config.uses_per_slice(self.patch_size)
        axes = range(dimension) if config.mirror_axes is None else config.mirror_axes
        for a in axes:
            if not 0 <= a < dimension:
                raise SelfUNetError(f"augmentation: mirror axis {a} does not exist for {dimension}D patches.")
        self.mirror_axes = tuple(sorted(set(axes)))

    # ------------------------------------------------------------------ draw
    def draw(self, batch_size: int, num_channels: int, generator: torch.Generator) -> AugmentationParams:
        """All random parameters of one batch; always the same sequence of draws.

        ``generator`` may live on the CPU or on the training device; the parameters are small CPU
        tensors either way.
        """
        cfg, g, b, c, d = self.config, generator, batch_size, num_channels, self.dimension

        def chance(p: float, shape: tuple[int, ...] = (b,)) -> torch.Tensor:
            return _rand(g, shape) < p

        in_plane = self.per_slice or d == 2
        rotate = chance(cfg.p_rotation)
        degrees = cfg.rotation_degrees_2d if in_plane else cfg.rotation_degrees_3d
        angles = torch.deg2rad(_uniform(g, (b, 1 if in_plane else 3), degrees)) * rotate[:, None]
        scaled = chance(cfg.p_scaling)
        scale = torch.where(scaled, _uniform(g, (b,), cfg.scale_range), torch.ones(b, dtype=torch.float64))
        matrix = torch.from_numpy(rotation_matrices(angles.numpy())) / scale[:, None, None]

        noise = chance(cfg.p_noise)
        noise_std = torch.sqrt(_uniform(g, (b,), cfg.noise_variance))
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))

        blur = chance(cfg.p_blur)[:, None] & chance(cfg.p_blur_per_channel, (b, c))
        blur_sigma = _uniform(g, (b, c, d), cfg.blur_sigma)
        brightness = chance(cfg.p_brightness)
        brightness_factor = _uniform(g, (b, c), cfg.brightness_range)
        contrast = chance(cfg.p_contrast)
        contrast_factor = _uniform(g, (b, c), cfg.contrast_range)
        lowres = chance(cfg.p_lowres)[:, None] & chance(cfg.p_lowres_per_channel, (b, c))
        lowres_zoom = _uniform(g, (b, c), cfg.lowres_zoom)
        inverted_gamma = chance(cfg.p_inverted_gamma)
        inverted_gamma_value = _gamma_values(g, (b, c), cfg.gamma_range)
        gamma = chance(cfg.p_gamma)
        gamma_value = _gamma_values(g, (b, c), cfg.gamma_range)
        mirror = chance(cfg.p_mirror, (b, d))
        allowed = torch.zeros(d, dtype=torch.bool)
        allowed[list(self.mirror_axes)] = True
        return AugmentationParams(
            spatial=rotate | scaled, matrix=matrix, rotate=rotate, scale=scale,
            noise=noise, noise_std=noise_std, noise_seed=noise_seed,
            blur=blur, blur_sigma=blur_sigma, brightness=brightness, brightness_factor=brightness_factor,
            contrast=contrast, contrast_factor=contrast_factor, lowres=lowres, lowres_zoom=lowres_zoom,
            inverted_gamma=inverted_gamma, inverted_gamma_value=inverted_gamma_value,
            gamma=gamma, gamma_value=gamma_value, mirror=mirror & allowed,
        )

    # ------------------------------------------------------------------ apply
    def __call__(
        self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self._to_device(image, label)
        channels = image.shape[1] if self.intensity_channels is None else min(self.intensity_channels, image.shape[1])
        params = self.draw(image.shape[0], channels, generator)
        return self.apply(image, label, params)

    def apply(
        self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, params: AugmentationParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic: the same inputs and parameters always give the same outputs."""
        image, label = self._to_device(image, label)
        image, label = warp(image, label, params.spatial, params.matrix, self.patch_size, self.per_slice)
        image, label = mirror(image, label, params.mirror)
        n = self.intensity_channels
        if n is None or n >= image.shape[1]:
            return apply_intensity(image, params, self.per_slice), label
        return torch.cat([apply_intensity(image[:, :n], params, self.per_slice), image[:, n:]], dim=1), label

    def center_crop(
        self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation batches: the central patch, no augmentation (same output types as ``__call__``)."""
        image, label = self._to_device(image, label)
        sl = crop_slices(image.shape[2:], self.patch_size)
        return image[sl].contiguous(), label[sl].long()

    def _to_device(
        self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.as_tensor(image).to(self.device, torch.float32, non_blocking=True)
        label = torch.as_tensor(label).to(self.device, non_blocking=True)
        if image.dim() != self.dimension + 2 or label.dim() != self.dimension + 2:
            raise SelfUNetError(
                f"augmentation: expected [B, C, *spatial] with {self.dimension} spatial axes, got image "
                f"{tuple(image.shape)} and label {tuple(label.shape)}."
            )
        if image.shape[0] != label.shape[0] or image.shape[2:] != label.shape[2:] or label.shape[1] != 1:
            raise SelfUNetError(
                f"augmentation: image {tuple(image.shape)} and label {tuple(label.shape)} do not match."
            )
        if any(r < p for r, p in zip(image.shape[2:], self.patch_size)):
            raise SelfUNetError(
                f"augmentation: input patch {tuple(image.shape[2:])} is smaller than the patch size "
                f"{self.patch_size}; read at least enlarged_patch_size(patch_size)."
            )
        return image, label
