"""The run resumes after its driver is killed: finished jobs are skipped through their markers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from ray_fakes import attempts

DRIVER = Path(__file__).with_name("ray_driver.py")
JOBS, SECONDS = 8, 1.5


def driver(work: Path, address: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DRIVER.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(DRIVER), str(work), address, str(JOBS), str(SECONDS)], env=env,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def succeeded(work: Path) -> set[str]:
    found = set()
    for marker in (work / ".harness" / "jobs").glob("*.json"):
        if json.loads(marker.read_text()).get("status") == "succeeded":
            found.add(marker.stem)
    return found


def test_the_run_resumes_after_the_driver_is_killed(ray_address: str, tmp_path: Path) -> None:
    first = driver(tmp_path, ray_address)
    deadline = time.time() + 120
    while len(succeeded(tmp_path)) < 2:
        assert first.poll() is None, "the driver ended before it was killed"
        assert time.time() < deadline, "no job finished within 120 s"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = succeeded(tmp_path)
    assert 2 <= len(finished) < JOBS + 1, finished

    second = driver(tmp_path, ray_address)
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, out
    status = json.loads(out.strip().splitlines()[-1])
    assert {job for job, s in status.items() if s == "skipped"} == finished
    assert all(s == "succeeded" for job, s in status.items() if job not in finished), status
    assert status["select"] == "succeeded" and len(status) == JOBS + 1
    for job in finished:  # a skipped job really did not run again
        assert [e["event"] for e in attempts(tmp_path / f"{job}.jsonl")] == ["start", "end"], job
