"""The dataset fingerprint: cropping, counts, intensity statistics, sampling, parallelism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.cropping import bounding_box, crop_to_bbox, nonzero_mask
from selfunet.data.dataset import DatasetSpec, load_dataset
from selfunet.errors import SelfUNetError
from selfunet.planning.fingerprint import compute_fingerprint
from selfunet.planning.fingerprint_types import Fingerprint

SPACING_XYZ = (0.8, 0.9, 2.5)


def test_nonzero_mask_fills_enclosed_holes() -> None:
    image = np.zeros((2, 8, 9, 10), dtype=np.float32)
    image[0, 2:6, 3:8, 1:9] = 5.0
    image[0, 3:5, 4:7, 3:6] = 0.0  # an enclosed zero-valued cavity
    image[1, 7, 8, 9] = -1.0  # a lone voxel in the other channel counts too
    mask = nonzero_mask(image)
    assert mask[3:5, 4:7, 3:6].all()
    assert mask.sum() == 4 * 5 * 8 + 1
    assert bounding_box(mask) == [[2, 8], [3, 9], [1, 10]]


def test_bounding_box_is_half_open_and_crop_keeps_leading_axes() -> None:
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[1, 2, 3] = mask[3, 4, 3] = True
    bbox = bounding_box(mask)
    assert bbox == [[1, 4], [2, 5], [3, 4]]
    array = np.arange(2 * 5 * 6 * 7).reshape(2, 5, 6, 7)
    cropped = crop_to_bbox(array, bbox)
    assert cropped.shape == (2, 3, 3, 1)
    np.testing.assert_array_equal(cropped, array[:, 1:4, 2:5, 3:4])
    assert crop_to_bbox(array[0], bbox).shape == (3, 3, 1)


def test_empty_mask_keeps_the_whole_image() -> None:
    assert bounding_box(np.zeros((3, 4, 5), dtype=bool)) == [[0, 3], [0, 4], [0, 5]]


def write_case(root: Path, case_id: str, image: np.ndarray, label: np.ndarray) -> None:
    """One nnU-Net v2 case: one 3D file per channel, ``image`` is ``(C, z, y, x)``."""
    for c, channel in enumerate(image):
        itk = sitk.GetImageFromArray(channel)
        itk.SetSpacing(SPACING_XYZ)
        sitk.WriteImage(itk, str(root / "imagesTr" / f"{case_id}_{c:04d}.nii.gz"))
    itk = sitk.GetImageFromArray(label.astype(np.uint8))
    itk.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(itk, str(root / "labelsTr" / f"{case_id}.nii.gz"))


def make_known_dataset(root: Path) -> tuple[DatasetSpec, list[np.ndarray], list[np.ndarray]]:
    """Two cases whose crop boxes, counts and foreground intensities are known by construction."""
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT", "1": "noNorm"},
                "labels": {"background": 0, "a": 1, "b": 2},
                "file_ending": ".nii.gz",
            }
        )
    )
    rng = np.random.default_rng(7)
    images, labels = [], []
    layouts = [
        ((10, 12, 14), (slice(2, 9), slice(1, 11), slice(3, 14))),
        ((8, 9, 10), (slice(0, 8), slice(2, 7), slice(1, 5))),
    ]
    for case, (shape, box) in enumerate(layouts):
        image = np.zeros((2, *shape), dtype=np.float32)
        image[0][box] = rng.uniform(-100, 300, size=image[0][box].shape).round()
        image[0][box][image[0][box] == 0] = 1.0
        image[1][box] = rng.normal(5, 2, size=image[1][box].shape)
        label = np.zeros(shape, dtype=np.uint8)
        inner = tuple(slice(s.start + 1, s.stop - 1) for s in box)
        label[inner] = 1
        label[tuple(slice(s.start + 1, s.start + 3) for s in box)] = 2
        write_case(root, f"case_{case}", image, label)
        images.append(image)
        labels.append(label)
    return load_dataset(root), images, labels


def test_fingerprint_matches_a_constructed_case(tmp_path: Path) -> None:
    dataset, images, labels = make_known_dataset(tmp_path / "ds")
    fp = compute_fingerprint(dataset, processes=1)

    assert [c.case_id for c in fp.cases] == ["case_0", "case_1"]
    assert fp.cases[0].shape_before_crop == [10, 12, 14]
    assert fp.cases[0].crop_bbox == [[2, 9], [1, 11], [3, 14]]
    assert fp.cases[0].shape_after_crop == [7, 10, 11]
    assert fp.cases[1].crop_bbox == [[0, 8], [2, 7], [1, 5]]
    assert fp.cases[0].spacing == pytest.approx(tuple(reversed(SPACING_XYZ)), rel=1e-6)
    for case, label in zip(fp.cases, labels, strict=True):
        counts = np.bincount(label.ravel(), minlength=3)
        outside = label.size - int(np.prod(case.shape_after_crop))
        assert case.label_voxel_counts == {"0": int(counts[0]) - outside, "1": int(counts[1]), "2": int(counts[2])}

    relative = [7 * 10 * 11 / (10 * 12 * 14), 8 * 5 * 4 / (8 * 9 * 10)]
    assert fp.median_relative_size_after_crop == pytest.approx(np.median(relative))
    for channel in range(2):
        per_case = [img[channel][lab > 0].astype(np.float64) for img, lab in zip(images, labels, strict=True)]
        values = np.concatenate(per_case)
        # every case weighs the same (as the reference's equal per-case sampling): replicating each
        # case's voxels by the other case's count gives the same distribution with plain statistics
        equal = np.concatenate([np.tile(per_case[0], per_case[1].size), np.tile(per_case[1], per_case[0].size)])
        stats = fp.intensity[channel]
        assert stats.modality == ("CT", "noNorm")[channel]
        assert stats.num_samples == values.size
        assert stats.mean == pytest.approx(np.mean([v.mean() for v in per_case]), rel=1e-9)
        assert stats.mean == pytest.approx(equal.mean(), rel=1e-9)
        assert stats.std == pytest.approx(equal.std(), rel=1e-9)
        assert (stats.min, stats.max) == (pytest.approx(values.min()), pytest.approx(values.max()))
        spread = values.max() - values.min()
        for q, got in ((50.0, stats.median), (0.5, stats.percentile_00_5), (99.5, stats.percentile_99_5)):
            assert got == pytest.approx(np.percentile(equal, q), abs=0.05 * spread)


def test_large_case_does_not_dominate_the_intensity_statistics(tmp_path: Path) -> None:
    """Two cases, one with 8x the foreground of the other: the mean is the mean of the case means."""
    from selfunet.data.io import ImageGeometry, write_image

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    geometry = ImageGeometry(shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                             direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    training = []
    for name, size, value in (("big", 8, 100.0), ("small", 4, 300.0)):
        image = np.full((8, 8, 8), 1.0, dtype=np.float32)
        label = np.zeros((8, 8, 8), dtype=np.uint8)
        label[:size, :size, :size] = 1
        image[label > 0] = value
        write_image(root / "imagesTr" / f"{name}.nii.gz", image, geometry)
        write_image(root / "labelsTr" / f"{name}.nii.gz", label, geometry)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "weights", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "thing"},
        "training": training, "test": [],
    }))
    fp = compute_fingerprint(load_dataset(root), processes=1)
    assert fp.intensity[0].mean == pytest.approx(200.0)
    assert fp.intensity[0].std == pytest.approx(100.0)


def test_one_and_two_processes_agree(demo_dataset: DatasetSpec) -> None:
    # 600 over 6 cases: every case is subsampled, which is where scheduling could leak in
    serial = compute_fingerprint(demo_dataset, processes=1, max_foreground_samples=600)
    parallel = compute_fingerprint(demo_dataset, processes=2, max_foreground_samples=600, pool_min_bytes=0)
    assert serial.model_dump() == parallel.model_dump()


def test_sampling_bound_is_respected_and_seeded(demo_dataset: DatasetSpec, demo_fingerprint: Fingerprint) -> None:
    bound = 120  # 6 cases -> at most 20 voxels each; every demo case has far more foreground
    sampled = compute_fingerprint(demo_dataset, processes=1, max_foreground_samples=bound)
    assert all(stats.num_samples == bound for stats in sampled.intensity)
    assert sampled.max_foreground_samples == bound
    full = demo_fingerprint.intensity[0]
    assert full.num_samples > 10 * bound
    assert full.min <= sampled.intensity[0].min <= sampled.intensity[0].max <= full.max
    # shapes and counts never depend on the sampling
    assert sampled.cases == demo_fingerprint.cases
    again = compute_fingerprint(demo_dataset, processes=1, max_foreground_samples=bound)
    other_seed = compute_fingerprint(demo_dataset, processes=1, max_foreground_samples=bound, seed=99)
    assert again.intensity == sampled.intensity
    assert other_seed.intensity != sampled.intensity


def test_demo_fingerprint_reflects_the_demo_design(demo_fingerprint: Fingerprint) -> None:
    assert demo_fingerprint.median_relative_size_after_crop < 0.75  # zero border: cropping matters
    for case in demo_fingerprint.cases:
        assert case.spacing[0] > 3 * case.spacing[1]
        counts = case.label_voxel_counts
        assert 0 < counts["2"] < counts["1"] < counts["0"]
    t1, t2 = demo_fingerprint.intensity
    assert t1.modality == "MR-T1" and t2.modality == "MR-T2"
    assert t1.percentile_00_5 < t1.median < t1.percentile_99_5


def test_label_image_shape_mismatch_names_the_case(tmp_path: Path) -> None:
    dataset, _, _ = make_known_dataset(tmp_path / "ds")
    itk = sitk.GetImageFromArray(np.zeros((3, 3, 3), dtype=np.uint8))
    sitk.WriteImage(itk, str(tmp_path / "ds" / "labelsTr" / "case_1.nii.gz"))
    with pytest.raises(SelfUNetError, match=r"case 'case_1'.*shape"):
        compute_fingerprint(dataset, processes=1)


def test_undeclared_label_value_rejected(tmp_path: Path) -> None:
    dataset, images, labels = make_known_dataset(tmp_path / "ds")
    labels[0][3, 3, 4] = 7
    write_case(tmp_path / "ds", "case_0", images[0], labels[0])
    with pytest.raises(SelfUNetError, match=r"case 'case_0'.*\[7\]"):
        compute_fingerprint(dataset, processes=1)


def test_unreadable_case_names_the_file(tmp_path: Path) -> None:
    dataset, _, _ = make_known_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "imagesTr" / "case_0_0001.nii.gz").write_bytes(b"garbage")
    with pytest.raises(SelfUNetError, match=r"case_0_0001\.nii\.gz"):
        compute_fingerprint(dataset, processes=2, pool_min_bytes=0)  # the error crosses processes intact


def test_cli_writes_a_valid_fingerprint(
    demo_dataset: DatasetSpec, demo_fingerprint: Fingerprint, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    result = CliRunner().invoke(app, ["fingerprint", str(demo_dataset.root), "--work", str(work), "-p", "1"])
    assert result.exit_code == 0, result.output
    loaded = Fingerprint.load(work / "fingerprint.json")
    assert loaded == demo_fingerprint
    assert not [p for p in work.iterdir() if p.name != "fingerprint.json"], "temporary files left behind"


def test_cli_reports_a_bad_dataset_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fingerprint", str(tmp_path / "missing"), "--work", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "not found" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
