"""The body of a Slurm batch job (harness.executors.slurm_job), run here without Slurm: the spec
round-trips the sandbox and the request exactly (JSON, no pickle), the job's exit code becomes the
result file's, and SIGTERM stops the job the sandbox's way before the result is written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.executors.slurm_job import (
    SPEC_SCHEMA,
    allocated_gpu,
    build_request,
    build_sandbox,
    request_spec,
    sandbox_spec,
)
from harness.sandboxes.base import SandboxRequest, Slot
from harness.sandboxes.docker import DockerSandbox
from harness.sandboxes.policy import ContainerPolicy
from harness.sandboxes.process import ProcessSandbox


def roundtrip(obj: dict) -> dict:
    return json.loads(json.dumps(obj))


def test_the_docker_sandbox_reaches_the_node_with_its_hardened_settings(tmp_path: Path) -> None:
    original = DockerSandbox(image="selfunet:latest", user="1000:1000", timeout_s=60.0, cpus=2, memory_gb=4.0)
    original._image_id = "sha256:" + "a" * 64  # resolved on the submit host; the node needs the same id
    spec = roundtrip(sandbox_spec(original))
    assert spec["kind"] == "docker" and spec["image"] == original._image_id
    rebuilt = build_sandbox(spec)
    rebuilt._image_id = spec["image"]
    request = SandboxRequest("t-train", ("train", "/w", "-f", "0"), tmp_path / "train.log", read_only=(tmp_path,),
                             read_write=(tmp_path / "w",), cpus=2, memory_gb=4.0, env={"A": "1"},
                             container=ContainerPolicy(pids_limit=512, timeout_s={"train": 10.0}), timeout_s=10.0)
    back = build_request(roundtrip(request_spec(request)))
    assert back == request
    mine, theirs = original.container_kwargs(request, Slot(0, gpu=3)), rebuilt.container_kwargs(back, Slot(0, gpu=3))
    mine.pop("name"), theirs.pop("name")
    assert mine == theirs
    assert theirs["cap_drop"] == ["ALL"] and theirs["network_mode"] == "none" and theirs["read_only"]
    assert theirs["pids_limit"] == 512 and theirs["user"] == "1000:1000"


def test_the_gpu_slurm_allocated_is_the_containers(monkeypatch) -> None:
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    monkeypatch.setenv("SLURM_JOB_GPUS", "2,3")
    assert allocated_gpu() == 2
    monkeypatch.setenv("SLURM_JOB_GPUS", "")
    assert allocated_gpu() is None


def write_spec(tmp_path: Path, code: str) -> Path:
    sandbox = ProcessSandbox(program=[sys.executable, "-c", code])
    request = SandboxRequest("t-j", (), tmp_path / "logs" / "j.log", cpus=1)
    spec = tmp_path / "j.spec.json"
    spec.write_text(json.dumps({"schema": SPEC_SCHEMA, "key": "t/j", "token": "tok", "sandbox": sandbox_spec(sandbox),
                                "request": request_spec(request), "result": str(tmp_path / "j.result.json")}))
    return spec


def test_the_jobs_exit_code_is_the_batch_jobs_and_the_results(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "print('working'); raise SystemExit(3)")
    done = subprocess.run([sys.executable, "-m", "harness.executors.slurm_job", str(spec)], capture_output=True,
                          text=True, timeout=120, env={"SLURM_JOB_ID": "77", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 3, done.stderr
    result = json.loads((tmp_path / "j.result.json").read_text())
    assert (result["exit_code"], result["token"], result["slurm_job_id"], result["signal"]) == (3, "tok", "77", None)
    assert result["finished"] >= result["started"]
    assert "working" in (tmp_path / "logs" / "j.log").read_text()
    assert done.stdout.startswith("=== slurm: job 77 (t/j) on ")


def test_sigterm_stops_the_job_and_still_writes_the_result(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    spec = write_spec(tmp_path, f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                "time.sleep(300)")
    process = subprocess.Popen([sys.executable, "-m", "harness.executors.slurm_job", str(spec)],
                               stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    job = int(pid_file.read_text())
    process.send_signal(signal.SIGTERM)  # scancel, Slurm's time limit, a preemption
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    result = json.loads((tmp_path / "j.result.json").read_text())
    assert (result["exit_code"], result["signal"]) == (143, "SIGTERM")
    assert not Path(f"/proc/{job}").exists() or "Z" in Path(f"/proc/{job}/stat").read_text().split()[2]
