"""The environment fingerprint: what it records, how it reads back, and `harness compare` warning
(not failing) when the baseline's differs in precision or GPU model, or is missing."""

from __future__ import annotations

import json
from pathlib import Path

from test_compare import write_board
from typer.testing import CliRunner

from harness.cli import app
from harness.results import environment
from harness.results.compare import compare


def _env(precision: str = "fp32", gpu: str | None = None) -> dict:
    env = environment.fingerprint(None, "process", None, "auto")
    env["precision"]["jobs"] = {f"{precision} (--amp auto: measured)": 2}
    env["gpu"] = {"model": gpu, "count": 1 if gpu else 0, "driver": "550.54" if gpu else None, "capability": "9.0"}
    return env


def test_the_fingerprint_holds_the_machine_and_the_jobs_precision(tmp_path: Path) -> None:
    summary = tmp_path / "train" / "2d" / "fold_0" / "training_summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"precision": "fp32 (--amp auto: fp32: this CPU has no native bf16 instructions)"}))
    env = environment.fingerprint(tmp_path, "docker", "sha256:" + "ab" * 32, "auto")
    for key in ("selfunet", "python", "torch", "cuda", "cudnn", "gpu", "cpu", "precision", "image", "image_digest"):
        assert key in env, key
    assert env["cpu"]["model"] and isinstance(env["cpu"]["bf16_flags"], list) and env["gpu"]["count"] >= 0
    assert environment.precisions(env) == ["fp32"] and env["precision"]["amp"] == "auto"
    line = environment.describe(env)
    assert "torch " in line and "precision fp32 (--amp auto)" in line and "image sha256:abab" in line
    from selfunet.inference.openvino_network import openvino_version

    assert env["openvino"] == openvino_version()
    assert (f"OpenVINO {env['openvino']}" in line) == bool(env["openvino"])
    (tmp_path / "run.json").write_text(json.dumps({"environment": env}))
    assert environment.read(tmp_path) == env  # from run.json when environment.json is not there
    assert environment.read(tmp_path / "nowhere") is None


def test_differences_that_change_numbers() -> None:
    assert environment.differences(_env(), _env()) == []
    assert environment.differences(_env("fp32"), _env("bf16")) == ["precision: baseline fp32, now bf16"]
    assert environment.differences(_env(gpu="NVIDIA A100"), _env(gpu="NVIDIA H100")) == [
        "GPU model: baseline NVIDIA A100, now NVIDIA H100"]
    assert environment.differences(_env(), _env(gpu="NVIDIA H100")) == ["device: baseline cpu, now cuda"]
    assert "no environment fingerprint" in environment.differences(None, _env())[0]


def test_compare_warns_on_a_different_precision_and_still_passes(tmp_path: Path) -> None:
    for root, precision in (("base", "fp32"), ("new", "bf16")):
        write_board(tmp_path / root, "demo", 0.90, 0.70)
        (tmp_path / root / "demo" / environment.FILE).write_text(json.dumps(_env(precision)))
    result = compare(tmp_path / "new", tmp_path / "base")
    assert result.ok and result.warnings == ["demo: precision: baseline fp32, now bf16"]
    shown = CliRunner().invoke(app, ["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")],
                               terminal_width=200)
    assert shown.exit_code == 0 and "warning:" in shown.output and "now bf16" in shown.output
    (tmp_path / "base" / "demo" / environment.FILE).unlink()  # a baseline from before fingerprints: a note
    old = compare(tmp_path / "new", tmp_path / "base")
    assert old.ok and "the baseline has no environment fingerprint" in old.warnings[0]
