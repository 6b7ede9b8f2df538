"""Perturbing the cascade's previous-stage segmentation (docs/explanation/design.md#augmentation).

The full-resolution cascade stage sees the low-resolution stage's segmentation as one-hot input
channels. At test time those are predictions with mistakes, so training makes its own mistakes
on them, as the reference does: per class, random binary morphology (dilation, erosion, closing
or opening with a ball of random radius), and removal of a random connected component that is
smaller than a fraction of the patch. The channels stay one-hot (at most one class per voxel; a
voxel a dilation gives to one class is taken from the others, a voxel nothing claims is
background).

Morphology is a convolution with the ball computed by FFT (``torch.fft``), so it runs on the
training device and costs the same for every radius. Connected components are labelled on the
host with ``scipy.ndimage.label`` (full connectivity, as the reference), only for the (sample,
class) pairs drawn (10 % of them at the default probabilities).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy import ndimage

from selfunet.training.augment_config import AugmentationParams

DILATION, EROSION, CLOSING, OPENING = 0, 1, 2, 3


@functools.lru_cache(maxsize=64)
def _ball(radius: float, dimension: int) -> np.ndarray:
    """Voxel offsets within ``radius`` of the centre (a ball in 3D, a disk in 2D), odd edge."""
    r = int(np.floor(radius))
    axes = np.meshgrid(*[np.arange(-r, r + 1)] * dimension, indexing="ij")
    return (sum(a.astype(np.float64) ** 2 for a in axes) <= radius * radius + 1e-9).astype(np.float32)


def dilate(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Binary dilation of ``mask`` (bool, any device) by a ball of ``radius``; outside is empty."""
    ball = torch.from_numpy(_ball(float(radius), mask.dim())).to(mask.device)
    r = ball.shape[0] // 2
    if r == 0:
        return mask.clone()
    shape = [s + 2 * r for s in mask.shape]
    dims = tuple(range(mask.dim()))
    spectrum = torch.fft.rfftn(mask.to(torch.float32), s=shape, dim=dims)
    spectrum = spectrum * torch.fft.rfftn(ball, s=shape, dim=dims)
    full = torch.fft.irfftn(spectrum, s=shape, dim=dims)
    same = full[tuple(slice(r, r + s) for s in mask.shape)]
    return same > 0.5


def erode(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Binary erosion; outside the patch counts as foreground (nothing erodes from the border)."""
    return ~dilate(~mask, radius)


def apply_morphology(mask: torch.Tensor, op: int, radius: float) -> torch.Tensor:
    if op == DILATION:
        return dilate(mask, radius)
    if op == EROSION:
        return erode(mask, radius)
    if op == CLOSING:
        return erode(dilate(mask, radius), radius)
    return dilate(erode(mask, radius), radius)


def remove_component(mask: np.ndarray, pick: float, max_fraction: float) -> np.ndarray | None:
    """The voxels of one connected component (full connectivity) smaller than ``max_fraction`` of
    the patch, chosen by ``pick`` in [0, 1) among the eligible ones; None when there is none."""
    if not mask.any():
        return None
    labels, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(labels.ravel())[1:]
    eligible = np.flatnonzero(sizes < max_fraction * mask.size) + 1
    if eligible.size == 0:
        return None
    return labels == eligible[min(int(pick * eligible.size), eligible.size - 1)]


def perturb_segmentation(onehot: torch.Tensor, params: AugmentationParams, max_fraction: float) -> torch.Tensor:
    """Morphology, then component removal, on one-hot channels [B, K, *spatial] (returns a new tensor)."""
    if params.seg_morphology is None or onehot.shape[1] == 0:
        return onehot
    out = onehot.clone()
    for b in range(out.shape[0]):
        for k in params.seg_morphology_order[b].tolist():
            if not bool(params.seg_morphology[b, k]):
                continue
            before = out[b, k] > 0.5
            after = apply_morphology(before, int(params.seg_morphology_op[b, k]),
                                     float(params.seg_morphology_radius[b, k]))
            added = after & ~before
            if out.shape[1] > 1 and bool(added.any()):
                out[b, :, added] = 0.0  # a voxel gained by class k leaves every other class
            out[b, k] = after.to(out.dtype)
        for k in torch.nonzero(params.seg_component_removal[b]).flatten().tolist():
            channel = out[b, k] > 0.5
            component = remove_component(channel.cpu().numpy(), float(params.seg_component_pick[b, k]), max_fraction)
            if component is not None:
                out[b, k][torch.from_numpy(component).to(out.device)] = 0.0
    return out
