"""Planner presets: the residual-encoder rules (budget of one sample, no dataset-coverage cap,
residual topology) and their settings; the oracle against the reference is in
test_resenc_plan_oracle.py."""

from __future__ import annotations

import pytest

from selfunet.errors import SelfUNetError
from selfunet.planning.plan import plan_experiment, size_configuration
from selfunet.planning.presets import PRESETS, planner_settings


def test_presets_and_their_gpu_targets():
    assert list(PRESETS) == ["default", "resenc-m", "resenc-l", "resenc-xl"]
    assert [planner_settings(p).gpu_memory_gb for p in PRESETS] == [8.0, 8.0, 24.0, 40.0]
    assert planner_settings("resenc-l", 12).gpu_memory_gb == 12.0
    assert planner_settings("default").architecture == "plain"
    with pytest.raises(SelfUNetError, match="unknown planner preset 'resenc-xxl'"):
        planner_settings("resenc-xxl")
    with pytest.raises(SelfUNetError, match="must be positive"):
        planner_settings("resenc-m", 0)


def test_residual_2d_budget_holds_one_sample_not_the_reference_batch():
    """The default planner compares estimate / 12 x 2 with the 2D budget; the presets the estimate."""
    median = [1500.0, 1500.0]
    m = planner_settings("resenc-m")
    sized = size_configuration([1.0, 1.0], median, 1e12, 3, m)
    assert sized.estimate <= m.reference_budget_2d
    loose = size_configuration([1.0, 1.0], median, 1e12, 3, m.model_copy(update={"budget_per_reference_batch": True}))
    assert loose.estimate / 6 <= m.reference_budget_2d < loose.estimate
    assert loose.patch != sized.patch


def test_residual_presets_drop_the_dataset_coverage_cap():
    """Five small cases: the default planner caps a batch at 5% of the data, the presets at 100%."""
    median = [40.0, 40.0, 40.0]
    voxels = 5 * 40**3
    default = size_configuration([1.0, 1.0, 1.0], median, voxels, 2, planner_settings("default"))
    resenc = size_configuration([1.0, 1.0, 1.0], median, voxels, 2, planner_settings("resenc-m"))
    assert default.batch_size == 2  # 5% of 5 patches rounds to 0 -> the minimum
    assert resenc.batch_size == 5  # 100% of the data


def test_larger_presets_plan_larger_patches_or_batches(demo_fingerprint):
    plans = {p: plan_experiment(demo_fingerprint, planner_settings(p)) for p in ("resenc-m", "resenc-l", "resenc-xl")}
    full = {p: plan.configurations["3d_fullres"] for p, plan in plans.items()}
    volume = {p: c.batch_size * c.estimated_feature_map_elements for p, c in full.items()}
    assert volume["resenc-m"] <= volume["resenc-l"] <= volume["resenc-xl"]
    assert all(c.topology.architecture == "residual_encoder" for p in plans.values() for c in p.configurations.values())
