"""Named training budgets: the full schedule (docs/explanation/design.md#schedule) and small ones for demos and CI.

A budget only overrides :class:`~selfunet.training.train_config.TrainConfig` fields; the harness's
``--budget`` and ``selfunet run --budget`` select one by name.

Why the small budgets also cap the voxels per batch: a few iterations are only "small" if an
iteration is. On real data with 0.8 mm in-plane spacing the planner makes 512x512 2D patches in
batches of 5-12 and 3D patches of millions of voxels; a ci run of 45 iterations then took most of
an hour per fold on a 2-core CPU. Capped at 2^18 voxels per batch, an iteration costs about what a
demo iteration costs, whatever the dataset. The synthetic demo's plans fit under the cap, so its
results do not change. A capped run is a smoke test of the pipeline, not the method: its Dice
says nothing about the planned configuration.

Prediction is bounded the same way: after training, a fold predicts its validation cases with the
planned (full-size) network over the planned window, which on a 512 x 512 x 200 CT is a hundred
windows of seconds each per case. The small budgets predict at most
:data:`SMALL_BUDGET_PREDICTION_VOXELS` voxels of windows per case (without mirroring): the cases
still go through the whole chain (sliding window, reverting, writing, evaluation), but the
segmentation covers the windows nearest the centre only. The leaderboard says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import Configuration
from selfunet.training.train_config import TrainConfig

#: voxels per batch of the small budgets (ci, demo): 2 x 64^3 / 2.
SMALL_BUDGET_VOXELS_PER_BATCH = 2**18
#: voxels of sliding windows per predicted case of the small budgets: one window of a planned 3D
#: patch on real CT (about 1-2 M voxels), a few 512^2 slices of a 2D plan; the synthetic demo's
#: cases (at most ~0.13 M voxels of windows) are predicted whole, so its results do not change.
SMALL_BUDGET_PREDICTION_VOXELS = 2**20

BUDGETS: dict[str, dict] = {
    # docs/explanation/design.md#schedule: 1000 epochs x 250 iterations, 50 validation iterations, 5 folds.
    "full": {},
    # a few minutes per task on a 2-core CPU: enough to separate a working pipeline from a broken one.
    "ci": {"epochs": 3, "iterations_per_epoch": 12, "validation_iterations": 3, "num_folds": 2,
           "checkpoint_every": 1, "validation_mirroring": False,
           "max_voxels_per_batch": SMALL_BUDGET_VOXELS_PER_BATCH,
           "prediction_max_window_voxels": SMALL_BUDGET_PREDICTION_VOXELS},
    # the README's demo: the same as ci.
    "demo": {"epochs": 3, "iterations_per_epoch": 12, "validation_iterations": 3, "num_folds": 2,
             "checkpoint_every": 1, "validation_mirroring": False,
             "max_voxels_per_batch": SMALL_BUDGET_VOXELS_PER_BATCH,
             "prediction_max_window_voxels": SMALL_BUDGET_PREDICTION_VOXELS},
}


def budget_config(name: str, **overrides) -> TrainConfig:
    if name not in BUDGETS:
        raise SelfUNetError(f"unknown budget '{name}'; choose one of {', '.join(BUDGETS)}.")
    values = {**BUDGETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values, source=f"budget '{name}'")


def fit_to_voxel_budget(configuration: Configuration, max_voxels: int, min_batch: int = 2) -> Configuration:
    """The configuration with batch x patch voxels <= ``max_voxels``: the batch shrinks first (not
    below ``min_batch``), then the patch, one network stride at a time on its largest axis, so
    every axis stays divisible by the network's total stride on it. Unchanged when it fits."""
    patch = [int(p) for p in configuration.patch_size]
    batch = int(configuration.batch_size)
    if batch * math.prod(patch) <= max_voxels:
        return configuration
    batch = max(min(batch, max_voxels // math.prod(patch)), min(min_batch, batch))
    divisors = [math.prod(int(stride[axis]) for stride in configuration.topology.strides)
                for axis in range(len(patch))]
    while batch * math.prod(patch) > max_voxels:
        shrinkable = [a for a in range(len(patch)) if patch[a] - divisors[a] >= divisors[a]]
        if not shrinkable:
            break  # the smallest patch the network takes: keep it, the budget is exceeded at its floor
        axis = max(shrinkable, key=lambda a: patch[a])
        patch[axis] -= divisors[axis]
    return configuration.model_copy(update={"patch_size": patch, "batch_size": batch})


def prediction_overrides(config: TrainConfig, inference: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inference overrides of a run's predictions: the given ones, plus the budget's window
    cap (``InferenceConfig.max_window_voxels``) unless the command line set one itself."""
    merged = dict(inference or {})
    if config.prediction_max_window_voxels is not None and merged.get("max_window_voxels") is None:
        merged["max_window_voxels"] = config.prediction_max_window_voxels
    return merged
