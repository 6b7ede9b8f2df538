"""The environment fingerprint: which hardware and library versions produced a task's numbers.

Numbers are comparable across labs only with it (nnU-Net's benchmark trainers record the GPU,
torch and cuDNN versions too). ``harness run`` puts one in every run record (``run.json``,
key ``environment``) and beside it as ``results/<task>/environment.json``; the leaderboard header
and the HTML report show it in one line (:func:`describe`), and ``harness compare`` warns when the
baseline's differs in a way that changes numbers (:func:`differences`).

Keys (every value may be null where it does not apply or cannot be read)::

    schema            1
    selfunet          selfunet's version (the run record's code_version adds the source tree)
    python, torch     versions
    cuda, cudnn       torch's CUDA and cuDNN versions (null in a CPU build)
    openvino          the installed OpenVINO's version (null: none); on a CPU, prediction runs the
                      network in it where measured faster (selfunet/inference/cpu_backend.py)
    gpu               {"model", "count", "driver", "capability"}: the visible GPUs (count 0: none)
    cpu               {"model", "cores", "bf16_flags"}: the CPU and its native bf16 instruction flags
                      (selfunet/cpu_precision.py: without them bf16 is never chosen on a CPU)
    precision         {"amp": the --amp mode the jobs ran with, "jobs": {precision line: folds}}
                      where each line is what the training printed (``training_summary.json``:
                      e.g. "fp32 (--amp auto: fp32: this CPU has no native bf16 instructions ...)")
    sandbox, image, image_digest
                      the sandbox; for Docker jobs the image id and its registry digest(s)
    platform          the operating system, as Python names it

The fingerprint is taken in the ``harness run`` process; jobs in a Docker image run the image's
libraries, which is why the image id is part of it (and of every job's hash).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA = 1
FILE = "environment.json"
#: what changes numbers: a difference here makes ``harness compare`` warn.
NUMERIC_KEYS = ("precision", "gpu model", "device")


def _gpus() -> dict[str, Any]:
    try:
        import torch

        if not torch.cuda.is_available():
            return {"model": None, "count": 0, "driver": None, "capability": None}
        count = torch.cuda.device_count()
        names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
        capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
        return {"model": " + ".join(names), "count": count, "driver": _driver(), "capability": capability}
    except Exception:  # a broken CUDA install must not stop a run from being recorded
        return {"model": None, "count": 0, "driver": None, "capability": None}


def _driver() -> str | None:
    """The NVIDIA driver version: /proc/driver/nvidia/version, else nvidia-smi."""
    with contextlib.suppress(OSError, IndexError):
        line = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
        words = [w for w in line.split() if w[:1].isdigit() and "." in w]
        if words:
            return words[0]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    return None


def _torch() -> dict[str, Any]:
    try:
        import torch

        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": None if cudnn is None else str(cudnn)}
    except Exception:
        return {"torch": None, "cuda": None, "cudnn": None}


def _cpu() -> dict[str, Any]:
    from selfunet.cpu_precision import NATIVE_BF16_CPU_FLAGS, cpu_flags, cpu_model

    model = cpu_model()
    return {"model": platform.processor() or platform.machine() if model == "unknown" else model,
            "cores": os.cpu_count(), "bf16_flags": sorted(cpu_flags() & NATIVE_BF16_CPU_FLAGS)}


def job_precisions(work: Path | None) -> dict[str, int]:
    """What each training of a work directory ran with (its training_summary.json), counted."""
    counts: dict[str, int] = {}
    if work is None or not Path(work).is_dir():
        return counts
    for path in sorted(Path(work).rglob("training_summary.json")):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            line = str(json.loads(path.read_text()).get("precision") or "")
            if line:
                counts[line] = counts.get(line, 0) + 1
    return counts


def _image_digests(image: str | None) -> list[str] | None:
    if not image:
        return None
    try:
        from harness.sandboxes.image import docker_client

        return list(docker_client().images.get(image).attrs.get("RepoDigests") or [])
    except Exception:
        return None


def fingerprint(work: Path | None = None, sandbox: str | None = None, image: str | None = None,
                amp: str | None = None) -> dict[str, Any]:
    """This machine's fingerprint, with the precisions the trainings under ``work`` ran with."""
    import selfunet
    from selfunet.inference.openvino_network import openvino_version

    return {"schema": SCHEMA, "selfunet": selfunet.__version__, "python": platform.python_version(), **_torch(),
            "openvino": openvino_version(), "gpu": _gpus(), "cpu": _cpu(),
            "precision": {"amp": amp, "jobs": job_precisions(work)},
            "sandbox": sandbox, "image": image, "image_digest": _image_digests(image) if sandbox == "docker" else None,
            "platform": platform.platform()}


def read(task_dir: Path) -> dict | None:
    """The fingerprint of a results or baseline folder: environment.json, else run.json's; None
    for results written before fingerprints existed."""
    for name, key in ((FILE, None), ("run.json", "environment")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((Path(task_dir) / name).read_text())
            found = data if key is None else data.get(key)
            if isinstance(found, dict):
                return found
    return None


def precisions(env: Mapping) -> list[str]:
    """The precisions the trainings used (``fp32``, ``bf16``, ``fp16``), without their reasons."""
    jobs = ((env.get("precision") or {}).get("jobs")) or {}
    return sorted({line.split()[0] for line in jobs if line.strip()})


def device(env: Mapping) -> str:
    gpu = env.get("gpu") or {}
    return "cuda" if gpu.get("count") else "cpu"


def describe(env: Mapping | None) -> str:
    """One line: device, libraries, precision, selfunet version, image."""
    if not env:
        return "not recorded"
    gpu, cpu = env.get("gpu") or {}, env.get("cpu") or {}
    flags = ", ".join(cpu.get("bf16_flags") or []) or "none"
    if gpu.get("count"):
        where = (f"{gpu.get('count')}x {gpu.get('model')} (driver {gpu.get('driver') or '?'}, CUDA {env.get('cuda')}, "
                 f"cuDNN {env.get('cudnn')})")
    else:
        where = f"CPU {cpu.get('model')} ({cpu.get('cores')} cores, bf16 flags: {flags})"
    amp = (env.get("precision") or {}).get("amp")
    used = "/".join(precisions(env)) or "n/a"
    libraries = f"torch {env.get('torch')}" + (f", OpenVINO {env['openvino']}" if env.get("openvino") else "")
    parts = [where, libraries, f"precision {used}" + (f" (--amp {amp})" if amp else ""),
             f"selfunet {env.get('selfunet')}"]
    if env.get("image"):
        digest = ", ".join(env.get("image_digest") or []) or "no registry digest"
        parts.append(f"image {str(env['image'])[:19]} ({digest})")
    return "; ".join(parts)


def differences(baseline: Mapping | None, current: Mapping | None) -> list[str]:
    """What differs between two fingerprints in a way that changes numbers (precision, GPU model,
    CPU vs GPU), in words; a missing fingerprint is said once and compared no further."""
    if not baseline or not current:
        side = "the baseline" if not baseline else "the results"
        return [f"{side} has no environment fingerprint (written before it existed); regenerate it to compare "
                "hardware and precision"]
    out = []
    if device(baseline) != device(current):
        out.append(f"device: baseline {device(baseline)}, now {device(current)}")
    elif device(current) == "cuda" and (baseline.get("gpu") or {}).get("model") != (current.get("gpu") or {}).get(
            "model"):
        out.append(f"GPU model: baseline {(baseline.get('gpu') or {}).get('model')}, now "
                   f"{(current.get('gpu') or {}).get('model')}")
    if precisions(baseline) != precisions(current):
        out.append(f"precision: baseline {'/'.join(precisions(baseline)) or 'n/a'}, now "
                   f"{'/'.join(precisions(current)) or 'n/a'}")
    return out
