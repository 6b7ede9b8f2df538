"""The Docker sandbox: each job is a container of the project image running ``selfunet ARGV``.

Why these settings (each one answers a failure seen with containerised training, or a way a job
could reach beyond its work directory):

- **Same paths inside as outside.** The dataset is bind-mounted read-only and the work directory
  read-write at their host paths, so the job's argv (absolute paths made by the job graph) needs
  no rewriting and the artifacts it writes name paths that are valid on the host too. Only the
  paths of the request are mounted: they come from the task descriptor, never from a file a job
  wrote (``WORK/fingerprint.json`` names a dataset too, but a job wrote it).
- **Exactly the slot's GPU** as a device request (``device_ids=[gpu]``); inside it is ``cuda:0``.
  None on CPU. Needs the NVIDIA Container Toolkit on the host (docs/guide/containers.md).
- **Never uid 0.** The host user (``uid:gid``), so outputs in the work directory are not
  root-owned; when the harness itself runs as root, the image's unprivileged user
  (:data:`ROOT_HOST_JOB_USER`), and the work directory is handed to that user before each job.
- **Hardened** (:mod:`harness.sandboxes.policy`, each loosened only on purpose): all capabilities
  dropped, ``no-new-privileges``, a pids limit, a read-only root filesystem with a tmpfs ``/tmp``,
  no network, a memory limit (the request's, else a fraction of the host's), an optional timeout.
- **2 GB of /dev/shm**: Docker's 64 MB default kills data loader workers ("bus error").
- **Failures named**: an OOM kill and a timeout each get a line in the job log and their own exit
  code (:data:`EXIT_OOM`, :data:`EXIT_TIMEOUT`); the container is always removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from harness.sandboxes.base import EXIT_TIMEOUT, STOP_GRACE_S, Sandbox, SandboxRequest, Slot
from harness.sandboxes.policy import DEFAULT_MEMORY_FRACTION, TMPFS, ContainerPolicy
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

#: exit code of a job the engine killed for exceeding its memory limit (State.OOMKilled).
EXIT_OOM = 250
DEFAULT_IMAGE = "selfunet:latest"
DEFAULT_SHM = "2g"
#: the job user when the harness runs as root: the image's ``selfunet`` user (``useradd --uid 1000``
#: in the Dockerfile). A container never runs as uid 0 unless ``--container-user 0:0`` asks for it.
ROOT_HOST_JOB_USER = "1000:1000"


def parse_user(user: str) -> tuple[int, int | None]:
    """``UID[:GID]`` as numbers (names are refused: the work directory is handed over by number)."""
    uid, _, gid = user.partition(":")
    try:
        return int(uid), (int(gid) if gid else None)
    except ValueError:
        raise SelfUNetError(f"--container-user {user}: expected numbers, UID or UID:GID (e.g. 1000:1000).") from None


def hand_over(folder: Path, uid: int, gid: int | None) -> int:
    """Make ``folder`` (recursively) owned by ``uid:gid``, so a container running as that user can write
    there; entries already owned are left alone, links are not followed. Returns how many changed."""
    changed = 0
    for current, dirs, files in os.walk(folder):
        for entry in (current, *(os.path.join(current, n) for n in files)):
            try:
                st = os.lstat(entry)
                if st.st_uid != uid or (gid is not None and st.st_gid != gid):
                    os.lchown(entry, uid, -1 if gid is None else gid)
                    changed += 1
            except FileNotFoundError:  # a temp file another job renamed meanwhile
                continue
        for name in dirs:  # links to folders: the link itself (os.walk does not descend into it)
            entry = os.path.join(current, name)
            with contextlib.suppress(FileNotFoundError):
                if os.path.islink(entry) and os.lstat(entry).st_uid != uid:
                    os.lchown(entry, uid, -1 if gid is None else gid)
                    changed += 1
    return changed


def unreadable_for(folder: Path, uid: int, gid: int | None) -> Path | None:
    """The first file or folder under ``folder`` that ``uid:gid`` could not read (None when all can be)."""
    def readable(st: os.stat_result, is_dir: bool) -> bool:
        need = (stat.S_IRUSR | (stat.S_IXUSR if is_dir else 0), stat.S_IRGRP | (stat.S_IXGRP if is_dir else 0),
                stat.S_IROTH | (stat.S_IXOTH if is_dir else 0))
        if st.st_uid == uid:
            return st.st_mode & need[0] == need[0]
        if gid is not None and st.st_gid == gid:
            return st.st_mode & need[1] == need[1]
        return st.st_mode & need[2] == need[2]

    for current, _dirs, files in os.walk(folder, followlinks=True):
        if not readable(os.stat(current), True):
            return Path(current)
        for name in files:
            path = os.path.join(current, name)
            with contextlib.suppress(OSError):
                if not readable(os.stat(path), False):
                    return Path(path)
    return None


class DockerSandbox(Sandbox):
    name = "docker"

    def __init__(self, image: str | None = None, client: Any = None, user: str | None = None,
                 shm_size: str = DEFAULT_SHM, timeout_s: float | None = None, cpus: float | None = None,
                 memory_gb: float | None = None, entrypoint: list[str] | None = None,
                 network_mode: str = "none") -> None:
        #: tag or id; resolved to an id once (the id is what job hashes see).
        self.image_ref = image or DEFAULT_IMAGE
        self._client = client
        #: who the job runs as: the host user, else (harness as root) the image's unprivileged user.
        self.user = user or (f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else ROOT_HOST_JOB_USER)
        self.uid, self.gid = parse_user(self.user)
        if self.uid == 0:
            log.warning("jobs run as uid 0 inside their containers (--container-user %s), as asked.", self.user)
        self.shm_size = shm_size
        #: CLI override of the descriptor's per-stage timeouts (``container.timeout_s``).
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
        self._host_memory: int | None = None
        self._readable: set[Path] = set()

    # --- engine and image
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                from harness.sandboxes.image import docker_client

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

    @property
    def host_memory_bytes(self) -> int:
        """Memory of the machine the engine runs on (``docker info``), else of this one."""
        if self._host_memory is None:
            try:
                self._host_memory = int(self.client.info()["MemTotal"])
            except Exception:  # no engine answer (settings tests): this machine's memory
                self._host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return self._host_memory

    # --- the container's settings (pure: tests inspect them without an engine)
    def mounts(self, request: SandboxRequest) -> dict[str, dict[str, str]]:
        """The request's paths and nothing else: read-only first, a read-write one wins on a tie."""
        volumes = {str(Path(p).resolve()): {"bind": str(Path(p).resolve()), "mode": "ro"} for p in request.read_only}
        volumes.update({str(Path(p).resolve()): {"bind": str(Path(p).resolve()), "mode": "rw"}
                        for p in request.read_write})
        return volumes

    def memory_limit_mb(self, request: SandboxRequest) -> int:
        """``--memory-gb``, else the descriptor's ``resources.memory_gb``, else a fraction of the host's."""
        memory_gb = self.memory_gb if self.memory_gb is not None else request.memory_gb
        if memory_gb:
            return max(int(float(memory_gb) * 1024), 6)
        return max(int(self.host_memory_bytes * DEFAULT_MEMORY_FRACTION / 2**20), 6)

    def timeout_for(self, request: SandboxRequest) -> float | None:
        return self.timeout_s if self.timeout_s is not None else request.timeout_s

    def container_kwargs(self, request: SandboxRequest, slot: Slot) -> dict[str, Any]:
        """Keyword arguments of ``client.containers.create`` for one job on one slot."""
        from docker.types import DeviceRequest

        cpus = self.cpus if self.cpus is not None else request.cpus
        policy = request.container or ContainerPolicy()
        env = {"PYTHONUNBUFFERED": "1", "COLUMNS": "120", "HOME": "/tmp", **request.env}
        if cpus:
            env.setdefault("OMP_NUM_THREADS", str(max(int(cpus), 1)))
        limit = f"{self.memory_limit_mb(request)}m"
        kwargs: dict[str, Any] = {
            "image": self.image, "command": list(request.argv), "user": self.user, "environment": env,
            "volumes": self.mounts(request), "shm_size": self.shm_size,
            "network_mode": "bridge" if policy.network else self.network_mode,
            "cap_drop": ["ALL"], "read_only": policy.read_only_root,
            # no swap: over the limit is an OOM kill, not a crawl
            "mem_limit": limit, "memswap_limit": limit,
            "labels": {"selfunet.job": request.job_id}, "detach": True, "stdin_open": False, "tty": False,
            "name": f"selfunet-{_safe(request.job_id)}-{os.getpid()}-{int(time.time() * 1000) % 10**8}",
        }
        if policy.capabilities:
            kwargs["cap_add"] = list(policy.capabilities)
        if policy.no_new_privileges:
            kwargs["security_opt"] = ["no-new-privileges:true"]
        if policy.pids_limit is not None:
            kwargs["pids_limit"] = policy.pids_limit
        if policy.read_only_root:
            kwargs["tmpfs"] = dict(TMPFS)
        if self.entrypoint is not None:
            kwargs["entrypoint"] = list(self.entrypoint)
        if slot.gpu is not None:
            kwargs["device_requests"] = [DeviceRequest(device_ids=[str(slot.gpu)], capabilities=[["gpu"]])]
        if cpus:
            kwargs["nano_cpus"] = int(float(cpus) * 1e9)
        return kwargs

    def prepare_mounts(self, request: SandboxRequest, kwargs: dict[str, Any]) -> None:
        """Create the writable folders; when the job runs as another user than the harness (root
        harness, unprivileged job), hand them to that user and check it can read the others."""
        uid, gid = parse_user(kwargs["user"]) if kwargs.get("user") else (None, None)
        other_user = uid is not None and uid != os.getuid()
        for path, spec in kwargs["volumes"].items():
            folder = Path(path)
            if spec["mode"] == "rw":
                folder.mkdir(parents=True, exist_ok=True)  # else the engine creates it, root-owned
                if other_user and os.getuid() == 0:
                    hand_over(folder, uid, gid)
            elif not folder.exists():
                raise SelfUNetError(f"{path}: read-only folder for job {request.job_id} does not exist.")
            elif other_user and folder not in self._readable:
                blocked = unreadable_for(folder, uid, gid)
                if blocked is not None:
                    raise SelfUNetError(
                        f"job {request.job_id}: {blocked} cannot be read by the job's user {kwargs['user']} (the "
                        f"container never runs as root); make the dataset readable (`chmod -R a+rX {folder}`) or "
                        "choose the user with `harness run --container-user UID:GID`.")
                self._readable.add(folder)

    # --- running
    def run(self, request: SandboxRequest, slot: Slot) -> int:
        import docker.errors

        kwargs = self.container_kwargs(request, slot)
        self.prepare_mounts(request, kwargs)
        timeout_s = self.timeout_for(request)
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
                            "(docs/guide/containers.md)."
                            if slot.gpu is not None and "device driver" in str(exc) else "")
                    raise SelfUNetError(f"job {request.job_id}: docker could not start the container: "
                                        f"{exc.explanation or exc}.{hint}") from None
                watchdog = None
                if timeout_s:
                    def expire() -> None:
                        timed_out.set()
                        with contextlib.suppress(docker.errors.APIError):
                            container.kill()

                    watchdog = threading.Timer(timeout_s, expire)
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
                    note(f"=== TIMEOUT: the job ran past {timeout_s:g} s and was killed (exit code {code}); raise "
                         "container.timeout_s in the descriptor or --job-timeout.")
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
