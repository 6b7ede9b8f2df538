"""Hostile task descriptors and hostile work directories, through the real command line and code.

Each case is what a hostile (or careless) author could hand the harness: a descriptor that reaches
outside the tasks folder, an include graph built to explode, a file too big or not a file at all,
numbers no run can use, task names that collide with the results layout or each other; a work
directory whose ``selection.json`` or predictions are links to host files, a results folder whose
``predictions`` is a link to somebody's folder. Every case must end cleanly (exit code 1, one
message naming the file and the fix, no traceback), read nothing outside its place (the secret a
refused file holds never appears), write and delete nothing outside its place, and finish in a
time and memory set by the checks, not by the input. Scoring has its own battery
(tests/harness/test_score_hostile.py); the rules are in docs/guide/security.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_export import make_msd, predict
from typer.testing import CliRunner

from harness.cli import app
from harness.results.export import export_task
from harness.results.publish import render_task
from harness.tasks import yaml_reader
from harness.tasks.descriptor import TaskDescriptor, load_task, load_tasks
from harness.tasks.names import RESULTS_RESERVED
from selfunet.errors import SelfUNetError

SECRET = "hunter2-do-not-echo"
GOOD = "name: fake\ndataset: ../data/Task99_Fake\n"


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    """tmp/tasks (the tasks root), tmp/data/Task99_Fake (a dataset.json), tmp/outside/secret.yaml."""
    folder = tmp_path / "data" / "Task99_Fake"
    folder.mkdir(parents=True)
    training = [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(6)]
    (folder / "dataset.json").write_text(json.dumps({
        "name": "fake", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "x"}, "numTraining": 6,
        "training": training, "test": []}))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.yaml").write_text(f"description: {SECRET}\nseed: 3\nfolds: 3\n")
    (tmp_path / "tasks").mkdir()
    return tmp_path / "tasks"


def validate(*args: str) -> tuple[int, str]:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["validate", *args], terminal_width=400)
    assert time.perf_counter() - started < 10
    assert "Traceback" not in result.output and "a bug" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def refused(*args: str, words: tuple[str, ...]) -> str:
    code, out = validate(*args)
    assert code == 1, out
    for word in words:
        assert word in out, (word, out)
    assert SECRET not in out
    return out


# -- includes stay in the tasks root ---------------------------------------------------------------
def test_include_of_an_absolute_path_outside_the_tasks_folder_is_refused_unread(tasks: Path) -> None:
    secret = tasks.parent / "outside" / "secret.yaml"
    (tasks / "t.yaml").write_text(f"include: {secret}\n{GOOD}")
    refused(str(tasks), words=("t.yaml: key 'include'", str(secret), "outside the tasks root", "--tasks-root"))


def test_include_climbing_out_with_dotdot_is_refused(tasks: Path) -> None:
    (tasks / "t.yaml").write_text(f"include: ../outside/secret.yaml\n{GOOD}")
    refused(str(tasks / "t.yaml"), words=("outside the tasks root", "--tasks-root"))


def test_a_link_in_the_tasks_folder_that_points_out_is_refused(tasks: Path) -> None:
    (tasks / "_base").mkdir()
    (tasks / "_base" / "shared.yaml").symlink_to(tasks.parent / "outside" / "secret.yaml")
    (tasks / "t.yaml").write_text(f"include: _base/shared.yaml\n{GOOD}")
    refused(str(tasks), words=("_base/shared.yaml", "a link to", "outside the tasks root"))


def test_a_descriptor_found_in_the_folder_that_links_out_is_refused(tasks: Path) -> None:
    (tasks / "evil.yaml").symlink_to(tasks.parent / "outside" / "secret.yaml")
    refused(str(tasks), words=("evil.yaml", "a link to", "outside the tasks root"))


def test_missing_include_outside_the_root_is_refused_before_it_is_looked_for(tasks: Path) -> None:
    (tasks / "t.yaml").write_text(f"include: /nonexistent/base.yaml\n{GOOD}")
    out = refused(str(tasks), words=("outside the tasks root",))
    assert "not found" not in out  # whether a file exists out there is not told either


def test_tasks_root_names_a_folder_that_holds_both(tasks: Path) -> None:
    (tasks / "t.yaml").write_text(f"include: ../outside/secret.yaml\n{GOOD}")
    listed = CliRunner().invoke(app, ["ls", str(tasks / "t.yaml"), "--tasks-root", str(tasks.parent)])
    assert listed.exit_code == 0, listed.output
    assert load_task(tasks / "t.yaml", root=tasks.parent).seed == 3


# -- each include read once ------------------------------------------------------------------------
def test_a_diamond_include_graph_reads_each_file_once(tasks: Path, monkeypatch) -> None:
    depth = 40  # 2^40 reads before
    (tasks / "_base").mkdir()
    for i in range(1, depth):
        nxt = f"b{i + 1}.yaml" if i + 1 < depth else None
        body = (f"include: [{nxt}, {nxt}]\n" if nxt else "seed: 5\n") + f"description: level {i}\n"
        (tasks / "_base" / f"b{i}.yaml").write_text(body)
    (tasks / "t.yaml").write_text(f"include: [_base/b1.yaml, _base/b1.yaml]\n{GOOD}")
    reads: list[Path] = []
    real = yaml_reader._read_yaml
    monkeypatch.setattr(yaml_reader, "_read_yaml", lambda p, f: reads.append(p) or real(p, f))
    started = time.perf_counter()
    task = load_task(tasks / "t.yaml")
    assert time.perf_counter() - started < 2
    assert task.seed == 5 and task.description == "level 1"
    assert len(reads) == len(set(reads)) == depth


def test_an_include_cycle_through_a_diamond_is_still_a_cycle(tasks: Path) -> None:
    (tasks / "_base").mkdir()
    (tasks / "_base" / "a.yaml").write_text("include: [b.yaml, c.yaml]\n")
    (tasks / "_base" / "b.yaml").write_text("seed: 1\n")
    (tasks / "_base" / "c.yaml").write_text("include: a.yaml\n")
    (tasks / "t.yaml").write_text(f"include: _base/a.yaml\n{GOOD}")
    refused(str(tasks), words=("include cycle", "a.yaml -> ", "remove one of these includes"))


def test_too_many_include_files_are_refused(tasks: Path) -> None:
    (tasks / "_base").mkdir()
    for i in range(100):
        (tasks / "_base" / f"c{i}.yaml").write_text(f"include: c{i + 1}.yaml\n" if i < 99 else "seed: 1\n")
    (tasks / "t.yaml").write_text(f"include: _base/c0.yaml\n{GOOD}")
    refused(str(tasks), words=("more than 64 descriptor files",))


# -- size and kind checked before reading ----------------------------------------------------------
def test_an_8_gib_sparse_descriptor_is_refused_without_being_read(tasks: Path) -> None:
    big = tasks / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(8 * 1024**3)  # sparse: no disk used, 8 GiB to read
    refused(str(tasks), words=("big.yaml", f"{8 * 1024**3} bytes is too big for a task descriptor"))


def test_an_8_gib_sparse_include_is_refused_without_being_read(tasks: Path) -> None:
    (tasks / "_base").mkdir()
    with open(tasks / "_base" / "big.yaml", "wb") as handle:
        handle.truncate(8 * 1024**3)
    (tasks / "t.yaml").write_text(f"include: _base/big.yaml\n{GOOD}")
    refused(str(tasks), words=("big.yaml", "too big for a task descriptor"))


def test_a_fifo_as_descriptor_does_not_block(tasks: Path) -> None:
    os.mkfifo(tasks / "pipe.yaml")
    refused(str(tasks), words=("pipe.yaml", "not a regular file"))


# -- every number has a range ----------------------------------------------------------------------
NUMBERS = [
    ("seed-negative", "seed: -1\n", "key 'seed'"),
    ("seed-1e23", "seed: 1e23\n", "key 'seed'"),
    ("seed-2^32", f"seed: {2**32}\n", "less than or equal to 4294967295"),
    ("seed-bool", "seed: true\n", "key 'seed'"),
    ("split-seed-negative", "holdout: {fraction: 0.2, seed: -3}\n", "key 'holdout.seed'"),
    ("demo-seed-huge", "demo: {seed: 99999999999}\n", "key 'demo.seed'"),
    ("gpu-memory-inf", "gpu_memory_gb: .inf\n", "key 'gpu_memory_gb'"),
    ("gpu-memory-huge", "gpu_memory_gb: 1e9\n", "key 'gpu_memory_gb'"),
    ("memory-inf", "resources: {memory_gb: .inf}\n", "key 'resources.memory_gb'"),
    ("memory-nan", "resources: {memory_gb: .nan}\n", "key 'resources.memory_gb'"),
    ("cpus-huge", "resources: {cpus: 100000}\n", "key 'resources.cpus'"),
    ("scoring-memory-nan", "scoring: {memory_gb: .nan}\n", "key 'scoring.memory_gb'"),
    ("case-timeout-inf", "scoring: {case_timeout_s: .inf}\n", "key 'scoring.case_timeout_s'"),
    ("case-timeout-huge", "scoring: {case_timeout_s: 1e12}\n", "key 'scoring.case_timeout_s'"),
    ("case-timeout-zero", "scoring: {case_timeout_s: 0}\n", "key 'scoring.case_timeout_s'"),
    ("stage-timeout-inf", "container: {timeout_s: {train: .inf}}\n", "key 'container.timeout_s.train'"),
    ("stage-timeout-huge", "container: {timeout_s: {default: 1e30}}\n", "30 days"),
    ("pids-huge", "container: {pids_limit: 1000000000000}\n", "key 'container.pids_limit'"),
    ("nsd-inf", "metrics: {nsd_tolerance_mm: .inf}\n", "key 'metrics.nsd_tolerance_mm'"),
    ("folds-huge", "folds: 1000000000\n", "key 'folds'"),
    ("epochs-huge", "budget: {preset: ci, epochs: 1e15}\n", "key 'budget.epochs'"),
    ("demo-cases-huge", "demo: {cases: 100000000}\n", "key 'demo.cases'"),
    ("training-lr-inf", "training: {initial_lr: .inf}\n", "training.initial_lr is inf"),
    ("training-nested-nan", "training: {augmentation: {scale_range: [0.8, .nan]}}\n",
     "training.augmentation.scale_range.1 is nan"),
]


@pytest.mark.parametrize(("text", "words"), [(t, w) for _, t, w in NUMBERS], ids=[i for i, _, _ in NUMBERS])
def test_every_number_has_a_range(tasks: Path, text: str, words: str) -> None:
    (tasks / "t.yaml").write_text(GOOD + text)
    refused(str(tasks), words=("t.yaml", words, "fix the value"))


def test_the_shipped_tasks_are_in_range() -> None:
    root = Path(__file__).resolve().parents[2] / "tasks"
    assert len(load_tasks([root])) >= 12


# -- task names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*RESULTS_RESERVED, "Index.HTML", "BASELINES"])
def test_a_task_named_like_the_results_layout_is_refused(tasks: Path, name: str) -> None:
    (tasks / "t.yaml").write_text(GOOD.replace("name: fake", f"name: {name}"))
    refused(str(tasks), words=("key 'name'", "results folder uses itself", "rename the task"))


def test_task_names_that_differ_only_in_case_are_refused(tasks: Path) -> None:
    (tasks / "a.yaml").write_text(GOOD.replace("name: fake", "name: Demo"))
    (tasks / "b.yaml").write_text(GOOD.replace("name: fake", "name: demo"))
    refused(str(tasks), words=("b.yaml: key 'name'", "'demo'", "'Demo'", "differ only in case", "a.yaml"))


def test_every_top_level_entry_the_results_writers_make_is_reserved(tmp_path: Path) -> None:
    """What the harness writes beside the task folders (overview, HTML report) is a reserved name, so
    no task can be named like it; a test catches a new top-level file that is not."""
    from harness.report.html import write_index
    from harness.results.publish import write_overview

    results = tmp_path / "results"
    (results / "demo").mkdir(parents=True)
    (results / "demo" / "run.json").write_text("{}")
    write_overview(results)
    write_index(results)
    entries = {p.name for p in results.iterdir()} - {"demo"}
    assert entries and entries <= set(RESULTS_RESERVED), entries


# -- published results never follow links ----------------------------------------------------------
@pytest.fixture
def work(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset with two test cases and a work directory holding their predictions and a selection."""
    root = make_msd(tmp_path / "data", ["a", "b"])
    work = tmp_path / "work"
    for case in ("a", "b"):
        predict(root / "imagesTs" / f"{case}.nii.gz", work / "test_predictions" / f"{case}.nii.gz")
    (work / "selection.json").write_text('{"selected": "3d_fullres"}')
    return root, work


def _task(root: Path) -> TaskDescriptor:
    return TaskDescriptor(name="tiny", dataset=root, export={"folder": "Task99_Tiny"})


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "Task99_Tiny").mkdir()
    (victim / "Task99_Tiny" / "precious.txt").write_text("keep me")
    (victim / "precious.txt").write_text("keep me")
    return victim


def _intact(victim: Path) -> None:
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (victim / "Task99_Tiny" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("link", ["tiny", "tiny/predictions", "tiny/predictions/Task99_Tiny"])
def test_export_never_deletes_through_a_link_in_results(work, tmp_path: Path, link: str) -> None:
    root, work_dir = work
    victim = _victim(tmp_path)
    results = tmp_path / "results"
    (results / link).parent.mkdir(parents=True, exist_ok=True)
    (results / link).symlink_to(victim / "Task99_Tiny" if link.endswith("Tiny") else victim)
    with pytest.raises(SelfUNetError, match="symbolic link") as err:
        export_task(_task(root), work_dir, results)
    assert str(results / link) in str(err.value) and "Remove the link" in str(err.value)
    _intact(victim)
    assert sorted(p.name for p in victim.iterdir()) == ["Task99_Tiny", "precious.txt"]


def test_export_through_the_cli_with_a_linked_predictions_folder_is_a_clean_error(work, tmp_path: Path) -> None:
    root, work_dir = work
    victim = _victim(tmp_path)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(f"name: tiny\ndataset: {root}\nexport:\n  folder: Task99_Tiny\n")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "tiny").symlink_to(work_dir)  # the work root may hold links; nothing below WORK may
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    (tmp_path / "results" / "tiny" / "predictions").symlink_to(victim)
    out = CliRunner().invoke(app, ["export", "tiny", "--tasks", str(tasks), "--work-root", str(tmp_path / "w"),
                                   "--results", str(tmp_path / "results")], terminal_width=400)
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "predictions: a symbolic link" in " ".join(out.output.split())
    _intact(victim)


def test_a_linked_selection_json_is_not_copied_into_results(work, tmp_path: Path) -> None:
    root, work_dir = work
    secret = tmp_path / "outside.json"
    secret.write_text(json.dumps({"token": SECRET}))
    (work_dir / "selection.json").unlink()
    (work_dir / "selection.json").symlink_to(secret)
    with pytest.raises(SelfUNetError, match=r"selection\.json: a symbolic link") as err:
        export_task(_task(root), work_dir, tmp_path / "results")
    assert SECRET not in str(err.value)
    assert not (tmp_path / "results" / "tiny" / "selection.json").exists()
    with pytest.raises(SelfUNetError, match=r"selection\.json: a symbolic link"):
        render_task("tiny", tmp_path / "results", work_dir, compute=False)
    assert not (tmp_path / "results" / "tiny" / "selection.json").exists()


def test_a_linked_seeds_json_is_not_copied_into_results(work, tmp_path: Path) -> None:
    _, work_dir = work
    (tmp_path / "outside.json").write_text(json.dumps({"token": SECRET}))
    (work_dir / "seeds.json").symlink_to(tmp_path / "outside.json")
    with pytest.raises(SelfUNetError, match=r"seeds\.json: a symbolic link"):
        render_task("tiny", tmp_path / "results", work_dir, compute=False)
    assert not (tmp_path / "results" / "tiny" / "seeds.json").exists()


@pytest.mark.parametrize("kind", ["file-link", "folder-link"])
def test_a_planted_test_prediction_is_refused_by_the_export(work, tmp_path: Path, kind: str) -> None:
    root, work_dir = work
    target = work_dir / "test_predictions" / "a.nii.gz"
    host = tmp_path / "host"
    host.mkdir()
    if kind == "file-link":  # a host file of the right geometry (e.g. somebody's reference label)
        target.rename(host / "a.nii.gz")
        target.symlink_to(host / "a.nii.gz")
        words = "test_predictions/a.nii.gz: a symbolic link"
    else:
        (work_dir / "test_predictions").rename(host / "test_predictions")
        (work_dir / "test_predictions").symlink_to(host / "test_predictions")
        words = "test_predictions: a symbolic link"
    with pytest.raises(SelfUNetError, match=words):
        export_task(_task(root), work_dir, tmp_path / "results")
    assert not (tmp_path / "results" / "tiny" / "predictions" / "Task99_Tiny").exists()


def test_a_prediction_whose_header_names_a_host_file_is_refused_by_the_export(tmp_path: Path) -> None:
    import SimpleITK as sitk

    root = make_msd(tmp_path / "data", ["a"])  # the same task with .mha images
    sitk.WriteImage(sitk.ReadImage(str(root / "imagesTs" / "a.nii.gz")), str(root / "imagesTs" / "a.mha"))
    (root / "imagesTs" / "a.nii.gz").unlink()
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "test": ["./imagesTs/a.mha"]}))
    work = tmp_path / "work"
    predict(root / "imagesTs" / "a.mha", work / "test_predictions" / "a.mha")
    host = tmp_path / "host"
    host.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(work / "test_predictions" / "a.mha")), str(host / "a.mhd"))
    header = (host / "a.mhd").read_text().replace("ElementDataFile = a.raw", f"ElementDataFile = {host / 'a.raw'}")
    (work / "test_predictions" / "a.mha").write_text(header)  # its voxels are a host file's
    with pytest.raises(SelfUNetError, match="ElementDataFile") as err:
        export_task(_task(root), work, tmp_path / "results")
    assert "a prediction must hold its own voxels" in str(err.value)
    assert not (tmp_path / "results" / "tiny" / "predictions" / "Task99_Tiny").exists()


def test_a_selection_naming_paths_outside_work_is_left_out_of_the_metrics(work, tmp_path: Path, caplog) -> None:
    from harness.results.leaderboard import _candidate_folder

    _, work_dir = work
    assert _candidate_folder(work_dir, "crossval/3d_fullres", "3d_fullres") == work_dir / "crossval" / "3d_fullres"
    assert _candidate_folder(work_dir, "../../elsewhere", "3d_fullres") is None
    assert _candidate_folder(work_dir, "crossval/x", "../../x") is None
    (tmp_path / "host").mkdir(exist_ok=True)
    (work_dir / "crossval").symlink_to(tmp_path / "host")
    assert _candidate_folder(work_dir, "crossval/3d_fullres", "3d_fullres") is None
    assert "left out of the metrics" in caplog.text
