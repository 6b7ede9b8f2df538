"""The Slurm executor against a fake Slurm (no cluster): records, adoption, cancelling, retries.

The real cluster runs the same code in tests/slurm/; here each rule is checked in milliseconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.executors.slurm import FOLLOW_UP, SlurmExecutor
from harness.executors.slurm_commands import JobState, SlurmError
from harness.executors.slurm_spec import EXIT_OOM, SlurmOptions
from harness.sandboxes.base import SandboxRequest
from harness.sandboxes.process import ProcessSandbox


class FakeSlurm:
    """What the executor asks Slurm, answered from dicts; every sbatch and scancel is recorded."""

    def __init__(self, gpus: bool = False) -> None:
        self.jobs: dict[str, JobState] = {}
        self.exit: dict[str, str] = {}
        self.submitted: list[list[str]] = []
        self.cancelled: list[str] = []
        self.gpus = gpus
        self.refuse = False

    def sbatch(self, argv: list[str]) -> str:
        if self.refuse:
            raise SlurmError("sbatch refused the job: invalid partition specified: nope")
        self.submitted.append(argv)
        job_id = str(100 + len(self.submitted))
        comment = next(a.split("=", 1)[1] for a in argv if a.startswith("--comment="))
        self.jobs[job_id] = JobState("PENDING", "Priority", comment=comment)
        return job_id

    def set(self, job_id: str, state: str, reason: str = "None", exit_code: str = "0:0") -> None:
        self.jobs[job_id] = JobState(state, reason, exit_code, self.jobs[job_id].comment, "node1", 1.0, 2.0)

    def squeue(self, ids):
        return {i: self.jobs[i] for i in ids if i in self.jobs}

    def scontrol(self, job_id):
        return self.jobs.get(job_id)

    def sacct(self, job_id):
        return None

    def state(self, job_id):
        return self.jobs.get(job_id)

    def find_comment(self, comment):
        return next((i for i, s in self.jobs.items() if s.comment == comment), None)

    def cancel(self, ids):
        self.cancelled += list(ids)
        for i in ids:
            self.set(i, "CANCELLED", exit_code="0:15")

    def has_gpus(self) -> bool:
        return self.gpus


def make(tmp_path: Path, slurm: FakeSlurm, **kwargs) -> SlurmExecutor:
    return SlurmExecutor(ProcessSandbox(), tmp_path / "work", slurm=slurm, poll_s=(0.01, 0.01), **kwargs)


def request(tmp_path: Path, job: str, **kwargs) -> SandboxRequest:
    return SandboxRequest(f"t-{job}", ("check", "/data"), tmp_path / "work" / "t" / ".harness" / "logs" / f"{job}.log",
                          cpus=2, **kwargs)


def submit(executor: SlurmExecutor, tmp_path: Path, job: str, digest: str = "h", after=(), uses_gpu=False, **kw):
    executor.track(f"t/{job}", digest, after)
    executor.submit(f"t/{job}", request(tmp_path, job, **kw), uses_gpu=uses_gpu)


def record(tmp_path: Path, job: str) -> dict:
    return json.loads((tmp_path / "work" / "t" / ".harness" / "slurm" / f"{job}.json").read_text())


def test_a_submission_leaves_a_record_a_script_and_a_spec(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    executor = make(tmp_path, slurm, options={"t": SlurmOptions(partition="gpu")})
    submit(executor, tmp_path, "check", memory_gb=1.5, timeout_s=3600)
    rec = record(tmp_path, "check")
    assert (rec["slurm_job_id"], rec["state"], rec["hash"], rec["key"], rec["partition"]) == (
        "101", "PENDING", "h", "t/check", "gpu")
    assert rec["log"].endswith("logs/check.log") and rec["submitted_by"]["pid"] > 0
    argv = slurm.submitted[0]
    assert f"--comment=selfunet:{rec['token']}" in argv and f"--output={rec['log']}" in argv
    script = Path(rec["script"]).read_text()
    for line in ("--cpus-per-task=2", "--mem=1536M", "--time=62", "--partition=gpu"):
        assert f"#SBATCH {line}\n" in script
    assert "--gres" not in script
    spec = json.loads(Path(rec["spec"]).read_text())
    assert spec["sandbox"] == {"kind": "process", "program": [sys.executable, "-m", "selfunet.cli"], "timeout_s": None}
    assert spec["request"]["argv"] == ["check", "/data"] and spec["token"] == rec["token"]


def test_gpus_are_asked_for_where_the_cluster_has_them_and_the_task_wants_them(tmp_path: Path) -> None:
    slurm = FakeSlurm(gpus=True)
    executor = make(tmp_path, slurm, gpus={"t": None})
    submit(executor, tmp_path, "train", uses_gpu=True)
    submit(executor, tmp_path, "check", uses_gpu=False)
    assert "#SBATCH --gres=gpu:1" in Path(record(tmp_path, "train")["script"]).read_text()
    assert "--gres" not in Path(record(tmp_path, "check")["script"]).read_text()
    cpu_only = make(tmp_path / "b", FakeSlurm(gpus=True), gpus={"t": 0})
    submit(cpu_only, tmp_path / "b", "train", uses_gpu=True)
    assert "--gres" not in Path(record(tmp_path / "b", "train")["script"]).read_text()


def test_states_come_back_as_completions_that_say_why(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    executor = make(tmp_path, slurm)
    submit(executor, tmp_path, "a")
    submit(executor, tmp_path, "b", memory_gb=1)
    slurm.set("101", "COMPLETED")
    slurm.set("102", "OUT_OF_MEMORY", "OutOfMemory", "0:125")
    done = {c.key: c for c in executor.wait() + executor.wait()}
    assert done["t/a"].exit_code == 0 and done["t/a"].slot == "slurm 101 on node1"
    assert done["t/b"].exit_code == EXIT_OOM and "out of memory" in done["t/b"].error
    assert "--mem 1024 MB" in done["t/b"].error
    assert record(tmp_path, "b")["state"] == "OUT_OF_MEMORY" and record(tmp_path, "b")["collected"]
    assert executor.wait() == []


def test_a_dependency_becomes_afterok_on_its_job_id(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    executor = make(tmp_path, slurm)
    submit(executor, tmp_path, "train")
    submit(executor, tmp_path, "crossval", after=("t/train",))
    assert "--dependency=afterok:101" in slurm.submitted[1]
    assert record(tmp_path, "crossval")["after"] == ["101"]
    slurm.set("102", "CANCELLED", "DependencyNeverSatisfied")
    slurm.set("101", "FAILED", "NonZeroExitCode", "1:0")
    outcomes = {c.key: c.outcome for c in executor.wait()}
    assert outcomes == {"t/train": "failed", "t/crossval": "blocked"}


def test_a_second_run_adopts_what_is_still_queued_and_nothing_else(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    first = make(tmp_path, slurm)
    for job in ("queued", "running", "done", "changed", "gone"):
        submit(first, tmp_path, job)
    slurm.set("102", "RUNNING")
    slurm.set("103", "COMPLETED")
    del slurm.jobs["105"]  # slurmctld forgot it and it left no result
    second = make(tmp_path, slurm)  # the first harness was killed: a new process, the same records
    assert second.adopt("t/queued", "h") == "Slurm job 101 (PENDING)"
    assert second.adopt("t/running", "h") == "Slurm job 102 (RUNNING)"
    assert second.adopt("t/done", "h") == "Slurm job 103 (COMPLETED)"
    assert second.adopt("t/changed", "another hash") is None
    assert slurm.cancelled == ["104"]  # queued for the old inputs: it would race its replacement
    assert second.adopt("t/gone", "h") is None
    assert second.adopt("t/never", "h") is None
    assert len(slurm.submitted) == 5  # nothing was submitted twice
    assert [c.key for c in second.wait()] == ["t/done"]  # finished while nobody watched
    assert second.adopt("t/done", "h") is None  # collected: a third run would submit it anew


def test_a_reused_job_id_is_not_mistaken_for_ours(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    submit(make(tmp_path, slurm), tmp_path, "a")
    slurm.jobs["101"] = JobState("RUNNING", comment="selfunet:someone-else")  # a reset cluster reuses ids
    assert make(tmp_path, slurm).adopt("t/a", "h") is None


def test_a_job_slurm_forgot_is_adopted_from_its_result_file(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    submit(make(tmp_path, slurm), tmp_path, "a")
    rec = record(tmp_path, "a")
    Path(rec["result"]).write_text(json.dumps({"token": rec["token"], "exit_code": 0, "started": 5.0,
                                               "finished": 9.0}))
    del slurm.jobs["101"]
    second = make(tmp_path, slurm)
    assert second.adopt("t/a", "h") == "Slurm job 101 (COMPLETED)"
    (done,) = second.wait()
    assert (done.exit_code, done.started, done.finished) == (0, 5.0, 9.0)


def test_a_submission_whose_answer_was_lost_is_found_by_its_comment(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    submit(make(tmp_path, slurm), tmp_path, "a")
    path = tmp_path / "work" / "t" / ".harness" / "slurm" / "a.json"
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "slurm_job_id": None, "state": "SUBMITTING"}))  # killed inside sbatch
    assert make(tmp_path, slurm).adopt("t/a", "h") == "Slurm job 101 (PENDING)"
    assert record(tmp_path, "a")["slurm_job_id"] == "101"


def test_stop_cancels_exactly_this_runs_jobs(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    executor = make(tmp_path, slurm)
    submit(executor, tmp_path, "a")
    submit(executor, tmp_path, "b")
    slurm.set("102", "COMPLETED")
    executor.wait()
    slurm.jobs["999"] = JobState("RUNNING", comment="selfunet:another-run")
    assert executor.stop() == ["t/a"]
    assert slurm.cancelled == ["101"]
    assert record(tmp_path, "a")["state"] == "CANCELLED"
    detached = make(tmp_path / "d", FakeSlurm(), detach=True)
    submit(detached, tmp_path / "d", "a")
    assert detached.stop() == [] and detached.slurm.cancelled == []
    detached.close()
    assert detached.slurm.cancelled == []


def test_a_node_failure_is_retried_then_reported(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    executor = make(tmp_path, slurm, max_retries=1)
    submit(executor, tmp_path, "a")
    slurm.set("101", "NODE_FAIL")
    executor._poll()
    assert len(slurm.submitted) == 2 and record(tmp_path, "a")["attempt"] == 2
    slurm.set("102", "NODE_FAIL")
    (done,) = executor.wait()
    assert len(slurm.submitted) == 2 and "node failure" in done.error


def test_a_refused_submission_is_the_jobs_failure(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    slurm.refuse = True
    executor = make(tmp_path, slurm)
    submit(executor, tmp_path, "a")
    (done,) = executor.wait()
    assert done.exit_code == -1 and "invalid partition" in done.error
    assert record(tmp_path, "a")["state"] == "SUBMIT_FAILED"
    assert "invalid partition" in (tmp_path / "work" / "t" / ".harness" / "logs" / "a.log").read_text()


def test_a_detached_run_leaves_one_follow_up_waiting_for_the_first_to_end(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    executor = make(tmp_path, slurm, detach=True, follow_up=["python", "-m", "harness.cli", "run", "x", "--detach"])
    submit(executor, tmp_path, "a")
    submit(executor, tmp_path, "b")
    assert executor.hand_over(["t/a", "t/b"]) == "Slurm job 103"
    assert "--dependency=afterany:101?afterany:102" in slurm.submitted[2]
    follow = json.loads((tmp_path / "work" / FOLLOW_UP).read_text())
    assert follow["slurm_job_id"] == "103" and "harness.cli run x --detach" in Path(follow["script"]).read_text()
    assert executor.hand_over(["t/b"]) == "Slurm job 104"  # a newer follow-up replaces the pending one
    assert slurm.cancelled == ["103"]


def test_the_sandbox_must_be_one_a_node_can_rebuild(tmp_path: Path) -> None:
    class Odd(ProcessSandbox.__mro__[1]):  # a Sandbox that is neither process nor docker
        name = "odd"

        def run(self, request, slot):
            return 0

    with pytest.raises(ValueError, match="cannot run under --executor slurm"):
        SlurmExecutor(Odd(), tmp_path, slurm=FakeSlurm())


def test_a_job_behind_a_dependency_that_failed_unseen_is_blocked_not_queued(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    submit(make(tmp_path, slurm, detach=True), tmp_path, "train")
    slurm.set("101", "FAILED", "NonZeroExitCode", "1:0")  # while nobody watched
    follow_up = make(tmp_path, slurm, detach=True)
    assert follow_up.adopt("t/train", "h") == "Slurm job 101 (FAILED)"
    submit(follow_up, tmp_path, "crossval", after=("t/train",))  # the runner still sees train running
    assert len(slurm.submitted) == 1
    assert {c.key: c.outcome for c in follow_up.collect()} == {"t/train": "failed", "t/crossval": "blocked"}


def test_the_follow_up_reruns_the_same_command_with_absolute_paths_and_without_force(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    import typer.main

    from harness.cli import app
    from harness.executors.slurm import same_command

    monkeypatch.chdir(tmp_path)
    run = typer.main.get_command(app).commands["run"]
    ctx = run.make_context("run", ["tasks/demo.yaml", "--budget", "ci", "--executor", "slurm", "--detach", "--force",
                                   "--slurm-partition", "gpu", "--slurm-extra=--requeue", "--work-root", "w"])
    again = same_command(ctx)
    assert again[:2] == ["run", str(tmp_path / "tasks" / "demo.yaml")]
    assert {"--budget=ci", "--executor=slurm", "--detach", "--slurm-partition=gpu", "--slurm-extra=--requeue",
            f"--work-root={tmp_path / 'w'}"} <= set(again)
    assert "--force" not in again
    reparsed = run.make_context("run", again[1:])  # the follow-up's command line parses to the same run
    assert reparsed.params["slurm_extra"] == ["--requeue"] and reparsed.params["detach"]
