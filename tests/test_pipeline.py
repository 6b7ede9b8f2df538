"""`selfunet run`: the whole pipeline on the demo task with a tiny budget, and resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from selfunet.data.dataset import load_dataset
from selfunet.evaluation.ensemble import Selection
from selfunet.pipeline import RunOptions, choose_configurations, run_pipeline
from selfunet.planning.plan_types import Plan
from selfunet.training.budgets import budget_config

TINY = {"epochs": 1, "iterations_per_epoch": 2, "validation_iterations": 1, "num_folds": 2}


def _headers_equal(a: Path, b: Path) -> bool:
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    spatial = 3
    return (
        ia.GetSize()[:spatial] == ib.GetSize()[:spatial]
        and all(abs(x - y) < 1e-6 for x, y in zip(ia.GetSpacing()[:spatial], ib.GetSpacing()[:spatial]))
        and all(abs(x - y) < 1e-6 for x, y in zip(ia.GetOrigin()[:spatial], ib.GetOrigin()[:spatial]))
    )


def test_run_writes_selection_crossval_and_test_predictions(tiny_work: Path, demo_root: Path) -> None:
    options = RunOptions(train=budget_config("ci", **TINY), processes=1)
    report = run_pipeline(demo_root, tiny_work, options)

    selection = Selection.load(tiny_work / "selection.json")
    assert list(selection.members) == ["3d_fullres"]
    assert selection.postprocessing is not None
    assert (tiny_work / "crossval" / "3d_fullres" / "summary.json").is_file()
    # every stage ran once; check/fingerprint/plan were already there and were skipped
    skipped = {t.name for t in report.timings if t.skipped}
    assert {"check", "fingerprint", "plan"} <= skipped
    dataset = load_dataset(demo_root)
    for case in dataset.test:
        predicted = tiny_work / "test_predictions" / case.images[0].name
        assert predicted.is_file(), f"missing test prediction {predicted}"
        assert _headers_equal(predicted, case.images[0])


def test_rerun_of_finished_pipeline_skips_every_stage(tiny_work: Path, demo_root: Path) -> None:
    options = RunOptions(train=budget_config("ci", **TINY), processes=1)
    run_pipeline(demo_root, tiny_work, options)
    selection_mtime = (tiny_work / "selection.json").stat().st_mtime
    report = run_pipeline(demo_root, tiny_work, options)
    trained = [t for t in report.timings if t.name.startswith(("train", "test predictions"))]
    assert trained and all(t.skipped for t in trained)
    assert (tiny_work / "selection.json").stat().st_mtime >= selection_mtime


def test_run_resumes_after_kill_between_stages(tiny_work: Path, demo_root: Path) -> None:
    command = [sys.executable, "-m", "selfunet.cli", "run", str(demo_root), "--work", str(tiny_work),
               "--budget", "ci", "--epochs", "1", "--iterations-per-epoch", "2", "--num-folds", "2",
               "--processes", "1"]
    env = {**os.environ, "COLUMNS": "120"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    fold0 = tiny_work / "train" / "3d_fullres" / "fold_0"
    fold1 = tiny_work / "train" / "3d_fullres" / "fold_1"
    deadline = time.time() + 300
    try:
        # fold 1 starting means fold 0 (training and its validation predictions) is complete
        while not fold1.is_dir():
            assert process.poll() is None, "the pipeline ended before fold 0 was trained"
            assert time.time() < deadline, "fold 0 did not finish in time"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    final_mtime = (fold0 / "checkpoint_final.pt").stat().st_mtime

    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train 3d_fullres fold 0: done already, skipped" in result.stderr
    assert (fold0 / "checkpoint_final.pt").stat().st_mtime == final_mtime
    assert (tiny_work / "selection.json").is_file()
    assert not list(tiny_work.rglob(".*.tmp"))


def test_cascade_stage_pulls_in_its_previous_stage(tiny_work: Path) -> None:
    plan = Plan.load(tiny_work / "plan.json")
    full = plan.configurations["3d_fullres"]
    plan = plan.model_copy(update={"configurations": {
        "3d_fullres": full,
        "3d_lowres": full.model_copy(update={"name": "3d_lowres", "data_identifier": "3d_lowres",
                                             "next_stage": "3d_cascade_fullres"}),
        "3d_cascade_fullres": full.model_copy(update={"name": "3d_cascade_fullres", "previous_stage": "3d_lowres"}),
    }})
    assert choose_configurations(plan, ("3d_cascade_fullres",)) == ["3d_lowres", "3d_cascade_fullres"]
    assert choose_configurations(plan, None) == ["3d_fullres", "3d_lowres", "3d_cascade_fullres"]
