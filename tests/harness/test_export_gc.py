"""`harness export gc` without an engine: the build context, sockets, model tarball, the GPU switch.

The image is built, run and compared with `selfunet predict --selection` in
tests/docker/test_score_containers.py; here the context's files are checked on a work directory
whose checkpoints are placeholders (nothing here loads them). The test case comes from the dataset
named explicitly (``dataset=``): the work directory's fingerprint.json was written by a job.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from harness.challenge import gc_export as gc
from selfunet.errors import SelfUNetError
from selfunet.evaluation.ensemble import Selection
from selfunet.inference.postprocess import PostprocessingRule


@pytest.fixture
def work(tiny_work_template: Path, tmp_path: Path) -> Path:
    work = Path(shutil.copytree(tiny_work_template, tmp_path / "demo", ignore=shutil.ignore_patterns("preprocessed")))
    for fold in (0, 1):
        folder = work / "train" / "3d_fullres" / f"fold_{fold}"
        folder.mkdir(parents=True)
        (folder / "checkpoint_final.pt").write_bytes(b"placeholder weights")
    Selection(selected="3d_fullres", members=["3d_fullres"], postprocessing=PostprocessingRule(), candidates=[],
              labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz", num_cases=6).save(work / "selection.json")
    return work


def test_context_has_the_template_scripts_platform_and_socket_labels(work: Path, demo_root: Path,
                                                                      tmp_path: Path) -> None:
    out = gc.export_gc(work, tmp_path / "gc", dataset=demo_root, image="selfunet:latest")
    for script in gc.SCRIPTS:
        assert (out / script).stat().st_mode & stat.S_IXUSR, script
    assert not any((out / name).exists() for name in ("build.sh", "test.sh", "save.sh"))
    dockerfile = (out / "Dockerfile").read_text()
    assert "FROM --platform=linux/amd64 selfunet:latest" in dockerfile
    assert "COPY model /opt/algorithm/model" in dockerfile
    assert 'org.selfunet.gc.inputs="image"' in dockerfile and 'org.selfunet.gc.output="segmentation"' in dockerfile
    build = (out / "do_build.sh").read_text()
    assert "PLATFORM=linux/amd64" in build and '--platform "$PLATFORM"' in build
    assert "nvidia-smi" in (out / "do_test_run.sh").read_text() and "--gpus all" in (out / "do_test_run.sh").read_text()
    assert "export-gc" not in (out / "inference.py").read_text() and "export-gc" not in gc.__doc__
    # one socket, two channels: one 4D image
    (image,) = sorted((out / "test" / "input" / "images" / "image").glob("*.mha"))
    import SimpleITK as sitk

    assert sitk.ReadImage(str(image)).GetDimension() == 4
    config = json.loads((out / "gc.json").read_text())
    assert config["model_in_image"] and config["test_case"]["id"] and config["platform"] == "linux/amd64"


def test_one_socket_per_channel_and_a_model_tarball(work: Path, demo_root: Path, tmp_path: Path) -> None:
    out = gc.export_gc(work, tmp_path / "gc", dataset=demo_root, input_slugs=["t1", "t2"], model_tarball=True)
    import SimpleITK as sitk

    for slug in ("t1", "t2"):
        (image,) = sorted((out / "test" / "input" / "images" / slug).glob("*.mha"))
        assert sitk.ReadImage(str(image)).GetDimension() == 3
    assert "COPY model" not in (out / "Dockerfile").read_text()
    assert "model" in (out / ".dockerignore").read_text().split()
    script = (out / "do_test_run.sh").read_text()
    assert "MODEL_TARBALL=1" in script and f"MODEL_MOUNT={gc.MODEL_MOUNT}" in script
    assert "model.tar.gz" in (out / "do_save.sh").read_text()
    with tarfile.open(out / "model.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"plan.json", "selection.json", "train/3d_fullres/fold_0/checkpoint_final.pt"} <= names


def test_socket_count_must_be_one_or_the_channel_count(work: Path, demo_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SelfUNetError, match="one per channel"):
        gc.export_gc(work, tmp_path / "gc", dataset=demo_root, input_slugs=["a", "b", "c"])


def test_the_phase_inputs_json_lays_out_the_test_case(work: Path, demo_root: Path, tmp_path: Path) -> None:
    phase = tmp_path / "inputs.json"
    phase.write_text(json.dumps([{"interface": {"slug": "mr", "kind": "Image", "relative_path": "images/mr-scan"},
                                  "image": {"name": "x.mha"}}]))
    out = gc.export_gc(work, tmp_path / "gc", dataset=demo_root, inputs_json=phase)
    assert (out / "test" / "input" / "inputs.json").read_text() == phase.read_text()
    assert len(list((out / "test" / "input" / "images" / "mr-scan").glob("*.mha"))) == 1
    assert json.loads((out / "gc.json").read_text())["input_slugs"] == ["mr"]
    with pytest.raises(SelfUNetError, match=r"inputs\.json"):
        gc.export_gc(work, tmp_path / "gc2", dataset=demo_root, inputs_json=tmp_path / "missing.json")


def test_gpu_detection_follows_a_working_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not gc.host_has_gpu()
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: fake'\n")
    fake.chmod(0o755)
    assert gc.host_has_gpu()
    fake.write_text("#!/bin/sh\nexit 9\n")  # a driver that does not answer: no --gpus
    assert not gc.host_has_gpu()
    assert os.environ["PATH"] == str(tmp_path)
