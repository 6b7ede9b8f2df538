"""The fingerprint artifact (docs/explanation/design.md#fingerprint): what planning needs to know about a dataset.

Kept apart from the computation in :mod:`selfunet.planning.fingerprint` so that the planner (and users who
import an nnU-Net v2 fingerprint) depend only on the data model.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from selfunet.artifacts import Artifact
from selfunet.data.labels import LabelScheme


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetSummary(_Frozen):
    root: str
    name: str
    layout: str
    channel_names: list[str]
    labels: dict[str, str]
    """label value (as a string, JSON keys) -> name."""
    file_ending: str
    num_training: int
    num_test: int = 0
    label_scheme: LabelScheme = LabelScheme()
    """regions and ignore label, as declared in dataset.json."""


class CaseFingerprint(_Frozen):
    case_id: str
    shape_before_crop: list[int]
    """spatial shape (z, y, x) of the original image."""
    shape_after_crop: list[int]
    """spatial shape of the non-zero bounding box."""
    crop_bbox: list[list[int]]
    """per axis [start, stop) of the non-zero bounding box."""
    spacing: list[float]
    """voxel spacing in array order (z, y, x), mm."""
    label_voxel_counts: dict[str, int]
    """label value (as a string) -> number of voxels in the cropped label map."""


class ChannelIntensity(_Frozen):
    """Foreground (label > 0) intensity statistics of one channel over all training cases."""

    channel: int
    modality: str
    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float
    num_samples: int


class Fingerprint(Artifact):
    SCHEMA_VERSION: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "`selfunet fingerprint DATASET --work WORK`"

    dataset: DatasetSummary
    cases: list[CaseFingerprint]
    intensity: list[ChannelIntensity]
    median_relative_size_after_crop: float
    """median over cases of prod(shape_after_crop) / prod(shape_before_crop)."""
    max_foreground_samples: int
    """bound on foreground voxels sampled for the intensity statistics, over the whole dataset."""
    seed: int
