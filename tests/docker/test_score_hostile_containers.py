"""`harness score` of hostile algorithm containers on a real engine: each one is a failure with its reason.

tests/docker/hostile_algorithm (a shell script on the local base image, no Python) writes its
``/output`` the way a participant who wants to win without segmenting would: the label map as a
symbolic link to the host path of the reference label, or a MetaImage header whose voxel data is a
raw file on the host holding the reference's voxels; a third image carries an input-socket label
that climbs out of the scores folder. Before the harness read outputs defensively, the first two
scored Dice 1.0 and the third deleted ``<host path>/<case id>``. The same attacks without an
engine, and more of them: tests/harness/test_score_hostile.py.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from harness.challenge.outputs import REFUSED
from harness.challenge.score import parse_submission, score_task
from harness.tasks.descriptor import TaskDescriptor

pytestmark = [pytest.mark.docker]

HERE = Path(__file__).resolve().parent
BASE = "selfunet-base:bookworm"
#: tags of this run (the engine may be shared with another test run at the same time)
HOSTILE = f"selfunet-test-hostile-{os.getpid()}"
CLIMB = "../../../../victim"


def _mha_header(reference: Path, data_file: Path) -> str:
    """A MetaImage header on the reference's grid whose voxels are ``data_file`` (raw uint8)."""
    image = sitk.ReadImage(str(reference))
    direction = " ".join(f"{v:g}" for v in np.asarray(image.GetDirection()).reshape(3, 3).T.ravel())
    return ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = False\nTransformMatrix = {direction}\nOffset = {' '.join(map(str, image.GetOrigin()))}\n"
            f"ElementSpacing = {' '.join(map(str, image.GetSpacing()))}\n"
            f"DimSize = {' '.join(map(str, image.GetSize()))}\nElementType = MET_UCHAR\n"
            f"ElementDataFile = {data_file}\n")


@pytest.fixture(scope="module")
def task(demo_root: Path) -> TaskDescriptor:
    return TaskDescriptor.model_validate({"name": "demo", "dataset": str(demo_root),
                                          "test_labels": str(demo_root / "labelsTs"),
                                          "scoring": {"case_timeout_s": 60, "cpus": 1, "memory_gb": 0.5}})


@pytest.fixture(scope="module")
def hostile_images(engine, task, tmp_path_factory) -> dict[str, str]:
    """One tag per attack, built offline from the local base image; removed afterwards."""
    import docker.errors

    try:
        engine.images.get(BASE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{BASE} missing: run .ci/base-image.sh")
    reference = task.test_labels / "demo_100.nii.gz"
    host = tmp_path_factory.mktemp("host")
    raw = host / "reference.raw"  # the reference's voxels, where a reader following the header finds them
    raw.write_bytes(sitk.GetArrayFromImage(sitk.ReadImage(str(reference))).astype(np.uint8).tobytes())
    cheat = sitk.ReadImage(str(_write(host / "check.mha", _mha_header(reference, raw))))
    assert (sitk.GetArrayFromImage(cheat) == sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))).all()
    context = tmp_path_factory.mktemp("hostile")
    for name in ("Dockerfile", "run.sh"):
        shutil.copy(HERE / "hostile_algorithm" / name, context / name)
    _write(context / "output.mha", _mha_header(reference, raw))
    tags = {}
    for mode, args in (("symlink", {"TARGET": str(reference)}), ("external", {}),
                       ("slug", {"INPUTS_SLUG": CLIMB})):
        tags[mode] = f"{HOSTILE}:{mode}"
        engine.images.build(path=str(context), tag=tags[mode], buildargs={"MODE": mode, "BASE_IMAGE": BASE, **args},
                            network_mode="none", rm=True, pull=False)
    yield tags
    for tag in tags.values():
        engine.images.remove(tag, force=True)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_hostile_containers_are_scored_as_failures_with_their_reasons(engine, hostile_images, task, tmp_path) -> None:
    victim = tmp_path / "victim"  # where the climbing slug pointed: results/demo/scores/.inputs/<slug>/<case>
    for case in ("demo_100", "demo_101"):
        (victim / case).mkdir(parents=True)
        (victim / case / "precious.txt").write_text("keep me")
    assert (tmp_path / "results" / "demo" / "scores" / ".inputs" / CLIMB).resolve() == victim.resolve()
    started = time.perf_counter()
    out = score_task(task, [parse_submission(f"{mode}={tag}") for mode, tag in hostile_images.items()],
                     tmp_path / "work", tmp_path / "results", selfunet=False, client=engine)
    wall = time.perf_counter() - started
    expected = {"symlink": "symlink: /output/images/segmentation/output.nii.gz is a symbolic link",
                "external": "external data file: /output/images/segmentation/output.mha: ElementDataFile",
                "slug": "socket slug"}
    for mode, words in expected.items():
        for result in out[mode]:
            assert result.status == REFUSED and words in result.reason, (mode, result)
            assert set(result.dice.values()) == {0.0}
    assert str(task.test_labels / "demo_100.nii.gz") in out["symlink"][0].reason  # the link's target, named
    assert all((victim / case / "precious.txt").read_text() == "keep me" for case in ("demo_100", "demo_101"))
    board = (tmp_path / "results" / "demo" / "scores" / "leaderboard.md").read_text()
    assert all(f"| {mode} | 2 | 2 | 0.0000 |" in board for mode in expected), board
    assert not engine.containers.list(all=True, filters={"label": "selfunet.algorithm"})
    print(f"three hostile containers scored as failures in {wall:.1f} s")
    for mode in expected:
        print(f"  {mode}: {out[mode][0].status}: {out[mode][0].reason}")
