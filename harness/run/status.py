"""``harness status [WORK_ROOT] [--watch]``: what a run is doing, read from disk by anyone.

A benchmark runs for days; the terminal that started it is not the only place to watch it from.
``harness run`` keeps one small file up to date, and ``harness status`` (from any terminal, on any
machine that sees the work root) and ``results/status.html`` (any browser) show it.

The run-state file: ``<work_root>/.harness/state.json``
---------------------------------------------------------
Rewritten atomically (temp file + rename: a reader sees the old or the new file, never a torn one)
by the runner whenever a job is submitted, starts on its slot, or finishes, and when the run ends.
Format (schema 1)::

    {
      "schema": 1,
      "run": {
        "state": "running" | "finished" | "interrupted" | "detached",
        "owner": {"pid", "host", "started", "since", "command"},   # the harness run process
        "started": <epoch s>, "updated": <epoch s>, "finished": <epoch s> | null,
        "executor": "local" | "ray" | "slurm" | ..., "sandbox": "process" | "docker",
        "capacity": <jobs at once>, "work_root": <path>, "results_root": <path>
      },
      "jobs": {
        "<task>/<job>": {
          "task", "job", "stage",
          "state": "pending" | "running" | "succeeded" | "skipped" | "failed" | "blocked" | "interrupted",
          "started": <epoch s> | null, "finished": <epoch s> | null, "seconds": <float> | null,
          "slot": <where it runs, in the executor's words: "1 gpu 0", "10.0.0.5 gpu 3"> | "",
          "host": <host name> | "",
          "log": <path of the job's log>,
          "reason": <why it failed or was blocked> | "", "exit_code": <int> | null,
          "executor": { ... }   # executor-specific, free-form, e.g. {"ray_task_id": "..."},
                                # {"slurm_job_id": "123456", "partition": "gpu"}
        }
      }
    }

An executor reports what it knows about a submitted job through
:meth:`harness.executors.base.Executor.job_info` (any keys; ``slot`` and ``host`` go to the job's
fields of that name, everything else under ``executor``), as soon as it knows it: the local
executor when the job gets its slot, the Ray executor its task id at submission, a Slurm executor
its job id after ``sbatch``. Where the state has no host or slot yet, ``harness status`` shows the
first line of the job's log (the sandboxes and the Ray worker write where the job runs there).

A run whose state says ``running`` but whose process is gone (same host, pid not alive) is shown
as stopped: it was killed before it could write its last state. The ETA is
:func:`harness.run.progress.eta_seconds` over the recorded jobs: each job still to do takes as long
as the finished jobs of its stage took on average, spread over the executor's slots.
"""

from __future__ import annotations

import contextlib
import html
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from harness.run.progress import duration, eta_seconds
from selfunet.artifacts import atomic_write_json, atomic_write_text
from selfunet.locks import describe_owner, owner_alive, owner_record

SCHEMA = 1
STATE_FILE = Path(".harness") / "state.json"
STATUS_PAGE = "status.html"
#: the browser page reloads itself this often (seconds; a meta tag, no script).
PAGE_REFRESH_S = 30
ORDER = ("running", "failed", "interrupted", "blocked", "pending", "succeeded", "skipped")
STYLE = {"running": "bold cyan", "succeeded": "green", "skipped": "dim", "failed": "bold red", "blocked": "yellow",
         "interrupted": "magenta", "pending": ""}


def state_path(work_root: Path) -> Path:
    return Path(work_root) / STATE_FILE


# -- the runner's side ----------------------------------------------------------------------------
class RunState:
    """The state of one ``harness run``, written to ``<work_root>/.harness/state.json`` on every change.

    Thread-safe: executors may report a job's placement from their worker threads."""

    def __init__(self, work_root: Path, results_root: Path | None, executor: str, sandbox: str,
                 capacity: int) -> None:
        self.path = state_path(work_root)
        self.results_root = None if results_root is None else Path(results_root)
        self._lock = threading.Lock()
        now = time.time()
        self.data: dict[str, Any] = {
            "schema": SCHEMA,
            "run": {"state": "running", "owner": owner_record(), "started": now, "updated": now, "finished": None,
                    "executor": executor, "sandbox": sandbox, "capacity": capacity,
                    "work_root": str(Path(work_root).resolve()),
                    "results_root": None if results_root is None else str(Path(results_root).resolve())},
            "jobs": {},
        }

    def job(self, key: str, record: Any, write: bool = True) -> None:
        """Update one job from the runner's :class:`~harness.run.runner.JobRecord`."""
        with self._lock:
            entry = self.data["jobs"].setdefault(key, {"slot": "", "host": "", "executor": {}})
            entry.update({"task": record.task, "job": record.job, "stage": record.stage, "state": str(record.status),
                          "started": record.started, "finished": record.finished,
                          "seconds": record.seconds or None, "log": record.log, "reason": record.reason,
                          "exit_code": record.exit_code})
            if record.slot:
                entry["slot"] = record.slot
            if write:
                self._write()

    def job_info(self, key: str, info: dict[str, Any]) -> None:
        """What the executor knows about where a job runs (see the module doc)."""
        with self._lock:
            entry = self.data["jobs"].setdefault(key, {"slot": "", "host": "", "executor": {}})
            for name, value in info.items():
                if name in ("slot", "host"):
                    entry[name] = "" if value is None else str(value)
                else:
                    entry.setdefault("executor", {})[name] = value
            self._write()

    def finish(self, state: str = "finished") -> None:
        """The run ended (``finished``, ``interrupted``); ``detached`` where jobs still run without it
        (a Slurm run with --detach: the executor's jobs stay queued)."""
        with self._lock:
            if state == "finished" and any(j.get("state") == "running" for j in self.data["jobs"].values()):
                state = "detached"
            self.data["run"]["state"] = state
            self.data["run"]["finished"] = time.time()
            self._write()
        self.write_page()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        self.data["run"]["updated"] = time.time()
        with contextlib.suppress(OSError):  # watching must never stop a run
            atomic_write_json(self.path, self.data)

    def write_page(self) -> None:
        """``results/status.html``: the same view for a browser (static, reloads itself)."""
        if self.results_root is None:
            return
        with self._lock:
            snapshot = json.loads(json.dumps(self.data))
        with contextlib.suppress(OSError):
            atomic_write_text(self.results_root / STATUS_PAGE, status_html(summarize(snapshot)))


# -- reading --------------------------------------------------------------------------------------
def read_state(work_root: Path) -> dict | None:
    """The state file of a work root (None when there is none yet or it cannot be read)."""
    try:
        data = json.loads(state_path(work_root).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("jobs"), dict) else None


@dataclass
class _Job:
    """What :func:`eta_seconds` reads of a job."""

    task: str
    job: str
    stage: str
    status: str
    started: float | None
    log: str
    took: float

    @property
    def seconds(self) -> float:
        return self.took


@dataclass
class Summary:
    run: dict
    jobs: list[dict]
    counts: dict[str, int]
    state: str
    """running | finished | interrupted | detached | stopped (the process is gone without saying so)"""
    eta: float | None
    now: float

    def of(self, state: str) -> list[dict]:
        return [j for j in self.jobs if j.get("state") == state]


def _where(job: dict) -> str:
    """Slot and host, else the job log's first line (where the sandbox says it runs)."""
    parts = [p for p in (job.get("host"), job.get("slot")) if p]
    extra = job.get("executor") or {}
    parts += [f"{k} {v}" for k, v in extra.items() if k not in ("slot", "host")]
    if parts:
        return ", ".join(str(p) for p in parts)
    with contextlib.suppress(OSError), open(job.get("log") or "", errors="replace") as handle:
        first = handle.readline().strip()
        if first.startswith("==="):
            return first.strip("= ")[:120]
    return ""


def summarize(data: dict, now: float | None = None) -> Summary:
    now = time.time() if now is None else now
    run = data.get("run") or {}
    jobs = sorted(data.get("jobs", {}).values(),
                  key=lambda j: (ORDER.index(j.get("state")) if j.get("state") in ORDER else len(ORDER),
                                 -(j.get("started") or 0) if j.get("state") != "pending" else 0,
                                 j.get("task", ""), j.get("job", "")))
    counts = {s: sum(j.get("state") == s for j in jobs) for s in ORDER}
    state = run.get("state", "running")
    if state == "running" and not owner_alive(run.get("owner")):
        state = "stopped"
    records = {f"{j.get('task')}/{j.get('job')}": _Job(j.get("task", ""), j.get("job", ""), j.get("stage", ""),
                                                       "interrupted" if state == "stopped" and j.get("state") ==
                                                       "running" else j.get("state", ""), j.get("started"),
                                                       j.get("log", ""), float(j.get("seconds") or 0.0))
               for j in jobs}
    eta = eta_seconds(records, int(run.get("capacity") or 1), now) if state in ("running", "detached") else None
    return Summary(run, jobs, counts, state, eta, now)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _head(s: Summary) -> str:
    run = s.run
    total = len(s.jobs)
    done = sum(s.counts[k] for k in ("succeeded", "skipped", "failed", "blocked"))
    extra = ", ".join(f"{s.counts[k]} {k}" for k in ("failed", "blocked", "interrupted", "skipped") if s.counts[k])
    owner = run.get("owner") or {}
    if s.state in ("running", "detached"):
        since = f"{s.state} for {duration(s.now - float(run.get('started') or s.now))}, ETA {duration(s.eta)}"
    elif s.state == "stopped":
        since = f"stopped: {describe_owner(owner)} is no longer running (killed before it could say so)"
    else:
        since = f"{s.state} at {_when(run.get('finished'))}"
    return (f"{done}/{total} jobs done ({s.counts['running']} running"
            + (f", {extra}" if extra else "") + f"); {since}; {run.get('executor', '?')} executor, "
            f"{run.get('sandbox', '?')} sandbox, {run.get('capacity', '?')} slot(s); "
            f"run by pid {owner.get('pid', '?')} on {owner.get('host', '?')}; updated {_when(run.get('updated'))}")


def rows(s: Summary, all_jobs: bool = False) -> list[list[str]]:
    """job, state, time, where, log or reason: running and failed jobs first, then the rest
    (pending, succeeded and skipped ones only with ``all_jobs``)."""
    out = []
    for j in s.jobs:
        state = j.get("state", "")
        if not all_jobs and state in ("pending", "succeeded", "skipped"):
            continue
        if state == "running" and s.state == "stopped":
            state = "interrupted"
        elapsed = (s.now - j["started"]) if j.get("state") == "running" and j.get("started") else j.get("seconds")
        note = j.get("log", "") if state in ("running", "interrupted") else (
            (j.get("reason") or "").splitlines()[0][:200] if j.get("reason") else "")
        if state == "failed" and j.get("log"):
            note = f"{note}  log: {j['log']}".strip()
        out.append([f"{j.get('task')}/{j.get('job')}", state, "" if elapsed is None else duration(elapsed),
                    _where(j), note])
    return out


def stage_table(s: Summary) -> list[list[str]]:
    """Per stage: done / total and the mean time of its finished jobs (what the ETA learns from)."""
    stages: dict[str, list[dict]] = {}
    for j in sorted(s.jobs, key=lambda j: (j.get("started") is None, j.get("started") or 0)):  # pipeline order
        stages.setdefault(j.get("stage", "?"), []).append(j)
    out = []
    for stage, jobs in stages.items():
        ran = [float(j["seconds"]) for j in jobs if j.get("state") in ("succeeded", "failed") and j.get("seconds")]
        done = sum(j.get("state") in ("succeeded", "skipped", "failed", "blocked") for j in jobs)
        out.append([stage, f"{done}/{len(jobs)}", duration(sum(ran) / len(ran)) if ran else "-"])
    return out


def render(s: Summary, all_jobs: bool = False) -> Group:
    """The terminal view: the head line, the stages, then one line per job listed (its log or reason
    indented below it); job lines are never wrapped or cut, so a path stays one word to copy."""
    head = Text.assemble(("harness status ", "bold"), (s.state, STYLE.get(s.state, "bold")), ": ", _head(s))
    stages = Table(box=None, pad_edge=False, show_header=True)
    for column in ("stage", "done", "mean time"):
        stages.add_column(column)
    for row in stage_table(s):
        stages.add_row(*row)
    parts: list = [head, stages]
    listed = rows(s, all_jobs)
    width = max((len(r[0]) for r in listed), default=0)
    for job, state, took, where, note in listed:
        parts.append(Text.assemble((f"{state:<11}", STYLE.get(state, "")), f" {job:<{width}}  {took:>7}  {where}",
                                   no_wrap=True, overflow="ignore"))
        if note:
            parts.append(Text(f"{'':<12}{note}", style="dim" if state == "running" else "", no_wrap=True,
                              overflow="ignore"))
    return Group(*parts)


def status_html(s: Summary) -> str:
    """``results/status.html``: static, reloads itself every :data:`PAGE_REFRESH_S` s while the run runs."""
    from harness.report.html import page, table

    def e(text: object) -> str:
        return html.escape(str(text))

    body = [f"<h1>harness status: {e(s.state)}</h1>", f"<p>{e(_head(s))}</p>",
            "<h2 id=\"stages\">Stages</h2>", table(["stage", "done", "mean time"], stage_table(s), "stages"),
            "<h2 id=\"jobs\">Jobs</h2>",
            table(["job", "state", "time", "where", "log / reason"], rows(s, all_jobs=True), "status-jobs",
                  text_columns=(0, 1, 3, 4)),
            f"<p class=\"note\">Written by harness run at {e(_when(s.now))} from {e(s.run.get('work_root', ''))}"
            f"/{e(STATE_FILE)}; <code>harness status</code> shows the same in a terminal.</p>"]
    text = page(f"harness status: {s.state}", body)
    if s.state in ("running", "detached"):
        text = text.replace("<head>", f"<head><meta http-equiv=\"refresh\" content=\"{PAGE_REFRESH_S}\">", 1)
    return text


def show_status(work_root: Path, watch: bool = False, interval: float = 5.0, all_jobs: bool = False) -> None:
    """``harness status``: the view once, or redrawn every ``interval`` seconds until Ctrl-C (on a
    terminal in place; in a log or a pipe one view after the other, as ``watch`` would)."""
    import time

    from rich.console import Console
    from rich.live import Live

    from selfunet.errors import SelfUNetError

    def view():
        data = read_state(work_root)
        if data is None:
            raise SelfUNetError(f"{state_path(work_root)}: no run state (has `harness run --work-root {work_root}` "
                                "started here?); pass the run's work root.")
        return render(summarize(data), all_jobs)

    out = Console()
    if not watch:
        out.print(view(), soft_wrap=True)  # a log path stays one line, to copy
        return
    try:
        if not out.is_terminal:
            while True:
                out.print(view(), soft_wrap=True)
                out.file.flush()
                time.sleep(interval)
        with Live(view(), console=out, refresh_per_second=1, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(view())
    except KeyboardInterrupt:
        pass
