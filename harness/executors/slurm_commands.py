"""The Slurm client commands the executor uses, one method each: ``sbatch``, ``squeue``, ``scontrol``,
``sacct``, ``scancel``, ``sinfo`` (tests replace :meth:`Slurm.call` or the whole object).

A job's state comes from whichever source still has it: ``squeue -t all`` (every job in flight in
one call; finished ones too while slurmctld keeps them, ``MinJobAge``), ``scontrol show job`` (the
exit code), and ``sacct`` once slurmctld has forgotten the job, where the cluster keeps accounting
(``accounting_storage/none`` answers that it is disabled; that is remembered).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from selfunet.errors import SelfUNetError

COMMAND_TIMEOUT_S = 60.0


class SlurmError(SelfUNetError):
    pass


@dataclass(frozen=True)
class JobState:
    """What Slurm says about one job (``squeue`` / ``scontrol`` / ``sacct``)."""

    state: str
    reason: str = ""
    exit_code: str | None = None
    comment: str = ""
    node: str = ""
    start: float | None = None
    end: float | None = None


def _epoch(text: str | None) -> float | None:
    if not text or text in ("Unknown", "None", "N/A", "(null)"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


class Slurm:
    """The Slurm commands, one method each (tests replace :meth:`call`)."""

    def __init__(self) -> None:
        self._accounting: bool | None = None

    def call(self, argv: Sequence[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SlurmError(f"`{argv[0]}` not found: --executor slurm runs on a machine with the Slurm client "
                             "commands (a login node), or start the CI cluster with `.ci/slurm.sh start`.") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"`{' '.join(argv[:3])} ...` did not answer within {COMMAND_TIMEOUT_S:g} s") from None

    def sbatch(self, argv: Sequence[str]) -> str:
        done = self.call(argv)
        if done.returncode != 0:
            raise SlurmError(f"sbatch refused the job: {(done.stderr or done.stdout).strip()[:500]}")
        return done.stdout.strip().split(";")[0]

    def squeue(self, ids: Sequence[str]) -> dict[str, JobState]:
        """Jobs slurmctld still knows (``-t all``: finished ones too, for ``MinJobAge``)."""
        if not ids:
            return {}
        done = self.call(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r|%S|%N|%k"])
        found = {}
        for line in done.stdout.splitlines():
            parts = line.split("|", 5)
            if len(parts) == 6:
                found[parts[0]] = JobState(parts[1], parts[2], None, parts[5], parts[4], _epoch(parts[3]))
        return found

    def scontrol(self, job_id: str) -> JobState | None:
        done = self.call(["scontrol", "show", "job", "-o", job_id])
        if done.returncode != 0 or "JobState=" not in done.stdout:
            return None
        fields = dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)
        # the comment may hold spaces: take it from its key to the next known key
        comment = done.stdout.split(" Comment=", 1)[1].split(" ", 1)[0] if " Comment=" in done.stdout else ""
        return JobState(fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""), fields.get("ExitCode"), comment,
                        fields.get("NodeList", ""), _epoch(fields.get("StartTime")), _epoch(fields.get("EndTime")))

    def sacct(self, job_id: str) -> JobState | None:
        if self._accounting is False:
            return None
        done = self.call(["sacct", "-n", "-P", "-X", "-j", job_id, "-o",
                          "State,ExitCode,Reason,Comment,NodeList,Start,End"])
        if done.returncode != 0 or "disabled" in (done.stderr + done.stdout):
            self._accounting = False
            return None
        self._accounting = True
        line = done.stdout.strip().splitlines()[-1:] or [""]
        parts = line[0].split("|")
        if len(parts) < 7:
            return None
        return JobState(parts[0], parts[2], parts[1], parts[3], parts[4], _epoch(parts[5]), _epoch(parts[6]))

    def state(self, job_id: str) -> JobState | None:
        """One job's state from whichever source still has it."""
        return self.squeue([job_id]).get(job_id) or self.scontrol(job_id) or self.sacct(job_id)

    def find_comment(self, comment: str) -> str | None:
        """The id of the job with this comment (a submission whose answer was lost)."""
        done = self.call(["squeue", "-h", "-t", "all", "-u", _user(), "-o", "%i|%k"])
        for line in done.stdout.splitlines():
            job_id, _, text = line.partition("|")
            if text == comment:
                return job_id
        return None

    def cancel(self, ids: Sequence[str]) -> None:
        if ids:
            self.call(["scancel", *ids])

    def has_gpus(self) -> bool:
        done = self.call(["sinfo", "-h", "-o", "%G"])
        return any("gpu" in line for line in done.stdout.splitlines())


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
