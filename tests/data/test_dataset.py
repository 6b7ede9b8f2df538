"""Dataset layouts: MSD and nnU-Net v2 give the same cases; bad descriptors give useful errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selfunet.data.dataset import DatasetSpec, load_dataset, read_case_image, read_case_label
from selfunet.errors import SelfUNetError


def test_msd_and_nnunetv2_layouts_read_identically(
    demo_dataset: DatasetSpec, demo_dataset_nnunetv2: DatasetSpec
) -> None:
    msd, v2 = demo_dataset, demo_dataset_nnunetv2
    assert (msd.layout, v2.layout) == ("msd", "nnunetv2")
    assert msd.channel_names == v2.channel_names == ("MR-T1", "MR-T2")
    assert msd.labels == v2.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert [c.case_id for c in msd.training] == [c.case_id for c in v2.training]
    assert [c.case_id for c in msd.test] == [c.case_id for c in v2.test]
    assert all(len(c.images) == 2 for c in v2.training)
    for a, b in zip(msd.training + msd.test, v2.training + v2.test, strict=True):
        image_a, geo_a = read_case_image(msd, a)
        image_b, geo_b = read_case_image(v2, b)
        assert image_a.dtype == image_b.dtype == np.float32
        assert image_a.shape[0] == 2
        np.testing.assert_array_equal(image_a, image_b)
        assert geo_a.shape == geo_b.shape
        np.testing.assert_allclose(geo_a.spacing, geo_b.spacing, rtol=1e-6)
        np.testing.assert_allclose(geo_a.origin, geo_b.origin, atol=1e-4)
        np.testing.assert_allclose(geo_a.direction, geo_b.direction, atol=1e-5)
        if a.label is not None:
            label_a, _ = read_case_label(a)
            label_b, _ = read_case_label(b)
            np.testing.assert_array_equal(label_a, label_b)


def write_msd(root: Path, descriptor: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(descriptor))
    return root


MSD_OK = {
    "name": "Toy",
    "modality": {"0": "CT"},
    "labels": {"0": "background", "1": "liver"},
    "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
    "test": ["./imagesTs/b.nii.gz"],
}


def test_minimal_msd_descriptor_parses(tmp_path: Path) -> None:
    spec = load_dataset(write_msd(tmp_path / "ds", MSD_OK))
    assert spec.num_classes == 2 and spec.foreground_labels == (1,)
    assert spec.training[0].case_id == "a" and spec.test[0].case_id == "b"
    assert spec.training[0].label == (tmp_path / "ds" / "labelsTr" / "a.nii.gz").resolve()


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SelfUNetError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_missing_descriptor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    with pytest.raises(SelfUNetError, match=r"dataset\.json not found"):
        load_dataset(tmp_path / "ds")


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(SelfUNetError, match=r"dataset\.json: not valid JSON"):
        load_dataset(root)


def test_unknown_layout_says_which_key_is_missing(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "ds", {"name": "x", "labels": {"0": "background"}})
    with pytest.raises(SelfUNetError, match=r"modality.*channel_names"):
        load_dataset(root)


def test_labels_without_background_rejected(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "ds", {**MSD_OK, "labels": {"1": "liver"}})
    with pytest.raises(SelfUNetError, match="background as 0"):
        load_dataset(root)


def test_non_consecutive_labels_rejected(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "ds", {**MSD_OK, "labels": {"0": "background", "2": "tumour"}})
    with pytest.raises(SelfUNetError, match="consecutive"):
        load_dataset(root)


def test_training_entry_without_label_rejected(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "ds", {**MSD_OK, "training": [{"image": "./imagesTr/a.nii.gz"}]})
    with pytest.raises(SelfUNetError, match="training entry 0"):
        load_dataset(root)


def test_region_labels_without_class_order_rejected_with_explanation(tmp_path: Path) -> None:
    root = write_msd(
        tmp_path / "ds",
        {
            "channel_names": {"0": "T2"},
            "labels": {"background": 0, "whole": [1, 2]},
            "file_ending": ".nii.gz",
        },
    )
    with pytest.raises(SelfUNetError, match="regions_class_order"):
        load_dataset(root)


def test_channel_count_mismatch_names_the_case(demo_dataset: DatasetSpec, tmp_path: Path) -> None:
    raw = json.loads((demo_dataset.root / "dataset.json").read_text())
    raw["modality"] = {"0": "MR-T1", "1": "MR-T2", "2": "FLAIR"}
    raw["training"] = raw["training"][:1]
    raw["test"] = []
    root = write_msd(tmp_path / "ds", raw)
    for folder in ("imagesTr", "labelsTr"):  # the demo's files, linked in (entries stay inside the folder)
        (root / folder).symlink_to(demo_dataset.root / folder)
    spec = load_dataset(root)
    with pytest.raises(SelfUNetError, match=r"demo_000.*2 channel\(s\) found.*declares 3"):
        read_case_image(spec, spec.training[0])


@pytest.mark.parametrize("entry", ["../../elsewhere/x.nii.gz", "/elsewhere/x.nii.gz", "./imagesTr/../../x.nii.gz"])
def test_dataset_json_path_outside_the_folder_rejected(tmp_path: Path, entry: str) -> None:
    """A dataset.json entry may not make selfunet read a file outside the dataset folder."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.nii.gz").write_bytes(b"not read")
    root = write_msd(tmp_path / "a" / "b", {**MSD_OK, "training": [{"image": entry, "label": "./labelsTr/x.nii.gz"}]})
    with pytest.raises(SelfUNetError) as err:
        load_dataset(root)
    message = str(err.value)
    assert "training entry 0 (case 'x') 'image'" in message and "outside the dataset folder" in message
    assert entry in message and "relative to it" in message


def test_dataset_json_test_entry_outside_the_folder_rejected(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "d", {**MSD_OK, "test": ["./imagesTs/b.nii.gz", "/etc/passwd.nii.gz"]})
    with pytest.raises(SelfUNetError, match=r"test entry 1 \(case 'passwd'\): '/etc/passwd.nii.gz' points outside"):
        load_dataset(root)


def test_dataset_json_paths_inside_the_folder_still_accepted(tmp_path: Path) -> None:
    entry = {"image": "imagesTr/sub/../a.nii.gz", "label": "./labelsTr/a.nii.gz"}
    spec = load_dataset(write_msd(tmp_path / "d", {**MSD_OK, "training": [entry]}))
    assert spec.training[0].images[0] == (tmp_path / "d" / "imagesTr" / "a.nii.gz").resolve()


def test_selfunet_check_names_the_case_and_the_fix_for_an_outside_path(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selfunet.cli import app

    root = write_msd(tmp_path / "d", {**MSD_OK, "training": [
        {"image": "../../elsewhere/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]})
    result = CliRunner().invoke(app, ["check", str(root), "-p", "1"], terminal_width=300)
    assert result.exit_code == 1, result.output
    flat = " ".join(result.output.split())
    assert "case 'x'" in flat and "outside the dataset folder" in flat and "relative to it" in flat
