"""Small readers of the cluster's state for the slurm tests (squeue, sinfo)."""

from __future__ import annotations

import subprocess


def partition_exists(name: str) -> bool:
    done = subprocess.run(["sinfo", "-h", "-p", name, "-o", "%P"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and bool(done.stdout.strip())


def job_state(job_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.strip()


def live_jobs_in(folder: str, name: str) -> list[str]:
    """Ids of the pending or running jobs named ``name`` submitted from ``folder`` (their working
    directory): this test's, whatever else the cluster runs meanwhile."""
    done = subprocess.run(["squeue", "-h", "-t", "PENDING,RUNNING", "-o", "%i|%j|%Z"], capture_output=True,
                          text=True, timeout=30)
    found = []
    for line in done.stdout.splitlines():
        job_id, job_name, workdir = line.split("|", 2)
        if job_name == name and workdir == folder:
            found.append(job_id)
    return found
