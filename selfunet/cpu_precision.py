"""Whether bf16 autocast is faster than fp32 on this CPU: measured once per machine, then cached.

Why a measurement and not only the instruction set: machines differ between runs (one had AMX
bf16, another no AVX-512 at all), and even with native bf16 instructions the gain depends on
the oneDNN kernels torch picks for the network's shapes and on the thread count. Without native
bf16 instructions (``avx512_bf16``/``amx_bf16`` on x86, ``bf16`` on Arm) oneDNN emulates bf16 with
fp32 arithmetic plus conversions, which is never faster, so such CPUs are not measured at all.

The measurement is one forward and backward pass of a small 3D U-Net stage (two 3x3x3
convolutions with instance norm and leaky ReLU, the building block of every plan) in fp32 and
under bf16 autocast, interleaved and repeated, median of each. bf16 is chosen only when it is at
least :data:`REQUIRED_SPEEDUP` times faster: a tie is not worth the lower precision. It takes
under a second on a quiet 2-core machine, once, and is cached in ``$SELFUNET_CACHE_DIR``
(default ``$XDG_CACHE_HOME/selfunet`` or ``~/.cache/selfunet``) under a key of the CPU model,
its bf16 flags, the torch version and the thread count; when that folder is not writable (a
read-only container) the result lives for the process only.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfunet.artifacts import atomic_write_json

#: CPU flags (``/proc/cpuinfo``) of instructions that compute bf16 products natively.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
#: bf16 must be at least this much faster than fp32 to be chosen.
REQUIRED_SPEEDUP = 1.15
CACHE_FILE = "cpu_precision.json"


@dataclass(frozen=True)
class Bf16Decision:
    """The outcome for this machine and why (written to the training log)."""

    use_bf16: bool
    reason: str
    fp32_ms: float | None = None
    bf16_ms: float | None = None

    def describe(self) -> str:
        if self.fp32_ms is None or self.bf16_ms is None:
            return self.reason
        return f"{self.reason} (one conv stage step: fp32 {self.fp32_ms:.1f} ms, bf16 {self.bf16_ms:.1f} ms)"


def _cpuinfo(*keys: str) -> str | None:
    """The first ``/proc/cpuinfo`` value under one of ``keys`` (x86 and Arm name them differently)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere: no bf16 on such CPUs)."""
    return frozenset((_cpuinfo("flags", "Features") or "").split())


def cpu_model() -> str:
    return _cpuinfo("model name", "CPU part") or "unknown"


def cache_dir() -> Path:
    if os.environ.get("SELFUNET_CACHE_DIR"):
        return Path(os.environ["SELFUNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfunet"


def machine_key(flags: frozenset[str]) -> str:
    native = ",".join(sorted(flags & NATIVE_BF16_CPU_FLAGS))
    return f"{cpu_model()} | {native} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def measure_conv_stage(repeats: int = 3) -> tuple[float, float]:
    """Median ms of one forward+backward of a 3D conv stage in fp32 and under bf16 autocast."""
    torch.manual_seed(0)
    stage = nn.Sequential(
        nn.Conv3d(16, 32, 3, padding=1), nn.InstanceNorm3d(32, affine=True), nn.LeakyReLU(0.01),
        nn.Conv3d(32, 32, 3, padding=1), nn.InstanceNorm3d(32, affine=True), nn.LeakyReLU(0.01),
    )
    x = torch.randn(2, 16, 16, 40, 40)  # (1, 16, 16, 32, 32) hits a slow fp32 kernel: 12x, not representative

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = stage(x)
        out.float().square().mean().backward()
        stage.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) * 1000.0

    times: dict[bool, list[float]] = {False: [], True: []}
    for bf16 in (False, True):  # warm-up: oneDNN builds its kernels on first use
        step(bf16)
    for _ in range(repeats):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    return statistics.median(times[False]), statistics.median(times[True])


def read_cache(path: Path) -> dict:
    """A JSON cache file as a dict; a missing, unreadable or malformed file reads as empty."""
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_decision(path: Path, key: str, kind: type, measure: Callable[[], Any]) -> Any:
    """The decision stored under ``key`` in the JSON cache ``path`` (its reason then says where it
    was read), else ``measure()``'s, stored there. ``kind`` is the decision's dataclass (it has a
    ``reason``). Best effort and atomic: a read-only home only costs a measurement in the next process."""
    stored = read_cache(path).get(key)
    if isinstance(stored, dict):
        try:
            cached = kind(**stored)
            return replace(cached, reason=cached.reason + f"; cached in {path}")
        except TypeError:
            pass  # an older format: measure again
    decision = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**read_cache(path), key: asdict(decision)})
    except OSError:
        pass
    return decision


def decide_cpu_bf16(
    flags: frozenset[str] | None = None,
    measure: Callable[[], tuple[float, float]] = measure_conv_stage,
    cache: Path | None = None,
) -> Bf16Decision:
    """Measure (or read back) whether bf16 autocast pays on this CPU; see the module docstring."""
    flags = cpu_flags() if flags is None else flags
    if not flags & NATIVE_BF16_CPU_FLAGS:
        return Bf16Decision(False, "fp32: this CPU has no native bf16 instructions (bf16 would be emulated)")
    def measured() -> Bf16Decision:
        fp32_ms, bf16_ms = measure()
        faster = bf16_ms * REQUIRED_SPEEDUP <= fp32_ms
        reason = (
            f"bf16: measured {fp32_ms / bf16_ms:.2f}x faster than fp32 on this CPU" if faster
            else f"fp32: bf16 measured only {fp32_ms / bf16_ms:.2f}x as fast (needs {REQUIRED_SPEEDUP}x)"
        )
        return Bf16Decision(faster, reason, round(fp32_ms, 2), round(bf16_ms, 2))

    return cached_decision((cache or cache_dir()) / CACHE_FILE, machine_key(flags), Bf16Decision, measured)


@lru_cache(maxsize=1)
def cpu_bf16_decision() -> Bf16Decision:
    """This process's decision (measured at most once per process, and once per machine)."""
    return decide_cpu_bf16()
