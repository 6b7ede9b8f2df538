"""Spatial augmentation: rotation, scaling, the read patch they need, and mirroring.

All spatial transforms of a batch (rotation, scaling, crop from the enlarged read patch to the
patch size) are one coordinate grid and one ``grid_sample`` per tensor (image linear, label
nearest, so the ignore value -1 survives). Samples without rotation/scaling are cropped by
slicing, which is exact and free. Mirroring is an exact flip.

Strongly anisotropic 3D patches (max edge > ``anisotropy_ratio`` x the first axis) are rotated
and scaled in-plane only, as one batched 2D ``grid_sample`` over all slices, so slices are never
mixed (the reference method's "dummy 2D" augmentation; the in-plane rotation then uses the 2D
angle range).

Scale convention: a scale factor ``s`` magnifies the content by ``s``; ``s = 0.7`` shows a region
1/0.7 times larger than the patch, which is why the sampler reads an enlarged patch
(:func:`enlarged_patch_size`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from selfunet.errors import SelfUNetError
from selfunet.training.augment_config import AugmentationConfig, Range


def rotation_matrices(angles: np.ndarray) -> np.ndarray:
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
    extent = np.abs(rotation_matrices(grids)) @ half  # [N, d]
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


@functools.lru_cache(maxsize=16)
def _centred_offsets(patch: tuple[int, ...]) -> torch.Tensor:
    """[V, k] voxel offsets of a patch from its centre (C order), cached per patch size."""
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(patch))


def sampling_grid(
    matrix: torch.Tensor, read: Sequence[int], patch: Sequence[int], device: torch.device
) -> torch.Tensor:
    """Normalised sampling grid [N, *patch, k] (align_corners=True, last dim in x, y, z order)."""
    k = len(patch)
    offsets = _centred_offsets(tuple(patch)).to(device)  # [V, k]
    centre = torch.tensor([(r - 1) / 2 for r in read], dtype=torch.float32, device=device)
    norm = torch.tensor([2.0 / (r - 1) if r > 1 else 0.0 for r in read], dtype=torch.float32, device=device)
    # input = centre + A @ offset, normalised: (centre + A @ offset) * norm - 1 (or 0 for size 1)
    scaled = (matrix.to(torch.float32).to(device) * norm[None, :, None]).transpose(1, 2)
    grid = torch.matmul(offsets, scaled) + (centre * norm - (norm > 0).to(torch.float32))
    return grid.flip(-1).reshape(matrix.shape[0], *patch, k)


def crop_slices(read: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the central ``patch`` of a [B, C, *read] tensor."""
    starts = [(r - p) // 2 for r, p in zip(read, patch)]
    return (slice(None), slice(None), *(slice(s, s + p) for s, p in zip(starts, patch)))


def warp(
    image: torch.Tensor,
    label: torch.Tensor,
    spatial: torch.Tensor,
    matrix: torch.Tensor,
    patch: Sequence[int],
    per_slice: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate/scale the samples flagged in ``spatial`` [B] by ``matrix`` [B, k, k] and crop the
    central ``patch``; the others are cropped exactly. Image linear, label nearest."""
    patch = tuple(patch)
    device = image.device
    read = image.shape[2:]
    sl = crop_slices(read, patch)
    # copies: the inputs may share memory with the sampler's numpy batch and must not change
    out_image = image[sl].clone(memory_format=torch.contiguous_format)
    out_label = label[sl].to(torch.int64, copy=True)
    chosen = torch.nonzero(spatial).flatten()
    if chosen.numel() == 0:
        return out_image, out_label
    idx = chosen.to(device)
    if chosen.numel() == image.shape[0]:  # the whole batch: no gather copy of the read patch
        sub_image, sub_label = image, label.to(torch.float32)
    else:
        sub_image, sub_label = image.index_select(0, idx), label.index_select(0, idx).to(torch.float32)
    matrix = matrix.index_select(0, chosen)
    if per_slice:
        # in-plane only: crop axis 0 first, then one 2D warp over all (sample, slice) pairs
        z0 = (read[0] - patch[0]) // 2
        pz = patch[0]
        n = chosen.numel()

        def flat(x: torch.Tensor) -> torch.Tensor:
            x = x[:, :, z0 : z0 + pz].transpose(1, 2)
            return x.reshape(n * pz, x.shape[2], *x.shape[3:])

        grid = sampling_grid(matrix, read[1:], patch[1:], device)
        grid = grid.repeat_interleave(pz, dim=0)
        warped_image = F.grid_sample(flat(sub_image), grid, "bilinear", "border", align_corners=True)
        warped_label = F.grid_sample(flat(sub_label), grid, "nearest", "border", align_corners=True)

        def unflat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(n, pz, x.shape[1], *x.shape[2:]).transpose(1, 2)

        warped_image, warped_label = unflat(warped_image), unflat(warped_label)
    else:
        grid = sampling_grid(matrix, read, patch, device)
        warped_image = F.grid_sample(sub_image, grid, "bilinear", "border", align_corners=True)
        warped_label = F.grid_sample(sub_label, grid, "nearest", "border", align_corners=True)
    out_image[idx] = warped_image
    out_label[idx] = torch.round(warped_label).to(torch.int64)
    return out_image, out_label


def mirror(image: torch.Tensor, label: torch.Tensor, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip sample ``b`` along spatial axis ``a`` where ``flags[b, a]`` ([B, d] bool)."""
    dimension = image.dim() - 2
    for axis in range(dimension):
        chosen = flags[:, axis]
        if not bool(chosen.any()):
            continue
        mask = chosen.to(image.device).view((-1,) + (1,) * (dimension + 1))
        image = torch.where(mask, image.flip(axis + 2), image)
        label = torch.where(mask, label.flip(axis + 2), label)
    return image, label
