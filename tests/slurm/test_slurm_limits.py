"""Jobs over their limits on the real cluster, each reported as such in the run record.

* over its memory: ``resources.memory_gb`` becomes ``--mem``; Slurm kills the job (the kernel's OOM
  killer in a cgroup, or slurmstepd's OverMemoryKill without cgroups) and run.json says "out of
  memory";
* over Slurm's time limit: a job on the 1-minute partition ``short`` ends TIMEOUT, reported as a
  timeout with exit code 124 (the sandbox's code for the same thing);
* over the descriptor's ``container.timeout_s``: the sandbox stops it first, exit 124, "timeout".

The Slurm time limit takes 60-90 s to fire (slurmctld checks limits every 30 s), so that job is
submitted first and the two ``harness run`` tasks go meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_helpers import partition_exists

from harness.executors.slurm import SlurmExecutor
from harness.executors.slurm_spec import EXIT_OOM, SlurmOptions
from harness.sandboxes.base import EXIT_TIMEOUT, SandboxRequest
from harness.sandboxes.process import ProcessSandbox

pytestmark = pytest.mark.slurm

TASK = """name: {name}
dataset: {data}
demo: {{cases: 4, test_cases: 0, seed: 0}}
budget: ci
folds: 2
{extra}
"""


def descriptor(tmp_path: Path, name: str, extra: str) -> Path:
    path = tmp_path / "tasks" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TASK.format(name=name, data=tmp_path / "data" / name, extra=extra))
    return path


def run_record(tmp_path: Path, task: str) -> dict:
    record = json.loads((tmp_path / "results" / task / "run.json").read_text())
    return {job["job"]: job for job in record["jobs"]}


def test_memory_and_time_limits_are_reported_as_such(slurm_cluster: str, tmp_path: Path) -> None:
    if not partition_exists("short"):
        pytest.fail("the cluster has no partition 'short' with a 1-minute limit (.ci/slurm.sh makes one)")
    sleeper = SlurmExecutor(ProcessSandbox(program=[sys.executable, "-c", "import time; time.sleep(600)"]),
                            tmp_path / "direct", override=SlurmOptions(partition="short"), poll_s=(1.0, 3.0))
    sleeper.track("limits/sleep", "h")
    sleeper.submit("limits/sleep", SandboxRequest("limits-sleep", (), tmp_path / "direct" / "sleep.log", cpus=1,
                                                  memory_gb=0.25), uses_gpu=False)

    oom = descriptor(tmp_path, "oom", "resources: {cpus: 1, memory_gb: 0.05}")
    # 10 ms: starting the interpreter and importing the CLI alone take longer on any machine (a check of
    # 4 demo cases can finish inside 0.5 s on a fast one)
    slow = descriptor(tmp_path, "slow", "resources: {cpus: 1}\ncontainer: {timeout_s: {check: 0.01}}")
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(oom), str(slow), "--executor", "slurm",
         "--work-root", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]

    check = run_record(tmp_path, "oom")["check"]
    assert check["status"] == "failed" and check["exit_code"] == EXIT_OOM, check
    assert check["reason"].startswith("out of memory: Slurm killed the job above its memory (--mem 52 MB)"), check
    assert "slurm" in check["slot"]
    assert run_record(tmp_path, "oom")["fingerprint"]["status"] == "blocked"
    check = run_record(tmp_path, "slow")["check"]
    assert check["status"] == "failed" and check["exit_code"] == EXIT_TIMEOUT, check
    assert check["reason"].startswith("timeout: the sandbox stopped the job"), check
    assert "TIMEOUT: the job ran past 0.01 s" in (tmp_path / "work" / "slow" / ".harness" / "logs" / "check.log"
                                                 ).read_text()
    record = json.loads((tmp_path / "work" / "oom" / ".harness" / "slurm" / "check.json").read_text())
    assert record["state"] in ("OUT_OF_MEMORY", "FAILED") and record["resources"]["memory_mb"] == 52

    (finished,) = sleeper.wait()
    assert finished.exit_code == EXIT_TIMEOUT, finished
    assert finished.error.startswith("timeout: the job ran past its Slurm time limit"), finished
    assert "Slurm TIMEOUT, reason TimeLimit" in finished.error
    assert "DUE TO TIME LIMIT" in (tmp_path / "direct" / "sleep.log").read_text()
