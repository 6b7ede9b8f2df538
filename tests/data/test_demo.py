"""The synthetic demo task: deterministic, readable, and shaped like real anisotropic MR data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.cropping import bounding_box, nonzero_mask
from selfunet.data.dataset import DatasetSpec, load_dataset, read_case_image, read_case_label
from selfunet.data.demo import MARKER, make_demo_dataset
from selfunet.errors import SelfUNetError


def read_all(spec: DatasetSpec) -> list[tuple]:
    cases = []
    for case in spec.training + spec.test:
        image, geometry = read_case_image(spec, case)
        label = read_case_label(case)[0] if case.label else None
        cases.append((case.case_id, image, geometry, label))
    return cases


def test_same_seed_gives_identical_data(tmp_path: Path) -> None:
    a = read_all(make_demo_dataset(tmp_path / "a", num_training=2, num_test=1, seed=3))
    b = read_all(make_demo_dataset(tmp_path / "b", num_training=2, num_test=1, seed=3))
    c = read_all(make_demo_dataset(tmp_path / "c", num_training=2, num_test=1, seed=4))
    for (id_a, img_a, geo_a, lab_a), (id_b, img_b, geo_b, lab_b) in zip(a, b, strict=True):
        assert id_a == id_b
        assert img_a.tobytes() == img_b.tobytes()
        assert geo_a == geo_b
        assert (lab_a is None and lab_b is None) or lab_a.tobytes() == lab_b.tobytes()
    assert a[0][1].shape != c[0][1].shape or not np.array_equal(a[0][1], c[0][1])


def test_layout_is_msd_with_two_channels_in_one_4d_file(demo_dataset: DatasetSpec) -> None:
    raw = json.loads((demo_dataset.root / "dataset.json").read_text())
    assert raw["numTraining"] == 6 and raw["numTest"] == 2
    assert raw["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert demo_dataset.layout == "msd"
    assert demo_dataset.channel_names == ("MR-T1", "MR-T2")
    assert [c.case_id for c in demo_dataset.training] == [f"demo_{i:03d}" for i in range(6)]
    assert [c.case_id for c in demo_dataset.test] == ["demo_100", "demo_101"]
    assert all(len(c.images) == 1 for c in demo_dataset.training + demo_dataset.test)


def test_cases_look_like_anisotropic_mr(demo_dataset: DatasetSpec) -> None:
    shapes, spacings = set(), set()
    for case in demo_dataset.training:
        image, geometry = read_case_image(demo_dataset, case)
        label, label_geometry = read_case_label(case)
        assert label_geometry == geometry
        assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}
        z, y, x = geometry.spacing
        assert 3.0 <= z <= 3.6 and 0.75 <= y <= 0.85 and y == pytest.approx(x)
        assert 20 <= geometry.shape[0] <= 28 and all(56 <= n <= 72 for n in geometry.shape[1:])
        shapes.add(geometry.shape)
        spacings.add(geometry.spacing)
        # a header that a writer must carry over: not the SimpleITK defaults
        assert any(abs(v) > 1 for v in geometry.origin)
        assert not np.allclose(np.reshape(geometry.direction, (3, 3)), np.eye(3))

        # zero border around the body: the non-zero box is strictly inside the volume
        body = nonzero_mask(image)
        box = bounding_box(body)
        assert np.prod([b - a for a, b in box]) < 0.9 * np.prod(geometry.shape)
        assert (image[:, ~body] == 0).all() and (image[:, body] != 0).all()
        assert (label[~body] == 0).all()

        organ, lesion = label == 1, label == 2
        # the lesion is small and enclosed by the organ
        assert lesion.sum() < 0.2 * organ.sum()
        assert (label[ndimage.binary_dilation(lesion)] > 0).all()
        # two contrasts: lesion dark in T1 and bright in T2 relative to the organ
        t1, t2 = image
        assert t1[lesion].mean() < t1[organ].mean()
        assert t2[lesion].mean() > 1.5 * t2[organ].mean()
        # noise: the organ is not a flat value
        assert t1[organ].std() > 3
    assert len(shapes) > 1 and len(spacings) > 1


def test_complete_demo_is_not_rewritten(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    make_demo_dataset(out, num_training=2, num_test=1)
    image = out / "imagesTr" / "demo_000.nii.gz"
    before = image.stat().st_mtime_ns
    make_demo_dataset(out, num_training=2, num_test=1)
    assert image.stat().st_mtime_ns == before


def test_changed_parameters_rewrite_and_drop_stale_cases(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    make_demo_dataset(out, num_training=3, num_test=1)
    spec = make_demo_dataset(out, num_training=2, num_test=0)
    assert [c.case_id for c in spec.training] == ["demo_000", "demo_001"]
    assert not (out / "imagesTr" / "demo_002.nii.gz").exists()
    assert not list((out / "imagesTs").iterdir())


def test_interrupted_run_is_not_trusted(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    make_demo_dataset(out, num_training=2, num_test=0)
    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "complete": False}))  # as a killed run leaves it
    (out / "labelsTr" / "demo_001.nii.gz").unlink()
    spec = make_demo_dataset(out, num_training=2, num_test=0)
    assert spec.training[1].label.is_file()
    assert json.loads((out / MARKER).read_text())["complete"] is True


def test_foreign_dataset_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "dataset.json").write_text("{}")
    with pytest.raises(SelfUNetError, match="not a selfunet demo"):
        make_demo_dataset(out, num_training=2, num_test=0)
    assert (out / "dataset.json").read_text() == "{}"


def test_cli_demo_data(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo-data", str(tmp_path / "d"), "--cases", "2", "--test-cases", "1"])
    assert result.exit_code == 0, result.output
    spec = load_dataset(tmp_path / "d")
    assert (len(spec.training), len(spec.test)) == (2, 1)
