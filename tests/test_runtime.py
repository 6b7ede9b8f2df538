"""Precision choice (``--amp auto``): native bf16 only, fp16 + gradient scaler on older GPUs.

The hardware is faked at its two seams (:func:`selfunet.runtime.cuda_capability` and
:func:`selfunet.cpu_precision.decide_cpu_bf16` takes the flags, the measurement and the cache
folder as arguments); the trainer's scaler path runs for real on the CPU in
``tests/training/test_train.py``.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from selfunet import cpu_precision, runtime
from selfunet.errors import SelfUNetError
from selfunet.runtime import resolve_amp

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.mark.parametrize(("capability", "expected"), [
    ((7, 0), torch.float16),   # V100: bf16 only emulated
    ((7, 5), torch.float16),   # T4, the grand-challenge default GPU
    ((8, 0), torch.bfloat16),  # A100
    ((8, 6), torch.bfloat16),
    ((9, 0), torch.bfloat16),  # H100
])
def test_auto_on_cuda_uses_bf16_only_from_compute_capability_8(monkeypatch, capability, expected) -> None:
    monkeypatch.setattr(runtime, "cuda_capability", lambda device: capability)
    assert resolve_amp("auto", CUDA) is expected


@pytest.mark.parametrize(("use_bf16", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_on_cpu_follows_the_measured_decision(monkeypatch, use_bf16, expected) -> None:
    decision = cpu_precision.Bf16Decision(use_bf16, "faked")
    monkeypatch.setattr(cpu_precision, "cpu_bf16_decision", lambda: decision)
    assert resolve_amp("auto", CPU) is expected
    assert runtime.precision_reason(expected, "auto", CPU).endswith("(--amp auto: faked)")


def _never_measure() -> tuple[float, float]:
    raise AssertionError("a CPU without native bf16 must not be measured")


@pytest.mark.parametrize("flags", [
    {"sse4_2", "avx2", "fma"},
    {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"},  # AVX-512 but bf16 emulated
    set(),  # flags unknown (not Linux)
])
def test_cpus_without_native_bf16_stay_fp32_unmeasured(tmp_path, flags) -> None:
    decision = cpu_precision.decide_cpu_bf16(frozenset(flags), _never_measure, tmp_path)
    assert decision.use_bf16 is False and "no native bf16" in decision.reason
    assert not (tmp_path / cpu_precision.CACHE_FILE).exists()


@pytest.mark.parametrize(("flags", "timings", "expected"), [
    ({"avx512_bf16"}, (100.0, 40.0), True),      # 2.5x faster: bf16
    ({"amx_tile", "amx_bf16"}, (100.0, 95.0), False),  # native but hardly faster: fp32
    ({"avx512_bf16"}, (100.0, 130.0), False),     # native and slower (small shapes, few threads)
    ({"bf16", "asimd"}, (50.0, 20.0), True),      # Arm's bf16 feature flag
])
def test_native_bf16_is_chosen_only_when_measured_faster(tmp_path, flags, timings, expected) -> None:
    calls = []

    def measure() -> tuple[float, float]:
        calls.append(1)
        return timings

    first = cpu_precision.decide_cpu_bf16(frozenset(flags), measure, tmp_path)
    assert first.use_bf16 is expected and (first.fp32_ms, first.bf16_ms) == timings
    # cached per machine: the second process reads the result instead of measuring again
    again = cpu_precision.decide_cpu_bf16(frozenset(flags), measure, tmp_path)
    assert again.use_bf16 is expected and len(calls) == 1 and "cached in" in again.reason
    stored = json.loads((tmp_path / cpu_precision.CACHE_FILE).read_text())
    assert list(stored) == [cpu_precision.machine_key(frozenset(flags))]


def test_an_unwritable_or_corrupt_cache_only_costs_a_measurement(tmp_path) -> None:
    (tmp_path / cpu_precision.CACHE_FILE).write_text("{not json")
    decision = cpu_precision.decide_cpu_bf16(frozenset({"amx_bf16"}), lambda: (10.0, 5.0), tmp_path)
    assert decision.use_bf16 is True
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    decision = cpu_precision.decide_cpu_bf16(frozenset({"amx_bf16"}), lambda: (10.0, 50.0), blocked)
    assert decision.use_bf16 is False  # measured; the cache could not be written, no error


def test_the_measurement_runs_for_real() -> None:
    fp32_ms, bf16_ms = cpu_precision.measure_conv_stage(repeats=1)
    assert fp32_ms > 0 and bf16_ms > 0


def test_explicit_modes_are_taken_as_asked(monkeypatch) -> None:
    monkeypatch.setattr(cpu_precision, "cpu_bf16_decision", lambda: cpu_precision.Bf16Decision(False, "faked"))
    assert resolve_amp("off", CUDA) is None
    assert resolve_amp("bf16", CPU) is torch.bfloat16
    assert resolve_amp("fp16", CPU) is torch.float16
    assert resolve_amp("fp16", CUDA) is torch.float16


def test_unknown_mode_names_the_choices() -> None:
    with pytest.raises(SelfUNetError, match="auto, off, bf16, fp16"):
        resolve_amp("fp8", CPU)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_cpu_flags_are_read_from_this_machine() -> None:
    flags = cpu_precision.cpu_flags()
    assert flags, "no CPU flags found in /proc/cpuinfo"
    if not flags & cpu_precision.NATIVE_BF16_CPU_FLAGS:
        assert runtime.cpu_supports_bf16() is False
