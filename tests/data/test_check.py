"""``selfunet check``: every kind of broken dataset is reported with its case, file and fix.

Each test builds a tiny valid dataset of real NIfTI files (3 training cases of 8x16x16 and one
test case; MSD layout with 4D two-channel images, or the nnU-Net v2 layout), breaks it in one way,
and checks both the structured report and what the CLI prints (and its exit code).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.check import (
    DIRECTION_ATOL,
    ORIGIN_ATOL_MM,
    SPACING_RTOL,
    CheckReport,
    check_dataset,
)
from selfunet.data.check_case import _label_values
from selfunet.data.nifti_raw import RawScan, scan_nifti

SHAPE = (8, 16, 16)  # z, y, x
SPACING = (2.0, 1.0, 1.0)  # z, y, x
ORIGIN = (10.0, -5.0, 3.0)  # x, y, z
LABELS = {0: "background", 1: "organ", 2: "lesion"}
CHANNELS = ("T1", "T2")


# ---------------------------------------------------------------------------------------------
# a tiny dataset builder


def _header(image: sitk.Image, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    dim = image.GetDimension()
    if dim == 4:
        image.SetSpacing((*reversed(spacing), 1.0))
        image.SetOrigin((*origin, 0.0))
    elif dim == 3:
        image.SetSpacing(tuple(reversed(spacing)))
        image.SetOrigin(origin)
    else:
        image.SetSpacing(tuple(reversed(spacing[1:])))
        image.SetOrigin(origin[:2])
    return image


def write(path: Path, array: np.ndarray, **header) -> None:
    """Write a (z, y, x), (y, x) or, for 4D MSD images, (C, z, y, x) array with the test header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_header(sitk.GetImageFromArray(array, isVector=False), **header), str(path))


def edit(path: Path, change: Callable[[sitk.Image], sitk.Image | None]) -> None:
    """Read a file, change its header or voxels through SimpleITK, write it back."""
    image = sitk.ReadImage(str(path))
    image = change(image) or image
    sitk.WriteImage(image, str(path))


def case_arrays(i: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.normal(100.0, 10.0, size=(2, *shape)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[..., 4:12, 4:12] = 1
    label[..., 6:9, 6:9] = 2
    return image, label


def make_msd(root: Path, n_train: int = 3, n_test: int = 1) -> Path:
    training = []
    for i in range(n_train):
        image, label = case_arrays(i)
        write(root / "imagesTr" / f"case_{i:03d}.nii.gz", image)
        write(root / "labelsTr" / f"case_{i:03d}.nii.gz", label)
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    test = []
    for i in range(n_test):
        write(root / "imagesTs" / f"case_{100 + i:03d}.nii.gz", case_arrays(100 + i)[0])
        test.append(f"./imagesTs/case_{100 + i:03d}.nii.gz")
    descriptor = {
        "name": "Tiny",
        "modality": {str(k): v for k, v in enumerate(CHANNELS)},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": n_train,
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(descriptor, indent=2))
    return root


def make_v2(root: Path, n_train: int = 3, n_test: int = 1, two_d: bool = False) -> Path:
    shape = SHAPE[1:] if two_d else SHAPE
    for i in range(n_train):
        image, label = case_arrays(i, shape)
        for c in range(len(CHANNELS)):
            write(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz", image[c])
        write(root / "labelsTr" / f"case_{i:03d}.nii.gz", label)
    for i in range(n_test):
        image = case_arrays(100 + i, shape)[0]
        for c in range(len(CHANNELS)):
            write(root / "imagesTs" / f"case_{100 + i:03d}_{c:04d}.nii.gz", image[c])
    descriptor = {
        "channel_names": {str(k): v for k, v in enumerate(CHANNELS)},
        "labels": {v: k for k, v in LABELS.items()},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(descriptor, indent=2))
    return root


def descriptor_edit(root: Path, change: Callable[[dict], None]) -> None:
    raw = json.loads((root / "dataset.json").read_text())
    change(raw)
    (root / "dataset.json").write_text(json.dumps(raw))


def run_cli(root: Path, *extra: str):
    # a wide terminal, so no table cell is wrapped in the middle of a file name
    result = CliRunner().invoke(app, ["check", str(root), "-p", "1", *extra], env={"COLUMNS": "1000"})
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def find(report: CheckReport, case_id: str | None, file_name: str | None, *words: str):
    """The problems naming this case and file whose message holds all ``words`` (case-insensitive)."""
    return [
        p for p in report.problems
        if p.case_id == case_id
        and (file_name is None or (p.file is not None and p.file.name == file_name))
        and all(w.lower() in p.message.lower() for w in words)
    ]


# ---------------------------------------------------------------------------------------------
# clean datasets


@pytest.mark.parametrize("make", [make_msd, make_v2], ids=["msd", "nnunetv2"])
def test_clean_dataset_passes(tmp_path, make):
    root = make(tmp_path / "ds")
    report = check_dataset(root)
    assert report.problems == []
    assert report.cases_checked == 4
    result = run_cli(root)
    assert result.exit_code == 0
    assert "OK" in result.output and "4 cases checked" in result.output


def test_differences_within_tolerance_are_accepted(tmp_path):
    root = make_msd(tmp_path / "ds")
    label = root / "labelsTr" / "case_000.nii.gz"

    def nudge(image: sitk.Image) -> None:
        image.SetSpacing(tuple(s * (1 + SPACING_RTOL / 4) for s in image.GetSpacing()))
        image.SetOrigin(tuple(o + ORIGIN_ATOL_MM / 4 for o in image.GetOrigin()))
        direction = np.array(image.GetDirection())
        direction[1] += DIRECTION_ATOL / 4
        image.SetDirection(tuple(direction))

    edit(label, nudge)
    assert check_dataset(root).problems == []


# ---------------------------------------------------------------------------------------------
# one broken thing at a time: (layout, how to break it, severity, case, file, words in the message)


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a nifti file" * 10)


def _label_array(root: Path, case: str, array: np.ndarray) -> None:
    write(root / "labelsTr" / f"{case}.nii.gz", array)


def _image_with(value: float) -> Callable[[Path], None]:
    def breaker(root: Path) -> None:
        image, _ = case_arrays(1)
        image[1, 3, 5, 7] = value
        image[1, 4, 5, 7] = value
        write(root / "imagesTr" / "case_001.nii.gz", image)

    return breaker


def _shift_origin(image: sitk.Image) -> None:
    image.SetOrigin(tuple(np.add(image.GetOrigin(), (0.5, 0.0, 0.0))))


def _flip_direction(image: sitk.Image) -> None:
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _stretch_spacing(image: sitk.Image) -> None:
    image.SetSpacing((1.0, 1.0, 2.5))


def _non_integer(root: Path) -> None:
    label = case_arrays(2)[1].astype(np.float32)
    label[0, 0, :3] = 0.5
    _label_array(root, "case_002", label)


def _undeclared(root: Path) -> None:
    label = case_arrays(1)[1]
    label[0, 0, 0] = 5
    _label_array(root, "case_001", label)


def _wrong_shape(root: Path) -> None:
    _label_array(root, "case_001", case_arrays(1, (8, 16, 15))[1])


def _three_d_instead_of_4d(root: Path) -> None:
    write(root / "imagesTr" / "case_001.nii.gz", case_arrays(1)[0][0])


def _duplicate_entry(root: Path) -> None:
    descriptor_edit(root, lambda raw: raw["training"].append(dict(raw["training"][0])))


def _colliding_names(root: Path) -> None:
    (root / "other").mkdir()
    shutil.copy(root / "imagesTr" / "case_000.nii.gz", root / "other" / "case_000.nii.gz")
    descriptor_edit(
        root,
        lambda raw: raw["training"].append(
            {"image": "./other/case_000.nii.gz", "label": "./labelsTr/case_001.nii.gz"}
        ),
    )


def _extra_channel(root: Path) -> None:
    shutil.copy(root / "imagesTr" / "case_001_0000.nii.gz", root / "imagesTr" / "case_001_0002.nii.gz")


def _mixed_2d(root: Path) -> None:
    """nnU-Net v2: case_002 becomes 2D while the others stay 3D."""
    image, label = case_arrays(2, SHAPE[1:])
    for c in range(2):
        write(root / "imagesTr" / f"case_002_{c:04d}.nii.gz", image[c])
    _label_array(root, "case_002", label)


BROKEN = [
    ("msd", lambda r: (r / "imagesTr" / "case_001.nii.gz").unlink(),
     "error", "case_001", "case_001.nii.gz", ["image file missing"]),
    ("msd", lambda r: (r / "labelsTr" / "case_002.nii.gz").unlink(),
     "error", "case_002", "case_002.nii.gz", ["label file missing"]),
    ("msd", lambda r: _garbage(r / "imagesTr" / "case_002.nii.gz"),
     "error", "case_002", "case_002.nii.gz", ["unreadable", "SimpleITK"]),
    ("msd", lambda r: _garbage(r / "labelsTr" / "case_000.nii.gz"),
     "error", "case_000", "case_000.nii.gz", ["unreadable label"]),
    ("msd", _three_d_instead_of_4d,
     "error", "case_001", "case_001.nii.gz", ["1 channel", "declares 2", "modality"]),
    ("nnunetv2", lambda r: (r / "imagesTr" / "case_001_0001.nii.gz").unlink(),
     "error", "case_001", "case_001_0001.nii.gz", ["channel 1", "missing"]),
    ("nnunetv2", _extra_channel,
     "error", "case_001", "case_001_0002.nii.gz", ["_0002", "declares 2"]),
    ("msd", _wrong_shape,
     "error", "case_001", "case_001.nii.gz", ["shape", "(8, 16, 15)", "(8, 16, 16)"]),
    ("msd", lambda r: edit(r / "labelsTr" / "case_001.nii.gz", _stretch_spacing),
     "error", "case_001", "case_001.nii.gz", ["spacing", "2.5"]),
    ("msd", lambda r: edit(r / "labelsTr" / "case_002.nii.gz", _shift_origin),
     "error", "case_002", "case_002.nii.gz", ["origin", "by 0.5 mm"]),
    ("msd", lambda r: edit(r / "labelsTr" / "case_000.nii.gz", _flip_direction),
     "error", "case_000", "case_000.nii.gz", ["direction", "by up to 2"]),
    ("nnunetv2", lambda r: edit(r / "imagesTr" / "case_000_0001.nii.gz", _shift_origin),
     "error", "case_000", "case_000_0001.nii.gz", ["channel 1 origin", "channel 0"]),
    ("msd", _undeclared,
     "error", "case_001", "case_001.nii.gz", ["label value(s) 5", "not declared"]),
    ("msd", _non_integer,
     "error", "case_002", "case_002.nii.gz", ["non-integer", "0.5"]),
    ("msd", _image_with(np.nan),
     "error", "case_001", "case_001.nii.gz", ["2 NaN"]),
    ("msd", _image_with(np.inf),
     "error", "case_001", "case_001.nii.gz", ["2 infinite"]),
    ("nnunetv2", _mixed_2d,
     "error", "case_002", "case_002_0000.nii.gz", ["image is 2D", "3D"]),
    ("msd", _duplicate_entry,
     "error", "case_000", "case_000.nii.gz", ["same image is listed 2 times"]),
    ("msd", _colliding_names,
     "error", "case_000", "case_000.nii.gz", ["share a name", "other/case_000.nii.gz"]),
    ("msd", lambda r: _label_array(r, "case_001", np.zeros(SHAPE, np.uint8)),
     "warning", "case_001", "case_001.nii.gz", ["no foreground"]),
    ("msd", lambda r: shutil.copy(r / "imagesTr" / "case_000.nii.gz", r / "imagesTr" / "case_099.nii.gz"),
     "warning", None, "case_099.nii.gz", ["not referenced"]),
    ("msd", lambda r: (r / "imagesTs" / "case_100.nii.gz").unlink(),
     "error", "case_100", "case_100.nii.gz", ["image file missing"]),
    ("msd", lambda r: write(r / "imagesTs" / "case_100.nii.gz", case_arrays(100)[0][:1]),
     "error", "case_100", "case_100.nii.gz", ["1 channel", "declares 2"]),
    ("nnunetv2", lambda r: _garbage(r / "imagesTs" / "case_100_0000.nii.gz"),
     "error", "case_100", "case_100_0000.nii.gz", ["unreadable"]),
    ("nnunetv2", lambda r: (r / "labelsTr" / "case_000.nii.gz").unlink(),
     "error", "case_000", "case_000.nii.gz", ["label file missing"]),
]


@pytest.mark.parametrize(
    ("layout", "breaker", "severity", "case_id", "file_name", "words"),
    BROKEN,
    ids=[
        "missing-image", "missing-label", "unreadable-image", "unreadable-label", "msd-channel-count",
        "v2-missing-channel", "v2-extra-channel", "shape", "spacing", "origin", "direction",
        "v2-channel-grid", "undeclared-label", "non-integer-label", "nan", "inf", "mixed-2d-3d",
        "duplicate-entry", "colliding-names", "no-foreground", "unreferenced", "test-missing",
        "test-channel-count", "test-unreadable", "v2-label-missing",
    ],
)
def test_broken_dataset_reports_case_file_and_fix(tmp_path, layout, breaker, severity, case_id, file_name, words):
    root = (make_msd if layout == "msd" else make_v2)(tmp_path / "ds")
    breaker(root)

    report = check_dataset(root)
    matches = find(report, case_id, file_name, *words)
    assert len(matches) == 1, [p.message for p in report.problems]
    problem = matches[0]
    assert problem.severity == severity
    assert problem.fix
    if severity == "warning":
        assert report.errors == []

    result = run_cli(root)
    assert result.exit_code == (1 if severity == "error" else 0)
    for text in (case_id or "", file_name, *words, problem.fix):
        assert text in result.output
    assert ("1 error" if severity == "error" else "0 errors") in result.output


@pytest.mark.parametrize(
    ("breaker", "words"),
    [
        (lambda r: (r / "dataset.json").write_text('{"modality": {"0": "CT"}, "labels": '), ["not valid JSON"]),
        (lambda r: descriptor_edit(r, lambda raw: raw.pop("labels")), ["missing key 'labels'"]),
        (lambda r: (r / "dataset.json").unlink(), ["dataset.json not found"]),
        (lambda r: descriptor_edit(r, lambda raw: raw.pop("modality")), ["neither an MSD"]),
    ],
    ids=["bad-json", "missing-key", "no-dataset-json", "unknown-layout"],
)
def test_broken_dataset_json_is_one_error(tmp_path, breaker, words):
    root = make_msd(tmp_path / "ds")
    breaker(root)
    report = check_dataset(root)
    assert len(report.problems) == 1
    (problem,) = report.problems
    assert problem.severity == "error" and problem.file.name == "dataset.json" and problem.fix
    assert all(w in problem.message for w in words)
    result = run_cli(root)
    assert result.exit_code == 1
    assert words[0] in result.output and "1 error, 0 warnings in 0 cases" in result.output


def test_missing_dataset_folder_is_one_error(tmp_path):
    report = check_dataset(tmp_path / "nowhere")
    assert [p.severity for p in report.problems] == ["error"]
    assert "not found" in report.problems[0].message
    assert run_cli(tmp_path / "nowhere").exit_code == 1


def _break_many(root: Path) -> None:
    (root / "imagesTr" / "case_000.nii.gz").unlink()
    edit(root / "labelsTr" / "case_001.nii.gz", _shift_origin)
    _label_array(root, "case_002", np.zeros(SHAPE, np.uint8))
    _garbage(root / "imagesTs" / "case_100.nii.gz")


def test_several_problems_are_all_reported_in_one_run(tmp_path):
    root = make_msd(tmp_path / "ds")
    _break_many(root)
    report = check_dataset(root)
    assert find(report, "case_000", "case_000.nii.gz", "image file missing")
    assert find(report, "case_001", "case_001.nii.gz", "origin")
    assert find(report, "case_002", "case_002.nii.gz", "no foreground")
    assert find(report, "case_100", "case_100.nii.gz", "unreadable")
    assert (len(report.errors), len(report.warnings), report.cases_checked) == (3, 1, 4)

    result = run_cli(root)
    assert result.exit_code == 1
    assert "3 errors, 1 warning in 4 cases" in result.output
    for case in ("case_000", "case_001", "case_002", "case_100"):
        assert case in result.output


def test_parallel_check_gives_the_same_report(tmp_path):
    root = make_msd(tmp_path / "ds")
    _break_many(root)
    assert check_dataset(root, processes=2).problems == check_dataset(root, processes=1).problems


def test_no_training_cases_is_an_error(tmp_path):
    root = make_v2(tmp_path / "ds", n_train=0)
    report = check_dataset(root)
    assert find(report, None, "dataset.json", "no training cases")
    assert run_cli(root).exit_code == 1


def test_wrong_num_training_is_a_warning(tmp_path):
    root = make_v2(tmp_path / "ds")
    descriptor_edit(root, lambda raw: raw.update(numTraining=7))
    report = check_dataset(root)
    assert report.errors == []
    assert find(report, None, "dataset.json", "'numTraining' says 7", "3 training cases")


# ---------------------------------------------------------------------------------------------
# what SimpleITK hides: NaN in NIfTI files (read as 0) and truncated files


def test_nan_in_nifti_is_found_although_simpleitk_reads_it_as_zero(tmp_path):
    root = make_msd(tmp_path / "ds")
    _image_with(np.nan)(root)
    path = root / "imagesTr" / "case_001.nii.gz"
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # the reason for nifti_raw
    (problem,) = find(check_dataset(root), "case_001", path.name, "NaN", "reads them as 0")
    assert problem.severity == "error"


def test_nan_in_mha_image_is_found(tmp_path):
    root = make_msd(tmp_path / "ds")
    image, _ = case_arrays(0)
    image[0, 0, 0, :3] = np.nan
    write(root / "imagesTr" / "case_000.mha", image)
    (root / "imagesTr" / "case_000.nii.gz").unlink()
    descriptor_edit(root, lambda raw: raw["training"][0].update(image="./imagesTr/case_000.mha"))
    report = check_dataset(root)
    assert find(report, "case_000", "case_000.mha", "3 NaN intensity")
    assert not find(report, "case_000", "case_000.mha", "reads them as 0")


def test_nan_in_float_label_is_an_error(tmp_path):
    root = make_msd(tmp_path / "ds")
    label = case_arrays(0)[1].astype(np.float32)
    label[0, 0, 0] = np.nan
    _label_array(root, "case_000", label)
    report = check_dataset(root)
    assert find(report, "case_000", "case_000.nii.gz", "1 NaN label value")


def test_truncated_gzip_image_is_unreadable(tmp_path):
    root = make_msd(tmp_path / "ds")
    path = root / "imagesTr" / "case_001.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = check_dataset(root)
    (problem,) = find(report, "case_001", path.name, "unreadable")
    assert problem.severity == "error"
    assert run_cli(root).exit_code == 1


def test_truncated_uncompressed_nifti_is_reported(tmp_path):
    path = tmp_path / "x.nii"
    write(path, np.zeros(SHAPE, np.int16))
    path.write_bytes(path.read_bytes()[:-100])
    result = scan_nifti(path)
    assert isinstance(result, str) and "truncated" in result


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_raw_scan_counts_nonfinite_voxels(tmp_path, dtype, ending):
    array = np.zeros(SHAPE, dtype)
    if np.issubdtype(dtype, np.floating):
        array[1, 2, :5] = np.nan
        array[3, 4, :2] = -np.inf
    path = tmp_path / f"x{ending}"
    write(path, array)
    scan = scan_nifti(path)
    is_float = np.issubdtype(dtype, np.floating)
    assert scan == RawScan(nan=5 if is_float else 0, inf=2 if is_float else 0, is_float=is_float)


def test_narrow_console_prints_one_block_per_problem(tmp_path):
    root = make_msd(tmp_path / "ds")
    _break_many(root)
    result = CliRunner().invoke(app, ["check", str(root), "-p", "1"], env={"COLUMNS": "80"})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: case_000  imagesTr/case_000.nii.gz" in result.output
    assert "warning: case_002  labelsTr/case_002.nii.gz" in result.output
    assert "3 errors, 1 warning in 4 cases" in result.output


def test_label_values_are_counted_across_slabs(tmp_path):
    label = np.zeros(5_000_000, np.uint8)
    label[-1] = 7
    assert _label_values(label).tolist() == [0, 7]
    assert _label_values(np.array([-1, 0, 2], np.int16)).tolist() == [-1, 0, 2]


def test_negative_label_value_is_undeclared(tmp_path):
    root = make_msd(tmp_path / "ds")
    label = case_arrays(0)[1].astype(np.int16)
    label[0, 0, 0] = -1
    _label_array(root, "case_000", label)
    assert find(check_dataset(root), "case_000", "case_000.nii.gz", "label value(s) -1", "not declared")


def test_demo_dataset_is_clean(tmp_path):
    from selfunet.data.demo import make_demo_dataset

    root = tmp_path / "demo"
    make_demo_dataset(root, num_training=2, num_test=1)
    report = check_dataset(root)
    assert report.problems == [] and report.cases_checked == 3
