"""Resampling images, label maps and probabilities between voxel grids (docs/explanation/design.md#resampling).

Why it is written this way: resampling is the dominant cost of preprocessing and of exporting
predictions. A third-order spline on a regular grid is a tensor product, so it can be applied
one axis at a time: prefilter along the axis (``scipy.ndimage.spline_filter1d``, O(n)) and
evaluate a 4-tap kernel along the axis (a sparse matrix with 4 entries per output row times the
volume reshaped to ``(n_axis, rest)``). That costs about 4 multiply-adds per voxel per axis
instead of the 4^3 = 64 of a full 3D spline evaluation (``scipy.ndimage.zoom``), gives the same
numbers up to float32 rounding, and never creates a float64 copy of the volume. Linear (order 1)
and nearest (order 0) interpolation are the same machinery with 2- and 1-tap kernels.

Grid convention: the first and last voxel *edges* of input and output coincide (the physical
extent is kept), i.e. output voxel ``i`` samples input position ``(i + 0.5) * n_in / n_out - 0.5``
(``grid_mode=True`` in SciPy, ``align_corners=False`` in PyTorch). Outside the input the data
are mirrored at the edge voxel centres (``mode="mirror"``), which is also the boundary condition
the spline prefilter assumes.

Anisotropy: when max spacing / min spacing of either grid exceeds the threshold and exactly one
axis is the coarse one, that axis uses the out-of-plane order (nearest by default) and the other
axes the in-plane order, so thick slices are never blurred into each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from selfunet.data.cropping import bounding_box
from selfunet.data.header import ENV_MAX_VOXELS, image_bounds
from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import ResamplingSettings

SUPPORTED_ORDERS = (0, 1, 3)


def compute_new_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float], what: str = "the image",
    max_voxels: int | None = None,
) -> tuple[int, ...]:
    """``round(shape * spacing / target_spacing)`` per axis (at least 1 voxel).

    The result is bounded before anything is allocated: a header spacing of 1000 mm resampled to
    1 mm would otherwise ask for terabytes. ``max_voxels`` defaults to the image bound
    (:func:`selfunet.data.header.image_bounds`); ``what`` names the case in the message.
    """
    if len(shape) != len(spacing) or len(shape) != len(target_spacing):
        raise SelfUNetError(
            f"shape {tuple(shape)}, spacing {tuple(spacing)} and target spacing {tuple(target_spacing)} "
            "must have the same number of axes."
        )
    if not all(math.isfinite(s) and s > 0 for s in (*spacing, *target_spacing)):
        raise SelfUNetError(f"spacings must be positive, got {tuple(spacing)} -> {tuple(target_spacing)}.")
    new_shape = tuple(
        max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )
    limit = image_bounds().max_voxels if max_voxels is None else max_voxels
    voxels = math.prod(new_shape)
    if voxels > limit:
        raise SelfUNetError(
            f"{what}: resampling shape {tuple(shape)} at spacing {_mm(spacing)} to the target spacing "
            f"{_mm(target_spacing)} would make {voxels:,} voxels (shape {new_shape}), more than the bound of "
            f"{limit:,}; the header's spacing is probably wrong: fix it (`selfunet check` shows every case's "
            f"spacing problems), or raise the bound ({ENV_MAX_VOXELS}, docs/guide/security.md) if it is real."
        )
    return new_shape


def _mm(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ") mm"


def anisotropic_axis(
    spacing: Sequence[float], new_spacing: Sequence[float], threshold: float
) -> int | None:
    """The single coarse axis that gets out-of-plane interpolation, or ``None``.

    The source grid decides first (thick input slices must not be blurred), else the target grid
    (a coarse target axis is sampled, not smoothed). Two or three equally coarse axes mean there is
    no single out-of-plane direction, so everything is interpolated alike.
    """
    for grid in (spacing, new_spacing):
        grid = np.asarray(grid, dtype=np.float64)
        if grid.max() / grid.min() > threshold:
            coarse = np.flatnonzero(grid == grid.max())
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


# ----------------------------------------------------------------------------------------------
# 1D kernels


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices at the edge voxel centres (d c b | a b c d | c b a)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t < 1, 2.0 / 3.0 - t**2 + 0.5 * t**3, np.where(t < 2, (2.0 - t) ** 3 / 6.0, 0.0)
    )


@lru_cache(maxsize=256)
def _axis_matrix(n_in: int, n_out: int, order: int) -> sp.csr_matrix:
    """Sparse ``(n_out, n_in)`` interpolation matrix along one axis (after prefiltering)."""
    position = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    rows = np.arange(n_out)
    if order == 0:
        # ndimage rounds half up for order 0; edge voxels are clamped.
        cols = np.clip(np.floor(position + 0.5).astype(np.int64), 0, n_in - 1)
        weights = np.ones(n_out)
        return sp.csr_matrix((weights.astype(np.float32), (rows, cols)), shape=(n_out, n_in))
    if order == 1:
        position = np.clip(position, 0, n_in - 1)
        left = np.minimum(np.floor(position).astype(np.int64), max(n_in - 2, 0))
        frac = position - left
        cols = np.stack([left, np.minimum(left + 1, n_in - 1)], axis=1)
        weights = np.stack([1 - frac, frac], axis=1)
    elif order == 3:
        base = np.floor(position).astype(np.int64) - 1
        taps = base[:, None] + np.arange(4)[None, :]
        weights = _cubic_bspline(position[:, None] - taps)
        cols = _mirror(taps, n_in)
    else:  # pragma: no cover - guarded by _check_order
        raise SelfUNetError(f"interpolation order {order} is not supported")
    matrix = sp.csr_matrix(
        (weights.ravel().astype(np.float32), (np.repeat(rows, cols.shape[1]), cols.ravel())),
        shape=(n_out, n_in),
    )
    matrix.sum_duplicates()  # mirrored taps of tiny axes land on the same column
    return matrix


def _check_order(order: int) -> None:
    if order not in SUPPORTED_ORDERS:
        raise SelfUNetError(
            f"interpolation order {order} is not supported; use one of {SUPPORTED_ORDERS} "
            "(plan field configurations.*.resampling)."
        )


def resample_volume(volume: np.ndarray, new_shape: Sequence[int], orders: Sequence[int]) -> np.ndarray:
    """Resample one 3D float volume to ``new_shape`` with a per-axis interpolation order.

    Axes are processed so that shrinking axes come first (the later passes touch fewer voxels).
    Returns float32; the input is never modified.
    """
    if volume.ndim != len(new_shape) or volume.ndim != len(orders):
        raise SelfUNetError(
            f"volume of shape {volume.shape} cannot be resampled to {tuple(new_shape)} with orders {orders}."
        )
    for o in orders:
        _check_order(o)
    out = np.asarray(volume, dtype=np.float32)
    todo = [a for a in range(out.ndim) if out.shape[a] != new_shape[a]]
    todo.sort(key=lambda a: new_shape[a] / out.shape[a])
    for axis in todo:
        n_in, n_out, order = out.shape[axis], int(new_shape[axis]), int(orders[axis])
        if order == 3 and n_in > 1:
            out = ndimage.spline_filter1d(out, order=3, axis=axis, output=np.float32, mode="mirror")
        out = _apply_axis(out, axis, _axis_matrix(n_in, n_out, order))
    if out is volume:
        out = out.copy()
    return np.ascontiguousarray(out, dtype=np.float32)


def _apply_axis(volume: np.ndarray, axis: int, matrix: sp.csr_matrix) -> np.ndarray:
    """``matrix`` (n_out, n_in) applied along ``axis`` of a 3D float32 volume."""
    n_in = volume.shape[axis]
    n_out = matrix.shape[0]
    out_shape = list(volume.shape)
    out_shape[axis] = n_out
    if axis == 0:
        result = matrix @ np.ascontiguousarray(volume).reshape(n_in, -1)
        return np.asarray(result, dtype=np.float32).reshape(out_shape)
    # Middle/last axis: per leading slab, so each product runs over contiguous rows.
    result = np.empty(out_shape, dtype=np.float32)
    lead = int(np.prod(volume.shape[:axis]))
    src = np.ascontiguousarray(volume).reshape(lead, n_in, -1)
    dst = result.reshape(lead, n_out, -1)
    if src.shape[2] == 1:
        # last axis: one (lead, n_in) @ (n_in, n_out) product with the transposed matrix.
        dst[:, :, 0] = (matrix @ src[:, :, 0].T).T
        return result
    for i in range(lead):
        dst[i] = matrix @ src[i]
    return result


def _resample_box(
    volume: np.ndarray, box: Sequence[Sequence[int]], new_shape: Sequence[int], orders: Sequence[int]
) -> tuple[np.ndarray, list[list[int]]]:
    """Resample a volume that is zero outside ``box`` (orders 0/1 only): work on the box alone.

    Dropping the matrix columns outside the box is exact (they multiply zeros), and only output
    rows that touch the box can be non-zero. Returns the resampled values and their output box.
    """
    out = np.asarray(volume[tuple(slice(a, b) for a, b in box)], dtype=np.float32)
    out_box = []
    for axis, (a, b) in enumerate(box):
        matrix = _axis_matrix(volume.shape[axis], int(new_shape[axis]), int(orders[axis]))[:, a:b]
        rows = np.flatnonzero(np.diff(matrix.indptr))
        if len(rows) == 0:
            return np.zeros([0] * volume.ndim, dtype=np.float32), [[0, 0]] * volume.ndim
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        out = _apply_axis(out, axis, matrix[r0:r1])
        out_box.append([r0, r1])
    return out, out_box


# ----------------------------------------------------------------------------------------------
# images, label maps, probabilities


def interpolation_orders(
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    in_plane: int,
    out_of_plane: int,
    threshold: float,
) -> list[int]:
    """Per-axis order: ``in_plane`` everywhere except ``out_of_plane`` on a single coarse axis."""
    orders = [in_plane] * len(spacing)
    axis = anisotropic_axis(spacing, new_spacing, threshold)
    if axis is not None:
        orders[axis] = out_of_plane
    return orders


def _new_spacing(shape: Sequence[int], spacing: Sequence[float], new_shape: Sequence[int]) -> list[float]:
    return [s * n / m for n, s, m in zip(shape, spacing, new_shape, strict=True)]


def _resolve_shape(
    shape: Sequence[int],
    spacing: Sequence[float],
    target_spacing: Sequence[float] | None,
    new_shape: Sequence[int] | None,
) -> tuple[int, ...]:
    if (target_spacing is None) == (new_shape is None):
        raise SelfUNetError("resampling needs exactly one of target_spacing and new_shape.")
    if new_shape is None:
        return compute_new_shape(shape, spacing, target_spacing)  # type: ignore[arg-type]
    if len(new_shape) != len(shape) or min(new_shape) < 1:
        raise SelfUNetError(f"cannot resample shape {tuple(shape)} to {tuple(new_shape)}.")
    return tuple(int(n) for n in new_shape)


def resample_image(
    image: np.ndarray,
    spacing: Sequence[float],
    target_spacing: Sequence[float] | None = None,
    new_shape: Sequence[int] | None = None,
    settings: ResamplingSettings = ResamplingSettings(),
) -> np.ndarray:
    """Resample an intensity image ``(C, *spatial)`` (third-order spline by default), float32.

    Channels are resampled one at a time, so the peak memory is one channel's temporaries.
    """
    return _resample_channels(image, spacing, target_spacing, new_shape, settings.image_order,
                              settings.image_order_out_of_plane, settings.anisotropy_threshold)


def _resample_channels(
    array: np.ndarray,
    spacing: Sequence[float],
    target_spacing: Sequence[float] | None,
    new_shape: Sequence[int] | None,
    order: int,
    order_out_of_plane: int,
    anisotropy_threshold: float,
) -> np.ndarray:
    """``(C, *spatial)`` resampled channel by channel with one set of per-axis orders, float32."""
    shape = array.shape[1:]
    target = _resolve_shape(shape, spacing, target_spacing, new_shape)
    if tuple(target) == tuple(shape):
        return np.array(array, dtype=np.float32, copy=True)
    orders = interpolation_orders(
        spacing, _new_spacing(shape, spacing, target), order, order_out_of_plane, anisotropy_threshold
    )
    out = np.empty((array.shape[0], *target), dtype=np.float32)
    for c in range(array.shape[0]):
        out[c] = resample_volume(array[c], target, orders)
    return out


def resample_probabilities(
    probabilities: np.ndarray,
    spacing: Sequence[float],
    target_spacing: Sequence[float] | None = None,
    new_shape: Sequence[int] | None = None,
    settings: ResamplingSettings = ResamplingSettings(),
) -> np.ndarray:
    """Resample class probabilities ``(K, *spatial)`` (linear; nearest out of plane), float32."""
    return _resample_channels(probabilities, spacing, target_spacing, new_shape, settings.probabilities_order,
                              settings.probabilities_order_out_of_plane, settings.anisotropy_threshold)


def resample_segmentation(
    segmentation: np.ndarray,
    spacing: Sequence[float],
    target_spacing: Sequence[float] | None = None,
    new_shape: Sequence[int] | None = None,
    settings: ResamplingSettings = ResamplingSettings(),
) -> np.ndarray:
    """Resample a label map ``(*spatial)`` through its one-hot encoding, same dtype as the input.

    Every label value present (including -1, "outside the non-zero mask") becomes one channel,
    interpolated linearly (nearest out of plane when anisotropic); the output takes the label of
    the largest channel. Classes are processed one at a time against a running maximum, so memory
    does not grow with the number of classes, and each class is only interpolated inside its own
    bounding box, which is what makes small structures cheap.
    """
    shape = segmentation.shape
    target = _resolve_shape(shape, spacing, target_spacing, new_shape)
    if tuple(target) == tuple(shape):
        return segmentation.copy()
    orders = interpolation_orders(
        spacing,
        _new_spacing(shape, spacing, target),
        settings.label_order,
        settings.label_order_out_of_plane,
        settings.anisotropy_threshold,
    )
    return _argmax_resample(segmentation, target, orders)


def _argmax_resample(
    segmentation: np.ndarray, target: Sequence[int], orders: Sequence[int]
) -> np.ndarray:
    values, counts = np.unique(segmentation, return_counts=True)
    common = values[int(np.argmax(counts))]
    labels = np.full(tuple(target), common, dtype=segmentation.dtype)
    if len(values) == 1:
        return labels
    # Linear/nearest weights sum to 1, so the most common class's channel is 1 - sum(others):
    # only the (usually small) other classes are interpolated, each inside its bounding box.
    best = np.zeros(tuple(target), dtype=np.float32)
    total = np.zeros(tuple(target), dtype=np.float32)
    for value in values:
        if value == common:
            continue
        mask = segmentation == value
        box = bounding_box(mask)
        resampled, out_box = _resample_box(mask, box, target, orders)
        if resampled.size == 0:
            continue
        region = tuple(slice(a, b) for a, b in out_box)
        better = resampled > best[region]
        best[region][better] = resampled[better]
        labels[region][better] = value
        total[region] += resampled
    labels[(1.0 - total) >= best] = common
    return labels
