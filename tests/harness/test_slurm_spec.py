"""The Slurm batch script and the meaning of Slurm states, without a cluster (harness.executors.slurm_spec).

The ``slurm:`` section of a descriptor is untrusted text that ends up in a script sbatch parses:
every way to smuggle a line or an option the harness owns is refused, naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from harness.executors.slurm_spec import (
    EXIT_OOM,
    JobResources,
    SlurmOptions,
    extra_line_problem,
    interpret,
    job_name,
    render_script,
    sbatch_argv,
    time_minutes,
)
from harness.sandboxes.base import EXIT_TIMEOUT
from harness.tasks.descriptor import load_task
from selfunet.errors import SelfUNetError


@pytest.mark.parametrize("line", ["--exclusive", "--mail-type=END,FAIL", "#SBATCH --mail-user=lab@uni.edu",
                                  "--gpu-bind=closest", "--nodelist=node[01-04]", "--begin=now+60", "--requeue",
                                  "--mem-per-gpu=40G", "--reservation=miccai"])
def test_plain_long_options_are_accepted(line: str) -> None:
    assert extra_line_problem(line) is None
    assert SlurmOptions(extra=[line]).extra == [line.removeprefix("#SBATCH ")]


@pytest.mark.parametrize(("line", "why"), [
    ("--exclusive\n#SBATCH --uid=0", "line break"),
    ("--exclusive\rrm -rf /", "line break"),
    ("--comment=x\0", "line break or NUL"),
    ("--mail-user=a b", "single long option"),
    ("--job-name='x'", "single long option"),
    ("--begin=$(reboot)", "single long option"),
    ("-p gpu", "single long option"),
    ("--wrap=id", "set by the harness"),
    ("--output=/etc/passwd", "set by the harness"),
    ("--out=/etc/passwd", "abbreviates it"),      # sbatch accepts unique prefixes of long options
    ("--dep=afterok:1", "abbreviates it"),
    ("--uid=0", "set by the harness"),
    ("--export=NONE", "set by the harness"),
    ("--mem=1G", "resources.memory_gb"),
    ("--time=10", "container.timeout_s"),
    ("--gres=gpu:a100:1", "slurm.gpu_type"),
    ("--gpus-per-node=1", "set by the harness"),
    ("--partition=gpu", "slurm.partition"),
    ("--" + "x" * 300, "longer than"),
])
def test_lines_that_could_inject_or_override_are_refused(line: str, why: str) -> None:
    problem = extra_line_problem(line)
    assert problem is not None and why in problem, problem
    with pytest.raises(ValidationError):
        SlurmOptions(extra=[line])


@pytest.mark.parametrize(("field", "value"), [("partition", "gpu\n#SBATCH --uid=0"), ("partition", "gpu a100"),
                                              ("account", "lab;id"), ("qos", "$(x)"), ("constraint", "a100 && x"),
                                              ("constraint", "a'b")])
def test_names_have_closed_alphabets(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        SlurmOptions(**{field: value})


def test_command_line_options_override_the_descriptors_and_add_extra_lines() -> None:
    task = SlurmOptions(partition="gpu", account="lab", extra=["--exclusive"])
    merged = task.merged(SlurmOptions(partition="debug", extra=["--requeue"]))
    assert (merged.partition, merged.account, merged.extra) == ("debug", "lab", ["--exclusive", "--requeue"])
    assert task.merged(None) is task and SlurmOptions().is_default()


def test_the_script_carries_resources_and_the_slurm_section_then_execs_the_job(tmp_path: Path) -> None:
    options = SlurmOptions(partition="gpu,gpu-long", account="lab", qos="normal", constraint="a100|h100",
                           extra=["--exclusive"])
    spec = tmp_path / "with space" / "train.spec.json"
    script = render_script("demo/train-3d_fullres-fold0", JobResources(cpus=4, memory_mb=16384, time_minutes=61,
                                                                       gpus=1),
                           options, ["/usr/bin/python3", "-m", "harness.executors.slurm_job", str(spec)])
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --nodes=1", "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16384M",
        "#SBATCH --time=61", "#SBATCH --gres=gpu:1", "#SBATCH --partition=gpu,gpu-long", "#SBATCH --account=lab",
        "#SBATCH --qos=normal", "#SBATCH --constraint=a100|h100", "#SBATCH --exclusive"]
    assert lines[-1] == f"exec /usr/bin/python3 -m harness.executors.slurm_job '{spec}'"
    minimal = render_script("t/j", JobResources(cpus=1), SlurmOptions(), ["x"])
    assert "--mem" not in minimal and "--time" not in minimal and "--gres" not in minimal
    typed = render_script("t/j", JobResources(gpus=1), SlurmOptions(gpu_type="a100"), ["x"])
    assert "#SBATCH --gres=gpu:a100:1" in typed


def test_a_key_with_odd_characters_cannot_break_the_comment_line() -> None:
    script = render_script("t/j\n#SBATCH --uid=0", JobResources(), SlurmOptions(), ["x"])
    assert "--uid" not in "".join(line for line in script.splitlines() if line.startswith("#SBATCH"))
    assert job_name("demo/train-2d@resenc-m-fold0") == "selfunet:demo/train-2d@resenc-m-fold0"
    assert job_name("a b\nc") == "selfunet:a_b_c"


def test_sbatch_argv_carries_the_bookkeeping_and_the_dependencies() -> None:
    argv = sbatch_argv("/w/j.sbatch", name="selfunet:t/j", comment="selfunet:abc", log="/w/a log.txt", chdir="/w",
                       after=["11", "12"])
    assert argv[0] == "sbatch" and argv[-1] == "/w/j.sbatch"
    assert {"--parsable", "--output=/w/a log.txt", "--open-mode=append", "--kill-on-invalid-dep=yes",
            "--dependency=afterok:11:12", "--comment=selfunet:abc"} <= set(argv)
    follow = sbatch_argv("/w/f.sbatch", name="n", comment="c", log="l", chdir="/w", after=["11", "12"], any_of=True)
    assert "--dependency=afterany:11?afterany:12" in follow
    assert not any(a.startswith("--dependency") for a in sbatch_argv("s", name="n", comment="c", log="l", chdir="/"))


def test_slurms_time_limit_leaves_the_sandbox_room_to_stop_first() -> None:
    assert time_minutes(None) is None and time_minutes(0) is None
    assert time_minutes(1) == 2          # 1 s + 10 s grace + 60 s start-up -> 2 minutes
    assert time_minutes(3600) == 62


@pytest.mark.parametrize(("state", "exit_text", "reason", "tail", "status", "code", "says"), [
    ("COMPLETED", "0:0", "None", [], "succeeded", 0, ""),
    ("FAILED", "3:0", "NonZeroExitCode", [], "failed", 3, "exit code 3"),
    ("FAILED", "0:9", "JobLaunchFailure", ["slurmstepd: error: Exceeded job memory limit"], "failed", EXIT_OOM,
     "out of memory"),
    ("OUT_OF_MEMORY", "0:125", "OutOfMemory", [], "failed", EXIT_OOM, "out of memory"),
    ("TIMEOUT", "0:15", "TimeLimit", [], "failed", EXIT_TIMEOUT, "Slurm time limit of 5 min"),
    ("FAILED", "124:0", "NonZeroExitCode", [], "failed", EXIT_TIMEOUT, "the sandbox stopped the job"),
    ("DEADLINE", "0:0", "DeadLine", [], "failed", EXIT_TIMEOUT, "timeout"),
    ("PREEMPTED", "0:15", "None", [], "failed", 143, "preempted"),
    ("NODE_FAIL", "0:0", "None", [], "failed", 1, "node failure"),
    ("BOOT_FAIL", "0:0", "None", [], "failed", 1, "node failure"),
    ("CANCELLED by 1000", "0:15", "None", [], "failed", 143, "cancelled by 1000 outside the harness"),
    ("CANCELLED", "0:0", "DependencyNeverSatisfied", [], "blocked", 1, "a job it depends on failed"),
    ("FAILED", "0:11", "None", [], "failed", 139, "killed by signal 11"),
    ("SPECIAL_EXIT", "1:0", "None", [], "failed", 1, "SPECIAL_EXIT"),
])
def test_every_final_state_says_why(state, exit_text, reason, tail, status, code, says) -> None:
    outcome = interpret(state, exit_text, reason, tail, memory_mb=100, time_minutes=5)
    assert (outcome.status, outcome.exit_code) == (status, code)
    assert says in outcome.reason


def test_a_job_this_run_cancelled_is_interrupted_not_failed() -> None:
    assert interpret("CANCELLED", "0:15", cancelled_by_us=True).status == "interrupted"


def _descriptor(tmp_path: Path, body: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "t.yaml"
    path.write_text(f"name: t\ndataset: data\n{body}")
    return path


def test_the_descriptor_section_loads_and_is_not_part_of_the_hash(tmp_path: Path) -> None:
    plain = load_task(_descriptor(tmp_path, ""))
    task = load_task(_descriptor(tmp_path, "slurm:\n  partition: gpu\n  qos: long\n  extra: ['--exclusive']\n"))
    assert (task.slurm.partition, task.slurm.qos, task.slurm.extra) == ("gpu", "long", ["--exclusive"])
    assert task.digest() == plain.digest()  # where jobs queue does not change what they compute
    assert "gpus" not in plain.content()["resources"]
    assert load_task(_descriptor(tmp_path, "resources:\n  gpus: 0\n")).resources.gpus == 0


@pytest.mark.parametrize(("body", "says"), [
    ("slurm:\n  partition: 'gpu\n\n    #SBATCH --uid=0'\n", "slurm.partition"),
    ("slurm:\n  extra: ['--output=/etc/x']\n", "set by the harness"),
    ("slurm:\n  partiton: gpu\n", "did you mean 'slurm.partition'"),
])
def test_a_bad_section_is_refused_naming_the_key(tmp_path: Path, body: str, says: str) -> None:
    with pytest.raises(SelfUNetError, match=says.replace("(", r"\(")):
        load_task(_descriptor(tmp_path, body))
