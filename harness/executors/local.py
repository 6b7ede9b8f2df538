"""The local executor: one job per visible GPU at a time, or on a CPU-only machine as many jobs as
the cores hold (``cores // resources.cpus``), or ``--jobs N``."""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from harness.executors.base import Completion, Executor
from harness.sandboxes.base import Sandbox, SandboxRequest, Slot

log = logging.getLogger(__name__)


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install must not stop CPU runs
        return 0


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_cpu_jobs(cpus_per_job: int) -> int | None:
    """Jobs at once on a CPU-only machine: as many as the cores hold at ``cpus_per_job`` each.

    Why not one: a job is never CPU-bound on every core all the time (start-up imports, the
    single-threaded parts of data loading, evaluation and writing), so one job at a time left one
    of two cores idle for much of a demo run. Each process job gets ``OMP_NUM_THREADS`` =
    ``cpus_per_job`` (the process sandbox), so two jobs on two cores do not oversubscribe them.
    Returns None where GPUs are visible: there the default stays one job per GPU.
    """
    if visible_gpus():
        return None
    return max(1, usable_cores() // max(int(cpus_per_job), 1))


def make_slots(jobs: int | None = None, gpus: int | None = None) -> list[Slot]:
    """One slot per GPU (``gpus`` defaults to the visible count), or ``jobs`` slots spread over them.

    Without ``jobs`` on a CPU-only machine: one slot (callers pass :func:`default_cpu_jobs`).
    """
    gpus = visible_gpus() if gpus is None else gpus
    count = jobs if jobs is not None else max(gpus, 1)
    if count < 1:
        raise ValueError("jobs must be at least 1")
    return [Slot(index=i, gpu=(i % gpus) if gpus else None) for i in range(count)]


class SlotPool:
    """A thread-safe pool: ``acquire`` blocks until a slot is free; no slot is handed out twice."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = list(slots)
        self._free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
        for slot in slots:
            self._free.put(slot)

    def acquire(self) -> Slot:
        return self._free.get()

    def release(self, slot: Slot) -> None:
        self._free.put(slot)


class LocalExecutor(Executor):
    def __init__(self, sandbox: Sandbox, jobs: int | None = None, gpus: int | None = None) -> None:
        super().__init__(sandbox)
        self.pool = SlotPool(make_slots(jobs, gpus))
        self._threads = ThreadPoolExecutor(max_workers=len(self.pool.slots), thread_name_prefix="harness-job")
        self._futures: set[Future] = set()
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return len(self.pool.slots)

    def _run(self, key: str, request: SandboxRequest) -> Completion:
        slot = self.pool.acquire()
        started = time.time()
        self.job_info(key, slot=f"{slot.index}" + (f" gpu {slot.gpu}" if slot.gpu is not None else ""),
                      host=socket.gethostname())
        try:
            code, error = self.sandbox.run(request, slot), ""
        except Exception as exc:  # the sandbox broke: report it as this job's failure
            log.debug("sandbox failed for %s", key, exc_info=True)
            code, error = -1, f"{type(exc).__name__}: {exc}"
            try:
                with open(request.log_path, "a") as handle:
                    handle.write(traceback.format_exc())
            except OSError:
                pass
        finally:
            self.pool.release(slot)
        gpu = f" gpu {slot.gpu}" if slot.gpu is not None else ""
        return Completion(key, code, started, time.time(), slot=f"{slot.index}{gpu}", error=error)

    def submit(self, key: str, request: SandboxRequest, uses_gpu: bool = True) -> None:
        with self._lock:
            self._futures.add(self._threads.submit(self._run, key, request))

    def wait(self) -> list[Completion]:
        with self._lock:
            pending = set(self._futures)
        if not pending:
            return []
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        with self._lock:
            self._futures -= done
        return [f.result() for f in done]

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
