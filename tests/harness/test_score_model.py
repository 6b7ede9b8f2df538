"""`harness score --model NAME=model.tar.gz`: the separate model tarball of an algorithm, extracted and
mounted read-only at /opt/ml/model as grand-challenge mounts it (the real containers run it in
tests/docker/test_score_containers.py)."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from harness.challenge.model_tarball import extract_model, with_models
from harness.challenge.score import parse_submission
from harness.sandboxes.algorithm import MODEL_MOUNT, AlgorithmSandbox
from harness.sandboxes.base import SandboxRequest
from selfunet.errors import SelfUNetError


def _tarball(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("evil")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    return path


def test_model_is_attached_to_its_container_submission(tmp_path: Path) -> None:
    model = _tarball(tmp_path / "model.tar.gz", {"selection.json": b"{}"})
    subs = with_models([parse_submission("ours=ours:latest"), parse_submission(f"folder={tmp_path}")],
                       [f"ours={model}"])
    assert subs[0].model == model and subs[1].model is None
    with pytest.raises(SelfUNetError, match="no container submission named 'folder'"):
        with_models(subs, [f"folder={model}"])
    with pytest.raises(SelfUNetError, match="neither a file nor a folder"):
        with_models(subs, [f"ours={tmp_path / 'missing.tar.gz'}"])
    with pytest.raises(SelfUNetError, match="expected NAME=MODEL"):
        with_models(subs, [str(model)])


def test_the_tarball_is_extracted_readable_and_a_link_is_refused(tmp_path: Path) -> None:
    model = _tarball(tmp_path / "model.tar.gz", {"selection.json": b"{}", "train/2d/fold_0/checkpoint_final.pt": b"x"})
    out = extract_model(model, tmp_path / "x")
    checkpoint = out / "train" / "2d" / "fold_0" / "checkpoint_final.pt"
    assert checkpoint.read_bytes() == b"x" and stat.S_IMODE(checkpoint.stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "train").stat().st_mode) == 0o755  # any container user reads it
    assert extract_model(tmp_path / "x", tmp_path / "unused") == tmp_path / "x"  # a folder is mounted as it is
    with pytest.raises(SelfUNetError, match="not a plain file"):
        extract_model(_tarball(tmp_path / "bad.tar.gz", {"a": b""}, link="/etc/passwd"), tmp_path / "y")
    with pytest.raises(SelfUNetError, match="not a plain file"):
        extract_model(_tarball(tmp_path / "up.tar.gz", {"../outside": b""}), tmp_path / "z")
    assert not (tmp_path / "outside").exists()


def test_the_model_is_mounted_read_only_where_the_platform_mounts_it(tmp_path: Path) -> None:
    request = SandboxRequest("score-x", (), tmp_path / "log", read_only=(tmp_path / "in",),
                             read_write=(tmp_path / "out",))
    plain = AlgorithmSandbox(image="x", client=object())
    assert MODEL_MOUNT not in {v["bind"] for v in plain.mounts(request).values()}
    mounted = AlgorithmSandbox(image="x", client=object(), model_dir=tmp_path / "model").mounts(request)
    assert mounted[str((tmp_path / "model").resolve())] == {"bind": "/opt/ml/model", "mode": "ro"}
