"""On-the-fly data augmentation (docs/explanation/design.md#augmentation), batched on the training device.

Why this shape: every transform has a *draw* step (all random numbers of a batch, from one CPU
``torch.Generator``, always the same number of draws whatever the outcomes) and a deterministic
*apply* step. A seed therefore reproduces a batch exactly, the draw step alone is cheap enough to
test probabilities statistically, and the apply step can be tested with hand-made parameters.

Because the draw comes first, the sampler can read per sample only the box its transform needs
(:meth:`Augmenter.read_boxes`), and the parameters travel with the raw batch to wherever the
batch is augmented: the loader's workers on a CPU, the GPU itself on CUDA (the host then only reads
and copies). The same seed gives the same parameters on either device.

The transforms themselves live by kind: :mod:`selfunet.training.augment_spatial` (rotation,
scaling, the read patch, mirroring), :mod:`selfunet.training.augment_intensity` (and the mask
of channels normalized inside the non-zero mask) and :mod:`selfunet.training.augment_cascade`
(perturbing a cascade's previous-stage segmentation); what they do is
:class:`selfunet.training.augment_config.AugmentationConfig`. This module draws and applies them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from selfunet.errors import SelfUNetError
from selfunet.training.augment_cascade import perturb_segmentation
from selfunet.training.augment_config import AugmentationConfig, AugmentationParams, Range
from selfunet.training.augment_intensity import apply_intensity, zero_outside_mask
from selfunet.training.augment_spatial import (
    crop_slices,
    needed_boxes,
    read_patch_size,
    read_region,
    rotation_matrices,
    warp_sample,
)

__all__ = [
    "AugmentationConfig", "AugmentationParams", "Augmenter", "generator_for", "read_patch_size",
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
    """Draws and applies the method's augmentation (docs/explanation/design.md#augmentation) to a batch, on ``device``.

    Input: image [B, C, *read] and label [B, 1, *read] (any read size >= the patch, the patch at
    its centre), or per-sample boxes (:meth:`apply_boxes`). Output: image [B, C, *patch] float32
    and label [B, 1, *patch] int64, on ``device``; label -1 (outside the non-zero mask or the
    image) is kept as is, and the ``mask_channels`` are 0 there.
    """

    def __init__(
        self,
        config: AugmentationConfig,
        patch_size: Sequence[int],
        dimension: int,
        device: torch.device | str = "cpu",
        intensity_channels: int | None = None,
        mask_channels: Sequence[int] = (),
    ) -> None:
        """``intensity_channels``: only the first N channels are images (intensity transforms,
        linear interpolation); the others are a cascade's one-hot previous-stage segmentation,
        moved like labels and perturbed. None = all channels are images. ``mask_channels``: the
        channels normalized inside the non-zero mask (the plan's ``use_nonzero_mask``); after all
        transforms they are set back to 0 where the label is negative, as at inference."""
        if dimension not in (2, 3) or len(patch_size) != dimension:
            raise SelfUNetError(
                f"augmentation: patch size {list(patch_size)} does not match dimension {dimension}."
            )
        self.config = config
        self.intensity_channels = intensity_channels
        self.mask_channels = tuple(int(c) for c in mask_channels)
        if any(c < 0 or (intensity_channels is not None and c >= intensity_channels) for c in self.mask_channels):
            raise SelfUNetError(
                f"augmentation: mask channels {list(self.mask_channels)} must be image channels "
                f"(0..{intensity_channels - 1 if intensity_channels is not None else 'C-1'})."
            )
        self.patch_size = tuple(int(p) for p in patch_size)
        self.dimension = dimension
        self.device = torch.device(device)
        self.per_slice = config.uses_per_slice(self.patch_size)
        self.rotation_degrees = config.rotation_degrees(self.patch_size)
        self.read_patch_size = read_patch_size(self.patch_size, config)
        self.read_region = read_region(self.patch_size, config)
        axes = range(dimension) if config.mirror_axes is None else config.mirror_axes
        for a in axes:
            if not 0 <= a < dimension:
                raise SelfUNetError(f"augmentation: mirror axis {a} does not exist for {dimension}D patches.")
        self.mirror_axes = tuple(sorted(set(axes)))

    # ------------------------------------------------------------------ draw
    def draw(
        self, batch_size: int, num_channels: int, generator: torch.Generator, seg_channels: int = 0
    ) -> AugmentationParams:
        """All random parameters of one batch; always the same sequence of draws.

        ``num_channels`` image channels, ``seg_channels`` one-hot previous-stage channels (cascade).
        ``generator`` may live on the CPU or on the training device; the parameters are small CPU
        tensors either way.
        """
        cfg, g, b, c, d, k = self.config, generator, batch_size, num_channels, self.dimension, seg_channels

        def chance(p: float, shape: tuple[int, ...] = (b,)) -> torch.Tensor:
            return _rand(g, shape) < p

        in_plane = self.per_slice or d == 2
        rotate = chance(cfg.p_rotation)
        angles = torch.deg2rad(_uniform(g, (b, 1 if in_plane else 3), self.rotation_degrees)) * rotate[:, None]
        scaled = chance(cfg.p_scaling)
        scale = torch.where(scaled, _uniform(g, (b,), cfg.scale_range), torch.ones(b, dtype=torch.float64))
        matrix = torch.from_numpy(rotation_matrices(angles.numpy())) * scale[:, None, None]

        noise = chance(cfg.p_noise)
        noise_std = _uniform(g, (b,), cfg.noise_std)
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
        mirror_flags = chance(cfg.p_mirror, (b, d))
        allowed = torch.zeros(d, dtype=torch.bool)
        allowed[list(self.mirror_axes)] = True

        morphology = chance(cfg.p_seg_morphology)[:, None] & chance(cfg.p_seg_morphology_per_class, (b, k))
        morphology_op = torch.floor(_rand(g, (b, k)) * 4).long().clamp_(max=3)
        morphology_radius = _uniform(g, (b, k), cfg.seg_morphology_radius)
        morphology_order = torch.argsort(_rand(g, (b, k)), dim=1)
        removal = chance(cfg.p_seg_component_removal)[:, None] & chance(cfg.p_seg_component_removal_per_class, (b, k))
        removal_pick = _rand(g, (b, k))
        return AugmentationParams(
            spatial=rotate | scaled, matrix=matrix, rotate=rotate, scale=scale,
            noise=noise, noise_std=noise_std, noise_seed=noise_seed,
            blur=blur, blur_sigma=blur_sigma, brightness=brightness, brightness_factor=brightness_factor,
            contrast=contrast, contrast_factor=contrast_factor, lowres=lowres, lowres_zoom=lowres_zoom,
            inverted_gamma=inverted_gamma, inverted_gamma_value=inverted_gamma_value,
            gamma=gamma, gamma_value=gamma_value, mirror=mirror_flags & allowed,
            seg_morphology=morphology, seg_morphology_op=morphology_op, seg_morphology_radius=morphology_radius,
            seg_morphology_order=morphology_order, seg_component_removal=removal, seg_component_pick=removal_pick,
        )

    def draw_for(self, total_channels: int, batch_size: int, generator: torch.Generator) -> AugmentationParams:
        """:meth:`draw` for a batch of ``total_channels`` (image + one-hot) channels."""
        images = self.image_channels(total_channels)
        return self.draw(batch_size, images, generator, seg_channels=total_channels - images)

    def image_channels(self, total_channels: int) -> int:
        n = self.intensity_channels
        return total_channels if n is None else min(n, total_channels)

    def read_boxes(self, params: AugmentationParams) -> np.ndarray:
        """[B, d, 2] the box each sample must read (relative to its patch's lower corner, upper
        exclusive): its patch without rotation/scaling, else the voxels its transform samples,
        clipped to the reference's read region."""
        return needed_boxes(params.spatial, params.matrix, self.patch_size, self.read_region, self.per_slice)

    # ------------------------------------------------------------------ apply
    def __call__(
        self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self._to_device(image, label)
        params = self.draw_for(image.shape[1], image.shape[0], generator)
        return self.apply(image, label, params)

    def apply(
        self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, params: AugmentationParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic: the same inputs and parameters always give the same outputs."""
        image, label = self._to_device(image, label)
        lower = [-((r - p) // 2) for r, p in zip(image.shape[2:], self.patch_size)]
        return self.apply_boxes(list(image), list(label), [lower] * image.shape[0], params)

    def apply_boxes(
        self,
        images: Sequence[torch.Tensor | np.ndarray],
        labels: Sequence[torch.Tensor | np.ndarray],
        lowers: Sequence[Sequence[int]] | np.ndarray,
        params: AugmentationParams,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample inputs: image [C, *box_b], label [1, *box_b], the box's lower corner relative
        to the patch's lower corner (:meth:`read_boxes`); they may differ in size per sample."""
        if len(images) != params.spatial.shape[0] or len(labels) != len(images):
            raise SelfUNetError(
                f"augmentation: {len(images)} images and {len(labels)} labels for a batch of {params.spatial.shape[0]}."
            )
        out_image = out_label = None
        n_images = 0
        for b, (image, label) in enumerate(zip(images, labels)):
            image = torch.as_tensor(image).to(self.device, torch.float32, non_blocking=True)
            label = torch.as_tensor(label).to(self.device, non_blocking=True)
            if image.dim() != self.dimension + 1 or label.shape != (1, *image.shape[1:]):
                raise SelfUNetError(
                    f"augmentation: sample {b}: image {tuple(image.shape)} and label {tuple(label.shape)} are not "
                    f"[C, *box] and [1, *box] with {self.dimension} spatial axes."
                )
            if out_image is None:
                out_image = torch.empty((len(images), image.shape[0], *self.patch_size), device=self.device)
                out_label = torch.empty((len(images), 1, *self.patch_size), dtype=torch.int64, device=self.device)
            n_images = self.image_channels(image.shape[0])
            matrix = params.matrix[b] if bool(params.spatial[b]) else None
            flips = torch.nonzero(params.mirror[b]).flatten().tolist()
            warp_sample(image, label, [int(v) for v in lowers[b]], matrix, self.patch_size, self.per_slice,
                        n_images, out_image[b], out_label[b], flips)
        n = n_images
        parts = [apply_intensity(out_image[:, :n], params, self.per_slice)]
        if n < out_image.shape[1]:
            parts.append(perturb_segmentation(out_image[:, n:], params, self.config.seg_component_max_fraction))
        image = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return zero_outside_mask(image, out_label, self.mask_channels), out_label

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
                f"{self.patch_size}; read at least read_patch_size(patch_size)."
            )
        return image, label
