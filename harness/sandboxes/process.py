"""The process sandbox: each job is ``python -m selfunet.cli ...`` in a subprocess.

``sys.executable -m`` instead of the ``selfunet`` console script, so it works in any virtual
environment without relying on PATH; output goes to the job's log file, never to the terminal
(several jobs run at once), with a header per attempt so resumed jobs keep their history.

Each job runs in a session (and process group) of its own, so stopping it reaches every process
it started (preprocessing workers too), and a Ctrl-C in the terminal reaches only the harness,
which then stops the jobs in order (:meth:`ProcessSandbox.stop_all`). A job whose owner dies
without a word (SIGKILL, a lost Ray worker) gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence

from harness.sandboxes.base import EXIT_TIMEOUT, STOP_GRACE_S, Sandbox, SandboxRequest, Slot


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM when the thread that started it dies (the
    harness killed by SIGKILL, a Ray worker lost), so no job outlives its owner unseen. Nothing but
    one libc call here (no locks, no imports: the parent has threads)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the job's whole process group, SIGKILL to whatever is left after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    # the leader may be gone while its children (pool workers) live on: the group is killed either way
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)


#: the jobs each sandbox runs now (job id -> process), for :meth:`ProcessSandbox.stop_all` from
#: another thread; kept outside the instance so that a sandbox still pickles (Ray ships copies).
_RUNNING: weakref.WeakKeyDictionary[ProcessSandbox, dict[str, subprocess.Popen]] = weakref.WeakKeyDictionary()
_RUNNING_LOCK = threading.Lock()


class ProcessSandbox(Sandbox):
    name = "process"

    def __init__(self, program: Sequence[str] | None = None, timeout_s: float | None = None) -> None:
        #: the command that precedes the job's argv; tests swap in a cheap fake here.
        self.program = tuple(program) if program is not None else (sys.executable, "-m", "selfunet.cli")
        #: CLI override of the descriptor's per-stage timeouts (``container.timeout_s``).
        self.timeout_s = timeout_s

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
                                           env=env, start_new_session=True, preexec_fn=_die_with_parent)
            except OSError as exc:
                log.write(f"cannot start the job: {exc}\n".encode())
                return 127
            with _RUNNING_LOCK:
                _RUNNING.setdefault(self, {})[request.job_id] = process
            timeout_s = self.timeout_s if self.timeout_s is not None else request.timeout_s
            try:
                return process.wait(timeout=timeout_s or None)
            except subprocess.TimeoutExpired:  # SIGTERM (the job checkpoints), SIGKILL after the grace
                stop_group(process)
                log.write(f"=== TIMEOUT: the job ran past {timeout_s:g} s and was stopped; raise "
                          "container.timeout_s in the descriptor or --job-timeout.\n".encode())
                return EXIT_TIMEOUT
            except BaseException:  # Ctrl-C in a Ray worker: let the job checkpoint (SIGTERM), then kill its group
                stop_group(process)
                raise
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.get(self, {}).pop(request.job_id, None)

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> list[str]:
        with _RUNNING_LOCK:
            live = dict(_RUNNING.get(self, {}))
        threads = [threading.Thread(target=stop_group, args=(p, grace_s), daemon=True) for p in live.values()]
        for t in threads:  # all at once: N jobs take one grace period, not N
            t.start()
        for t in threads:
            t.join()
        return sorted(live)
