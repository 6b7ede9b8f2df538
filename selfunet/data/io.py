"""Reading and writing medical images through SimpleITK.

Conventions used everywhere in selfunet:

* arrays are in numpy order ``(z, y, x)`` with channels first: ``(C, z, y, x)``;
* ``spacing`` is given in the same order as the array axes (SimpleITK reports ``(x, y, z)``:
  it is reversed here, once, so nothing downstream has to remember);
* 2D images get a leading axis of size 1 with a placeholder spacing, so every stage handles one
  kind of array; ``ImageGeometry.ndim_on_disk`` remembers to drop it again when writing;
* ``origin`` and ``direction`` are kept exactly as SimpleITK reports them (physical ``(x, y, z)``
  order), because their only job is to be written back unchanged.
"""

from __future__ import annotations

import errno
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from selfunet.artifacts import atomic_path, write_failure
from selfunet.data.header import (
    SUPPORTED_ENDINGS,
    External,
    ImageBounds,
    ImageHeader,
    ImageRefused,
    check_header,
    file_ending,
    read_image_header,
    sitk_reason,
)
from selfunet.errors import SelfUNetError

__all__ = [
    "SPACING_2D_PLACEHOLDER",
    "SUPPORTED_ENDINGS",
    "ImageGeometry",
    "file_ending",
    "header_geometry",
    "read_image",
    "strip_ending",
    "write_image",
    "write_label",
]

#: spacing of the artificial leading axis of 2D images (large, so it is never resampled into).
SPACING_2D_PLACEHOLDER = 999.0

NonFinite = Literal["refuse", "keep"]


def strip_ending(path: str | Path) -> str:
    """The file name without its image ending (``case_001.nii.gz`` -> ``case_001``)."""
    name = Path(path).name
    return name[: len(name) - len(file_ending(path))]


@dataclass(frozen=True)
class ImageGeometry:
    """Where an image lies in physical space; enough to write a result back with its header."""

    shape: tuple[int, int, int]
    """spatial shape in array order (z, y, x); 2D images have z == 1."""
    spacing: tuple[float, float, float]
    """voxel size in mm in array order."""
    origin: tuple[float, ...]
    """as SimpleITK reports it: physical (x, y[, z])."""
    direction: tuple[float, ...]
    """row-major direction cosine matrix as SimpleITK reports it."""
    ndim_on_disk: int = 3

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "ndim_on_disk": self.ndim_on_disk,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ImageGeometry:
        return cls(
            shape=tuple(int(v) for v in raw["shape"]),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in raw["spacing"]),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in raw["origin"]),
            direction=tuple(float(v) for v in raw["direction"]),
            ndim_on_disk=int(raw.get("ndim_on_disk", 3)),
        )


def read_image(
    path: str | Path,
    bounds: ImageBounds | None = None,
    *,
    external: External = "inside",
    allow_symlink: bool = True,
    nonfinite: NonFinite = "refuse",
) -> tuple[np.ndarray, ImageGeometry]:
    """Read an image as ``(C, z, y, x)`` plus its geometry, header first.

    The header is read and checked against ``bounds`` (default: :func:`selfunet.data.header.image_bounds`)
    before any voxel, and an external data file is followed only where ``external`` allows it (see
    :mod:`selfunet.data.header`). ``nonfinite="refuse"`` (the default) refuses an image with NaN or
    infinite voxels, naming the file, the counts and the fix; for float NIfTI files, whose NaN and
    infinite voxels SimpleITK silently reads as 0, the raw voxel bytes are scanned for them first.
    ``"keep"`` reads what SimpleITK reads (label maps, whose values ``selfunet check`` verifies).

    A 4D file (Decathlon multi-channel cases) yields one channel per volume along its 4th axis.
    Raises :class:`SelfUNetError` naming the file when it is missing, unreadable or refused.
    """
    path = Path(path)
    header = read_image_header(path, external=external, allow_symlink=allow_symlink)
    check_header(header, bounds)
    if nonfinite == "refuse" and header.is_float and header.format in (".nii", ".nii.gz"):
        from selfunet.data.nifti_raw import RawScan, scan_nifti

        scan = scan_nifti(path)
        if isinstance(scan, str):
            raise ImageRefused(path, "unreadable", scan, "re-export or download the image again")
        if isinstance(scan, RawScan):
            _refuse_nonfinite(path, scan.nan, scan.inf, " (SimpleITK would silently read them as 0)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageRefused(path, "unreadable", sitk_reason(exc, path), "re-export it as NIfTI or MHA") from exc
    array, geometry = image_to_array(image, source=str(path))
    del image
    if nonfinite == "refuse" and array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = array[~finite]
            _refuse_nonfinite(path, int(np.count_nonzero(np.isnan(bad))), int(np.count_nonzero(np.isinf(bad))), "")
    return array, geometry


def _refuse_nonfinite(path: Path, nan: int, inf: int, note: str) -> None:
    if not nan and not inf:
        return
    counts = " and ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "") if part)
    raise ImageRefused(
        path, "non-finite",
        f"{counts} voxel value(s){note}; a network's output on them is meaningless (one +inf voxel can turn a whole "
        "prediction into background)",
        "replace them by finite values (e.g. NaN by the image minimum, +-inf clipped to the finite range) and save "
        "the file again; `selfunet check` lists every such case",
    )


def header_geometry(header: ImageHeader) -> ImageGeometry:
    """The :class:`ImageGeometry` of a header, in this module's conventions (channels not counted)."""
    size, spacing = header.size, header.spacing
    origin, direction = header.origin, header.direction
    if header.dimension == 2:
        shape = (1, size[1], size[0])
        spacing_zyx = (SPACING_2D_PLACEHOLDER, spacing[1], spacing[0])
    elif header.dimension == 3:
        shape, spacing_zyx = tuple(reversed(size)), tuple(reversed(spacing))
    elif header.dimension == 4:
        shape, spacing_zyx = tuple(reversed(size[:3])), tuple(reversed(spacing[:3]))
        origin = origin[:3]
        direction = tuple(np.asarray(direction).reshape(4, 4)[:3, :3].ravel().tolist())
    else:
        raise SelfUNetError(f"{header.path}: {header.dimension}D images are not supported (2D, 3D or 4D only).")
    return ImageGeometry(
        shape=tuple(int(v) for v in shape),  # type: ignore[arg-type]
        spacing=tuple(float(v) for v in spacing_zyx),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction),
        ndim_on_disk=2 if header.dimension == 2 else 3,
    )


def image_to_array(image: sitk.Image, source: str = "<image>") -> tuple[np.ndarray, ImageGeometry]:
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SelfUNetError(
            f"{source}: vector pixels ({image.GetNumberOfComponentsPerPixel()} components) are not "
            "supported; store one channel per file or as a 4D volume."
        )
    array = sitk.GetArrayFromImage(image)
    spacing_xyz = image.GetSpacing()
    origin = image.GetOrigin()
    direction = image.GetDirection()
    if dim == 2:
        array = array[None, None]
        spacing = (SPACING_2D_PLACEHOLDER, float(spacing_xyz[1]), float(spacing_xyz[0]))
        ndim_on_disk = 2
    elif dim == 3:
        array = array[None]
        spacing = tuple(float(s) for s in reversed(spacing_xyz))
        ndim_on_disk = 3
    elif dim == 4:
        # (t, z, y, x): the 4th physical axis holds the channels.
        spacing = tuple(float(s) for s in reversed(spacing_xyz[:3]))
        origin = origin[:3]
        full = np.asarray(direction).reshape(4, 4)
        direction = tuple(full[:3, :3].ravel().tolist())
        ndim_on_disk = 3
    else:
        raise SelfUNetError(f"{source}: {dim}D images are not supported (2D, 3D or 4D only).")
    geometry = ImageGeometry(
        shape=tuple(int(s) for s in array.shape[1:]),  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction),
        ndim_on_disk=ndim_on_disk,
    )
    return array, geometry


def array_to_image(array: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    """Build a SimpleITK image from a ``(z, y, x)`` array with the given header."""
    if tuple(array.shape) != tuple(geometry.shape):
        raise SelfUNetError(
            f"array shape {tuple(array.shape)} does not match the geometry's {geometry.shape}."
        )
    if geometry.ndim_on_disk == 2:
        image = sitk.GetImageFromArray(array[0])
        image.SetSpacing((geometry.spacing[2], geometry.spacing[1]))
    else:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(reversed(geometry.spacing)))
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def write_image(path: str | Path, array: np.ndarray, geometry: ImageGeometry) -> None:
    """Write a ``(z, y, x)`` array with ``geometry``'s header, durably (unique temp file, fsync, rename)."""
    save_image(path, array_to_image(array, geometry))


def save_image(path: str | Path, image: sitk.Image) -> None:
    """``sitk.WriteImage`` made durable and honest: unique temp file, checked, fsync, rename.

    SimpleITK does not report a failed write of a compressed file: on a full disk it leaves an
    empty or truncated ``.nii.gz`` and returns normally. So the temp file is checked before it
    replaces ``path`` (a gzip stream is decompressed to its end, which verifies its CRC; other
    formats are read back), and a bad one raises an OSError naming ``path``.
    """
    path = Path(path)
    with atomic_path(path, ending=file_ending(path)) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
            _check_written(tmp)
        except (RuntimeError, OSError, EOFError, zlib.error) as exc:  # a full disk, a read-only folder
            raise write_failure(path, "writing the image", exc) from exc


def _check_written(path: Path) -> None:
    if path.stat().st_size == 0:
        raise OSError(errno.EIO, "the written file is empty", str(path))
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    else:
        sitk.ReadImage(str(path))


def write_label(path: str | Path, labels: np.ndarray, geometry: ImageGeometry) -> None:
    """Write a label map as uint8 (uint16 when there are more than 255 classes)."""
    dtype = np.uint8 if int(labels.max(initial=0)) < 256 else np.uint16
    write_image(path, labels.astype(dtype, copy=False), geometry)
