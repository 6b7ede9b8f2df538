"""Intensity augmentation: noise, blur, brightness, contrast, low resolution, gamma.

Blur is separable, so it is a small per-(sample, channel) matrix applied along every axis with
one batched matmul: no Python loop over voxels, and different sigmas per channel cost nothing
extra. Low-resolution simulation is two interpolations per chosen channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

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


def _simulate_lowres_(row: torch.Tensor, zoom: float, spatial: torch.Size, per_slice: bool) -> None:
    """Nearest downsampling to ``round(L * zoom)`` samples per axis, then linear upsampling back to
    ``L`` (pixel centres aligned, as the reference's ``nearest-exact`` / ``align_corners=False``);
    the first axis is kept in per-slice mode. In place on a flat row: two small interpolations
    instead of a dense L x L product per axis."""
    size = [n if (a == 0 and per_slice) else max(1, round(zoom * n)) for a, n in enumerate(spatial)]
    volume = row.view(1, 1, *spatial)
    low = F.interpolate(volume, size=size, mode="nearest-exact")
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    row.copy_(F.interpolate(low, size=list(spatial), mode=mode, align_corners=False).reshape(-1))


def _apply_along_axes(x: torch.Tensor, mats: list[torch.Tensor | None]) -> torch.Tensor:
    """x [K, *spatial]; mats[a] [K, L_a, L_a] (or None = identity) applied along spatial axis a.

    Each axis is one batched product on a view of the contiguous volume, never a transposed copy:
    ``M @ x`` on [K, L, rest] for the first axis, ``x @ M^T`` on [K, rest, L] for the last, and
    ``M @ x`` on [K, pre, L, post] for a middle one (there the matrix is broadcast over ``pre``,
    as small as the volume, instead of the volume being transposed twice).
    """
    k = x.shape[0]
    for axis, mat in enumerate(mats):
        if mat is None:
            continue
        m = mat.to(device=x.device, dtype=x.dtype)
        shape = x.shape
        length = shape[axis + 1]
        pre, post = math.prod(shape[1 : axis + 1]), math.prod(shape[axis + 2 :])
        x = x.contiguous()
        if pre == 1:
            x = torch.bmm(m, x.view(k, length, post)).view(shape)
        elif post == 1:
            x = torch.bmm(x.view(k, pre, length), m.transpose(1, 2)).view(shape)
        else:
            x = torch.matmul(m[:, None], x.view(k, pre, length, post)).view(shape)
    return x


def apply_intensity(image: torch.Tensor, p: AugmentationParams, per_slice: bool) -> torch.Tensor:
    """All intensity transforms of ``p`` on image [B, C, *spatial], in the reference's order.

    In place where a transform works per (sample, channel): a row view is changed with in-place
    ops (a handful of passes over its voxels, no copies), which on a CPU-only machine is what the
    loader's worker spends its time on. Only blur and low resolution (batched matrix products)
    gather their rows.
    """
    b, c = image.shape[:2]
    spatial = image.shape[2:]
    dimension = len(spatial)
    device = image.device
    image = image.contiguous()
    chosen = torch.nonzero(p.noise).flatten()
    if chosen.numel():  # noise for the chosen samples only
        gen = torch.Generator(device=device).manual_seed(p.noise_seed)
        noise = torch.randn((chosen.numel(), *image.shape[1:]), generator=gen, device=device, dtype=image.dtype)
        for j, sample in enumerate(chosen.tolist()):
            image[sample].add_(noise[j], alpha=float(p.noise_std[sample]))
        del noise
    flat = image.view(b * c, -1)

    def rows(mask: torch.Tensor) -> list[int]:
        return torch.nonzero(mask.reshape(-1)).flatten().tolist()

    def per_pair(sample_mask: torch.Tensor) -> torch.Tensor:
        return sample_mask[:, None].expand(b, c)

    # blur: separable Gaussian per (sample, channel, axis)
    sel = rows(p.blur)
    if sel:
        sigma = p.blur_sigma.reshape(b * c, -1)[sel]
        mats = [_blur_matrices(sigma[:, a], spatial[a]) for a in range(dimension)]
        _replace(flat, sel, spatial, lambda x: _apply_along_axes(x, mats))
    # multiplicative brightness
    factors = p.brightness_factor.reshape(-1).tolist()
    for row in rows(per_pair(p.brightness)):
        flat[row].mul_(factors[row])
    # contrast, value range preserved
    factors = p.contrast_factor.reshape(-1).tolist()
    for row in rows(per_pair(p.contrast)):
        _contrast_(flat[row], factors[row])
    # low-resolution simulation (never across slices in per-slice mode)
    zooms = p.lowres_zoom.reshape(-1).tolist()
    for row in rows(p.lowres):
        _simulate_lowres_(flat[row], zooms[row], spatial, per_slice)
    # gamma (inverted first, as in the reference order), mean and std retained
    for mask, values, invert in (
        (p.inverted_gamma, p.inverted_gamma_value, True),
        (p.gamma, p.gamma_value, False),
    ):
        gammas = values.reshape(-1).tolist()
        for row in rows(per_pair(mask)):
            _gamma_(flat[row], gammas[row], invert)
    return image


def _replace(flat: torch.Tensor, sel: list[int], spatial: torch.Size,
             fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """flat[sel] = fn(flat[sel] as [K, *spatial]), in place."""
    idx = torch.tensor(sel, device=flat.device)
    flat[idx] = fn(flat.index_select(0, idx).view(len(sel), *spatial)).reshape(len(sel), -1)


def _row_mean_std(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std (0-d tensors, no host sync) of a flat row: a cascade sum and a centred
    second pass (``Tensor.std`` is several times slower on a CPU)."""
    n = row.numel()
    mean = row.sum() / n
    centred = row - mean
    return mean, (torch.dot(centred, centred) / max(n - 1, 1)).sqrt()


def _contrast_(row: torch.Tensor, factor: float) -> None:
    """(x - mean) * factor + mean, clipped to the row's range before the change; in place."""
    mean = row.sum() / row.numel()
    lo, hi = torch.aminmax(row)
    row.sub_(mean).mul_(factor).add_(mean)
    row.clamp_(min=lo, max=hi)


def _gamma_(row: torch.Tensor, gamma: float, invert: bool) -> None:
    """The reference's gamma with retained mean and std, in place on a flat row.

    Scale to [0, 1] by the row's range, raise to ``gamma``, then give the result the row's old
    mean and std. ``invert``: the same on the negated row, negated back (the reference negates
    twice); done here by scaling with the opposite sign instead of two extra passes.
    """
    lo, hi = torch.aminmax(row)
    mean, std = _row_mean_std(row)
    span = (hi - lo).clamp_min(1e-7)
    if invert:  # on -x: the minimum is -hi
        row.sub_(hi).div_(-span)
    else:
        row.sub_(lo).div_(span)
    row.clamp_(0, 1).pow_(gamma)
    # the reference normalises u * span + lo: (u - mean_u) * span / (std_u * span + 1e-7)
    u_mean, u_std = _row_mean_std(row)
    scale = std * span / (u_std * span + 1e-7)
    row.sub_(u_mean).mul_(-scale if invert else scale).add_(mean)


def zero_outside_mask(image: torch.Tensor, label: torch.Tensor, channels: tuple[int, ...]) -> torch.Tensor:
    """Channels normalized inside the non-zero mask are 0 outside it at inference; after the
    transforms (noise, blur, ... spread values there) they are set back to exactly 0 wherever the
    label is negative (outside the mask, or outside the image), as the reference does."""
    if not channels:
        return image
    # a multiplication by a 0/1 mask: three times faster than masked_fill_ on a CPU (finite values,
    # so 0 * x is 0; the sign of a negative zero does not matter)
    if label.device.type == "cpu":  # numpy's integer compare and cast: about twice torch's speed here
        keep = torch.from_numpy((label.numpy() >= 0).astype(np.float32)).to(image.dtype)  # [B, 1, *spatial]
    else:
        keep = (label >= 0).to(image.dtype)
    ordered = sorted(set(channels))
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        image[:, ordered[0] : ordered[-1] + 1].mul_(keep)
    else:
        for c in ordered:
            image[:, c].mul_(keep[:, 0])
    return image
