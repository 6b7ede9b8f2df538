"""Image headers, read and checked before a single voxel is (untrusted images: docs/guide/security.md).

An image file is data from someone else: its header says how much memory reading it takes, and
an ``.mhd``/``.nhdr`` header names the file that holds its voxels. Neither is believed: the header
is parsed first (SimpleITK's ``ReadImageInformation`` for the numbers, and a bounded read of the
first bytes, done here, for where the voxels are), checked against :class:`ImageBounds`, and only
then may the voxels be read (:func:`selfunet.data.io.read_image` does exactly that).

The API, for selfunet's own readers and for the harness (``harness/challenge/score.py``,
``gc_case.py``)::

    read_image_header(path, *, external="inside", allow_symlink=True) -> ImageHeader
        the header only; raises ImageRefused (a SelfUNetError with a short ``reason``: symlink,
        external data file, too large, ...) naming the file when the file is missing, not a
        regular file, unreadable, or names a voxel file it may not (``external="inside"``: an
        external data file only for .mhd/.nhdr and only inside the image's own folder;
        ``external="refuse"``: none at all, for container outputs). ``allow_symlink=False``
        refuses a path that is a symbolic link.
    header_problems(header, bounds=None) -> list[HeaderProblem]   (field, message, fix) each
    check_header(header, bounds=None) -> None
        raises ImageRefused naming the file, the field, the bound and how to change it
    ImageBounds(max_voxels=2**31, max_bytes=16 GiB, min_spacing_mm=1e-4, max_spacing_mm=1e3,
                max_components=1)
        ``image_bounds()`` is the default, with the environment's overrides
        (SELFUNET_MAX_IMAGE_VOXELS, SELFUNET_MAX_IMAGE_BYTES, SELFUNET_IMAGE_SPACING_MM="min,max")

    ImageHeader: path, format (".nii.gz", ".mha", ...), dimension, size, spacing, origin,
    direction (SimpleITK order: x first), components, pixel_type (numpy name of one component),
    data_files (external voxel files, empty when the voxels are in ``path``), encoding, stored_bytes;
    properties voxels, nbytes, channels, is_float.

    selfunet.data.io.read_image(path, bounds=None, *, external="inside", allow_symlink=True,
                                nonfinite="refuse") -> (array (C, z, y, x), ImageGeometry)
        header first (the two calls above), then the voxels.

What is checked, and why each bound is what it is: docs/guide/security.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from selfunet.data.voxel_files import (  # noqa: F401 (re-exported: the API of this module)
    DEFLATE_MAX_RATIO,
    DETACHED_ENDINGS,
    HEADER_READ_LIMIT,
    External,
    ImageRefused,
    VoxelLayout,
    voxel_layout,
)
from selfunet.errors import SelfUNetError, clip, quote

#: file endings SimpleITK reads and writes for us, longest first so ``.nii.gz`` wins over ``.gz``.
SUPPORTED_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")

ENV_MAX_VOXELS = "SELFUNET_MAX_IMAGE_VOXELS"
ENV_MAX_BYTES = "SELFUNET_MAX_IMAGE_BYTES"
ENV_SPACING = "SELFUNET_IMAGE_SPACING_MM"


def file_ending(path: str | Path) -> str:
    name = Path(path).name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    raise SelfUNetError(
        f"{clip(str(path))}: unsupported image format; use one of {', '.join(SUPPORTED_ENDINGS)}."
    )


# ---------------------------------------------------------------------------------------------
# bounds


@dataclass(frozen=True)
class ImageBounds:
    """What one image file may declare before its voxels are read.

    The defaults hold a whole-body CT at full resolution with room to spare (512 x 512 x 3000 is
    0.8 G voxels) and refuse what no segmentation dataset holds.
    """

    max_voxels: int = 2**31
    """voxels of one file, every channel and component counted (2^31: 8 GiB as float32)."""
    max_bytes: int = 16 * 2**30
    """bytes of the voxels as stored in memory (voxels x bytes per component)."""
    min_spacing_mm: float = 1e-4
    max_spacing_mm: float = 1e3
    """per spatial axis; a spacing outside this range is a broken header (or not millimetres)."""
    max_components: int = 1
    """components per voxel (vector pixels): selfunet stores channels as files or a 4th axis."""

    def describe(self) -> str:
        return (f"at most {self.max_voxels:,} voxels and {_gib(self.max_bytes)} of voxels per file, spacing "
                f"{self.min_spacing_mm:g}..{self.max_spacing_mm:g} mm")


def _gib(n: int | float) -> str:
    return f"{n / 2**30:.3g} GiB"


def _env_number(name: str, kind: type, low: float) -> float | int | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = kind(float(raw)) if kind is int else kind(raw)
    except (ValueError, OverflowError):
        value = None
    if value is None or not math.isfinite(value) or value < low:
        raise SelfUNetError(f"environment variable {name}={quote(raw, 40)}: expected a number >= {low:g}; "
                            "fix or unset it (docs/guide/security.md).")
    return value


def image_bounds() -> ImageBounds:
    """The default bounds with the environment's overrides (read on every call, so a worker process
    sees what its parent set)."""
    bounds = ImageBounds()
    voxels = _env_number(ENV_MAX_VOXELS, int, 1)
    if voxels is not None:
        bounds = replace(bounds, max_voxels=int(voxels))
    nbytes = _env_number(ENV_MAX_BYTES, int, 1)
    if nbytes is not None:
        bounds = replace(bounds, max_bytes=int(nbytes))
    raw = os.environ.get(ENV_SPACING)
    if raw is not None and raw.strip():
        try:
            low, high = (float(v) for v in raw.split(","))
        except ValueError:
            low = high = float("nan")
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
            raise SelfUNetError(f"environment variable {ENV_SPACING}={quote(raw, 40)}: expected 'MIN,MAX' in mm "
                                "with 0 < MIN < MAX (e.g. 1e-4,1e3); fix or unset it (docs/guide/security.md).")
        bounds = replace(bounds, min_spacing_mm=low, max_spacing_mm=high)
    return bounds


# ---------------------------------------------------------------------------------------------
# the header


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself, before any voxel is read (SimpleITK order: x first)."""

    path: Path
    format: str
    """the file ending: ``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``, ``.nrrd`` or ``.nhdr``."""
    dimension: int
    size: tuple[int, ...]
    """voxels per axis, x first (a 4D file's 4th axis holds the channels)."""
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    """row-major, ``dimension`` x ``dimension``."""
    components: int
    """components per voxel (1 unless vector pixels)."""
    pixel_type: str
    """numpy name of one component (``int16``, ``float32``, ...)."""
    data_files: tuple[Path, ...] = ()
    """external files holding the voxels (checked to lie inside ``path``'s folder); empty when the
    voxels are in ``path`` itself."""
    encoding: str = "raw"
    """how the voxels are stored: raw, gzip (NIfTI .gz, NRRD), zlib (MetaImage), bzip2, text, hex."""
    stored_bytes: int = 0
    """bytes on disk that hold the (possibly compressed) voxels."""

    @property
    def itemsize(self) -> int:
        return np.dtype(self.pixel_type).itemsize

    @property
    def voxels(self) -> int:
        """every voxel of every channel and component (Python int: never overflows)."""
        return math.prod(int(s) for s in self.size) * max(int(self.components), 1)

    @property
    def nbytes(self) -> int:
        return self.voxels * self.itemsize

    @property
    def channels(self) -> int:
        """volumes along the 4th axis (1 for 2D and 3D files)."""
        return int(self.size[3]) if self.dimension == 4 else 1

    @property
    def is_float(self) -> bool:
        return np.dtype(self.pixel_type).kind in "fc"

    def max_decodable_bytes(self) -> int | None:
        """The most voxel bytes the stored data can hold, or None where that cannot be bounded."""
        return VoxelLayout((), self.encoding, self.stored_bytes).max_decodable_bytes(self.itemsize)


#: SimpleITK pixel ids -> numpy name of one component.
_PIXEL_TYPES = {
    sitk.sitkUInt8: "uint8", sitk.sitkInt8: "int8", sitk.sitkUInt16: "uint16", sitk.sitkInt16: "int16",
    sitk.sitkUInt32: "uint32", sitk.sitkInt32: "int32", sitk.sitkUInt64: "uint64", sitk.sitkInt64: "int64",
    sitk.sitkFloat32: "float32", sitk.sitkFloat64: "float64",
    sitk.sitkComplexFloat32: "complex64", sitk.sitkComplexFloat64: "complex128",
    sitk.sitkVectorUInt8: "uint8", sitk.sitkVectorInt8: "int8", sitk.sitkVectorUInt16: "uint16",
    sitk.sitkVectorInt16: "int16", sitk.sitkVectorUInt32: "uint32", sitk.sitkVectorInt32: "int32",
    sitk.sitkVectorUInt64: "uint64", sitk.sitkVectorInt64: "int64", sitk.sitkVectorFloat32: "float32",
    sitk.sitkVectorFloat64: "float64",
    sitk.sitkLabelUInt8: "uint8", sitk.sitkLabelUInt16: "uint16", sitk.sitkLabelUInt32: "uint32",
    sitk.sitkLabelUInt64: "uint64",
}


def read_image_header(path: str | Path, *, external: External = "inside", allow_symlink: bool = True) -> ImageHeader:
    """The header of ``path``, without reading a voxel; see the module docstring."""
    path = Path(path)
    try:
        fmt = file_ending(path)
    except SelfUNetError as exc:
        raise ImageRefused(path, "unsupported format", "unsupported image format",
                           f"use one of {', '.join(SUPPORTED_ENDINGS)}") from exc
    if path.is_symlink() and not allow_symlink:
        raise ImageRefused(path, "symlink", "is a symbolic link, not a regular file (links are not followed here)",
                           "write the image itself, not a link to it")
    if not path.exists():
        raise ImageRefused(path, "not found", "file not found", "check the path")
    if not path.is_file():
        raise ImageRefused(path, "not a regular file", "not a regular file",
                           f"give an image file ({', '.join(SUPPORTED_ENDINGS)})")
    nifti = fmt in (".nii", ".nii.gz")
    # where the voxels are is settled before SimpleITK opens anything (NIfTI names no other file,
    # and its header is read by SimpleITK first, for SimpleITK's own wording of a broken file)
    layout = None if nifti else voxel_layout(path, fmt, external)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageRefused(path, "unreadable", sitk_reason(exc, path),
                           "re-export it as NIfTI (.nii.gz) or MHA") from None
    if layout is None:
        layout = voxel_layout(path, fmt, external)
    pixel_id = reader.GetPixelID()
    return ImageHeader(
        path=path,
        format=fmt,
        dimension=int(reader.GetDimension()),
        size=tuple(int(v) for v in reader.GetSize()),
        spacing=tuple(float(v) for v in reader.GetSpacing()),
        origin=tuple(float(v) for v in reader.GetOrigin()),
        direction=tuple(float(v) for v in reader.GetDirection()),
        components=int(reader.GetNumberOfComponents()),
        pixel_type=_PIXEL_TYPES.get(pixel_id, "float64"),  # unknown: count 8 bytes, the widest
        data_files=layout.data_files,
        encoding=layout.encoding,
        stored_bytes=layout.stored_bytes,
    )


def sitk_reason(exc: RuntimeError, path: Path) -> str:
    """SimpleITK's exception as one short clause (its last line, the path shortened to the name)."""
    text = str(exc).strip()
    reason = text.splitlines()[-1].strip().replace(str(path), path.name) if text else "unknown error"
    return f"SimpleITK cannot read the file ({clip(reason)})"


# ---------------------------------------------------------------------------------------------
# the checks


@dataclass(frozen=True)
class HeaderProblem:
    field: str
    """dimension, components, size, spacing, origin, direction or voxel data."""
    message: str
    fix: str
    reason: str = "bad header"
    """as :attr:`ImageRefused.reason`: ``bad header``, ``too large`` or ``truncated``."""


_RAISE_HINT = (f"if the image really is this large, raise the bound ({ENV_MAX_VOXELS} / {ENV_MAX_BYTES}, "
               "docs/guide/security.md)")


def header_problems(header: ImageHeader, bounds: ImageBounds | None = None) -> list[HeaderProblem]:
    """Every way ``header`` breaks ``bounds`` (default :func:`image_bounds`), in reading order."""
    bounds = bounds or image_bounds()
    found: list[HeaderProblem] = []
    if header.dimension not in (2, 3, 4):
        found.append(HeaderProblem("dimension", f"{header.dimension}D image; selfunet reads 2D, 3D and 4D (channels "
                                   "on the 4th axis) images", "save the image as a 2D, 3D or 4D file"))
        return found
    if header.components > bounds.max_components:
        found.append(HeaderProblem(
            "components", f"vector pixels ({header.components} components per voxel; at most "
            f"{bounds.max_components} accepted)", "store one channel per file or as a 4D volume"))
    if min(header.size) < 1:
        found.append(HeaderProblem("size", f"size {header.size} has an empty axis", "re-export the image"))
    elif header.voxels > bounds.max_voxels:
        found.append(HeaderProblem(
            "size", f"the header declares {header.voxels:,} voxels (size {header.size}), more than the bound of "
            f"{bounds.max_voxels:,}", f"crop or downsample the image; {_RAISE_HINT}", "too large"))
    elif header.nbytes > bounds.max_bytes:
        found.append(HeaderProblem(
            "size", f"the header declares {_gib(header.nbytes)} of {header.pixel_type} voxels (size {header.size}), "
            f"more than the bound of {_gib(bounds.max_bytes)}", f"store a narrower pixel type; {_RAISE_HINT}",
            "too large"))
    spatial = header.spacing[: min(header.dimension, 3)]
    bad = [s for s in spatial if not (math.isfinite(s) and bounds.min_spacing_mm <= s <= bounds.max_spacing_mm)]
    if bad:
        found.append(HeaderProblem(
            "spacing", f"spacing {_fmt(spatial)} mm is outside {bounds.min_spacing_mm:g}..{bounds.max_spacing_mm:g} "
            "mm", f"fix the header's spacing (millimetres per voxel); for other units raise the bound "
            f"({ENV_SPACING}=MIN,MAX, docs/guide/security.md)"))
    if not all(math.isfinite(v) for v in header.origin):
        found.append(HeaderProblem("origin", f"origin {_fmt(header.origin)} is not finite",
                                   "fix the header's origin"))
    matrix = np.asarray(header.direction, dtype=np.float64)
    n = header.dimension
    if matrix.size != n * n or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix.reshape(n, n))) < 1e-6:
        found.append(HeaderProblem("direction", f"direction {_fmt(header.direction)} is not a valid rotation",
                                   "fix the header's direction cosines"))
    capacity = header.max_decodable_bytes()
    if not found and capacity is not None and header.nbytes > capacity:
        where = header.data_files[0].name if header.data_files else "the file"
        found.append(HeaderProblem(
            "voxel data", f"the header declares {header.voxels:,} voxels ({_gib(header.nbytes)} of "
            f"{header.pixel_type}, size {header.size}), but {where} holds only {header.stored_bytes:,} bytes of "
            f"{header.encoding} data "
            f"(at most {_gib(capacity)} when decoded): the file is truncated or its header lies",
            "re-export or download the image again", "truncated"))
    return found


def check_header(header: ImageHeader, bounds: ImageBounds | None = None) -> None:
    """Raise :class:`ImageRefused` naming the file, the field and the fix of every problem found
    (its ``reason`` is the first problem's)."""
    problems = header_problems(header, bounds)
    if problems:
        text = "; ".join(f"{p.field}: {p.message}" for p in problems)
        fixes = "; ".join(dict.fromkeys(p.fix for p in problems))
        raise ImageRefused(header.path, problems[0].reason, text, fixes)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
