"""A trained network run by OpenVINO's CPU runtime instead of torch, for prediction on CPUs.

Why: on a CPU, the sliding window's time is almost all the network's forward pass. OpenVINO
compiles the whole graph for the CPU at hand (fused convolution, instance norm and leaky ReLU,
its own blocked memory layouts, no per-operator dispatch). On a quiet 2-core AMD EPYC its fp32
forward passes took about 0.6x torch's eager ones in a whole prediction (17.2 s against about
27 s; 0.73x for a single window, 8 mirrored passes), and the whole command took 0.52x the
reference's wall time (docs/benchmarks/prediction-cpu-side-by-side.md). The numbers are the same up to float rounding
(max abs logit difference about 1e-5 to 1e-4), so labels differ only on exact near-ties.

What it costs: converting a network traces it once (0.4-2 s); the converted graph (OpenVINO IR) is
cached on disk under the weights' digest, so the next process reads it in milliseconds. The
conversion traces a tiny input (the network's total stride per axis), not the patch, and the
compiled model then takes the patch with any batch size.

The wrapper is an ``nn.Module`` that takes and returns torch tensors, so the sliding window calls
it like the network it replaces. Which networks run here is decided in
:mod:`selfunet.inference.cpu_backend`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfunet import runtime
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

#: the precisions OpenVINO's CPU plugin is asked for, by the autocast dtype they stand in for
PRECISION_HINTS = {None: "f32", torch.bfloat16: "bf16"}
#: converted graphs (IR) live in this folder of the cache (selfunet.cpu_precision.cache_dir())
IR_FOLDER = "openvino-ir"
#: the graphs kept there at most, in bytes (each about the size of its weights, 10-500 MB): the
#: least recently used go first. ``SELFUNET_OPENVINO_CACHE_GB`` changes it; 0 keeps none.
DEFAULT_CACHE_BYTES = 4 * 2**30


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None where it is not installed (it is optional)."""
    if importlib.util.find_spec("openvino") is None:
        return None
    try:
        import openvino
    except ImportError:  # a broken install counts as none
        return None
    return str(openvino.__version__)


class OpenVinoNetwork(nn.Module):
    """A compiled OpenVINO model behind the interface of the torch network it was made from."""

    def __init__(self, compiled, source: str) -> None:
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.output = compiled.output(0)
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise SelfUNetError(f"OpenVINO runs on the CPU; the input is on {x.device} (use --backend torch there).")
        data = np.ascontiguousarray(x.detach().to(torch.float32).numpy())
        result = self.request.infer({0: data})[self.output]
        # a copy: the request reuses its output buffer for the next call
        return torch.from_numpy(np.array(result, dtype=np.float32, copy=True))


def weights_digest(network: nn.Module) -> str:
    """A digest of the architecture and every parameter and buffer: the converted graph's cache key."""
    digest = hashlib.sha256(type(network).__qualname__.encode())
    digest.update(repr(getattr(network, "topology", "")).encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tracing_shape(network: nn.Module, patch: Sequence[int]) -> list[int]:
    """Spatial size of the input traced for the conversion: twice the network's total stride per
    axis where the network says its strides (our U-Nets), else the patch itself."""
    topology = getattr(network, "topology", None)
    strides = getattr(topology, "strides", None)
    if strides:
        total = [math.prod(int(s[axis]) for s in strides) for axis in range(len(patch))]
        return [min(2 * t, int(p)) if int(p) % t == 0 else int(p) for t, p in zip(total, patch)]
    return [int(p) for p in patch]


def _input_channels(network: nn.Module) -> int:
    channels = getattr(network, "in_channels", None)
    if isinstance(channels, int):
        return channels
    first = next((m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    if first is None:
        raise SelfUNetError(f"OpenVINO: cannot tell the input channels of {type(network).__name__}; "
                            "use --backend torch for it.")
    return int(first.in_channels)


def _read(path: Path):
    """A graph from its IR files, its weights copied into OpenVINO's own memory (no mapping of a
    file that a later prune or replace could touch)."""
    import openvino as ov

    return ov.Core().read_model(str(path), config={"ENABLE_MMAP": False})


def _trace(network: nn.Module, channels: int, trace: list[int], folder: Path) -> Path:
    """Convert ``network`` and write its graph to ``folder``; the IR file's path.

    The converted model is only ever written out and read back: a model fresh from the frontend
    can still point into memory of the traced torch objects, and when those were freed later the
    process crashed far from here (a test suite's interpreter segfaulted in an unrelated test).
    """
    import openvino as ov
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    # the PyTorch frontend itself, not ov.convert_model: that tool sends usage telemetry unless the
    # user opted out, and a prediction on patient images must not talk to anyone
    with torch.no_grad(), warnings.catch_warnings():
        # tracing notes that shape checks (instance norm's) become constants: true for a fixed patch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch deprecates TorchScript tracing; the day it is gone the conversion fails, and
        # --backend auto then runs torch and logs why (cpu_backend.for_inference)
        warnings.simplefilter("ignore", DeprecationWarning)
        decoder = TorchScriptPythonDecoder(network, example_input=(torch.zeros([1, channels, *trace]),),
                                           shared_memory=False)
        frontend = FrontEndManager().load_by_framework("pytorch")
        model = frontend.convert(frontend.load(decoder, False))
        path = folder / "network.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
    del model, decoder
    return path


def _convert(network: nn.Module, channels: int, trace: list[int], cache_file: Path | None):
    """The network as an OpenVINO model (read from ``cache_file`` when present, else converted and saved)."""
    if cache_file is not None and cache_file.is_file():
        try:
            model = _read(cache_file)
            for used in (cache_file, cache_file.with_suffix(".bin")):  # recently used: pruned last
                with contextlib.suppress(OSError):
                    os.utime(used)
            return model
        except RuntimeError as exc:  # a damaged cache entry: convert again
            log.warning("OpenVINO: cached graph %s unreadable (%s); converting again", cache_file, exc)
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            # written under a temporary name, then renamed: a concurrent reader never sees half a graph
            with tempfile.TemporaryDirectory(dir=cache_file.parent) as tmp:
                staged = _trace(network, channels, trace, Path(tmp))
                os.replace(staged.with_suffix(".bin"), cache_file.with_suffix(".bin"))
                os.replace(staged, cache_file)
            prune_cache(cache_file.parent, cache_bytes())
            if cache_file.is_file():
                return _read(cache_file)
        except OSError as exc:  # a read-only cache only costs the conversion next time
            log.debug("OpenVINO: graph not cached (%s)", exc)
    with tempfile.TemporaryDirectory() as tmp:
        return _read(_trace(network, channels, trace, Path(tmp)))


def cache_bytes() -> int:
    """The cache's size limit: ``SELFUNET_OPENVINO_CACHE_GB`` (a number >= 0) or the default."""
    value = os.environ.get("SELFUNET_OPENVINO_CACHE_GB")
    if value is None:
        return DEFAULT_CACHE_BYTES
    try:
        gigabytes = float(value)
    except ValueError:
        gigabytes = -1.0
    if not 0 <= gigabytes < 2**20:
        raise SelfUNetError(f"SELFUNET_OPENVINO_CACHE_GB={value!r}: give a size in GB >= 0 (0 keeps no graph).")
    return int(gigabytes * 2**30)


def prune_cache(folder: Path, limit: int) -> None:
    """Delete the least recently used graphs of ``folder`` until the rest fit in ``limit`` bytes."""
    graphs = []
    for xml in folder.glob("*.xml"):
        with contextlib.suppress(OSError):
            size = xml.stat().st_size + (xml.with_suffix(".bin").stat().st_size
                                         if xml.with_suffix(".bin").exists() else 0)
            graphs.append((xml.stat().st_mtime, size, xml))
    total = sum(size for _, size, _ in graphs)
    for _, size, xml in sorted(graphs):
        if total <= limit:
            break
        for part in (xml, xml.with_suffix(".bin")):
            with contextlib.suppress(OSError):
                part.unlink()
        total -= size


def compile_network(network: nn.Module, patch: Sequence[int], precision: str = "f32", threads: int | None = None,
                    cache: Path | None = None) -> OpenVinoNetwork:
    """``network`` (eval mode, one output) compiled by OpenVINO for windows of ``patch``, any batch size.

    ``cache``: the folder for converted graphs (None: no disk cache). ``precision``: "f32" or "bf16".
    """
    import openvino as ov

    runtime.mark_ran("openvino")  # from here on, no loader worker processes (selfunet.runtime)
    channels = _input_channels(network)
    trace = tracing_shape(network, patch)
    cache_file = None
    if cache is not None:
        key = f"{weights_digest(network)}-{ov.__version__}-{torch.__version__}-{'x'.join(map(str, trace))}"
        cache_file = cache / IR_FOLDER / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.xml"
    model = _convert(network, channels, trace, cache_file)
    model.reshape(ov.PartialShape([-1, channels, *[int(p) for p in patch]]))
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision,
              "INFERENCE_NUM_THREADS": str(threads or torch.get_num_threads())}
    compiled = ov.Core().compile_model(model, "CPU", config)
    threads_used = config["INFERENCE_NUM_THREADS"]
    return OpenVinoNetwork(compiled, f"OpenVINO {ov.__version__} ({precision}, {threads_used} threads)")
