"""A grand-challenge algorithm container on one case, in the Docker job sandbox.

Same engine code, hardening, limits and failure reporting as the harness's own jobs
(:class:`~harness.sandboxes.docker.DockerSandbox`: no network, all capabilities dropped,
``no-new-privileges``, a pids limit, a read-only root with a tmpfs ``/tmp``, CPU and memory
limits, an OOM kill and a timeout named in the log and returned as their own exit codes, the
container always removed), with the platform's contract instead of ``selfunet ARGV``:

- the case folder is mounted read-only at ``/input`` and a fresh folder read-write at
  ``/output`` (the request's one ``read_only`` and one ``read_write`` path): :meth:`run` makes
  the output folder itself and refuses one that exists, so nothing the submission (or anyone)
  prepared there before the run is ever read back as its output;
- the image's own entry point and command, and its own user (the platform runs an algorithm as
  the user its image declares; the output folder is made writable for it), except root: an image
  that declares none (or root) runs as ``nobody`` (:data:`NOBODY`), since a submission is code
  nobody here reviewed;
- an algorithm's separate model (the tarball uploaded beside the image) extracted and mounted
  read-only at ``/opt/ml/model`` (:data:`MODEL_MOUNT`), as the platform mounts it, when
  ``model_dir`` is given;
- no host paths inside the container besides those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.sandboxes.base import SandboxRequest, Slot
from harness.sandboxes.docker import DockerSandbox
from selfunet.errors import SelfUNetError

#: who an image that would run as root runs as instead.
NOBODY = "65534:65534"
#: where the platform mounts an algorithm's separate model (its model tarball, extracted).
MODEL_MOUNT = "/opt/ml/model"


def is_root(user: str) -> bool:
    return user in ("", "root", "0") or user.startswith(("root:", "0:"))


class AlgorithmSandbox(DockerSandbox):
    name = "algorithm"

    def __init__(self, *args: Any, model_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the extracted model tarball, mounted read-only at /opt/ml/model (None: the image has its model)
        self.model_dir = None if model_dir is None else Path(model_dir)

    def mounts(self, request: SandboxRequest) -> dict[str, dict[str, str]]:
        if len(request.read_only) != 1 or len(request.read_write) != 1:
            raise SelfUNetError(f"job {request.job_id}: an algorithm run needs one input and one output folder.")
        volumes = {str(Path(request.read_only[0]).resolve()): {"bind": "/input", "mode": "ro"},
                   str(Path(request.read_write[0]).resolve()): {"bind": "/output", "mode": "rw"}}
        if self.model_dir is not None:
            volumes[str(self.model_dir.resolve())] = {"bind": MODEL_MOUNT, "mode": "ro"}
        return volumes

    def container_kwargs(self, request: SandboxRequest, slot: Slot) -> dict[str, Any]:
        kwargs = super().container_kwargs(request, slot)
        kwargs.pop("user", None)  # the image's user, as on the platform
        if is_root(self.image_user):
            kwargs["user"] = NOBODY
        kwargs.pop("command", None)  # the image's CMD
        kwargs.pop("entrypoint", None)
        if self.entrypoint is not None:
            kwargs["entrypoint"] = list(self.entrypoint)
        if request.argv:
            kwargs["command"] = list(request.argv)
        kwargs["labels"] = {**kwargs.get("labels", {}), "selfunet.algorithm": self.image_ref}
        return kwargs

    @property
    def image_user(self) -> str:
        """The user the image declares (``Config.User``; empty = root)."""
        if not hasattr(self, "_image_user"):
            self._image_user = (self.client.images.get(self.image).attrs.get("Config") or {}).get("User") or ""
        return self._image_user

    def run(self, request: SandboxRequest, slot: Slot) -> int:
        output = Path(request.read_write[0])
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            output.mkdir()  # fresh: an output folder is never reused
        except FileExistsError:
            raise SelfUNetError(f"job {request.job_id}: the output folder {output} exists already; an algorithm "
                                "run writes into a folder made for it (the harness's own error: please report "
                                "it).") from None
        output.chmod(0o777)  # written by the image's user, whoever that is
        return super().run(request, slot)
