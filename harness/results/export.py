"""Challenge-format predictions: the selected model's test predictions, ready to upload.

``results/<task>/predictions/<TaskName>/`` holds one label map per test case, named exactly like
the test image (MSD: the image's own file name; nnU-Net v2: the case id plus the file ending,
without the ``_0000`` channel suffix), with the test image's header. ``TaskName`` is the
descriptor's ``export.folder``, else the dataset folder's name (``Task04_Hippocampus``: the
Decathlon's submission layout). Before anything is copied, every prediction's header is compared
with its test image's (shape, spacing, origin, direction); a mismatch fails with both headers
named, because a challenge scores a misplaced mask silently as a bad one.

``harness export TASK --zip`` also packs the folder into ``results/<task>/<TaskName>_predictions.zip``:
entries ``<TaskName>/<file>`` in sorted order with fixed timestamps and permissions, so the same
predictions always give the same bytes. (The grand-challenge container export lives in
``harness/challenge/gc_export.py``.)

Nothing is read through a link and nothing is deleted through one
(:mod:`harness.results.safe_files`): ``WORK/selection.json`` and ``WORK/test_predictions/*`` were
written by jobs, so each is opened without following links (a link is a clean error naming it),
copied as the regular file it is, and a prediction whose header names another data file is
refused; ``results/<task>/`` and its ``predictions/`` folder must be real folders (a link there is
refused, never emptied), and the folder replaced is only ever the one the export made.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from harness.results.safe_files import (
    MAX_JSON_BYTES,
    LinkRefused,
    check_no_links,
    copy_below,
    plain_folder,
    read_below,
)
from selfunet.artifacts import atomic_write_bytes
from selfunet.data.header import ImageRefused, read_image_header
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

#: what every zip entry gets, so the archive depends on the file contents alone.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = 0o644
#: header tolerances: predictions are written from the image's header, so only float rounding differs.
SPACING_RTOL = 1e-5
POSITION_ATOL = 1e-3
DIRECTION_ATOL = 1e-5
#: a label map file is never this big (a 1024^3 grid of 64-bit voxels, uncompressed).
MAX_PREDICTION_BYTES = 8 * 1024**3 + MAX_JSON_BYTES


@dataclass(frozen=True)
class Header:
    """The spatial header of an image file, 3 spatial axes in SimpleITK (x, y, z) order."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    integer: bool

    def describe(self) -> str:
        return (f"size {self.size}, spacing {tuple(round(s, 6) for s in self.spacing)}, origin "
                f"{tuple(round(o, 4) for o in self.origin)}, direction {tuple(round(d, 5) for d in self.direction)}")


def read_header(path: Path) -> Header:
    """Header only (no voxels); a 4D Decathlon image gives its first three axes (the 4th is channels)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise SelfUNetError(f"{path}: cannot read the image header ({str(exc).strip().splitlines()[-1]}).") from exc
    dim = reader.GetDimension()
    n = min(dim, 3)
    direction = np.asarray(reader.GetDirection()).reshape(dim, dim)[:n, :n]
    integer = reader.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
                                      sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64)
    return Header(size=tuple(reader.GetSize()[:n]), spacing=tuple(reader.GetSpacing()[:n]),
                  origin=tuple(reader.GetOrigin()[:n]), direction=tuple(direction.ravel().tolist()), integer=integer)


def header_mismatch(prediction: Header, image: Header) -> list[str]:
    """What differs between a prediction's header and its test image's (empty when they match)."""
    problems = []
    if prediction.size != image.size:
        problems.append(f"size {prediction.size} vs {image.size}")
    elif not np.allclose(prediction.spacing, image.spacing, rtol=SPACING_RTOL, atol=0):
        problems.append(f"spacing {prediction.spacing} vs {image.spacing}")
    if len(prediction.origin) != len(image.origin) or not np.allclose(prediction.origin, image.origin,
                                                                      atol=POSITION_ATOL):
        problems.append(f"origin {prediction.origin} vs {image.origin}")
    if len(prediction.direction) != len(image.direction) or not np.allclose(
            prediction.direction, image.direction, atol=DIRECTION_ATOL):
        problems.append(f"direction {prediction.direction} vs {image.direction}")
    if not prediction.integer:
        problems.append("voxels are not integers (a label map must be)")
    return problems


def prediction_name(case, file_ending: str) -> str:
    """The file name a challenge expects for a test case: the image's name without a channel suffix."""
    return f"{case.case_id}{file_ending}"


def export_folder_name(task) -> str:
    return task.export_folder


def export_target(task, results: Path) -> Path:
    """results/<task>/predictions/<TaskName>, refused unless it lies right there.

    The export replaces this folder whole (``rmtree`` + rename), so a name that is a path
    (``/some/dir``, ``../..``) would delete somebody's files; descriptors are validated when
    loaded, and this check also covers descriptors built or copied in code.
    """
    predictions = Path(results) / str(task.name) / "predictions"
    problems = [f"{what} {value!r}" for what, value in (("task name", str(task.name)),
                                                           ("export folder", export_folder_name(task)))
                if value in ("", ".", "..") or any(sep in value for sep in ("/", "\\", "\0"))]
    out = predictions / export_folder_name(task)
    if not problems:  # a link on the way is refused as such, never followed (safe_files)
        plain_folder(Path(results), out.relative_to(results), "the export", create=False, missing_ok=True)
    if not problems and out.resolve().parent != predictions.resolve():
        problems.append(f"export folder {export_folder_name(task)!r}")
    if problems:
        raise SelfUNetError(
            f"task '{task.name}': {' and '.join(problems)} is not a plain folder name; the export goes to "
            f"{predictions}/<name>/ only. Set `export: {{folder: NAME}}` in "
            f"{getattr(task, 'source', 'the descriptor')} to a name of letters, digits, '_', '.', '-' "
            "(no '/', no '..').")
    return out


def collect_predictions(task, work: Path) -> list[tuple[Path, Path, str]]:
    """(prediction, test image, target name) per test case; every problem in one error."""
    from selfunet.data.dataset import load_dataset

    spec = load_dataset(task.dataset)
    source = Path(work) / "test_predictions"
    found, missing, wrong = [], [], []
    for case in spec.test:
        name = prediction_name(case, spec.file_ending)
        prediction = source / name
        if not os.path.lexists(prediction):
            missing.append(name)
            continue
        try:  # written by a job: no link anywhere below WORK, a regular file with its own voxels
            check_no_links(Path(work), Path("test_predictions") / name, "a test prediction")
        except LinkRefused as exc:
            wrong.append(str(exc))
            continue
        try:  # no voxels in another file (a header naming a host file would be published with it)
            read_image_header(prediction, external="refuse", allow_symlink=False)
        except ImageRefused as exc:
            wrong.append(f"{prediction}: {exc.problem} (a prediction must hold its own voxels)")
            continue
        problems = header_mismatch(read_header(prediction), read_header(case.images[0]))
        if problems:
            wrong.append(f"{prediction} vs its test image {case.images[0]}: {'; '.join(problems)}")
            continue
        found.append((prediction, case.images[0], name))
    errors = []
    if missing:
        errors.append(f"{source}: no prediction for {len(missing)} of {len(spec.test)} test case(s) "
                      f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); rerun the task's "
                      f"predict-test job (`harness run` redoes it) or `selfunet predict`.")
    if wrong:
        errors.append("predictions whose header differs from the test image (a challenge would misplace them; "
                      "re-predict with the current selfunet):\n  " + "\n  ".join(wrong))
    if errors:
        raise SelfUNetError(f"task '{task.name}': cannot export.\n" + "\n".join(errors))
    return found


def export_task(task, work: Path, results: Path, make_zip: bool = False) -> Path | None:
    """results/<task>/selection.json plus results/<task>/predictions/<TaskName>/ (and the zip).

    Returns the predictions folder, or None when the task has no test cases or ``export.format``
    is ``none``. The folder is replaced whole (written beside it, then renamed), so a reader never
    sees half an export.
    """
    work, results = Path(work), Path(results)
    out = export_target(task, results)
    target = plain_folder(results, Path(task.name), "the task's results")
    try:  # written by the select job: read as the file it is, never through a link
        selection = read_below(work, Path("selection.json"), "selection.json", MAX_JSON_BYTES)
    except FileNotFoundError:
        selection = None
    if selection is not None:
        atomic_write_bytes(target / "selection.json", selection)
    if task.export.format == "none":
        return None
    files = collect_predictions(task, work)
    if not files:
        log.info("task %s: no test cases; nothing to export.", task.name)
        return None
    plain_folder(results, out.relative_to(results).parent, "the export")
    if os.path.lexists(out):
        plain_folder(results, out.relative_to(results), "the export", create=False)
    tmp = out.with_name(f".{out.name}.{int(time.time() * 1000)}.tmp")
    tmp.mkdir()
    try:
        for prediction, _, name in files:
            copy_below(work, prediction.relative_to(work), tmp / name, "a test prediction", MAX_PREDICTION_BYTES)
        if os.path.lexists(out):
            shutil.rmtree(out)  # a real folder (checked above); rmtree never follows links inside it
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("task %s: %d prediction(s) in %s", task.name, len(files), out)
    if make_zip:
        zip_predictions(out)
    return out


def zip_path(folder: Path) -> Path:
    """results/<task>/predictions/<TaskName> -> results/<task>/<TaskName>_predictions.zip"""
    return folder.parent.parent / f"{folder.name}_predictions.zip"


def zip_predictions(folder: Path) -> Path:
    """Pack ``folder`` as ``<TaskName>/<file>`` entries: sorted, fixed dates and modes (deterministic)."""
    import io

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SelfUNetError(f"{folder}: no predictions to zip; run `harness export TASK` first.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in files:
            info = zipfile.ZipInfo(f"{folder.name}/{path.name}", date_time=ZIP_DATE)
            info.external_attr = ZIP_MODE << 16
            info.create_system = 3  # unix, whatever machine zips it
            # label maps are gzip-compressed NIfTI already; storing keeps the zip fast and byte-stable
            info.compress_type = zipfile.ZIP_STORED if path.name.endswith(".gz") else zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    out = zip_path(folder)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def export_command(task, work: Path, results: Path, make_zip: bool) -> tuple[Path | None, Path | None]:
    """``harness export TASK [--zip]``: export again from the work directory; zip when asked."""
    folder = export_task(task, work, results, make_zip=False)
    if folder is None:
        return None, None
    return folder, (zip_predictions(folder) if make_zip else None)
