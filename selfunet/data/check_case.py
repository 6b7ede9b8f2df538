"""The checks of one case (its image and label files), run in ``selfunet check``'s workers.

Split from :mod:`selfunet.data.check` (which owns the dataset-wide checks and the report) so each
module stays readable; everything a worker needs travels in a picklable :class:`CaseJob`.
Images are read header-first (geometry, channel count) and their voxels once: raw for NIfTI (see
:mod:`selfunet.data.nifti_raw`), through SimpleITK otherwise. Label maps are read whole, because every
value matters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from selfunet.data.dataset import CaseSpec
from selfunet.data.grids import (  # noqa: F401 (the tolerances are re-exported for selfunet.data.check)
    DIRECTION_ATOL,
    ORIGIN_ATOL_MM,
    ORIGIN_VOXEL_FRACTION,
    SPACING_RTOL,
    grid_problems,
)
from selfunet.data.header import ImageRefused, header_problems, read_image_header, sitk_reason
from selfunet.data.io import ImageGeometry, header_geometry
from selfunet.data.nifti_raw import RawScan, is_nifti, scan_nifti
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]

#: label maps whose values lie in ``[0, this)`` are counted with ``bincount`` instead of ``unique``.
_BINCOUNT_LIMIT = 1 << 16
_SLAB_VOXELS = 1 << 22


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, phrased for the person who has to fix it."""

    severity: Severity
    case_id: str | None
    """None for problems of the dataset as a whole (dataset.json, mixed dimensionality)."""
    file: Path | None
    message: str
    """what is wrong."""
    fix: str
    """what to do about it."""


# ---------------------------------------------------------------------------------------------
# one case (runs in a worker process: everything it needs travels in the job)


@dataclass(frozen=True)
class CaseJob:
    case: CaseSpec
    kind: Literal["training", "test"]
    layout: str
    channel_key: str
    """the dataset.json key that declares the channels ('modality' or 'channel_names')."""
    channel_names: tuple[str, ...]
    declared_labels: tuple[int, ...]


@dataclass
class CaseResult:
    case_id: str
    kind: str
    problems: list[Problem]
    image_file: Path | None = None
    ndim_on_disk: int | None = None
    """2 or 3 for the case's (first readable) image; None when no image could be read."""
    geometry: ImageGeometry | None = None
    """the grid of that image (shape and spacing feed the dataset-wide resampling check)."""


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _sitk_reason(exc: RuntimeError, path: Path) -> str:
    # the last line says what went wrong; the full path is already in the report's file column
    return sitk_reason(exc, path)


@dataclass
class _Header:
    reader: sitk.ImageFileReader
    channels: int
    """volumes along the 4th axis (1 for 2D and 3D files)."""
    geometry: ImageGeometry
    is_float: bool


def _read_header(path: Path) -> _Header | list[tuple[str, str]]:
    """Geometry and channel count from the header alone, in :mod:`selfunet.data.io`'s conventions,
    checked (:mod:`selfunet.data.header`: bounds, external data files) before any voxel is read;
    else the (problem, fix) pairs that keep the voxels unread."""
    try:
        header = read_image_header(path)
    except ImageRefused as exc:
        fix = _unreadable_fix(path) if exc.reason == "unreadable" else exc.fix
        return [(exc.problem if exc.reason == "unreadable" else f"{exc.reason}: {exc.problem}", fix)]
    except SelfUNetError as exc:
        return [(str(exc).removeprefix(f"{path}: "), _unreadable_fix(path))]
    problems = header_problems(header)
    if problems:
        return [(f"{p.reason} ({p.field}): {p.message}", p.fix) for p in problems]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    return _Header(reader, header.channels, header_geometry(header), header.is_float)


def _count_nonfinite(path: Path, header: _Header) -> tuple[int, int] | str:
    """(NaN, inf) voxel counts, reading the voxels once; a string says why they cannot be read.

    NIfTI voxels are scanned raw (SimpleITK would hand us NaN as 0); other formats go through
    SimpleITK, whose readers keep NaN as it is.
    """
    scan = scan_nifti(path) if is_nifti(path) else None
    if isinstance(scan, str):
        return scan
    if scan is not None:
        return scan.nan, scan.inf
    try:
        image = header.reader.Execute()
    except RuntimeError as exc:
        return _sitk_reason(exc, path)
    if not header.is_float:
        return 0, 0
    array = sitk.GetArrayViewFromImage(image)
    return int(np.count_nonzero(np.isnan(array))), int(np.count_nonzero(np.isinf(array)))


def _nonfinite_problems(case_id: str, path: Path, nan: int, inf: int, what: str) -> list[Problem]:
    hidden = " (SimpleITK silently reads them as 0)" if is_nifti(path) else ""
    found = []
    if nan:
        found.append(
            Problem(
                "error", case_id, path, f"{nan} NaN {what} value(s){hidden}",
                "replace NaN voxels by a finite value (e.g. the image minimum) and save the file again",
            )
        )
    if inf:
        found.append(
            Problem(
                "error", case_id, path, f"{inf} infinite {what} value(s) (inf/-inf){hidden}",
                "replace infinite voxels by finite values (e.g. clip to the finite range) and save again",
            )
        )
    return found


def _label_values(label: np.ndarray) -> np.ndarray:
    """The distinct integer values of a label map.

    Counted slab by slab with ``bincount`` when the values are small non-negative integers (the
    usual case): ``unique`` would sort a full copy, and one ``bincount`` over the whole volume
    would first widen it to 8 bytes per voxel.
    """
    if np.issubdtype(label.dtype, np.integer) and label.size:
        low, high = int(label.min()), int(label.max())
        if low >= 0 and high < _BINCOUNT_LIMIT:
            flat = label.reshape(-1)
            counts = np.zeros(high + 1, np.int64)
            for start in range(0, flat.size, _SLAB_VOXELS):
                counts += np.bincount(flat[start : start + _SLAB_VOXELS], minlength=high + 1)
            return np.flatnonzero(counts)
    return np.unique(label)


def _label_problems(job: CaseJob, path: Path, label: np.ndarray) -> list[Problem]:
    case_id = job.case.case_id
    found = []
    if np.issubdtype(label.dtype, np.floating):
        finite = np.isfinite(label)
        bad = ~finite | (label != np.round(label))
        if bad.any():
            examples = np.unique(label[bad])[:5]
            found.append(
                Problem(
                    "error", case_id, path,
                    f"{int(bad.sum())} voxel(s) with non-integer label values (e.g. {_fmt(examples)[1:-1]})",
                    "a label map holds integer class values only: re-export it with nearest-neighbour "
                    "interpolation and an integer pixel type",
                )
            )
        label = np.round(label[finite]).astype(np.int64)
    values = [int(v) for v in _label_values(label)]
    undeclared = sorted(set(values) - set(job.declared_labels))
    if undeclared:
        declared = ", ".join(str(v) for v in job.declared_labels)
        found.append(
            Problem(
                "error", case_id, path,
                f"label value(s) {', '.join(str(v) for v in undeclared)} not declared in dataset.json "
                f"'labels' (declared: {declared})",
                "declare every value in dataset.json 'labels', or relabel the file",
            )
        )
    if not any(v != 0 for v in values):
        found.append(
            Problem(
                "warning", case_id, path,
                "no foreground: the label map holds only background (0)",
                "fine for a few cases; otherwise make sure this is the right label file",
            )
        )
    return found


def check_case(job: CaseJob) -> CaseResult:
    """All checks of one case; a last-resort guard turns any surprise into a Problem, not a crash."""
    try:
        return _check_case_inner(job)
    except Exception as exc:  # a checker must report, not crash
        log.debug("unexpected error checking %s", job.case.case_id, exc_info=True)
        return CaseResult(
            job.case.case_id, job.kind,
            [
                Problem(
                    "error", job.case.case_id, job.case.images[0] if job.case.images else None,
                    f"unexpected error while checking this case: {type(exc).__name__}: {exc}",
                    "check the case's files by hand; please report this as a selfunet bug",
                )
            ],
        )


def _check_case_inner(job: CaseJob) -> CaseResult:
    result = CaseResult(job.case.case_id, job.kind, [])
    reference = _check_images(job, result)
    if job.kind == "training" and job.case.label is not None:
        _check_label(job, job.case.label, reference, result.problems)
    return result


def _unreadable_fix(path: Path) -> str:
    return f"re-export the file as NIfTI (.nii.gz) or MHA and replace {path.name}"


def _check_images(job: CaseJob, result: CaseResult) -> ImageGeometry | None:
    """Check every image file of the case; returns the grid the label must match (channel 0's)."""
    cid, n_declared, problems = job.case.case_id, len(job.channel_names), result.problems
    reference: ImageGeometry | None = None
    for k, path in enumerate(job.case.images):
        if job.layout == "nnunetv2":
            what = f"channel {k} ('{job.channel_names[k]}') image file"
            fix = (
                f"add {path.name} (one file per channel, {n_declared} declared in "
                f"'{job.channel_key}'), or remove the case's other files"
            )
        else:
            entry = "image" if job.kind == "training" else "test"
            what, fix = "image file", f"add the file, or fix the case's '{entry}' path in dataset.json"
        if not path.is_file():
            problems.append(Problem("error", cid, path, f"{what} missing", fix))
            continue
        header = _read_header(path)
        if isinstance(header, list):
            problems.extend(Problem("error", cid, path, f"unreadable {what}: {message}", fix)
                            for message, fix in header)
            continue
        counts = _count_nonfinite(path, header)
        if isinstance(counts, str):
            problems.append(Problem("error", cid, path, f"unreadable {what}: {counts}", _unreadable_fix(path)))
            continue
        geometry, n_found = header.geometry, header.channels
        if job.layout == "nnunetv2" and n_found != 1:
            problems.append(
                Problem(
                    "error", cid, path,
                    f"file holds {n_found} volumes (4D); the nnU-Net v2 layout stores one channel per file",
                    f"split it into {cid}_0000, {cid}_0001, ... files, one channel each",
                )
            )
        elif job.layout != "nnunetv2" and n_found != n_declared:
            hint = "a 3D file" if n_found == 1 else f"{n_found} volumes on the 4th axis"
            problems.append(
                Problem(
                    "error", cid, path,
                    f"image has {n_found} channel(s) ({hint}), dataset.json declares {n_declared} "
                    f"in '{job.channel_key}'",
                    f"store all {n_declared} channels as one 4D file (channels on the 4th axis), "
                    f"or fix '{job.channel_key}'",
                )
            )
        problems.extend(_nonfinite_problems(cid, path, *counts, what="intensity"))
        if reference is None:
            reference = geometry
            result.image_file, result.ndim_on_disk, result.geometry = path, geometry.ndim_on_disk, geometry
        else:
            for message, mismatch_fix in grid_problems(f"channel {k}", "channel 0", reference, geometry):
                problems.append(Problem("error", cid, path, message, mismatch_fix))
    return reference


def _check_label(job: CaseJob, path: Path, reference: ImageGeometry | None, problems: list[Problem]) -> None:
    cid = job.case.case_id
    if not path.is_file():
        fix = (
            "add the label file, or fix the case's 'label' path in dataset.json"
            if job.layout == "msd"
            else f"add labelsTr/{path.name}, or remove the case's images from imagesTr"
        )
        problems.append(Problem("error", cid, path, "label file missing", fix))
        return
    header = _read_header(path)
    if isinstance(header, list):
        problems.extend(Problem("error", cid, path, f"unreadable label file: {message}", fix)
                        for message, fix in header)
        return
    if header.channels != 1:
        problems.append(
            Problem("error", cid, path, f"label file holds {header.channels} volumes (4D)",
                    "store one 3D (or 2D) label map per case")
        )
        return
    try:
        label_image = header.reader.Execute()
        label = sitk.GetArrayViewFromImage(label_image)  # read-only view: no second copy
    except RuntimeError as exc:
        problems.append(
            Problem("error", cid, path, f"unreadable label file: {_sitk_reason(exc, path)}", _unreadable_fix(path))
        )
        return
    if reference is not None:
        for message, mismatch_fix in grid_problems("the label", "the image", reference, header.geometry):
            problems.append(Problem("error", cid, path, message, mismatch_fix))
    if header.is_float and is_nifti(path):
        scan = scan_nifti(path)
        if isinstance(scan, RawScan):
            problems.extend(_nonfinite_problems(cid, path, scan.nan, scan.inf, what="label"))
    problems.extend(_label_problems(job, path, label))
