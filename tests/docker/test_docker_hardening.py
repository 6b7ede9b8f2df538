"""A real job container, inspected while it runs: every hardening setting, from the engine's own view.

The probe runs through the sandbox's real code path (``DockerSandbox.run``, the project image,
``python -c`` as entry point) and waits inside the container until the test has read
``docker inspect``; it also reports what the job sees from inside (its uid, its capabilities,
whether the root filesystem, the dataset and the work directory are writable, the network).
``pytest -s`` prints the inspected table (docs/guide/containers.md shows it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from docker_helpers import job_containers

from harness.sandboxes.base import SandboxRequest, Slot
from harness.sandboxes.docker import EXIT_TIMEOUT, ROOT_HOST_JOB_USER, DockerSandbox
from harness.sandboxes.policy import DEFAULT_MEMORY_FRACTION, DEFAULT_PIDS_LIMIT, ContainerPolicy

pytestmark = pytest.mark.docker

PROBE = r'''
import json, os, pathlib, socket, sys, time
work, data = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def writable(path):
    try:
        (pathlib.Path(path) / ".probe").write_text("x"); (pathlib.Path(path) / ".probe").unlink(); return True
    except OSError as exc:
        return exc.strerror
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); network = "CONNECTED"
except OSError as exc:
    network = str(exc)
seen = {"uid": os.getuid(), "gid": os.getgid(), "cap_eff": status["CapEff"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(), "root_fs": writable("/var/tmp"), "tmp": writable("/tmp"),
        "work": writable(work), "dataset": writable(data), "secret_visible": pathlib.Path(sys.argv[3]).exists(),
        "interfaces": sorted(p.name for p in pathlib.Path("/sys/class/net").iterdir()), "network": network}
(work / "seen.json").write_text(json.dumps(seen))
print("ready", flush=True)
for _ in range(600):
    if (work / "inspected").exists():
        break
    time.sleep(0.1)
'''


def start(box: DockerSandbox, request: SandboxRequest) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        result["code"] = box.run(request, Slot(0))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def inspect_running(engine, job_id: str, ready: Path, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        running = [c for c in job_containers(engine, job_id) if c.status == "running"]
        if running and ready.exists():
            return engine.api.inspect_container(running[0].id)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not start within {timeout} s")


def job_setup(tmp_path: Path, job_id: str, **request_kwargs) -> tuple[SandboxRequest, Path, Path, Path]:
    data, work, secret = tmp_path / "data", tmp_path / "work", tmp_path / "secret"
    for folder in (data, work, secret):
        folder.mkdir()
    (data / "dataset.json").write_text("{}")
    # a job-written file naming another host folder: it must not be mounted
    (work / "fingerprint.json").write_text(json.dumps({"dataset": {"root": str(secret)}}))
    request = SandboxRequest(job_id=job_id, argv=(PROBE, str(work), str(data), str(secret)),
                             log_path=work / ".harness" / "logs" / f"{job_id}.log", read_only=(data,),
                             read_write=(work,), cpus=1, **request_kwargs)
    return request, data, work, secret


def table(info: dict) -> list[tuple[str, str]]:
    host, config = info["HostConfig"], info["Config"]
    mounts = ", ".join(f"{m['Destination']} ({'rw' if m['RW'] else 'ro'})" for m in info["Mounts"])
    return [("Config.User", config["User"]), ("HostConfig.CapDrop", str(host["CapDrop"])),
            ("HostConfig.CapAdd", str(host["CapAdd"])), ("HostConfig.SecurityOpt", str(host["SecurityOpt"])),
            ("HostConfig.PidsLimit", str(host["PidsLimit"])),
            ("HostConfig.ReadonlyRootfs", str(host["ReadonlyRootfs"])),
            ("HostConfig.Tmpfs", str(host.get("Tmpfs"))), ("HostConfig.NetworkMode", host["NetworkMode"]),
            ("HostConfig.Memory", str(host["Memory"])), ("HostConfig.MemorySwap", str(host["MemorySwap"])),
            ("HostConfig.NanoCpus", str(host["NanoCpus"])), ("HostConfig.ShmSize", str(host["ShmSize"])),
            ("Mounts", mounts)]


def test_running_job_container_is_hardened(engine, project_image, tmp_path: Path) -> None:
    request, data, work, _ = job_setup(tmp_path, "t-hardened")
    box = DockerSandbox(image=project_image, client=engine, entrypoint=["python", "-c"])
    thread, result = start(box, request)
    try:
        info = inspect_running(engine, "t-hardened", work / "seen.json")
    finally:
        (work / "inspected").touch()
        thread.join(120)
    print("\n| docker inspect field | value |\n|---|---|")
    for field, value in table(info):
        print(f"| {field} | `{value}` |")
    assert result.get("code") == 0, request.log_path.read_text()
    host = info["HostConfig"]
    expected_user = ROOT_HOST_JOB_USER if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    assert info["Config"]["User"] == expected_user and not expected_user.startswith("0")
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PidsLimit"] == DEFAULT_PIDS_LIMIT
    assert host["ReadonlyRootfs"] is True and host["Tmpfs"] == {"/tmp": "rw,exec,nosuid,nodev"}
    assert host["NetworkMode"] == "none"
    memory_total = engine.info()["MemTotal"]
    assert host["Memory"] == int(memory_total * DEFAULT_MEMORY_FRACTION / 2**20) * 2**20 == host["MemorySwap"]
    assert host["NanoCpus"] == 1_000_000_000
    mounts = {m["Source"]: m["RW"] for m in info["Mounts"]}
    assert mounts == {str(data.resolve()): False, str(work.resolve()): True}  # not the fingerprint's "secret"
    # what the job saw from inside
    seen = json.loads((work / "seen.json").read_text())
    assert seen["uid"] != 0 and f"{seen['uid']}:{seen['gid']}" == expected_user
    assert int(seen["cap_eff"], 16) == 0 and seen["no_new_privs"] == "1"
    assert seen["root_fs"] == "Read-only file system" and seen["dataset"] == "Read-only file system"
    assert seen["tmp"] is True and seen["work"] is True
    assert seen["secret_visible"] is False
    assert seen["interfaces"] == ["lo"] and "CONNECTED" not in seen["network"]
    if os.getuid() == 0:  # the work directory was handed to the job's user
        assert (work / "seen.json").stat().st_uid == int(expected_user.split(":")[0])
    assert job_containers(engine, "t-hardened") == []


def test_descriptor_loosens_settings_on_purpose(engine, project_image, tmp_path: Path) -> None:
    policy = ContainerPolicy(capabilities=["SYS_PTRACE"], no_new_privileges=False, read_only_root=False,
                             pids_limit=None, network=True)
    request, _, work, _ = job_setup(tmp_path, "t-loose", container=policy, memory_gb=1.5)
    box = DockerSandbox(image=project_image, client=engine, entrypoint=["python", "-c"])
    thread, result = start(box, request)
    try:
        info = inspect_running(engine, "t-loose", work / "seen.json")
    finally:
        (work / "inspected").touch()
        thread.join(120)
    assert result.get("code") == 0, request.log_path.read_text()
    host = info["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["SYS_PTRACE"]
    assert not host["SecurityOpt"] and host["ReadonlyRootfs"] is False and not host.get("Tmpfs")
    assert host["PidsLimit"] in (None, 0, -1) and host["NetworkMode"] == "bridge"
    assert host["Memory"] == 1536 * 2**20
    seen = json.loads((work / "seen.json").read_text())
    # (interfaces are not checked: CI's private engine runs with --bridge=none, so "bridge" has only lo)
    assert seen["root_fs"] is True and seen["no_new_privs"] == "0"
    assert seen["uid"] != 0  # the user is not a descriptor setting: --container-user only


def test_stage_timeout_from_the_descriptor_kills_the_job(engine, project_image, tmp_path: Path) -> None:
    policy = ContainerPolicy(timeout_s={"train": 3})
    work = tmp_path / "work"
    work.mkdir()
    request = SandboxRequest(job_id="t-stage-timeout", argv=("import time; print('started', flush=True); "
                                                             "time.sleep(120)",),
                             log_path=work / "job.log", read_write=(work,), container=policy,
                             timeout_s=policy.timeout_for("train"))
    box = DockerSandbox(image=project_image, client=engine, entrypoint=["python", "-c"])
    started = time.time()
    assert box.run(request, Slot(0)) == EXIT_TIMEOUT
    assert time.time() - started < 60
    text = request.log_path.read_text()
    assert "TIMEOUT" in text and "container.timeout_s" in text
    assert job_containers(engine, "t-stage-timeout") == []
