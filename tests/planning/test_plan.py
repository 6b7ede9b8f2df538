"""The planning rules (docs/explanation/design.md#plan-rules), each on its own, plus the CLI and the nnU-Net import."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.errors import SelfUNetError
from selfunet.planning.fingerprint_types import CaseFingerprint, ChannelIntensity, DatasetSummary, Fingerprint
from selfunet.planning.nnunet_compat import fingerprint_from_nnunet
from selfunet.planning.plan import (
    fullres_target_spacing,
    initial_patch,
    normalization_for,
    plan_experiment,
    size_configuration,
)
from selfunet.planning.plan_types import Plan, PlannerSettings
from selfunet.planning.topology import derive_topology

SETTINGS = PlannerSettings()


def make_fingerprint(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    channels: Sequence[str] = ("MRI",),
    crop_ratio: float = 1.0,
    num_labels: int = 2,
) -> Fingerprint:
    cases = [
        CaseFingerprint(
            case_id=f"case_{i:03d}",
            shape_before_crop=list(shape),
            shape_after_crop=list(shape),
            crop_bbox=[[0, s] for s in shape],
            spacing=list(spacing),
            label_voxel_counts={},
        )
        for i, (spacing, shape) in enumerate(zip(spacings, shapes))
    ]
    intensity = [
        ChannelIntensity(
            channel=i, modality=name, mean=50.0 + i, std=20.0, median=48.0, min=-1000.0, max=2000.0,
            percentile_00_5=-900.0, percentile_99_5=400.0, num_samples=100,
        )
        for i, name in enumerate(channels)
    ]
    summary = DatasetSummary(
        root="/data/x", name="Synthetic", layout="msd", channel_names=list(channels),
        labels={str(v): f"label{v}" for v in range(num_labels)}, file_ending=".nii.gz", num_training=len(cases),
    )
    return Fingerprint(
        dataset=summary, cases=cases, intensity=intensity, median_relative_size_after_crop=crop_ratio,
        max_foreground_samples=10**8, seed=0,
    )


def uniform(spacing: Sequence[float], shape: Sequence[int], n: int = 10, **kwargs) -> Fingerprint:
    return make_fingerprint([spacing] * n, [shape] * n, **kwargs)


# ------------------------------------------------------------------------------ target spacing ---
def test_target_spacing_is_per_axis_median() -> None:
    fp = make_fingerprint([[1.0, 0.5, 0.6], [2.0, 0.7, 0.8], [3.0, 0.9, 1.0]], [[100, 200, 200]] * 3)
    assert list(fullres_target_spacing(fp, SETTINGS)) == [2.0, 0.7, 0.8]


def _aniso_fingerprint(z_spacings: Sequence[float], z_size: int, inplane: float = 0.8) -> Fingerprint:
    return make_fingerprint([[z, inplane, inplane] for z in z_spacings], [[z_size, 512, 512]] * len(z_spacings))


def test_anisotropic_axis_takes_10th_percentile() -> None:
    zs = [2.5, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 7.0]
    target = fullres_target_spacing(_aniso_fingerprint(zs, z_size=40), SETTINGS)
    assert target[0] == pytest.approx(np.percentile(zs, 10))
    assert target[0] < np.median(zs)
    assert list(target[1:]) == [0.8, 0.8]


def test_anisotropic_rule_needs_coarse_spacing() -> None:
    zs = [2.0] * 5 + [2.3] * 5  # median 2.15 < 3 x 0.8: not anisotropic enough
    target = fullres_target_spacing(_aniso_fingerprint(zs, z_size=40), SETTINGS)
    assert target[0] == pytest.approx(np.median(zs))


def test_anisotropic_rule_needs_few_voxels_on_that_axis() -> None:
    zs = [2.5, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 7.0]
    # 200 slices x 3 = 600 is not smaller than 512 in-plane voxels
    target = fullres_target_spacing(_aniso_fingerprint(zs, z_size=200), SETTINGS)
    assert target[0] == pytest.approx(np.median(zs))


def test_anisotropic_10th_percentile_finer_than_inplane_gets_inplane_plus_epsilon() -> None:
    zs = [0.5, 0.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    target = fullres_target_spacing(_aniso_fingerprint(zs, z_size=30), SETTINGS)
    assert target[0] == pytest.approx(0.8 + 1e-5, abs=1e-9)
    # still the coarsest axis, so it stays first in plan order
    plan = plan_experiment(_aniso_fingerprint(zs, z_size=30))
    assert plan.transpose_forward == [0, 1, 2]


def test_transpose_puts_coarsest_axis_first_and_inverts() -> None:
    fp = uniform([0.7, 0.75, 2.0], [300, 310, 120])
    plan = plan_experiment(fp)
    assert plan.transpose_forward == [2, 0, 1]
    assert [plan.transpose_forward[i] for i in plan.transpose_backward] == [0, 1, 2]
    fullres = plan.configurations["3d_fullres"]
    assert fullres.spacing == [2.0, 0.7, 0.75]
    assert fullres.median_shape == [120, 300, 310]
    assert plan.configurations["2d"].spacing[1:] == [0.7, 0.75]


# --------------------------------------------------------------------------------- normalization ---
def test_ct_channel_clips_and_uses_dataset_stats() -> None:
    fp = uniform([1.0, 1.0, 1.0], [64, 64, 64], channels=("CT",), crop_ratio=0.5)
    (norm,) = normalization_for(fp, SETTINGS)
    assert norm.scheme == "ct"
    assert (norm.clip_low, norm.clip_high, norm.mean, norm.std) == (-900.0, 400.0, 50.0, 20.0)
    assert norm.use_nonzero_mask is False


def test_zscore_uses_nonzero_mask_only_when_cropping_removed_a_quarter() -> None:
    cropped = uniform([1.0, 1.0, 1.0], [64, 64, 64], channels=("T1", "FLAIR"), crop_ratio=0.74)
    assert [n.use_nonzero_mask for n in normalization_for(cropped, SETTINGS)] == [True, True]
    barely = uniform([1.0, 1.0, 1.0], [64, 64, 64], channels=("T1",), crop_ratio=0.75)
    assert [n.use_nonzero_mask for n in normalization_for(barely, SETTINGS)] == [False]


def test_special_channel_names_pick_their_scheme() -> None:
    fp = uniform([1.0, 1.0, 1.0], [64, 64, 64], channels=("noNorm", "rescale_to_0_1", "ct", "ADC"), crop_ratio=0.5)
    norms = normalization_for(fp, SETTINGS)
    assert [n.scheme for n in norms] == ["none", "rescale01", "ct", "zscore"]
    # the mask rule applies to z-score only
    assert [n.use_nonzero_mask for n in norms] == [False, False, False, True]


# --------------------------------------------------------------------------- patch and batch ------
def test_initial_patch_has_equal_physical_extent_and_is_clipped() -> None:
    patch = initial_patch([2.0, 1.0, 1.0], [1000, 1000, 1000], SETTINGS)
    assert patch[1] == patch[2]
    assert patch[0] == pytest.approx(patch[1] / 2, abs=1)
    assert math.prod(patch) == pytest.approx(256**3, rel=0.01)
    clipped = initial_patch([2.0, 1.0, 1.0], [40, 1000, 90], SETTINGS)
    assert clipped[0] == 40 and clipped[2] == 90


def test_initial_patch_median_shape_option() -> None:
    settings = PlannerSettings(initial_patch_rule="median_shape")
    assert initial_patch([2.0, 1.0, 1.0], [40, 300, 90.5], settings) == [40, 300, 90.5]


def test_memory_shrink_loop_fits_budget() -> None:
    median = [400.0, 400.0, 400.0]
    for gb in (4.0, 8.0, 16.0):
        settings = PlannerSettings(gpu_memory_gb=gb)
        sized = size_configuration([1.0, 1.0, 1.0], median, 1e12, 3, settings)
        budget = settings.reference_budget_3d * gb / 8
        assert sized.estimate / settings.reference_batch_3d * 2 <= budget
        # the patch stays valid for its topology
        topology, padded = derive_topology([1.0, 1.0, 1.0], sized.patch, settings, 3)
        assert padded == sized.patch and topology == sized.topology
    small = size_configuration([1.0, 1.0, 1.0], median, 1e12, 3, PlannerSettings(gpu_memory_gb=4.0))
    large = size_configuration([1.0, 1.0, 1.0], median, 1e12, 3, PlannerSettings(gpu_memory_gb=16.0))
    assert math.prod(small.patch) < math.prod(large.patch)


def test_shrink_loop_reduces_the_axis_largest_relative_to_the_image() -> None:
    # the image is long in x: the patch keeps its x extent longest
    sized = size_configuration([1.0, 1.0, 1.0], [200.0, 200.0, 1000.0], 1e12, 3, SETTINGS)
    assert sized.patch[2] > sized.patch[0]


def test_no_patch_fits_tiny_memory() -> None:
    with pytest.raises(SelfUNetError, match="gpu-memory-gb"):
        size_configuration([1.0, 1.0, 1.0], [200.0, 200.0, 200.0], 1e12, 3, PlannerSettings(gpu_memory_gb=1e-8))


def test_batch_size_capped_at_five_percent_of_dataset() -> None:
    median = [40.0, 48.0, 40.0]
    patch_voxels = 40 * 48 * 40
    dataset_voxels = math.prod(median) * 100
    sized = size_configuration([1.0, 1.0, 1.0], median, dataset_voxels, 3, SETTINGS)
    assert sized.patch == [40, 48, 40]
    uncapped = round(SETTINGS.reference_budget_3d / sized.estimate * 2)
    cap = round(0.05 * dataset_voxels / patch_voxels)
    assert cap < uncapped
    assert sized.batch_size == cap


def test_batch_size_never_below_two() -> None:
    sized = size_configuration([1.0, 1.0, 1.0], [40.0, 48.0, 40.0], 40 * 48 * 40, 3, SETTINGS)
    assert sized.batch_size == 2


def test_batch_size_uses_spare_memory() -> None:
    sized = size_configuration([1.0, 1.0, 1.0], [40.0, 48.0, 40.0], 1e12, 3, SETTINGS)
    assert sized.batch_size == round(SETTINGS.reference_budget_3d / sized.estimate * 2) > 2


# ---------------------------------------------------------------------------------- cascade -------
def test_no_cascade_when_patch_covers_the_image() -> None:
    plan = plan_experiment(uniform([1.0, 1.0, 1.0], [36, 50, 35]))
    assert set(plan.configurations) == {"2d", "3d_fullres"}
    assert plan.configurations["3d_fullres"].batch_dice is False
    assert plan.configurations["2d"].batch_dice is True


def test_cascade_planned_for_large_images() -> None:
    plan = plan_experiment(uniform([1.0, 0.8, 0.8], [430, 512, 512], channels=("CT",)))
    configs = plan.configurations
    assert set(configs) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    full, low, cascade = configs["3d_fullres"], configs["3d_lowres"], configs["3d_cascade_fullres"]
    assert math.prod(full.patch_size) / math.prod(full.median_shape) < SETTINGS.cascade_trigger_fraction
    assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing))
    assert math.prod(low.patch_size) / math.prod(low.median_shape) >= 0.25
    assert math.prod(full.median_shape) / math.prod(low.median_shape) >= 2
    assert (low.batch_dice, full.batch_dice, cascade.batch_dice) == (False, True, True)
    assert low.next_stage == "3d_cascade_fullres" and cascade.previous_stage == "3d_lowres"
    assert low.data_identifier == "3d_lowres"
    assert cascade.data_identifier == full.data_identifier == "3d_fullres"
    assert cascade.patch_size == full.patch_size and cascade.topology == full.topology


def test_lowres_coarsens_only_the_fine_axes_first() -> None:
    plan = plan_experiment(uniform([3.6, 0.8, 0.8], [100, 512, 512], channels=("CT",)))
    low, full = plan.configurations["3d_lowres"], plan.configurations["3d_fullres"]
    # in-plane stayed more than 2x finer than z throughout, so z never moved
    assert low.spacing[0] == full.spacing[0]
    assert low.spacing[1] > full.spacing[1] and low.spacing[2] > full.spacing[2]


def test_lowres_steps_by_the_step_factor() -> None:
    plan = plan_experiment(uniform([1.0, 1.0, 1.0], [400, 400, 400]))
    low = plan.configurations["3d_lowres"]
    steps = math.log(low.spacing[0]) / math.log(SETTINGS.lowres_spacing_step)
    assert steps == pytest.approx(round(steps), abs=1e-6)


def test_cascade_trigger_is_a_setting() -> None:
    # the fullres patch covers ~13% of this image: between the papers' 12.5% and the v2 code's 25%
    fp = uniform([2.5, 0.8, 0.8], [100, 400, 400])
    full = plan_experiment(fp).configurations["3d_fullres"]
    coverage = math.prod(full.patch_size) / math.prod(full.median_shape)
    assert 0.125 < coverage < 0.25
    assert "3d_lowres" not in plan_experiment(fp).configurations
    assert "3d_lowres" in plan_experiment(fp, PlannerSettings(cascade_trigger_fraction=0.25)).configurations


def test_lowres_dropped_when_not_two_times_smaller() -> None:
    fp = uniform([1.0, 1.0, 1.0], [150, 300, 300])
    triggered = PlannerSettings(cascade_trigger_fraction=0.25)
    assert "3d_lowres" not in plan_experiment(fp, triggered).configurations
    kept = plan_experiment(fp, PlannerSettings(cascade_trigger_fraction=0.25, lowres_min_size_ratio=1.0))
    low, full = kept.configurations["3d_lowres"], kept.configurations["3d_fullres"]
    assert math.prod(full.median_shape) / math.prod(low.median_shape) < 2


# -------------------------------------------------------------------------------- 2D and plan ------
def test_two_d_only_dataset_plans_only_2d() -> None:
    plan = plan_experiment(uniform([1.0, 0.3, 0.3], [1, 600, 800]))
    assert list(plan.configurations) == ["2d"]
    two_d = plan.configurations["2d"]
    assert plan.transpose_forward == [0, 1, 2]
    assert two_d.dimension == 2 and len(two_d.patch_size) == 2
    assert two_d.topology.dimension == 2
    assert two_d.spacing == [1.0, 0.3, 0.3]


def test_2d_configuration_works_in_plane() -> None:
    plan = plan_experiment(uniform([3.0, 0.7, 0.7], [80, 512, 512]))
    two_d = plan.configurations["2d"]
    assert two_d.data_identifier == "2d"
    assert two_d.spacing == [3.0, 0.7, 0.7]
    assert two_d.median_shape == [80, 512, 512]
    assert two_d.patch_size == [512, 512]
    assert two_d.batch_size >= 2 and two_d.batch_dice


def test_plan_fields_and_roundtrip(tmp_path: Path) -> None:
    plan = plan_experiment(uniform([1.0, 1.0, 1.0], [64, 64, 64], channels=("T1", "T2"), num_labels=3))
    assert (plan.num_input_channels, plan.num_classes) == (2, 3)
    assert plan.dataset_name == "Synthetic"
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan


def test_empty_or_bad_fingerprint_rejected() -> None:
    with pytest.raises(SelfUNetError, match="no cases"):
        plan_experiment(make_fingerprint([], []))
    with pytest.raises(SelfUNetError, match="case_000"):
        plan_experiment(make_fingerprint([[1.0, -1.0, 1.0]], [[10, 10, 10]]))


# ----------------------------------------------------------------------------------- CLI ----------
def test_cli_writes_plan_and_shows_table(tmp_path: Path) -> None:
    uniform([1.0, 1.0, 1.0], [36, 50, 35]).save(tmp_path / "fingerprint.json")
    result = CliRunner().invoke(app, ["plan", str(tmp_path), "--show"])
    assert result.exit_code == 0, result.output
    plan = Plan.load(tmp_path / "plan.json")
    assert set(plan.configurations) == {"2d", "3d_fullres"}
    for text in ("3d_fullres", "patch size", "batch size", "strides", "memory estimate", "zscore"):
        assert text in result.output


def test_cli_gpu_memory_changes_plan(tmp_path: Path) -> None:
    uniform([1.0, 1.0, 1.0], [300, 300, 300]).save(tmp_path / "fingerprint.json")
    assert CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu-memory-gb", "4"]).exit_code == 0
    small = Plan.load(tmp_path / "plan.json").configurations["3d_fullres"]
    assert CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu-memory-gb", "24"]).exit_code == 0
    large = Plan.load(tmp_path / "plan.json").configurations["3d_fullres"]
    assert math.prod(small.patch_size) < math.prod(large.patch_size)
    assert large.estimated_feature_map_elements > small.estimated_feature_map_elements


def test_cli_missing_fingerprint_names_the_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(tmp_path)])
    assert result.exit_code == 1
    assert "fingerprint" in result.output
    assert not (tmp_path / "plan.json").exists()


# ------------------------------------------------------------------------------ nnU-Net import -----
def write_nnunet_files(
    folder: Path, fingerprint_extra: dict | None = None, labels: dict | None = None
) -> tuple[Path, Path]:
    fingerprint = {
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3000.0, "mean": 99.5, "median": 101.0, "min": -1024.0, "percentile_00_5": -980.0,
                  "percentile_99_5": 1500.0, "std": 140.25},
        },
        "median_relative_size_after_cropping": 0.9,
        "shapes_after_crop": [[90, 512, 512], [100, 512, 512], [80, 500, 510]],
        "spacings": [[5.0, 0.8, 0.8], [2.5, 0.7, 0.7], [5.0, 0.9, 0.9]],
        **(fingerprint_extra or {}),
    }
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": labels or {"background": 0, "spleen": 1},
        "numTraining": 3,
        "file_ending": ".nii.gz",
        "name": "Spleenish",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder / "dataset_fingerprint.json", folder / "dataset.json"


def test_nnunet_fingerprint_converted(tmp_path: Path) -> None:
    fp_path, ds_path = write_nnunet_files(tmp_path)
    fp = fingerprint_from_nnunet(fp_path, ds_path)
    assert [c.spacing for c in fp.cases] == [[5.0, 0.8, 0.8], [2.5, 0.7, 0.7], [5.0, 0.9, 0.9]]
    assert [c.shape_after_crop for c in fp.cases][2] == [80, 500, 510]
    assert fp.dataset.labels == {"0": "background", "1": "spleen"}
    assert fp.dataset.channel_names == ["CT"]
    assert fp.dataset.name == "Spleenish"
    (channel,) = fp.intensity
    assert (channel.mean, channel.std, channel.percentile_00_5, channel.percentile_99_5) == (
        99.5, 140.25, -980.0, 1500.0,
    )
    assert fp.median_relative_size_after_crop == 0.9
    (norm,) = plan_experiment(fp).configurations["3d_fullres"].normalization
    assert (norm.scheme, norm.clip_low, norm.clip_high, norm.mean, norm.std) == ("ct", -980.0, 1500.0, 99.5, 140.25)


def test_nnunet_fingerprint_missing_key_named(tmp_path: Path) -> None:
    fp_path, ds_path = write_nnunet_files(tmp_path)
    raw = json.loads(fp_path.read_text())
    del raw["spacings"]
    fp_path.write_text(json.dumps(raw))
    with pytest.raises(SelfUNetError, match="spacings"):
        fingerprint_from_nnunet(fp_path, ds_path)


def test_nnunet_region_labels_rejected(tmp_path: Path) -> None:
    fp_path, ds_path = write_nnunet_files(tmp_path, labels={"background": 0, "whole": [1, 2]})
    with pytest.raises(SelfUNetError, match="region"):
        fingerprint_from_nnunet(fp_path, ds_path)


def test_cli_plans_from_nnunet_fingerprint(tmp_path: Path) -> None:
    fp_path, ds_path = write_nnunet_files(tmp_path / "nnunet")
    work = tmp_path / "work"
    args = ["plan", str(work), "--nnunet-fingerprint", str(fp_path), "--nnunet-dataset-json", str(ds_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Plan.load(work / "plan.json").dataset_name == "Spleenish"
    alone = CliRunner().invoke(app, ["plan", str(work), "--nnunet-fingerprint", str(fp_path)])
    assert alone.exit_code == 1 and "both" in alone.output


def test_plans_the_demo_dataset_fingerprint(demo_fingerprint: Fingerprint) -> None:
    """End to end with a fingerprint computed from real NIfTI files (the demo task)."""
    plan = plan_experiment(demo_fingerprint)
    assert {"2d", "3d_fullres"} <= set(plan.configurations)
    fullres = plan.configurations["3d_fullres"]
    assert len(fullres.normalization) == len(demo_fingerprint.dataset.channel_names)
    topology, padded = derive_topology(fullres.spacing, fullres.patch_size, plan.settings, 3)
    assert padded == fullres.patch_size and topology == fullres.topology
    assert fullres.batch_size >= 2
