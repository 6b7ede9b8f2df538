"""What a Slurm job of the harness is made of, as pure functions: the descriptor's ``slurm:`` section,
the batch script (``#SBATCH`` lines), and what a Slurm job state means to the harness.

Nothing here calls Slurm (``harness.executors.slurm`` does); the unit tests in
``tests/harness/test_slurm_spec.py`` check every rule below without a cluster.

**The ``slurm:`` section is untrusted text.** A descriptor may come from anyone, and every value
ends up in a batch script that ``sbatch`` parses: a newline in a partition name would add a line of
shell to the script. So each field has a closed character set, extra lines must be single long
options (``--name`` or ``--name=value``) from a strict alphabet, and the options the harness sets
itself (output, dependency, resources, ...) are refused there, abbreviations included (``sbatch``
accepts ``--out=`` for ``--output=``).
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.sandboxes.base import EXIT_TIMEOUT, STOP_GRACE_S

#: partition / account / QOS names (a comma-separated list for partitions).
_NAMES = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(,[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")
#: a node feature expression (``a100&ib``, ``[rack1|rack2]``, ``gpu*2``); no spaces, no quotes.
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,&|*\[\]()!:+-]+")
#: one extra ``#SBATCH`` line: a long option, with a value from a closed alphabet.
_EXTRA = re.compile(r"--([a-z][a-z0-9-]*)(=[A-Za-z0-9_.,:=+/@%*\[\]-]+)?")
#: options the harness sets itself (from the descriptor's resources, the slurm section, its own
#: bookkeeping) or that would change what the job is; refused as extra lines, abbreviations too.
OWN_OPTIONS = (
    "output", "error", "input", "open-mode", "job-name", "comment", "chdir", "dependency", "kill-on-invalid-dep",
    "wrap", "parsable", "array", "export", "export-file", "get-user-env", "uid", "gid", "test-only", "batch",
    "cpus-per-task", "mem", "mem-per-cpu", "time", "gres", "gpus", "partition", "account", "qos", "constraint",
    "ntasks", "nodes", "hold", "gpus-per-node", "gpus-per-task", "gpus-per-socket",
)
#: where each owned option comes from, for the error message.
_USE_INSTEAD = {"cpus-per-task": "resources.cpus", "mem": "resources.memory_gb", "mem-per-cpu": "resources.memory_gb",
                "time": "container.timeout_s", "gres": "resources.gpus and slurm.gpu_type", "gpus": "resources.gpus",
                "partition": "slurm.partition", "account": "slurm.account", "qos": "slurm.qos",
                "constraint": "slurm.constraint"}
MAX_FIELD = 200


def extra_line_problem(line: str) -> str | None:
    """Why ``line`` may not be an extra ``#SBATCH`` line (None when it may)."""
    if any(ch in line for ch in "\n\r\0"):
        return "contains a line break or NUL; give one option per list item"
    text = line.strip()
    text = text[len("#SBATCH"):].strip() if text.startswith("#SBATCH") else text
    if len(text) > MAX_FIELD:
        return f"longer than {MAX_FIELD} characters"
    match = _EXTRA.fullmatch(text)
    if match is None:
        return ("not a single long option: write `--name` or `--name=value` (value letters, digits and "
                "_ . , : = + / @ % * [ ] -; no spaces or quotes)")
    name = match.group(1)
    owned = [o for o in OWN_OPTIONS if o.startswith(name)]
    if owned:
        where = _USE_INSTEAD.get(owned[0])
        return (f"--{owned[0]} is set by the harness" + (f" (use `{where}`)" if where else "")
                + ("" if owned[0] == name else f"; --{name} abbreviates it"))
    return None


def normalise_extra(line: str) -> str:
    text = line.strip()
    return text[len("#SBATCH"):].strip() if text.startswith("#SBATCH") else text


class SlurmOptions(BaseModel):
    """A task descriptor's ``slurm:`` section (docs/guide/slurm.md); every field optional.

    ``harness run --slurm-partition ...`` overrides a field for every task (:meth:`merged`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partition: Optional[str] = Field(default=None, max_length=MAX_FIELD)
    """``#SBATCH --partition`` (one name or a comma-separated list)."""
    account: Optional[str] = Field(default=None, max_length=MAX_FIELD)
    """``#SBATCH --account``: the allocation the jobs are charged to."""
    qos: Optional[str] = Field(default=None, max_length=MAX_FIELD)
    """``#SBATCH --qos``."""
    constraint: Optional[str] = Field(default=None, max_length=MAX_FIELD)
    """``#SBATCH --constraint``: node features, e.g. ``a100`` or ``a100|h100``."""
    gpu_type: Optional[str] = Field(default=None, max_length=MAX_FIELD)
    """the GPU model a training or prediction job asks for: ``--gres=gpu:<type>:1`` (e.g. ``a100``)."""
    extra: list[str] = Field(default_factory=list)
    """further ``#SBATCH`` lines, one long option each: ``[--exclusive, --mail-type=FAIL]``."""

    @field_validator("partition", "account", "qos", "gpu_type")
    @classmethod
    def _names(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _NAMES.fullmatch(value):
            raise ValueError("expected a name (letters, digits, _ . + -; partitions may be a comma-separated list)")
        return value

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _CONSTRAINT.fullmatch(value):
            raise ValueError("expected a feature expression without spaces or quotes (e.g. a100 or a100|h100)")
        return value

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        for line in value:
            problem = extra_line_problem(line)
            if problem:
                raise ValueError(f"extra line {line[:60]!r}: {problem}")
        return [normalise_extra(line) for line in value]

    def merged(self, override: SlurmOptions | None) -> SlurmOptions:
        """``override``'s fields where set (the command line over the descriptor); its extra lines
        come after this one's (sbatch keeps the last of a repeated option)."""
        if override is None:
            return self
        fields = {k: v for k, v in override.model_dump(exclude={"extra"}).items() if v is not None}
        return self.model_copy(update={**fields, "extra": [*self.extra, *override.extra]})

    def is_default(self) -> bool:
        return self == SlurmOptions()


# -- the batch script ------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobResources:
    """What one job asks Slurm for."""

    cpus: int = 1
    memory_mb: int | None = None
    time_minutes: int | None = None
    gpus: int = 0


def time_minutes(timeout_s: float | None) -> int | None:
    """Slurm's ``--time`` for a job the sandbox stops after ``timeout_s``: the sandbox's limit, its
    stop grace and a minute of start-up, rounded up to whole minutes (Slurm counts minutes). The
    sandbox's own timeout thus fires first (a clean stop, exit 124); Slurm's is the backstop."""
    if not timeout_s:
        return None
    return max(1, math.ceil((float(timeout_s) + STOP_GRACE_S + 60.0) / 60.0))


def job_name(key: str) -> str:
    """``selfunet:<task>/<job>`` with anything outside a safe alphabet replaced by ``_``."""
    return "selfunet:" + re.sub(r"[^A-Za-z0-9_.@:+/-]", "_", key)[:120]


def directives(resources: JobResources, options: SlurmOptions) -> list[str]:
    """The ``#SBATCH`` lines of a job, in a fixed order: resources, then the slurm section."""
    lines = ["--nodes=1", "--ntasks=1", f"--cpus-per-task={max(int(resources.cpus), 1)}"]
    if resources.memory_mb:
        lines.append(f"--mem={int(resources.memory_mb)}M")
    if resources.time_minutes:
        lines.append(f"--time={int(resources.time_minutes)}")
    if resources.gpus:
        lines.append(f"--gres=gpu:{options.gpu_type + ':' if options.gpu_type else ''}{int(resources.gpus)}")
    for name in ("partition", "account", "qos", "constraint"):
        value = getattr(options, name)
        if value is not None:
            lines.append(f"--{name}={value}")
    lines += options.extra
    for line in lines:  # a last guard: nothing reaches the script that could end the line
        if any(ch in line for ch in "\n\r\0") or not line.startswith("--"):
            raise ValueError(f"refusing #SBATCH line {line!r}")
    return [f"#SBATCH {line}" for line in lines]


def render_script(key: str, resources: JobResources, options: SlurmOptions, command: Sequence[str]) -> str:
    """The batch script of one job: ``#SBATCH`` lines, then ``exec`` of ``command`` (quoted)."""
    header = re.sub(r"[^A-Za-z0-9_.@:+/-]", "_", key)
    return "\n".join([
        "#!/bin/sh",
        f"# Slurm job {header}, written by harness/executors/slurm.py (docs/guide/slurm.md)",
        *directives(resources, options),
        "exec " + shlex.join(list(command)),
        "",
    ])


def sbatch_argv(script: str, *, name: str, comment: str, log: str, chdir: str, after: Iterable[str] = (),
                any_of: bool = False) -> list[str]:
    """The ``sbatch`` command line: the harness's bookkeeping (never from a descriptor) goes here, as
    argv items, so a path with spaces needs no quoting. ``after``: job ids that must end first
    (``afterok``, or with ``any_of`` the first of them to end in any state: ``afterany:a?afterany:b``)."""
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--comment={comment}", f"--output={log}",
            "--open-mode=append", f"--chdir={chdir}", "--kill-on-invalid-dep=yes"]
    after = [str(a) for a in after]
    if after:
        argv.append("--dependency=" + ("?".join(f"afterany:{a}" for a in after) if any_of
                                       else "afterok:" + ":".join(after)))
    return [*argv, script]


# -- what a Slurm state means --------------------------------------------------------------------
#: states in which a job is still queued or running.
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
                         "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})
#: final states the harness may rerun by itself (the job did nothing wrong): ``--max-retries``.
RETRY_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL", "PREEMPTED"})
#: what ``slurmstepd`` writes to a job's output when it kills the job for memory without cgroups
#: (``JobAcctGatherParams=OverMemoryKill``; the state is then FAILED, not OUT_OF_MEMORY).
OOM_LOG_MARKERS = ("Exceeded job memory limit", "exceeded memory limit", "oom-kill event")
#: exit code the harness gives a job Slurm killed for memory (the docker sandbox's EXIT_OOM).
EXIT_OOM = 250


@dataclass(frozen=True)
class Outcome:
    """A finished Slurm job as the harness sees it: ``status`` succeeded | failed | blocked | interrupted."""

    status: str
    exit_code: int
    reason: str = ""


def parse_exit(text: str | None) -> tuple[int, int]:
    """``ExitCode=2:0`` / sacct's ``2:0`` -> (exit code, signal)."""
    code, _, sig = (text or "0:0").partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return 0, 0


def interpret(state: str, exit_text: str | None = None, reason: str = "", log_tail: Sequence[str] = (),
              cancelled_by_us: bool = False, memory_mb: int | None = None, time_minutes: int | None = None) -> Outcome:
    """Map a final Slurm state to the harness's status, exit code and reason (what run.json says).

    ``state`` may carry sacct's suffix (``CANCELLED by 0``); ``reason`` is Slurm's (``TimeLimit``,
    ``DependencyNeverSatisfied``, ...); ``log_tail`` the end of the job's output, where slurmstepd
    names a kill for memory when no cgroup reports it."""
    base = (state or "UNKNOWN").split()[0].rstrip("+").upper()
    code, sig = parse_exit(exit_text)
    said = f"Slurm {base}" + (f", reason {reason}" if reason and reason not in ("None", "(null)") else "")
    memory = f" (--mem {memory_mb} MB)" if memory_mb else ""
    oom_in_log = any(m in line for line in log_tail for m in OOM_LOG_MARKERS)
    if base == "COMPLETED":
        return Outcome("succeeded", 0)
    if base == "OUT_OF_MEMORY" or (base in ("FAILED", "CANCELLED") and oom_in_log):
        return Outcome("failed", EXIT_OOM, f"out of memory: Slurm killed the job above its memory{memory} ({said}); "
                                           "raise resources.memory_gb")
    if base in ("TIMEOUT", "DEADLINE"):
        limit = f" of {time_minutes} min" if time_minutes else ""
        return Outcome("failed", EXIT_TIMEOUT, f"timeout: the job ran past its Slurm time limit{limit} ({said}); "
                                               "raise container.timeout_s or use a partition with a longer limit")
    if base == "CANCELLED":
        if reason == "DependencyNeverSatisfied":
            return Outcome("blocked", code or 1, f"a job it depends on failed ({said})")
        if cancelled_by_us:
            return Outcome("interrupted", 128 + 15, f"cancelled by this harness run ({said}); rerun to resume")
        who = f" {' '.join(state.split()[1:])}" if len(state.split()) > 1 else ""
        return Outcome("failed", code or 128 + 15, f"cancelled{who} outside the harness ({said}); rerun to resume")
    if base == "PREEMPTED":
        return Outcome("failed", code or 128 + 15, f"preempted by a higher-priority job ({said}); rerun to resume "
                                                   "(a training continues from its latest checkpoint)")
    if base in ("NODE_FAIL", "BOOT_FAIL"):
        return Outcome("failed", code or 1, f"node failure ({said}); rerun to resume")
    if base == "FAILED":
        if code == EXIT_TIMEOUT:
            return Outcome("failed", code, f"timeout: the sandbox stopped the job at its time limit ({said}, "
                                           "exit code 124); raise container.timeout_s or --job-timeout")
        if code == 0 and sig:
            return Outcome("failed", 128 + sig, f"killed by signal {sig} ({said})")
        return Outcome("failed", code or 1, f"exit code {code} ({said})" if code else said)
    return Outcome("failed", code or 1, f"ended in state {base} ({said})")
