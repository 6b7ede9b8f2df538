"""``selfunet check``: find every problem of a dataset in one run, before hours of training.

Every later stage trusts its input: the fingerprint averages spacings, the preprocessor crops the
label with the image, the trainer samples foreground from the label. A shifted label header or an
undeclared label value does not crash them, it silently trains a worse model. So this module opens
every file once, compares what the files say with what ``dataset.json`` says, and collects *all*
problems (never stopping at the first), each naming the case, the file and what to do about it.

Bad data never raises here: a broken ``dataset.json`` becomes one error :class:`Problem`, and a
file SimpleITK cannot read becomes one error for that file while the other cases are still checked.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from selfunet.dataset import CaseSpec, DatasetSpec, load_dataset
from selfunet.errors import SelfUNetError
from selfunet.io import SPACING_2D_PLACEHOLDER, SUPPORTED_ENDINGS, ImageGeometry
from selfunet.nifti_raw import RawScan, is_nifti, scan_nifti

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]

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
#: label maps whose values lie in ``[0, this)`` are counted with ``bincount`` instead of ``unique``.
_BINCOUNT_LIMIT = 1 << 16


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


@dataclass
class CheckReport:
    dataset_root: Path
    problems: list[Problem] = field(default_factory=list)
    cases_checked: int = 0
    """training plus test cases whose files were opened."""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


# ---------------------------------------------------------------------------------------------
# one case (runs in a worker process: everything it needs travels in the job)


@dataclass(frozen=True)
class _CaseJob:
    case: CaseSpec
    kind: Literal["training", "test"]
    layout: str
    channel_key: str
    """the dataset.json key that declares the channels ('modality' or 'channel_names')."""
    channel_names: tuple[str, ...]
    declared_labels: tuple[int, ...]


@dataclass
class _CaseResult:
    case_id: str
    kind: str
    problems: list[Problem]
    image_file: Path | None = None
    ndim_on_disk: int | None = None
    """2 or 3 for the case's (first readable) image; None when no image could be read."""


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _sitk_reason(exc: RuntimeError) -> str:
    text = str(exc).strip()
    reason = text.splitlines()[-1].strip() if text else "unknown error"
    return f"SimpleITK cannot read the file ({reason})"


@dataclass
class _Header:
    reader: sitk.ImageFileReader
    channels: int
    """volumes along the 4th axis (1 for 2D and 3D files)."""
    geometry: ImageGeometry
    is_float: bool


def _read_header(path: Path) -> _Header | str:
    """Geometry and channel count from the header alone, in :mod:`selfunet.io`'s conventions."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return _sitk_reason(exc)
    dim, components = reader.GetDimension(), reader.GetNumberOfComponents()
    if components != 1:
        return f"vector pixels ({components} components) are not supported; store one channel per volume"
    size, spacing = reader.GetSize(), reader.GetSpacing()
    origin, direction = tuple(reader.GetOrigin()), tuple(reader.GetDirection())
    channels = 1
    if dim == 2:
        shape = (1, size[1], size[0])
        spacing_zyx = (SPACING_2D_PLACEHOLDER, spacing[1], spacing[0])
    elif dim == 3:
        shape, spacing_zyx = tuple(reversed(size)), tuple(reversed(spacing))
    elif dim == 4:
        shape, spacing_zyx = tuple(reversed(size[:3])), tuple(reversed(spacing[:3]))
        channels = size[3]
        origin = origin[:3]
        direction = tuple(np.asarray(direction).reshape(4, 4)[:3, :3].ravel().tolist())
    else:
        return f"{dim}D images are not supported (2D, 3D or 4D only)"
    geometry = ImageGeometry(
        shape=tuple(int(v) for v in shape),  # type: ignore[arg-type]
        spacing=tuple(float(v) for v in spacing_zyx),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction),
        ndim_on_disk=2 if dim == 2 else 3,
    )
    is_float = reader.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
    return _Header(reader, channels, geometry, is_float)


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
        return _sitk_reason(exc)
    if not header.is_float:
        return 0, 0
    array = sitk.GetArrayViewFromImage(image)
    return int(np.count_nonzero(np.isnan(array))), int(np.count_nonzero(np.isinf(array)))


def _geometry_problems(
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
    """The distinct integer values of a label map (bincount when it is cheap, unique otherwise)."""
    if np.issubdtype(label.dtype, np.integer) and label.size:
        low, high = int(label.min()), int(label.max())
        if low >= 0 and high < _BINCOUNT_LIMIT:
            return np.flatnonzero(np.bincount(label.ravel(), minlength=high + 1))
    return np.unique(label)


def _label_problems(job: _CaseJob, path: Path, label: np.ndarray) -> list[Problem]:
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


def _check_case(job: _CaseJob) -> _CaseResult:
    """All checks of one case; a last-resort guard turns any surprise into a Problem, not a crash."""
    try:
        return _check_case_inner(job)
    except Exception as exc:  # a checker must report, not crash
        log.debug("unexpected error checking %s", job.case.case_id, exc_info=True)
        return _CaseResult(
            job.case.case_id, job.kind,
            [
                Problem(
                    "error", job.case.case_id, job.case.images[0] if job.case.images else None,
                    f"unexpected error while checking this case: {type(exc).__name__}: {exc}",
                    "check the case's files by hand; please report this as a selfunet bug",
                )
            ],
        )


def _check_case_inner(job: _CaseJob) -> _CaseResult:
    result = _CaseResult(job.case.case_id, job.kind, [])
    reference = _check_images(job, result)
    if job.kind == "training" and job.case.label is not None:
        _check_label(job, job.case.label, reference, result.problems)
    return result


def _unreadable_fix(path: Path) -> str:
    return f"re-export the file as NIfTI (.nii.gz) or MHA and replace {path.name}"


def _check_images(job: _CaseJob, result: _CaseResult) -> ImageGeometry | None:
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
        if isinstance(header, str):
            problems.append(Problem("error", cid, path, f"unreadable {what}: {header}", _unreadable_fix(path)))
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
            result.image_file, result.ndim_on_disk = path, geometry.ndim_on_disk
        else:
            for message, mismatch_fix in _geometry_problems(f"channel {k}", "channel 0", reference, geometry):
                problems.append(Problem("error", cid, path, message, mismatch_fix))
    return reference


def _check_label(job: _CaseJob, path: Path, reference: ImageGeometry | None, problems: list[Problem]) -> None:
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
    if isinstance(header, str):
        problems.append(Problem("error", cid, path, f"unreadable label file: {header}", _unreadable_fix(path)))
        return
    if header.channels != 1:
        problems.append(
            Problem("error", cid, path, f"label file holds {header.channels} volumes (4D)",
                    "store one 3D (or 2D) label map per case")
        )
        return
    try:
        label = sitk.GetArrayFromImage(header.reader.Execute())
    except RuntimeError as exc:
        problems.append(
            Problem("error", cid, path, f"unreadable label file: {_sitk_reason(exc)}", _unreadable_fix(path))
        )
        return
    if reference is not None:
        for message, mismatch_fix in _geometry_problems("label", "image", reference, header.geometry):
            problems.append(Problem("error", cid, path, message, mismatch_fix))
    if header.is_float and is_nifti(path):
        scan = scan_nifti(path)
        if isinstance(scan, RawScan):
            problems.extend(_nonfinite_problems(cid, path, scan.nan, scan.inf, what="label"))
    problems.extend(_label_problems(job, path, label))


# ---------------------------------------------------------------------------------------------
# the dataset as a whole


def _dataset_json_problem(root: Path, exc: SelfUNetError) -> Problem:
    if not root.is_dir():
        return Problem("error", None, root, str(exc), "pass the folder that holds dataset.json")
    descriptor = root / "dataset.json"
    if not descriptor.is_file():
        return Problem(
            "error", None, descriptor, str(exc),
            "add a dataset.json (MSD: modality, labels, training, test; "
            "nnU-Net v2: channel_names, labels, file_ending)",
        )
    return Problem(
        "error", None, descriptor, f"dataset.json cannot be used: {exc}",
        "edit dataset.json (MSD: modality, labels, training, test; "
        "nnU-Net v2: channel_names, labels, file_ending); no case can be checked before",
    )


def _image_files(folder: Path) -> list[Path]:
    """Visible image files of a folder (macOS ``._`` resource forks and temp files are hidden)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(SUPPORTED_ENDINGS)
    )


def _msd_problems(spec: DatasetSpec) -> tuple[list[Problem], list[CaseSpec]]:
    """Duplicate ids and unreferenced files; returns the problems and the distinct training cases."""
    problems: list[Problem] = []
    by_id: dict[str, list[tuple[int, CaseSpec]]] = defaultdict(list)
    for i, case in enumerate(spec.training):
        by_id[case.case_id].append((i, case))
    distinct: list[CaseSpec] = []
    seen: set[tuple[tuple[Path, ...], Path | None]] = set()
    for case in spec.training:
        key = (case.images, case.label)
        if key not in seen:
            seen.add(key)
            distinct.append(case)
    for cid, entries in by_id.items():
        if len(entries) < 2:
            continue
        indices = ", ".join(str(i) for i, _ in entries)
        images = {c.images[0] for _, c in entries}
        if len(images) == 1:
            problems.append(
                Problem(
                    "error", cid, entries[0][1].images[0],
                    f"the same image is listed {len(entries)} times in 'training' (entries {indices})",
                    "remove the repeated entries from dataset.json 'training'",
                )
            )
        else:
            files = ", ".join(str(_relative(p, spec.root)) for p in sorted(images))
            problems.append(
                Problem(
                    "error", cid, entries[0][1].images[0],
                    f"case id '{cid}' is used by {len(entries)} training entries ({indices}) whose image "
                    f"files share a name: {files}",
                    "rename the files so every case has its own file name (the case id)",
                )
            )
    test_ids: dict[str, list[Path]] = defaultdict(list)
    for case in spec.test:
        test_ids[case.case_id].append(case.images[0])
    for cid, paths in test_ids.items():
        if len(paths) > 1:
            problems.append(
                Problem("error", cid, paths[0], f"test case id '{cid}' is listed {len(paths)} times in 'test'",
                        "list each test image once, with a unique file name")
            )
    referenced = {p for c in spec.training for p in c.images} | {c.label for c in spec.training}
    referenced |= {p for c in spec.test for p in c.images}
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        for path in _image_files(spec.root / folder):
            if path.resolve() not in referenced:
                key = "test" if folder == "imagesTs" else "training"
                problems.append(
                    Problem(
                        "warning", None, path,
                        f"{folder}/{path.name} is not referenced by dataset.json '{key}' and is ignored",
                        f"add it to '{key}' in dataset.json, or move it out of {folder}",
                    )
                )
    return problems, distinct


def _nnunetv2_problems(spec: DatasetSpec) -> list[Problem]:
    """Channel files beyond the declared channels, stray names, and ``numTraining``."""
    problems: list[Problem] = []
    n = spec.num_channels
    ending = spec.file_ending
    for folder, cases in (("imagesTr", spec.training), ("imagesTs", spec.test)):
        ids = {c.case_id for c in cases}
        for path in _image_files(spec.root / folder):
            if not path.name.endswith(ending):
                continue
            stem = path.name[: -len(ending)]
            if not (len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit()):
                problems.append(
                    Problem("warning", None, path,
                            f"{folder}/{path.name} has no _XXXX channel suffix and is ignored",
                            f"rename it to <case>_0000{ending} (channel 0), or move it away")
                )
            elif int(stem[-4:]) >= n and stem[:-5] in ids:
                problems.append(
                    Problem(
                        "error", stem[:-5], path,
                        f"channel file _{stem[-4:]} found, but dataset.json 'channel_names' declares "
                        f"{n} channel(s) (_0000.._{n - 1:04d})",
                        "declare the channel in 'channel_names', or remove the file",
                    )
                )
    try:
        raw = json.loads((spec.root / "dataset.json").read_text())
        declared = raw.get("numTraining")
    except (OSError, ValueError):
        declared = None
    if isinstance(declared, int) and declared != len(spec.training):
        problems.append(
            Problem(
                "warning", None, spec.root / "dataset.json",
                f"'numTraining' says {declared}, but {len(spec.training)} training cases were found",
                "set 'numTraining' to the number of cases in imagesTr/labelsTr",
            )
        )
    return problems


def _mixed_dimensionality(results: list[_CaseResult]) -> list[Problem]:
    by_ndim: dict[int, list[_CaseResult]] = defaultdict(list)
    for r in results:
        if r.ndim_on_disk is not None:
            by_ndim[r.ndim_on_disk].append(r)
    if len(by_ndim) < 2:
        return []
    majority = max(by_ndim, key=lambda d: (len(by_ndim[d]), d))
    problems = []
    for ndim, members in sorted(by_ndim.items()):
        if ndim == majority:
            continue
        for r in members:
            problems.append(
                Problem(
                    "error", r.case_id, r.image_file,
                    f"image is {ndim}D while {len(by_ndim[majority])} other case(s) are {majority}D; "
                    "a dataset must be all 2D or all 3D",
                    f"convert this case to {majority}D, or remove it from the dataset",
                )
            )
    return problems


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path


def _run_jobs(jobs: list[_CaseJob], processes: int, console: Console | None) -> Iterator[_CaseResult]:
    columns = (
        TextColumn("checking cases"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("check", total=len(jobs))
        if processes <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield _check_case(job)
                progress.advance(task)
            return
        # spawn, not fork: the progress bar's refresh thread must not be duplicated mid-lock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=context) as pool:
            for result in pool.map(_check_case, jobs, chunksize=1):
                yield result
                progress.advance(task)


def check_dataset(root: Path, processes: int = 1, console: Console | None = None) -> CheckReport:
    """Check a dataset folder and return every problem found; never raises for bad data.

    ``processes`` > 1 reads cases in parallel worker processes; ``console`` is where the
    progress bar is drawn (rich's default console when None).
    """
    root = Path(root)
    report = CheckReport(dataset_root=root)
    try:
        spec = load_dataset(root)
    except SelfUNetError as exc:
        report.problems.append(_dataset_json_problem(root, exc))
        return report
    report.dataset_root = spec.root

    if spec.layout == "msd":
        dataset_problems, training = _msd_problems(spec)
        channel_key = "modality"
    else:
        dataset_problems, training = _nnunetv2_problems(spec), list(spec.training)
        channel_key = "channel_names"
    if not spec.training:
        dataset_problems.insert(
            0,
            Problem("error", None, spec.root / "dataset.json", "no training cases found",
                    "list the training cases in dataset.json 'training'" if spec.layout == "msd"
                    else "put <case>_0000 images in imagesTr and <case> label maps in labelsTr"),
        )
    test = list({c.images: c for c in reversed(spec.test)}.values())[::-1]  # repeats checked once

    common = dict(
        layout=spec.layout, channel_key=channel_key, channel_names=spec.channel_names,
        declared_labels=tuple(sorted(spec.labels)),
    )
    jobs = [_CaseJob(case=c, kind="training", **common) for c in training]  # type: ignore[arg-type]
    jobs += [_CaseJob(case=c, kind="test", **common) for c in test]  # type: ignore[arg-type]
    results = list(_run_jobs(jobs, processes, console))

    report.problems.extend(dataset_problems)
    for r in results:
        report.problems.extend(r.problems)
    report.problems.extend(_mixed_dimensionality(results))
    report.cases_checked = len(results)
    log.debug("checked %d cases of %s: %d problems", len(results), spec.root, len(report.problems))
    return report


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_report(report: CheckReport, console: Console) -> None:
    """A table of every problem (or a green OK) and a one-line summary."""
    summary = (
        f"{_plural(len(report.errors), 'error')}, {_plural(len(report.warnings), 'warning')} "
        f"in {_plural(report.cases_checked, 'case')}"
    )
    if not report.problems:
        console.print(
            f"[bold green]OK[/] {escape(str(report.dataset_root))}: "
            f"{_plural(report.cases_checked, 'case')} checked, no problems found.",
            highlight=False,
        )
        return
    table = Table(title=Text(f"selfunet check: {report.dataset_root}"), expand=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("case", overflow="fold")
    table.add_column("file", overflow="fold")
    table.add_column("problem", overflow="fold")
    table.add_column("fix", overflow="fold")
    for p in report.problems:
        severity = Text("error", style="bold red") if p.severity == "error" else Text("warning", style="yellow")
        file = str(_relative(p.file, report.dataset_root)) if p.file is not None else "-"
        # Text, not markup: a file name or a SimpleITK message may contain square brackets.
        table.add_row(severity, Text(p.case_id or "-"), Text(file), Text(p.message), Text(p.fix))
    console.print(table, highlight=False)
    style = "bold red" if report.errors else "yellow"
    console.print(f"[{style}]{summary}[/]", highlight=False)
