"""A battery of hostile image files (docs/guide/security.md): each is refused before its voxels are read, or read
cleanly, with a message that names the file and the fix.

Headers that lie about their size (NIfTI, MetaImage), spacings out of range, external data files
outside the image's folder (absolute, ``..``, a link out, lists and patterns, a detached file named
by a format that keeps its voxels inside), non-finite voxels, channels on different grids, and the
bounds' environment overrides. ``selfunet check`` reports the same problems per case. Memory: the
refusals happen before SimpleITK reads a voxel (checked by making a voxel read fail the test) and
a refused 600^3 file leaves the peak RSS of a fresh process far below what reading it would take.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.check import check_dataset
from selfunet.data.grids import read_channel_files
from selfunet.data.header import (
    ENV_MAX_VOXELS,
    ENV_SPACING,
    ImageBounds,
    ImageRefused,
    check_header,
    read_image_header,
)
from selfunet.data.io import read_image
from selfunet.errors import SelfUNetError
from selfunet.preprocessing.resample import compute_new_shape

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_voxel_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any voxel read through SimpleITK fails the test: a refusal must come from the header."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("voxels were read before the header was checked")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", refuse)
    monkeypatch.setattr(sitk, "ReadImage", refuse)


def write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def lying_nifti(path: Path, dims: tuple[int, int, int], payload: int = 200_000) -> Path:
    """A .nii.gz whose header declares ``dims`` float32 voxels, holding ``payload`` random bytes."""
    small = path.parent / "small.nii"
    write(small, np.zeros((4, 4, 4), np.float32))
    header = bytearray(small.read_bytes()[:352])
    small.unlink()
    header[40:56] = struct.pack("<8h", 3, *dims, 1, 1, 1, 1)
    noise = np.random.default_rng(0).integers(0, 256, payload, dtype=np.uint8).tobytes()
    with gzip.open(path, "wb") as stream:
        stream.write(bytes(header) + noise)
    return path


def metaimage(path: Path, data_file: str, dims: str = "4 4 4", extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"CompressedData = False\nElementSpacing = 1 1 1\nDimSize = {dims}\n{extra}ElementType = MET_SHORT\n"
        f"ElementDataFile = {data_file}\n"
    )
    return path


def nrrd(path: Path, data_file: str | None, field: str = "data file") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nspacings: 1 1 1\nendian: little\nencoding: raw\n"
    if data_file is None:
        path.write_bytes(text.encode() + b"\n" + bytes(128))
    else:
        path.write_text(text + f"{field}: {data_file}\n")
    return path


def secret(folder: Path) -> Path:
    """A host file that no image may pull in (4x4x4 int16 worth of bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "secret.raw"
    target.write_bytes(np.arange(64, dtype=np.int16).tobytes())
    return target


def refused(path: Path, reason: str, *words: str, **kwargs) -> ImageRefused:
    with pytest.raises(ImageRefused) as info:
        read_image(path, **kwargs)
    exc = info.value
    assert exc.reason == reason, str(exc)
    assert str(path) in str(exc) and exc.fix, str(exc)
    for word in words:
        assert word.lower() in str(exc).lower(), str(exc)
    return exc


# ---------------------------------------------------------------------------------------------
# sizes


def test_small_nifti_declaring_600_cubed_is_refused_before_any_voxel(tmp_path: Path, no_voxel_reads) -> None:
    path = lying_nifti(tmp_path / "liar.nii.gz", (600, 600, 600))
    assert path.stat().st_size < 250_000
    refused(path, "truncated", "216,000,000", "truncated or its header lies", "download the image again")


def test_nifti_declaring_2000_cubed_is_too_large(tmp_path: Path, no_voxel_reads) -> None:
    path = lying_nifti(tmp_path / "huge.nii.gz", (2000, 2000, 2000), payload=1000)
    refused(path, "too large", "8,000,000,000 voxels", ENV_MAX_VOXELS, "docs/guide/security.md")


def test_refusing_a_600_cubed_header_keeps_the_peak_memory_small(tmp_path: Path) -> None:
    path = lying_nifti(tmp_path / "liar.nii.gz", (600, 600, 600))
    code = (
        "import resource, sys\n"
        "from selfunet.data.io import read_image\n"
        "from selfunet.data.header import ImageRefused\n"
        "try:\n    read_image(sys.argv[1])\nexcept ImageRefused as exc:\n    print(exc.reason)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    reason, peak_kib = done.stdout.split()
    assert reason == "truncated", done.stderr
    assert int(peak_kib) < 600 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB: the voxels were allocated"


def test_uncompressed_nifti_shorter_than_its_header_says(tmp_path: Path, no_voxel_reads) -> None:
    path = write(tmp_path / "short.nii", np.zeros((8, 8, 8), np.int16))
    path.write_bytes(path.read_bytes()[:-100])
    refused(path, "truncated", "holds only")


def test_metaimage_declaring_a_huge_size_in_a_tiny_file(tmp_path: Path, no_voxel_reads) -> None:
    path = metaimage(tmp_path / "big.mha", "LOCAL", dims="3000 3000 3000")
    with open(path, "ab") as stream:
        stream.write(bytes(1000))
    refused(path, "too large", "27,000,000,000 voxels")
    bounded = metaimage(tmp_path / "short.mha", "LOCAL", dims="500 500 500")
    refused(bounded, "truncated", "holds only")


@pytest.mark.parametrize("spacing", [5000.0, 1e-6])
def test_spacing_outside_the_bounds_is_refused(tmp_path: Path, spacing: float, no_voxel_reads) -> None:
    path = write(tmp_path / "odd.mha", np.zeros((4, 4, 4), np.int16), spacing=(1.0, 1.0, spacing))
    refused(path, "bad header", "spacing", "outside 0.0001..1000 mm", ENV_SPACING)


def test_a_1000_mm_spacing_is_refused_where_the_resampled_size_is_computed() -> None:
    # in bounds for the header, but 64 slices of 1000 mm resampled to 1 mm would be 64000 x 512 x 512
    with pytest.raises(SelfUNetError) as info:
        compute_new_shape((64, 512, 512), (1000.0, 0.8, 0.8), (1.0, 0.8, 0.8), what="case 'liver_7'")
    message = str(info.value)
    assert "case 'liver_7'" in message and "spacing" in message and "16,777,216,000 voxels" in message
    assert compute_new_shape((64, 512, 512), (3.0, 0.8, 0.8), (1.0, 0.8, 0.8)) == (192, 512, 512)


def test_vector_pixels_are_refused(tmp_path: Path, no_voxel_reads) -> None:
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4, 3), np.uint8), isVector=True), str(path))
    refused(path, "bad header", "3 components")


def test_bounds_come_from_the_environment_and_a_bad_value_is_named(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path / "case.nii.gz", np.ones((4, 4, 4), np.int16))
    monkeypatch.setenv(ENV_MAX_VOXELS, "10")
    refused(path, "too large", "bound of 10")
    monkeypatch.setenv(ENV_MAX_VOXELS, "lots")
    with pytest.raises(SelfUNetError, match=f"{ENV_MAX_VOXELS}='lots': expected a number"):
        read_image(path)
    monkeypatch.delenv(ENV_MAX_VOXELS)
    assert read_image(path)[0].shape == (1, 4, 4, 4)
    with pytest.raises(ImageRefused, match="more than the bound of 63"):
        check_header(read_image_header(path), ImageBounds(max_voxels=63))


def test_a_header_without_an_end_costs_one_bounded_read(tmp_path: Path, no_voxel_reads) -> None:
    path = tmp_path / "endless.mha"
    path.write_bytes(b"NDims = 3\n" + b"Comment = " + b"x" * 200_000 + b"\n")
    refused(path, "bad header", "no end of the MetaImage header in its first 64 KiB")


def test_a_fifo_is_not_opened(tmp_path: Path) -> None:
    path = tmp_path / "pipe.mha"
    os.mkfifo(path)
    refused(path, "not a regular file")


# ---------------------------------------------------------------------------------------------
# external data files


@pytest.mark.parametrize("how", ["absolute", "dotdot", "link-out", "folder-link-out"])
def test_external_data_file_outside_the_folder_is_refused(tmp_path: Path, how: str, no_voxel_reads) -> None:
    target = secret(tmp_path / "host")
    images = tmp_path / "images"
    images.mkdir()
    name = {"absolute": str(target), "dotdot": "../host/secret.raw", "link-out": "data.raw",
            "folder-link-out": "sub/secret.raw"}[how]
    if how == "link-out":
        (images / "data.raw").symlink_to(target)
    if how == "folder-link-out":
        (images / "sub").symlink_to(target.parent, target_is_directory=True)
    path = metaimage(images / "case.mhd", name)
    exc = refused(path, "external data file", "ElementDataFile")
    assert "secret.raw" in str(exc) or "outside" in str(exc)


def test_header_separators_are_read_as_metaio_and_teem_read_them(tmp_path: Path, no_voxel_reads) -> None:
    target = secret(tmp_path / "host")
    path = metaimage(tmp_path / "a" / "colon.mhd", "LOCAL")
    path.write_text(path.read_text().replace("ElementDataFile = LOCAL", f"ElementDataFile: {target} = 1"))
    refused(path, "external data file", "outside")
    nhdr = nrrd(tmp_path / "b" / "kv.nhdr", "../host/secret.raw:=x")
    refused(nhdr, "external data file", "outside")


@pytest.mark.parametrize("value", ["LIST", "LIST 2D", "slice_%03d.raw 1 4 1"])
def test_metaimage_lists_and_patterns_are_refused(tmp_path: Path, value: str, no_voxel_reads) -> None:
    refused(metaimage(tmp_path / "case.mhd", value), "external data file", "several files")


def test_an_mha_naming_a_separate_file_is_refused(tmp_path: Path, no_voxel_reads) -> None:
    secret(tmp_path)
    refused(metaimage(tmp_path / "case.mha", "secret.raw"), "external data file", "detached header")


def test_an_mhd_with_its_data_file_next_to_it_reads(tmp_path: Path) -> None:
    secret(tmp_path)
    path = metaimage(tmp_path / "case.mhd", "secret.raw")
    header = read_image_header(path)
    assert header.data_files == ((tmp_path / "secret.raw").resolve(),)
    array, _ = read_image(path)
    np.testing.assert_array_equal(array.ravel(), np.arange(64))
    # a container's output may name no data file at all
    with pytest.raises(ImageRefused, match="external data files are not accepted here") as info:
        read_image_header(path, external="refuse")
    assert info.value.reason == "external data file"


@pytest.mark.parametrize("field", ["data file", "datafile"])
def test_nrrd_data_files(tmp_path: Path, field: str, no_voxel_reads) -> None:
    target = secret(tmp_path / "host")
    folder = tmp_path / "images"
    refused(nrrd(folder / "a.nrrd", "../host/secret.raw", field), "external data file")
    refused(nrrd(folder / "b.nrrd", "b.raw", field), "external data file", "detached header")
    refused(nrrd(folder / "c.nhdr", str(target), field), "external data file", "outside")
    refused(nrrd(folder / "d.nhdr", "LIST", field), "external data file", "several files")
    refused(nrrd(folder / "e.nhdr", "slice%03d.raw 1 4 1 2", field), "external data file", "several files")


def test_nrrd_attached_and_detached_inside_read(tmp_path: Path) -> None:
    assert read_image(nrrd(tmp_path / "a.nrrd", None))[0].shape == (1, 4, 4, 4)
    secret(tmp_path)
    assert read_image(nrrd(tmp_path / "b.nhdr", "secret.raw"))[0].ravel()[5] == 5


def test_a_nifti_pointing_to_an_img_file_is_refused(tmp_path: Path, no_voxel_reads) -> None:
    path = write(tmp_path / "pair.nii", np.zeros((4, 4, 4), np.int16))
    data = bytearray(path.read_bytes())
    data[344:348] = b"ni1\0"
    path.write_bytes(bytes(data))
    refused(path, "external data file", "separate .img file", "save the image as .nii.gz")


def test_a_symlinked_image_is_refused_where_links_are_not_followed(tmp_path: Path) -> None:
    real = write(tmp_path / "real.nii.gz", np.zeros((4, 4, 4), np.int16))
    link = tmp_path / "link.nii.gz"
    link.symlink_to(real)
    refused(link, "symlink", "symbolic link", allow_symlink=False)
    assert read_image(link)[0].shape == (1, 4, 4, 4)  # followed where the caller allows it


# ---------------------------------------------------------------------------------------------
# voxels and channels


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".nii.gz"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_voxels_are_refused(tmp_path: Path, ending: str, value: float) -> None:
    array = np.ones((4, 4, 4), np.float32)
    array[1, 2, 3] = value
    path = write(tmp_path / f"case{ending}", array)
    exc = refused(path, "non-finite", "replace them by finite values")
    assert exc.problem.startswith("1 NaN voxel" if np.isnan(value) else "1 infinite voxel"), exc.problem
    if ending == ".nii.gz":
        assert "silently read them as 0" in str(exc)


def test_channels_of_different_shapes_name_the_case_and_channels(tmp_path: Path) -> None:
    first = write(tmp_path / "c_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
    second = write(tmp_path / "c_0001.nii.gz", np.zeros((4, 4, 5), np.float32))
    with pytest.raises(SelfUNetError) as info:
        read_channel_files("c", [first, second], 2, "the model expects")
    message = str(info.value)
    assert "case 'c'" in message and "channel 1" in message and "c_0001" in message and "resample" in message


def test_channels_on_different_grids_are_refused_within_tolerance_accepted(tmp_path: Path) -> None:
    first = write(tmp_path / "c_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
    shifted = write(tmp_path / "c_0001.nii.gz", np.zeros((4, 4, 4), np.float32), origin=(5.0, 0.0, 0.0))
    with pytest.raises(SelfUNetError) as info:
        read_channel_files("c", [first, shifted], 2, "the model expects")
    assert "does not lie on channel 0's grid" in str(info.value) and "origin" in str(info.value)
    near = write(tmp_path / "c_0002.nii.gz", np.ones((4, 4, 4), np.float32), origin=(1e-5, 0.0, 0.0))
    image, geometry = read_channel_files("c", [first, near], 2, "the model expects")
    assert image.shape == (2, 4, 4, 4) and image.dtype == np.float32 and geometry.shape == (4, 4, 4)
    with pytest.raises(SelfUNetError, match="1 channel\\(s\\) found, the model expects 2"):
        read_channel_files("c", [first], 2, "the model expects")


# ---------------------------------------------------------------------------------------------
# selfunet check reports them per case


def _dataset(root: Path) -> Path:
    """An MSD dataset of MetaImage files: case_000 clean, case_001 pulls a host file in, case_002
    declares a huge size, case_003 has an infinite voxel."""
    rng = np.random.default_rng(0)
    label = np.zeros((4, 8, 8), np.uint8)
    label[1:3, 2:6, 2:6] = 1
    training = []
    for i in range(4):
        write(root / "labelsTr" / f"case_{i:03d}.mha", label)
        training.append({"image": f"./imagesTr/case_{i:03d}.mhd", "label": f"./labelsTr/case_{i:03d}.mha"})
    image = rng.normal(size=(4, 8, 8)).astype(np.float32)
    write(root / "imagesTr" / "case_000.mhd", image)
    host = secret(root.parent / "host")
    metaimage(root / "imagesTr" / "case_001.mhd", str(host), dims="8 8 4")
    metaimage(root / "imagesTr" / "case_002.mhd", "LOCAL", dims="5000 5000 5000")
    image[0, 0, 0] = np.inf
    write(root / "imagesTr" / "case_003.mhd", image)
    (root / "dataset.json").write_text(json.dumps({
        "name": "Hostile", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
        "training": training, "test": []}))
    return root


def test_check_reports_each_hostile_case_with_its_fix(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    report = check_dataset(root)
    by_case = {}
    for p in report.errors:
        by_case.setdefault(p.case_id, []).append(p)
    assert "case_000" not in by_case
    assert "external data file" in by_case["case_001"][0].message and "outside" in by_case["case_001"][0].message
    assert "next to its header" in by_case["case_001"][0].fix
    assert "too large" in by_case["case_002"][0].message and "SELFUNET_MAX_IMAGE_VOXELS" in by_case["case_002"][0].fix
    assert "infinite" in by_case["case_003"][0].message
    result = CliRunner().invoke(app, ["check", str(root), "-p", "1"], env={"COLUMNS": "1000"})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "case_001" in result.output and "case_002" in result.output and "case_003" in result.output


def test_check_reports_a_case_whose_spacing_would_resample_past_the_bound(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    label = np.zeros((4, 8, 8), np.uint8)
    label[1:3, 2:6, 2:6] = 1
    training = []
    for i, spacing in enumerate([(1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1000.0, 1000.0, 1000.0)]):
        write(root / "imagesTr" / f"case_{i}.nii.gz", np.ones((4, 8, 8), np.float32), spacing=spacing)
        write(root / "labelsTr" / f"case_{i}.nii.gz", label, spacing=spacing)
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Coarse", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
        "training": training, "test": []}))
    (problem,) = [p for p in check_dataset(root).errors if "resampled" in p.message]
    assert problem.case_id == "case_2" and "1000" in problem.message and "fix the header's spacing" in problem.fix
