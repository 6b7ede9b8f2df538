"""The sandbox interface: one job in, one exit code out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from harness.sandboxes.policy import ContainerPolicy

#: how long stopped jobs get to save their state before they are killed.
STOP_GRACE_S = 10.0
#: exit code of a job killed because it ran past its timeout (GNU timeout's code), in every sandbox.
EXIT_TIMEOUT = 124


@dataclass(frozen=True)
class Slot:
    """A share of the machine handed out by an executor: one GPU (or none, on CPU).

    ``gpu`` is the host's device index; a sandbox exposes exactly that device to the job
    (``CUDA_VISIBLE_DEVICES`` for a process, a device request for a container), so inside the
    job the GPU is always ``cuda:0``.
    """

    index: int
    gpu: int | None = None

    def env(self) -> dict[str, str]:
        return {} if self.gpu is None else {"CUDA_VISIBLE_DEVICES": str(self.gpu)}


@dataclass(frozen=True)
class SandboxRequest:
    """What a sandbox needs to run one job; everything is explicit, nothing comes from globals.

    ``argv`` are the arguments of the ``selfunet`` command (without the program name). The paths
    tell a container sandbox what to mount: ``read_only`` (the dataset) and ``read_write`` (the
    work directory); the process sandbox ignores them. ``cpus``/``memory_gb`` are limits a
    container enforces and a process uses as a hint; ``container`` applies to containers only,
    ``timeout_s`` to every sandbox.
    """

    job_id: str
    argv: tuple[str, ...]
    log_path: Path
    read_only: tuple[Path, ...] = ()
    read_write: tuple[Path, ...] = ()
    cpus: int | None = None
    memory_gb: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: how tightly a container is shut in (the task's ``container:`` section; None = all hardened defaults).
    container: ContainerPolicy | None = None
    #: seconds the job may run (the task's ``container.timeout_s`` for this stage); None = no limit.
    timeout_s: float | None = None


class Sandbox(ABC):
    """Runs a ``selfunet`` call in isolation and reports its exit code.

    Implementations must: append stdout and stderr to ``request.log_path`` (created if missing),
    expose only ``slot``'s GPU, block until the job ends, and return its exit code (never raise
    for a job that merely failed; raise only when the sandbox itself is broken). ``run`` is called
    from executor threads (or remote workers), so it must not keep per-job state on ``self``.
    """

    #: name on the command line (``--sandbox``).
    name: str = ""

    @property
    def image(self) -> str | None:
        """Identity of the software a job runs with (a container image id; None = this
        interpreter). Part of every job's content hash: a new image redoes the jobs."""
        return None

    @abstractmethod
    def run(self, request: SandboxRequest, slot: Slot) -> int: ...

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> list[str]:
        """Stop every job this sandbox is running now (``harness run`` got SIGTERM/SIGHUP/SIGINT):
        ask each to stop (SIGTERM: a trainer checkpoints), and kill what is left after ``grace_s``.
        Returns the ids of the jobs it stopped. Called from the main thread while executor threads
        are blocked in :meth:`run`, which then return the jobs' exit codes."""
        return []
