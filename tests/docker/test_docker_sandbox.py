"""The Docker sandbox on a real engine: failures, OOM, timeout, read-only data, no network, GPU request.

Marked ``docker``: skipped (with the reason) where no engine answers; .ci/docker-tests.sh runs them.
Containers run the project image; ``entrypoint=["python", "-c"]`` runs a probe script through the
very same code path a ``selfunet`` stage takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from docker_helpers import job_containers

from harness.sandboxes.base import SandboxRequest, Slot
from harness.sandboxes.docker import EXIT_OOM, EXIT_TIMEOUT, DockerSandbox
from selfunet.errors import SelfUNetError

pytestmark = pytest.mark.docker


def probe(tmp_path: Path, job_id: str, code: str, **kwargs) -> SandboxRequest:
    (tmp_path / "work").mkdir(exist_ok=True)
    return SandboxRequest(job_id=job_id, argv=(code,), log_path=tmp_path / "work" / f"{job_id}.log",
                          read_write=(tmp_path / "work",), **kwargs)


def python_box(engine, image: str, **kwargs) -> DockerSandbox:
    return DockerSandbox(image=image, client=engine, entrypoint=["python", "-c"], **kwargs)


def test_failing_stage_returns_its_exit_code_and_logs_the_error(engine, project_image, tmp_path: Path) -> None:
    box = DockerSandbox(image=project_image, client=engine)
    req = SandboxRequest(job_id="t-fail", argv=("check", str(tmp_path / "no_such_dataset")),
                         log_path=tmp_path / "work" / "fail.log", read_write=(tmp_path / "work",))
    code = box.run(req, Slot(0))
    text = req.log_path.read_text()
    assert code == 1, text
    assert "no_such_dataset" in text and "=== exit code 1" in text
    assert job_containers(engine, "t-fail") == []


def test_memory_hog_is_reported_as_oom_kill(engine, project_image, tmp_path: Path) -> None:
    box = python_box(engine, project_image, memory_gb=0.1)
    req = probe(tmp_path, "t-oom", "import numpy as np; a = np.ones(1 << 30, np.uint8); print('survived')")
    code = box.run(req, Slot(0))
    text = req.log_path.read_text()
    assert code == EXIT_OOM, text
    assert "OUT OF MEMORY" in text and "survived" not in text.splitlines()  # the header echoes the code
    assert job_containers(engine, "t-oom") == []


def test_job_past_its_timeout_is_killed_and_reported(engine, project_image, tmp_path: Path) -> None:
    box = python_box(engine, project_image, timeout_s=3)
    req = probe(tmp_path, "t-timeout", "import time; print('started', flush=True); time.sleep(120)")
    code = box.run(req, Slot(0))
    text = req.log_path.read_text()
    assert code == EXIT_TIMEOUT, text
    assert "started" in text and "TIMEOUT" in text
    assert job_containers(engine, "t-timeout") == []


def test_dataset_mount_is_truly_read_only(engine, project_image, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    script = (f"import pathlib; p = pathlib.Path({str(data / 'dataset.json')!r}); print('read', p.read_text()); "
              "p.write_text('overwritten')")
    req = probe(tmp_path, "t-ro", script, read_only=(data,))
    code = python_box(engine, project_image).run(req, Slot(0))
    text = req.log_path.read_text()
    assert code != 0, text
    assert "read {}" in text and "Read-only file system" in text
    assert (data / "dataset.json").read_text() == "{}"


def test_no_network_inside(engine, project_image, tmp_path: Path) -> None:
    script = ("import socket, pathlib\n"
              "print('interfaces', sorted(p.name for p in pathlib.Path('/sys/class/net').iterdir()))\n"
              "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=3); print('CONNECTED')\n"
              "except OSError as exc:\n    print('blocked:', exc)\n")
    req = probe(tmp_path, "t-net", script)
    assert python_box(engine, project_image).run(req, Slot(0)) == 0
    text = req.log_path.read_text()
    assert "blocked:" in text and "CONNECTED" not in text.splitlines()
    assert "interfaces ['lo']" in text


def test_outputs_belong_to_the_job_user_not_root(engine, project_image, tmp_path: Path) -> None:
    uid, gid = (os.getuid(), os.getgid()) if os.getuid() != 0 else (4321, 4321)  # as root, act as a user
    work = tmp_path / "work"
    work.mkdir()
    os.chown(work, uid, gid)
    req = probe(tmp_path, "t-owner", f"open({str(work / 'out.txt')!r}, 'w').write('x')")
    code = python_box(engine, project_image, user=f"{uid}:{gid}").run(req, Slot(0))
    assert code == 0, req.log_path.read_text()
    st = (work / "out.txt").stat()
    assert (st.st_uid, st.st_gid) == (uid, gid) and st.st_uid != 0


def test_gpu_slot_sends_exactly_its_device_request_to_the_engine(engine, project_image, tmp_path: Path) -> None:
    """What reaches the Engine API for a job on GPU 1: one device request for device "1".

    Without the NVIDIA runtime (CI machines) the engine refuses to start such a container; the
    sandbox reports that as a broken sandbox (SelfUNetError naming the toolkit) and still
    removes the container. On a GPU host the job would see that one GPU as cuda:0.
    """
    sent: list[dict] = []
    original = engine.api.create_container

    def spy(*args, **kwargs):
        sent.append(kwargs)
        return original(*args, **kwargs)

    engine.api.create_container = spy
    try:
        box = python_box(engine, project_image)
        req = probe(tmp_path, "t-gpu", "import os; print('NVIDIA', os.environ.get('NVIDIA_VISIBLE_DEVICES'))")
        try:
            code = box.run(req, Slot(index=0, gpu=1))
        except SelfUNetError as exc:
            assert "NVIDIA Container Toolkit" in str(exc) or "gpu" in str(exc).lower()
            code = None
        assert code in (None, 0)
        cpu = probe(tmp_path, "t-cpu", "print('cpu job')")
        assert box.run(cpu, Slot(index=1, gpu=None)) == 0
    finally:
        engine.api.create_container = original
    gpu_config, cpu_config = sent[0]["host_config"], sent[1]["host_config"]
    assert gpu_config["DeviceRequests"] == [
        {"Driver": "", "Count": 0, "DeviceIDs": ["1"], "Capabilities": [["gpu"]], "Options": {}}]
    assert not cpu_config.get("DeviceRequests")
    assert "CUDA_VISIBLE_DEVICES" not in " ".join(sent[0].get("environment") or [])
    assert job_containers(engine, "t-gpu") == [] and job_containers(engine, "t-cpu") == []


def test_stop_all_stops_a_running_job_container_gracefully(engine, project_image, tmp_path: Path) -> None:
    """`harness run` got SIGTERM: the job's container gets SIGTERM (a training checkpoints), then goes."""
    import threading
    import time

    box = python_box(engine, project_image)
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(143)))\n"
            "print('started', flush=True)\ntime.sleep(300)\n")
    req = probe(tmp_path, "t-stop", code)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(code=box.run(req, Slot(0))))
    thread.start()
    deadline = time.monotonic() + 120
    while "started" not in (req.log_path.read_text() if req.log_path.is_file() else "").splitlines():
        assert time.monotonic() < deadline and thread.is_alive(), "the job container did not start"
        time.sleep(0.2)
    sent = time.monotonic()
    assert box.stop_all(grace_s=10) == ["t-stop"]
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert result["code"] == 143 and time.monotonic() - sent < 15
    assert "got SIGTERM" in req.log_path.read_text()
    assert job_containers(engine, "t-stop") == []
