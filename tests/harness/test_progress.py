"""The live view of `harness run`: counts, ETA from this run's timings, running jobs with their logs."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console
from test_jobs import FakeSandbox

from harness.executors import LocalExecutor
from harness.run.jobs import TaskGraph
from harness.run.progress import RunProgress, duration, eta_seconds
from harness.run.runner import JobRecord, Runner
from harness.tasks.descriptor import TaskDescriptor
from selfunet.planning.plan import plan_experiment


def _rec(job: str, stage: str, status: str, seconds: float = 0.0, started: float | None = None) -> JobRecord:
    now = time.time()
    rec = JobRecord("demo", job, stage, status=status, log=f"work/demo/.harness/logs/{job}.log")
    if seconds:
        rec.started, rec.finished = now - 100, now - 100 + seconds
    if started is not None:
        rec.started = started
    return rec


def test_eta_uses_the_stage_mean_of_finished_jobs_and_subtracts_time_already_running():
    now = time.time()
    records = {r.job: r for r in [
        _rec("plan", "plan", "succeeded", 2.0),
        _rec("train-0", "train", "succeeded", 100.0),
        _rec("train-1", "train", "running", started=now - 30),
        _rec("train-2", "train", "pending"),
        _rec("select", "select", "pending"),  # no select has run: the mean over all, (2 + 100) / 2
        _rec("check", "check", "skipped"),
    ]}
    assert eta_seconds(records, slots=1, now=now) == pytest.approx(70 + 100 + 51)
    assert eta_seconds(records, slots=2, now=now) == pytest.approx((70 + 100 + 51) / 2)
    assert eta_seconds({"a": _rec("a", "plan", "pending")}, 1) is None  # nothing to learn from yet
    assert duration(59) == "59s" and duration(125) == "2m05s" and duration(7322) == "2h02m"


def test_view_shows_done_of_total_eta_and_each_running_job_with_its_log():
    records = {r.job: r for r in [_rec("plan", "plan", "succeeded", 2.0), _rec("check", "check", "skipped"),
                                  _rec("train-3d_fullres-fold0", "train", "running", started=time.time() - 5),
                                  _rec("select", "select", "pending")]}
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(RunProgress(records, slots=1))
    text = console.file.getvalue()
    assert "2/4 jobs done (1 skipped), 1 running" in text and "ETA" in text
    assert "demo/train-3d_fullres-fold0" in text and "work/demo/.harness/logs/train-3d_fullres-fold0.log" in text


def test_a_real_run_on_a_terminal_draws_the_live_view(tmp_path: Path, demo_root: Path, demo_fingerprint) -> None:
    case_ids = sorted(json.loads((demo_root / "dataset.json").read_text())["training"][i]["image"].split("/")[-1]
                      .removesuffix(".nii.gz") for i in range(6))
    sandbox = FakeSandbox(plan_experiment(demo_fingerprint).model_dump_json(), case_ids)
    task = TaskDescriptor.model_validate({"name": "t", "dataset": str(demo_root), "budget": "ci"})
    graph = TaskGraph(task, tmp_path / "work", tmp_path / "results")
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    with LocalExecutor(sandbox, gpus=0) as executor:
        records = Runner([graph], executor, console=console, version="test").run()
    text = console.file.getvalue()
    total = len(records)
    assert f"{total}/{total} jobs done" in text and "harness run" in text
    assert "log: " in text and str(tmp_path / "work" / ".harness" / "logs") in text
