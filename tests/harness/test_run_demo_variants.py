"""`harness run tasks/demo-regions.yaml` and `tasks/demo-sparse.yaml` with the ci budget, for real:
every job through the process sandbox (each stage a `selfunet` subprocess), one configuration
(3d_fullres, the real plan), 2 folds of 3 epochs x 12 iterations."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

REPO = Path(__file__).resolve().parents[2]


def _run_task(name: str, tmp_path: Path) -> dict:
    started = time.perf_counter()
    args = ["run", str(REPO / "tasks" / f"{name}.yaml"), "--budget", "ci", "--work-root", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--data-root", str(tmp_path / "data")]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    print(f"harness run {name} --budget ci: {time.perf_counter() - started:.0f} s")
    record = json.loads((tmp_path / "results" / name / "run.json").read_text())
    assert all(j["status"] == "succeeded" for j in record["jobs"]), record["jobs"]
    return record


@pytest.mark.slow
def test_region_based_demo_task_through_the_harness(tmp_path: Path) -> None:
    _run_task("demo-regions", tmp_path)
    selection = json.loads((tmp_path / "work" / "demo-regions" / "selection.json").read_text())
    assert selection["labels"] == {"1": "whole", "2": "core", "3": "enhancing"}
    scores = {c["name"]: c for c in selection["candidates"]}["3d_fullres"]
    print("regions demo, CV Dice per region:", scores["dice"], "mean", scores["mean_foreground_dice"])
    assert scores["dice"]["1"] > 0.6
    leaderboard = (tmp_path / "results" / "demo-regions" / "leaderboard.md").read_text()
    assert "whole" in leaderboard and "enhancing" in leaderboard
    predictions = tmp_path / "results" / "demo-regions" / "predictions" / "Task00_DemoRegions"
    assert sorted(p.name for p in predictions.iterdir()) == ["demo_100.nii.gz", "demo_101.nii.gz"]


@pytest.mark.slow
def test_sparsely_annotated_demo_task_through_the_harness(tmp_path: Path) -> None:
    _run_task("demo-sparse", tmp_path)
    selection = json.loads((tmp_path / "work" / "demo-sparse" / "selection.json").read_text())
    assert selection["labels"] == {"1": "organ", "2": "lesion"}  # 'ignore' is no class
    scores = {c["name"]: c for c in selection["candidates"]}["3d_fullres"]
    print("sparse demo, CV Dice on the annotated slices:", scores["dice"], "mean", scores["mean_foreground_dice"])
    assert scores["dice"]["1"] > 0.6
    predictions = tmp_path / "results" / "demo-sparse" / "predictions" / "Task00_DemoSparse"
    assert len(list(predictions.iterdir())) == 2
