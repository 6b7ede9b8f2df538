"""Helpers of the Ray tests: jobs of the fake program (``fake_job.py``) run by the real process sandbox."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from harness.sandboxes.base import SandboxRequest
from harness.sandboxes.process import ProcessSandbox

FAKE_JOB = Path(__file__).with_name("fake_job.py")


def fake_program() -> tuple[str, ...]:
    """What the process sandbox runs instead of ``python -m selfunet.cli``."""
    return (sys.executable, str(FAKE_JOB))


def fake_request(tmp: Path, name: str, *args: str, cpus: int | None = None) -> tuple[SandboxRequest, Path]:
    """A job of the fake program: its argv, its log, and the file it records its attempts in."""
    out = tmp / f"{name}.jsonl"
    request = SandboxRequest(job_id=name, argv=("--out", str(out), *args), log_path=tmp / "logs" / f"{name}.log",
                             read_write=(tmp,), cpus=cpus)
    return request, out


def attempts(out: Path) -> list[dict]:
    """The lines the fake program wrote, in order."""
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


class EngineSandbox(ProcessSandbox):
    """A sandbox holding what a container sandbox holds: a lock and a live engine handle."""

    def __init__(self) -> None:
        super().__init__(fake_program())
        self._lock = threading.Lock()
        self._client = open(os.devnull)  # noqa: SIM115 (a live handle: does not pickle)
