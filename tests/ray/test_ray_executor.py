"""RayExecutor against a real local Ray instance (4 logical GPUs), jobs through the real process sandbox."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from ray_fakes import EngineSandbox, attempts, fake_program, fake_request  # noqa: E402

from harness.executors.ray import RayExecutor, _PortableSandbox, portable  # noqa: E402
from harness.sandboxes.base import Slot  # noqa: E402
from harness.sandboxes.process import ProcessSandbox  # noqa: E402


def drain(executor: RayExecutor, timeout: float = 120.0) -> dict:
    """Wait for every submitted job; completions by key."""
    done, deadline = {}, time.time() + timeout
    while time.time() < deadline:
        batch = executor.wait()
        if not batch:
            return done
        done.update({c.key: c for c in batch})
    raise AssertionError(f"jobs still running after {timeout} s")


def test_capacity_is_twice_the_clusters_gpu_count(ray_address: str) -> None:
    executor = RayExecutor(ProcessSandbox(fake_program()))
    assert executor.capacity == 8  # 4 logical GPUs, one job running and one queued on each
    assert executor.resources(uses_gpu=True) == {"num_gpus": 1, "num_cpus": 1.0}
    assert executor.resources(uses_gpu=False)["num_gpus"] == 0
    assert RayExecutor(ProcessSandbox(fake_program()), jobs=9).capacity == 9


def test_jobs_are_spread_over_the_logical_gpus_one_job_per_gpu_at_a_time(ray_address: str, tmp_path: Path) -> None:
    executor = RayExecutor(ProcessSandbox(fake_program()), num_cpus_per_job=0.5)
    outs = {}
    for i in range(8):
        request, outs[f"job{i}"] = fake_request(tmp_path, f"job{i}", "--seconds", "1.5", cpus=2)
        executor.submit(f"job{i}", request, uses_gpu=True)
    done = drain(executor)
    executor.close()
    assert sorted(done) == sorted(outs) and all(c.exit_code == 0 for c in done.values()), done
    seen = {}
    for key, out in outs.items():
        start, end = attempts(out)
        gpu = int(start["cuda"])  # what the job process saw
        assert done[key].slot.endswith(f"gpu {gpu}"), (done[key].slot, start)
        assert start["omp"] == "2"  # the descriptor's threads, not Ray's cap of the reserved CPUs
        seen[key] = (gpu, start["time"], end["time"])
    assert {g for g, _, _ in seen.values()} <= set(range(4))
    assert len({g for g, _, _ in seen.values()}) >= 3, seen
    # no two jobs on one GPU at once, and several GPUs busy at once
    for a, (ga, sa, ea) in seen.items():
        for b, (gb, sb, eb) in seen.items():
            if a < b and ga == gb:
                assert ea <= sb or eb <= sa, f"{a} and {b} overlapped on gpu {ga}"
    most = max(sum(s <= t < e for _, s, e in seen.values()) for _, t, _ in seen.values())
    assert most >= 3, seen


def test_a_failing_job_is_reported_not_retried(ray_address: str, tmp_path: Path) -> None:
    executor = RayExecutor(ProcessSandbox(fake_program()), max_retries=2)
    request, out = fake_request(tmp_path, "bad", "--exit-code", "3")
    executor.submit("bad", request)
    (done,) = executor.wait()
    assert done.exit_code == 3 and done.error == ""
    assert [a["event"] for a in attempts(out)] == ["start", "end"]


def test_a_job_whose_worker_is_killed_is_retried_and_succeeds(ray_address: str, tmp_path: Path) -> None:
    executor = RayExecutor(ProcessSandbox(fake_program()), max_retries=2)
    request, out = fake_request(tmp_path, "flaky", "--kill-worker", "1", "--seconds", "0.2")
    executor.submit("flaky", request)
    (done,) = executor.wait()
    assert done.exit_code == 0, done
    starts = [e for e in attempts(out) if e["event"] == "start"]
    assert len(starts) == 2 and starts[0]["ppid"] != starts[1]["ppid"]  # a new worker ran the second attempt
    assert attempts(out)[-1]["event"] == "end"
    # the first attempt's process, orphaned by its worker's death, is stopped by the raylet (subreaper)
    deadline = time.time() + 15
    while not any(e["event"] == "terminated" and e["pid"] == starts[0]["pid"] for e in attempts(out)):
        assert time.time() < deadline, attempts(out)
        time.sleep(0.2)
    assert not any(e["event"] == "orphan" for e in attempts(out))
    assert request.log_path.read_text().count("=== ray: flaky") == 2


def test_a_job_whose_worker_always_dies_fails_after_max_retries(ray_address: str, tmp_path: Path) -> None:
    executor = RayExecutor(ProcessSandbox(fake_program()), max_retries=1)
    request, out = fake_request(tmp_path, "doomed", "--kill-worker", "99")
    executor.submit("doomed", request)
    (done,) = executor.wait()
    assert done.exit_code != 0
    assert "died 2 time(s)" in done.error and "--max-retries 1" in done.error, done.error
    assert sum(e["event"] == "start" for e in attempts(out)) == 2
    assert "failed:" in request.log_path.read_text()


def test_close_cancels_running_jobs_and_their_processes_stop(ray_address: str, tmp_path: Path) -> None:
    executor = RayExecutor(ProcessSandbox(fake_program()), cancel_grace_s=20)
    outs = []
    for i in range(2):
        request, out = fake_request(tmp_path, f"long{i}", "--seconds", "60")
        executor.submit(f"long{i}", request)
        outs.append(out)
    deadline = time.time() + 60
    while not all(attempts(o) for o in outs):
        assert time.time() < deadline, "the jobs never started"
        time.sleep(0.2)
    start = time.time()
    executor.close()  # what the runner's Ctrl-C ends in
    # the gentle cancel usually ends in seconds; after a long suite it has been seen to need the
    # whole grace period, then the forced cancel follows: either way close() must not hang
    assert time.time() - start < executor.cancel_grace_s + 15
    for out in outs:
        # SIGTERM reaches the job either from its sandbox (the gentle cancel) or, when the forced
        # cancel kills the worker, through the job's parent-death signal: a moment later
        deadline = time.time() + 20
        while attempts(out)[-1]["event"] != "terminated" and time.time() < deadline:
            time.sleep(0.2)
        events = attempts(out)
        assert events[-1]["event"] == "terminated", events  # SIGTERM: a chance to checkpoint
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                os.kill(events[0]["pid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.kill(events[0]["pid"], 0)
    assert executor.wait() == []
    assert ray.is_initialized()  # the session's instance is not ours to shut down


def test_an_unpicklable_sandbox_travels_without_its_client_and_locks() -> None:
    sandbox = EngineSandbox()
    shipped = portable(sandbox)
    assert isinstance(shipped, _PortableSandbox)
    rebuilt = pickle.loads(pickle.dumps(shipped)).build()
    assert rebuilt.program == sandbox.program and rebuilt._client is None
    assert rebuilt._lock.acquire(blocking=False)
    sandbox._client.close()
    plain = ProcessSandbox(fake_program())
    assert portable(plain) is plain


def test_the_gpu_ray_assigned_becomes_the_docker_device_request(ray_address: str) -> None:
    pytest.importorskip("docker", reason="the docker package is not installed")
    from harness.sandboxes.docker import DockerSandbox

    sandbox = DockerSandbox(image="selfunet:test")
    sandbox._image_id = "sha256:test"  # resolved on the driver (job hashes need it); no engine needed here
    shipped = portable(sandbox)

    @ray.remote(num_gpus=1, num_cpus=0)
    def device_request(shipped):
        from harness.executors.ray import _gpu_of
        from harness.sandboxes.base import SandboxRequest

        box = shipped.build() if hasattr(shipped, "build") else shipped
        gpu = _gpu_of(ray.get_gpu_ids())
        kwargs = box.container_kwargs(SandboxRequest("j", ("plan", "/w"), Path("/tmp/x.log")), Slot(0, gpu))
        return gpu, kwargs["device_requests"][0]["DeviceIDs"], kwargs["image"]

    gpu, ids, image = ray.get(device_request.remote(shipped))
    assert gpu in range(4) and ids == [str(gpu)] and image == "sha256:test"


def test_subprocess_exit_codes_survive_a_local_ray_instance(ray_address: str) -> None:
    """ray.init with the raylet as subreaper ignores SIGCHLD in the driver; left that way, every later
    subprocess in the process (job sandboxes, git, tests) reports exit code 0, failures included."""
    import subprocess
    import sys

    assert subprocess.run([sys.executable, "-c", "raise SystemExit(3)"]).returncode == 3
    executor = RayExecutor(ProcessSandbox(fake_program()))
    try:
        assert subprocess.run([sys.executable, "-c", "raise SystemExit(4)"]).returncode == 4
    finally:
        executor.close()
