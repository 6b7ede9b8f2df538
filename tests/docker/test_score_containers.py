"""`harness score` and `harness export gc` on a real engine, with real algorithm containers.

Two algorithm images: our own model exported with `harness export gc`, and an independent one
(tests/docker/threshold_algorithm: the stdlib and SimpleITK on the local base image, no selfunet)
whose build argument MODE bakes in a crash, a hang, a missing output or a wrong voxel grid. The
model is the tiny demo plan trained for a few iterations (it finds the organ), so the per-case
Dice compared between `selfunet predict --selection` and the exported container is not trivially 0.
Both predict without mirror test-time augmentation (8 times fewer network passes on a CPU).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.challenge import gc_export as gc
from harness.challenge.score import SELFUNET, ScoreOptions, parse_submission, score_task, with_models
from harness.tasks.descriptor import TaskDescriptor

pytestmark = [pytest.mark.docker]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BASE = "selfunet-base:bookworm"
#: algorithm image tags of this run (the engine may be shared with another test run at the same time)
OURS = f"selfunet-gc-score-test-{os.getpid()}"
THRESHOLD = "selfunet-test-threshold"
MODES = ("ok", "crash", "sleep", "oom", "missing", "wrong-geometry")


def _simpleitk_wheel(dest: Path) -> None:
    """SimpleITK for the base's Python 3.11 from the project build's wheelhouse, else pip download."""
    found = sorted((REPO / "build" / "wheelhouse").glob("[sS]imple[iI][tT][kK]-*.whl"))
    if found:
        shutil.copy(found[-1], dest)
        return
    import SimpleITK

    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.11", "--platform", "manylinux2014_x86_64", "-d", str(dest),
                    f"SimpleITK=={SimpleITK.Version.VersionString()}"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def threshold_images(engine, tmp_path_factory) -> dict[str, str]:
    import docker.errors

    try:
        engine.images.get(BASE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{BASE} missing: run .ci/base-image.sh")
    context = tmp_path_factory.mktemp("threshold")
    for name in ("Dockerfile", "algorithm.py"):
        shutil.copy(HERE / "threshold_algorithm" / name, context / name)
    (context / "wheels").mkdir()
    _simpleitk_wheel(context / "wheels")
    tags = {}
    for mode in MODES:
        tag = f"{THRESHOLD}:{mode}"
        engine.images.build(path=str(context), tag=tag, buildargs={"MODE": mode, "BASE_IMAGE": BASE},
                            network_mode="none", rm=True, pull=False)
        tags[mode] = tag
    return tags


@pytest.fixture(scope="module")
def trained(tiny_work_template: Path, demo_root: Path, tmp_path_factory) -> Path:
    """The tiny demo plan trained briefly (2 folds), selected, with selection.json."""
    from selfunet.pipeline import RunOptions, run_pipeline
    from selfunet.training.budgets import budget_config

    work = Path(shutil.copytree(tiny_work_template, tmp_path_factory.mktemp("score") / "demo"))
    config = budget_config("ci", epochs=4, iterations_per_epoch=10, validation_iterations=1, num_folds=2)
    run_pipeline(demo_root, work, RunOptions(train=config, processes=1, predict_test=False))
    assert (work / "selection.json").is_file()
    return work


@pytest.fixture
def placeholder_work(tiny_work_template: Path, tmp_path: Path) -> Path:
    """A work directory with a selection and placeholder checkpoints: enough to export, not to predict."""
    from selfunet.evaluation.ensemble import Selection
    from selfunet.inference.postprocess import PostprocessingRule

    work = Path(shutil.copytree(tiny_work_template, tmp_path / "demo", ignore=shutil.ignore_patterns("preprocessed")))
    for fold in (0, 1):
        (work / "train" / "3d_fullres" / f"fold_{fold}").mkdir(parents=True)
        (work / "train" / "3d_fullres" / f"fold_{fold}" / "checkpoint_final.pt").write_bytes(b"placeholder")
    Selection(selected="3d_fullres", members=["3d_fullres"], postprocessing=PostprocessingRule(), candidates=[],
              labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz", num_cases=6).save(work / "selection.json")
    return work


@pytest.fixture(scope="module")
def task(demo_root: Path) -> TaskDescriptor:
    return TaskDescriptor.model_validate({"name": "demo", "dataset": str(demo_root),
                                          "test_labels": str(demo_root / "labelsTs"),
                                          "scoring": {"case_timeout_s": 180, "cpus": 2}})


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _dice(rows: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    return {(r["case"], r["class"]): r["dice"] for r in rows}


def test_exported_model_scores_like_selfunet_predict_beside_an_independent_container(
        engine, project_image, threshold_images, trained, task, tmp_path) -> None:
    context = gc.export_gc(trained, tmp_path / "gc", image=project_image, tag=f"{OURS}:latest",
                           mirroring=False, dataset=task.dataset)
    for name in ("Dockerfile", "inference.py", "gc.json", "do_build.sh", "do_test_run.sh", "do_save.sh",
                 "model/plan.json", "model/selection.json", "test/input/inputs.json"):
        assert (context / name).is_file(), name
    dockerfile = (context / "Dockerfile").read_text()
    assert "FROM --platform=linux/amd64" in dockerfile and "COPY model" in dockerfile
    assert "export-gc" not in (context / "inference.py").read_text()
    checked = gc.test_container(context, client=engine)  # `harness export gc --test`
    assert checked["agrees"] and checked["architecture"] == "amd64" and checked["user"] not in ("", "root")
    assert checked["input_slugs"] == ["image"]
    # the platform template's test script, for real: runs it and compares with test/expected
    run = subprocess.run(["bash", str(context / "do_test_run.sh")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "output agrees with selfunet predict: True" in run.stdout, run.stdout + run.stderr

    results = tmp_path / "results"
    started = time.perf_counter()
    out = score_task(task, [parse_submission(f"ours={OURS}:latest"),
                            parse_submission(f"threshold={threshold_images['ok']}")], trained, results,
                     ScoreOptions(selfunet_mirroring=False))
    wall = time.perf_counter() - started
    scores = results / "demo" / "scores"
    ours, reference = _csv(scores / "ours.csv"), _csv(scores / f"{SELFUNET}.csv")
    assert {r["status"] for r in ours + reference} == {"ok"}
    # the container's per-case Dice = `selfunet predict --selection`'s, up to voxels at float ties
    assert _dice(ours).keys() == _dice(reference).keys()
    assert all(abs(float(v) - float(_dice(reference)[k])) < 1e-3 for k, v in _dice(ours).items())
    assert max(float(r["dice"]) for r in reference if r["class"] == "organ") > 0.3
    threshold = _csv(scores / "threshold.csv")
    assert {r["status"] for r in threshold} == {"ok"}
    assert min(float(r["dice"]) for r in threshold if r["class"] == "organ") > 0.5
    assert json.loads((scores / "ours.json").read_text())["sockets"] == {"inputs": ["image"], "output": "segmentation"}
    # export --test and score agree on the exported test case, up to voxels at float ties
    import SimpleITK as sitk

    case = json.loads((context / "gc.json").read_text())["test_case"]["id"]
    scored = sitk.GetArrayFromImage(sitk.ReadImage(str(scores / "predictions" / "ours" / f"{case}.mha")))
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(next((context / "test" / "expected").iterdir()))))
    assert scored.shape == expected.shape and (scored != expected).sum() <= gc.AGREEMENT_FRACTION * expected.size
    board = {r["submission"]: r for r in _csv(scores / "leaderboard.csv")}
    assert set(board) == {"ours", "threshold", SELFUNET}
    per_case = ", ".join(f"{n} {float(r['seconds_per_case']):.1f} s" for n, r in board.items())
    print(f"scoring {len(out['ours'])} demo test cases with two containers and selfunet's model: {wall:.1f} s "
          f"(per case: {per_case})")
    engine.images.remove(f"{OURS}:latest", force=True)


def test_socket_per_channel_and_model_tarball_with_the_phase_inputs_json(
        engine, project_image, threshold_images, trained, task, tmp_path) -> None:
    phase = tmp_path / "inputs.json"
    phase.write_text(json.dumps([
        {"interface": {"slug": "t1-mri", "kind": "Image", "super_kind": "Image", "relative_path": "images/t1-mri"},
         "image": {"name": "a.mha"}},
        {"interface": {"slug": "t2-mri", "kind": "Image", "super_kind": "Image", "relative_path": "images/t2-mri"},
         "image": {"name": "b.mha"}}]))
    context = gc.export_gc(trained, tmp_path / "gc", image=project_image, tag=f"{OURS}-sockets:latest",
                        model_tarball=True, inputs_json=phase, mirroring=False, dataset=task.dataset)
    assert (context / "test" / "input" / "inputs.json").read_text() == phase.read_text()
    assert [p.parent.name for p in sorted((context / "test" / "input" / "images").glob("*/*.mha"))] == [
        "t1-mri", "t2-mri"]
    assert "COPY model" not in (context / "Dockerfile").read_text()
    assert "model" in (context / ".dockerignore").read_text().split()
    import tarfile

    with tarfile.open(context / "model.tar.gz") as tar:
        names = tar.getnames()
    assert "selection.json" in names and any(n.endswith("checkpoint_final.pt") for n in names)
    checked = gc.test_container(context, client=engine)  # model mounted at /opt/ml/model
    assert checked["agrees"] and checked["input_slugs"] == ["t1-mri", "t2-mri"] and not checked["model_in_image"]
    # the same image through `harness score`, its model tarball mounted at /opt/ml/model as the platform does
    # (the image carries no weights: without the mount every case would crash)
    subs = with_models([parse_submission(f"ours={OURS}-sockets:latest")], [f"ours={context / 'model.tar.gz'}"])
    ours = score_task(task, subs, trained, tmp_path / "r-model", ScoreOptions(), selfunet=False)["ours"]
    assert {r.status for r in ours} == {"ok"} and max(r.dice[1] for r in ours) > 0.3, ours
    record = json.loads((tmp_path / "r-model" / "demo" / "scores" / "ours.json").read_text())
    assert record["model"]["mounted_at"] == "/opt/ml/model" and len(record["model"]["sha256"]) == 64
    engine.images.remove(f"{OURS}-sockets:latest", force=True)
    # the independent container with one socket per channel, through `harness score`
    out = score_task(task, [parse_submission(f"threshold={threshold_images['ok']}")], trained, tmp_path / "r",
                     ScoreOptions(input_slugs=["t1", "t2"]), selfunet=False)
    assert {r.status for r in out["threshold"]} == {"ok"} and min(r.dice[1] for r in out["threshold"]) > 0.5


def test_failing_cases_are_recorded_scored_as_the_worst_case_and_scoring_goes_on(
        engine, threshold_images, task, tmp_path) -> None:
    names = ["crash", "sleep", "oom", "missing", "wrong-geometry", "ok"]
    subs = [parse_submission(f"{n}={threshold_images[n]}") for n in names]
    out = score_task(task, subs, tmp_path / "work", tmp_path / "results",
                     ScoreOptions(case_timeout_s=6, memory_gb=0.5), selfunet=False)
    expected = {"crash": "crash", "sleep": "timeout", "oom": "oom", "missing": "missing",
                "wrong-geometry": "wrong-geometry", "ok": "ok"}
    for name, status in expected.items():
        assert [r.status for r in out[name]] == [status, status], (name, out[name])
    assert "simulated crash" in out["crash"][0].reason and "exit code 1" in out["crash"][0].reason
    assert "6 s" in out["sleep"][0].reason and "spacing" in out["wrong-geometry"][0].reason
    assert "0.5 GB" in out["oom"][0].reason
    for name in names[:-1]:
        rows = _csv(tmp_path / "results" / "demo" / "scores" / f"{name}.csv")
        assert {r["dice"] for r in rows} == {"0.000000"} and all(r["reason"] for r in rows)
    assert all(v > 0 for r in out["ok"] for v in r.dice.values())
    assert not engine.containers.list(all=True, filters={"label": "selfunet.algorithm"})


def test_a_root_base_image_is_refused_before_the_build(engine, placeholder_work, demo_root, tmp_path) -> None:
    from selfunet.errors import SelfUNetError

    with pytest.raises(SelfUNetError, match="runs as root"):
        gc.check_non_root(engine, BASE)
    context = gc.export_gc(placeholder_work, tmp_path / "gc", image=BASE, tag=f"{OURS}-root:latest",
                           dataset=demo_root)
    built = subprocess.run(["bash", str(context / "do_build.sh")], capture_output=True, text=True, timeout=120,
                           env={**os.environ})
    assert built.returncode == 1 and "runs as root" in built.stderr, built.stdout + built.stderr
    with pytest.raises(SelfUNetError, match="runs as root"):
        gc.test_container(context, client=engine)


def test_an_image_that_would_run_as_root_runs_as_nobody(engine, tmp_path) -> None:
    from harness.sandboxes.algorithm import NOBODY, AlgorithmSandbox
    from harness.sandboxes.base import SandboxRequest, Slot

    sandbox = AlgorithmSandbox(image=BASE, client=engine, entrypoint=["sh", "-c", "id -u > /output/uid"])
    (tmp_path / "in").mkdir()
    request = SandboxRequest(job_id="score-root-check", argv=(), log_path=tmp_path / "log",
                             read_only=(tmp_path / "in",), read_write=(tmp_path / "out",))
    assert sandbox.run(request, Slot(0)) == 0, (tmp_path / "log").read_text()
    assert (tmp_path / "out" / "uid").read_text().strip() == NOBODY.split(":")[0]
