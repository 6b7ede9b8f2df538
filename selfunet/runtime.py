"""Where and in what precision the networks run, and how checkpoints are written and read.

Every stage that runs a network (training, inference) shares these choices, so they live here
rather than in either stage: inference must not import training's loop to load a checkpoint.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from selfunet import cpu_precision
from selfunet.artifacts import atomic_path, write_failure
from selfunet.errors import SelfUNetError, quote

#: what ``--device`` accepts (checked when the command line is parsed, not after hours of work).
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def check_device_name(name: str) -> str:
    if not DEVICE_PATTERN.match(name):
        raise SelfUNetError(f"--device {quote(name)}: not a device; use auto, cpu, cuda or cuda:N (N = GPU index).")
    return name


def resolve_device(name: str) -> torch.device:
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SelfUNetError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    return device


#: the first CUDA compute capability with bf16 tensor cores (Ampere); older GPUs (T4 = 7.5,
#: V100 = 7.0) report bf16 as "supported" but emulate it, so they get fp16 with a gradient scaler.
NATIVE_BF16_CUDA_CAPABILITY = (8, 0)


def cpu_supports_bf16() -> bool:
    """Whether bf16 autocast is worth it on this CPU: native bf16 instructions and measured faster
    than fp32 (once per machine, cached; :mod:`selfunet.cpu_precision`)."""
    return cpu_precision.cpu_bf16_decision().use_bf16


def precision_reason(dtype: torch.dtype | None, mode: str, device: torch.device) -> str:
    """One line for the training log: which precision and why."""
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    if mode != "auto":
        return f"{name} (--amp {mode})"
    if device.type == "cpu":
        return f"{name} (--amp auto: {cpu_precision.cpu_bf16_decision().describe()})"
    if device.type == "cuda":
        return f"{name} (--amp auto: compute capability {'.'.join(map(str, cuda_capability(device)))})"
    return f"{name} (--amp auto)"


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of a CUDA device (the seam tests fake)."""
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32.

    ``auto``: on CUDA, bf16 on GPUs with native bf16 (compute capability >= 8.0), else fp16 (the
    trainer then scales the loss with a ``GradScaler``); on CPUs, bf16 where
    :func:`cpu_supports_bf16` (native bf16 and measured faster), else fp32. ``fp16`` on a CPU is
    allowed when asked for explicitly
    (it exercises the gradient-scaler path; it is slower than fp32 on most CPUs).
    """
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if mode != "auto":
        raise SelfUNetError(f"--amp {mode}: unknown precision; choose one of auto, off, bf16, fp16.")
    if device.type == "cuda":
        return torch.bfloat16 if cuda_capability(device) >= NATIVE_BF16_CUDA_CAPABILITY else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


#: what a checkpoint may hold besides tensors (exact types: numpy's float64 is a float subclass
#: that ``torch.load(weights_only=True)`` refuses).
PLAIN_TYPES = (str, int, float, bool, type(None))


def plain_payload_problem(value: object, where: str = "payload") -> str | None:
    """Where ``value`` holds something other than dicts/lists/tuples of plain values and tensors.

    Checkpoints must load with ``weights_only=True`` (unpickling arbitrary objects can run code, and
    checkpoints are written inside job containers), so a numpy scalar, a pydantic model or a Path
    that slipped into a payload is caught when it is written, not when the host reads it.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                return f"{where}: key {key!r} is a {type(key).__name__}"
            problem = plain_payload_problem(item, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = plain_payload_problem(item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if type(value) in PLAIN_TYPES or isinstance(value, torch.Tensor):
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` through a unique temp file, fsync and rename (see :func:`atomic_path`)."""
    problem = plain_payload_problem(payload)
    if problem:  # a bug in the writer, never the user's doing
        raise SelfUNetError(f"{path}: refusing to write a checkpoint that would not load with weights_only: "
                            f"{problem}; convert it to plain values (float(), .tolist(), model_dump(mode='json')).")
    with atomic_path(Path(path)) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as exc:  # torch's stream writer hides the OSError (e.g. a full disk)
            raise write_failure(path, "writing the checkpoint", exc) from exc


# -- stop requests (SIGTERM, SIGINT, SIGHUP) ------------------------------------------------------
#: the signals a long-running stage answers by stopping cleanly at the next step.
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)
_stop: list[int] = []
_depth: list[int] = []


class StopRequested(SelfUNetError):
    """A stop signal arrived; what was finished is kept and a rerun resumes."""


def request_stop(signum: int) -> None:
    if not _stop:
        _stop.append(signum)


def stop_requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _stop[0] if _stop else None


def check_stop(where: str) -> None:
    """Raise :class:`StopRequested` if a stop signal came; call it once per step of every long loop."""
    if _stop:
        raise StopRequested(f"stopped by {signal.Signals(_stop[0]).name} {where}; what was finished is kept: "
                            "rerun the same command to resume.")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, a stop signal only sets a flag (:func:`check_stop` answers it at the next
    step), so a stage can finish its current write and leave a resumable state. Blocks nest (the
    outermost one installs and restores the handlers). Outside the main thread signals cannot be
    caught; the block then changes nothing."""
    outermost = not _depth
    previous = {}
    if outermost:
        _stop.clear()
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, lambda signum, _frame: request_stop(signum))
    _depth.append(1)
    try:
        yield
    finally:
        _depth.pop()
        if outermost:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _stop.clear()


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is no usable checkpoint (None when it is): missing, empty, torn, or holding
    pickled objects. Opened memory-mapped, so checking a big checkpoint reads almost nothing."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a torn zip, a foreign pickle, ...
        return f"not a loadable checkpoint ({type(exc).__name__})"
    return None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's payload, read with ``weights_only=True``: tensors, dicts, lists and plain values only.

    A file holding pickled objects is refused, never unpickled: checkpoints are written by jobs
    (inside containers, or by anyone who shared a work directory) and unpickling runs code.
    """
    if not path.is_file():
        raise SelfUNetError(f"{path}: checkpoint not found; run `selfunet train` first.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not an object, just bytes that are no checkpoint
            detail = next((line.strip() for line in str(exc).splitlines() if line.strip().startswith("Unsupported")),
                          str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise SelfUNetError(f"{path}: cannot load checkpoint (not a valid checkpoint file: {detail[:200]}); "
                                "delete it and retrain or resume.") from None
        reason = f"a pickled {found.group(1)}"
        raise SelfUNetError(
            f"{path}: refused: the checkpoint holds pickled Python objects, not only tensors and plain values "
            f"({reason[:200]}); selfunet never unpickles objects from a file (that can run code). Retrain the fold "
            "with this selfunet (`selfunet train WORK -c CONFIG -f K --restart`).") from None
    except Exception as exc:  # a corrupted file: name it and the way out
        raise SelfUNetError(f"{path}: cannot load checkpoint ({exc}); delete it and retrain or resume.") from exc
    if not isinstance(payload, dict):
        raise SelfUNetError(f"{path}: not a selfunet checkpoint (a {type(payload).__name__}, not a mapping); "
                            "retrain the fold (`selfunet train WORK -c CONFIG -f K --restart`).")
    return payload


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """This process's peak memory so far, in MiB, and what was measured: ``"cuda"`` (the most
    tensor memory allocated on the GPU, ``torch.cuda.max_memory_allocated``) or ``"rss"`` (the
    largest resident set of this process or of any child it waited for, ``getrusage``)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda"
    import resource
    import sys

    scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak * scale / 2**20, "rss"


# ------------------------------------------------------------ OpenVINO and loader worker processes
# OpenVINO's runtime and torch's DataLoader worker processes do not share one process: once a
# network has run in OpenVINO, a DataLoader with worker processes (any start method) corrupted the
# Python heap, and the interpreter segfaulted later in unrelated code (reproduced in the test
# suite, OpenVINO 2026.4 with torch 2.13). Each side records that it ran, and the other refuses or
# steps aside: the process loader stops with a clear error, and `--backend auto` keeps torch in a
# process that has started loader workers.
_RAN: set[str] = set()


def mark_ran(what: str) -> None:
    """Record that this process ran ``"openvino"`` or ``"loader-workers"``."""
    _RAN.add(what)


def has_run(what: str) -> bool:
    return what in _RAN
