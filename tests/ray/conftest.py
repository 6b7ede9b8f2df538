"""One small real Ray instance for the Ray tests: 2 CPUs and 4 *logical* GPUs on this CPU machine.

Ray counts GPUs as a resource; declaring 4 makes it assign GPU ids 0-3 to tasks exactly as on a
GPU node (``ray.get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``), which is what these tests check. The
instance is started once per session (about 10 s here) and kept small: 128 MB object store, no
dashboard.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

LOGICAL_GPUS = 4


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """GCS address of the session's Ray instance (drivers in subprocesses join it with it)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from harness.executors.ray import SUBREAPER_ENV

    os.environ.setdefault(SUBREAPER_ENV, "true")  # the raylet inherits it: orphans of dead workers die
    ray.init(num_cpus=2, num_gpus=LOGICAL_GPUS, object_store_memory=128 * 1024**2, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    # ray.init (raylet as subreaper) leaves SIGCHLD ignored in this process, which would make every
    # later subprocess in the test session report exit code 0; the executor undoes it the same way
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()

