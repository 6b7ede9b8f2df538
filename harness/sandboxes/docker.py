"""The Docker sandbox: each job is a container of the project image running ``selfunet ARGV``.

Why these settings (each one answers a failure seen with containerised training):

- **Same paths inside as outside.** The dataset is bind-mounted read-only and the work directory
  read-write at their host paths, so the job's argv (absolute paths made by the job graph) needs
  no rewriting and the artifacts it writes name paths that are valid on the host too.
- **Exactly the slot's GPU** as a device request (``device_ids=[gpu]``); inside it is ``cuda:0``.
  None on CPU. Needs the NVIDIA Container Toolkit on the host (docs/containers.md).
- **The host user** (``uid:gid``), so outputs in the work directory are not root-owned.
- **2 GB of /dev/shm**: Docker's 64 MB default kills data loader workers ("bus error").
- **No network**, CPU (``nano_cpus``) and memory (``mem_limit``, no swap) limits from the request.
- **Failures named**: an OOM kill and a timeout each get a line in the job log and their own exit
  code (:data:`EXIT_OOM`, :data:`EXIT_TIMEOUT`); the container is always removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from harness.sandboxes.base import STOP_GRACE_S, Sandbox, SandboxRequest, Slot
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

#: exit code of a job the engine killed for exceeding its memory limit (State.OOMKilled).
EXIT_OOM = 250
#: exit code of a job killed because it ran past the sandbox's timeout (GNU timeout's code).
EXIT_TIMEOUT = 124
DEFAULT_IMAGE = "selfunet:latest"
DEFAULT_SHM = "2g"


def _dataset_of(work: Path) -> Path | None:
    """The raw dataset a work directory was fingerprinted from (``fingerprint.json`` names it).

    Later stages (preprocess, crossval) read the raw images and labels through that path, not
    through their argv, so the container needs it mounted too.
    """
    try:
        root = json.loads((work / "fingerprint.json").read_text())["dataset"]["root"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(root)


def _covered(path: Path, mounts: list[Path]) -> bool:
    return any(path == m or m in path.parents for m in mounts)


class DockerSandbox(Sandbox):
    name = "docker"

    def __init__(self, image: str | None = None, client: Any = None, user: str | None = None,
                 shm_size: str = DEFAULT_SHM, timeout_s: float | None = None, cpus: float | None = None,
                 memory_gb: float | None = None, entrypoint: list[str] | None = None,
                 network_mode: str = "none") -> None:
        #: tag or id; resolved to an id once (the id is what job hashes see).
        self.image_ref = image or DEFAULT_IMAGE
        self._client = client
        self.user = user or f"{os.getuid()}:{os.getgid()}"
        self.shm_size = shm_size
        self.timeout_s = timeout_s
        #: CLI overrides of the descriptor's per-job limits.
        self.cpus = cpus
        self.memory_gb = memory_gb
        #: None = the image's (``selfunet``); tests run ``python -c`` through the same code path.
        self.entrypoint = entrypoint
        self.network_mode = network_mode
        self._lock = threading.Lock()
        self._image_id: str | None = None
        #: containers running now (job id -> container), so :meth:`stop_all` can reach them.
        self._live: dict[str, Any] = {}

    # --- engine and image
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                from harness.image import docker_client

                self._client = docker_client()
            return self._client

    @property
    def image(self) -> str:
        if self._image_id is None:
            import docker.errors

            try:
                found = self.client.images.get(self.image_ref)
            except docker.errors.ImageNotFound:
                raise SelfUNetError(
                    f"image '{self.image_ref}' not found in the Docker Engine; build it with `harness image build` "
                    "(add `--base-image selfunet-base:bookworm` where no registry is reachable) or pass --image TAG."
                ) from None
            self._image_id = found.id
        return self._image_id

    # --- the container's settings (pure: tests inspect them without an engine)
    def mounts(self, request: SandboxRequest) -> dict[str, dict[str, str]]:
        read_write = [Path(p).resolve() for p in request.read_write]
        read_only = [Path(p).resolve() for p in request.read_only]
        for work in read_write:
            dataset = _dataset_of(work)
            if dataset is not None and not _covered(dataset.resolve(), read_only + read_write):
                read_only.append(dataset.resolve())
        volumes = {str(p): {"bind": str(p), "mode": "ro"} for p in read_only}
        volumes.update({str(p): {"bind": str(p), "mode": "rw"} for p in read_write})
        return volumes

    def container_kwargs(self, request: SandboxRequest, slot: Slot) -> dict[str, Any]:
        """Keyword arguments of ``client.containers.create`` for one job on one slot."""
        from docker.types import DeviceRequest

        cpus = self.cpus if self.cpus is not None else request.cpus
        memory_gb = self.memory_gb if self.memory_gb is not None else request.memory_gb
        env = {"PYTHONUNBUFFERED": "1", "COLUMNS": "120", "HOME": "/tmp", **request.env}
        if cpus:
            env.setdefault("OMP_NUM_THREADS", str(max(int(cpus), 1)))
        kwargs: dict[str, Any] = {
            "image": self.image, "command": list(request.argv), "user": self.user, "environment": env,
            "volumes": self.mounts(request), "network_mode": self.network_mode, "shm_size": self.shm_size,
            "labels": {"selfunet.job": request.job_id}, "detach": True, "stdin_open": False, "tty": False,
            "name": f"selfunet-{_safe(request.job_id)}-{os.getpid()}-{int(time.time() * 1000) % 10**8}",
        }
        if self.entrypoint is not None:
            kwargs["entrypoint"] = list(self.entrypoint)
        if slot.gpu is not None:
            kwargs["device_requests"] = [DeviceRequest(device_ids=[str(slot.gpu)], capabilities=[["gpu"]])]
        if cpus:
            kwargs["nano_cpus"] = int(float(cpus) * 1e9)
        if memory_gb:
            limit = f"{max(int(float(memory_gb) * 1024), 6)}m"
            kwargs["mem_limit"] = limit
            kwargs["memswap_limit"] = limit  # no swap: over the limit is an OOM kill, not a crawl
        return kwargs

    # --- running
    def run(self, request: SandboxRequest, slot: Slot) -> int:
        import docker.errors

        kwargs = self.container_kwargs(request, slot)
        for path, spec in kwargs["volumes"].items():
            if spec["mode"] == "rw":
                Path(path).mkdir(parents=True, exist_ok=True)  # else the engine creates it, root-owned
            elif not Path(path).exists():
                raise SelfUNetError(f"{path}: read-only folder for job {request.job_id} does not exist.")
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(request.log_path, "ab") as out:
            def note(text: str) -> None:
                out.write(f"{text}\n".encode())
                out.flush()

            note(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} slot {slot.index} gpu {slot.gpu}: docker "
                 f"{self.image_ref} ({self.image[:19]}) {' '.join(request.argv)}")
            container = None
            timed_out = threading.Event()
            try:
                try:
                    container = self.client.containers.create(**kwargs)
                    with self._lock:
                        self._live[request.job_id] = container
                    container.start()
                except docker.errors.APIError as exc:
                    note(f"=== the engine refused the container: {exc}")
                    hint = (" The GPU request needs the NVIDIA Container Toolkit on the host "
                            "(docs/containers.md)." if slot.gpu is not None and "device driver" in str(exc) else "")
                    raise SelfUNetError(f"job {request.job_id}: docker could not start the container: "
                                        f"{exc.explanation or exc}.{hint}") from None
                watchdog = None
                if self.timeout_s:
                    def expire() -> None:
                        timed_out.set()
                        with contextlib.suppress(docker.errors.APIError):
                            container.kill()

                    watchdog = threading.Timer(self.timeout_s, expire)
                    watchdog.daemon = True
                    watchdog.start()
                try:
                    for chunk in container.logs(stream=True, follow=True):
                        out.write(chunk)
                        out.flush()
                    code = int(container.wait().get("StatusCode", -1))
                finally:
                    if watchdog is not None:
                        watchdog.cancel()
                container.reload()
                state = container.attrs.get("State", {})
                if timed_out.is_set():
                    note(f"=== TIMEOUT: the job ran past {self.timeout_s:g} s and was killed (exit code {code}).")
                    return EXIT_TIMEOUT
                if state.get("OOMKilled"):
                    note(f"=== OUT OF MEMORY: the container hit its memory limit ({kwargs.get('mem_limit')}) and "
                         f"was killed (exit code {code}); raise resources.memory_gb or --memory-gb.")
                    return EXIT_OOM
                if code != 0:
                    note(f"=== exit code {code}")
                return code
            except BaseException as exc:  # Ctrl-C: let the job checkpoint (SIGTERM, then SIGKILL)
                if container is not None and not isinstance(exc, SelfUNetError):
                    with contextlib.suppress(docker.errors.APIError):
                        container.stop(timeout=60)
                raise
            finally:
                with self._lock:
                    self._live.pop(request.job_id, None)
                if container is not None:
                    with contextlib.suppress(docker.errors.NotFound):
                        try:
                            container.remove(force=True)
                        except docker.errors.APIError as exc:
                            log.warning("could not remove container %s: %s", container.name, exc)


    def stop_all(self, grace_s: float = STOP_GRACE_S) -> list[str]:
        """``docker stop`` every running job container at once: SIGTERM to the container's processes,
        SIGKILL after ``grace_s``; the job threads then see the exit codes and remove the containers."""
        import docker.errors

        with self._lock:
            live = dict(self._live)

        def stop(container: Any) -> None:
            with contextlib.suppress(docker.errors.APIError):
                container.stop(timeout=int(grace_s))

        threads = [threading.Thread(target=stop, args=(c,), daemon=True) for c in live.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(live)


def _safe(job_id: str) -> str:
    """A container-name-safe version of a job id ([a-zA-Z0-9_.-])."""
    return "".join(c if c.isalnum() or c in "_.-" else "-" for c in job_id)[:60]
