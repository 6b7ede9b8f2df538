"""The executor interface: submit ready jobs, wait for finished ones."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from harness.sandboxes.base import Sandbox, SandboxRequest


class JobStatus(StrEnum):
    """Where one job of the graph stands. Kept with the executors because every executor's
    completions end in one of these, and the results layer reads them back from run records.

    A ``StrEnum``: its members are the strings written to markers and run records, so records
    written before it existed read back unchanged.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # finished earlier with the same content hash
    FAILED = "failed"
    BLOCKED = "blocked"  # a job it depends on failed or was blocked
    INTERRUPTED = "interrupted"  # the harness was stopped while it ran


#: the statuses whose outputs later jobs may use.
FINISHED_WELL = (JobStatus.SUCCEEDED, JobStatus.SKIPPED)


@dataclass(frozen=True)
class Completion:
    """One finished job: ``exit_code`` 0 is success; ``error`` explains a sandbox breakdown."""

    key: str
    exit_code: int
    started: float
    finished: float
    slot: str = ""
    error: str = ""
    #: the status the job ends in when the executor knows better than the exit code: ``blocked`` (the
    #: scheduler dropped it because a job it waited for failed), ``interrupted`` (cancelled by this
    #: run); empty: succeeded or failed by ``exit_code``.
    outcome: str = ""


class Executor(ABC):
    """Places jobs on resource slots and runs them through a sandbox.

    Contract (what the graph relies on): ``submit`` never blocks for long and never runs the job
    in the caller's thread; ``wait`` blocks until at least one submitted job has finished and
    returns every finished one not returned before (empty only when nothing is in flight); a job
    whose sandbox raised comes back with a non-zero exit code and ``error`` set instead of
    raising. ``key`` is opaque to the executor (the graph's ``task/job`` id). A Ray executor
    would ``submit`` a remote task holding ``num_gpus=1`` and ``wait`` with ``ray.wait``.
    """

    #: set by the runner (:mod:`harness.run.status`): called as ``on_job_info(key, info)``.
    on_job_info: Callable[[str, dict], None] | None = None

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def job_info(self, key: str, **info: object) -> None:
        """Say where a submitted job runs, as soon as that is known: ``slot`` and ``host``, and any
        executor-specific id (``ray_task_id``, ``slurm_job_id``, ...). Shown by ``harness status``;
        may be called from any thread, more than once per job; never raises."""
        if self.on_job_info is None:
            return
        try:
            self.on_job_info(key, info)
        except Exception:  # watching must never stop a job
            logging.getLogger(__name__).debug("job_info(%s) failed", key, exc_info=True)

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many jobs may run at once (the graph submits at most this many)."""

    @abstractmethod
    def submit(self, key: str, request: SandboxRequest, uses_gpu: bool = True) -> None: ...

    @abstractmethod
    def wait(self) -> list[Completion]: ...

    # -- executors whose jobs outlive the harness process (Slurm): resuming and chaining --------
    #: True when jobs are left queued at the end (``harness run --detach``): nothing is stopped then.
    detached: bool = False

    def adopt(self, key: str, digest: str) -> str | None:
        """Before submitting ``key`` (content hash ``digest``): follow the same job an earlier run left
        queued or running instead, if there is one; returns what was adopted (None: submit it)."""
        return None

    def track(self, key: str, digest: str, after: tuple[str, ...] = ()) -> None:
        """Called just before :meth:`submit`: the job's hash, and the keys of unfinished jobs it must
        wait for (only for a detached run, which queues jobs behind their dependencies)."""
        return None

    def collect(self) -> list[Completion]:
        """Completions available now, without waiting (a detached run's last look)."""
        return []

    def hand_over(self, waiting_on: list[str]) -> str | None:
        """A detached run ends: arrange for the graph to go on once one of ``waiting_on`` has ended
        (Slurm: a follow-up job); returns a description, None when nothing was arranged."""
        return None

    def stop(self) -> list[str]:
        """Stop every running job now (the harness got a stop signal); their completions still
        come back from :meth:`wait` with the jobs' exit codes. Returns the stopped job ids."""
        return self.sandbox.stop_all()

    def close(self) -> None:
        """Release workers; called once at the end of a run (also after Ctrl-C)."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
