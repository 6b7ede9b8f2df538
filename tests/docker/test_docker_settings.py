"""The container settings a job gets (no engine needed): mounts, user, limits, GPU request."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from harness.sandboxes import SANDBOXES
from harness.sandboxes.base import SandboxRequest, Slot
from harness.sandboxes.docker import ROOT_HOST_JOB_USER, DockerSandbox, hand_over, unreadable_for
from harness.sandboxes.policy import DEFAULT_MEMORY_FRACTION, DEFAULT_PIDS_LIMIT, ContainerPolicy
from selfunet.errors import SelfUNetError


def sandbox(**kwargs) -> DockerSandbox:
    box = DockerSandbox(image="selfunet:test", client=object(), **kwargs)
    box._image_id = "sha256:feed"  # what the engine would resolve the tag to
    return box


def request(tmp_path: Path, **kwargs) -> SandboxRequest:
    defaults = {"job_id": "demo-train-2d-fold0", "argv": ("train", str(tmp_path / "work"), "-c", "2d", "-f", "0"),
                "log_path": tmp_path / "work" / ".harness" / "logs" / "train.log",
                "read_only": (tmp_path / "data",), "read_write": (tmp_path / "work",)}
    return SandboxRequest(**(defaults | kwargs))


def test_docker_sandbox_is_registered_for_the_cli() -> None:
    assert SANDBOXES["docker"] is DockerSandbox


def test_dataset_read_only_and_work_read_write_at_the_same_paths(tmp_path: Path) -> None:
    kwargs = sandbox().container_kwargs(request(tmp_path), Slot(0))
    data, work = str((tmp_path / "data").resolve()), str((tmp_path / "work").resolve())
    assert kwargs["volumes"] == {data: {"bind": data, "mode": "ro"}, work: {"bind": work, "mode": "rw"}}
    assert kwargs["command"] == list(request(tmp_path).argv)  # argv unchanged: paths are valid inside


def test_a_path_a_job_wrote_never_chooses_a_mount(tmp_path: Path) -> None:
    """fingerprint.json (written by a job) names a dataset root: it is not mounted; only the request's paths are."""
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "work" / "fingerprint.json").write_text(json.dumps({"dataset": {"root": str(tmp_path / "elsewhere")}}))
    volumes = sandbox().container_kwargs(request(tmp_path, read_only=()), Slot(0))["volumes"]
    assert list(volumes) == [str((tmp_path / "work").resolve())]


def test_no_network_host_user_big_shm_and_image_id(tmp_path: Path) -> None:
    kwargs = sandbox().container_kwargs(request(tmp_path), Slot(0))
    assert kwargs["network_mode"] == "none"
    assert kwargs["user"] == (f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else ROOT_HOST_JOB_USER)
    assert kwargs["shm_size"] == "2g"
    assert kwargs["image"] == "sha256:feed"


def test_cpu_slot_requests_no_gpu_and_gpu_slot_exactly_its_device(tmp_path: Path) -> None:
    assert "device_requests" not in sandbox().container_kwargs(request(tmp_path), Slot(0))
    kwargs = sandbox().container_kwargs(request(tmp_path), Slot(index=3, gpu=1))
    (device,) = kwargs["device_requests"]
    assert device["DeviceIDs"] == ["1"] and device["Capabilities"] == [["gpu"]] and device["Count"] == 0
    assert "CUDA_VISIBLE_DEVICES" not in kwargs["environment"]  # inside, the one GPU is cuda:0


def test_limits_from_the_request_and_cli_overrides(tmp_path: Path) -> None:
    kwargs = sandbox().container_kwargs(request(tmp_path, cpus=2, memory_gb=3.5), Slot(0))
    assert kwargs["nano_cpus"] == 2_000_000_000
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == "3584m"
    assert kwargs["environment"]["OMP_NUM_THREADS"] == "2"
    kwargs = sandbox(cpus=1.5, memory_gb=1).container_kwargs(request(tmp_path, cpus=2, memory_gb=3.5), Slot(0))
    assert kwargs["nano_cpus"] == 1_500_000_000 and kwargs["mem_limit"] == "1024m"


def test_memory_limit_defaults_to_a_fraction_of_the_host(tmp_path: Path) -> None:
    box = sandbox()
    box._host_memory = 16 * 2**30
    kwargs = box.container_kwargs(request(tmp_path), Slot(0))
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == f"{int(16 * 1024 * DEFAULT_MEMORY_FRACTION)}m"


def test_hardened_by_default(tmp_path: Path) -> None:
    kwargs = sandbox().container_kwargs(request(tmp_path), Slot(0))
    assert kwargs["cap_drop"] == ["ALL"] and "cap_add" not in kwargs
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["pids_limit"] == DEFAULT_PIDS_LIMIT
    assert kwargs["read_only"] is True and kwargs["tmpfs"] == {"/tmp": "rw,exec,nosuid,nodev"}
    assert kwargs["network_mode"] == "none"
    assert not kwargs["user"].startswith("0:") and kwargs["user"] != "0"


def test_each_setting_loosens_only_when_the_descriptor_asks(tmp_path: Path) -> None:
    policy = ContainerPolicy(capabilities=["CAP_SYS_PTRACE"], no_new_privileges=False, read_only_root=False,
                             pids_limit=None, network=True, timeout_s={"train": 60, "default": 5})
    kwargs = sandbox().container_kwargs(request(tmp_path, container=policy), Slot(0))
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["cap_add"] == ["SYS_PTRACE"]
    assert "security_opt" not in kwargs and "pids_limit" not in kwargs and "tmpfs" not in kwargs
    assert kwargs["read_only"] is False and kwargs["network_mode"] == "bridge"
    assert policy.timeout_for("train") == 60 and policy.timeout_for("preprocess") == 5
    assert sandbox().timeout_for(request(tmp_path, timeout_s=60)) == 60
    assert sandbox(timeout_s=7).timeout_for(request(tmp_path, timeout_s=60)) == 7  # --job-timeout wins


def test_root_harness_runs_jobs_as_the_image_user_and_only_on_purpose_as_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(os, "getgid", lambda: 0)
    assert sandbox().user == ROOT_HOST_JOB_USER == "1000:1000"
    assert sandbox(user="0:0").container_kwargs(request(tmp_path), Slot(0))["user"] == "0:0"
    with pytest.raises(SelfUNetError, match="expected numbers"):
        sandbox(user="selfunet")


def test_descriptor_container_section_is_validated(tmp_path: Path) -> None:
    from harness.tasks.descriptor import TaskDescriptor

    task = TaskDescriptor(name="t", dataset=tmp_path, container={"timeout_s": {"train": 3600}, "network": True})
    assert task.container.timeout_for("train") == 3600 and task.container.network
    assert TaskDescriptor(name="t", dataset=tmp_path).container == ContainerPolicy()
    for bad in ({"timeout_s": {"trian": 1}}, {"capabilities": ["sys_admin; rm"]}, {"pids_limit": 3}, {"netwrk": True}):
        with pytest.raises(ValidationError):
            TaskDescriptor(name="t", dataset=tmp_path, container=bad)


@pytest.mark.skipif(os.getuid() != 0, reason="handing a folder to another user needs root")
def test_work_directory_is_handed_to_the_job_user(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "train" / "fold_0").mkdir(parents=True)
    (work / "plan.json").write_text("{}")
    (work / "link").symlink_to("/etc/passwd")
    assert hand_over(work, 1000, 1000) == 5
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [work, *work.rglob("*")]}
    assert owners == {(1000, 1000)} and Path("/etc/passwd").stat().st_uid == 0  # the link, not its target
    assert hand_over(work, 1000, 1000) == 0


def test_unreadable_dataset_file_is_found(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "imagesTr" / "a.nii.gz").write_bytes(b"x")
    (data / "dataset.json").write_text("{}")
    for p in [data, *data.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    assert unreadable_for(data, 4321, 4321) is None
    (data / "dataset.json").chmod(0o600)
    assert unreadable_for(data, 4321, 4321) == data / "dataset.json"
    assert unreadable_for(data, os.stat(data / "dataset.json").st_uid, None) is None


def test_runner_mounts_the_descriptor_dataset_and_passes_the_policy(tmp_path: Path) -> None:
    """Every job's request carries the descriptor's dataset (read-only), its container policy and stage timeout."""
    from harness.executors.base import Executor
    from harness.run.jobs import TaskGraph
    from harness.run.runner import Runner
    from harness.tasks.descriptor import TaskDescriptor

    class Recorder(Executor):
        """An executor that only records what it was asked to run (the seam under test)."""

        def __init__(self) -> None:
            super().__init__(type("S", (), {"image": None})())  # type: ignore[arg-type]
            self.requests = []

        @property
        def capacity(self) -> int:
            return 1

        def submit(self, key, req, uses_gpu=False) -> None:
            self.requests.append(req)

        def wait(self):
            return []

    data = tmp_path / "data"
    data.mkdir()
    task = TaskDescriptor(name="t", dataset=data, container={"timeout_s": {"plan": 30}})
    graph = TaskGraph(task, tmp_path / "work", tmp_path / "results")
    recorder = Recorder()
    runner = Runner([graph], recorder, console=None, version="test")  # type: ignore[arg-type]
    runner._add("t", graph.initial_jobs())
    for key in ("t/check", "t/plan"):
        runner._start(key, may_submit=True)
    check, plan = recorder.requests
    assert check.read_only == plan.read_only == (data,)
    assert plan.container == task.container and plan.timeout_s == 30 and check.timeout_s is None

