"""Image IO through SimpleITK: array order, spacing order, headers kept, 4D and 2D files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from selfunet.data.io import (
    SPACING_2D_PLACEHOLDER,
    ImageGeometry,
    read_image,
    strip_ending,
    write_image,
    write_label,
)
from selfunet.errors import SelfUNetError

SPACING_XYZ = (0.5, 0.7, 3.0)
ORIGIN_XYZ = (12.5, -30.25, 101.0)


def rotation(angle_deg: float) -> tuple[float, ...]:
    """An in-plane rotation combined with an x/y flip: a direction that is neither identity nor axis-swapped."""
    a = math.radians(angle_deg)
    return (-math.cos(a), math.sin(a), 0.0, -math.sin(a), -math.cos(a), 0.0, 0.0, 0.0, 1.0)


def make_sitk_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN_XYZ)
    image.SetDirection(rotation(20.0))
    return image


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_round_trip_keeps_array_and_header(tmp_path: Path, ending: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)  # (z, y, x)
    source = tmp_path / f"in{ending}"
    sitk.WriteImage(make_sitk_image(array), str(source))

    data, geometry = read_image(source)
    assert data.shape == (1, 5, 6, 7)
    np.testing.assert_array_equal(data[0], array)
    assert geometry.shape == (5, 6, 7)
    # spacing comes back in array order: (z, y, x) = reversed SimpleITK (x, y, z)
    np.testing.assert_allclose(geometry.spacing, (3.0, 0.7, 0.5), rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, ORIGIN_XYZ, rtol=1e-6)
    np.testing.assert_allclose(geometry.direction, rotation(20.0), atol=1e-5)

    target = tmp_path / f"out{ending}"
    write_image(target, data[0], geometry)
    original, rewritten = sitk.ReadImage(str(source)), sitk.ReadImage(str(target))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(rewritten), array)
    assert rewritten.GetSpacing() == original.GetSpacing()
    assert rewritten.GetOrigin() == original.GetOrigin()
    np.testing.assert_allclose(rewritten.GetDirection(), original.GetDirection(), atol=1e-7)
    assert not list(tmp_path.glob(".*tmp*")), "write_image left a temporary file behind"


def test_4d_nifti_is_read_as_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 1000, size=(3, 4, 5, 6)).astype(np.int16)  # (C, z, y, x)
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing((*SPACING_XYZ, 1.0))
    image.SetOrigin((*ORIGIN_XYZ, 0.0))
    direction = np.eye(4)
    direction[:3, :3] = np.reshape(rotation(-15.0), (3, 3))
    image.SetDirection(direction.ravel().tolist())
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(path))

    data, geometry = read_image(path)
    assert data.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(geometry.spacing, (3.0, 0.7, 0.5), rtol=1e-6)
    assert len(geometry.origin) == 3 and len(geometry.direction) == 9
    np.testing.assert_allclose(geometry.origin, ORIGIN_XYZ, rtol=1e-6)
    np.testing.assert_allclose(geometry.direction, rotation(-15.0), atol=1e-5)

    # one channel written back with that geometry is a 3D image on the same grid
    out = tmp_path / "channel1.nii.gz"
    write_image(out, data[1], geometry)
    written = sitk.ReadImage(str(out))
    assert written.GetDimension() == 3
    np.testing.assert_allclose(written.GetSpacing(), SPACING_XYZ, rtol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), array[1])


def test_2d_image_gets_a_leading_axis_and_is_written_back_2d(tmp_path: Path) -> None:
    array = np.arange(20, dtype=np.uint8).reshape(4, 5)  # (y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.7))
    image.SetOrigin((3.0, 4.0))
    path = tmp_path / "slice.mha"
    sitk.WriteImage(image, str(path))

    data, geometry = read_image(path)
    assert data.shape == (1, 1, 4, 5)
    assert geometry.shape == (1, 4, 5)
    assert geometry.spacing == (SPACING_2D_PLACEHOLDER, 0.7, 0.5)
    assert geometry.ndim_on_disk == 2

    out = tmp_path / "back.mha"
    write_image(out, data[0], geometry)
    written = sitk.ReadImage(str(out))
    assert written.GetDimension() == 2
    assert written.GetSpacing() == (0.5, 0.7)
    assert written.GetOrigin() == (3.0, 4.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), array)


def test_geometry_dict_round_trip() -> None:
    geometry = ImageGeometry((2, 3, 4), (3.0, 0.7, 0.5), ORIGIN_XYZ, rotation(5.0), 3)
    assert ImageGeometry.from_dict(geometry.to_dict()) == geometry


def test_label_written_as_uint8(tmp_path: Path) -> None:
    geometry = ImageGeometry((2, 3, 4), (3.0, 0.7, 0.5), ORIGIN_XYZ, rotation(5.0), 3)
    labels = np.zeros((2, 3, 4), dtype=np.int64)
    labels[1, 1, 1:3] = 2
    path = tmp_path / "seg.nii.gz"
    write_label(path, labels, geometry)
    written = sitk.ReadImage(str(path))
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SelfUNetError, match="not found"):
        read_image(tmp_path / "nothing.nii.gz")


def test_unsupported_ending_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(SelfUNetError, match="unsupported image format"):
        read_image(path)


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not a nifti file")
    with pytest.raises(SelfUNetError, match=r"broken\.nii\.gz"):
        read_image(path)


def test_strip_ending_handles_double_endings() -> None:
    assert strip_ending("dir/case_001.nii.gz") == "case_001"
    assert strip_ending("case.v2.mha") == "case.v2"
