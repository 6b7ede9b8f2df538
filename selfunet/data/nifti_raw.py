"""Scan the raw voxel bytes of a NIfTI file, for what SimpleITK cannot tell us.

SimpleITK reads NIfTI through nifti_clib, which silently replaces NaN and infinite float voxels by
0 while reading. Every stage of selfunet would therefore see zeros where the file holds NaN, and
``selfunet check`` could never warn about them through SimpleITK. This module reads the data
block itself (streamed, chunk by chunk, so a large volume never needs a second full copy in
memory), counts non-finite voxels of float files and, as a by-product, proves that the whole
file decompresses and is as long as its header says (a truncated download is caught here).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: NIfTI datatype codes of the float types whose voxels can be NaN or infinite.
_FLOAT_TYPES = {16: np.dtype("float32"), 64: np.dtype("float64")}
_CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class RawScan:
    nan: int
    inf: int
    is_float: bool


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def scan_nifti(path: Path) -> RawScan | str | None:
    """Non-finite voxel counts, or why the file is broken (a string).

    None when the file keeps its voxels elsewhere (an ``.hdr``/``.img`` pair), so there is
    nothing to scan here.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            return _scan(stream)
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        return f"the file is corrupt ({type(exc).__name__}: {exc})"


def _scan(stream) -> RawScan | str | None:
    head = stream.read(540)
    if len(head) < 348:
        return "the file is shorter than a NIfTI header"
    for order in ("<", ">"):
        (size,) = struct.unpack(order + "i", head[:4])
        if size in (348, 540):
            break
    else:
        return "not a NIfTI file (bad header size)"
    if size == 348:
        dims = struct.unpack(order + "8h", head[40:56])
        datatype, bitpix = struct.unpack(order + "2h", head[70:74])
        (offset,) = struct.unpack(order + "f", head[108:112])
        single_file = head[344:347] == b"n+1"
    else:
        if len(head) < 540:
            return "the file is shorter than a NIfTI-2 header"
        datatype, bitpix = struct.unpack(order + "2h", head[12:16])
        dims = struct.unpack(order + "8q", head[16:80])
        (offset,) = struct.unpack(order + "q", head[168:176])
        single_file = head[4:7] == b"n+2"
    if not single_file:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8:
        return f"invalid NIfTI header (dim[0]={ndim}, bitpix={bitpix})"
    expected = int(np.prod([max(int(d), 1) for d in dims[1 : ndim + 1]], dtype=np.int64)) * (bitpix // 8)
    skip = int(offset) - len(head)
    if skip < 0:
        # the data starts inside the bytes already read
        pending = head[int(offset):]
    else:
        pending = b""
        while skip > 0:
            part = stream.read(min(skip, _CHUNK_BYTES))
            if not part:
                return "the file ends before its voxel data starts"
            skip -= len(part)
    dtype = _FLOAT_TYPES.get(datatype)
    if dtype is not None:
        dtype = dtype.newbyteorder(order)
    nan = inf = 0
    remaining = expected
    carry = b""
    while remaining > 0:
        part = pending if pending else stream.read(min(remaining, _CHUNK_BYTES))
        pending = b""
        if not part:
            return f"the file is truncated: {expected - remaining} of {expected} voxel bytes present"
        part = part[:remaining]
        remaining -= len(part)
        if dtype is not None:
            data = carry + part
            usable = len(data) - len(data) % dtype.itemsize
            values = np.frombuffer(data[:usable], dtype=dtype)
            carry = data[usable:]
            nan += int(np.count_nonzero(np.isnan(values)))
            inf += int(np.count_nonzero(np.isinf(values)))
    return RawScan(nan=nan, inf=inf, is_float=dtype is not None)
