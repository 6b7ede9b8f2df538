"""Spatial augmentation: rotation, scaling, the read patch they need, and mirroring.

How a sample is moved (the reference method's rules, docs/explanation/design.md#augmentation):

* rotation and scaling are one affine map from the output patch (offsets from its centre) to
  input voxels, applied with one ``grid_sample`` per sample: image channels linear, the label and
  the cascade's one-hot channels nearest (they stay labels / one-hot). Samples without rotation or
  scaling are cropped by slicing, which is exact and free. Mirroring is an exact flip.
* what lies outside the region the reference would have read (:func:`read_patch_size`) is
  zero-filled: image 0, label -1 (outside the non-zero mask: background for the loss, and the
  mask for channels normalized inside it).
* strongly anisotropic 3D patches (max edge > ``anisotropy_ratio`` x the first axis) are rotated
  and scaled in-plane only, one 2D warp over all slices, so slices are never mixed (the reference's
  "dummy 2D" augmentation).

Reading only what a sample needs: the parameters of a batch are drawn before it is read, so the
sampler reads, per sample, the bounding box of the voxels its transform samples
(:func:`needed_boxes`), clipped to the reference's read region. The result equals reading the
whole read region (everything outside the box would be zero-filled or never sampled), but a sample
without rotation or scaling (64 % of them at the default probabilities) reads just its patch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from selfunet.errors import SelfUNetError
from selfunet.training.augment_config import AugmentationConfig

# ----------------------------------------------------------------------------------------------
# geometry


def _plane_rotation(n: int, i: int, j: int, c: np.ndarray, s: np.ndarray) -> np.ndarray:
    rot = np.broadcast_to(np.eye(n), (c.shape[0], n, n)).copy()
    rot[:, i, i], rot[:, i, j], rot[:, j, i], rot[:, j, j] = c, -s, s, c
    return rot


def rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices for angles [N, k] (radians): k=1 -> 2D, k=3 -> 3D.

    3D: R = R_2(a_2) @ R_1(a_1) @ R_0(a_0), where R_k rotates in the plane of the two axes other
    than k: the reference's composition order (about the last axis last), so the distribution of
    the combined rotation is the reference's.
    """
    angles = np.asarray(angles, dtype=np.float64)
    if angles.shape[1] == 1:
        return _plane_rotation(2, 0, 1, np.cos(angles[:, 0]), np.sin(angles[:, 0]))
    result = np.broadcast_to(np.eye(3), (angles.shape[0], 3, 3)).copy()
    for axis in range(3):
        i, j = [a for a in range(3) if a != axis]
        result = _plane_rotation(3, i, j, np.cos(angles[:, axis]), np.sin(angles[:, axis])) @ result
    return result


def _turned(extent: np.ndarray, grow: int, partner: int, angle: float) -> np.ndarray:
    """The patch's extent vector turned by ``angle`` in the plane (grow, partner), with the sign
    convention of the reference's read-patch rule (the ``grow`` component gains)."""
    out = extent.copy()
    c, s = math.cos(angle), math.sin(angle)
    out[grow] = extent[grow] * c + extent[partner] * s
    out[partner] = extent[partner] * c - extent[grow] * s
    return np.abs(out)


#: (grow, partner) planes of the rule: 3D about axis 0, 1, 2 in turn; 2D the one plane.
_RULE_PLANES = {3: ((1, 2), (2, 0), (0, 1)), 2: ((0, 1),)}


@functools.lru_cache(maxsize=64)
def _read_patch(patch: tuple[int, ...], config: AugmentationConfig) -> tuple[int, ...]:
    extent = np.asarray(patch, dtype=np.float64)
    if config.p_rotation > 0:
        lo, hi = config.rotation_degrees(patch)
        angle = math.radians(min(max(abs(lo), abs(hi)), config.read_rotation_cap_degrees))
        bound = extent.copy()
        for grow, partner in _RULE_PLANES[len(patch)]:
            bound = np.maximum(bound, _turned(extent, grow, partner, angle))
        extent = bound
    if config.p_scaling > 0:
        extent = extent / min(config.read_scale_range)
    read = [max(int(e), p) for e, p in zip(extent, patch)]  # truncation, as the reference does
    if config.uses_per_slice(patch):
        read[0] = patch[0]
    return tuple(read)


def read_patch_size(patch_size: Sequence[int], config: AugmentationConfig | None = None) -> tuple[int, ...]:
    """The region read around a patch (the reference's "initial patch size"; docs/explanation/design.md#augmentation).

    The patch's extent vector is turned by the largest rotation angle (at most
    ``read_rotation_cap_degrees``) about each axis in turn, the per-axis maximum is kept and
    divided by the smallest of ``read_scale_range`` (0.85, not the 0.7 the transform uses); per-slice
    patches keep their first axis. Rotations and zooms reaching beyond it see zero-filled corners.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) not in (2, 3) or min(patch) < 1:
        raise SelfUNetError(f"augmentation: patch size {list(patch_size)} must have 2 or 3 positive entries.")
    return _read_patch(patch, config or AugmentationConfig())


def read_region(patch_size: Sequence[int], config: AugmentationConfig | None = None) -> np.ndarray:
    """[d, 2] lower (inclusive) and upper (exclusive) bounds of the read region, in voxels relative
    to the patch's lower corner (the patch sits at its centre, the lower margin the smaller)."""
    patch = np.asarray(patch_size, dtype=np.int64)
    read = np.asarray(read_patch_size(patch_size, config), dtype=np.int64)
    low = -((read - patch) // 2)
    return np.stack([low, low + read], axis=1)


def needed_boxes(
    spatial: torch.Tensor, matrix: torch.Tensor, patch_size: Sequence[int], region: np.ndarray, per_slice: bool
) -> np.ndarray:
    """[B, d, 2] per-sample boxes (relative to the patch's lower corner, upper exclusive) holding
    every voxel the sample's transform reads, clipped to ``region`` (:func:`read_region`).

    A sample without rotation/scaling needs exactly its patch. Otherwise the transformed corners of
    the patch bound the sampled points (an affine map of a box), widened to whole voxels so every
    linear-interpolation neighbour is inside.
    """
    patch = np.asarray(patch_size, dtype=np.float64)
    b, d = spatial.shape[0], len(patch_size)
    boxes = np.zeros((b, d, 2), dtype=np.int64)
    boxes[:, :, 1] = np.asarray(patch_size, dtype=np.int64)
    first = 1 if per_slice else 0
    plane = patch[first:]
    half = (plane - 1) / 2
    corners = np.array(np.meshgrid(*[[-1.0, 1.0]] * len(plane), indexing="ij")).reshape(len(plane), -1).T * half
    for i in np.flatnonzero(spatial.numpy()):
        points = corners @ matrix[i].numpy().T + half  # [2^k, k] relative to the patch's lower corner
        low = np.floor(points.min(0) - 1e-3).astype(np.int64)
        high = np.ceil(points.max(0) + 1e-3).astype(np.int64) + 1
        boxes[i, first:, 0] = np.clip(low, region[first:, 0], region[first:, 1] - 1)
        boxes[i, first:, 1] = np.clip(high, boxes[i, first:, 0] + 1, region[first:, 1])
    return boxes


@functools.lru_cache(maxsize=16)
def _centred_offsets(patch: tuple[int, ...]) -> torch.Tensor:
    """[V, k] voxel offsets of a patch from its centre (C order), cached per patch size."""
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(patch))


def sampling_grid(
    matrix: torch.Tensor, lower: Sequence[int], size: Sequence[int], patch: Sequence[int], device: torch.device
) -> torch.Tensor:
    """Normalised sampling grid [N, *patch, k] (align_corners=True, last dim in x, y, z order) of an
    input box of ``size`` voxels whose first voxel lies at ``lower`` relative to the patch's lower
    corner: input voxel = patch centre + matrix @ offset - lower."""
    k = len(patch)
    offsets = _centred_offsets(tuple(patch)).to(device)  # [V, k]
    centre = torch.tensor([(p - 1) / 2 - lo for p, lo in zip(patch, lower)], dtype=torch.float32, device=device)
    norm = torch.tensor([2.0 / (s - 1) if s > 1 else 0.0 for s in size], dtype=torch.float32, device=device)
    # normalised: (centre + A @ offset) * norm - 1 (or 0 for size 1)
    scaled = (matrix.to(torch.float32).to(device) * norm[None, :, None]).transpose(1, 2)
    shift = centre * norm - (norm > 0).to(torch.float32)
    # grid_sample wants (x, y, z): reverse the small matrix's columns, not the voxel-sized grid
    grid = torch.matmul(offsets, scaled.flip(-1)) + shift.flip(-1)
    return grid.reshape(matrix.shape[0], *patch, k)


def crop_slices(read: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the central ``patch`` of a [B, C, *read] tensor (the read region's placement)."""
    starts = [(r - p) // 2 for r, p in zip(read, patch)]
    return (slice(None), slice(None), *(slice(s, s + p) for s, p in zip(starts, patch)))


def warp_sample(
    image: torch.Tensor,
    label: torch.Tensor,
    lower: Sequence[int],
    matrix: torch.Tensor | None,
    patch: Sequence[int],
    per_slice: bool,
    intensity_channels: int,
    out_image: torch.Tensor,
    out_label: torch.Tensor,
    mirror_axes: Sequence[int] = (),
) -> None:
    """One sample: image [C, *box] float, label [1, *box] integer, the box's lower corner relative
    to the patch's lower corner, and the affine ``matrix`` [k, k] (None: no rotation/scaling).

    Writes ``out_image`` [C, *patch] and ``out_label`` [1, *patch] (int64; a batch's slots, so no
    sample is copied twice). Channels from ``intensity_channels`` on (the cascade's one-hot
    segmentation) are moved like the label: nearest, zero outside.

    ``mirror_axes`` (spatial axes) flips the result along them without a pass of its own: a
    cropped sample is copied from a reversed view (numpy's negative strides, on the CPU), a warped
    one samples with the matrix's columns negated (the patch's offsets from its centre are
    symmetric, so output voxel ``i`` then samples where voxel ``P-1-i`` did).
    """
    patch = tuple(int(p) for p in patch)
    flips = sorted({int(a) for a in mirror_axes})
    if matrix is None:
        sl = tuple(slice(-int(lo), -int(lo) + p) for lo, p in zip(lower, patch))
        if any(s.start < 0 or s.stop > n for s, n in zip(sl, image.shape[1:])):
            raise SelfUNetError(
                f"augmentation: input box {tuple(image.shape[1:])} at {list(lower)} does not hold the patch {patch}."
            )
        _copy_flipped(out_image, image[(slice(None), *sl)], flips)
        _copy_flipped(out_label, label[(slice(None), *sl)], flips)
        return
    device = image.device
    in_plane = [a for a in flips if not (per_slice and a == 0)]
    if in_plane:
        sign = torch.ones(matrix.shape[-1], dtype=matrix.dtype)
        sign[[a - 1 if per_slice else a for a in in_plane]] = -1
        matrix = matrix * sign.to(matrix.device)[None, :]
    n = intensity_channels
    # nearest-sampled part: label + 1 (so the zero padding reads as -1) and the one-hot channels
    discrete = label.to(torch.float32) + 1
    if n < image.shape[0]:
        discrete = torch.cat([discrete, image[n:]], 0)
    continuous = image[:n]
    if per_slice:
        z0, pz = -int(lower[0]), patch[0]
        grid = sampling_grid(matrix[None], lower[1:], image.shape[2:], patch[1:], device).expand(pz, *patch[1:], 2)

        def run(x: torch.Tensor, mode: str) -> torch.Tensor:
            slices = x[:, z0 : z0 + pz].transpose(0, 1)  # [pz, C, H, W]
            return F.grid_sample(slices, grid, mode, "zeros", align_corners=True).transpose(0, 1)
    else:
        grid = sampling_grid(matrix[None], lower, image.shape[1:], patch, device)

        def run(x: torch.Tensor, mode: str) -> torch.Tensor:
            return F.grid_sample(x[None], grid, mode, "zeros", align_corners=True)[0]

    if n > 0:
        out_image[:n] = run(continuous, "bilinear")
    moved = run(discrete, "nearest")
    out_label.copy_(torch.round(moved[:1]) - 1)
    out_image[n:] = moved[1:]
    if per_slice and 0 in flips:  # across slices: the in-plane matrix cannot express it
        out_image.copy_(out_image.flip(1))
        out_label.copy_(out_label.flip(1))


def _copy_flipped(out: torch.Tensor, source: torch.Tensor, axes: Sequence[int]) -> None:
    """out[...] = source flipped along spatial ``axes`` (dims 1..), in one pass on the CPU."""
    if not axes:
        out.copy_(source)
    elif out.device.type == "cpu" and source.device.type == "cpu":
        target = out.numpy()
        target[...] = np.flip(source.numpy(), [a + 1 for a in axes])  # casts while copying
    else:
        out.copy_(source.flip([a + 1 for a in axes]))
