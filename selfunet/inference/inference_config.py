"""How a case is predicted (docs/explanation/design.md#inference), as one typed config.

Every constant of the sliding window and the test-time augmentation is a field, so ``selfunet
predict``/``run``/``train`` expose each as an option (generated from these fields). The module does
not import torch (the fields that hold torch objects are set by code, not typed by users), so the
command line starts without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from selfunet.errors import SelfUNetError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class InferenceConfig:
    """How a case is predicted; each default (docs/explanation/design.md#inference) is a field the CLI can change."""

    step_fraction: float = 0.5
    """window step as a fraction of the patch size (default: half a patch)."""
    gaussian_sigma_fraction: float = 1.0 / 8.0
    """sigma of the importance map as a fraction of the patch size (default: patch / 8)."""
    mirror_axes: tuple[int, ...] | None = None
    """axes of the *patch* (0-based, spatial) to mirror for TTA; None = all of them, () = no TTA."""
    windows_per_batch: int = 4
    """windows per forward pass; more is faster on a GPU until memory runs out. Fewer are used where
    a batch's outputs would pass 256 MB (many classes x a large patch)."""
    amp_dtype: torch.dtype | None = None
    """torch.bfloat16 / torch.float16 runs the network under autocast; accumulation stays float32."""
    accumulate_device: str | torch.device = "cpu"
    """where the full-size logit and weight sums live; 'cpu' keeps GPU memory for the network."""
    device: str | torch.device | None = None
    """compute device; None = the device of the network's parameters."""
    max_window_voxels: int | None = None
    """at most this many voxels of windows (windows x patch voxels, at least one window) per case:
    small budgets bound prediction this way. The step becomes a whole patch, and if that grid still
    has more windows, those nearest the centre are predicted and voxels outside every window are
    background. None = every window of the grid."""
    progress: bool = False
    """show a rich progress bar over window batches (useful for very large cases)."""
    backend: str = "auto"
    """what runs the network on a CPU: torch, openvino, or auto (OpenVINO where installed and
    measured faster on this machine, else torch; always torch on a GPU)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.step_fraction <= 1.0:
            raise SelfUNetError(
                f"InferenceConfig.step_fraction={self.step_fraction}: must be in (0, 1]; "
                "0.5 (half a patch) is the method's default"
            )
        if self.gaussian_sigma_fraction <= 0.0:
            raise SelfUNetError(
                f"InferenceConfig.gaussian_sigma_fraction={self.gaussian_sigma_fraction}: must be > 0; "
                "1/8 is the method's default"
            )
        if self.max_window_voxels is not None and self.max_window_voxels < 1:
            raise SelfUNetError(f"InferenceConfig.max_window_voxels={self.max_window_voxels}: must be >= 1 (or None)")
        if self.backend not in ("auto", "torch", "openvino"):
            raise SelfUNetError(f"InferenceConfig.backend={self.backend!r}: choose auto, torch or openvino")
        if self.windows_per_batch < 1:
            raise SelfUNetError(f"InferenceConfig.windows_per_batch={self.windows_per_batch}: must be >= 1")
        if self.amp_dtype is not None and str(self.amp_dtype) not in ("torch.bfloat16", "torch.float16"):
            raise SelfUNetError(
                f"InferenceConfig.amp_dtype={self.amp_dtype}: use None, torch.bfloat16 or torch.float16"
            )
        if self.mirror_axes is not None:
            axes = tuple(self.mirror_axes)
            if len(set(axes)) != len(axes) or any(a < 0 for a in axes):
                raise SelfUNetError(
                    f"InferenceConfig.mirror_axes={self.mirror_axes}: give distinct non-negative "
                    "spatial axes of the patch, e.g. (0, 1, 2); () disables mirroring"
                )
            object.__setattr__(self, "mirror_axes", axes)
