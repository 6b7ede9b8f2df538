"""Where an image file keeps its voxels, read from its first bytes (part of :mod:`selfunet.data.header`).

NIfTI keeps them in the file (a ``.nii`` whose magic says ``ni1`` names an ``.img`` and is
refused). A MetaImage or NRRD header may name another file (``ElementDataFile``, ``data file:``):
it is accepted only for the detached formats (``.mhd``, ``.nhdr``), only as one relative path
inside the header's own folder (after following links), and never where the caller refuses
external data files (a container's output). Lists and file-name patterns are refused. Each
header is read with a bound (:data:`HEADER_READ_LIMIT`), so a file without a header end costs
no more than that.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from selfunet.errors import SelfUNetError, clip, quote

#: the formats whose header may name a separate voxel file (the others keep the voxels inside).
DETACHED_ENDINGS: tuple[str, ...] = (".mhd", ".nhdr")
#: the most bytes of a MetaImage or NRRD header read to find where its voxels are.
HEADER_READ_LIMIT = 64 * 1024

External = Literal["inside", "refuse"]


class ImageRefused(SelfUNetError):
    """An image file refused before (or instead of) reading its voxels.

    ``reason`` is a short, stable word for a record (the harness scores a refused container output
    as a failure with it): ``not found``, ``not a regular file``, ``symlink``, ``unreadable``,
    ``external data file``, ``bad header``, ``too large``, ``truncated`` or ``non-finite``.
    ``problem`` and ``fix`` are the two halves of the message (``str(exc)`` is
    ``"<path>: <problem>; <fix>."``).
    """

    def __init__(self, path: Path | str, reason: str, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}.")
        self.path, self.reason, self.problem, self.fix = Path(path), reason, problem, fix

    def __reduce__(self):  # crosses process boundaries intact (a worker's error reaches the parent)
        return (type(self), (self.path, self.reason, self.problem, self.fix))


#: deflate (gzip, zlib) cannot expand data by more than 1032:1 (a 258-byte match per 2 bits), so a
#: compressed file of n bytes holds at most this many times n bytes of voxels.
DEFLATE_MAX_RATIO = 1032


@dataclass(frozen=True)
class VoxelLayout:
    data_files: tuple[Path, ...]
    """external voxel files (empty: in the file itself)."""
    encoding: str
    """raw, gzip (NIfTI .gz, NRRD), zlib (MetaImage), bzip2, text, hex (or unknown)."""
    stored_bytes: int
    """bytes on disk that hold the (possibly compressed) voxels."""

    def max_decodable_bytes(self, itemsize: int) -> int | None:
        """The most voxel bytes the stored data can hold, or None where that cannot be bounded."""
        n = self.stored_bytes
        if self.encoding == "raw":
            return n
        if self.encoding in ("gzip", "zlib"):
            return DEFLATE_MAX_RATIO * n + 4096
        if self.encoding == "hex":
            return n // 2
        if self.encoding == "text":
            return ((n + 1) // 2) * itemsize  # a value and a separator per voxel at the least
        return None


def voxel_layout(path: Path, fmt: str, external: External) -> VoxelLayout:
    """Where ``path`` (of ending ``fmt``) keeps its voxels, checked; raises :class:`ImageRefused`."""
    if fmt in (".nii", ".nii.gz"):
        return _nifti_layout(path, fmt)
    if fmt in (".mha", ".mhd"):
        return _metaimage_layout(path, fmt, external)
    return _nrrd_layout(path, fmt, external)


# ---- NIfTI: the voxels are in the file (a .nii with magic ni1/ni2 names an .img: refused)


def _nifti_layout(path: Path, fmt: str) -> VoxelLayout:
    compressed = fmt == ".nii.gz"
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            head = stream.read(544)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageRefused(path, "unreadable", f"the file is corrupt ({type(exc).__name__}: {clip(str(exc))})",
                           "re-export or download it again") from None
    if len(head) < 348:
        raise ImageRefused(path, "unreadable", f"shorter than a NIfTI header ({len(head)} bytes)",
                           "re-export or download it again")
    for order in ("<", ">"):
        (size,) = struct.unpack(order + "i", head[:4])
        if size in (348, 540):
            break
    else:
        raise ImageRefused(path, "unreadable", "not a NIfTI file (bad header size)", "check the file's format")
    if size == 348:
        (offset,) = struct.unpack(order + "f", head[108:112])
        magic = head[344:348]
    else:
        if len(head) < 540:
            raise ImageRefused(path, "unreadable", "shorter than a NIfTI-2 header", "re-export or download it again")
        (offset,) = struct.unpack(order + "q", head[168:176])
        magic = head[4:8]
    if magic[:3] not in (b"n+1", b"n+2"):
        raise ImageRefused(path, "external data file",
                           f"the NIfTI header (magic {magic[:3]!r}) says its voxels are in a separate .img file",
                           "selfunet reads single-file NIfTI only: save the image as .nii.gz")
    stored = path.stat().st_size
    if not compressed:
        stored -= int(offset) if math.isfinite(offset) and offset > 0 else 0
    return VoxelLayout((), "gzip" if compressed else "raw", max(stored, 0))


# ---- MetaImage (.mha: voxels in the file; .mhd: a separate data file, inside the folder)


def _bounded_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(HEADER_READ_LIMIT)
    except OSError as exc:
        raise ImageRefused(path, "unreadable", f"cannot be read ({exc.strerror or exc})",
                           "check the file's permissions") from None


def _header_too_long(path: Path, what: str) -> ImageRefused:
    return ImageRefused(path, "bad header", f"no end of the {what} header in its first {HEADER_READ_LIMIT // 1024} KiB",
                        "the file is not an image selfunet reads: re-export it as NIfTI (.nii.gz) or MHA")


def _metaimage_layout(path: Path, fmt: str, external: External) -> VoxelLayout:
    head = _bounded_head(path)
    fields: dict[str, str] = {}
    position = 0
    data_file = None
    while position < len(head):
        end = head.find(b"\n", position)
        if end < 0:
            if len(head) == HEADER_READ_LIMIT:
                raise _header_too_long(path, "MetaImage")
            end = len(head)
        line = head[position:end].decode("latin-1").strip()
        position = end + 1
        if not line:
            continue
        # MetaIO ends a key at the first '=' or ':' (MET_SkipToVal); so does this parser, so both
        # agree on which line names the data file
        split = _META_SEPARATOR.search(line)
        if split is None:
            raise ImageRefused(path, "bad header", f"not a MetaImage header (line {quote(clip(line, 60))} has no '=')",
                               "re-export it as NIfTI (.nii.gz) or MHA")
        key, value = line[: split.start()].strip().lower(), line[split.end():].strip()
        fields[key] = value
        if key == "elementdatafile":
            data_file = value
            break
    if data_file is None:
        raise ImageRefused(path, "bad header", "the MetaImage header has no ElementDataFile line",
                           "re-export the image")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    binary = fields.get("binarydata", "true").lower() != "false"
    encoding = "zlib" if compressed else ("raw" if binary else "text")
    if data_file.lower() == "local":
        return VoxelLayout((), encoding, max(path.stat().st_size - position, 0))
    what = f"ElementDataFile = {quote(clip(data_file, 80))}"
    if data_file[:4].upper() == "LIST" or "%" in data_file:
        raise ImageRefused(path, "external data file",
                           f"{what} spreads the voxels over several files (a list or a file name pattern)",
                           "selfunet reads one file per image: save it as one .mha")
    target = _inside_folder(path, data_file, what, fmt, external)
    return VoxelLayout((target,), encoding, target.stat().st_size)


def _inside_folder(path: Path, name: str, what: str, fmt: str, external: External) -> Path:
    """The external data file ``name`` of ``path``, checked: allowed for this format and call, a
    relative path inside the header's folder (after following links), and a regular file."""
    if external == "refuse":
        raise ImageRefused(path, "external data file",
                           f"{what} names an external data file, and external data files are not accepted here",
                           "write the voxels into the image file itself (.mha with ElementDataFile = LOCAL, .nrrd, "
                           ".nii.gz)")
    if fmt not in DETACHED_ENDINGS:
        raise ImageRefused(path, "external data file",
                           f"{what}: a {fmt} file keeps its voxels inside itself, but this header names another file",
                           f"a separate data file needs a detached header ({' or '.join(DETACHED_ENDINGS)}): save the "
                           "image again")
    written = name.replace("\\", "/")
    parts = [p for p in written.split("/") if p not in ("", ".")]
    if written.startswith("/") or (len(written) > 1 and written[1] == ":") or ".." in parts or not parts:
        raise ImageRefused(path, "external data file", f"{what} points outside the image's folder",
                           "the data file must lie next to its header: copy it there and name it without a folder "
                           "or '..'")
    folder = path.parent.resolve()
    target = (path.parent / Path(*parts)).resolve()
    if target != folder and folder not in target.parents:
        raise ImageRefused(path, "external data file", f"{what} is a link that leads outside the image's folder",
                           "copy the data file itself next to its header")
    if not target.is_file():
        raise ImageRefused(path, "external data file", f"{what}: no such data file next to the header",
                           "copy it there, or save the image as one .mha or .nii.gz")
    return target


# ---- NRRD (.nrrd: voxels in the file; .nhdr: a detached header naming one data file)


_META_SEPARATOR = re.compile(r"\s*[=:]\s*")
_NRRD_FIELD = re.compile(r"\s*([A-Za-z][A-Za-z ]*?)\s*:(?!=)(.*)")
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
                   "txt": "text", "text": "text", "ascii": "text", "hex": "hex"}


def _nrrd_layout(path: Path, fmt: str, external: External) -> VoxelLayout:
    head = _bounded_head(path)
    if not head.startswith(b"NRRD000"):
        raise ImageRefused(path, "unreadable", "not an NRRD file (it does not start with NRRD000x)",
                           "check its format")
    fields: dict[str, str] = {}
    position, ended = 0, False
    first = True
    while position < len(head):
        end = head.find(b"\n", position)
        if end < 0:
            if len(head) == HEADER_READ_LIMIT:
                raise _header_too_long(path, "NRRD")
            end = len(head)
        line = head[position:end].decode("latin-1").rstrip("\r")
        position = end + 1
        if first:
            first = False
            continue
        if not line:
            ended = True  # the voxels follow (attached data)
            break
        if line.startswith("#"):
            continue
        # a field is "<name>: <value>"; a line holding ":=" elsewhere is a key/value pair, but a
        # line that starts like a field is taken as one whatever follows (the stricter reading)
        field = _NRRD_FIELD.match(line)
        if field is not None:
            fields[" ".join(field.group(1).lower().split())] = field.group(2).strip()
    if not ended and len(head) == HEADER_READ_LIMIT and position >= len(head):
        raise _header_too_long(path, "NRRD")
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "raw").lower(), "unknown")
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is None:
        return VoxelLayout((), encoding, max(path.stat().st_size - position, 0) if ended else 0)
    what = f"data file: {quote(clip(data_file, 80))}"
    if data_file.split()[:1] == ["LIST"] or "%" in data_file:
        raise ImageRefused(path, "external data file",
                           f"{what} spreads the voxels over several files (a list or a file name pattern)",
                           "selfunet reads one file per image: save it as one .nrrd")
    target = _inside_folder(path, data_file, what, fmt, external)
    return VoxelLayout((target,), encoding, target.stat().st_size)
