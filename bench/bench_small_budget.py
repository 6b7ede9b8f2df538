"""Seconds per stage of a whole ``--budget ci`` run on a 5-case real task (target: 15 min on 2 cores).

The task is the mixed CT/MR one of ``bench/realdata/build_mixed_task.py`` (TotalSegmentator's
example images: a 512 x 512 CT at 0.98 mm, abdominal CTs, MRs), by default its ``fine`` variant,
whose fine median spacing makes large slices and large patches: the shape of dataset whose ci
run did not finish in 50 minutes because the validation prediction after training slid the
planned full-size network over every window of every case.

The run is ``selfunet run DATASET WORK --budget ci`` in a subprocess (its process group is
watched and killed above ``--cap-gb``); the stage timings come from the run's report. Usage::

    pip download totalsegmentator==2.18.0 --no-deps --no-binary :all: -d /tmp/ts && tar xzf /tmp/ts/*.tar.gz -C /tmp/ts
    python bench/bench_small_budget.py --source /tmp/ts/totalsegmentator-2.18.0/tests/reference_files \\
        --root /tmp/small_budget --out docs/benchmarks/small-budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "realdata"))

from bench_predict_large import machine, measure  # noqa: E402
from build_mixed_task import build  # noqa: E402

DRIVER = r"""
import json, sys
from pathlib import Path
from rich.console import Console
from selfunet.pipeline import RunOptions, run_pipeline
from selfunet.training.budgets import budget_config
dataset, work, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
options = RunOptions(train=budget_config(sys.argv[4], device="cpu"), processes=int(sys.argv[5]))
report = run_pipeline(dataset, work, options, console=Console(stderr=True))
out.write_text(json.dumps([{"stage": t.name, "seconds": round(t.seconds, 1), "skipped": t.skipped}
                           for t in report.timings], indent=2))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="TotalSegmentator's tests/reference_files")
    parser.add_argument("--root", type=Path, required=True, help="scratch folder")
    parser.add_argument("--variant", choices=("coarse", "fine"), default="fine")
    parser.add_argument("--budget", default="ci")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cap-gb", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    task = build(args.source, root / "data", args.variant)
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    timings = root / "timings.json"
    timings.unlink(missing_ok=True)
    load = os.getloadavg()
    started = time.time()
    run = measure([sys.executable, "-c", DRIVER, str(task), str(work), str(timings), args.budget,
                   str(args.processes)], int(args.cap_gb * 2**30), {**os.environ, "PYTHONPATH": str(HERE.parent)})
    stages = json.loads(timings.read_text()) if timings.is_file() else []
    costs = sorted(work.glob("train/*/fold_*/cost.json"))
    result = {"machine": {**machine(), "load_before": load}, "started": time.strftime("%Y-%m-%d %H:%M UTC",
              time.gmtime(started)), "budget": args.budget, "variant": args.variant, **run,
              "load_after": os.getloadavg(), "stages": stages,
              "folds": {str(p.parent.relative_to(work / "train")): json.loads(p.read_text()) for p in costs}}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
