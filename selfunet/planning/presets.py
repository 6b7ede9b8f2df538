"""Named planner presets: the default planner and the residual-encoder presets M, L and XL.

A preset is a set of :class:`~selfunet.planning.plan_types.PlannerSettings` values, not a subclass,
so a plan made with a preset records every number it used and ``selfunet plan --preset NAME``
is the only switch a user needs.

The residual-encoder presets ("nnU-Net Revisited", MICCAI 2024) follow the reference's rules for
``nnUNetPlannerResEncM/L/XL``:

- the network: a residual encoder (one stem conv, then 1, 3, 4, 6, 6, ... basic residual blocks per
  stage) with a plain decoder of one conv block per stage;
- the memory budget: the estimate of *one* sample (not scaled to the reference batch as in the
  default planner) against 680M / 135M feature-map elements (3D / 2D) at 8 GB for M, 2.1G / 380M
  at 24 GB for L and 3.6G / 560M at 40 GB for XL, scaled linearly with ``--gpu-memory-gb``;
- the batch size: still ``budget / estimate x reference batch`` (2 in 3D, 12 in 2D), but the
  dataset-coverage cap is dropped: one batch may hold up to 100% of the dataset's voxels
  instead of 5% (it only binds on tiny datasets).

Target spacing, patch shape rule, pooling, normalization and the cascade rules are the default
planner's; so are our cascade trigger (12.5%) and lowres step (1.01).
"""

from __future__ import annotations

from typing import Any

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import PlannerSettings

DEFAULT_PRESET = "default"

_RESIDUAL: dict[str, Any] = {
    "architecture": "residual_encoder",
    "decoder_convs_per_stage": 1,
    "budget_per_reference_batch": False,
    "batch_cap_fraction": 1.0,
}

#: preset name -> the PlannerSettings fields it changes (everything else keeps its default).
PRESETS: dict[str, dict[str, Any]] = {
    DEFAULT_PRESET: {},
    "resenc-m": {**_RESIDUAL, "gpu_memory_gb": 8.0, "reference_memory_gb": 8.0,
                 "reference_budget_3d": 680e6, "reference_budget_2d": 135e6},
    "resenc-l": {**_RESIDUAL, "gpu_memory_gb": 24.0, "reference_memory_gb": 24.0,
                 "reference_budget_3d": 2100e6, "reference_budget_2d": 380e6},
    "resenc-xl": {**_RESIDUAL, "gpu_memory_gb": 40.0, "reference_memory_gb": 40.0,
                  "reference_budget_3d": 3600e6, "reference_budget_2d": 560e6},
}


def check_preset(name: str, source: str = "--preset") -> str:
    """``name`` if it is a known preset, else a SelfUNetError naming the choices."""
    if name not in PRESETS:
        raise SelfUNetError(f"{source}: unknown planner preset '{name}'; choose one of {', '.join(PRESETS)}.")
    return name


def planner_settings(
    preset: str = DEFAULT_PRESET, gpu_memory_gb: float | None = None, **overrides: Any
) -> PlannerSettings:
    """The settings of ``preset``; ``gpu_memory_gb`` (None: the preset's target) scales its budget."""
    values: dict[str, Any] = {**PRESETS[check_preset(preset)], **overrides, "preset": preset}
    if gpu_memory_gb is not None:
        if gpu_memory_gb <= 0:
            raise SelfUNetError(f"--gpu-memory-gb must be positive, got {gpu_memory_gb}.")
        values["gpu_memory_gb"] = float(gpu_memory_gb)
    return PlannerSettings(**values)
