"""The live view of ``harness run``: jobs done/total, an ETA, and each running job with its log.

The total grows while the run goes (training jobs exist only once the plan and the splits do), so
the count is "of the jobs known so far". The ETA is an estimate from this run's own timings: a
job still to do is expected to take as long as the finished jobs of its stage took on average
(of any stage while none of its stage has finished; skipped jobs do not count), spread over the
executor's parallel slots.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from harness.executors.base import JobStatus


class JobRecord(Protocol):
    """What the view reads of :class:`harness.run.runner.JobRecord` (the runner imports this module)."""

    task: str
    job: str
    stage: str
    status: str
    started: float | None
    log: str

    @property
    def seconds(self) -> float: ...

DONE = (JobStatus.SUCCEEDED, JobStatus.SKIPPED, JobStatus.FAILED, JobStatus.BLOCKED)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(records: Mapping[str, JobRecord], slots: int, now: float | None = None) -> float | None:
    """Seconds until every known job is done (None while no job has run yet to learn from)."""
    now = time.time() if now is None else now
    ran = [r for r in records.values() if r.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) and r.seconds > 0]
    if not ran:
        return None if any(r.status not in DONE for r in records.values()) else 0.0
    overall = sum(r.seconds for r in ran) / len(ran)
    by_stage: dict[str, list[float]] = {}
    for r in ran:
        by_stage.setdefault(r.stage, []).append(r.seconds)
    left = 0.0
    for r in records.values():
        if r.status in DONE:
            continue
        times = by_stage.get(r.stage)
        expected = sum(times) / len(times) if times else overall
        if r.status == JobStatus.RUNNING and r.started:
            expected = max(0.0, expected - (now - r.started))
        left += expected
    return left / max(1, slots)


class RunProgress:
    """A rich renderable over the runner's job records, redrawn by :class:`rich.live.Live`."""

    def __init__(self, records: Mapping[str, JobRecord], slots: int, started: float | None = None) -> None:
        self.records = records
        self.slots = slots
        self.started = time.time() if started is None else started

    def __rich__(self) -> Group:
        records = list(self.records.values())
        done = sum(r.status in DONE for r in records)
        counts = {s: sum(r.status == s for r in records)
                  for s in (JobStatus.SKIPPED, JobStatus.FAILED, JobStatus.BLOCKED)}
        running = [r for r in records if r.status == JobStatus.RUNNING]
        extra = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        head = Text.assemble(
            ("harness run ", "bold"), f"{done}/{len(records)} jobs done", f" ({extra})" if extra else "",
            f", {len(running)} running, elapsed {duration(time.time() - self.started)}, ",
            ("ETA ", "bold"), duration(eta_seconds(self.records, self.slots)))
        parts: list = [head, ProgressBar(total=max(1, len(records)), completed=done, width=40)]
        if running:
            table = Table(box=None, show_header=True, pad_edge=False)
            table.add_column("running", no_wrap=True)
            table.add_column("for", justify="right", no_wrap=True)
            table.add_column("log", overflow="fold")
            for r in running:
                since = duration(time.time() - r.started) if r.started else ""
                table.add_row(f"{r.task}/{r.job}", since, r.log)
            parts.append(table)
        return Group(*parts)


def live_view(progress: RunProgress, console: Console) -> Live:
    """Redrawn twice a second on a terminal; elsewhere (a log file, CI) rich prints it once at the end."""
    return Live(progress, console=console, refresh_per_second=2, transient=False, redirect_stdout=False,
                redirect_stderr=False)
