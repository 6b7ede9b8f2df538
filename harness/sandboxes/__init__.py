"""Sandboxes: *how* a job runs (a plain subprocess, or a hardened GPU Docker container).

A sandbox turns one job (a ``selfunet`` CLI call plus the folders it touches) and one resource
slot into an exit code, writing everything the job prints to the job's log file. It knows
nothing about the graph, hashes or markers, so a new sandbox plugs in by implementing
:class:`Sandbox` and adding itself to :data:`SANDBOXES`.
"""

from __future__ import annotations

from harness.sandboxes.base import Sandbox, SandboxRequest, Slot
from harness.sandboxes.docker import DockerSandbox
from harness.sandboxes.process import ProcessSandbox

#: explicit registry (no lookup by dotted strings): ``harness run --sandbox NAME``.
SANDBOXES: dict[str, type[Sandbox]] = {"process": ProcessSandbox, "docker": DockerSandbox}

__all__ = ["SANDBOXES", "DockerSandbox", "ProcessSandbox", "Sandbox", "SandboxRequest", "Slot"]
