"""The real Slurm cluster of the ``slurm`` tests: the single-node one ``.ci/slurm.sh start`` makes.

Skipped, with the reason, where no cluster answers ``sinfo``; ``SELFUNET_REQUIRE_SLURM=1`` (CI sets
it after starting the cluster) makes a missing cluster a failure instead, as
``SELFUNET_REQUIRE_REFERENCE`` does for the reference implementation. The cluster is the one the
environment names (``SLURM_CONF``, or the machine's own Slurm configuration): a cluster that merely
runs on the machine is not picked up by a test run that was not pointed at it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REQUIRE_SLURM_ENV = "SELFUNET_REQUIRE_SLURM"


def _problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm client commands (sinfo, sbatch) on this machine"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if done.returncode != 0:
        return f"sinfo failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    if not any(s.strip() in ("idle", "mixed", "allocated") for s in done.stdout.splitlines()):
        return f"no node is up (sinfo says {done.stdout.split()})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """SLURM_CONF of a cluster that answers. Skips when there is none, unless CI requires one."""
    problem = _problem()
    if problem is not None:
        message = (f"{problem}: start the single-node cluster with `eval \"$(.ci/slurm.sh start)\"` "
                   "(or run `bash .ci/slurm-tests.sh`)")
        if os.environ.get(REQUIRE_SLURM_ENV) == "1":
            pytest.fail(f"{message}; {REQUIRE_SLURM_ENV}=1 makes the Slurm tests mandatory")
        pytest.skip(message)
    return os.environ.get("SLURM_CONF", "")
