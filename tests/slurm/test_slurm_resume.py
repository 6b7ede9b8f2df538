"""``harness run --executor slurm`` killed while its job waits in the queue, then run again: the second
run adopts the queued job instead of submitting it twice; SIGTERM to that run cancels exactly its
own job, while a job of another run and a job of another user stay queued or running.

The node is kept busy by a job of "another run" that holds every CPU, so the harness's first job
(``check``) stays PENDING for as long as the test needs."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_helpers import job_state, live_jobs_in

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
OTHER_USER = "selfunet-slurm-other"


def sbatch(*args: str, user: str | None = None) -> str:
    argv = ["sbatch", "--parsable", "-o", "/dev/null", *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", "env", f"SLURM_CONF={os.environ.get('SLURM_CONF', '')}", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/tmp")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def other_user() -> str | None:
    """A second local user for the "someone else's job" case (created when running as root)."""
    with_name = [p for p in pwd.getpwall() if p.pw_name == OTHER_USER]
    if with_name:
        return OTHER_USER
    if os.getuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None:
        return None
    done = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                          capture_output=True, text=True, timeout=30)
    return OTHER_USER if done.returncode == 0 else None


def wait_for(what: str, condition, seconds: float = 90.0, process: subprocess.Popen | None = None, log=None):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"harness ended before {what}:\n{log.read_text()[-3000:] if log else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def record(work: Path, job: str) -> dict:
    try:
        return json.loads((work / "demo" / ".harness" / "slurm" / f"{job}.json").read_text())
    except (OSError, ValueError):
        return {}


def test_a_rerun_adopts_the_queued_job_and_sigterm_cancels_only_its_own(slurm_cluster: str, tmp_path: Path) -> None:
    cpus = max(int(x) for x in subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True,
                                             timeout=30).stdout.split())
    blocker = sbatch(f"--cpus-per-task={cpus}", "--job-name=another-run", "--wrap", "sleep 600")
    user = other_user()
    theirs = sbatch("--job-name=another-user", "--wrap", "sleep 600", user=user) if user else None
    try:
        wait_for("the other run's job to hold the node", lambda: job_state(blocker) == "RUNNING")
        work = tmp_path / "work"
        args = [sys.executable, "-m", "harness.cli", "run", str(REPO / "tasks" / "demo.yaml"), "--budget", "ci",
                "--executor", "slurm", "--work-root", str(work), "--results", str(tmp_path / "results"),
                "--data-root", str(tmp_path / "data")]
        first_log = tmp_path / "first.log"
        with open(first_log, "w") as out:
            first = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            queued = wait_for("check to be queued", lambda: record(work, "check").get("slurm_job_id"), process=first,
                              log=first_log)
            assert job_state(queued) == "PENDING"
        finally:
            first.kill()  # SIGKILL: no chance to cancel anything
            first.wait()
        assert job_state(queued) == "PENDING"

        second_log = tmp_path / "second.log"
        with open(second_log, "w") as out:
            second = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            def adopted() -> bool:
                return "adopted demo/check" in " ".join(second_log.read_text().split())

            wait_for("the rerun to adopt check", adopted, process=second, log=second_log)
            marker = json.loads((work / "demo" / ".harness" / "jobs" / "check.json").read_text())
            assert marker["status"] == "running" and marker["adopted"] == f"Slurm job {queued} (PENDING)"
            mine = live_jobs_in(str(tmp_path), "selfunet:demo/check")
            assert mine == [queued], f"duplicate submissions: {mine}"
            assert live_jobs_in(str(tmp_path), "selfunet:demo/fingerprint") == []
            second.send_signal(signal.SIGTERM)
            code = second.wait(timeout=60)
        finally:
            if second.poll() is None:
                second.kill()
        output = " ".join(second_log.read_text().split())
        assert code == 128 + signal.SIGTERM, output[-3000:]
        assert wait_for("check to be cancelled", lambda: job_state(queued) == "CANCELLED", seconds=30)
        assert job_state(blocker) == "RUNNING"  # another run's job
        if theirs is not None:
            assert job_state(theirs) == "PENDING"  # another user's job
        assert json.loads((work / "demo" / ".harness" / "jobs" / "check.json").read_text())["status"] == "interrupted"
        assert record(work, "check")["state"] == "CANCELLED"
    finally:
        subprocess.run(["scancel", blocker, *([theirs] if theirs else [])], timeout=30)
    if user is None:
        pytest.skip("the other-user case needs root (useradd, runuser); the other-run case passed")
