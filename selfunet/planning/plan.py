"""Planning (docs/explanation/design.md#plan-rules): turn a dataset fingerprint into every rule-based decision.

The rules are exact so that a fingerprint gives the same plan as the reference implementation
(see docs/reference/planning.md for the side-by-side comparison); the only deliberate differences are the
papers' cascade trigger (12.5%) and lowres step (1.01), both :class:`PlannerSettings` fields.

Medians over an even number of cases can end in .5: the rules use that exact median, and only
the ``median_shape`` stored in a configuration is rounded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console
from rich.table import Table

from selfunet.artifacts import atomic_write_bytes
from selfunet.errors import SelfUNetError
from selfunet.planning.fingerprint_types import Fingerprint
from selfunet.planning.plan_types import (
    ChannelNormalization,
    Configuration,
    NetworkTopology,
    Plan,
    PlannerSettings,
)
from selfunet.planning.topology import derive_topology, divisor_of, estimate_feature_map_elements
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)

#: channel names (case-insensitive) with a dedicated scheme; every other name gets z-score.
_SCHEME_BY_CHANNEL_NAME = {"ct": "ct", "nonorm": "none", "zscore": "zscore", "rescale_to_0_1": "rescale01"}


# ----------------------------------------------------------------------------------- spacing ---
def fullres_target_spacing(fingerprint: Fingerprint, settings: PlannerSettings) -> np.ndarray:
    """Per-axis median spacing, except a strongly anisotropic axis gets a finer (10th pct) one.

    Why: with e.g. (5, 0.8, 0.8) mm and few slices, resampling the finer cases to the median
    5 mm would throw away most of their slices; the 10th percentile keeps them, but never finer
    than the in-plane axes (a +1e-5 keeps the worst axis the coarsest, so the transpose holds).
    """
    spacings = np.array([c.spacing for c in fingerprint.cases], dtype=np.float64)
    sizes = np.array([c.shape_after_crop for c in fingerprint.cases], dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    median_size = np.percentile(sizes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [d for d in range(len(target)) if d != worst]
    max_other_spacing = max(target[d] for d in others)
    aniso_spacing = target[worst] > settings.anisotropy_spacing_ratio * max_other_spacing
    aniso_voxels = median_size[worst] * settings.anisotropy_size_ratio < min(median_size[d] for d in others)
    if aniso_spacing and aniso_voxels:
        finer = float(np.percentile(spacings[:, worst], settings.anisotropy_percentile))
        if finer < max_other_spacing:
            finer = max_other_spacing + 1e-5
        target[worst] = finer
    return target


def transpose_for(target_spacing: Sequence[float], two_d_only: bool) -> tuple[list[int], list[int]]:
    """Coarsest axis first (ties: the lower axis), the others in order; and the inverse."""
    first = 0 if two_d_only else int(np.argmax(target_spacing))
    forward = [first] + [d for d in range(len(target_spacing)) if d != first]
    backward = [forward.index(d) for d in range(len(forward))]
    return forward, backward


def median_shape_at(fingerprint: Fingerprint, target_spacing: Sequence[float]) -> np.ndarray:
    """Per-axis median of each case's cropped shape resampled to ``target_spacing`` (array order)."""
    shapes = [
        [round(s / t * n) for s, t, n in zip(case.spacing, target_spacing, case.shape_after_crop)]
        for case in fingerprint.cases
    ]
    return np.median(np.array(shapes, dtype=np.float64), axis=0)


# ------------------------------------------------------------------------------ normalization ---
def normalization_for(fingerprint: Fingerprint, settings: PlannerSettings) -> list[ChannelNormalization]:
    """Scheme per channel from its modality name; z-score inside the non-zero mask when cropping
    removed a lot (the zeros outside are then background, not signal, and would skew the stats)."""
    use_mask = fingerprint.median_relative_size_after_crop < settings.crop_ratio_for_nonzero_mask
    by_channel = {ch.channel: ch for ch in fingerprint.intensity}
    result = []
    for index, name in enumerate(fingerprint.dataset.channel_names):
        scheme = _SCHEME_BY_CHANNEL_NAME.get(name.casefold(), "zscore")
        if scheme == "ct":
            stats = by_channel.get(index)
            if stats is None:
                raise SelfUNetError(
                    f"fingerprint: channel {index} ({name}) is CT but has no foreground intensity statistics; "
                    "rerun `selfunet fingerprint`."
                )
            result.append(
                ChannelNormalization(
                    scheme="ct",
                    clip_low=stats.percentile_00_5,
                    clip_high=stats.percentile_99_5,
                    mean=stats.mean,
                    std=stats.std,
                )
            )
        else:
            result.append(ChannelNormalization(scheme=scheme, use_nonzero_mask=use_mask and scheme == "zscore"))
    return result


# ---------------------------------------------------------------------- one configuration ------
class _Sized:
    """Patch, topology, estimate and batch size of one configuration (before naming it)."""

    def __init__(
        self, patch: list[int], topology: NetworkTopology, estimate: int, batch_size: int
    ) -> None:
        self.patch = patch
        self.topology = topology
        self.estimate = estimate
        self.batch_size = batch_size


def initial_patch(spacing: Sequence[float], median_shape: Sequence[float], settings: PlannerSettings) -> list[float]:
    """The starting patch: same physical extent on every axis (or the median shape), clipped to it."""
    dim = len(spacing)
    if settings.initial_patch_rule == "median_shape":
        start = [float(m) for m in median_shape]
    else:
        inverse = 1 / np.array(spacing, dtype=np.float64)
        voxels = settings.initial_patch_voxels_3d if dim == 3 else settings.initial_patch_voxels_2d
        start = [round(v) for v in inverse * (voxels / np.prod(inverse)) ** (1 / dim)]
    return [min(p, float(m)) for p, m in zip(start, median_shape)]


def size_configuration(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    dataset_voxels: float,
    num_classes: int,
    settings: PlannerSettings,
) -> _Sized:
    """Initial patch -> topology -> shrink until the estimate fits the budget -> batch size."""
    dim: Literal[2, 3] = 3 if len(spacing) == 3 else 2
    budget = (settings.reference_budget_3d if dim == 3 else settings.reference_budget_2d) * (
        settings.gpu_memory_gb / settings.reference_memory_gb
    )
    reference_batch = settings.reference_batch_3d if dim == 3 else settings.reference_batch_2d
    topology, patch = derive_topology(spacing, initial_patch(spacing, median_shape, settings), settings, dim)
    estimate = estimate_feature_map_elements(topology, patch, num_classes)
    # default planner: the budget was calibrated for the reference batch, planning for batch >= 2
    # always; residual presets: one sample's estimate against the budget (their own calibration)
    scale = 2 / reference_batch if settings.budget_per_reference_batch else 1.0
    while estimate * scale > budget:
        ratios = [p / m for p, m in zip(patch, median_shape)]
        # the axis most over-represented relative to the image; ties go to the later axis
        axis = max(range(dim), key=lambda d: (ratios[d], d))
        # shrink by the divisor of the *shrunk* patch, so no valid size (e.g. 224 between 256
        # and 192 at 2^5) is skipped
        trial = list(patch)
        trial[axis] -= divisor_of(topology)[axis]
        if trial[axis] < 1:
            raise SelfUNetError(
                f"no {dim}D patch fits {settings.gpu_memory_gb} GB of GPU memory (patch {patch}, estimate "
                f"{estimate}); plan with a larger --gpu-memory-gb."
            )
        trial_topology, _ = derive_topology(spacing, trial, settings, dim)
        patch = list(patch)
        patch[axis] -= divisor_of(trial_topology)[axis]
        topology, patch = derive_topology(spacing, patch, settings, dim)
        estimate = estimate_feature_map_elements(topology, patch, num_classes)
    batch = round(budget / estimate * reference_batch)
    # at most 5% of the dataset's voxels in one batch: an overfitting guard for small datasets
    # (the residual presets set the fraction to 1, which drops the guard in practice)
    cap = round(dataset_voxels * settings.batch_cap_fraction / math.prod(float(p) for p in patch))
    batch = max(min(batch, cap), settings.min_batch_size)
    return _Sized(patch, topology, estimate, batch)


def _configuration(
    name: str,
    data_identifier: str,
    spacing: Sequence[float],
    median_shape: Sequence[float],
    sized: _Sized,
    normalization: list[ChannelNormalization],
    batch_dice: bool,
) -> Configuration:
    return Configuration(
        name=name,
        dimension=sized.topology.dimension,
        data_identifier=data_identifier,
        spacing=[float(s) for s in spacing],
        median_shape=[round(float(m)) for m in median_shape],
        patch_size=[int(p) for p in sized.patch],
        batch_size=int(sized.batch_size),
        normalization=normalization,
        topology=sized.topology,
        batch_dice=batch_dice,
        estimated_feature_map_elements=int(sized.estimate),
    )


# ------------------------------------------------------------------------------------ plan ------
def _validate(fingerprint: Fingerprint) -> None:
    if not fingerprint.cases:
        raise SelfUNetError("fingerprint has no cases; rerun `selfunet fingerprint` on a dataset with training cases.")
    for case in fingerprint.cases:
        if len(case.spacing) != 3 or len(case.shape_after_crop) != 3:
            raise SelfUNetError(
                f"fingerprint case {case.case_id}: spacing {case.spacing} and shape_after_crop "
                f"{case.shape_after_crop} must have 3 entries (z, y, x); rerun `selfunet fingerprint`."
            )
        if any(s <= 0 for s in case.spacing) or any(n <= 0 for n in case.shape_after_crop):
            raise SelfUNetError(
                f"fingerprint case {case.case_id}: spacing {case.spacing} and shape_after_crop "
                f"{case.shape_after_crop} must be positive; fix the image header or remove the case."
            )
    if not fingerprint.dataset.labels:
        raise SelfUNetError("fingerprint: the dataset has no labels; add 'labels' to dataset.json.")


def _num_classes(fingerprint: Fingerprint) -> int:
    """Label classes incl. background; the ignore label (always the highest value) is no class."""
    ignore = fingerprint.dataset.label_scheme.ignore_label
    return len(fingerprint.dataset.labels) - (1 if ignore is not None else 0)


def plan_experiment(fingerprint: Fingerprint, settings: PlannerSettings | None = None) -> Plan:
    """Every configuration the rules call for: 2d, 3d_fullres and, when triggered, the cascade."""
    settings = settings or PlannerSettings()
    _validate(fingerprint)
    # the memory estimate counts the network's output channels (regions or classes)
    num_classes = fingerprint.dataset.label_scheme.num_outputs(_num_classes(fingerprint))
    num_cases = len(fingerprint.cases)
    two_d_only = all(case.shape_after_crop[0] == 1 for case in fingerprint.cases)

    target = fullres_target_spacing(fingerprint, settings)
    forward, backward = transpose_for(target, two_d_only)
    median = median_shape_at(fingerprint, target)[forward]
    fullres_spacing = target[forward]
    dataset_voxels = float(np.prod(median, dtype=np.float64) * num_cases)
    normalization = normalization_for(fingerprint, settings)
    configurations: dict[str, Configuration] = {}

    # 2D: in-plane at the fullres target spacing; the out-of-plane axis is never resampled
    sized_2d = size_configuration(fullres_spacing[1:], median[1:], dataset_voxels, num_classes, settings)
    spacings = np.array([c.spacing for c in fingerprint.cases], dtype=np.float64)[:, forward]
    sizes = np.array([c.shape_after_crop for c in fingerprint.cases], dtype=np.float64)[:, forward]
    configurations["2d"] = _configuration(
        "2d",
        "2d",
        [float(np.median(spacings[:, 0])), *fullres_spacing[1:]],
        [float(np.median(sizes[:, 0])), *median[1:]],
        sized_2d,
        normalization,
        batch_dice=True,
    )
    if two_d_only:
        log.info("every case has a single slice: planning the 2d configuration only")
        return _assemble(fingerprint, settings, forward, backward, configurations)

    sized_full = size_configuration(fullres_spacing, median, dataset_voxels, num_classes, settings)
    lowres = _plan_lowres(fullres_spacing, median, sized_full, num_cases, num_classes, normalization, settings)
    configurations["3d_fullres"] = _configuration(
        "3d_fullres", "3d_fullres", fullres_spacing, median, sized_full, normalization, batch_dice=lowres is not None
    )
    if lowres is not None:
        configurations["3d_lowres"] = lowres
        configurations["3d_cascade_fullres"] = configurations["3d_fullres"].model_copy(
            update={"name": "3d_cascade_fullres", "previous_stage": "3d_lowres"}
        )
    return _assemble(fingerprint, settings, forward, backward, configurations)


def _plan_lowres(
    fullres_spacing: np.ndarray,
    median: np.ndarray,
    sized_full: _Sized,
    num_cases: int,
    num_classes: int,
    normalization: list[ChannelNormalization],
    settings: PlannerSettings,
) -> Configuration | None:
    """The cascade's first stage, or None when the fullres patch already sees enough context."""
    median_voxels = float(np.prod(median, dtype=np.float64))
    fullres_voxels = median_voxels
    patch_voxels = float(math.prod(sized_full.patch))
    if patch_voxels / median_voxels >= settings.cascade_trigger_fraction:
        return None
    spacing = fullres_spacing.astype(np.float64).copy()
    lowres: tuple[np.ndarray, list[int], _Sized] | None = None
    while patch_voxels / median_voxels < settings.lowres_target_fraction:
        # coarsen the finest axes first until they are within 2x of the coarsest, then all
        too_fine = spacing.max() / spacing > 2
        if np.any(too_fine):
            spacing[too_fine] *= settings.lowres_spacing_step
        else:
            spacing *= settings.lowres_spacing_step
        scaled = fullres_spacing / spacing * median
        median_voxels = float(np.prod(scaled, dtype=np.float64))
        shape = [round(float(s)) for s in scaled]
        sized = size_configuration(spacing, shape, median_voxels * num_cases, num_classes, settings)
        lowres = (spacing.copy(), shape, sized)
        patch_voxels = float(math.prod(sized.patch))
        log.debug("lowres candidate: spacing %s patch %s median %s", spacing, sized.patch, shape)
    if lowres is None or fullres_voxels / median_voxels < settings.lowres_min_size_ratio:
        log.info("dropping 3d_lowres: its median image is less than %sx smaller", settings.lowres_min_size_ratio)
        return None
    spacing, shape, sized = lowres
    config = _configuration("3d_lowres", "3d_lowres", spacing, shape, sized, normalization, batch_dice=False)
    return config.model_copy(update={"next_stage": "3d_cascade_fullres"})


def _assemble(
    fingerprint: Fingerprint,
    settings: PlannerSettings,
    forward: list[int],
    backward: list[int],
    configurations: dict[str, Configuration],
) -> Plan:
    return Plan(
        dataset_name=fingerprint.dataset.name,
        num_input_channels=len(fingerprint.dataset.channel_names),
        num_classes=_num_classes(fingerprint),
        labels=dict(fingerprint.dataset.labels),
        label_scheme=fingerprint.dataset.label_scheme,
        transpose_forward=forward,
        transpose_backward=backward,
        settings=settings,
        configurations=configurations,
    )


# ------------------------------------------------------------------------------------- CLI ------
def run_plan(
    work: Path,
    gpu_memory_gb: float | None = None,
    show: bool = False,
    nnunet_fingerprint: Path | None = None,
    nnunet_dataset_json: Path | None = None,
    console: Console | None = None,
    preset: str = "default",
    fingerprint_file: Path | None = None,
) -> Plan:
    """``selfunet plan``: fingerprint (ours or an nnU-Net v2 one) -> WORK/plan.json.

    ``preset`` names the planner (:mod:`selfunet.planning.presets`); ``gpu_memory_gb`` None means
    the preset's own target (8 GB for the default planner and ``resenc-m``). ``fingerprint_file``
    reads the fingerprint from another work directory and copies it into WORK, which is how a
    preset's work directory (``WORK/planners/<preset>``) shares the default one's fingerprint."""
    from selfunet.planning.presets import planner_settings

    settings = planner_settings(preset, gpu_memory_gb)
    workdir = WorkDir(work)
    if nnunet_fingerprint is not None or nnunet_dataset_json is not None:
        if nnunet_fingerprint is None or nnunet_dataset_json is None:
            raise SelfUNetError(
                "--nnunet-fingerprint and --nnunet-dataset-json go together: give both files."
            )
        from selfunet.planning.nnunet_compat import fingerprint_from_nnunet

        fingerprint = fingerprint_from_nnunet(nnunet_fingerprint, nnunet_dataset_json)
    elif fingerprint_file is not None:
        fingerprint = Fingerprint.load(fingerprint_file)
        content = Path(fingerprint_file).read_bytes()
        if not workdir.fingerprint.is_file() or workdir.fingerprint.read_bytes() != content:
            atomic_write_bytes(workdir.fingerprint, content)
    else:
        fingerprint = Fingerprint.load(workdir.fingerprint)
    plan = plan_experiment(fingerprint, settings)
    plan.save(workdir.plan)
    log.info("wrote %s (%s)", workdir.plan, ", ".join(plan.configurations))
    if show:
        (console or Console()).print(plan_table(plan))
    return plan


def _fmt(values: Sequence[object]) -> str:
    return "x".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)


def plan_table(plan: Plan) -> Table:
    """One column per configuration, one row per decision: what a user checks before training."""
    names = list(plan.configurations)
    table = Table(title=f"plan: {plan.dataset_name} (axes {plan.transpose_forward}, coarsest first)")
    table.add_column("")
    for name in names:
        table.add_column(name)
    configs = [plan.configurations[n] for n in names]

    def norm(config: Configuration) -> str:
        parts = []
        for n in config.normalization:
            parts.append(n.scheme + ("+mask" if n.use_nonzero_mask else ""))
        return ", ".join(parts)

    rows: list[tuple[str, list[str]]] = [
        ("spacing (mm)", [_fmt(c.spacing) for c in configs]),
        ("median shape", [_fmt(c.median_shape) for c in configs]),
        ("patch size", [_fmt(c.patch_size) for c in configs]),
        ("batch size", [str(c.batch_size) for c in configs]),
        ("stages", [str(c.topology.num_stages) for c in configs]),
        ("strides", [" ".join(_fmt(s) for s in c.topology.strides) for c in configs]),
        ("kernels", [" ".join(_fmt(k) for k in c.topology.kernel_sizes) for c in configs]),
        ("features", [" ".join(str(f) for f in c.topology.features_per_stage) for c in configs]),
        ("normalization", [norm(c) for c in configs]),
        ("batch dice", [str(c.batch_dice) for c in configs]),
        ("memory estimate", [f"{c.estimated_feature_map_elements / 1e6:.1f}M" for c in configs]),
        ("previous stage", [c.previous_stage or "-" for c in configs]),
        ("data", [c.data_identifier for c in configs]),
    ]
    for label, cells in rows:
        table.add_row(label, *cells)
    return table
