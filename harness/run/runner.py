"""Run the job graphs of several tasks on one executor: skip what is done, redo what changed.

The loop: every job whose dependencies are done gets its hash; a matching marker skips it, an
in-process job runs right here, anything else goes to the executor. A failed job marks its
dependents "blocked" and nothing else; independent jobs (other folds, other tasks) go on. When a
task's graph has settled, its run record and results are written.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.executors.base import FINISHED_WELL, Completion, Executor, JobStatus
from harness.run.jobs import Job, TaskGraph, code_version, invalid_outputs, is_done, job_hash, set_aside
from harness.run.progress import RunProgress, live_view
from harness.run.status import RunState
from harness.sandboxes.base import SandboxRequest
from selfunet.artifacts import atomic_write_json
from selfunet.errors import SelfUNetError, os_error_message
from selfunet.locks import WORK_LOCK, describe_owner, exclusive, owner_alive, owner_record

log = logging.getLogger(__name__)

STATUS_STYLE = {JobStatus.SUCCEEDED: "green", JobStatus.SKIPPED: "dim", JobStatus.FAILED: "bold red",
                JobStatus.BLOCKED: "yellow", JobStatus.INTERRUPTED: "magenta"}
#: the signals that stop ``harness run``: every running job is stopped and marked interrupted.
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT) if s is not None)
#: lock files of the roots one ``harness run`` writes (distinct names: the roots may be one folder).
RESULTS_LOCK, WORK_ROOT_LOCK = ".harness-results.lock", ".harness-work.lock"


class RunInterrupted(KeyboardInterrupt):
    """``harness run`` got SIGTERM, SIGHUP or SIGINT; the running jobs were stopped and marked interrupted."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.stopped: list[str] = []

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block the first stop signal raises :class:`RunInterrupted` in the main thread (the
    runner then stops the jobs); later ones are noted and ignored, so the stopping itself is not
    cut short. Outside the main thread nothing changes."""
    fired: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if fired:
            log.warning("signal %d: already stopping the running jobs", signum)
            return
        fired.append(signum)
        raise RunInterrupted(signum)

    previous = {}
    for sig in STOP_SIGNALS:
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class JobRecord:
    task: str
    job: str
    stage: str
    status: JobStatus = JobStatus.PENDING
    hash: str = ""
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    log: str = ""
    reason: str = ""
    slot: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.finished - self.started) if self.started and self.finished else 0.0


class Runner:
    def __init__(self, graphs: list[TaskGraph], executor: Executor, force: bool = False,
                 console: Console | None = None, version: str | None = None, progress: bool = True,
                 state: RunState | None = None) -> None:
        self.graphs = {g.task.name: g for g in graphs}
        self.executor = executor
        self.force = force
        self.console = console or Console(stderr=True)
        self.version = version or code_version()
        self.jobs: dict[str, Job] = {}
        self.records: dict[str, JobRecord] = {}
        self._settled: set[str] = set()
        self.task_started: dict[str, float] = {}
        self.progress = progress
        self.state = state
        """``<work_root>/.harness/state.json`` and ``results/status.html`` (:mod:`harness.run.status`)."""
        if state is not None:
            executor.on_job_info = state.job_info

    def _track(self, key: str, page: bool = False) -> None:
        """The run-state file (and the status page) after a job changed."""
        if self.state is not None:
            self.state.job(key, self.records[key])
            if page:
                self.state.write_page()

    # --- bookkeeping
    def _add(self, task: str, jobs: list[Job]) -> None:
        for job in jobs:
            key = f"{task}/{job.id}"
            if key in self.jobs:
                raise SelfUNetError(f"task '{task}': job '{job.id}' defined twice (a bug in the graph).")
            self.jobs[key] = job
            self.records[key] = JobRecord(task, job.id, job.stage, log=str(self.graphs[task].markers.log(job.id)))
            if self.state is not None:
                self.state.job(key, self.records[key], write=False)
        if self.state is not None and jobs:
            self.state.flush()

    def _finish(self, key: str, status: str, exit_code: int | None = None, reason: str = "") -> None:
        rec, job = self.records[key], self.jobs[key]
        graph = self.graphs[rec.task]
        rec.status, rec.exit_code, rec.reason = status, exit_code, reason or rec.reason
        rec.finished = rec.finished or time.time()
        if status == JobStatus.FAILED:
            rec.log_tail = graph.markers.log_tail(job.id) or reason.splitlines()
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            graph.markers.write(job.id, {
                "job": job.id, "task": rec.task, "hash": rec.hash, "status": status, "exit_code": exit_code,
                "started": rec.started, "finished": rec.finished, "seconds": rec.seconds, "argv": list(job.argv),
                "log": rec.log, "slot": rec.slot, "reason": rec.reason, "log_tail": rec.log_tail,
                "owner": owner_record(),
            })
        if status in FINISHED_WELL:
            try:
                self._add(rec.task, graph.expand(job.id))
            except Exception as exc:  # the graph cannot grow: this job counts as failed
                detail = _detail(exc)
                rec.status, rec.reason = JobStatus.FAILED, f"after {job.id}: {detail}"
                rec.log_tail = detail.splitlines()
                graph.markers.write(job.id, {"job": job.id, "hash": rec.hash, "status": JobStatus.FAILED,
                                             "reason": rec.reason, "log_tail": rec.log_tail})
        symbol = {JobStatus.SUCCEEDED: "[green]done[/]", JobStatus.FAILED: "[bold red]FAILED[/]",
                  JobStatus.SKIPPED: "[dim]skipped[/]", JobStatus.BLOCKED: "[yellow]blocked[/]"}[rec.status]
        self._track(key, page=rec.status in (JobStatus.SUCCEEDED, JobStatus.FAILED))
        ran = rec.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) and rec.started
        took = f" ({rec.seconds:.1f} s)" if ran else ""
        self.console.print(f"{symbol} {rec.task}/{job.id}{took}" + (
            f"  log: {escape(rec.log)}" if rec.status == JobStatus.FAILED else ""), highlight=False)

    def _dep_status(self, key: str) -> str:
        """ready | waiting | blocked"""
        task = self.records[key].task
        states = [self.records[f"{task}/{d}"].status if f"{task}/{d}" in self.records else "unknown"
                  for d in self.jobs[key].deps]
        if any(s in (JobStatus.FAILED, JobStatus.BLOCKED) for s in states):
            return JobStatus.BLOCKED
        return "ready" if all(s in FINISHED_WELL for s in states) or self._chainable(key, states) else "waiting"

    def _chainable(self, key: str, states: list[str]) -> bool:
        """A detached run queues a job behind its unfinished dependencies (Slurm's afterok) when they
        are all submitted, it runs through the executor, and it reads no file one of them is still
        writing (its hash covers that file's content: ``plan`` reads the fingerprint, ``predict-test``
        the selection; those wait for the follow-up)."""
        if not self.executor.detached or any(s not in (*FINISHED_WELL, JobStatus.RUNNING) for s in states):
            return False
        task, job = self.records[key].task, self.jobs[key]
        writing = {p for k, r in self.records.items() if r.task == task and r.status == JobStatus.RUNNING
                   for p in self.jobs[k].outputs}
        return job.action is None and not writing & set(job.artifacts)

    def _start(self, key: str, may_submit: bool) -> str:
        """Skip, run in-process, or submit one ready job: skipped | inline | submitted | deferred."""
        rec, job = self.records[key], self.jobs[key]
        graph = self.graphs[rec.task]
        deps = {d: self.records[f"{rec.task}/{d}"].hash for d in job.deps}
        rec.hash = job_hash(job, deps, self.executor.sandbox.image, self.version)
        previous = graph.markers.read(job.id)
        if not self.force and is_done(previous, rec.hash, job):
            rec.started, rec.finished = previous.get("started"), previous.get("finished")
            self._finish(key, JobStatus.SKIPPED, previous.get("exit_code"))
            return JobStatus.SKIPPED
        adopted = self.executor.adopt(key, rec.hash) if job.action is None else None
        if adopted:  # an earlier run left it queued or running (Slurm): follow it, do not submit it twice
            rec.started, rec.status = time.time(), JobStatus.RUNNING
            graph.markers.write(job.id, {"job": job.id, "hash": rec.hash, "status": JobStatus.RUNNING,
                                         "started": rec.started, "owner": owner_record(), "adopted": adopted})
            self.console.print(f"[cyan]adopted[/] {rec.task}/{job.id}: {escape(adopted)}", highlight=False)
            self._track(key)
            return "submitted"
        if previous is not None and previous.get("status") == JobStatus.RUNNING:
            self._recover(key, previous)
        if job.action is None and not may_submit:
            return "deferred"
        for path, why in invalid_outputs(job).items():  # e.g. an empty checkpoint after a full disk
            moved = set_aside(path)
            self.console.print(f"[yellow]redo[/] {escape(rec.task)}/{escape(job.id)}: {escape(str(path))} is {why}; "
                               f"moved to {escape(moved.name)}", highlight=False, soft_wrap=True)
        stale = self.force or (previous is not None and previous.get("hash") != rec.hash)
        argv = job.restart_argv if stale and job.restart_argv is not None else job.argv
        rec.started, rec.status = time.time(), JobStatus.RUNNING
        if job.action is not None:
            try:
                job.action()
            except Exception as exc:
                detail = _detail(exc)
                rec.finished = time.time()
                self._finish(key, JobStatus.FAILED, 1, detail)
                return "inline"
            self._finish(key, JobStatus.SUCCEEDED, 0)
            return "inline"
        graph.markers.write(job.id, {"job": job.id, "hash": rec.hash, "status": JobStatus.RUNNING,
                                     "started": rec.started,
                                     "owner": owner_record()})
        self.console.print(f"[bold]start[/] {rec.task}/{job.id}: {escape('selfunet ' + ' '.join(argv))}  "
                           f"(log: {escape(rec.log)})",
                           highlight=False, soft_wrap=True)
        task = graph.task
        request = SandboxRequest(
            job_id=f"{rec.task}-{job.id}", argv=argv, log_path=graph.markers.log(job.id),
            # the dataset path comes from the descriptor only, never from a file a job wrote
            read_only=tuple(dict.fromkeys((*job.read_only, task.dataset))), read_write=(graph.work,),
            cpus=task.resources.cpus, memory_gb=task.resources.memory_gb,
            container=task.container, timeout_s=task.container.timeout_for(job.stage),
        )
        self._track(key)
        self.executor.track(key, rec.hash, tuple(f"{rec.task}/{d}" for d in job.deps
                                                 if self.records[f"{rec.task}/{d}"].status == JobStatus.RUNNING))
        self.executor.submit(key, request, uses_gpu=job.uses_gpu)
        return "submitted"

    def _recover(self, key: str, marker: dict) -> None:
        """A marker still saying "running": its owner died (a crash, SIGKILL, a power loss) or is gone
        (this run holds the work directory's lock), so the job counts as interrupted and runs again
        (a training resumes from its latest checkpoint)."""
        rec = self.records[key]
        owner = marker.get("owner") or {}
        state = "no longer running" if not owner_alive(owner) else "not holding the work directory"
        self.graphs[rec.task].markers.write(rec.job, {**marker, "status": JobStatus.INTERRUPTED,
                                                      "recovered": time.time(),
                                                      "reason": f"owner {describe_owner(owner)} {state}"})
        self.console.print(f"[magenta]recovered[/] {escape(rec.task)}/{escape(rec.job)}: its marker said running "
                           f"(owner {escape(describe_owner(owner))}, {state}); treated as interrupted, running it "
                           "again", highlight=False, soft_wrap=True)

    def _interrupt(self, signum: int) -> list[str]:
        """Stop every running job (whole process group / container), mark it interrupted."""
        name = signal.Signals(signum).name
        running = [k for k, r in self.records.items() if r.status == JobStatus.RUNNING]
        if self.executor.detached:  # --detach: what was submitted stays queued for the next run to adopt
            self.console.print(f"[bold magenta]{name}[/]: --detach: {len(running)} submitted job(s) stay queued; "
                               "rerun the same command to pick them up", highlight=False, soft_wrap=True)
            return []
        if running:
            self.console.print(f"[bold magenta]{name}[/]: stopping {len(running)} running job(s): "
                               + ", ".join(escape(k) for k in running), highlight=False, soft_wrap=True)
        self.executor.stop()
        for key in running:
            rec = self.records[key]
            rec.status, rec.finished = JobStatus.INTERRUPTED, time.time()
            rec.reason = f"stopped by {name}; rerun to resume"
            with contextlib.suppress(OSError):
                self.graphs[rec.task].markers.write(rec.job, {
                    "job": rec.job, "task": rec.task, "hash": rec.hash, "status": JobStatus.INTERRUPTED, "signal": name,
                    "started": rec.started, "finished": rec.finished, "log": rec.log, "reason": rec.reason,
                    "owner": owner_record()})
            self._track(key)
        if self.state is not None:
            self.state.finish(JobStatus.INTERRUPTED)
        return running

    def _complete(self, done: Completion) -> None:
        rec = self.records[done.key]
        rec.started, rec.finished, rec.slot = done.started, done.finished, done.slot
        if done.outcome == JobStatus.BLOCKED:  # the scheduler dropped it: a job it waited for failed
            self._finish(done.key, JobStatus.BLOCKED, reason=done.error)
        elif done.exit_code == 0:
            self._finish(done.key, JobStatus.SUCCEEDED, 0)
        else:
            self._finish(done.key, JobStatus.FAILED, done.exit_code, done.error or f"exit code {done.exit_code}")

    # --- the loop
    def run(self, on_task_done=None) -> list[JobRecord]:
        """Run everything under the live progress view (:mod:`harness.run.progress`); ``on_task_done(graph,
        records)`` is called once per task when it settles.

        A :class:`RunInterrupted` (raised by :func:`interrupt_on_signals`) stops the running jobs,
        marks them interrupted and propagates with the stopped job keys attached."""
        try:
            if not self.progress:
                return self._run(on_task_done)
            with live_view(RunProgress(self.records, self.executor.capacity), self.console):
                return self._run(on_task_done)
        except RunInterrupted as stop:
            stop.stopped = self._interrupt(stop.signum)
            raise

    def _run(self, on_task_done=None) -> list[JobRecord]:
        for name, graph in self.graphs.items():
            self.task_started[name] = time.time()
            self._add(name, graph.initial_jobs())
        running = 0
        while True:
            progressed = True
            while progressed:
                progressed = False
                for key in [k for k, r in self.records.items() if r.status == JobStatus.PENDING]:
                    state = self._dep_status(key)
                    if state == JobStatus.BLOCKED:
                        self._finish(key, JobStatus.BLOCKED, reason="a job it depends on failed")
                        progressed = True
                    elif state == "ready":
                        outcome = self._start(key, may_submit=running < self.executor.capacity)
                        running += outcome == "submitted"
                        progressed = progressed or outcome != "deferred"
                self._settle(on_task_done)
            if running == 0:
                break
            done = self.executor.collect() if self.executor.detached else self.executor.wait()
            if not done:  # detached: everything that can be queued is; the rest waits for a follow-up
                if self.executor.detached:
                    self._hand_over()
                break
            for completion in done:
                running -= 1
                self._complete(completion)
        for rec in self.records.values():  # jobs whose dependency never appeared (cannot happen normally)
            if rec.status == JobStatus.PENDING and not running:
                rec.status, rec.reason = JobStatus.BLOCKED, "its dependencies never became ready"
        self._settle(on_task_done)
        if self.state is not None:
            for key in self.records:
                self.state.job(key, self.records[key], write=False)
            self.state.finish()
        return list(self.records.values())

    def _hand_over(self) -> None:
        """Detached: the graph goes on once one of the jobs it waits for has ended (a pending job needs
        it, or it adds jobs to the graph: plan, preprocess); the executor arranges that (Slurm: a
        follow-up ``harness run`` job)."""
        live = [k for k, r in self.records.items() if r.status == JobStatus.RUNNING]
        needed = {f"{r.task}/{d}" for k, r in self.records.items() if r.status == JobStatus.PENDING
                  for d in self.jobs[k].deps}
        frontier = [k for k in live if k in needed or self.graphs[self.records[k].task].expands(
            self.records[k].job)] or live
        where = self.executor.hand_over(frontier)
        self.console.print(f"[bold]detached[/]: {len(live)} job(s) queued" + (
            f"; follow-up {escape(where)} continues after {', '.join(escape(k) for k in frontier)}" if where else "")
            + "; `harness run` with the same arguments picks the state up", highlight=False, soft_wrap=True)

    def _settle(self, on_task_done) -> None:
        for name, graph in self.graphs.items():
            if name in self._settled:
                continue
            mine = [r for r in self.records.values() if r.task == name]
            if all(r.status in (*FINISHED_WELL, JobStatus.FAILED, JobStatus.BLOCKED) for r in mine):
                self._settled.add(name)
                if on_task_done is not None:
                    on_task_done(graph, mine)


def _detail(exc: Exception) -> str:
    """What a failed in-process step reports: the message of a user error, else the traceback (a bug)."""
    if isinstance(exc, SelfUNetError):
        return str(exc)
    if isinstance(exc, OSError):
        return os_error_message(exc)
    return traceback.format_exc()


# -- reporting ------------------------------------------------------------------------------------
def summary_table(records: list[JobRecord]) -> Table:
    table = Table(title="harness run", show_lines=False)
    for column in ("task", "job", "status", "seconds", "note"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for r in records:
        seconds = f"{r.seconds:.1f}" if r.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) else ""
        note = r.reason.splitlines()[0][:80] if r.reason else ""
        if r.status == JobStatus.FAILED:
            note = f"{note}  log: {r.log}".strip()
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(r.task, r.job, f"[{style}]{r.status}[/]" if style else r.status, seconds, escape(note))
    counts = {s: sum(r.status == s for r in records) for s in STATUS_STYLE}
    table.caption = ", ".join(f"{n} {s}" for s, n in counts.items())
    return table


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("selfunet", "torch", "numpy", "SimpleITK", "scipy", "pydantic", "typer", "rich"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _device() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            return {"type": "cuda", "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    except Exception:
        pass
    import os

    return {"type": "cpu", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def run_record(graph: TaskGraph, records: list[JobRecord], started: float, executor: str, sandbox: str,
               image: str | None, version: str) -> dict:
    """results/<task>/run.json: what ran, with which software, where (the environment fingerprint,
    :mod:`harness.results.environment`), and how long each job took."""
    from harness.results.environment import fingerprint

    task = graph.task
    return {
        "schema_version": 1, "task": task.name, "descriptor": str(task.source), "descriptor_hash": task.digest(),
        "descriptor_content": task.content(), "dataset": str(task.dataset), "work": str(graph.work),
        "code_version": version, "packages": _package_versions(), "device": _device(), "executor": executor,
        "sandbox": sandbox, "image": image, "command": sys.argv,
        "environment": fingerprint(graph.work, sandbox, image, graph.train_config.amp),
        "seeds": {"train": graph.train_config.seed, "split": graph.train_config.split_seed},
        "train_seeds": graph.seeds,
        "train_config": graph.train_config.model_dump(mode="json"),
        "configurations": graph.configurations, "folds": graph.num_folds,
        "started": started, "finished": time.time(), "seconds": time.time() - started,
        "succeeded": all(r.status in FINISHED_WELL for r in records),
        "jobs": [{k: v for k, v in asdict(r).items() if k not in ("task", "log_tail")} | {"seconds": r.seconds}
                 for r in records],
    }


def write_results(graph: TaskGraph, record: dict) -> Path:
    """run.json, then everything else under results/<task>/ (``harness.results.publish.write_task_results``)
    and the HTML report (``harness.report.html``: the task's page and results/index.html)."""
    from harness.report.html import write_index, write_report
    from harness.results.publish import write_task_results

    out = graph.results / graph.task.name
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run.json", record)
    if record.get("environment"):
        from harness.results.environment import FILE

        atomic_write_json(out / FILE, record["environment"])
    board = write_task_results(graph.task, graph.work, graph.results, record)
    if board is not None:
        write_report([board], graph.results)
    else:
        write_index(graph.results)
    return out


def run_tasks(tasks: list, executor: Executor, work_root: Path, results_root: Path, force: bool = False,
              console: Console | None = None, executor_name: str = "local",
              seeds: list[int] | None = None) -> list[JobRecord]:
    """``harness run``: every task's graph on one executor; results written as each task settles.

    Holds the locks of the results root, the work root and each task's work directory for the whole
    run (a second ``harness run`` or ``selfunet run`` there exits saying who holds them), and turns
    SIGTERM/SIGHUP/SIGINT into :class:`RunInterrupted` after stopping the running jobs."""
    console = console or Console(stderr=True)
    version = code_version()
    with contextlib.ExitStack() as held:  # one writer per results root, work root and task work directory
        held.enter_context(exclusive(Path(results_root), RESULTS_LOCK, "the results root"))
        held.enter_context(exclusive(Path(work_root), WORK_ROOT_LOCK, "the work root"))
        for t in tasks:
            held.enter_context(exclusive(Path(work_root) / t.name, WORK_LOCK, f"task {t.name}'s work directory"))
        held.enter_context(interrupt_on_signals())
        return _run_locked(tasks, executor, work_root, results_root, force, console, executor_name, version, seeds)


def _run_locked(tasks: list, executor: Executor, work_root: Path, results_root: Path, force: bool,
                console: Console, executor_name: str, version: str,
                seeds: list[int] | None = None) -> list[JobRecord]:
    graphs = [TaskGraph(t, Path(work_root) / t.name, results_root, seeds) for t in tasks]
    state = RunState(work_root, results_root, executor_name, executor.sandbox.name, executor.capacity)
    runner = Runner(graphs, executor, force=force, console=console, version=version, state=state)

    def task_done(graph: TaskGraph, records: list[JobRecord]) -> None:
        record = run_record(graph, records, runner.task_started[graph.task.name], executor_name,
                            executor.sandbox.name, executor.sandbox.image, version)
        try:
            out = write_results(graph, record)
            console.print(f"[bold]{graph.task.name}[/]: results in {escape(str(out))}", highlight=False)
        except Exception as exc:  # results of one task must not lose the others'
            log.error("task %s: writing results failed: %s", graph.task.name, exc)
            runner.records[f"{graph.task.name}/results"] = JobRecord(
                graph.task.name, "results", "results", status=JobStatus.FAILED, reason=str(exc),
                log_tail=traceback.format_exc().splitlines()[-LOG_TAIL:])

    return runner.run(on_task_done=task_done)


LOG_TAIL = 50
