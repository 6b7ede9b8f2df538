"""Intensity augmentation: noise, blur, brightness, contrast, low resolution, gamma.

Blur and low-resolution simulation are separable, so each is a small per-(sample, channel)
matrix applied along every axis with one batched matmul: no Python loop over voxels, and
different sigmas / zoom factors per channel cost nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from selfunet.training.augment_config import AugmentationParams


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


def apply_intensity(image: torch.Tensor, p: AugmentationParams, per_slice: bool) -> torch.Tensor:
    """All intensity transforms of ``p`` on image [B, C, *spatial], in the reference's order."""
    b, c = image.shape[:2]
    spatial = image.shape[2:]
    dimension = len(spatial)
    device = image.device
    chosen = torch.nonzero(p.noise).flatten()
    if chosen.numel():  # noise for the chosen samples only
        gen = torch.Generator(device=device).manual_seed(p.noise_seed)
        noise = torch.randn((chosen.numel(), *image.shape[1:]), generator=gen, device=device, dtype=image.dtype)
        std = p.noise_std[chosen].to(device, image.dtype).view(-1, *([1] * (image.dim() - 1)))
        idx = chosen.to(device)
        image = image.index_add(0, idx, noise * std)
    image = image.reshape(b * c, *spatial)

    def select(mask: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(mask.reshape(-1)).flatten()

    def per_pair(sample_mask: torch.Tensor) -> torch.Tensor:
        return sample_mask[:, None].expand(b, c)

    # blur: separable Gaussian per (sample, channel, axis)
    sel = select(p.blur)
    if sel.numel():
        sigma = p.blur_sigma.reshape(b * c, -1)[sel]
        mats = [_blur_matrices(sigma[:, a], spatial[a]) for a in range(dimension)]
        image = _replace(image, sel, lambda x: _apply_along_axes(x, mats))
    # multiplicative brightness
    sel = select(per_pair(p.brightness))
    if sel.numel():
        factor = p.brightness_factor.reshape(-1)[sel].to(device, image.dtype)
        image = _replace(image, sel, lambda x: x * factor.view(-1, *([1] * dimension)))
    # contrast, value range preserved
    sel = select(per_pair(p.contrast))
    if sel.numel():
        factor = p.contrast_factor.reshape(-1)[sel].to(device, image.dtype)
        image = _replace(image, sel, lambda x: _contrast(x, factor))
    # low-resolution simulation (never across slices in per-slice mode)
    sel = select(p.lowres)
    if sel.numel():
        zoom = p.lowres_zoom.reshape(-1)[sel]
        mats = [
            None if (a == 0 and per_slice) else _lowres_matrices(zoom, spatial[a])
            for a in range(dimension)
        ]
        image = _replace(image, sel, lambda x: _apply_along_axes(x, mats))
    # gamma (inverted first, as in the reference order), mean and std retained
    for mask, values, invert in (
        (p.inverted_gamma, p.inverted_gamma_value, True),
        (p.gamma, p.gamma_value, False),
    ):
        sel = select(per_pair(mask))
        if sel.numel():
            gam = values.reshape(-1)[sel].to(device, image.dtype)
            image = _replace(image, sel, lambda x, gam=gam, invert=invert: _gamma(x, gam, invert))
    return image.reshape(b, c, *spatial).contiguous()


def _replace(flat: torch.Tensor, sel: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    idx = sel.to(flat.device)
    flat[idx] = fn(flat.index_select(0, idx))
    return flat



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


def zero_outside_mask(image: torch.Tensor, label: torch.Tensor, channels: tuple[int, ...]) -> torch.Tensor:
    """Channels normalized inside the non-zero mask are 0 outside it at inference; after the
    transforms (noise, blur, ... spread values there) they are set back to exactly 0 wherever the
    label is negative (outside the mask, or outside the image), as the reference does."""
    if not channels:
        return image
    outside = label[:, 0] < 0  # [B, *spatial]
    for c in channels:
        image[:, c].masked_fill_(outside, 0.0)
    return image
