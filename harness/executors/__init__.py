"""Executors: *where* jobs run (this machine's GPU slots, a Ray cluster, a Slurm cluster).

An executor accepts ready jobs (``submit``) and hands back finished ones (``wait``); the graph
code (:mod:`harness.run.jobs`) decides what is ready and never learns how jobs are placed. A new
executor plugs in by implementing :class:`Executor` and adding itself to :data:`EXECUTORS`.
"""

from __future__ import annotations

from harness.executors.base import Completion, Executor
from harness.executors.local import LocalExecutor, SlotPool, make_slots

#: explicit registry: ``harness run --executor NAME``.
EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor}

__all__ = ["EXECUTORS", "Completion", "Executor", "LocalExecutor", "SlotPool", "make_slots"]
