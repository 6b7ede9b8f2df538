"""The Ray executor: every ready job of the graph becomes a Ray task on an existing Ray cluster.

Why Ray and not a scheduler of our own: a full benchmark (10 datasets x up to 4 configurations x 5
folds, about 200 GPU trainings) outgrows one machine, and Ray already does placement, GPU
assignment, node-failure detection and retries. The graph (:mod:`harness.run.runner`) stays the
only place that knows dependencies, hashes and markers; this executor only places jobs.

How a job runs: ``submit`` launches :func:`_run_job` as a Ray task holding one GPU
(``num_gpus=1``; on a cluster without GPUs, or for a job that needs none, ``num_gpus=0``) and
``num_cpus_per_job`` CPUs. On the node Ray picked, the task asks Ray which GPU it got
(``ray.get_gpu_ids()``) and runs the sandbox with ``Slot(gpu=that id)``: the process sandbox
exposes it as ``CUDA_VISIBLE_DEVICES``, the Docker sandbox turns it into the container's device
request. ``wait`` is ``ray.wait``.

**Requirement: a shared filesystem.** Jobs read and write their work folder (artifacts, markers'
logs) and the dataset at the *same absolute paths* on every node, and the driver writes markers
and results there too. Mount the work root, the results root and the datasets (read-only is
enough) at identical paths on all nodes (NFS, Lustre, GPFS, CephFS...). The software must be at
the same path too (the process sandbox runs the driver's ``sys.executable``; the Docker sandbox
needs the same image id on every node). With that, a run can be stopped and resumed from any
machine, with either executor: the markers are the state, not the executor.

Failures:

- A job that exits non-zero is a failed job, reported as is (no retry: it would fail again).
- A worker process or a whole node lost mid-job: Ray reruns the task, at most ``max_retries``
  times, then the job comes back failed with ``error`` set. Rerunning is safe because every
  selfunet stage is idempotent (``train --resume`` continues from the last checkpoint).
- Ctrl-C in the driver: :meth:`RayExecutor.close` cancels every submitted task, first gently
  (the sandbox gets a KeyboardInterrupt and stops its job so it can checkpoint), then by force.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import select
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from harness.executors.base import Completion, Executor
from harness.sandboxes.base import Sandbox, SandboxRequest, Slot
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

#: set before Ray starts a local instance: when a worker dies, the raylet (as subreaper) also kills
#: the job processes it started, so a retried job never races an orphaned first attempt.
SUBREAPER_ENV = "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper"


def _restore_child_signal() -> None:
    """Undo what ``ray.init`` does to the driver: with the raylet as subreaper it sets SIGCHLD to
    ignored at the C level (invisible to ``signal.getsignal``), after which every later
    ``subprocess`` call in this process reports exit code 0, failures included."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing we can do here
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SelfUNetError(
            "--executor ray needs Ray: pip install 'selfunet[ray]' (or pip install 'ray>=2.9')."
        ) from None
    return ray


# -- shipping a sandbox to a worker -----------------------------------------------------------------
class _PortableSandbox:
    """A sandbox in a form that pickles: engine clients and other unpicklable attributes are left
    behind (a sandbox creates its client lazily on the node), locks are recreated there."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.cls = type(sandbox)
        self.state: dict[str, Any] = {}
        self.locks: list[str] = []
        lock_types = (type(threading.Lock()), type(threading.RLock()))
        for name, value in vars(sandbox).items():
            if isinstance(value, lock_types):
                self.locks.append(name)
                continue
            try:
                pickle.dumps(value)
            except Exception:
                log.debug("sandbox attribute %s stays on the driver (does not pickle)", name)
                value = None
            self.state[name] = value

    def build(self) -> Sandbox:
        sandbox = self.cls.__new__(self.cls)
        sandbox.__dict__.update(self.state)
        for name in self.locks:
            setattr(sandbox, name, threading.Lock())
        return sandbox


def portable(sandbox: Sandbox) -> Sandbox | _PortableSandbox:
    """The sandbox itself when it pickles (the common case), else a :class:`_PortableSandbox`."""
    try:
        pickle.dumps(sandbox)
        return sandbox
    except Exception:
        return _PortableSandbox(sandbox)


# -- the remote side ------------------------------------------------------------------------------
def _gpu_of(ids: list) -> int | str | None:
    """The one GPU Ray assigned (an int index, or a string when the node names GPUs by UUID)."""
    if not ids:
        return None
    first = ids[0]
    try:
        return int(first)
    except (TypeError, ValueError):
        return str(first)


@contextlib.contextmanager
def _cancellable() -> Iterator[None]:
    """Make ``ray.cancel(force=False)`` reach a job whose sandbox is blocked waiting for it.

    Ray cancels a running task by *simulating* SIGINT in the worker's main thread (and keeps the
    real SIGINT blocked there), which Python only notices when that thread runs bytecode: a sandbox
    blocked in ``waitpid`` or in a read from the container engine would notice only when the job
    ends. The simulated signal does reach the wakeup fd, so a watcher thread sees it and sends the
    main thread a harmless real signal (SIGURG, with a no-op handler) that interrupts the wait;
    Python then raises the pending KeyboardInterrupt and the sandbox stops its job gracefully.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    stop = threading.Event()
    main = threading.main_thread().ident
    old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    old_handler = signal.signal(signal.SIGURG, lambda *_: None)

    def watch() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([read], [], [], 0.5)
            if ready and signal.SIGINT in os.read(read, 256) and main is not None:
                signal.pthread_kill(main, signal.SIGURG)
                return

    watcher = threading.Thread(target=watch, name="cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        signal.set_wakeup_fd(old_fd)
        with contextlib.suppress(OSError):
            os.write(write, b"\0")  # wake the watcher now rather than at its next poll
        watcher.join(timeout=2)
        signal.signal(signal.SIGURG, old_handler)
        os.close(read)
        os.close(write)


def _run_job(shipped: Any, key: str, request: SandboxRequest, index: int) -> dict[str, Any]:
    """Runs on the node Ray picked: one job through the sandbox, on the GPU Ray assigned."""
    import ray

    sandbox = shipped.build() if isinstance(shipped, _PortableSandbox) else shipped
    with contextlib.suppress(ValueError):  # ValueError: not the main thread (then Ray left SIGCHLD alone)
        # With the raylet as subreaper, workers start with SIGCHLD ignored: the kernel then reaps
        # children itself and Popen.wait() reports exit code 0 for a job that failed.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    gpu = _gpu_of(ray.get_gpu_ids())
    slot = Slot(index=gpu if isinstance(gpu, int) else index, gpu=gpu)  # type: ignore[arg-type]
    if request.cpus and "OMP_NUM_THREADS" not in request.env:
        # Ray caps OMP_NUM_THREADS at the task's CPU reservation; the job gets the descriptor's
        # thread count, as with the local executor (same numerics, same results).
        request = dataclasses.replace(request, env={**request.env, "OMP_NUM_THREADS": str(request.cpus)})
    node = ray.util.get_node_ip_address()
    where = f"{node} gpu {gpu}" if gpu is not None else node
    with contextlib.suppress(OSError):
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(request.log_path, "a") as handle:
            handle.write(f"=== ray: {key} on {socket.gethostname()} ({where}), worker pid {os.getpid()}\n")
    started = time.time()
    try:
        with _cancellable():
            code, error = sandbox.run(request, slot), ""
    except Exception as exc:  # the sandbox broke: this job's failure, not a lost worker (no retry)
        code, error = -1, f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError), open(request.log_path, "a") as handle:
            handle.write(traceback.format_exc())
    return {"exit_code": code, "started": started, "finished": time.time(), "slot": where, "error": error}


# -- the driver side ------------------------------------------------------------------------------
@dataclasses.dataclass
class _Pending:
    key: str
    request: SandboxRequest
    submitted: float


class RayExecutor(Executor):
    """Runs jobs as Ray tasks on a Ray cluster (see the module docstring; needs a shared filesystem).

    ``address``: None connects to ``RAY_ADDRESS`` if set, else starts a local Ray instance;
    ``"auto"`` or ``HOST:6379`` joins a cluster this machine belongs to; ``ray://HOST:10001``
    connects from outside it (Ray Client). When Ray is already initialised in this process (tests,
    notebooks), that connection is used and left open at the end.

    ``max_retries``: how many times a job is rerun after its worker or node died (not after a job
    failure). ``num_cpus_per_job``: CPUs each job reserves (logical, as Ray counts them).
    ``jobs``: jobs in flight at most (default: twice the cluster's GPUs, or twice CPUs /
    num_cpus_per_job on a cluster without GPUs: Ray queues what does not fit, so a freed GPU gets
    its next job without waiting for the driver; a larger number lets an autoscaling cluster grow).
    ``cancel_grace_s``: after Ctrl-C, how long running jobs get to stop by themselves before their
    workers are killed. ``init_kwargs`` go to ``ray.init``.
    """

    def __init__(self, sandbox: Sandbox, address: str | None = None, max_retries: int = 2,
                 num_cpus_per_job: float = 1.0, jobs: int | None = None, cancel_grace_s: float = 15.0,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(sandbox)
        if max_retries < 0:
            raise SelfUNetError(f"--max-retries {max_retries}: must be 0 or more.")
        if num_cpus_per_job < 0:
            raise SelfUNetError(f"--cpus-per-job {num_cpus_per_job}: must be 0 or more.")
        ray = self._ray = _import_ray()
        self.max_retries = max_retries
        self.num_cpus_per_job = num_cpus_per_job
        self.jobs = jobs
        self.cancel_grace_s = cancel_grace_s
        self._owns_ray = False
        if ray.is_initialized():
            log.info("Ray is already initialised in this process: using that connection")
        else:
            kwargs = dict(init_kwargs or {})
            starts_local = address in (None, "local") and not os.environ.get("RAY_ADDRESS")
            if starts_local:
                os.environ.setdefault(SUBREAPER_ENV, "true")
                kwargs.setdefault("include_dashboard", False)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SelfUNetError(
                    f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {exc}. "
                    "Start it with `ray start --head` (docs/guide/scaling.md) or pass --address."
                ) from None
            self._owns_ray = True
            _restore_child_signal()
        self._shipped = portable(sandbox)
        # max_calls=0: a worker serves job after job (Ray would start a new one per GPU task by
        # default); the job's GPU memory lives in the sandbox's process or container, not here.
        self._remote = ray.remote(max_calls=0)(_run_job)
        self._pending: dict[Any, _Pending] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._capacity: tuple[float, int] | None = None
        resources = ray.cluster_resources()
        self.has_gpus = resources.get("GPU", 0) >= 1
        log.info("Ray cluster: %s GPU, %s CPU; %d job(s) at once", resources.get("GPU", 0),
                 resources.get("CPU", 0), self.capacity)

    # --- capacity
    @property
    def capacity(self) -> int:
        """Jobs in flight at most: re-read from the cluster every few seconds (nodes come and go)."""
        if self.jobs is not None:
            return self.jobs
        now = time.monotonic()
        if self._capacity is None or now - self._capacity[0] > 5.0:
            resources = self._ray.cluster_resources()
            gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
            if gpus:
                count = gpus
            elif self.num_cpus_per_job > 0:
                count = int(cpus // self.num_cpus_per_job)
            else:
                count = int(cpus)
            # twice the slots: Ray holds one more job per slot in its queue, so a GPU that frees up
            # starts the next job at once instead of after a round trip through the driver
            self._capacity = (now, 2 * max(count, 1))
        return self._capacity[1]

    # --- submit / wait
    def resources(self, uses_gpu: bool) -> dict[str, float]:
        """What one job reserves: one GPU when it trains or predicts and the cluster has GPUs."""
        return {"num_gpus": 1 if uses_gpu and self.has_gpus else 0, "num_cpus": self.num_cpus_per_job}

    def submit(self, key: str, request: SandboxRequest, uses_gpu: bool = True) -> None:
        with self._lock:
            index = self._count
            self._count += 1
        options = {**self.resources(uses_gpu), "max_retries": self.max_retries, "retry_exceptions": False,
                   "name": key}
        ref = self._remote.options(**options).remote(self._shipped, key, request, index)
        with self._lock:
            self._pending[ref] = _Pending(key, request, time.time())
        with contextlib.suppress(Exception):  # the node is known once it runs: the log's first line says it
            self.job_info(key, ray_task_id=ref.task_id().hex())

    def _completion(self, ref: Any, job: _Pending) -> Completion:
        ray = self._ray
        try:
            result = ray.get(ref)
        except Exception as exc:  # worker or node lost beyond the retries, cancelled, ...
            error = self._explain(exc)
            with contextlib.suppress(OSError):
                job.request.log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(job.request.log_path, "a") as handle:
                    handle.write(f"=== ray: {job.key} failed: {error}\n")
            return Completion(job.key, -1, job.submitted, time.time(), error=error)
        return Completion(job.key, result["exit_code"], result["started"], result["finished"], slot=result["slot"],
                          error=result["error"])

    def _explain(self, exc: Exception) -> str:
        from ray import exceptions as rex

        first = (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, rex.TaskCancelledError):
            return "cancelled"
        if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError)):
            return (f"{type(exc).__name__}: the Ray worker running it died {self.max_retries + 1} time(s) "
                    f"(--max-retries {self.max_retries}): {first}")
        return f"{type(exc).__name__}: {first}"

    def wait(self) -> list[Completion]:
        with self._lock:
            refs = list(self._pending)
        if not refs:
            return []
        ready, _ = self._ray.wait(refs, num_returns=1)
        ready_all, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        done = {*ready, *ready_all}
        with self._lock:
            jobs = [(ref, self._pending.pop(ref)) for ref in refs if ref in done]
        return [self._completion(ref, job) for ref, job in jobs]

    # --- shutdown
    def stop(self) -> list[str]:
        """A stop signal: cancel every submitted task (as :meth:`close` does) and say which jobs they were."""
        with self._lock:
            keys = sorted(job.key for job in self._pending.values())
        self._cancel_pending()
        return keys

    def close(self) -> None:
        """Cancel what is still submitted (Ctrl-C), then disconnect if this executor started Ray."""
        self._cancel_pending()
        ray = self._ray
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def _cancel_pending(self) -> None:
        ray = self._ray
        with self._lock:
            refs = list(self._pending)
            self._pending.clear()
        if refs and ray.is_initialized():
            log.warning("cancelling %d submitted Ray task(s)", len(refs))
            for ref in refs:  # gently: the sandbox gets a KeyboardInterrupt and stops its job
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=False)
            with contextlib.suppress(Exception):
                _, refs = ray.wait(refs, num_returns=len(refs), timeout=self.cancel_grace_s)
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

