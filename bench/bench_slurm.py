"""The Slurm executor's overhead on a real cluster (docs/benchmarks/slurm.md reports the numbers).

Three measurements (SLURM_CONF pointing at a cluster, e.g. the one ``.ci/slurm.sh start`` makes):

1. ``overhead``: N no-op jobs one after the other (``/bin/true`` through the process sandbox), each
   submitted, run and collected before the next, through the local executor and the Slurm
   executor. Per Slurm job: the ``sbatch`` call, submission to start (the node's
   ``harness.executors.slurm_job`` running), start to the harness having the completion, and the
   whole round trip against the local executor's.
2. ``chain``: a chain of K no-op jobs, each depending on the one before, run both ways: the harness
   submitting each job when it sees the previous one finished (the default), and all K submitted
   at once with ``--dependency=afterok`` (what ``--detach`` does). Cost per edge = makespan / K.
3. ``demo``: ``harness run tasks/demo.yaml --budget ci`` from scratch with ``--executor local``,
   ``--executor slurm`` and ``--executor slurm --detach`` (until the last follow-up job has written
   the results), one after the other on the same machine, with the load average before each; and
   from the Slurm runs' job records, each job's submission-to-start latency.

Usage: ``python bench/bench_slurm.py [overhead|chain|demo|all] [--jobs 20] [--length 10] [--root DIR]
[--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from harness.executors.local import LocalExecutor
from harness.executors.slurm import SlurmExecutor
from harness.sandboxes.base import SandboxRequest
from harness.sandboxes.process import ProcessSandbox

REPO = Path(__file__).resolve().parents[1]
NOOP = ProcessSandbox(program=["/bin/true"])


def load() -> float:
    return os.getloadavg()[0]


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"median": round(statistics.median(values), 3), "min": round(values[0], 3),
            "max": round(values[-1], 3), "n": len(values)}


def request(root: Path, name: str) -> SandboxRequest:
    return SandboxRequest(f"b-{name}", (), root / "b" / ".harness" / "logs" / f"{name}.log", cpus=1, memory_gb=0.25)


def overhead(jobs: int) -> dict:
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        local = LocalExecutor(NOOP, jobs=1)
        trips = []
        for i in range(jobs):
            begun = time.perf_counter()
            local.submit(f"b/l{i}", request(root, f"l{i}"), uses_gpu=False)
            local.wait()
            trips.append(time.perf_counter() - begun)
        local.close()
        slurm = SlurmExecutor(NOOP, root)
        calls, to_start, to_seen, round_trips = [], [], [], []
        for i in range(jobs):
            begun, wall = time.perf_counter(), time.time()
            slurm.track(f"b/s{i}", "h")
            slurm.submit(f"b/s{i}", request(root, f"s{i}"), uses_gpu=False)
            calls.append(time.perf_counter() - begun)
            (_done,) = slurm.wait()
            round_trips.append(time.perf_counter() - begun)
            result = json.loads((root / "b" / ".harness" / "slurm" / f"s{i}.result.json").read_text())
            to_start.append(result["started"] - wall)
            to_seen.append(wall + round_trips[-1] - result["finished"])
    return {"load_before": load(), "local_round_trip_s": summary(trips), "slurm_sbatch_s": summary(calls),
            "slurm_submit_to_start_s": summary(to_start), "slurm_end_to_seen_s": summary(to_seen),
            "slurm_round_trip_s": summary(round_trips)}


def chain(length: int) -> dict:
    out = {"load_before": load()}
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        slurm = SlurmExecutor(NOOP, root / "ready")
        begun = time.perf_counter()
        for i in range(length):
            slurm.track(f"b/c{i}", "h")
            slurm.submit(f"b/c{i}", request(root / "ready", f"c{i}"), uses_gpu=False)
            slurm.wait()
        out["submit_when_ready_per_edge_s"] = round((time.perf_counter() - begun) / length, 3)
        slurm = SlurmExecutor(NOOP, root / "afterok", detach=True)
        begun = time.perf_counter()
        for i in range(length):
            slurm.track(f"b/c{i}", "h", (f"b/c{i - 1}",) if i else ())
            slurm.submit(f"b/c{i}", request(root / "afterok", f"c{i}"), uses_gpu=False)
        submitted = time.perf_counter() - begun
        done = 0
        while done < length:
            done += len(slurm.wait())
        out["afterok_per_edge_s"] = round((time.perf_counter() - begun) / length, 3)
        out["afterok_submit_all_s"] = round(submitted, 3)
    return out


def harness_run(root: Path, *extra: str) -> float:
    args = [sys.executable, "-m", "harness.cli", "run", str(REPO / "tasks" / "demo.yaml"), "--budget", "ci",
            "--work-root", str(root / "work"), "--results", str(root / "results"), "--data-root", str(root / "data"),
            *extra]
    begun = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=root)
    if "--detach" in extra:  # until the last follow-up job has written the results and ended
        run_json, follow = root / "results" / "demo" / "run.json", root / "work" / ".harness" / "slurm-follow-up.json"
        while not run_json.exists():
            time.sleep(0.5)
        seconds = time.perf_counter() - begun
        job = json.loads(follow.read_text())["slurm_job_id"]
        while subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip():
            time.sleep(0.5)
        return round(seconds, 1)
    seconds = time.perf_counter() - begun
    if done.returncode not in (0, 1):
        raise SystemExit(f"harness run failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return round(seconds, 1)


def latencies(root: Path) -> dict:
    """From the Slurm job records: submission to the node starting each job."""
    waits = []
    for path in (root / "work" / "demo" / ".harness" / "slurm").glob("*.json"):
        if path.name.endswith((".spec.json", ".result.json")):
            continue
        record = json.loads(path.read_text())
        if record.get("started") and record.get("submitted") and not record.get("after"):
            waits.append(record["started"] - record["submitted"])
    return summary(waits) if waits else {}


def demo(where: Path) -> dict:
    out = {}
    for name, extra in (("local", ("--executor", "local")), ("slurm", ("--executor", "slurm")),
                        ("slurm_detach", ("--executor", "slurm", "--detach"))):
        root = where / name
        root.mkdir(parents=True, exist_ok=False)
        out[name] = {"load_before": load(), "wall_s": harness_run(root, *extra)}
        record = json.loads((root / "results" / "demo" / "run.json").read_text())
        out[name]["jobs"] = {j["status"] for j in record["jobs"]} == {"succeeded"}
        if name != "local":
            out[name]["submit_to_start_s"] = latencies(root)
        if name == "slurm_detach":
            follow = json.loads((root / "work" / ".harness" / "slurm-follow-up.json").read_text())
            out[name]["follow_up_jobs"] = len(follow["earlier"]) + 1
        print(json.dumps({name: out[name]}, default=str), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="all", choices=["overhead", "chain", "demo", "all"])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--length", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--root", type=Path, help="demo: a new folder for the three runs' work and results (kept)")
    args = parser.parse_args()
    results = {}
    if args.what in ("overhead", "all"):
        results["overhead"] = overhead(args.jobs)
        print(json.dumps({"overhead": results["overhead"]}), flush=True)
    if args.what in ("chain", "all"):
        results["chain"] = chain(args.length)
        print(json.dumps({"chain": results["chain"]}), flush=True)
    if args.what in ("demo", "all"):
        if args.root is None:
            parser.error("demo needs --root DIR (a new folder; the runs are kept there)")
        results["demo"] = demo(args.root)
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
