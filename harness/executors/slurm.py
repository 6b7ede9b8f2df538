"""The Slurm executor: every job of the graph becomes a Slurm batch job (``harness run --executor slurm``).

How a job runs: :meth:`SlurmExecutor.submit` writes a spec (the sandbox's settings and the job's
:class:`SandboxRequest`, JSON) and a batch script whose ``#SBATCH`` lines come from the task's
``resources``, ``container.timeout_s`` and ``slurm:`` section (:mod:`harness.executors.slurm_spec`),
and ``sbatch``\\ es it; on the node, ``python -m harness.executors.slurm_job SPEC`` runs the job through
the same sandbox as the local executor would. ``wait`` polls ``squeue`` (one call for every job in
flight, every 1 s rising to 10 s while nothing changes) and reads a finished job's state, reason and
exit code from ``scontrol show job`` (``sacct`` once slurmctld has forgotten it), mapped to the
harness's statuses by :func:`harness.executors.slurm_spec.interpret` (out of memory, timeout,
preempted, cancelled, node failure each say so in the run record). Needs what the Ray executor
needs: the work root, results root, datasets and the Python environment at the same paths on
every node (a shared filesystem).

Why ``sbatch`` and not submitit, and why the harness submits jobs as they become ready (Slurm's
``--dependency=afterok`` only with ``--detach``): docs/guide/slurm.md, with the measured costs.

The per-job record (for ``harness status`` and for resuming)
-------------------------------------------------------------
``<work_root>/<task>/.harness/slurm/<job>.json``, written atomically (temp file + rename) at every
change the harness sees. Schema 1::

    {
      "schema": 1, "executor": "slurm",
      "key": "<task>/<job>", "task": "<task>", "job": "<job>",
      "hash": "<the job's content hash when it was submitted>",
      "token": "<random hex; the Slurm job's comment is 'selfunet:<token>'>",
      "slurm_job_id": "<id>" | null,      # null only between writing the record and sbatch answering
      "attempt": 1,                      # resubmissions after NODE_FAIL/BOOT_FAIL/PREEMPTED add one
      "state": "SUBMITTING" | "SUBMIT_FAILED" | <a Slurm job state: PENDING, RUNNING, COMPLETED, FAILED,
               OUT_OF_MEMORY, TIMEOUT, CANCELLED, PREEMPTED, NODE_FAIL, ...>,
      "reason": "<Slurm's reason, or the harness's explanation once finished>",
      "exit_code": <int> | null,
      "submitted": <epoch s>, "started": <epoch s> | null, "finished": <epoch s> | null,
      "node": "<node list>" | "", "after": ["<Slurm job ids it waits for (afterok)>"],
      "log": "<the job's log: sbatch --output, the same file harness run shows>",
      "script": "<the batch script>", "spec": "<the job spec>", "result": "<the node's result file>",
      "partition": "<partition or ''>", "collected": <true once harness run took the outcome>,
      "submitted_by": {"pid", "host", "started", "since", "command"}, "updated": <epoch s>
    }

The script, spec and result files sit beside it (``<job>.sbatch``, ``<job>.spec.json``,
``<job>.result.json``). With ``--detach`` the follow-up job's record is
``<work_root>/.harness/slurm-follow-up.json`` (same fields, key ``follow-up``).

Resuming: a second ``harness run`` asks :meth:`SlurmExecutor.adopt` before submitting a job; a record
with the job's hash whose Slurm job is still pending or running (its comment names the record's
token, so a reused job id is never mistaken for ours), or finished but not yet collected, is
followed instead of resubmitted. SIGTERM/Ctrl-C: ``scancel`` of the ids this run submitted or
adopted, nothing else; with ``--detach`` nothing is cancelled.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.executors.base import Completion, Executor
from harness.executors.slurm_commands import JobState, Slurm, SlurmError
from harness.executors.slurm_job import SPEC_SCHEMA, request_spec, sandbox_spec
from harness.executors.slurm_spec import (
    LIVE_STATES,
    RETRY_STATES,
    JobResources,
    SlurmOptions,
    interpret,
    job_name,
    render_script,
    sbatch_argv,
    time_minutes,
)
from harness.sandboxes.base import Sandbox, SandboxRequest
from selfunet.artifacts import atomic_write_json, atomic_write_text
from selfunet.errors import SelfUNetError
from selfunet.locks import owner_record

log = logging.getLogger(__name__)

RECORD_SCHEMA = 1
RECORD_DIR = Path(".harness") / "slurm"
FOLLOW_UP = Path(".harness") / "slurm-follow-up.json"
#: how often ``wait`` looks for result files (seconds).
FILE_POLL_S = 0.25


@dataclass
class _Tracked:
    key: str
    record: dict
    path: Path
    request: SandboxRequest | None = None
    uses_gpu: bool = True
    cancelled_by_us: bool = False


class SlurmExecutor(Executor):
    """Runs jobs as Slurm batch jobs (see the module docstring).

    ``work_root``: where each task's work directory is (``<work_root>/<task>``; the records go there).
    ``options``: the ``slurm:`` section of each task by name; ``override``: the command line's
    ``--slurm-*`` options, over every task's. ``gpus``: GPUs of a training/prediction job by task
    (None: one where the cluster has GPUs). ``detach``: leave every job queued at the end and on
    SIGTERM (the runner then hands the rest to a follow-up job). ``follow_up``: the command a
    follow-up job runs (``harness run ... --detach``). ``max_retries``: resubmissions of a job that
    ended NODE_FAIL, BOOT_FAIL or PREEMPTED. ``jobs``: jobs in flight at most (default: no limit of
    the harness's own; Slurm queues them).
    """

    def __init__(self, sandbox: Sandbox, work_root: Path, options: Mapping[str, SlurmOptions] | None = None,
                 override: SlurmOptions | None = None, gpus: Mapping[str, int | None] | None = None,
                 jobs: int | None = None, detach: bool = False, follow_up: Sequence[str] | None = None,
                 max_retries: int = 1, poll_s: tuple[float, float] = (1.0, 10.0), slurm: Slurm | None = None,
                 python: str | None = None) -> None:
        super().__init__(sandbox)
        self.work_root = Path(work_root).resolve()
        self.options = dict(options or {})
        self.override = override
        self.gpus = dict(gpus or {})
        self.jobs = jobs
        self.detached = detach
        self.follow_up = list(follow_up) if follow_up else None
        self.max_retries = max_retries
        self.poll_s = poll_s
        self.slurm = slurm or Slurm()
        self.python = python or sys.executable
        self._sandbox_spec = sandbox_spec(sandbox)
        self._live: dict[str, _Tracked] = {}
        self._ready: list[Completion] = []
        self._after: dict[str, list[str]] = {}
        self._hash: dict[str, str] = {}
        self._retries: dict[str, int] = {}
        self._seen: set[str] = set()
        self._submitting: str | None = None
        self._cluster_gpus: bool | None = None
        if shutil.which("sbatch") is None and slurm is None:
            raise SlurmError("`sbatch` not found: --executor slurm runs on a machine with the Slurm client commands "
                             "(a login node), or start the CI cluster with `.ci/slurm.sh start`.")
        if not detach:  # an attached run follows every job itself: a detached run's follow-up is not needed
            self.cancel_follow_up()

    # --- paths and records
    @property
    def capacity(self) -> int:
        return self.jobs or 100_000

    def _paths(self, key: str) -> dict[str, Path]:
        task, _, job = key.partition("/")
        folder = self.work_root / task / RECORD_DIR
        return {"record": folder / f"{job}.json", "script": folder / f"{job}.sbatch",
                "spec": folder / f"{job}.spec.json", "result": folder / f"{job}.result.json"}

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("schema") == RECORD_SCHEMA else None

    def _save(self, tracked: _Tracked, **changes: object) -> None:
        tracked.record.update(changes, updated=time.time())
        atomic_write_json(tracked.path, tracked.record)

    def _options_for(self, key: str) -> SlurmOptions:
        return self.options.get(key.partition("/")[0], SlurmOptions()).merged(self.override)

    def _gpus_for(self, key: str, uses_gpu: bool) -> int:
        if not uses_gpu:
            return 0
        chosen = self.gpus.get(key.partition("/")[0])
        if chosen is not None:
            return chosen
        if self._cluster_gpus is None:
            self._cluster_gpus = self.slurm.has_gpus()
        return 1 if self._cluster_gpus else 0

    # --- the runner's hooks
    def track(self, key: str, digest: str, after: Sequence[str] = ()) -> None:
        """The next :meth:`submit` of ``key`` has content hash ``digest`` and waits for ``after`` (keys)."""
        self._hash[key], self._after[key] = digest, list(after)

    def submit(self, key: str, request: SandboxRequest, uses_gpu: bool = True) -> None:
        paths = self._paths(key)
        paths["record"].parent.mkdir(parents=True, exist_ok=True)
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        options = self._options_for(key)
        timeout = self.sandbox.timeout_s if getattr(self.sandbox, "timeout_s", None) is not None else request.timeout_s
        resources = JobResources(cpus=int(request.cpus or 1), gpus=self._gpus_for(key, uses_gpu),
                                 memory_mb=math.ceil(request.memory_gb * 1024) if request.memory_gb else None,
                                 time_minutes=time_minutes(timeout))
        deps, token, digest = self._after.pop(key, []), secrets.token_hex(8), self._hash.pop(key, "")
        ended = {c.key: c for c in self._ready}
        failed = [k for k in deps if k in ended and ended[k].exit_code != 0]
        if failed:  # adopted as finished, not yet seen by the runner: nothing to queue behind
            now = time.time()
            self._ready.append(Completion(key, 1, now, now, error=f"a job it depends on failed ({', '.join(failed)})",
                                          outcome="blocked"))
            return
        after = [self._live[k].record["slurm_job_id"] for k in deps if k in self._live]
        task, _, job = key.partition("/")
        previous = self._read(paths["record"]) or {}
        record = {"schema": RECORD_SCHEMA, "executor": "slurm", "key": key, "task": task, "job": job,
                  "hash": digest, "token": token, "slurm_job_id": None,
                  "attempt": int(previous.get("attempt", 0)) + 1 if previous.get("hash") == digest else 1,
                  "state": "SUBMITTING", "reason": "", "exit_code": None, "submitted": time.time(), "started": None,
                  "finished": None, "node": "", "after": after, "log": str(request.log_path),
                  "script": str(paths["script"]), "spec": str(paths["spec"]), "result": str(paths["result"]),
                  "partition": options.partition or "", "collected": False, "submitted_by": owner_record(),
                  "resources": {"cpus": resources.cpus, "memory_mb": resources.memory_mb,
                                "time_minutes": resources.time_minutes, "gpus": resources.gpus}}
        tracked = _Tracked(key, record, paths["record"], request, uses_gpu)
        self._seen.discard(key)
        with contextlib.suppress(FileNotFoundError):
            paths["result"].unlink()
        atomic_write_json(paths["spec"], {"schema": SPEC_SCHEMA, "key": key, "token": token,
                                          "sandbox": self._sandbox_spec, "request": request_spec(request),
                                          "result": str(paths["result"])})
        command = [self.python, "-m", "harness.executors.slurm_job", str(paths["spec"])]
        atomic_write_text(paths["script"], render_script(key, resources, options, command))
        self._save(tracked)  # before sbatch: a harness killed right after still finds the token
        argv = sbatch_argv(str(paths["script"]), name=job_name(key), comment=f"selfunet:{token}",
                           log=str(request.log_path), chdir=str(Path.cwd()), after=after)
        self._submitting = f"selfunet:{token}"
        try:
            job_id = self.slurm.sbatch(argv)
        except SlurmError as exc:
            self._save(tracked, state="SUBMIT_FAILED", reason=str(exc), collected=True, finished=time.time())
            with contextlib.suppress(OSError), open(request.log_path, "a") as handle:
                handle.write(f"=== slurm: {exc}\n")
            self._ready.append(Completion(key, -1, record["submitted"], time.time(), error=str(exc)))
            return
        finally:
            self._submitting = None
        self._save(tracked, slurm_job_id=job_id, state="PENDING")
        self._live[key] = tracked
        self.job_info(key, slurm_job_id=job_id, partition=options.partition or "", slot=f"slurm {job_id}")

    def adopt(self, key: str, digest: str) -> str | None:
        """Follow a job an earlier ``harness run`` submitted with this hash, if Slurm still has it queued
        or running, or it finished unseen; returns what it found (None: submit anew)."""
        path = self._paths(key)["record"]
        record = self._read(path)
        if record is None or record.get("collected"):
            return None
        tracked = _Tracked(key, record, path)
        if record.get("hash") != digest:  # its inputs changed since: a queued job would compute the old ones
            self._cancel_superseded(tracked)
            return None
        job_id, comment = record.get("slurm_job_id"), f"selfunet:{record.get('token')}"
        if job_id is None:  # killed between writing the record and sbatch's answer
            job_id = self.slurm.find_comment(comment)
            if job_id is None:
                return None
            self._save(tracked, slurm_job_id=job_id)
        state = self.slurm.state(job_id)
        if state is not None and state.comment not in ("", "(null)", comment):
            return None  # the id now names someone else's job (a reset cluster reuses ids)
        if state is None:
            result = self._result(tracked)
            if result is None:
                return None  # Slurm forgot it and it left no result: run it again
            state = JobState("COMPLETED" if result.get("exit_code") == 0 else "FAILED",
                             exit_code=f"{result.get('exit_code', 1)}:0", start=result.get("started"),
                             end=result.get("finished"))
        self._live[key] = tracked
        self.job_info(key, slurm_job_id=job_id, partition=record.get("partition", ""), slot=f"slurm {job_id}")
        if state.state.split()[0] not in LIVE_STATES:
            self._finish(tracked, state)
        else:
            self._save(tracked, state=state.state, reason=state.reason, node=state.node,
                       started=state.start if state.state == "RUNNING" else None)
        return f"Slurm job {job_id} ({state.state.split()[0]})"

    def _cancel_superseded(self, tracked: _Tracked) -> None:
        """A job of an earlier run whose hash is no longer the job's: cancelled if Slurm still has it
        queued or running (it would write the same folders as its replacement)."""
        job_id, comment = tracked.record.get("slurm_job_id"), f"selfunet:{tracked.record.get('token')}"
        state = self.slurm.state(job_id) if job_id else None
        if state is not None and state.state.split()[0] in LIVE_STATES and state.comment == comment:
            log.warning("%s: Slurm job %s was submitted for other inputs; cancelling it", tracked.key, job_id)
            self.slurm.cancel([job_id])
            self._save(tracked, state="CANCELLED", reason="superseded: the job's inputs changed", collected=True,
                       finished=time.time())

    # --- waiting
    def _result(self, tracked: _Tracked) -> dict | None:
        result = self._read_result(Path(tracked.record["result"]))
        return result if result is not None and result.get("token") == tracked.record.get("token") else None

    @staticmethod
    def _read_result(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _log_tail(self, tracked: _Tracked, lines: int = 40) -> list[str]:
        try:
            with open(tracked.record["log"], "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 16384))
                return handle.read().decode(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def _finish(self, tracked: _Tracked, state: JobState) -> None:
        """A job reached a final state: its completion is queued (or it is resubmitted)."""
        record = tracked.record
        base = state.state.split()[0]
        if state.exit_code is None or base != state.state:
            detail = self.slurm.scontrol(record["slurm_job_id"]) or self.slurm.sacct(record["slurm_job_id"])
            if detail is not None and detail.state.split()[0] == base:
                state = JobState(state.state, state.reason or detail.reason, detail.exit_code, state.comment,
                                 state.node or detail.node, state.start or detail.start, detail.end)
        resources = record.get("resources", {})
        outcome = interpret(state.state, state.exit_code, state.reason, self._log_tail(tracked),
                            cancelled_by_us=tracked.cancelled_by_us, memory_mb=resources.get("memory_mb"),
                            time_minutes=resources.get("time_minutes"))
        result = self._result(tracked) or {}
        started = result.get("started") or state.start or record.get("started") or record["submitted"]
        finished = result.get("finished") or state.end or time.time()
        self._live.pop(tracked.key, None)
        retries = self._retries.get(tracked.key, 0)
        if base in RETRY_STATES and tracked.request is not None and retries < self.max_retries:
            self._retries[tracked.key] = retries + 1
            self._save(tracked, state=base, reason=outcome.reason, finished=finished, collected=True)
            log.warning("%s: %s; resubmitting (retry %d of %d)", tracked.key, outcome.reason, retries + 1,
                        self.max_retries)
            self._hash[tracked.key] = record["hash"]
            self.submit(tracked.key, tracked.request, tracked.uses_gpu)
            return
        if outcome.status == "succeeded" and result.get("exit_code") not in (None, 0):
            outcome = interpret("FAILED", f"{result['exit_code']}:0")
        self._save(tracked, state=state.state, reason=outcome.reason, exit_code=outcome.exit_code, started=started,
                   finished=finished, node=state.node or record.get("node", ""))
        slot = f"slurm {record['slurm_job_id']}" + (f" on {state.node}" if state.node else "")
        self._ready.append(Completion(tracked.key, outcome.exit_code, started, finished, slot=slot,
                                      error=outcome.reason, outcome=outcome.status))

    def _poll(self) -> bool:
        """One look at every job in flight; True when anything changed."""
        if not self._live:
            return False
        ids = {t.record["slurm_job_id"]: t for t in self._live.values()}
        states = self.slurm.squeue(list(ids))
        changed = False
        for job_id, tracked in ids.items():
            result = self._result(tracked)
            if result is not None and result.get("exit_code") == 0:  # done: Slurm may still say COMPLETING
                node = states[job_id].node if job_id in states else tracked.record.get("node", "")
                self._finish(tracked, JobState("COMPLETED", "", "0:0", node=node, start=result.get("started"),
                                               end=result.get("finished")))
                changed = True
                continue
            state = states.get(job_id) or self.slurm.scontrol(job_id) or self.slurm.sacct(job_id)
            if state is None:
                result = self._result(tracked)
                state = (JobState("COMPLETED" if result.get("exit_code") == 0 else "FAILED",
                                  exit_code=f"{result.get('exit_code', 1)}:0") if result is not None
                         else JobState("NODE_FAIL", "the job is gone from squeue, scontrol and sacct"))
            if state.state.split()[0] not in LIVE_STATES:
                self._finish(tracked, state)
                changed = True
            elif state.state != tracked.record["state"]:
                self._save(tracked, state=state.state, reason=state.reason, node=state.node,
                       started=state.start if state.state == "RUNNING" else None)
                if state.state == "RUNNING":
                    self.job_info(tracked.key, host=state.node, slot=f"slurm {job_id} on {state.node}")
                changed = True
        return changed

    def collect(self) -> list[Completion]:
        """Completions ready now, without waiting (``--detach``)."""
        self._poll()
        done, self._ready = self._ready, []
        for completion in done:
            self._collected(completion.key)
        return done

    def _collected(self, key: str) -> None:
        path = self._paths(key)["record"]
        record = self._read(path)
        if record is not None:
            record.update(collected=True, updated=time.time())
            atomic_write_json(path, record)

    def _new_results(self) -> bool:
        """Whether a job in flight wrote its result file since the last look (a stat per job)."""
        fresh = {k for k, t in self._live.items() if k not in self._seen and Path(t.record["result"]).exists()}
        self._seen |= fresh
        return bool(fresh)

    def wait(self) -> list[Completion]:
        """Blocks until a job ends. The node writes a job's result file as it ends; it is looked for
        every :data:`FILE_POLL_S` (a stat on the shared filesystem, nothing asked of slurmctld), and
        Slurm itself every 1 s rising to 10 s while nothing changes (one ``squeue`` for all jobs),
        which catches the jobs that end without a result: killed for memory or time, cancelled, lost."""
        interval, asked = self.poll_s[0], time.monotonic()
        while not self._ready and self._live:
            time.sleep(min(FILE_POLL_S, interval))
            if self._new_results() or time.monotonic() - asked >= interval:
                changed, asked = self._poll(), time.monotonic()
                interval = self.poll_s[0] if changed else min(interval * 1.5, self.poll_s[1])
        done, self._ready = self._ready, []
        for completion in done:
            self._collected(completion.key)
        return done

    # --- stopping and handing over
    def stop(self) -> list[str]:
        """SIGTERM/Ctrl-C: ``scancel`` exactly the jobs this run submitted or adopted (none with
        ``--detach``: they stay queued, and a later ``harness run`` adopts them)."""
        if self.detached:
            return []
        live = list(self._live.values())
        ids = [t.record["slurm_job_id"] for t in live]
        if self._submitting is not None:  # the signal came during sbatch: that job may exist already
            ids += [i for i in [self.slurm.find_comment(self._submitting)] if i is not None]
        self.slurm.cancel(ids)
        for tracked in live:
            tracked.cancelled_by_us = True
            self._save(tracked, state="CANCELLED", reason="cancelled by harness run (stop signal)", collected=True,
                       finished=time.time())
        self._live.clear()
        return sorted(t.key for t in live)

    def close(self) -> None:
        if not self.detached and self._live:
            log.warning("cancelling %d Slurm job(s) of this run", len(self._live))
            self.stop()

    def hand_over(self, waiting_on: Sequence[str]) -> str | None:
        """``--detach``: submit the follow-up job (``harness run ... --detach`` again) that starts as
        soon as the first of ``waiting_on`` ends, and replace a pending earlier one. Returns its id."""
        path = self.work_root / FOLLOW_UP
        earlier = self._read(path)
        if earlier and earlier.get("slurm_job_id") and earlier["slurm_job_id"] != os.environ.get("SLURM_JOB_ID"):
            state = self.slurm.state(earlier["slurm_job_id"])
            if state is not None and state.state == "PENDING" and state.comment == f"selfunet:{earlier['token']}":
                self.slurm.cancel([earlier["slurm_job_id"]])
        ids = [self._live[k].record["slurm_job_id"] for k in waiting_on if k in self._live]
        if not ids or not self.follow_up:
            return None
        token = secrets.token_hex(8)
        script = path.with_suffix(".sbatch")
        logfile = path.with_suffix(".log")
        options = self.options.get(next(iter(self.options), ""), SlurmOptions()).merged(self.override)
        atomic_write_text(script, render_script("follow-up", JobResources(cpus=1, memory_mb=2048, time_minutes=30),
                                                options.model_copy(update={"constraint": None}), self.follow_up))
        argv = sbatch_argv(str(script), name="selfunet:follow-up", comment=f"selfunet:{token}", log=str(logfile),
                           chdir=str(Path.cwd()), after=ids, any_of=True)
        job_id = self.slurm.sbatch(argv)
        earlier_ids = [*(earlier or {}).get("earlier", []), *([earlier["slurm_job_id"]] if earlier else [])]
        atomic_write_json(path, {"schema": RECORD_SCHEMA, "executor": "slurm", "key": "follow-up", "token": token,
                                 "slurm_job_id": job_id, "earlier": earlier_ids, "state": "PENDING", "after": ids,
                                 "submitted": time.time(),
                                 "log": str(logfile), "script": str(script), "submitted_by": owner_record(),
                                 "updated": time.time()})
        return f"Slurm job {job_id}"

    def cancel_follow_up(self) -> None:
        """An attached run takes over: a follow-up job still pending from a detached one is not needed."""
        record = self._read(self.work_root / FOLLOW_UP)
        if record and record.get("slurm_job_id") and record["slurm_job_id"] != os.environ.get("SLURM_JOB_ID"):
            state = self.slurm.state(record["slurm_job_id"])
            if state is not None and state.state == "PENDING" and state.comment == f"selfunet:{record['token']}":
                self.slurm.cancel([record["slurm_job_id"]])


def executor_for(tasks: Sequence, work_root: Path, slurm: dict, detach: bool, max_retries: int,
                 harness_argv: Sequence[str]) -> functools.partial:
    """``harness run --executor slurm``: the executor for these tasks (each one's ``slurm:`` section
    and ``resources.gpus``), with the ``--slurm-*`` options in ``slurm`` over them; a follow-up job
    runs ``python -m harness.cli HARNESS_ARGV``."""
    from pydantic import ValidationError

    try:
        override = SlurmOptions(**slurm)
    except ValidationError as exc:
        raise SelfUNetError("; ".join(f"--slurm-{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}"
                                      for e in exc.errors())) from None
    return functools.partial(SlurmExecutor, work_root=work_root, options={t.name: t.slurm for t in tasks},
                             override=override, gpus={t.name: t.resources.gpus for t in tasks}, detach=detach,
                             follow_up=[sys.executable, "-m", "harness.cli", *harness_argv], max_retries=max_retries)


def same_command(ctx) -> list[str]:
    """``run`` and the options of this ``harness run`` (a click context), as a follow-up job reruns
    it: absolute paths (it starts in the same folder, but the descriptors may name others),
    ``--detach`` kept, ``--force`` dropped (a follow-up redoing everything would never end)."""
    again: list[str] = []
    for param in ctx.command.params if ctx is not None else []:
        value = ctx.params.get(param.name)
        if param.name == "force" or value in (None, False, []):
            continue
        values = [str(Path(v).resolve()) if isinstance(v, Path) else str(v)
                  for v in (value if isinstance(value, (list, tuple)) else [value])]
        again += values if param.param_type_name == "argument" else (
            [param.opts[0]] if value is True else [f"{param.opts[0]}={v}" for v in values])
    return ["run", *again]
