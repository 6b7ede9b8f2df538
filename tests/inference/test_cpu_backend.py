"""The network's runtime on a CPU: OpenVINO where it measured faster, torch otherwise.

Real OpenVINO (a project dependency) on real U-Nets: the compiled network gives torch's logits up to
float rounding for any batch, a whole sliding-window prediction agrees with torch's, a compilation is
reused across cases and redone after the weights change, and the converted graph is cached on disk.
The per-machine decision is tested through its seams (measurement and cache folder injected).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from selfunet.errors import SelfUNetError
from selfunet.inference import cpu_backend, openvino_network
from selfunet.inference.inference_config import InferenceConfig
from selfunet.inference.sliding_window import predict_sliding_window
from selfunet.planning.plan_types import NetworkTopology
from selfunet.training.network import build_network

CPU = torch.device("cpu")


def unet(dimension: int = 3, seed: int = 0, architecture: str = "plain") -> nn.Module:
    axes = dimension
    blocks = {"blocks_per_stage_encoder": [1, 1, 1]} if architecture == "residual_encoder" else {}
    convs = [2, 2, 2]
    topology = NetworkTopology(dimension=dimension, features_per_stage=[8, 16, 32],
                               kernel_sizes=[[3] * axes] * 3, strides=[[1] * axes, [2] * axes, [2] * axes],
                               convs_per_stage_encoder=convs, convs_per_stage_decoder=[2, 2],
                               architecture=architecture, **blocks)
    torch.manual_seed(seed)
    network = build_network(topology, 2, 3, deep_supervision=False).eval()
    with torch.no_grad():  # instance-norm affine weights away from 1/0, so a wrong norm shows
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return network


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFUNET_CACHE_DIR", str(tmp_path / "cache"))
    decision = cpu_backend.auto_decision  # a test may patch it; the cached original is cleared after
    decision.cache_clear()
    yield
    decision.cache_clear()


@pytest.mark.parametrize(("dimension", "architecture", "patch"),
                         [(3, "plain", [16, 24, 32]), (3, "residual_encoder", [8, 16, 16]), (2, "plain", [32, 48])])
def test_compiled_network_gives_torchs_logits_for_any_batch(dimension, architecture, patch, tmp_path) -> None:
    network = unet(dimension, architecture=architecture)
    compiled = openvino_network.compile_network(network, patch, "f32", cache=tmp_path / "ir")
    for batch in (1, 3):
        x = torch.randn(batch, 2, *patch, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            expected = network(x)
            got = compiled(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), float((got - expected).abs().max())
    first = compiled(x)
    compiled(torch.zeros_like(x))
    assert torch.equal(first, compiled(x)), "an earlier output changed: the request's buffer was handed out"
    assert len(list((tmp_path / "ir" / openvino_network.IR_FOLDER).glob("*.xml"))) == 1


def test_cached_graph_is_read_back_and_a_damaged_one_is_converted_again(tmp_path, caplog) -> None:
    network, patch = unet(), [16, 16, 16]
    x = torch.randn(2, 2, *patch)
    with torch.inference_mode():
        expected = network(x)
    openvino_network.compile_network(network, patch, cache=tmp_path)
    (xml,) = (tmp_path / openvino_network.IR_FOLDER).glob("*.xml")
    inode = xml.stat().st_ino  # a conversion writes a new file in its place
    assert torch.allclose(openvino_network.compile_network(network, patch, cache=tmp_path)(x), expected, atol=1e-4)
    assert xml.stat().st_ino == inode, "the cached graph was converted again instead of read"
    xml.write_text("<net broken")
    with caplog.at_level(logging.WARNING):
        again = openvino_network.compile_network(network, patch, cache=tmp_path)
    assert torch.allclose(again(x), expected, atol=1e-4)
    assert "unreadable" in caplog.text
    other = unet(seed=1)  # other weights: another cache entry, never the first network's graph
    with torch.inference_mode():
        assert torch.allclose(openvino_network.compile_network(other, patch, cache=tmp_path)(x), other(x), atol=1e-4)
    assert len(list((tmp_path / openvino_network.IR_FOLDER).glob("*.xml"))) == 2


def test_sliding_window_in_openvino_agrees_with_torch() -> None:
    network = unet()
    image = torch.randn(2, 30, 41, 37, generator=torch.Generator().manual_seed(3))
    results = {}
    for backend in ("torch", "openvino"):
        config = InferenceConfig(backend=backend, mirror_axes=(0, 2))
        results[backend] = predict_sliding_window(network, image, [16, 24, 24], 3, config)
    assert torch.allclose(results["torch"], results["openvino"], atol=1e-4, rtol=1e-4)
    labels = [r.argmax(0) for r in results.values()]
    assert (labels[0] == labels[1]).float().mean() > 0.999


def test_compilation_is_reused_and_redone_after_the_weights_change() -> None:
    network = unet()
    first = cpu_backend.for_inference([network], [16, 16, 16], CPU, None, "openvino")[0]
    assert isinstance(first, openvino_network.OpenVinoNetwork)
    assert cpu_backend.for_inference([network], [16, 16, 16], CPU, None, "openvino")[0] is first
    with torch.no_grad():  # what an optimizer step does: the weights change in place
        next(network.parameters()).mul_(2.0)
    second = cpu_backend.for_inference([network], [16, 16, 16], CPU, None, "openvino")[0]
    assert second is not first
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(second(x), network(x), atol=1e-4)
    assert cpu_backend.for_inference([network], [16, 16, 32], CPU, None, "openvino")[0] is not second


def test_torch_backend_and_other_modules_stay_as_they_are(monkeypatch) -> None:
    network = unet()
    assert cpu_backend.for_inference([network], [16, 16, 16], CPU, None, "torch")[0] is network
    fake = nn.Conv3d(2, 3, 1)  # not one of our U-Nets: auto leaves it to torch without measuring
    monkeypatch.setattr(cpu_backend, "auto_decision", lambda precision: pytest.fail("measured for a foreign module"))
    assert cpu_backend.for_inference([fake], [4, 4, 4], CPU, None, "auto")[0] is fake
    # fp16 has no CPU precision in OpenVINO, and at bf16 auto keeps torch too (uses_openvino says why)
    assert cpu_backend.for_inference([network], [16, 16, 16], CPU, torch.float16, "auto")[0] is network
    assert cpu_backend.for_inference([network], [16, 16, 16], CPU, torch.bfloat16, "auto")[0] is network
    assert isinstance(cpu_backend.for_inference([network], [16, 16, 16], CPU, torch.bfloat16, "openvino")[0],
                      openvino_network.OpenVinoNetwork)


def test_auto_follows_the_decision_and_falls_back_when_conversion_fails(monkeypatch, caplog) -> None:
    network = unet()
    monkeypatch.setattr(cpu_backend, "auto_decision", lambda p: cpu_backend.BackendDecision(False, "faked slower"))
    assert cpu_backend.for_inference([network], [16, 16, 16], CPU, None, "auto")[0] is network
    monkeypatch.setattr(cpu_backend, "auto_decision", lambda p: cpu_backend.BackendDecision(True, "faked faster"))
    assert isinstance(cpu_backend.for_inference([network], [16, 16, 16], CPU, None, "auto")[0],
                      openvino_network.OpenVinoNetwork)

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(openvino_network, "compile_network", broken)
    other = unet(seed=2)
    with caplog.at_level(logging.WARNING):
        assert cpu_backend.for_inference([other], [16, 16, 16], CPU, None, "auto")[0] is other
    assert "could not convert" in caplog.text and "unsupported operation" in caplog.text
    with pytest.raises(SelfUNetError, match=r"could not be converted.*--backend torch"):
        cpu_backend.for_inference([other], [16, 16, 16], CPU, None, "openvino")


def test_openvino_that_cannot_be_met_is_a_clear_error(monkeypatch) -> None:
    network = unet()
    with pytest.raises(SelfUNetError, match="runs on the CPU; the device is cuda"):
        cpu_backend.uses_openvino("openvino", torch.device("cuda"), None, network)
    with pytest.raises(SelfUNetError, match="no CPU precision"):
        cpu_backend.uses_openvino("openvino", CPU, torch.float16, network)
    assert not cpu_backend.uses_openvino("auto", torch.device("cuda"), None, network)
    with pytest.raises(SelfUNetError, match="--backend onnx: unknown"):
        cpu_backend.uses_openvino("onnx", CPU, None, network)
    with pytest.raises(SelfUNetError, match="backend='onnx'"):
        InferenceConfig(backend="onnx")
    monkeypatch.setattr(openvino_network, "openvino_version", lambda: None)
    with pytest.raises(SelfUNetError, match="OpenVINO is not installed"):
        cpu_backend.uses_openvino("openvino", CPU, None, network)
    assert "not installed" in cpu_backend.decide("f32").reason


def test_decision_is_measured_once_per_machine_and_cached(tmp_path) -> None:
    calls = []

    def measure(precision):
        calls.append(precision)
        return (100.0, 40.0) if precision == "f32" else (100.0, 95.0)

    fast = cpu_backend.decide("f32", measure, cache=tmp_path, version="9.9")
    assert fast.use_openvino and "2.50x faster" in fast.reason
    slow = cpu_backend.decide("bf16", measure, cache=tmp_path, version="9.9")
    assert not slow.use_openvino and "needs 1.15x" in slow.reason
    again = cpu_backend.decide("f32", measure, cache=tmp_path, version="9.9")
    assert again.use_openvino and "cached in" in again.reason
    assert calls == ["f32", "bf16"]
    stored = json.loads((tmp_path / cpu_backend.CACHE_FILE).read_text())
    assert len(stored) == 2 and all("openvino 9.9" in key for key in stored)
    cpu_backend.decide("f32", measure, cache=tmp_path, version="10.0")  # another version: measured again
    assert calls == ["f32", "bf16", "f32"]


def test_a_measurement_that_fails_chooses_torch(tmp_path) -> None:
    def measure(precision):
        raise RuntimeError("no CPU plugin")

    decision = cpu_backend.decide("f32", measure, cache=tmp_path, version="9.9")
    assert not decision.use_openvino
    assert "failed its measurement" in decision.reason and "no CPU plugin" in decision.reason


def test_real_measurement_runs_both_runtimes() -> None:
    torch_ms, openvino_ms = cpu_backend.measure("f32", repeats=1)
    assert torch_ms > 0 and openvino_ms > 0


def test_graph_cache_keeps_the_most_recently_used_within_its_limit(tmp_path, monkeypatch) -> None:
    import os

    for age, name in enumerate(("newest", "middle", "oldest")):
        (tmp_path / f"{name}.xml").write_bytes(b"x" * 100)
        (tmp_path / f"{name}.bin").write_bytes(b"w" * 900)
        os.utime(tmp_path / f"{name}.xml", (1e9 - age * 100, 1e9 - age * 100))
    openvino_network.prune_cache(tmp_path, 2500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle.bin", "middle.xml", "newest.bin", "newest.xml"]
    openvino_network.prune_cache(tmp_path, 0)
    assert not list(tmp_path.iterdir())

    monkeypatch.setenv("SELFUNET_OPENVINO_CACHE_GB", "0.5")
    assert openvino_network.cache_bytes() == 2**29
    monkeypatch.setenv("SELFUNET_OPENVINO_CACHE_GB", "lots")
    with pytest.raises(SelfUNetError, match="SELFUNET_OPENVINO_CACHE_GB='lots'"):
        openvino_network.cache_bytes()
    monkeypatch.delenv("SELFUNET_OPENVINO_CACHE_GB")
    assert openvino_network.cache_bytes() == openvino_network.DEFAULT_CACHE_BYTES


def test_reading_a_cached_graph_marks_it_recently_used(tmp_path) -> None:
    import os

    network, patch = unet(), [16, 16, 16]
    openvino_network.compile_network(network, patch, cache=tmp_path)
    (xml,) = (tmp_path / openvino_network.IR_FOLDER).glob("*.xml")
    os.utime(xml, (1e9, 1e9))
    openvino_network.compile_network(network, patch, cache=tmp_path)
    assert xml.stat().st_mtime > 1e9 + 1


def test_openvino_and_loader_worker_processes_never_share_a_process(monkeypatch) -> None:
    """Once either ran, the other steps aside (auto) or says why it cannot (selfunet.runtime)."""
    from selfunet import runtime
    from selfunet.training.loader import ProcessLoader

    network = unet()
    monkeypatch.setattr(runtime, "_RAN", set())
    openvino_network.compile_network(network, [16, 16, 16])
    assert runtime.has_run("openvino")
    with pytest.raises(SelfUNetError, match=r"already ran a network in OpenVINO.*--loader-mode thread"):
        ProcessLoader(int, start_index=0)

    monkeypatch.setattr(runtime, "_RAN", {"loader-workers"})
    monkeypatch.setattr(cpu_backend, "auto_decision", lambda p: pytest.fail("measured in a process with workers"))
    assert cpu_backend.for_inference([network], [16, 16, 16], CPU, None, "auto")[0] is network
    with pytest.raises(SelfUNetError, match=r"started loader worker processes.*--backend torch"):
        cpu_backend.for_inference([network], [16, 16, 16], CPU, None, "openvino")
