"""Small budgets stay small: the voxel cap on batch x patch, and what it leaves alone."""

from __future__ import annotations

import math

import pytest

from selfunet.planning.plan_types import Configuration
from selfunet.training.budgets import SMALL_BUDGET_VOXELS_PER_BATCH, budget_config, fit_to_voxel_budget


def _configuration(plan, patch, batch, strides) -> Configuration:
    base = next(iter(plan.configurations.values()))
    topology = base.topology.model_copy(update={"strides": strides})
    return base.model_copy(update={"patch_size": patch, "batch_size": batch, "topology": topology})


@pytest.fixture(scope="module")
def plan(demo_fingerprint):
    from selfunet.planning.plan import plan_experiment

    return plan_experiment(demo_fingerprint)


def test_the_small_budgets_carry_the_cap_and_the_full_one_does_not() -> None:
    assert budget_config("ci").max_voxels_per_batch == SMALL_BUDGET_VOXELS_PER_BATCH
    assert budget_config("demo").max_voxels_per_batch == SMALL_BUDGET_VOXELS_PER_BATCH
    assert budget_config("full").max_voxels_per_batch is None


def test_the_demo_plans_fit_under_the_cap_unchanged(plan) -> None:
    for configuration in plan.configurations.values():
        assert fit_to_voxel_budget(configuration, SMALL_BUDGET_VOXELS_PER_BATCH) is configuration


def test_a_large_2d_plan_shrinks_batch_first_then_patch_on_the_stride_grid(plan) -> None:
    strides = [[1, 1]] + [[2, 2]] * 6  # total stride 64 per axis
    big = _configuration(plan, [512, 512], 12, strides)
    fitted = fit_to_voxel_budget(big, 2**18)
    assert fitted.batch_size == 2
    assert fitted.batch_size * math.prod(fitted.patch_size) <= 2**18
    assert all(p % 64 == 0 and p >= 64 for p in fitted.patch_size)
    assert max(fitted.patch_size) - min(fitted.patch_size) <= 64  # shrunk on the largest axis first


def test_an_anisotropic_3d_plan_keeps_its_short_axis(plan) -> None:
    strides = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]  # totals 2, 32, 32
    big = _configuration(plan, [14, 384, 320], 2, strides)
    fitted = fit_to_voxel_budget(big, 2**18)
    assert fitted.patch_size[0] == 14 and fitted.batch_size == 2
    assert 2 * math.prod(fitted.patch_size) <= 2**18
    assert [p % d for p, d in zip(fitted.patch_size, (2, 32, 32))] == [0, 0, 0]


def test_at_the_floor_the_smallest_patch_is_kept(plan) -> None:
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    tiny_cap = fit_to_voxel_budget(_configuration(plan, [64, 64, 64], 4, strides), 10)
    assert tiny_cap.patch_size == [4, 4, 4] and tiny_cap.batch_size == 2


def test_the_trainer_trains_fitted_and_the_checkpoint_keeps_the_plan(tiny_work) -> None:
    """Training uses the shrunk batch/patch; the checkpoint keeps the planned configuration, so
    predictions slide the planned window (fewer windows than the shrunk one would need)."""
    from selfunet.planning.plan_types import Plan
    from selfunet.runtime import load_checkpoint
    from selfunet.training.train import CHECKPOINT_FINAL, Trainer
    from selfunet.training.train_config import TrainConfig

    planned = Plan.load(tiny_work / "plan.json").configurations["3d_fullres"]
    config = TrainConfig(epochs=1, iterations_per_epoch=1, validation_iterations=1, num_folds=2,
                         max_voxels_per_batch=16 * 16 * 16, device="cpu", amp="off")
    trainer = Trainer(tiny_work, "3d_fullres", 0, config)
    assert trainer.configuration.batch_size * math.prod(trainer.configuration.patch_size) <= 16**3
    trainer.run()
    assert trainer.patch == trainer.configuration.patch_size  # the sampler and augmenter got the fitted patch
    saved = load_checkpoint(tiny_work / "train" / "3d_fullres" / "fold_0" / CHECKPOINT_FINAL)
    assert saved["plan"]["configurations"]["3d_fullres"]["patch_size"] == planned.patch_size


def test_small_budgets_bound_prediction_and_say_so_on_the_leaderboard() -> None:
    from harness.results.publish import budget_text
    from selfunet.training.budgets import SMALL_BUDGET_PREDICTION_VOXELS, budget_config, prediction_overrides

    for name in ("ci", "demo"):
        config = budget_config(name)
        assert config.prediction_max_window_voxels == SMALL_BUDGET_PREDICTION_VOXELS
        assert prediction_overrides(config, {"step_fraction": 0.5}) == {
            "step_fraction": 0.5, "max_window_voxels": SMALL_BUDGET_PREDICTION_VOXELS}
        assert prediction_overrides(config, {"max_window_voxels": 5})["max_window_voxels"] == 5  # the user's wins
        record = {"descriptor_content": {"budget": {"preset": name}}, "train_config": config.model_dump(mode="json")}
        text = budget_text(record)
        assert "no mirroring" in text and "window voxels per case (rest background)" in text
    full = budget_config("full")
    assert full.prediction_max_window_voxels is None and prediction_overrides(full, None) == {}
