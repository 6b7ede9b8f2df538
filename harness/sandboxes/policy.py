"""How tightly a job container is shut in: hardened by default, each setting loosened only on purpose.

A task descriptor's ``container:`` section is one :class:`ContainerPolicy`; every field's default
is the hardened setting, so a descriptor without the section gets all of them. The Docker sandbox
(:mod:`harness.sandboxes.docker`) turns it into engine settings; docs/guide/containers.md has the table
(setting, default, how to loosen).

Why each default: a job runs ``selfunet`` on data and artifacts that others may have written, and
later the harness runs other people's algorithm containers the same way. Nothing a job does should
reach the host beyond the work directory it was given: no capabilities (a container root can
otherwise ``chown``, ``mknod``, bind ports, ...), no privilege gain through set-uid binaries, no fork
bomb (pids limit), no writes outside ``/tmp`` and the work mount (read-only root), no network.
"""

from __future__ import annotations

import re
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: the job stages a timeout may be given for (``default`` covers the others).
STAGES = ("check", "fingerprint", "plan", "preprocess", "train", "crossval", "select", "predict")
#: processes + threads one job may hold: training uses a few data-loader workers and a few dozen
#: threads each; a runaway fork loop stops here instead of exhausting the host's pid space.
DEFAULT_PIDS_LIMIT = 4096
#: Linux's own ceiling on pids; a larger limit means nothing.
MAX_PIDS_LIMIT = 4_194_304
#: longest stage timeout a descriptor may set (30 days): finite, so `.inf` is refused when validated.
MAX_TIMEOUT_S = 30 * 24 * 3600.0
#: memory limit of a job when neither the descriptor (``resources.memory_gb``) nor ``--memory-gb``
#: sets one: this fraction of the memory of the machine the engine runs on, so one runaway job is
#: OOM-killed (and reported) before the host starts swapping or its own OOM killer picks a victim.
DEFAULT_MEMORY_FRACTION = 0.75
#: the writable scratch space of a read-only container (HOME, caches, torch compile files).
TMPFS = {"/tmp": "rw,exec,nosuid,nodev"}
_CAPABILITY = re.compile(r"(CAP_)?[A-Z][A-Z0-9_]*")


class ContainerPolicy(BaseModel):
    """The descriptor's ``container:`` section (every default is the hardened setting)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    capabilities: list[str] = Field(default_factory=list)
    """Linux capabilities added back after dropping all (e.g. ``[SYS_PTRACE]`` to attach a debugger)."""
    no_new_privileges: bool = True
    """``false`` lets set-uid binaries raise privileges inside the container."""
    read_only_root: bool = True
    """``false`` makes the image's filesystem writable (``/tmp`` is a tmpfs either way when true)."""
    pids_limit: Optional[int] = Field(default=DEFAULT_PIDS_LIMIT, ge=16, le=MAX_PIDS_LIMIT, strict=True)
    """most processes + threads at once; ``null`` for the engine's default (no limit)."""
    network: bool = False
    """``true`` attaches the engine's default bridge network (jobs need none)."""
    timeout_s: dict[str, float] = Field(default_factory=dict)
    """seconds a job of a stage may run before it is killed (exit 124): ``{train: 86400, default: 3600}``."""

    @field_validator("capabilities")
    @classmethod
    def _capability_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _CAPABILITY.fullmatch(name) or len(name) > 40:
                raise ValueError(f"'{name}' is not a capability name (e.g. SYS_PTRACE, NET_BIND_SERVICE)")
        return [name.removeprefix("CAP_") for name in value]

    @field_validator("timeout_s")
    @classmethod
    def _known_stages(cls, value: dict[str, float]) -> dict[str, float]:
        for stage, seconds in value.items():
            if stage not in (*STAGES, "default"):
                raise ValueError(f"unknown stage '{stage}'; use one of {', '.join(STAGES)} or default")
            if not 0 < seconds <= MAX_TIMEOUT_S:
                raise ValueError(f"timeout of '{stage}' must be > 0 and at most {MAX_TIMEOUT_S:.0f} seconds (30 days), "
                                 f"got {seconds}")
        return value

    def timeout_for(self, stage: str) -> float | None:
        return self.timeout_s.get(stage, self.timeout_s.get("default"))
