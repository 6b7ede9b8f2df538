"""Per-case metrics of label maps (docs/explanation/design.md#evaluation): TP/FP/FN, Dice, IoU, and NSD/HD95 in mm.

The empty-mask rules are applied explicitly, in one place (:func:`evaluate_arrays`), and written
into every table as :data:`EMPTY_MASK_RULE`:

* reference and prediction both empty: Dice, IoU, NSD and HD95 are undefined (NaN) and left out
  of every mean; the case still appears in the per-case table;
* exactly one side empty: Dice = IoU = 0, NSD = 0, and HD95 = the worst case, defined as the
  image diagonal in mm (:func:`selfunet.evaluation.surface.image_diagonal_mm`); it is counted in the mean
  and flagged in the per-case table, never dropped.

Spacing is in array order (as :func:`selfunet.data.io.read_image` returns it). Surface definitions
(surface elements, their areas, distances) are in :mod:`selfunet.evaluation.surface`; the summary
over cases is :mod:`selfunet.evaluation.summary`; reading folders of files is
:mod:`selfunet.evaluation.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from selfunet.errors import SelfUNetError
from selfunet.evaluation.surface import image_diagonal_mm, surface_distances, surfel_distances

EMPTY_MASK_RULE = (
    "Reference and prediction both empty: Dice, IoU, NSD and HD95 are undefined (NaN) and left out "
    "of the means. Exactly one side empty: Dice = IoU = NSD = 0 and HD95 = the worst case, the image "
    "diagonal in mm; these count in the means."
)

#: the metrics every evaluation reports, in table order; NSD and HD95 follow when asked.
BASE_METRICS: tuple[str, ...] = ("dice", "iou", "tp", "fp", "fn")


@dataclass(frozen=True)
class ClassMetrics:
    """The metrics of one class in one case."""

    tp: int
    fp: int
    fn: int
    dice: float
    """2TP/(2TP+FP+FN); NaN when reference and prediction are both empty."""
    iou: float
    """TP/(TP+FP+FN); NaN when both are empty."""
    reference_empty: bool
    prediction_empty: bool
    nsd: float | None = None
    """normalized surface Dice at the tolerance; None when not asked."""
    hd95: float | None = None
    """mm; None when not asked."""

    @property
    def one_side_empty(self) -> bool:
        return self.reference_empty != self.prediction_empty


def _validate_inputs(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], ignore_mask: np.ndarray | None
) -> tuple[float, ...]:
    if prediction.shape != reference.shape:
        raise SelfUNetError(
            f"prediction shape {prediction.shape} differs from reference shape {reference.shape}; "
            "predictions must be on the reference image grid."
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != reference.ndim:
        raise SelfUNetError(f"spacing {spacing} has {len(spacing)} values for a {reference.ndim}D label map.")
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise SelfUNetError(f"spacing {spacing}: every voxel size must be a positive number of mm.")
    if ignore_mask is not None and ignore_mask.shape != reference.shape:
        raise SelfUNetError(f"ignore_mask shape {ignore_mask.shape} differs from the label map's {reference.shape}.")
    return spacing


def evaluate_arrays(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    nsd_tolerance_mm: float | None = None,
    hd95: bool = False,
    ignore_mask: np.ndarray | None = None,
    regions: Mapping[int, Sequence[int]] | None = None,
) -> dict[int, ClassMetrics]:
    """Metrics of each label in ``labels`` for one case (label maps on one grid, array order).

    ``ignore_mask`` (True = ignore) removes voxels from both label maps before anything is
    counted, e.g. the ``-1`` region outside a body mask or the dataset's ``ignore`` label; surfaces
    are those of the remaining masks. ``regions`` maps a key of ``labels`` to the label values that
    form it (region-based datasets: the region is the union of those values in both maps).
    """
    spacing = _validate_inputs(prediction, reference, spacing, ignore_mask)
    if nsd_tolerance_mm is not None and not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise SelfUNetError(f"NSD tolerance must be a number of mm >= 0, got {nsd_tolerance_mm}.")
    keep = None if ignore_mask is None else ~np.asarray(ignore_mask, dtype=bool)
    surfaces = nsd_tolerance_mm is not None or hd95
    worst_hd95 = image_diagonal_mm(reference.shape, spacing)
    results: dict[int, ClassMetrics] = {}
    for label in labels:
        members = None if regions is None else regions.get(label)
        if members is None:
            pred, ref = prediction == label, reference == label
        else:
            pred, ref = np.isin(prediction, list(members)), np.isin(reference, list(members))
        if keep is not None:
            pred &= keep
            ref &= keep
        n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
        tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
        fp, fn = n_pred - tp, n_ref - tp
        both_empty = n_pred == 0 and n_ref == 0
        dice = math.nan if both_empty else 2 * tp / (2 * tp + fp + fn)
        iou = math.nan if both_empty else tp / (tp + fp + fn)
        nsd_value: float | None = None
        hd95_value: float | None = None
        if surfaces:
            if both_empty:
                nsd_value, hd95_value = math.nan, math.nan
            elif n_pred == 0 or n_ref == 0:
                nsd_value, hd95_value = 0.0, worst_hd95
            else:
                if nsd_tolerance_mm is not None:  # surfel areas, as the Decathlon and FLARE
                    nsd_value = surfel_distances(pred, ref, spacing).nsd(nsd_tolerance_mm)
                if hd95:
                    hd95_value = surface_distances(pred, ref, spacing).hd95()
            if nsd_tolerance_mm is None:
                nsd_value = None
            if not hd95:
                hd95_value = None
        results[int(label)] = ClassMetrics(
            tp=tp, fp=fp, fn=fn, dice=dice, iou=iou, reference_empty=n_ref == 0, prediction_empty=n_pred == 0,
            nsd=nsd_value, hd95=hd95_value,
        )
    return results


def metric_names(nsd_tolerance_mm: float | None, hd95: bool) -> tuple[str, ...]:
    return BASE_METRICS + (("nsd",) if nsd_tolerance_mm is not None else ()) + (("hd95",) if hd95 else ())
