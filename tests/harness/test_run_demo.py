"""`harness run tasks/demo.yaml --budget ci` for real: every job through the process sandbox, stopped
by SIGTERM twice (during preprocessing, during training) and resumed, a second writer refused, a
rerun that skips everything, and `harness compare` against the committed baseline (the CI
regression check)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

REPO = Path(__file__).resolve().parents[2]


def marker(work: Path, job: str) -> dict:
    try:
        return json.loads((work / ".harness" / "jobs" / f"{job}.json").read_text())
    except (OSError, ValueError):
        return {}


def _proc_stats() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, process group, state) of every process, read from /proc."""
    rows = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        rows.append((int(stat.parent.name), int(fields[1]), int(fields[2]), fields[0]))
    return rows


def job_groups(harness_pid: int) -> set[int]:
    """The process groups of the jobs `harness run` started (each job leads a group of its own)."""
    return {pgrp for pid, ppid, pgrp, _ in _proc_stats() if ppid == harness_pid and pgrp == pid}


def alive_in(groups: set[int]) -> list[int]:
    return [pid for pid, _, pgrp, state in _proc_stats() if pgrp in groups and state not in ("Z", "X")]


def sigterm_when(args: list[str], ready, work: Path, what: str) -> tuple[set[int], str]:
    """Start `harness run ARGS`, wait until ``ready()``, SIGTERM it; return the job groups and its output."""
    log = work.parents[1] / f"harness-{what}.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 1800
            groups: set[int] = set()
            while not (ready() and (groups := job_groups(process.pid))):
                assert process.poll() is None, f"harness ended before {what}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.2)
            # let the job get going (pool workers, data loader threads); preprocessing the demo takes
            # under a second on a fast machine, so it is stopped sooner
            time.sleep(0.2 if what == "preprocessing" else 1.0)
            groups |= job_groups(process.pid)
            if what == "training":  # a second writer of the same roots is refused, naming the holder
                second = CliRunner().invoke(app, args, terminal_width=300)
                assert second.exit_code == 1, second.output
                assert "is in use" in second.output and f"pid {process.pid}" in second.output
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    output = " ".join(log.read_text().split())
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by SIGTERM" in output and "rerun the same command to resume" in output
    deadline = time.monotonic() + 5
    while alive_in(groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive_in(groups), f"processes of the stopped job still alive: {alive_in(groups)}"
    return groups, output


@pytest.mark.slow
def test_demo_task_runs_end_to_end_and_a_rerun_skips_everything(tmp_path: Path) -> None:
    started = time.perf_counter()
    args = ["run", str(REPO / "tasks" / "demo.yaml"), "--budget", "ci", "--work-root", str(tmp_path / "work"),
            "--results", str(tmp_path / "results"), "--data-root", str(tmp_path / "data")]
    work = tmp_path / "work" / "demo"

    # SIGTERM during preprocessing, then during a training: every process of the job is gone at
    # once, the job is marked interrupted, and the next run resumes it
    sigterm_when(args, lambda: marker(work, "preprocess").get("status") == "running", work, "preprocessing")
    assert marker(work, "preprocess")["status"] == "interrupted"

    def training_mid_epoch() -> bool:
        return any(marker(work, p.stem).get("status") == "running" for p in (work / ".harness" / "jobs").glob(
            "train-*.json")) and any((work / "train").glob("*/fold_*/checkpoint_latest.pt"))

    sigterm_when(args, training_mid_epoch, work, "training")
    interrupted = [p.stem for p in (work / ".harness" / "jobs").glob("train-*.json")
                   if marker(work, p.stem)["status"] == "interrupted"]
    assert interrupted  # every training running at that moment (one per slot)
    print(f"two interrupted runs: {time.perf_counter() - started:.1f} s")

    first = CliRunner().invoke(app, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    print(f"first run: {time.perf_counter() - started:.1f} s")
    record = json.loads((tmp_path / "results" / "demo" / "run.json").read_text())
    jobs = {j["job"]: j for j in record["jobs"]}
    assert all(j["status"] in ("succeeded", "skipped") for j in jobs.values()), jobs
    assert all(jobs[j]["status"] == "succeeded" for j in interrupted)  # resumed from their latest checkpoints
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

    # the interrupted and resumed run has the leaderboard of an uninterrupted one: the same rows
    # (candidates x postprocessing) as the committed baseline, and (below) the same scores within
    # the CI tolerance (the ci budget trains without --deterministic, so not bit for bit)
    def rows(path: Path) -> list[tuple[str, str]]:
        import csv

        with open(path, newline="") as handle:
            return sorted((r["candidate"], r["members"]) for r in csv.DictReader(handle))

    assert rows(tmp_path / "results" / "demo" / "leaderboard.csv") == rows(
        REPO / "results" / "baselines" / "demo" / "leaderboard.csv")

    # the CI regression check: the demo's selected model against the committed baseline
    compared = CliRunner().invoke(app, ["compare", str(tmp_path / "results"), "--baseline",
                                        str(REPO / "results" / "baselines"), "--max-drop", "0.05"],
                                  terminal_width=200)
    print(compared.output)
    assert compared.exit_code == 0, compared.output

    # the same check as the drop-in CI files' compare step (docs/guide/ci/), run as their CI runner would
    from test_ci_workflows import run_step, step

    ci = run_step("github", step("github", "harness compare"), RESULTS=str(tmp_path / "results"))
    assert ci.returncode == 0, ci.stdout + ci.stderr
