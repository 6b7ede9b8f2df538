"""`harness run tasks/demo.yaml --budget ci` for real: every job through the process sandbox, a rerun
that skips everything, and `harness compare` against the committed baseline (the CI regression check)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_task_runs_end_to_end_and_a_rerun_skips_everything(tmp_path: Path) -> None:
    started = time.perf_counter()
    args = ["run", str(REPO / "tasks" / "demo.yaml"), "--budget", "ci", "--work-root", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--data-root", str(tmp_path / "data")]
    first = CliRunner().invoke(app, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    print(f"first run: {time.perf_counter() - started:.1f} s")
    record = json.loads((tmp_path / "results" / "demo" / "run.json").read_text())
    jobs = {j["job"]: j for j in record["jobs"]}
    assert all(j["status"] == "succeeded" for j in jobs.values()), jobs
    assert {"check", "fingerprint", "plan", "preprocess", "select", "predict-test", "export"} <= set(jobs)
    assert any(j.startswith("train-") for j in jobs) and record["folds"] == 2
    markers = tmp_path / "work" / "demo" / ".harness" / "jobs"
    assert all(json.loads(p.read_text())["status"] == "succeeded" for p in markers.glob("*.json"))
    tests = sorted(p.name for p in (tmp_path / "data" / "demo" / "imagesTs").iterdir())
    predictions = tmp_path / "results" / "demo" / "predictions" / "Task00_Demo"
    assert sorted(p.name for p in predictions.iterdir()) == tests

    start = time.perf_counter()
    second = CliRunner().invoke(app, args, terminal_width=200)
    seconds = time.perf_counter() - start
    assert second.exit_code == 0, second.output
    print(f"rerun: {seconds:.1f} s")
    again = json.loads((tmp_path / "results" / "demo" / "run.json").read_text())
    assert {j["status"] for j in again["jobs"]} == {"skipped"}
    assert seconds < 30, f"a rerun with nothing to do took {seconds:.1f} s"

    # the CI regression check: the demo's selected model against the committed baseline
    compared = CliRunner().invoke(app, ["compare", str(tmp_path / "results"), "--baseline",
                                        str(REPO / "results" / "baselines"), "--max-drop", "0.05"],
                                  terminal_width=200)
    print(compared.output)
    assert compared.exit_code == 0, compared.output

    # the same check as the drop-in CI files' compare step (docs/ci/), run as their CI runner would
    from test_ci_workflows import run_step, step

    ci = run_step("github", step("github", "harness compare"), RESULTS=str(tmp_path / "results"))
    assert ci.returncode == 0, ci.stdout + ci.stderr
