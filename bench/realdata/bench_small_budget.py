"""Small budgets on real data: what one ci-budget training fold costs, with and without the voxel cap.

Runs ``selfunet train`` (a real subprocess, as the harness does) on a work directory that is
already fingerprinted, planned and preprocessed (e.g. the task of ``build_mixed_task.py``), and
reports per configuration: wall seconds, CPU seconds of the process tree (robust on a loaded
machine), and CPU seconds per training iteration. Each run is in a fresh copy of the work
directory, so runs do not resume each other.

Usage::

    python bench/realdata/bench_small_budget.py --work WORK -c 2d --iterations 4 --out results.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selfunet.training.budgets import SMALL_BUDGET_VOXELS_PER_BATCH


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_once(work: Path, configuration: str, iterations: int, capped: bool, predict_validation: bool) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "work"
        shutil.copytree(work, copy, ignore=shutil.ignore_patterns("train", "splits.json", ".harness"))
        argv = [sys.executable, "-m", "selfunet.cli", "train", str(copy), "-c", configuration, "-f", "0",
                "--epochs", "1", "--iterations-per-epoch", str(iterations), "--validation-iterations", "0",
                "--num-folds", "2", "--checkpoint-every", "1", "--no-validation-mirroring", "--amp", "off",
                "--predict-validation" if predict_validation else "--no-predict-validation"]
        if capped:
            argv += ["--max-voxels-per-batch", str(SMALL_BUDGET_VOXELS_PER_BATCH)]
        cpu0, wall0 = _children_cpu(), time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        cpu, wall = _children_cpu() - cpu0, time.perf_counter() - wall0
        if done.returncode != 0:
            raise SystemExit(f"selfunet train failed:\n{done.stderr[-3000:]}")
        budget_line = next((line for line in done.stderr.splitlines() if "budget:" in line), "")
        return {"configuration": configuration, "capped": capped, "iterations": iterations,
                "predict_validation": predict_validation, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                "budget": budget_line.split("budget: ")[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a preprocessed work directory")
    parser.add_argument("-c", "--configuration", action="append", required=True)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for configuration in args.configuration:
        for capped in (False, True):
            # a run with 0 iterations' worth of difference isolates start-up; two lengths give s/iteration
            short = train_once(args.work, configuration, 1, capped, predict_validation=False)
            long = train_once(args.work, configuration, 1 + args.iterations, capped, predict_validation=False)
            per_iteration = (long["cpu_s"] - short["cpu_s"]) / args.iterations
            row = {**long, "cpu_s_per_iteration": round(per_iteration, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
