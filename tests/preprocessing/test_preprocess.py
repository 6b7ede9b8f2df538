"""Preprocessing end to end on the demo task: files, contents, resume and parallelism."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.cropping import bounding_box, crop_to_bbox, nonzero_mask
from selfunet.data.dataset import DatasetSpec, read_case_image
from selfunet.errors import SelfUNetError
from selfunet.planning.fingerprint_types import Fingerprint
from selfunet.planning.plan import plan_experiment
from selfunet.planning.plan_types import Plan
from selfunet.preprocessing.preprocess import (
    PreprocessedCase,
    case_files,
    preprocess_image_for_inference,
    run_preprocess,
)
from selfunet.preprocessing.resample import resample_segmentation
from selfunet.workdir import WorkDir


@pytest.fixture(scope="module")
def demo_plan(demo_fingerprint: Fingerprint) -> Plan:
    return plan_experiment(demo_fingerprint)


def make_work(path: Path, fingerprint: Fingerprint, plan: Plan) -> Path:
    fingerprint.save(WorkDir(path).fingerprint)
    plan.save(WorkDir(path).plan)
    return path


@pytest.fixture(scope="module")
def serial_work(tmp_path_factory, demo_fingerprint, demo_plan) -> Path:
    """3d_fullres preprocessed in this process (read-only for the tests)."""
    work = make_work(tmp_path_factory.mktemp("serial"), demo_fingerprint, demo_plan)
    run_preprocess(work, ["3d_fullres"], processes=1)
    return work


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_every_case_has_its_files_with_the_documented_dtypes(serial_work, demo_dataset: DatasetSpec, demo_plan):
    folder = WorkDir(serial_work).preprocessed("3d_fullres")
    config = demo_plan.configurations["3d_fullres"]
    for case in demo_dataset.training:
        files = case_files(folder, case.case_id)
        data = np.load(files["data"], mmap_mode="r")
        seg = np.load(files["seg"], mmap_mode="r")
        props = PreprocessedCase.load(files["properties"])
        assert data.dtype == np.float32 and seg.dtype == np.int8
        assert data.shape == (demo_dataset.num_channels, *props.shape_after_resampling)
        assert seg.shape == (1, *props.shape_after_resampling)
        assert props.target_spacing == pytest.approx(config.spacing)
        assert props.transpose_forward == demo_plan.transpose_forward
        assert np.all(np.isfinite(data))
        assert set(np.unique(seg)) <= {-1, 0, 1, 2}
        assert props.classes_present == [int(v) for v in np.unique(seg) if v > 0]


def test_outside_of_the_nonzero_mask_is_minus_one(serial_work, demo_dataset: DatasetSpec, demo_plan):
    folder = WorkDir(serial_work).preprocessed("3d_fullres")
    case = demo_dataset.training[0]
    seg = np.load(case_files(folder, case.case_id)["seg"])[0]
    props = PreprocessedCase.load(case_files(folder, case.case_id)["properties"])
    image, _ = read_case_image(demo_dataset, case)
    mask = nonzero_mask(image)
    box = bounding_box(mask)
    assert box == props.crop_bbox
    inside = crop_to_bbox(mask, box).astype(np.int8).transpose(props.transpose_forward)
    spacing = [props.spacing[a] for a in props.transpose_forward]
    inside = resample_segmentation(inside, spacing, new_shape=props.shape_after_resampling)
    assert (seg == -1).sum() > 0
    agreement = np.mean((seg == -1) == (inside == 0))
    assert agreement > 0.99


def test_foreground_locations_lie_in_their_class(serial_work, demo_dataset: DatasetSpec):
    folder = WorkDir(serial_work).preprocessed("3d_fullres")
    for case in demo_dataset.training:
        files = case_files(folder, case.case_id)
        seg = np.load(files["seg"])[0]
        props = PreprocessedCase.load(files["properties"])
        with np.load(files["fg"]) as fg:
            assert sorted(fg.files) == [f"class_{k}" for k in props.classes_present]
            for key in fg.files:
                value = int(key.split("_")[1])
                coords = fg[key]
                count = int((seg == value).sum())
                assert coords.dtype == np.int32 and coords.shape[1] == 3
                assert len(coords) == max(min(10_000, count), math.ceil(0.01 * count))
                assert len(np.unique(coords, axis=0)) == len(coords)  # without replacement
                assert np.all(seg[tuple(coords.T)] == value)


def test_rerun_skips_finished_cases(tmp_path, demo_fingerprint, demo_plan):
    work = make_work(tmp_path, demo_fingerprint, demo_plan)
    run_preprocess(work, ["3d_fullres"], processes=1)
    folder = WorkDir(work).preprocessed("3d_fullres")
    case_mtimes = {k: v for k, v in _mtimes(folder).items() if k != "dataset_preprocessed.json"}
    assert run_preprocess(work, ["3d_fullres"], processes=1) == {"3d_fullres": []}
    after = {k: v for k, v in _mtimes(folder).items() if k != "dataset_preprocessed.json"}
    assert after == case_mtimes


def test_killed_run_leftovers_are_not_trusted(tmp_path, demo_fingerprint, demo_plan, serial_work, demo_dataset):
    """A run killed mid-case leaves a temp file and maybe arrays without the JSON marker."""
    work = make_work(tmp_path, demo_fingerprint, demo_plan)
    folder = WorkDir(work).preprocessed("3d_fullres")
    shutil.copytree(WorkDir(serial_work).preprocessed("3d_fullres"), folder)
    victim = demo_dataset.training[1].case_id
    files = case_files(folder, victim)
    files["properties"].unlink()
    files["data"].write_bytes(b"torn")  # as if a non-atomic writer had died here
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)  # a writer that is gone
    stale = folder / f".{victim}.npy.{dead_pid}.0123abcd.tmp"
    stale.write_bytes(b"half an array")
    live = folder / f".{victim}_seg.npy.{os.getppid()}.89abcdef.tmp"  # a live writer's temp file: not ours to delete
    live.write_bytes(b"being written")

    redone = run_preprocess(work, ["3d_fullres"], processes=1)
    assert redone == {"3d_fullres": [victim]}
    assert not stale.exists()
    assert live.exists()
    live.unlink()
    reference = case_files(WorkDir(serial_work).preprocessed("3d_fullres"), victim)
    np.testing.assert_array_equal(np.load(files["data"]), np.load(reference["data"]))
    assert PreprocessedCase.load(files["properties"]) == PreprocessedCase.load(reference["properties"])


def test_changed_plan_invalidates_cases(tmp_path, demo_fingerprint, demo_plan, serial_work):
    work = make_work(tmp_path, demo_fingerprint, demo_plan)
    shutil.copytree(WorkDir(serial_work).preprocessed("3d_fullres"), WorkDir(work).preprocessed("3d_fullres"))
    config = demo_plan.configurations["3d_fullres"]
    coarser = config.model_copy(update={"spacing": [s * 1.5 for s in config.spacing]})
    changed = demo_plan.model_copy(
        update={"configurations": {**demo_plan.configurations, "3d_fullres": coarser}}
    )
    changed.save(WorkDir(work).plan)
    redone = run_preprocess(work, ["3d_fullres"], processes=1)
    assert len(redone["3d_fullres"]) == len(demo_fingerprint.cases)


def test_parallel_equals_serial(tmp_path, demo_fingerprint, demo_plan, serial_work):
    work = make_work(tmp_path, demo_fingerprint, demo_plan)
    result = CliRunner().invoke(app, ["preprocess", str(work), "-c", "3d_fullres", "--processes", "2"])
    assert result.exit_code == 0, result.output
    ours = WorkDir(work).preprocessed("3d_fullres")
    theirs = WorkDir(serial_work).preprocessed("3d_fullres")
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names
    for name in names:
        if name.endswith(".npz"):
            with np.load(ours / name) as a, np.load(theirs / name) as b:
                assert a.files == b.files
                for key in a.files:
                    np.testing.assert_array_equal(a[key], b[key])
        else:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


def test_shared_data_identifiers_are_preprocessed_once(tmp_path, demo_fingerprint, demo_plan):
    work = make_work(tmp_path, demo_fingerprint, demo_plan)
    done = run_preprocess(work, None, processes=1)
    identifiers = {c.data_identifier for c in demo_plan.configurations.values()}
    assert set(done) == identifiers
    if "2d" in demo_plan.configurations:
        props = PreprocessedCase.load(WorkDir(work).preprocessed("2d") / f"{done['2d'][0]}.json")
        crop_axis0 = props.shape_after_crop[props.transpose_forward[0]]
        assert props.shape_after_resampling[0] == crop_axis0  # 2D: no resampling out of plane


def test_inference_preprocessing_matches_training_data(serial_work, demo_dataset, demo_plan):
    case = demo_dataset.training[2]
    image, geometry = read_case_image(demo_dataset, case)
    data, props = preprocess_image_for_inference(image, geometry, demo_plan, "3d_fullres", case.case_id)
    files = case_files(WorkDir(serial_work).preprocessed("3d_fullres"), case.case_id)
    np.testing.assert_array_equal(data, np.load(files["data"]))
    stored = PreprocessedCase.load(files["properties"])
    assert props.model_copy(update={"classes_present": stored.classes_present}) == stored


def test_unknown_configuration_rejected(tmp_path, demo_fingerprint, demo_plan):
    work = make_work(tmp_path, demo_fingerprint, demo_plan)
    with pytest.raises(SelfUNetError, match="not in the plan"):
        run_preprocess(work, ["3d_bogus"], processes=1)


def test_missing_plan_names_the_command(tmp_path):
    with pytest.raises(SelfUNetError, match="selfunet plan"):
        run_preprocess(tmp_path, None, processes=1)
