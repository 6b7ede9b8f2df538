"""The process sandbox: each job is ``python -m selfunet.cli ...`` in a subprocess.

``sys.executable -m`` instead of the ``selfunet`` console script, so it works in any virtual
environment without relying on PATH; output goes to the job's log file, never to the terminal
(several jobs run at once), with a header per attempt so resumed jobs keep their history.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence

from harness.sandboxes.base import Sandbox, SandboxRequest, Slot


class ProcessSandbox(Sandbox):
    name = "process"

    def __init__(self, program: Sequence[str] | None = None) -> None:
        #: the command that precedes the job's argv; tests swap in a cheap fake here.
        self.program = tuple(program) if program is not None else (sys.executable, "-m", "selfunet.cli")

    def command(self, request: SandboxRequest) -> list[str]:
        return [*self.program, *request.argv]

    def run(self, request: SandboxRequest, slot: Slot) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", **request.env, **slot.env()}
        if request.cpus:  # keep torch/BLAS from oversubscribing when several jobs share the CPUs
            env.setdefault("OMP_NUM_THREADS", str(request.cpus))
        command = self.command(request)
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(request.log_path, "ab") as log:
            header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} slot {slot.index} gpu {slot.gpu}: {' '.join(command)}\n"
            log.write(header.encode())
            log.flush()
            try:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env)
            except OSError as exc:
                log.write(f"cannot start the job: {exc}\n".encode())
                return 127
            try:
                return process.wait()
            except BaseException:  # Ctrl-C: let the job checkpoint (SIGTERM) instead of orphaning it
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                raise
