"""Do two images lie on the same voxel grid? The tolerances and the comparison, shared by
``selfunet check`` (image vs. label, channel vs. channel) and the readers that stack channels
(:func:`selfunet.data.dataset.read_case_image`, ``selfunet predict``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from selfunet.data.header import ImageBounds, check_header, read_image_header
from selfunet.data.io import ImageGeometry, header_geometry, read_image
from selfunet.errors import SelfUNetError

#: image and label spacings may differ by this fraction per axis (headers are stored as float32,
#: and converters round differently; a real mismatch is orders of magnitude larger).
SPACING_RTOL = 1e-3
#: origins may differ by this many mm ...
ORIGIN_ATOL_MM = 1e-3
#: ... or by this fraction of the smallest voxel size, whichever is larger (coarse images are
#: often written with rounded origins; a hundredth of a voxel moves no label boundary).
ORIGIN_VOXEL_FRACTION = 1e-2
#: direction cosines may differ by this much per matrix entry (float32 quaternions in NIfTI).
DIRECTION_ATOL = 1e-3

def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def grid_problems(
    what: str, reference: str, ref: ImageGeometry, other: ImageGeometry
) -> list[tuple[str, str]]:
    """(message, fix) for each way ``other``'s grid differs from ``ref``'s, beyond the tolerances."""
    if ref.ndim_on_disk != other.ndim_on_disk:
        return [
            (
                f"{what} is {other.ndim_on_disk}D, {reference} is {ref.ndim_on_disk}D",
                f"store {what} with the same dimensionality as {reference}",
            )
        ]
    if ref.shape != other.shape:
        return [
            (
                f"{what} shape {other.shape} differs from {reference}'s {ref.shape} (z, y, x)",
                f"resample or crop {what} onto {reference}'s voxel grid; both must have the same shape",
            )
        ]
    found = []
    copy_fix = (
        f"if the voxels already correspond, copy {reference}'s header onto {what} "
        f"(SimpleITK: CopyInformation); otherwise resample it onto {reference}'s grid"
    )
    spacing_ok = np.allclose(other.spacing, ref.spacing, rtol=SPACING_RTOL, atol=0.0)
    if not spacing_ok:
        found.append(
            (
                f"{what} spacing {_fmt(other.spacing)} differs from {reference}'s {_fmt(ref.spacing)} "
                f"(z, y, x in mm; relative tolerance {SPACING_RTOL:g})",
                copy_fix,
            )
        )
    origin_tol = max(ORIGIN_ATOL_MM, ORIGIN_VOXEL_FRACTION * min(ref.spacing))
    offset = np.abs(np.subtract(other.origin, ref.origin)).max(initial=0.0)
    if len(other.origin) != len(ref.origin) or offset > origin_tol:
        found.append(
            (
                f"{what} origin {_fmt(other.origin)} differs from {reference}'s {_fmt(ref.origin)} "
                f"by {offset:.4g} mm (x, y, z; tolerance {origin_tol:.3g} mm)",
                copy_fix,
            )
        )
    turn = np.abs(np.subtract(other.direction, ref.direction)).max(initial=0.0)
    if len(other.direction) != len(ref.direction) or turn > DIRECTION_ATOL:
        found.append(
            (
                f"{what} direction {_fmt(other.direction)} differs from {reference}'s "
                f"{_fmt(ref.direction)} by up to {turn:.3g} (tolerance {DIRECTION_ATOL:g} per cosine)",
                copy_fix,
            )
        )
    return found


def read_channel_files(
    case_id: str, paths: Sequence[Path], expected_channels: int, expected_by: str, bounds: ImageBounds | None = None
) -> tuple[np.ndarray, ImageGeometry]:
    """The channel files of one case as float32 ``(C, z, y, x)`` plus channel 0's geometry.

    Every header is read and checked first, and the channels' grids compared (shape, then
    spacing, origin and direction within this module's tolerances), so channels that do not lie
    on one grid are refused, naming the case and the channels, before any voxel is read. The
    voxels are then read one file at a time into one preallocated array. ``expected_channels``
    (what ``expected_by`` declares: the dataset.json, the model) is checked on the headers too.
    """
    headers = [read_image_header(p) for p in paths]
    for header in headers:
        check_header(header, bounds)
    geometries = [header_geometry(h) for h in headers]
    reference = geometries[0]
    for k, (path, geometry) in enumerate(zip(paths, geometries)):
        if k == 0:
            continue
        if geometry.ndim_on_disk != reference.ndim_on_disk or geometry.shape != reference.shape:
            raise SelfUNetError(
                f"case '{case_id}': channel {k} ({path}) has shape {geometry.shape} ({geometry.ndim_on_disk}D), "
                f"channel 0 ({paths[0]}) {reference.shape} ({reference.ndim_on_disk}D) (z, y, x); all channels "
                f"must share one voxel grid: resample channel {k} onto channel 0's grid."
            )
        mismatches = grid_problems(f"channel {k}", "channel 0", reference, geometry)
        if mismatches:
            raise SelfUNetError(
                f"case '{case_id}': channel {k} ({path}) does not lie on channel 0's grid ({paths[0]}): "
                + "; ".join(message for message, _ in mismatches) + f"; {mismatches[0][1]}."
            )
    total = sum(h.channels for h in headers)
    if total != expected_channels:
        raise SelfUNetError(
            f"case '{case_id}' ({paths[0]}): {total} channel(s) found, {expected_by} {expected_channels}; give all "
            "channels (one 4D file, or one <case>_XXXX file per channel) or fix the channel list."
        )
    image = np.empty((total, *reference.shape), dtype=np.float32)
    start = 0
    for path, header in zip(paths, headers):
        array, _ = read_image(path, bounds)
        image[start : start + header.channels] = array
        start += header.channels
        del array
    return image, reference
