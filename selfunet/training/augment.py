"""On-the-fly data augmentation (SPEC section 3), batched on the training device.

Why this shape:

* Every transform has a *draw* step (all random numbers of a batch, from one CPU
  ``torch.Generator``, always the same number of draws whatever the outcomes) and a
  deterministic *apply* step. A seed therefore reproduces a batch exactly, the draw step alone is
  cheap enough to test probabilities statistically, and the apply step can be tested with hand-made
  parameters.
* All spatial transforms of a batch (rotation, scaling, crop from the enlarged read patch to the
  patch size) are one coordinate grid and one ``grid_sample`` per tensor (image linear, label
  nearest, so the ignore value -1 survives). Samples without rotation/scaling are cropped by
  slicing, which is exact and free. Mirroring is an exact flip.
* Blur and low-resolution simulation are separable, so each is a small per-(sample, channel)
  matrix applied along every axis with one batched matmul — no Python loop over voxels, and
  different sigmas / zoom factors per channel cost nothing extra.
* Strongly anisotropic 3D patches (max edge > ``anisotropy_ratio`` x the first axis) are rotated
  and scaled in-plane only, as one batched 2D ``grid_sample`` over all slices, so slices are never
  mixed (this is the reference method's "dummy 2D" augmentation; the in-plane rotation then uses
  the 2D angle range).

Scale convention: a scale factor ``s`` magnifies the content by ``s``; ``s = 0.7`` shows a region
1/0.7 times larger than the patch, which is why the sampler reads an enlarged patch
(:func:`enlarged_patch_size`) so that no rotation or scaling ever shows empty corners.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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


# ----------------------------------------------------------------------------------------------
# geometry helpers


def _rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices for angles [N, k] (radians): k=1 -> 2D, k=3 -> 3D.

    3D: R = R_0(a_0) @ R_1(a_1) @ R_2(a_2), where R_k rotates in the plane of the two axes other
    than k. The augmenter and :func:`enlarged_patch_size` both use this one definition.
    """
    angles = np.asarray(angles, dtype=np.float64)
    n = angles.shape[0]
    if angles.shape[1] == 1:
        c, s = np.cos(angles[:, 0]), np.sin(angles[:, 0])
        return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)
    result = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    for axis in range(3):
        i, j = [a for a in range(3) if a != axis]
        c, s = np.cos(angles[:, axis]), np.sin(angles[:, axis])
        rot = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        rot[:, i, i], rot[:, i, j], rot[:, j, i], rot[:, j, j] = c, -s, s, c
        result = result @ rot
    return result


def _max_half_extent(patch: Sequence[int], degrees: Range, min_scale: float) -> np.ndarray:
    """Upper bound of the half extent (voxels, per axis) of the rotated, scaled patch.

    The exact maximum over the angle box is hard to write in closed form for 3 angles, so it is
    the maximum over a grid of angles plus a rigorous bound of the grid error (an entry of R
    changes by at most the sum of the angle changes), capped by the patch's half diagonal (no
    rotation can exceed it). Over-estimating costs a few voxels of reading; under-estimating would
    show empty corners.
    """
    half = (np.asarray(patch, dtype=np.float64) - 1.0) / 2.0 / min_scale
    k = 1 if len(patch) == 2 else 3
    lo, hi = (math.radians(d) for d in degrees)
    if hi - lo <= 0:
        return half
    step = math.radians(0.05 if k == 1 else 1.0)
    count = math.ceil((hi - lo) / step) + 1
    values = np.linspace(lo, hi, count)
    actual_step = (hi - lo) / (count - 1)
    grids = np.stack(np.meshgrid(*([values] * k), indexing="ij"), -1).reshape(-1, k)
    extent = np.abs(_rotation_matrices(grids)) @ half  # [N, d]
    bound = extent.max(0) + k * actual_step / 2 * np.linalg.norm(half)
    return np.minimum(np.maximum(bound, half), np.linalg.norm(half))


@functools.lru_cache(maxsize=64)
def _enlarged(patch: tuple[int, ...], config: AugmentationConfig) -> tuple[int, ...]:
    min_scale = min(config.scale_range[0], 1.0) if config.p_scaling > 0 else 1.0
    if len(patch) == 3 and config.uses_per_slice(patch):
        degrees = config.rotation_degrees_2d if config.p_rotation > 0 else (0.0, 0.0)
        half = np.concatenate([[(patch[0] - 1) / 2], _max_half_extent(patch[1:], degrees, min_scale)])
    else:
        degrees = config.rotation_degrees_3d if len(patch) == 3 else config.rotation_degrees_2d
        degrees = degrees if config.p_rotation > 0 else (0.0, 0.0)
        half = _max_half_extent(patch, degrees, min_scale)
    out = []
    for p, h in zip(patch, half):
        r = max(p, math.ceil(1 + 2 * h - 1e-6))
        r += (r - p) % 2  # even margin: the unaugmented centre crop is an exact integer shift
        out.append(int(r))
    return tuple(out)


def enlarged_patch_size(patch_size: Sequence[int], config: AugmentationConfig | None = None) -> tuple[int, ...]:
    """The patch the sampler must read so rotation and scaling never show empty corners.

    Each axis grows by an even number of voxels, so the unaugmented centre crop is exact.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) not in (2, 3) or min(patch) < 1:
        raise SelfUNetError(f"augmentation: patch size {list(patch_size)} must have 2 or 3 positive entries.")
    return _enlarged(patch, config or AugmentationConfig())


def generator_for(seed: int, batch_index: int) -> torch.Generator:
    """The CPU generator for batch ``batch_index`` of a run: a pure function of its arguments."""
    state = np.random.SeedSequence([int(seed), int(batch_index), 0xA6]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ----------------------------------------------------------------------------------------------
# drawn parameters


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


# ----------------------------------------------------------------------------------------------
# separable per-(sample, channel) axis operators


def _blur_matrices(sigma: torch.Tensor, length: int) -> torch.Tensor:
    """[K, L, L] Gaussian smoothing along one axis with mirror ('reflect') boundaries."""
    radius = max(1, int(4.0 * float(sigma.max()) + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    weights = weights / weights.sum(1, keepdim=True)  # [K, T]
    idx = torch.arange(length)[:, None] + torch.arange(-radius, radius + 1)[None]  # [L, T]
    idx = torch.where(idx < 0, -idx - 1, idx)
    idx = torch.where(idx >= length, 2 * length - idx - 1, idx).clamp(0, length - 1)
    k = sigma.shape[0]
    mats = torch.zeros(k, length, length, dtype=torch.float64)
    mats.scatter_add_(2, idx[None].expand(k, -1, -1), weights[:, None, :].expand(-1, length, -1).contiguous())
    return mats


def _lowres_matrices(zoom: torch.Tensor, length: int) -> torch.Tensor:
    """[K, L, L]: nearest downsampling to round(L*zoom) samples, then linear upsampling to L."""
    k = zoom.shape[0]
    n = torch.clamp(torch.round(zoom * length), min=1).to(torch.float64)[:, None]  # [K, 1]
    o = torch.arange(length, dtype=torch.float64)[None]  # [1, L]
    pos = ((o + 0.5) * n / length - 0.5).clamp(min=0.0)
    pos = torch.minimum(pos, n - 1)
    k0 = pos.floor()
    k1 = torch.minimum(k0 + 1, n - 1)
    w1 = pos - k0

    def source(low: torch.Tensor) -> torch.Tensor:
        return torch.floor((low + 0.5) * length / n).clamp(0, length - 1).long()

    mats = torch.zeros(k, length, length, dtype=torch.float64)
    mats.scatter_add_(2, source(k0)[:, :, None], (1 - w1)[:, :, None])
    mats.scatter_add_(2, source(k1)[:, :, None], w1[:, :, None])
    return mats


def _apply_along_axes(x: torch.Tensor, mats: list[torch.Tensor | None]) -> torch.Tensor:
    """x [K, *spatial]; mats[a] [K, L_a, L_a] (or None = identity) applied along spatial axis a.

    One ``bmm`` per axis on a [K, rest, L] view (a broadcasting ``matmul`` would materialise the
    matrix once per row).
    """
    k = x.shape[0]
    for axis, mat in enumerate(mats):
        if mat is None:
            continue
        moved = x.movedim(axis + 1, -1)
        shape = moved.shape
        rows = moved.reshape(k, -1, shape[-1])
        out = torch.bmm(rows, mat.to(device=x.device, dtype=x.dtype).transpose(1, 2))
        x = out.reshape(shape).movedim(-1, axis + 1)
    return x


# ----------------------------------------------------------------------------------------------


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
        matrix = torch.from_numpy(_rotation_matrices(angles.numpy())) / scale[:, None, None]

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
        image, label = self._spatial(image, label, params)
        image, label = self._mirror(image, label, params.mirror)
        n = self.intensity_channels
        if n is None or n >= image.shape[1]:
            return self._intensity(image, params), label
        return torch.cat([self._intensity(image[:, :n], params), image[:, n:]], dim=1), label

    def center_crop(
        self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation batches: the central patch, no augmentation (same output types as ``__call__``)."""
        image, label = self._to_device(image, label)
        sl = self._crop_slices(image.shape[2:])
        return image[sl].contiguous(), label[sl].long()

    # ------------------------------------------------------------------ internals
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

    def _crop_slices(self, read: Sequence[int]) -> tuple[slice, ...]:
        starts = [(r - p) // 2 for r, p in zip(read, self.patch_size)]
        return (slice(None), slice(None), *(slice(s, s + p) for s, p in zip(starts, self.patch_size)))

    def _spatial(
        self, image: torch.Tensor, label: torch.Tensor, params: AugmentationParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        read = image.shape[2:]
        sl = self._crop_slices(read)
        # copies: the inputs may share memory with the sampler's numpy batch and must not change
        out_image = image[sl].clone(memory_format=torch.contiguous_format)
        out_label = label[sl].to(torch.int64, copy=True)
        chosen = torch.nonzero(params.spatial).flatten()
        if chosen.numel() == 0:
            return out_image, out_label
        idx = chosen.to(self.device)
        if chosen.numel() == image.shape[0]:  # the whole batch: no gather copy of the read patch
            sub_image, sub_label = image, label.to(torch.float32)
        else:
            sub_image, sub_label = image.index_select(0, idx), label.index_select(0, idx).to(torch.float32)
        matrix = params.matrix.index_select(0, chosen)
        if self.per_slice:
            # in-plane only: crop axis 0 first, then one 2D warp over all (sample, slice) pairs
            z0 = (read[0] - self.patch_size[0]) // 2
            pz = self.patch_size[0]
            n = chosen.numel()

            def flat(x: torch.Tensor) -> torch.Tensor:
                x = x[:, :, z0 : z0 + pz].transpose(1, 2)
                return x.reshape(n * pz, x.shape[2], *x.shape[3:])

            grid = self._grid(matrix, read[1:], self.patch_size[1:])
            grid = grid.repeat_interleave(pz, dim=0)
            warped_image = F.grid_sample(flat(sub_image), grid, "bilinear", "border", align_corners=True)
            warped_label = F.grid_sample(flat(sub_label), grid, "nearest", "border", align_corners=True)

            def unflat(x: torch.Tensor) -> torch.Tensor:
                return x.reshape(n, pz, x.shape[1], *x.shape[2:]).transpose(1, 2)

            warped_image, warped_label = unflat(warped_image), unflat(warped_label)
        else:
            grid = self._grid(matrix, read, self.patch_size)
            warped_image = F.grid_sample(sub_image, grid, "bilinear", "border", align_corners=True)
            warped_label = F.grid_sample(sub_label, grid, "nearest", "border", align_corners=True)
        out_image[idx] = warped_image
        out_label[idx] = torch.round(warped_label).to(torch.int64)
        return out_image, out_label

    def _grid(self, matrix: torch.Tensor, read: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
        """Normalised sampling grid [N, *patch, k] (align_corners=True, last dim in x, y, z order)."""
        k = len(patch)
        offsets = _centred_offsets(tuple(patch)).to(self.device)  # [V, k]
        centre = torch.tensor([(r - 1) / 2 for r in read], dtype=torch.float32, device=self.device)
        norm = torch.tensor([2.0 / (r - 1) if r > 1 else 0.0 for r in read], dtype=torch.float32, device=self.device)
        # input = centre + A @ offset, normalised: (centre + A @ offset) * norm - 1 (or 0 for size 1)
        scaled = (matrix.to(torch.float32).to(self.device) * norm[None, :, None]).transpose(1, 2)
        grid = torch.matmul(offsets, scaled) + (centre * norm - (norm > 0).to(torch.float32))
        return grid.flip(-1).reshape(matrix.shape[0], *patch, k)

    def _mirror(
        self, image: torch.Tensor, label: torch.Tensor, mirror: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for axis in range(self.dimension):
            flags = mirror[:, axis]
            if not bool(flags.any()):
                continue
            shape = (-1,) + (1,) * (self.dimension + 1)
            mask = flags.to(self.device).view(shape)
            image = torch.where(mask, image.flip(axis + 2), image)
            label = torch.where(mask, label.flip(axis + 2), label)
        return image, label

    def _intensity(self, image: torch.Tensor, p: AugmentationParams) -> torch.Tensor:
        b, c = image.shape[:2]
        spatial = image.shape[2:]
        if bool(p.noise.any()):
            gen = torch.Generator(device=self.device).manual_seed(p.noise_seed)
            noise = torch.randn(image.shape, generator=gen, device=self.device, dtype=image.dtype)
            std = (p.noise_std * p.noise).to(self.device, image.dtype).view(-1, *([1] * (image.dim() - 1)))
            image = image + noise * std
        image = image.reshape(b * c, *spatial)

        def select(mask: torch.Tensor) -> torch.Tensor:
            return torch.nonzero(mask.reshape(-1)).flatten()

        def per_pair(sample_mask: torch.Tensor) -> torch.Tensor:
            return sample_mask[:, None].expand(b, c)

        # blur: separable Gaussian per (sample, channel, axis)
        sel = select(p.blur)
        if sel.numel():
            sigma = p.blur_sigma.reshape(b * c, -1)[sel]
            mats = [_blur_matrices(sigma[:, a], spatial[a]) for a in range(self.dimension)]
            image = self._replace(image, sel, lambda x: _apply_along_axes(x, mats))
        # multiplicative brightness
        sel = select(per_pair(p.brightness))
        if sel.numel():
            factor = p.brightness_factor.reshape(-1)[sel].to(self.device, image.dtype)
            image = self._replace(image, sel, lambda x: x * factor.view(-1, *([1] * self.dimension)))
        # contrast, value range preserved
        sel = select(per_pair(p.contrast))
        if sel.numel():
            factor = p.contrast_factor.reshape(-1)[sel].to(self.device, image.dtype)
            image = self._replace(image, sel, lambda x: _contrast(x, factor))
        # low-resolution simulation (never across slices in per-slice mode)
        sel = select(p.lowres)
        if sel.numel():
            zoom = p.lowres_zoom.reshape(-1)[sel]
            mats = [
                None if (a == 0 and self.per_slice) else _lowres_matrices(zoom, spatial[a])
                for a in range(self.dimension)
            ]
            image = self._replace(image, sel, lambda x: _apply_along_axes(x, mats))
        # gamma (inverted first, as in the reference order), mean and std retained
        for mask, values, invert in (
            (p.inverted_gamma, p.inverted_gamma_value, True),
            (p.gamma, p.gamma_value, False),
        ):
            sel = select(per_pair(mask))
            if sel.numel():
                gam = values.reshape(-1)[sel].to(self.device, image.dtype)
                image = self._replace(image, sel, lambda x, gam=gam, invert=invert: _gamma(x, gam, invert))
        return image.reshape(b, c, *spatial).contiguous()

    @staticmethod
    def _replace(flat: torch.Tensor, sel: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        idx = sel.to(flat.device)
        flat[idx] = fn(flat.index_select(0, idx))
        return flat


@functools.lru_cache(maxsize=16)
def _centred_offsets(patch: tuple[int, ...]) -> torch.Tensor:
    """[V, k] voxel offsets of a patch from its centre (C order), cached per patch size."""
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(patch))


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(1, keepdim=True)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    out = (flat - mean) * factor[:, None] + mean
    return torch.minimum(torch.maximum(out, lo), hi).reshape(x.shape)


def _mean_std(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row mean and (unbiased) std; two plain reductions, several times faster than ``Tensor.std`` on CPU."""
    mean = flat.mean(1, keepdim=True)
    n = flat.shape[1]
    var = ((flat - mean) ** 2).mean(1, keepdim=True) * (n / max(n - 1, 1))
    return mean, var.sqrt()


def _gamma(x: torch.Tensor, gamma: torch.Tensor, invert: bool) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    if invert:
        flat = -flat
    mean, std = _mean_std(flat)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = (hi - lo).clamp_min(1e-7)
    out = ((flat - lo) / span).clamp(0, 1) ** gamma[:, None] * span + lo
    out_mean, out_std = _mean_std(out)
    out = (out - out_mean) / (out_std + 1e-7) * std + mean
    if invert:
        out = -out
    return out.reshape(x.shape)
