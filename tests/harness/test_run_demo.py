"""`harness run tasks/demo.yaml --budget ci` for real: every job through the process sandbox, stopped
by SIGTERM twice (during preprocessing, during training) and resumed, a second writer refused,
`harness status` read from another process while trainings run and after the run, a rerun that
skips everything, and `harness compare` against the committed baseline (the CI regression check).
Then the multi-planner demo (`tasks/demo-planners.yaml`: default against resenc-m at matched
compute) through the same roots: its matched-compute table and plot, and the report's figures."""

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
                check_status_while_training(work.parent, process.pid)
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


def check_status_while_training(work_root: Path, pid: int) -> None:
    """`harness status WORK_ROOT` from another process: the running trainings with their elapsed time,
    slot, host and log, the jobs done so far, the ETA, who runs it."""
    shown = CliRunner().invoke(app, ["status", str(work_root)], terminal_width=300)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert text.startswith("harness status running:") and f"run by pid {pid}" in text and "ETA" in text, text
    from harness.run.status import read_state, summarize

    view = summarize(read_state(work_root))
    running = view.of("running")
    assert running and all(j["job"].startswith("train-") and j["slot"] and j["host"] for j in running), running
    for job in running:
        assert job["job"] in text and job["log"] in text
    assert view.counts["succeeded"] + view.counts["skipped"] >= 5 and view.eta is not None  # demo-data ... preprocess


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
    finished = CliRunner().invoke(app, ["status", str(tmp_path / "work")], terminal_width=300)
    assert finished.exit_code == 0 and "harness status finished" in finished.output, finished.output
    assert "failed" not in finished.output and "<script" not in (tmp_path / "results" / "status.html").read_text()
    assert record["environment"]["precision"]["jobs"] and record["environment"]["cpu"]["model"]
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

    matched_compute_demo(tmp_path, started)


def matched_compute_demo(tmp_path: Path, started: float) -> None:
    """`harness run tasks/demo-planners.yaml` (its own budget, 2 x 6 iterations): the default planner
    and resenc-m through the real graph (plan@resenc-m, preprocess@resenc-m, train-...@resenc-m,
    crossval, one selection over both), into the same work and results roots; leaderboard.md gets
    the matched-compute table and the report its plot, and the index a consensus heatmap over the
    two tasks."""
    import csv

    begin = time.perf_counter()
    args = ["run", str(REPO / "tasks" / "demo-planners.yaml"), "--work-root",
            str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--data-root", str(tmp_path / "data")]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    print(f"harness run demo-planners: {time.perf_counter() - begin:.0f} s "
          f"(whole test {time.perf_counter() - started:.0f} s)")
    out = tmp_path / "results" / "demo-planners"
    record = json.loads((out / "run.json").read_text())
    jobs = {j["job"]: j["status"] for j in record["jobs"]}
    assert {"plan@resenc-m", "preprocess@resenc-m", "train-3d_fullres@resenc-m-fold0",
            "crossval-3d_fullres@resenc-m", "select"} <= set(jobs) and set(jobs.values()) == {"succeeded"}
    with open(out / "leaderboard.csv", newline="") as handle:
        rows = {r["candidate"]: r for r in csv.DictReader(handle) if r["postprocessing"] == "none"}
    assert {"3d_fullres", "3d_fullres@resenc-m"} <= set(rows)
    assert all(rows[c]["train_seconds"] != "n/a" and rows[c]["peak_memory_mb"] != "n/a" for c in rows)
    markdown = (out / "leaderboard.md").read_text()
    assert "## Matched compute" in markdown and "| 3d_fullres@resenc-m | resenc-m |" in markdown
    print(markdown[markdown.index("## Matched compute"):].split("\n\n")[1])  # the table, for the record
    page = (out / "index.html").read_text()
    for figure in ("cost-plot", "significance-ranking", "blob-ranking", "podium-ranking", "robustness-plot-ranking"):
        assert f'id="{figure}"' in page, figure
    assert 'id="consensus-heatmap-crossval"' in (tmp_path / "results" / "index.html").read_text()

