"""Which runtime runs the network's forward passes on a CPU: torch or OpenVINO, measured per machine.

``InferenceConfig.backend`` (``--backend``) says:

* ``torch``: the network as it is (the only choice on a GPU);
* ``openvino``: compiled by OpenVINO (:mod:`selfunet.inference.openvino_network`); an error where
  it is not installed or the device is not a CPU;
* ``auto`` (default): OpenVINO on a CPU at fp32 where it is installed, the network is one of ours,
  and it measured at least :data:`REQUIRED_SPEEDUP` times faster than torch on this machine; torch
  otherwise (bf16 included: see :func:`uses_openvino`).

Why a measurement and not a rule: the gain depends on the CPU's instruction set, the thread count,
and the precision (fp32, or bf16 where ``--amp auto`` picked it), as with the CPU precision choice
(:mod:`selfunet.cpu_precision`). The measurement runs a small 3D U-Net both ways, interleaved,
fastest of each, once per machine, and is cached beside that choice under the CPU model, its bf16
flags, torch's and OpenVINO's versions, the thread count and the precision. Where conversion fails
under ``auto`` (an unusual network), the network runs in torch and the log says why.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from selfunet import cpu_precision, runtime
from selfunet.errors import SelfUNetError
from selfunet.inference import openvino_network

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
#: OpenVINO must be at least this much faster than torch to be chosen by ``auto``.
REQUIRED_SPEEDUP = 1.15
CACHE_FILE = "cpu_backend.json"


@dataclass(frozen=True)
class BackendDecision:
    """What ``auto`` runs on this machine at one precision, and why (written to the log)."""

    use_openvino: bool
    reason: str
    torch_ms: float | None = None
    openvino_ms: float | None = None


def _probe_network() -> nn.Module:
    """A small 3D U-Net of the kind every plan builds (3 stages, instance norm, leaky ReLU)."""
    from selfunet.planning.plan_types import NetworkTopology
    from selfunet.training.network import build_network

    topology = NetworkTopology(dimension=3, features_per_stage=[16, 32, 64],
                               kernel_sizes=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                               convs_per_stage_encoder=[2, 2, 2], convs_per_stage_decoder=[2, 2])
    torch.manual_seed(0)
    return build_network(topology, 2, 3, deep_supervision=False).eval()


def measure(precision: str, repeats: int = 7) -> tuple[float, float]:
    """The fastest of ``repeats`` forward passes (ms) of :func:`_probe_network` on two 48^3 windows:
    torch, OpenVINO. The fastest, not the median: other work on the machine only ever adds time,
    so the minimum is what each runtime can do here, and the choice does not follow the load of the
    moment (a process and a container on one machine then choose alike)."""
    network = _probe_network()
    patch = [48, 48, 48]
    compiled = openvino_network.compile_network(network, patch, precision, cache=None)
    x = torch.randn(2, 2, *patch, generator=torch.Generator().manual_seed(0))
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None

    def run(forward: Callable[[torch.Tensor], torch.Tensor], autocast: bool) -> float:
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                                                    enabled=autocast and autocast_dtype is not None):
            forward(x)
        return (time.perf_counter() - start) * 1000.0

    times: dict[str, list[float]] = {"torch": [], "openvino": []}
    run(network, True)  # warm-up: kernels are built on first use
    run(compiled, False)
    for _ in range(repeats):
        times["torch"].append(run(network, True))
        times["openvino"].append(run(compiled, False))
    return min(times["torch"]), min(times["openvino"])


#: names the measurement in the cache key: a changed probe is measured again, not read back
PROBE = "3-stage U-Net, 2 x 48^3, fastest of 7"


def machine_key(precision: str, version: str) -> str:
    return f"{cpu_precision.machine_key(cpu_precision.cpu_flags())} | openvino {version} | {precision} | {PROBE}"


def decide(precision: str, measure_fn: Callable[[str], tuple[float, float]] = measure,
           cache: Path | None = None, version: str | None = None) -> BackendDecision:
    """Measure (or read back) whether OpenVINO pays on this CPU at ``precision`` ("f32"/"bf16")."""
    version = version or openvino_network.openvino_version()
    if version is None:
        return BackendDecision(False, "torch: OpenVINO is not installed (pip install openvino)")

    def measured() -> BackendDecision:
        try:
            torch_ms, openvino_ms = measure_fn(precision)
        except Exception as exc:  # a runtime that cannot run here is a result, not a crash
            return BackendDecision(False, f"torch: OpenVINO {version} failed its measurement "
                                          f"({type(exc).__name__}: {str(exc)[:200]})")
        faster = openvino_ms * REQUIRED_SPEEDUP <= torch_ms
        speedup = torch_ms / openvino_ms
        reason = (f"openvino: measured {speedup:.2f}x faster than torch on this CPU ({precision})" if faster
                  else f"torch: OpenVINO measured only {speedup:.2f}x as fast ({precision}; needs {REQUIRED_SPEEDUP}x)")
        return BackendDecision(faster, reason, round(torch_ms, 2), round(openvino_ms, 2))

    path = (cache or cpu_precision.cache_dir()) / CACHE_FILE
    return cpu_precision.cached_decision(path, machine_key(precision, version), BackendDecision, measured)


@lru_cache(maxsize=4)
def auto_decision(precision: str) -> BackendDecision:
    """This process's decision per precision (measured at most once per process, and once per
    machine), logged once."""
    decision = decide(precision)
    log.info("network runtime (--backend auto, %s): %s", precision, decision.reason)
    return decision


def precision_of(amp_dtype: torch.dtype | None) -> str | None:
    """OpenVINO's name for the precision, or None where it has no CPU equivalent (fp16)."""
    return openvino_network.PRECISION_HINTS.get(amp_dtype)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise SelfUNetError(f"--backend {backend}: unknown; choose one of {', '.join(BACKENDS)}.")
    return backend


def uses_openvino(backend: str, device: torch.device, amp_dtype: torch.dtype | None, network: nn.Module) -> bool:
    """Whether ``network`` should run in OpenVINO (errors for an ``openvino`` that cannot be met)."""
    check_backend(backend)
    if backend == "torch":
        return False
    precision = precision_of(amp_dtype)
    workers = runtime.has_run("loader-workers")  # see selfunet.runtime: the two corrupt one process
    if backend == "openvino":
        if workers:
            raise SelfUNetError("--backend openvino: this process started loader worker processes, and OpenVINO "
                                "after them crashes it; use --backend torch here (or the thread loader).")
        if device.type != "cpu":
            raise SelfUNetError(f"--backend openvino runs on the CPU; the device is {device}. Use --backend torch "
                                "(or auto) on a GPU.")
        if openvino_network.openvino_version() is None:
            raise SelfUNetError("--backend openvino: OpenVINO is not installed; pip install openvino, or use "
                                "--backend torch.")
        if precision is None:
            raise SelfUNetError(f"--backend openvino: no CPU precision for {amp_dtype}; use --amp off or bf16.")
        return True
    from selfunet.training.network import UNet

    # auto runs OpenVINO at fp32 only: at bf16 its gain over torch's autocast measured thin (1.3-1.8x)
    # and its labels differ from torch's on a few voxels, so two processes on one machine (a job on
    # the host, one in a container) that measured either side of the threshold disagreed
    if device.type != "cpu" or precision != "f32" or not isinstance(network, UNet) or workers:
        return False
    return auto_decision(precision).use_openvino


#: compiled networks per source network, keyed by what they were compiled for (patch, precision,
#: threads, the weights' in-place version counters): a network predicting many cases is compiled once
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def _weights_version(network: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in network.state_dict().values())


def for_inference(networks: Sequence[nn.Module], patch: Sequence[int], device: torch.device,
                  amp_dtype: torch.dtype | None, backend: str) -> list[nn.Module]:
    """The modules that run the forward passes: each network itself, or its OpenVINO compilation.

    Call with the networks in eval mode, deep supervision off (what the sliding window sets).
    """
    chosen: list[nn.Module] = []
    for network in networks:
        if not uses_openvino(backend, device, amp_dtype, network):
            chosen.append(network)
            continue
        precision = precision_of(amp_dtype)
        key = (tuple(int(p) for p in patch), precision, torch.get_num_threads(), _weights_version(network))
        compiled = _COMPILED.setdefault(network, {}).get(key)
        if compiled is None:
            try:
                compiled = openvino_network.compile_network(network, patch, precision, cache=cpu_precision.cache_dir())
            except Exception as exc:  # under auto, torch is always there to fall back on
                if backend == "openvino":
                    raise SelfUNetError(f"--backend openvino: the network could not be converted ({type(exc).__name__}:"
                                        f" {str(exc)[:300]}); use --backend torch.") from exc
                log.warning("OpenVINO could not convert the network (%s: %s); it runs in torch", type(exc).__name__,
                            str(exc)[:300])
                chosen.append(network)
                continue
            _COMPILED[network] = {key: compiled}  # older compilations of this network are no longer needed
            log.info("network runtime: %s", compiled.source)
        chosen.append(compiled)
    return chosen
