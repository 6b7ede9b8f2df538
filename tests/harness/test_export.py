"""Challenge-format export: names like the test images, their headers, loud failures, a stable zip."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from harness.cli import app
from harness.results.export import export_task, zip_predictions
from harness.tasks.descriptor import TaskDescriptor
from selfunet.data.io import ImageGeometry, read_image, write_label
from selfunet.errors import SelfUNetError

SHAPE_XYZ = (12, 10, 6)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-30.0, 12.5, 4.0)
# a rotation about z by 30 degrees: an oblique header, so a dropped direction would show
C, S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (C, -S, 0.0, S, C, 0.0, 0.0, 0.0, 1.0)


def _volume(seed: int) -> sitk.Image:
    array = np.random.default_rng(seed).normal(size=SHAPE_XYZ[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def make_msd(root: Path, cases: list[str]) -> Path:
    """MSD layout: one 4D file per test case (two channels on the 4th axis)."""
    (root / "imagesTs").mkdir(parents=True)
    for i, case in enumerate(cases):
        image = sitk.JoinSeries([_volume(i), _volume(i + 10)])
        image.SetOrigin((*ORIGIN, 0.0))
        image.SetSpacing((*SPACING, 1.0))
        direction = np.eye(4)
        direction[:3, :3] = np.asarray(DIRECTION).reshape(3, 3)
        image.SetDirection(tuple(direction.ravel()))
        sitk.WriteImage(image, str(root / "imagesTs" / f"{case}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "modality": {"0": "T1", "1": "T2"}, "labels": {"0": "background", "1": "organ"},
        "training": [], "test": [f"./imagesTs/{c}.nii.gz" for c in cases]}))
    return root


def make_nnunetv2(root: Path, cases: list[str]) -> Path:
    """nnU-Net v2 layout: one file per channel, ``<case>_0000.nii.gz``."""
    (root / "imagesTs").mkdir(parents=True)
    for i, case in enumerate(cases):
        for channel in range(2):
            sitk.WriteImage(_volume(i + channel), str(root / "imagesTs" / f"{case}_{channel:04d}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "organ": 1},
        "numTraining": 0, "file_ending": ".nii.gz"}))
    return root


def predict(image: Path, out: Path, shift: float = 0.0, shape: tuple[int, int, int] | None = None) -> None:
    """What `selfunet predict` writes: a label map with the test image's geometry (optionally broken)."""
    _, geometry = read_image(image)
    if shift:
        geometry = ImageGeometry(geometry.shape, geometry.spacing, (geometry.origin[0] + shift, *geometry.origin[1:]),
                                 geometry.direction)
    if shape is not None:
        geometry = ImageGeometry(shape, geometry.spacing, geometry.origin, geometry.direction)
    labels = np.zeros(geometry.shape, np.uint8)
    labels[2:4, 3:7, 3:8] = 1
    write_label(out, labels, geometry)


def _task(root: Path, **kw) -> TaskDescriptor:
    return TaskDescriptor(name="tiny", dataset=root, export={"folder": "Task99_Tiny"}, **kw)


def _header(path: Path) -> tuple:
    image = sitk.ReadImage(str(path))
    n = 3
    direction = np.asarray(image.GetDirection()).reshape(image.GetDimension(), -1)[:n, :n]
    return (image.GetSize()[:n], np.round(image.GetSpacing()[:n], 5).tolist(),
            np.round(image.GetOrigin()[:n], 4).tolist(), np.round(direction, 5).ravel().tolist())


@pytest.mark.parametrize("layout", ["msd", "nnunetv2"])
def test_predictions_are_named_like_the_test_images_with_their_headers(tmp_path: Path, layout: str):
    cases = ["tiny_007", "tiny_012"]
    root = (make_msd if layout == "msd" else make_nnunetv2)(tmp_path / "data", cases)
    images = {c: root / "imagesTs" / (f"{c}.nii.gz" if layout == "msd" else f"{c}_0000.nii.gz") for c in cases}
    work = tmp_path / "work"
    for case, image in images.items():
        predict(image, work / "test_predictions" / f"{case}.nii.gz")
    (work / "test_predictions" / "tiny_007.npz").write_bytes(b"probabilities are not exported")
    (work / "selection.json").write_text('{"selected": "3d_fullres"}')

    out = export_task(_task(root), work, tmp_path / "results")

    assert out == tmp_path / "results" / "tiny" / "predictions" / "Task99_Tiny"
    assert sorted(p.name for p in out.iterdir()) == ["tiny_007.nii.gz", "tiny_012.nii.gz"]
    if layout == "msd":  # exactly the image's file name
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in images.values())
    for case, image in images.items():
        assert _header(out / f"{case}.nii.gz") == _header(image)
        assert sitk.ReadImage(str(out / f"{case}.nii.gz")).GetPixelID() == sitk.sitkUInt8
    assert (tmp_path / "results" / "tiny" / "selection.json").read_text() == '{"selected": "3d_fullres"}'


def test_a_prediction_off_its_image_fails_naming_both(tmp_path: Path):
    root = make_msd(tmp_path / "data", ["a", "b"])
    work = tmp_path / "work"
    predict(root / "imagesTs" / "a.nii.gz", work / "test_predictions" / "a.nii.gz", shift=5.0)
    predict(root / "imagesTs" / "b.nii.gz", work / "test_predictions" / "b.nii.gz", shape=(6, 10, 11))
    with pytest.raises(SelfUNetError) as err:
        export_task(_task(root), work, tmp_path / "results")
    text = str(err.value)
    assert "a.nii.gz" in text and "origin" in text and "b.nii.gz" in text and "size" in text
    assert not (tmp_path / "results" / "tiny" / "predictions").exists()


def test_a_missing_prediction_fails_and_names_the_case(tmp_path: Path):
    root = make_nnunetv2(tmp_path / "data", ["a", "b", "c"])
    work = tmp_path / "work"
    predict(root / "imagesTs" / "a_0000.nii.gz", work / "test_predictions" / "a.nii.gz")
    with pytest.raises(SelfUNetError, match=r"no prediction for 2 of 3 test case\(s\) \(b.nii.gz, c.nii.gz\)"):
        export_task(_task(root), work, tmp_path / "results")


def test_export_format_none_writes_no_predictions(tmp_path: Path):
    root = make_msd(tmp_path / "data", ["a"])
    task = TaskDescriptor(name="tiny", dataset=root, export={"format": "none"})
    assert export_task(task, tmp_path / "work", tmp_path / "r2") is None
    assert not (tmp_path / "r2" / "tiny" / "predictions").exists()


def test_zip_is_sorted_timestamp_free_and_byte_stable(tmp_path: Path):
    root = make_msd(tmp_path / "data", ["b_case", "a_case"])
    work = tmp_path / "work"
    for case in ("b_case", "a_case"):
        predict(root / "imagesTs" / f"{case}.nii.gz", work / "test_predictions" / f"{case}.nii.gz")
    folder = export_task(_task(root), work, tmp_path / "results", make_zip=True)
    archive = tmp_path / "results" / "tiny" / "Task99_Tiny_predictions.zip"
    first = archive.read_bytes()
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == ["Task99_Tiny/a_case.nii.gz", "Task99_Tiny/b_case.nii.gz"]
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert z.read("Task99_Tiny/a_case.nii.gz") == (folder / "a_case.nii.gz").read_bytes()
    for f in folder.iterdir():
        os.utime(f, (1_800_000_000, 1_800_000_000))
    assert zip_predictions(folder).read_bytes() == first


def test_export_command_finds_the_task_by_name_and_zips(tmp_path: Path):
    root = make_nnunetv2(tmp_path / "data", ["x"])
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(f"name: tiny\ndataset: {root}\nexport:\n  folder: Task99_Tiny\n")
    predict(root / "imagesTs" / "x_0000.nii.gz", tmp_path / "work" / "tiny" / "test_predictions" / "x.nii.gz")
    args = ["--tasks", str(tasks), "--work-root", str(tmp_path / "work"), "--results", str(tmp_path / "results")]

    out = CliRunner().invoke(app, ["export", "tiny", "--zip", *args])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "results" / "tiny" / "predictions" / "Task99_Tiny" / "x.nii.gz").is_file()
    assert (tmp_path / "results" / "tiny" / "Task99_Tiny_predictions.zip").is_file()

    unknown = CliRunner().invoke(app, ["export", "nosuch", *args])
    assert unknown.exit_code == 1 and "task 'nosuch': not found" in unknown.output and "tiny" in unknown.output


@pytest.mark.parametrize("folder", ["/some/dir", "../..", "..", "a/b", "."])
def test_export_folder_that_is_a_path_is_refused_by_the_descriptor(tmp_path: Path, folder: str):
    from harness.tasks.descriptor import load_task

    root = make_msd(tmp_path / "data", ["a"])
    path = tmp_path / "tasks" / "t.yaml"
    path.parent.mkdir()
    path.write_text(f"name: tiny\ndataset: {root}\nexport:\n  folder: '{folder}'\n")
    with pytest.raises(SelfUNetError) as err:
        load_task(path)
    assert str(path) in str(err.value) and "key 'export.folder'" in str(err.value)


@pytest.mark.parametrize("folder", ["/some/dir", "../..", "../../victim", ".."])
def test_export_never_replaces_a_folder_outside_results_task(tmp_path: Path, folder: str):
    """A descriptor built in code (model_copy does not validate) still cannot aim the export elsewhere."""
    root = make_msd(tmp_path / "data", ["a"])
    work = tmp_path / "work"
    predict(root / "imagesTs" / "a.nii.gz", work / "test_predictions" / "a.nii.gz")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    results = tmp_path / "results"
    base = _task(root)
    task = base.model_copy(update={"export": base.export.model_copy(update={"folder": folder})})
    with pytest.raises(SelfUNetError, match=r"is not a plain folder name.*no '/', no '\.\.'"):
        export_task(task, work, results)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "victim", "work"]


@pytest.mark.parametrize("folder", ["/some/dir", "../.."])
def test_harness_export_with_a_path_as_folder_is_a_clean_error(tmp_path: Path, folder: str):
    root = make_msd(tmp_path / "data", ["a"])
    predict(root / "imagesTs" / "a.nii.gz", tmp_path / "work" / "tiny" / "test_predictions" / "a.nii.gz")
    descriptor = tmp_path / "tasks" / "tiny.yaml"
    descriptor.parent.mkdir()
    descriptor.write_text(f"name: tiny\ndataset: {root}\nexport:\n  folder: '{folder}'\n")
    result = CliRunner().invoke(app, ["export", "task", str(descriptor), "--work-root", str(tmp_path / "work"),
                                      "--results", str(tmp_path / "results")], terminal_width=300)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    text = " ".join(result.output.split())
    assert "key 'export.folder'" in text and "Traceback" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tasks", "work"]
