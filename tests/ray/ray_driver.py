"""A driver process for the resume test: the real Runner and RayExecutor over a graph of fake jobs.

``python ray_driver.py WORK ADDRESS JOBS SECONDS``: JOBS GPU jobs (``train-<i>``, each the fake
program sleeping SECONDS) and a ``select`` job after all of them, joined to the Ray cluster at
ADDRESS. Prints the final status of every job as JSON. The test SIGKILLs it mid-run and reruns it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from ray_fakes import fake_program

from harness.executors.ray import RayExecutor
from harness.run.jobs import Job, Markers
from harness.run.runner import Runner
from harness.sandboxes.policy import ContainerPolicy
from harness.sandboxes.process import ProcessSandbox


class FakeGraph:
    """What the Runner needs of a TaskGraph: a task (name, dataset, resources, container policy),
    markers, the jobs."""

    def __init__(self, work: Path, jobs: int, seconds: float) -> None:
        self.work = work
        self.markers = Markers(work)
        self.task = SimpleNamespace(name="fake", dataset=work, resources=SimpleNamespace(cpus=None, memory_gb=None),
                                    container=ContainerPolicy())
        self.count, self.seconds = jobs, seconds

    def _job(self, job_id: str, deps: tuple[str, ...] = ()) -> Job:
        out, done = self.work / f"{job_id}.jsonl", self.work / f"{job_id}.done"
        argv = ("--out", str(out), "--seconds", str(self.seconds), "--done", str(done))
        return Job(job_id, job_id.split("-")[0], argv, deps, outputs=(done,), uses_gpu=bool(not deps))

    def initial_jobs(self) -> list[Job]:
        trains = [self._job(f"train-{i}") for i in range(self.count)]
        return [*trains, self._job("select", tuple(j.id for j in trains))]

    def expand(self, job_id: str) -> list[Job]:
        return []


def main() -> None:
    work, address, jobs, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    with RayExecutor(ProcessSandbox(fake_program()), address=address, num_cpus_per_job=0.5) as executor:
        records = Runner([FakeGraph(work, jobs, seconds)], executor, version="test").run()  # type: ignore[list-item]
    print(json.dumps({r.job: r.status for r in records}))


if __name__ == "__main__":
    main()
