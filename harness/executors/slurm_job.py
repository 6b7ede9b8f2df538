"""The body of every Slurm batch job of the harness: ``python -m harness.executors.slurm_job SPEC.json``.

The executor (:mod:`harness.executors.slurm`) writes a JSON spec next to the job's record: the
sandbox (its kind and settings, never a pickle) and the :class:`SandboxRequest`. On the node this
module rebuilds both and runs the job exactly as the local executor would: ``--sandbox process``
starts ``selfunet ARGV`` in a process group of its own, ``--sandbox docker`` starts the project's
container with the hardened settings of :mod:`harness.sandboxes.docker` (its memory limit, no
network, read-only root, ...; the container lives outside the Slurm job's cgroup, so those limits
are the ones that hold). The GPU Slurm allocated stays the job's: the process sandbox keeps Slurm's
``CUDA_VISIBLE_DEVICES``; the docker sandbox gets the host index from ``SLURM_JOB_GPUS``.

SIGTERM (``scancel``, Slurm's time limit, a preemption) stops the job the sandbox's way (SIGTERM to
the job's group, so a training checkpoints; ``docker stop`` for a container) before this process
exits. At the end a result file (exit code, start and end times, host) is written atomically;
the exit status of the batch job is the job's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from harness.sandboxes.base import Sandbox, SandboxRequest, Slot
from harness.sandboxes.policy import ContainerPolicy

SPEC_SCHEMA = 1


def sandbox_spec(sandbox: Sandbox) -> dict[str, Any]:
    """The settings that rebuild ``sandbox`` on a node, as JSON (the classes the harness knows)."""
    from harness.sandboxes.docker import DockerSandbox
    from harness.sandboxes.process import ProcessSandbox

    if isinstance(sandbox, ProcessSandbox):
        return {"kind": "process", "program": list(sandbox.program), "timeout_s": sandbox.timeout_s}
    if isinstance(sandbox, DockerSandbox):
        # the resolved image id: every node must run the same image as the one the hashes cover
        return {"kind": "docker", "image": sandbox.image, "user": sandbox.user, "shm_size": sandbox.shm_size,
                "timeout_s": sandbox.timeout_s, "cpus": sandbox.cpus, "memory_gb": sandbox.memory_gb,
                "entrypoint": sandbox.entrypoint, "network_mode": sandbox.network_mode}
    raise ValueError(f"sandbox {type(sandbox).__name__} cannot run under --executor slurm (process and docker can)")


def build_sandbox(spec: dict[str, Any]) -> Sandbox:
    from harness.sandboxes.docker import DockerSandbox
    from harness.sandboxes.process import ProcessSandbox

    options = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "process":
        return ProcessSandbox(**options)
    if spec["kind"] == "docker":
        return DockerSandbox(**options)
    raise ValueError(f"unknown sandbox kind {spec['kind']!r}")


def request_spec(request: SandboxRequest) -> dict[str, Any]:
    return {"job_id": request.job_id, "argv": list(request.argv), "log_path": str(request.log_path),
            "read_only": [str(p) for p in request.read_only], "read_write": [str(p) for p in request.read_write],
            "cpus": request.cpus, "memory_gb": request.memory_gb, "env": dict(request.env),
            "container": request.container.model_dump(mode="json") if request.container is not None else None,
            "timeout_s": request.timeout_s}


def build_request(spec: dict[str, Any]) -> SandboxRequest:
    return SandboxRequest(
        job_id=spec["job_id"], argv=tuple(spec["argv"]), log_path=Path(spec["log_path"]),
        read_only=tuple(Path(p) for p in spec["read_only"]), read_write=tuple(Path(p) for p in spec["read_write"]),
        cpus=spec["cpus"], memory_gb=spec["memory_gb"], env=dict(spec["env"]),
        container=ContainerPolicy.model_validate(spec["container"]) if spec["container"] is not None else None,
        timeout_s=spec["timeout_s"])


def allocated_gpu() -> int | None:
    """The host index of the first GPU Slurm gave this job (``SLURM_JOB_GPUS=2,3``), if any."""
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        first = os.environ.get(name, "").split(",")[0].strip()
        if first.isdigit():
            return int(first)
    return None


class _Stopped(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    from selfunet.artifacts import atomic_write_json

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.executors.slurm_job SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    if spec.get("schema") != SPEC_SCHEMA:
        print(f"{args[0]}: spec schema {spec.get('schema')} is not {SPEC_SCHEMA}", file=sys.stderr)
        return 2
    request = build_request(spec["request"])
    sandbox = build_sandbox(spec["sandbox"])
    gpu = allocated_gpu() if spec["sandbox"]["kind"] == "docker" else None
    slot = Slot(index=0, gpu=gpu)
    job = os.environ.get("SLURM_JOB_ID", "?")
    host = socket.gethostname()
    started = time.time()
    print(f"=== slurm: job {job} ({spec['key']}) on {host}, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    error, stopped_by = "", None
    try:
        code = sandbox.run(request, slot)
    except _Stopped as exc:  # the sandbox has stopped its job on the way out (SIGTERM, then SIGKILL)
        stopped_by = signal.Signals(exc.signum).name
        code = 128 + exc.signum
        print(f"=== slurm: job {job} stopped by {stopped_by}", flush=True)
    except Exception as exc:  # the sandbox broke: the job's failure, with the traceback in its log
        code, error = 1, f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the result below is written whatever comes next
    atomic_write_json(Path(spec["result"]), {
        "key": spec["key"], "token": spec["token"], "slurm_job_id": job, "host": host, "exit_code": code,
        "started": started, "finished": time.time(), "error": error, "signal": stopped_by})
    return code if 0 <= code < 256 else 1


if __name__ == "__main__":
    sys.exit(main())
