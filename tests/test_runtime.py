"""Precision choice (``--amp auto``): native bf16 only, fp16 + gradient scaler on older GPUs.

The hardware is faked at its two seams (:func:`selfunet.runtime.cuda_capability` and
:func:`selfunet.runtime.cpu_flags`); the trainer's scaler path runs for real on the CPU in
``tests/training/test_train.py``.
"""

from __future__ import annotations

import sys

import pytest
import torch

from selfunet import runtime
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


@pytest.mark.parametrize(("flags", "expected"), [
    ({"sse4_2", "avx2", "fma"}, None),
    ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, None),  # AVX-512 but bf16 emulated
    ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, torch.bfloat16),
    (set(), None),  # flags unknown (not Linux): fp32
])
def test_auto_on_cpu_uses_bf16_only_with_native_bf16_instructions(monkeypatch, flags, expected) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    assert resolve_amp("auto", CPU) is expected


def test_explicit_modes_are_taken_as_asked(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_amp("off", CUDA) is None
    assert resolve_amp("bf16", CPU) is torch.bfloat16
    assert resolve_amp("fp16", CPU) is torch.float16
    assert resolve_amp("fp16", CUDA) is torch.float16


def test_unknown_mode_names_the_choices() -> None:
    with pytest.raises(SelfUNetError, match="auto, off, bf16, fp16"):
        resolve_amp("fp8", CPU)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_cpu_flags_are_read_from_this_machine() -> None:
    flags = runtime.cpu_flags()
    assert flags, "no CPU flags found in /proc/cpuinfo"
    assert runtime.cpu_supports_bf16() == bool(flags & runtime.NATIVE_BF16_CPU_FLAGS)
