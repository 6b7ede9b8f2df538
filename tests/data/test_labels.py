"""Label declarations: regions (nnU-Net v2 form and the MSD extension) and the ignore label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selfunet.data.dataset import load_dataset
from selfunet.data.labels import LabelScheme, Region
from selfunet.errors import SelfUNetError


def _write(root: Path, descriptor: dict) -> Path:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(descriptor))
    return root


V2 = {"channel_names": {"0": "T1"}, "file_ending": ".nii.gz"}
MSD = {"modality": {"0": "MR"}, "training": [], "test": []}


def test_nnunetv2_regions_are_read_in_declared_order(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", {**V2, "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3],
                                                     "enhancing": 3}, "regions_class_order": [1, 2, 3]})
    spec = load_dataset(root)
    assert [r.name for r in spec.label_scheme.regions] == ["whole", "core", "enhancing"]
    assert [r.labels for r in spec.label_scheme.regions] == [[1, 2, 3], [2, 3], [3]]
    assert spec.labels == {0: "background", 1: "whole", 2: "core", 3: "enhancing"}
    assert spec.summary()["label_scheme"]["regions_class_order"] == [1, 2, 3]


def test_msd_regions_extension_is_read(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", {**MSD, "labels": {"0": "background", "1": "edema", "2": "core"},
                                    "regions": {"whole": [1, 2], "core": [2]}, "regions_class_order": [1, 2]})
    scheme = load_dataset(root).label_scheme
    assert scheme.has_regions and scheme.regions_class_order == [1, 2]


@pytest.mark.parametrize("descriptor, message", [
    ({"labels": {"background": 0, "a": [1, 2], "b": [2]}, "regions_class_order": [1]}, "2 regions"),
    ({"labels": {"background": 0, "a": [1, 2], "b": [2]}, "regions_class_order": [1, 1]}, "not one of"),
    ({"labels": {"background": 0, "a": [0, 1]}, "regions_class_order": [1]}, "neither 0"),
    ({"labels": {"background": 0, "ignore": 1, "a": 2}}, "highest value"),
    ({"labels": {"background": 0, "a": 1}, "regions_class_order": [1]}, "no label is a region"),
])
def test_bad_declarations_name_the_problem(tmp_path: Path, descriptor: dict, message: str) -> None:
    root = _write(tmp_path / "ds", {**V2, **descriptor})
    with pytest.raises(SelfUNetError, match=message):
        load_dataset(root)


def test_ignore_label_is_found_and_is_no_foreground_class(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", {**V2, "labels": {"background": 0, "organ": 1, "ignore": 2}})
    spec = load_dataset(root)
    assert spec.label_scheme.ignore_label == 2
    assert spec.foreground_labels == (1,)
    names, members = spec.label_scheme.evaluation_classes(spec.labels)
    assert names == {1: "organ"} and members == {1: (1,)}


def test_paint_follows_regions_class_order() -> None:
    scheme = LabelScheme(regions=[Region(name="whole", labels=[1, 2, 3]), Region(name="core", labels=[2, 3]),
                                  Region(name="enh", labels=[3])], regions_class_order=[1, 2, 3])
    probabilities = np.array([[0.9, 0.9, 0.9, 0.2], [0.1, 0.8, 0.7, 0.9], [0.0, 0.2, 0.6, 0.9]])
    # voxel 3: whole below threshold but inner regions above: the inner ones are painted anyway
    assert scheme.paint(probabilities).tolist() == [1, 2, 3, 3]
    masks = scheme.region_masks(np.array([0, 1, 2, 3]))
    assert masks.tolist() == [[False, True, True, True], [False, False, True, True], [False, False, False, True]]
