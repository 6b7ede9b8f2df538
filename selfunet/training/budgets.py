"""Named training budgets: the SPEC's full schedule and small ones for demos and CI.

A budget only overrides :class:`~selfunet.training.train_config.TrainConfig` fields; the harness's
``--budget`` and ``selfunet run --budget`` select one by name.
"""

from __future__ import annotations

from selfunet.errors import SelfUNetError
from selfunet.training.train_config import TrainConfig

BUDGETS: dict[str, dict] = {
    # SPEC section 3: 1000 epochs x 250 iterations, 50 validation iterations, 5 folds.
    "full": {},
    # a few minutes per task on a 2-core CPU: enough to separate a working pipeline from a broken one.
    "ci": {"epochs": 3, "iterations_per_epoch": 12, "validation_iterations": 3, "num_folds": 2,
           "checkpoint_every": 1, "validation_mirroring": False},
    # the README's demo: the same as ci.
    "demo": {"epochs": 3, "iterations_per_epoch": 12, "validation_iterations": 3, "num_folds": 2,
             "checkpoint_every": 1, "validation_mirroring": False},
}


def budget_config(name: str, **overrides) -> TrainConfig:
    if name not in BUDGETS:
        raise SelfUNetError(f"unknown budget '{name}'; choose one of {', '.join(BUDGETS)}.")
    values = {**BUDGETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values, source=f"budget '{name}'")
