"""A stand-in for ``selfunet <stage>``: a real process that records what it saw, for the Ray tests.

Run by the process sandbox as ``python fake_job.py --out FILE [--seconds S] [--kill-worker N]
[--exit-code C] [--done FILE]``. Each attempt appends one JSON line to FILE (pid, parent pid =
the Ray worker, CUDA_VISIBLE_DEVICES, start time); the first N attempts SIGKILL their parent, as
a lost node would, then linger so that a surviving orphan would show (it appends "orphan").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--kill-worker", type=int, default=0)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--done", type=Path)
    args = parser.parse_args()

    def record(**fields) -> None:
        with open(args.out, "a") as handle:
            handle.write(json.dumps(fields) + "\n")

    def on_term(*_: object) -> None:
        record(event="terminated", pid=os.getpid(), time=time.time())
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    attempts = sum(1 for line in args.out.read_text().splitlines() if '"start"' in line) if args.out.exists() else 0
    record(event="start", pid=os.getpid(), ppid=os.getppid(), cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
           omp=os.environ.get("OMP_NUM_THREADS"), time=time.time())
    if attempts < args.kill_worker:
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(12.0)
        record(event="orphan", pid=os.getpid(), time=time.time())
        return 0
    time.sleep(args.seconds)
    record(event="end", pid=os.getpid(), time=time.time())
    if args.done is not None:
        args.done.write_text("done\n")
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
