"""The demo task through ``--executor slurm --detach`` on the real cluster, with nobody watching.

`harness run tasks/demo.yaml --budget ci --executor slurm --detach` queues what it can (check and
fingerprint, chained with afterok) and a follow-up job, and exits at once. From then on the
follow-up jobs carry the graph: each one adopts what finished, queues the next part (after
preprocess: every training, cross-validation and the selection at once, chained) and leaves the
next follow-up; the last one writes the results. Then an attached `harness run` finds every job
done by its content hash, and the leaderboard passes `harness compare` against the committed
baseline (the CI regression check of tests/harness/test_run_demo.py, here through Slurm).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_helpers import job_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as handle:
        return sorted((r["candidate"], r["members"]) for r in csv.DictReader(handle))


def test_the_demo_runs_detached_through_slurm_and_passes_the_baseline(slurm_cluster: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    args = [sys.executable, "-m", "harness.cli", "run", str(REPO / "tasks" / "demo.yaml"), "--budget", "ci",
            "--executor", "slurm", "--work-root", str(tmp_path / "work"), "--results", str(tmp_path / "results"),
            "--data-root", str(tmp_path / "data")]
    detached = subprocess.run([*args, "--detach"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = " ".join((detached.stdout + detached.stderr).split())
    assert detached.returncode == 0, output[-3000:]
    assert "detached: 2 job(s) queued; follow-up Slurm job" in output
    print(f"detached after {time.perf_counter() - started:.1f} s")

    follow_up = tmp_path / "work" / ".harness" / "slurm-follow-up.json"
    run_json = tmp_path / "results" / "demo" / "run.json"
    deadline = time.monotonic() + 1500
    while not run_json.exists():
        record = json.loads(follow_up.read_text())
        state = job_state(record["slurm_job_id"])
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
            log = Path(record["log"]).read_text()[-4000:]
            raise AssertionError(f"follow-up job {record['slurm_job_id']} ended {state}:\n{log}")
        assert time.monotonic() < deadline, f"no results after 25 min; last follow-up {record}"
        time.sleep(2)
    seconds = time.perf_counter() - started
    follow = json.loads(follow_up.read_text())
    while job_state(follow["slurm_job_id"]) not in ("COMPLETED", "FAILED", ""):  # still writing the results
        assert time.monotonic() < deadline, f"the last follow-up job did not end: {follow}"
        time.sleep(1)
    assert job_state(follow["slurm_job_id"]) in ("COMPLETED", ""), Path(follow["log"]).read_text()[-4000:]
    print(f"results written by follow-up job {follow['slurm_job_id']} after {seconds:.1f} s "
          f"({len(follow['earlier']) + 1} follow-up jobs)")
    record = json.loads(run_json.read_text())
    assert record["executor"] == "slurm"
    jobs = {j["job"]: j for j in record["jobs"]}
    assert all(j["status"] in ("succeeded", "skipped") for j in jobs.values()), jobs
    assert {"check", "fingerprint", "plan", "preprocess", "select", "predict-test", "export"} <= set(jobs)
    harness_dir = tmp_path / "work" / "demo" / ".harness"
    markers = {p.stem: json.loads(p.read_text()) for p in (harness_dir / "jobs").glob("*.json")}
    ran = {name: m.get("slot", "") for name, m in markers.items() if name not in ("demo-data", "export")}
    assert all(slot.startswith("slurm ") for slot in ran.values()), ran  # each job ran as a Slurm job
    slurm_records = {p.stem: json.loads(p.read_text()) for p in (harness_dir / "slurm").glob("*.json")
                     if not p.name.endswith((".spec.json", ".result.json"))}
    assert all(r["state"] == "COMPLETED" and r["collected"] for r in slurm_records.values()), slurm_records
    assert slurm_records["crossval-2d"]["after"]  # queued behind its trainings with afterok
    assert len(follow["earlier"]) + 1 >= 4  # fingerprint, plan, preprocess, select: each a point to go on from

    # an attached run now has nothing to do: every job is skipped by its content hash
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert {j["status"] for j in json.loads(run_json.read_text())["jobs"]} == {"skipped"}

    assert rows(tmp_path / "results" / "demo" / "leaderboard.csv") == rows(
        REPO / "results" / "baselines" / "demo" / "leaderboard.csv")
    compared = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(tmp_path / "results"),
                               "--baseline", str(REPO / "results" / "baselines"), "--max-drop", "0.05"],
                              capture_output=True, text=True, timeout=120)
    print(compared.stdout)
    assert compared.returncode == 0, compared.stdout + compared.stderr
