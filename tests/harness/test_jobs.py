"""The job graph at the sandbox seam: hashes, markers, skip/redo/force, failures, slots.

A fake in-process sandbox stands in for ``selfunet``: it writes the files each stage's
successors read (a real plan of the demo fingerprint, preprocessed case stubs, checkpoints), so
the real graph, runner, markers and local executor run in milliseconds per job.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from harness.executors import LocalExecutor, SlotPool, make_slots
from harness.run.jobs import TaskGraph
from harness.run.runner import Runner, summary_table
from harness.sandboxes import ProcessSandbox, Sandbox, SandboxRequest, Slot
from harness.tasks.descriptor import TaskDescriptor
from selfunet.planning.fingerprint_types import Fingerprint
from selfunet.planning.plan import plan_experiment


def write_label_map_like(image_path: Path, out: Path) -> None:
    """An empty label map with the (spatial) header of a test image, as `selfunet predict` writes."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    reader.ReadImageInformation()
    dim = reader.GetDimension()
    labels = sitk.Image([int(s) for s in reader.GetSize()[:3]], sitk.sitkUInt8)
    labels.SetSpacing(reader.GetSpacing()[:3])
    labels.SetOrigin(reader.GetOrigin()[:3])
    labels.SetDirection([reader.GetDirection()[r * dim + c] for r in range(3) for c in range(3)])
    sitk.WriteImage(labels, str(out))


class FakeSandbox(Sandbox):
    """Writes each stage's outputs instead of computing them; can fail chosen jobs."""

    name = "fake"

    def __init__(self, plan_json: str, case_ids: list[str], fail: set[str] | None = None) -> None:
        self.plan_json, self.case_ids, self.fail = plan_json, case_ids, set(fail or ())
        self.calls: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def run(self, request: SandboxRequest, slot: Slot) -> int:
        argv = request.argv
        with self._lock:
            self.calls.append(argv)
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(request.log_path, "a") as log:
            log.write(f"fake {' '.join(argv)}\n")
            if request.job_id.split("-", 1)[1] in self.fail:
                log.write("Traceback: something broke\n")
                return 3
        stage = argv[0]
        work = Path(argv[argv.index("--work") + 1]) if stage == "fingerprint" else Path(argv[1])
        if stage == "fingerprint":
            work.mkdir(parents=True, exist_ok=True)
            (work / "fingerprint.json").write_text("{}")
        elif stage == "plan":
            work.mkdir(parents=True, exist_ok=True)  # a preset's work dir (WORK/planners/P) is new
            (work / "plan.json").write_text(self.plan_json)
            if "--fingerprint" in argv:  # `selfunet plan --fingerprint F` copies F into WORK
                (work / "fingerprint.json").write_text(Path(argv[argv.index("--fingerprint") + 1]).read_text())
        elif stage == "preprocess":
            plan = json.loads((work / "plan.json").read_text())
            for name in argv[3::2][: argv.count("-c")]:
                folder = work / "preprocessed" / plan["configurations"][name]["data_identifier"]
                folder.mkdir(parents=True, exist_ok=True)
                for case in self.case_ids:
                    (folder / f"{case}.json").write_text("{}")
        elif stage == "train":
            out = work / "train" / argv[argv.index("-c") + 1] / f"fold_{argv[argv.index('-f') + 1]}"
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"format": "fake", "network": {}}, out / "checkpoint_final.pt")
        elif stage == "select":
            (work / "selection.json").write_text("{}")
        elif stage == "predict":
            out = Path(argv[argv.index("-o") + 1])
            out.mkdir(parents=True, exist_ok=True)
            for f in argv[1:argv.index("-o")]:
                write_label_map_like(Path(f), out / Path(f).name)
        return 0

    def stages(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture(scope="module")
def plan_json(demo_fingerprint: Fingerprint) -> str:
    return plan_experiment(demo_fingerprint).model_dump_json()


@pytest.fixture
def setup(tmp_path: Path, demo_root: Path, plan_json: str):
    case_ids = sorted(json.loads((demo_root / "dataset.json").read_text())["training"][i]["image"].split("/")[-1]
                      .removesuffix(".nii.gz") for i in range(6))

    def task(**fields) -> TaskDescriptor:
        return TaskDescriptor.model_validate({"name": "t", "dataset": str(demo_root), "budget": "ci", **fields})

    def run(t: TaskDescriptor, fail: set[str] | None = None, force: bool = False, jobs: int | None = None):
        sandbox = FakeSandbox(plan_json, case_ids, fail)
        graph = TaskGraph(t, tmp_path / "work" / t.name, tmp_path / "results")
        with LocalExecutor(sandbox, jobs=jobs, gpus=0) as executor:
            records = Runner([graph], executor, force=force, version="test").run()
        return {r.job: r for r in records}, sandbox

    return task, run, tmp_path / "work" / "t"


def statuses(records: dict, status: str) -> set[str]:
    return {job for job, r in records.items() if r.status == status}


def test_first_run_runs_every_job_and_leaves_markers(setup) -> None:
    task, run, work = setup
    records, sandbox = run(task())
    assert set(statuses(records, "succeeded")) == set(records)
    jobs = set(records)
    configurations = {j.split("-")[1] for j in jobs if j.startswith("train-")}
    assert configurations and {f"train-{c}-fold{k}" for c in configurations for k in (0, 1)} <= jobs
    assert {"check", "fingerprint", "plan", "preprocess", "select", "predict-test", "export"} <= jobs
    assert (work / "splits.json").is_file() and len(json.loads((work / "splits.json").read_text())) == 2
    marker = json.loads((work / ".harness" / "jobs" / "plan.json").read_text())
    assert marker["status"] == "succeeded" and marker["exit_code"] == 0 and len(marker["hash"]) == 64
    assert all(c[-1] == "--resume" for c in sandbox.calls if c[0] == "train")
    # order: every job started after the jobs it depends on
    stages = sandbox.stages()
    assert stages.index("plan") < stages.index("preprocess") < stages.index("train") < stages.index("crossval")
    assert stages.index("select") < stages.index("predict")


def test_rerun_skips_everything(setup) -> None:
    task, run, _ = setup
    run(task())
    records, sandbox = run(task())
    assert sandbox.calls == []
    assert statuses(records, "skipped") == set(records)


def test_changed_planner_input_redoes_plan_and_everything_downstream(setup) -> None:
    task, run, _ = setup
    run(task())
    records, sandbox = run(task(gpu_memory_gb=11))
    assert statuses(records, "skipped") == {"check", "fingerprint"}
    assert "plan" in statuses(records, "succeeded") and "export" in statuses(records, "succeeded")
    # earlier results of different inputs are discarded, not resumed
    assert all(c[-1] == "--restart" for c in sandbox.calls if c[0] == "train")


def test_changed_metrics_redo_only_evaluation_and_later(setup) -> None:
    task, run, _ = setup
    run(task())
    records, sandbox = run(task(metrics={"hd95": True}))
    assert set(sandbox.stages()) == {"crossval", "select", "predict"}
    assert all("--hd95" in c for c in sandbox.calls if c[0] == "crossval")
    assert not {j for j in statuses(records, "succeeded") if j.startswith("train-")}


def test_changed_budget_redoes_training_with_restart(setup) -> None:
    task, run, _ = setup
    run(task())
    records, sandbox = run(task(budget={"preset": "ci", "epochs": 5}))
    trains = [c for c in sandbox.calls if c[0] == "train"]
    assert trains and all("--restart" in c and c[c.index("--epochs") + 1] == "5" for c in trains)
    assert statuses(records, "skipped") == {"check", "fingerprint", "plan", "preprocess"}


def test_hand_edited_plan_redoes_preprocessing(setup) -> None:
    task, run, work = setup
    run(task())
    plan = json.loads((work / "plan.json").read_text())
    (work / "plan.json").write_text(json.dumps(plan, indent=4))  # same content, different bytes
    records, sandbox = run(task())
    # the plan job is skipped (its own inputs did not change) but its consumers see the edit
    assert "plan" in statuses(records, "skipped") and sandbox.stages()[0] == "preprocess"


def test_deleted_output_redoes_that_job_and_downstream_only(setup) -> None:
    task, run, work = setup
    first, _ = run(task())
    fold = next(j for j in first if j.startswith("train-") and j.endswith("fold1"))
    config = fold.split("-")[1]
    (work / "train" / config / "fold_1" / "checkpoint_final.pt").unlink()
    records, sandbox = run(task())
    trained = {j for j in statuses(records, "succeeded") if j.startswith("train-")}
    assert trained == {fold}
    assert sandbox.calls[0][-1] == "--resume"  # same inputs: continue, do not discard


def test_force_redoes_everything(setup) -> None:
    task, run, _ = setup
    first, _ = run(task())
    records, sandbox = run(task(), force=True)
    assert statuses(records, "succeeded") == set(first)
    assert all(c[-1] == "--restart" for c in sandbox.calls if c[0] == "train")


def test_interrupted_job_resumes_instead_of_restarting(setup) -> None:
    task, run, work = setup
    run(task())
    marker_path = work / ".harness" / "jobs" / "train-3d_fullres-fold0.json"
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({"job": marker["job"], "hash": marker["hash"], "status": "running"}))
    _, sandbox = run(task())
    assert sandbox.calls[0][:6] == ("train", str(work.resolve()), "-c", "3d_fullres", "-f", "0")
    assert sandbox.calls[0][-1] == "--resume"


def test_running_marker_of_a_dead_owner_is_recovered_as_interrupted(setup) -> None:
    import socket
    import subprocess

    task, run, work = setup
    run(task())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    marker_path = work / ".harness" / "jobs" / "train-3d_fullres-fold1.json"
    marker = json.loads(marker_path.read_text())
    owner = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "yesterday"}
    marker_path.write_text(json.dumps({"job": marker["job"], "hash": marker["hash"], "status": "running",
                                       "owner": owner}))
    records, sandbox = run(task())
    assert [c[:6] for c in sandbox.calls if c[0] == "train"] == [
        ("train", str(work.resolve()), "-c", "3d_fullres", "-f", "1")]
    assert sandbox.calls[0][-1] == "--resume"
    after = json.loads(marker_path.read_text())
    assert after["status"] == "succeeded" and after["owner"]["pid"] != owner["pid"]  # the new owner
    assert records["train-3d_fullres-fold1"].status == "succeeded"


@pytest.mark.parametrize("damage", ["empty", "torn", "foreign"])
def test_invalid_checkpoint_is_set_aside_and_the_job_redone(setup, damage: str) -> None:
    task, run, work = setup
    run(task())
    checkpoint = work / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes({"empty": b"", "torn": good[: len(good) // 2], "foreign": b"not a checkpoint"}[damage])
    records, sandbox = run(task())
    assert [c[4:6] for c in sandbox.calls if c[0] == "train"] == [("-f", "0")]
    assert records["train-3d_fullres-fold0"].status == "succeeded"
    aside = list(checkpoint.parent.glob("checkpoint_final.pt.invalid-*"))
    assert len(aside) == 1 and aside[0].stat().st_size < len(good)  # kept for inspection, never trusted
    torch.load(checkpoint, weights_only=True)


def test_unparseable_selection_is_redone(setup) -> None:
    task, run, work = setup
    run(task())
    (work / "selection.json").write_bytes(b'{"members": [')  # torn by a full disk
    _, sandbox = run(task())
    assert "select" in {c[0] for c in sandbox.calls}
    assert json.loads((work / "selection.json").read_text()) == {}


def test_failed_job_blocks_only_its_dependents(setup) -> None:
    task, run, work = setup
    records, sandbox = run(task(configurations=["2d", "3d_fullres"]), fail={"train-2d-fold0"})
    assert statuses(records, "failed") == {"train-2d-fold0"}
    # the other configuration's folds, and the other fold of 2d, still ran
    assert {"train-2d-fold1", "train-3d_fullres-fold0", "train-3d_fullres-fold1", "crossval-3d_fullres"} <= \
        statuses(records, "succeeded")
    assert statuses(records, "blocked") == {"crossval-2d", "select", "predict-test", "export"}
    marker = json.loads((work / ".harness" / "jobs" / "train-2d-fold0.json").read_text())
    assert marker["status"] == "failed" and marker["exit_code"] == 3
    assert "Traceback: something broke" in marker["log_tail"]
    table = summary_table(list(records.values()))
    assert "1 failed" in table.caption and "4 blocked" in table.caption
    # the fix: a rerun redoes the failed job and what it blocked, nothing else
    again, sandbox = run(task(configurations=["2d", "3d_fullres"]))
    assert set(sandbox.stages()) == {"train", "crossval", "select", "predict"}
    assert statuses(again, "succeeded") == {"train-2d-fold0", "crossval-2d", "select", "predict-test", "export"}


def test_export_copies_predictions_named_like_test_images(setup, demo_root: Path) -> None:
    task, run, _ = setup
    run(task(export={"folder": "Task00_Demo"}))
    out = setup[2].parents[1] / "results" / "t" / "predictions" / "Task00_Demo"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (demo_root / "imagesTs").iterdir())


def test_slots_one_per_gpu_or_jobs_spread_over_gpus() -> None:
    assert [s.gpu for s in make_slots(gpus=4)] == [0, 1, 2, 3]
    assert [s.gpu for s in make_slots(jobs=3, gpus=2)] == [0, 1, 0]
    assert make_slots(gpus=0) == [Slot(0, None)]
    assert [s.gpu for s in make_slots(jobs=2, gpus=0)] == [None, None]
    assert make_slots(gpus=2)[1].env() == {"CUDA_VISIBLE_DEVICES": "1"}


def test_cpu_only_machines_run_as_many_jobs_as_the_cores_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.executors.local as local

    monkeypatch.setattr(local, "visible_gpus", lambda: 0)
    monkeypatch.setattr(local, "usable_cores", lambda: 8)
    assert local.default_cpu_jobs(1) == 8
    assert local.default_cpu_jobs(2) == 4
    assert local.default_cpu_jobs(3) == 2
    assert local.default_cpu_jobs(16) == 1  # never zero
    monkeypatch.setattr(local, "visible_gpus", lambda: 2)
    assert local.default_cpu_jobs(1) is None  # GPUs: one job per GPU, as before


def test_usable_cores_follow_the_affinity_mask() -> None:
    import os

    from harness.executors.local import usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))


class SleepySandbox(Sandbox):
    """Holds each slot for a moment and records which slots are busy at the same time."""

    name = "sleepy"

    def __init__(self) -> None:
        self.busy: set[int] = set()
        self.max_busy = 0
        self.clash = False
        self.lock = threading.Lock()

    def run(self, request: SandboxRequest, slot: Slot) -> int:
        with self.lock:
            self.clash |= slot.index in self.busy
            self.busy.add(slot.index)
            self.max_busy = max(self.max_busy, len(self.busy))
        time.sleep(0.05)
        with self.lock:
            self.busy.discard(slot.index)
        return 0


def test_local_executor_never_hands_out_a_slot_twice(tmp_path: Path) -> None:
    sandbox = SleepySandbox()
    with LocalExecutor(sandbox, gpus=3) as executor:
        assert executor.capacity == 3
        for i in range(12):
            executor.submit(f"k{i}", SandboxRequest(f"k{i}", ("x",), tmp_path / f"{i}.log"))
        done = []
        while len(done) < 12:
            done += executor.wait()
    assert not sandbox.clash and sandbox.max_busy == 3
    assert {c.slot for c in done} == {"0 gpu 0", "1 gpu 1", "2 gpu 2"}


def test_slot_pool_blocks_until_release() -> None:
    pool = SlotPool(make_slots(gpus=1))
    slot = pool.acquire()
    got: list[Slot] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    time.sleep(0.05)
    assert got == []
    pool.release(slot)
    waiter.join(timeout=5)
    assert got == [slot]


def test_process_sandbox_logs_output_and_returns_exit_code(tmp_path: Path) -> None:
    code = "import os, sys; print('hello', os.environ.get('CUDA_VISIBLE_DEVICES')); sys.exit(int(sys.argv[1]))"
    sandbox = ProcessSandbox(program=[sys.executable, "-c", code])
    log = tmp_path / "logs" / "job.log"
    assert sandbox.run(SandboxRequest("job", ("0",), log), Slot(0, gpu=5)) == 0
    assert sandbox.run(SandboxRequest("job", ("4",), log), Slot(0, gpu=None)) == 4
    text = log.read_text()
    assert "hello 5" in text and text.count("=== ") == 2  # appended, one header per attempt


def test_broken_sandbox_becomes_a_failed_job(tmp_path: Path) -> None:
    class Broken(Sandbox):
        name = "broken"

        def run(self, request: SandboxRequest, slot: Slot) -> int:
            raise RuntimeError("engine unreachable")

    with LocalExecutor(Broken(), gpus=0) as executor:
        executor.submit("k", SandboxRequest("k", ("x",), tmp_path / "k.log"))
        (done,) = executor.wait()
    assert done.exit_code != 0 and "engine unreachable" in done.error
    assert "engine unreachable" in (tmp_path / "k.log").read_text()


def test_configuration_missing_from_plan_fails_the_plan_job_with_the_reason(setup, plan_json: str) -> None:
    task, run, work = setup
    if "3d_lowres" in json.loads(plan_json)["configurations"]:
        pytest.skip("the demo plan has a lowres configuration")
    records, _ = run(task(configurations=["3d_lowres"]))
    assert records["plan"].status == "failed"
    assert "3d_lowres" in records["plan"].reason and "not in the plan" in records["plan"].reason
    assert json.loads((work / ".harness" / "jobs" / "plan.json").read_text())["status"] == "failed"


def test_parallel_slots_give_the_same_result(setup) -> None:
    task, run, _ = setup
    records, _ = run(task(), jobs=3)
    assert statuses(records, "succeeded") == set(records)
    _, sandbox = run(task(), jobs=1)
    assert sandbox.calls == []  # worker count is not part of any hash


def test_holdout_cases_are_in_no_fold_and_a_leaking_splits_file_is_replaced(setup) -> None:
    task, run, work = setup
    held = ["demo_001", "demo_004"]
    records, _ = run(task(holdout={"cases": held}))
    assert statuses(records, "succeeded") == set(records)
    folds = json.loads((work / "splits.json").read_text())
    in_folds = {c for f in folds for c in f["train"] + f["val"]}
    assert in_folds and not in_folds & set(held)
    assert len(in_folds) == 4
    # a splits file written before the holdout was declared (holdout cases in folds) is rewritten
    (work / "splits.json").write_text(json.dumps([{"train": ["demo_000", "demo_001", "demo_002"],
                                                   "val": ["demo_003", "demo_004", "demo_005"]}] * 2))
    records, _ = run(task(holdout={"cases": held}))
    assert json.loads((work / "splits.json").read_text()) == folds  # the same folds as the first run: no retraining
    assert not {j for j in statuses(records, "succeeded") if j.startswith("train-")}


def test_each_planner_gets_its_own_work_dir_and_select_ranks_them_all(setup) -> None:
    task, run, work = setup
    records, sandbox = run(task(planners=["default", "resenc-m"]))
    assert set(statuses(records, "succeeded")) == set(records)
    assert {"plan", "plan@resenc-m", "preprocess", "preprocess@resenc-m", "train-3d_fullres@resenc-m-fold0",
            "train-3d_fullres@resenc-m-fold1", "crossval-3d_fullres@resenc-m", "crossval-3d_fullres"} <= set(records)
    preset_work = work / "planners" / "resenc-m"
    plan_call = next(c for c in sandbox.calls if c[0] == "plan" and "--preset" in c)
    assert plan_call[1] == str(preset_work) and plan_call[plan_call.index("--preset") + 1] == "resenc-m"
    assert plan_call[plan_call.index("--fingerprint") + 1] == str(work / "fingerprint.json")
    assert (preset_work / "splits.json").read_text() == (work / "splits.json").read_text()
    assert (preset_work / "train" / "3d_fullres" / "fold_1" / "checkpoint_final.pt").is_file()
    select = next(c for c in sandbox.calls if c[0] == "select")
    members = [select[i + 1] for i, a in enumerate(select) if a == "-c"]
    assert "3d_fullres" in members and "3d_fullres@resenc-m" in members
    crossvals = [i for i, c in enumerate(sandbox.calls) if c[0] == "crossval"]
    assert len(crossvals) == len(members) and max(crossvals) < sandbox.calls.index(select)
    again, sandbox = run(task(planners=["default", "resenc-m"]))
    assert sandbox.calls == [] and statuses(again, "skipped") == set(again)


def test_process_sandbox_stops_a_job_past_its_timeout(tmp_path: Path) -> None:
    """The descriptor's per-stage timeout (``container.timeout_s``) holds without Docker too: the
    job's whole process group gets SIGTERM (a trainer checkpoints), the log says why, exit 124."""
    code = ("import signal, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('child', child.pid, flush=True)\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(143)))\n"
            "time.sleep(60)\n")
    log = tmp_path / "job.log"
    start = time.monotonic()
    code_returned = ProcessSandbox(program=[sys.executable, "-c", code]).run(
        SandboxRequest("job", (), log, timeout_s=1.5), Slot(0, gpu=None))
    assert code_returned == 124 and time.monotonic() - start < 20
    text = log.read_text()
    assert "got SIGTERM" in text and "=== TIMEOUT: the job ran past 1.5 s" in text
    child = int(re.search(r"^child (\d+)$", text, re.MULTILINE).group(1))
    def alive(pid: int) -> bool:  # a zombie waiting for its reaper counts as gone
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and alive(child):
        time.sleep(0.1)
    assert not alive(child)
    # the override wins over the request, and a quick job is not touched
    assert ProcessSandbox(program=[sys.executable, "-c", "print('quick')"], timeout_s=30).run(
        SandboxRequest("job", (), log, timeout_s=0.001), Slot(0, gpu=None)) == 0
