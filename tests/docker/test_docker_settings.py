"""The container settings a job gets (no engine needed): mounts, user, limits, GPU request."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.sandboxes import SANDBOXES
from harness.sandboxes.base import SandboxRequest, Slot
from harness.sandboxes.docker import DockerSandbox


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


def test_dataset_named_by_the_work_directory_is_mounted_read_only(tmp_path: Path) -> None:
    """preprocess/crossval read the raw data through fingerprint.json, not through their argv."""
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "work" / "fingerprint.json").write_text(json.dumps({"dataset": {"root": str(tmp_path / "elsewhere")}}))
    volumes = sandbox().container_kwargs(request(tmp_path, read_only=()), Slot(0))["volumes"]
    assert volumes[str((tmp_path / "elsewhere").resolve())]["mode"] == "ro"


def test_no_network_host_user_big_shm_and_image_id(tmp_path: Path) -> None:
    kwargs = sandbox().container_kwargs(request(tmp_path), Slot(0))
    assert kwargs["network_mode"] == "none"
    assert kwargs["user"] == f"{os.getuid()}:{os.getgid()}"
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
    assert "mem_limit" not in sandbox().container_kwargs(request(tmp_path), Slot(0))
