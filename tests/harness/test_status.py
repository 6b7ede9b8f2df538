"""`harness status` and the run-state file, on the fake-stage runner of test_jobs: a run watched
while a training is held mid-job (running, slot, host, log, elapsed time), then the finished view
with a failure and its reason, `results/status.html`, and a run killed before it could say so.
(The real demo run is watched the same way in test_run_demo.)"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_jobs import FakeSandbox, plan_json, setup  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from harness.cli import app
from harness.executors.local import LocalExecutor
from harness.run.jobs import TaskGraph
from harness.run.runner import Runner
from harness.run.status import RunState, read_state, status_html, summarize


class HeldSandbox(FakeSandbox):
    """FakeSandbox whose first training waits until released."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.held = threading.Event()

    def run(self, request, slot) -> int:
        if request.argv[0] == "train" and not self.held.is_set():
            self.held.set()
            assert self.release.wait(60)
        return super().run(request, slot)


def test_status_while_running_and_after_a_failure(setup, plan_json, demo_root: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    task, _, work = setup
    t = task()
    training = json.loads((demo_root / "dataset.json").read_text())["training"]
    case_ids = sorted(Path(c["image"]).name.removesuffix(".nii.gz") for c in training)
    sandbox = HeldSandbox(plan_json, case_ids, fail={"crossval-3d_fullres"})
    graph = TaskGraph(t, work, tmp_path / "results")
    state = RunState(work.parent, tmp_path / "results", "local", sandbox.name, 2)
    outcome: list = []
    with LocalExecutor(sandbox, jobs=2, gpus=0) as executor:
        runner = Runner([graph], executor, version="test", state=state, progress=False)
        thread = threading.Thread(target=lambda: outcome.append(runner.run()))
        thread.start()
        try:
            assert sandbox.held.wait(60)
            deadline = time.monotonic() + 30
            while True:  # the executor reports the slot from its worker thread
                running = [j for j in (read_state(work.parent) or {"jobs": {}})["jobs"].values()
                           if j["state"] == "running" and j.get("host")]
                if running or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert running, read_state(work.parent)
            held = running[0]
            assert held["job"].startswith("train-") and held["slot"] in ("0", "1") and held["log"].endswith(".log")
            shown = CliRunner().invoke(app, ["status", str(work.parent)], terminal_width=250)
            assert shown.exit_code == 0, shown.output
            for text in ("running", held["job"], "ETA", "local executor", held["log"][-20:]):
                assert text in shown.output, (text, shown.output)
            view = summarize(read_state(work.parent))
            assert view.state == "running" and view.eta is not None and view.counts["succeeded"] >= 4
        finally:
            sandbox.release.set()
            thread.join(120)
    data = read_state(work.parent)
    assert data["run"]["state"] == "finished"
    jobs = data["jobs"]
    failed = jobs["t/crossval-3d_fullres"]
    assert failed["state"] == "failed" and failed["exit_code"] == 3 and "exit code 3" in failed["reason"]
    assert jobs["t/select"]["state"] == "blocked" and jobs["t/plan"]["state"] == "succeeded"
    assert all(j["host"] and j["slot"] for j in jobs.values() if j["stage"] == "train")
    shown = CliRunner().invoke(app, ["status", str(work.parent)], terminal_width=250)
    assert shown.exit_code == 0 and "finished" in shown.output and "failed" in shown.output
    assert "crossval-3d_fullres" in shown.output and "exit code 3" in shown.output
    page = (tmp_path / "results" / "status.html").read_text()
    assert "crossval-3d_fullres" in page and "<script" not in page and 'http-equiv="refresh"' not in page
    everything = CliRunner().invoke(app, ["status", str(work.parent), "--all"], terminal_width=250)
    assert "t/plan" in everything.output


def test_a_killed_run_shows_as_stopped_and_no_state_is_a_clean_error(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = RunState(tmp_path, None, "ray", "process", 4)
    state.data["run"]["owner"]["pid"] = int(dead.stdout)  # the run's process is gone
    state.data["jobs"]["t/train-2d-fold0"] = {"task": "t", "job": "train-2d-fold0", "stage": "train",
                                              "state": "running", "started": time.time() - 90, "slot": "",
                                              "host": "", "log": str(tmp_path / "x.log"), "executor":
                                              {"ray_task_id": "abc123"}}
    (tmp_path / "x.log").write_text("=== ray: t/train-2d-fold0 on node7 (10.0.0.7 gpu 3), worker pid 12\n")
    state.flush()
    view = summarize(json.loads((tmp_path / ".harness" / "state.json").read_text()))
    assert view.state == "stopped" and view.eta is None
    page = status_html(view)
    assert "interrupted" in page and "ray_task_id abc123" in page
    state.data["jobs"]["t/train-2d-fold0"]["executor"] = {}
    page = status_html(summarize(json.loads(json.dumps(state.data))))
    assert "node7 (10.0.0.7 gpu 3)" in page  # where the log's first line says it runs
    missing = CliRunner().invoke(app, ["status", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no run state" in missing.output


def test_watch_redraws_until_ctrl_c(tmp_path: Path) -> None:
    import signal

    state = RunState(tmp_path, None, "local", "process", 2)
    state.flush()
    out = tmp_path / "watch.txt"
    with open(out, "w") as handle:
        watch = subprocess.Popen([sys.executable, "-m", "harness.cli", "status", str(tmp_path), "--watch",
                                  "--interval", "0.5"], stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "harness status" not in out.read_text() and watch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.2)  # a redraw or two
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, out.read_text()
    assert "harness status running" in out.read_text()
