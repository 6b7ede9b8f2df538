"""Where and in what precision the networks run, and how checkpoints are written and read.

Every stage that runs a network (training, inference) shares these choices, so they live here
rather than in either stage: inference must not import training's loop to load a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfunet.errors import SelfUNetError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SelfUNetError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    return device


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise SelfUNetError("--amp fp16 needs a CUDA device; use --amp bf16 or --amp off on CPU.")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def save_checkpoint(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise SelfUNetError(f"{path}: checkpoint not found; run `selfunet train` first.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupted file: name it and the way out
        raise SelfUNetError(f"{path}: cannot load checkpoint ({exc}); delete it and retrain or resume.") from exc
