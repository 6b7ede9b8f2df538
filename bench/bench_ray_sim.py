"""Ray executor on paper: per-job overhead, and a simulated benchmark graph on 8 logical GPUs.

Two measurements on a local Ray instance (GPUs declared as logical resources, so it runs on a CPU
machine; docs/benchmarks/ray-executor.md reports the numbers):

1. ``overhead``: N no-op jobs one at a time, each a real ``/bin/true`` process through the
   process sandbox, called directly, through the local executor, and through the Ray executor.
   The difference per job is what Ray adds (task submission, worker lease, result fetch).
2. ``sim``: a graph shaped like the real benchmark, 10 tasks x (fingerprint -> plan -> preprocess
   -> 4 configurations x 5 folds of training -> crossval per configuration -> select) = 200 GPU
   trainings in 280 jobs, with random durations (training 0.2-1.0 s x ``--scale``), run by the
   real :class:`harness.run.runner.Runner` through :class:`RayExecutor` on 8 logical GPUs. Reports
   GPU utilisation = sum(training durations) / (8 x makespan) against the lower bound
   max(critical path, training work / 8).

Usage: ``python bench/bench_ray_sim.py [overhead|sim|all] [--jobs 50] [--scale 5] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from types import SimpleNamespace

from rich.console import Console

from harness.executors.local import LocalExecutor
from harness.executors.ray import SUBREAPER_ENV, RayExecutor
from harness.run.jobs import Job, Markers
from harness.run.runner import Runner
from harness.sandboxes.base import Sandbox, SandboxRequest, Slot
from harness.sandboxes.process import ProcessSandbox

GPUS = 8
STAGES = {  # seconds before --scale: (low, high)
    "fingerprint": (0.05, 0.2), "plan": (0.02, 0.05), "preprocess": (0.1, 0.4), "train": (0.2, 1.0),
    "crossval": (0.05, 0.2), "select": (0.05, 0.1),
}


class SleepSandbox(Sandbox):
    """A job that sleeps ``argv[0]`` seconds (none: 0) inside the Ray worker: only scheduling is measured."""

    name = "sleep"

    def run(self, request: SandboxRequest, slot: Slot) -> int:
        time.sleep(float(request.argv[0]) if request.argv else 0.0)
        return 0


def start_ray(gpus: int, cpus: int) -> None:
    import ray

    os.environ.setdefault(SUBREAPER_ENV, "true")
    ray.init(num_cpus=cpus, num_gpus=gpus, object_store_memory=128 * 1024**2, include_dashboard=False,
             log_to_driver=False, configure_logging=False)


def warm_up(count: int) -> None:
    """Start the worker processes once (a long run pays this once; it is not per job)."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=0, max_calls=0)  # max_calls=0: the worker stays for the jobs
    def nothing() -> None:
        time.sleep(0.5)

    ray.get([nothing.remote() for _ in range(count)])


# -- 1. overhead per job --------------------------------------------------------------------------
def run_serially(executor, jobs: int, folder: Path) -> float:
    start = time.perf_counter()
    for i in range(jobs):
        executor.submit(f"noop{i}", SandboxRequest(f"noop{i}", (), folder / f"noop{i}.log"))
        (done,) = executor.wait()
        if done.exit_code != 0:
            raise RuntimeError(f"no-op job failed: {done}")
    return (time.perf_counter() - start) / jobs


def overhead(jobs: int) -> dict:
    sandbox = ProcessSandbox(program=("true",))
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        for i in range(jobs):
            sandbox.run(SandboxRequest(f"d{i}", (), folder / f"d{i}.log"), Slot(0, None))
        direct = (time.perf_counter() - start) / jobs
        with LocalExecutor(sandbox, jobs=1) as local:
            local_s = run_serially(local, jobs, folder)
        start_ray(gpus=4, cpus=2)
        warm_up(4)
        with RayExecutor(sandbox, jobs=1) as ray_ex:
            run_serially(ray_ex, 5, folder)  # the worker that will serve the rest is leased and warm
            ray_s = run_serially(ray_ex, jobs, folder)
        with RayExecutor(SleepSandbox(), jobs=1) as ray_ex:
            ray_noproc = run_serially(ray_ex, jobs, folder)
        import ray

        ray.shutdown()
    result = {"jobs": jobs, "direct_s": direct, "local_executor_s": local_s, "ray_executor_s": ray_s,
              "ray_overhead_s": ray_s - direct, "ray_in_worker_noop_s": ray_noproc, "load": os.getloadavg()}
    print(f"overhead ({jobs} no-op jobs, one at a time; load average {os.getloadavg()[0]:.1f}):")
    print(f"  process sandbox directly     {direct * 1000:7.1f} ms/job")
    print(f"  local executor               {local_s * 1000:7.1f} ms/job")
    print(f"  Ray executor                 {ray_s * 1000:7.1f} ms/job  (+{(ray_s - direct) * 1000:.1f} ms)")
    print(f"  Ray executor, no process     {ray_noproc * 1000:7.1f} ms/job  (Ray's round trip alone)")
    return result


# -- 2. the simulated benchmark -------------------------------------------------------------------
class SimGraph:
    """One task of the simulation: the real graph's shape, every job a sleep of a drawn duration."""

    def __init__(self, name: str, work: Path, rng: random.Random, scale: float, configs: int = 4,
                 folds: int = 5) -> None:
        self.task = SimpleNamespace(name=name, resources=SimpleNamespace(cpus=None, memory_gb=None))
        self.work = work / name
        self.markers = Markers(self.work)
        self.seconds: dict[str, float] = {}
        self.deps: dict[str, tuple[str, ...]] = {}
        self.gpu: set[str] = set()

        def add(job: str, stage: str, deps: tuple[str, ...] = ()) -> None:
            low, high = STAGES[stage]
            self.seconds[job] = rng.uniform(low, high) * scale
            self.deps[job] = deps
            if stage == "train":
                self.gpu.add(job)

        add("fingerprint", "fingerprint")
        add("plan", "plan", ("fingerprint",))
        add("preprocess", "preprocess", ("plan",))
        for c in range(configs):
            trains = tuple(f"train-c{c}-fold{f}" for f in range(folds))
            for job in trains:
                add(job, "train", ("preprocess",))
            add(f"crossval-c{c}", "crossval", trains)
        add("select", "select", tuple(f"crossval-c{c}" for c in range(configs)))

    def initial_jobs(self) -> list[Job]:
        return [Job(job, job.split("-")[0], (f"{s:.4f}",), self.deps[job], inputs={"seconds": s},
                    uses_gpu=job in self.gpu) for job, s in self.seconds.items()]

    def expand(self, job_id: str) -> list[Job]:
        return []

    def critical_path(self) -> float:
        finish: dict[str, float] = {}
        for job, s in self.seconds.items():  # insertion order is a topological order
            finish[job] = s + max((finish[d] for d in self.deps[job]), default=0.0)
        return max(finish.values())


def simulate(scale: float, tasks: int = 10, seed: int = 0, queue: int | None = None) -> dict:
    rng = random.Random(seed)
    start_ray(gpus=GPUS, cpus=2 * GPUS)
    warm_up(2 * GPUS)
    with TemporaryDirectory() as tmp:
        graphs = [SimGraph(f"task{t:02d}", Path(tmp), rng, scale) for t in range(tasks)]
        with RayExecutor(SleepSandbox(), jobs=queue) as executor:
            runner = Runner(graphs, executor, version="sim", console=Console(quiet=True))  # type: ignore[arg-type]
            wall = time.perf_counter()
            records = runner.run()
            wall = time.perf_counter() - wall
            capacity = executor.capacity
    import ray

    ray.shutdown()
    if any(r.status != "succeeded" for r in records):
        raise RuntimeError(f"simulation jobs failed: {[r for r in records if r.status != 'succeeded']}")
    trains = [r for r in records if r.stage == "train"]
    makespan = max(r.finished for r in records) - min(r.started for r in records)  # type: ignore[type-var]
    work = sum(r.seconds for r in trains)
    nominal = sum(g.seconds[j] for g in graphs for j in g.gpu)
    critical = max(g.critical_path() for g in graphs)
    bound = max(critical, nominal / GPUS)
    # GPUs busy over time: the busiest moment must never exceed the GPU count
    events = sorted([(r.started, 1) for r in trains] + [(r.finished, -1) for r in trains])
    busy = peak = 0
    for _, step in events:
        busy += step
        peak = max(peak, busy)
    # scheduling latency: on each GPU, the idle time between one training's end and the next one's start
    gaps: list[float] = []
    for gpu in {r.slot for r in trains}:
        mine = sorted((r for r in trains if r.slot == gpu), key=lambda r: r.started)
        gaps += [b.started - a.finished for a, b in itertools.pairwise(mine)]
    gap = sum(gaps) / len(gaps) if gaps else 0.0
    result = {
        "tasks": tasks, "jobs": len(records), "gpu_jobs": len(trains), "gpus": GPUS, "scale": scale,
        "in_flight": capacity, "makespan_s": makespan, "wall_s": wall, "gpu_work_s": work,
        "nominal_gpu_work_s": nominal, "critical_path_s": critical, "lower_bound_s": bound,
        "utilisation": work / (GPUS * makespan), "nominal_utilisation": nominal / (GPUS * makespan),
        "mean_gap_s": gap, "bound_utilisation": nominal / (GPUS * bound),
        "makespan_over_bound": makespan / bound, "peak_gpus_busy": peak, "load": os.getloadavg(),
    }
    print(f"simulation: {tasks} tasks, {len(records)} jobs ({len(trains)} GPU trainings), {GPUS} logical GPUs, "
          f"scale {scale}, {capacity} job(s) in flight")
    print(f"  makespan {makespan:.1f} s (wall {wall:.1f} s); lower bound {bound:.1f} s "
          f"(critical path {critical:.1f} s, GPU work / {GPUS} = {nominal / GPUS:.1f} s)")
    print(f"  GPU utilisation {result['utilisation']:.1%} measured, {result['nominal_utilisation']:.1%} counting only "
          f"the drawn durations (best possible {result['bound_utilisation']:.1%}); makespan / bound = "
          f"{result['makespan_over_bound']:.2f}; peak {peak} GPUs busy; mean gap between trainings on a GPU "
          f"{gap * 1000:.0f} ms; load average {os.getloadavg()[0]:.1f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=("overhead", "sim", "all"))
    parser.add_argument("--jobs", type=int, default=50, help="no-op jobs for the overhead measurement")
    parser.add_argument("--scale", type=float, nargs="+", default=[5.0], help="duration scale(s) for the simulation")
    parser.add_argument("--queue", type=int, help="jobs in flight (default: the executor's capacity)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    results: dict = {}
    if args.what in ("overhead", "all"):
        results["overhead"] = overhead(args.jobs)
    if args.what in ("sim", "all"):
        results["sim"] = [simulate(scale, queue=args.queue) for scale in args.scale]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
