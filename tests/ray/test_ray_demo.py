"""The demo task through `harness run --executor ray` selects the same model, with the same CV Dice, as locally.

To stay within a few minutes on 2 cores the task is the demo restricted to the ``2d``
configuration (ci budget), and the two runs share the CPU stages: the local run goes first, then
its training, cross-validation, selection and prediction outputs and markers are deleted and the
Ray run redoes them in the same work folder, skipping check/fingerprint/plan/preprocess through
the local run's markers (resuming with the other executor is part of the contract).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from typer.testing import CliRunner

from harness.cli import app

REPO = Path(__file__).resolve().parents[2]
PREFIX = ("demo-data", "check", "fingerprint", "plan", "preprocess")
KEEP = ("fingerprint.json", "plan.json", "splits.json", "preprocessed", ".harness")


def harness_run(descriptor: Path, tmp: Path, results: str, *extra: str) -> dict:
    args = ["run", str(descriptor), "--budget", "ci", "--work-root", str(tmp / "work"), "--results",
            str(tmp / results), "--data-root", str(tmp / "data"), *extra]
    outcome = CliRunner().invoke(app, args, terminal_width=200)
    assert outcome.exit_code == 0, outcome.output
    return json.loads((tmp / results / "demo" / "run.json").read_text())


def selection(work: Path) -> dict:
    data = json.loads((work / "selection.json").read_text())
    return {"selected": data["selected"],
            "dice": {c["name"]: round(c["mean_foreground_dice"], 6) for c in data["candidates"]}}


@pytest.mark.slow
def test_demo_task_selects_the_same_model_with_ray_as_locally(ray_address: str, tmp_path: Path) -> None:
    descriptor = tmp_path / "demo_2d.yaml"
    shutil.copy(REPO / "tasks" / "demo.yaml", tmp_path / "_demo.yaml")  # includes stay in the tasks folder
    descriptor.write_text("include: _demo.yaml\nconfigurations: [2d]\n")
    local = harness_run(descriptor, tmp_path, "results_local", "--executor", "local")
    work = Path(local["work"])
    expected = selection(work)

    for path in work.iterdir():  # keep the CPU stages, drop everything trained or selected
        if path.name not in KEEP:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for marker in (work / ".harness" / "jobs").glob("*.json"):
        if marker.stem not in PREFIX:
            marker.unlink()

    remote = harness_run(descriptor, tmp_path, "results_ray", "--executor", "ray", "--address", ray_address)
    jobs = {j["job"]: j for j in remote["jobs"]}
    assert remote["executor"] == "ray"
    assert all(jobs[j]["status"] == "skipped" for j in PREFIX), jobs
    trains = [j for j in jobs.values() if j["stage"] == "train"]
    assert len(trains) == 2 and all(j["status"] == "succeeded" and " gpu " in j["slot"] for j in trains), trains
    assert jobs["select"]["status"] == "succeeded" and jobs["predict-test"]["status"] == "succeeded"
    assert selection(work) == expected
    board_local = tmp_path / "results_local" / "demo" / "leaderboard.csv"
    board_ray = tmp_path / "results_ray" / "demo" / "leaderboard.csv"
    if board_local.is_file():  # the leaderboards (harness.results.publish) when they are there: same scores
        assert _scores(board_ray) == _scores(board_local)


#: what a run cost (time, memory) differs between any two runs; the scores and ranks must not
COST_COLUMNS = {"train_seconds", "inference_seconds", "peak_memory_mb", "memory"}


def _scores(board: Path) -> list[dict[str, str]]:
    with open(board, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in COST_COLUMNS} for row in csv.DictReader(handle)]
