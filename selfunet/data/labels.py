"""How the label values of a dataset become what the network learns: classes, regions, ignore.

Three forms, all declared in ``dataset.json`` (docs/reference/formats.md):

* **classes** (the default): each label value is one class; the network has one softmax output
  per value, background included.
* **regions** (nnU-Net v2's form, e.g. BraTS): each foreground entry names a *set* of label
  values (``"tumour core": [2, 3]``); regions may overlap or nest. The network has one sigmoid
  output per region (no background output), trained with BCE + Dice. A prediction becomes a
  label map again by thresholding every region's probability at 0.5 and painting the voxels
  with the values of ``regions_class_order`` in the declared order, so a later (inner) region
  overwrites an earlier (outer) one.
* **ignore label**: a label named ``ignore`` (it must be the highest value) marks voxels whose
  class is unknown (sparse annotation). They take no part in the loss, the choice of
  foreground patches or any metric.

One :class:`LabelScheme` holds the regions and the ignore value; it travels from the dataset
into the fingerprint, the plan, the trained model and the selection, so every stage reads the
same declaration.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict

from selfunet.errors import SelfUNetError

#: the label name that marks unannotated voxels (as in nnU-Net v2).
IGNORE_NAME = "ignore"
#: the probability above which a voxel belongs to a region.
REGION_THRESHOLD = 0.5


class Region(BaseModel):
    """One region: a name and the label values that make it up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    labels: list[int]


class LabelScheme(BaseModel):
    """Regions (empty: plain classes) and the ignore label (None: every voxel is annotated)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    regions: list[Region] = []
    regions_class_order: list[int] = []
    """label value painted for each region, in the order of ``regions`` (later wins)."""
    ignore_label: int | None = None

    @property
    def has_regions(self) -> bool:
        return bool(self.regions)

    def num_outputs(self, num_classes: int) -> int:
        """Network output channels: one per region, else one per class (background included)."""
        return len(self.regions) if self.regions else num_classes

    @property
    def activation(self) -> str:
        return "sigmoid" if self.regions else "softmax"

    def evaluation_classes(self, labels: Mapping[int, str]) -> tuple[dict[int, str], dict[int, tuple[int, ...]]]:
        """What metrics are computed on: ``(key -> name, key -> label values)`` of the foreground.

        Plain classes: the key is the label value itself. Regions: keys 1..R in declared order.
        The ignore label is never a class.
        """
        if self.regions:
            names = {i + 1: r.name for i, r in enumerate(self.regions)}
            members = {i + 1: tuple(r.labels) for i, r in enumerate(self.regions)}
            return names, members
        keys = [k for k in sorted(labels) if k > 0 and k != self.ignore_label]
        return {k: labels[k] for k in keys}, {k: (k,) for k in keys}

    # -- arrays ---------------------------------------------------------------------------------
    def region_masks(self, labels: np.ndarray) -> np.ndarray:
        """``(R, *labels.shape)`` bool: voxel in region r."""
        return np.stack([np.isin(labels, r.labels) for r in self.regions])

    def paint(self, probabilities: np.ndarray) -> np.ndarray:
        """Region probabilities ``(R, *spatial)`` -> label map (threshold, paint in order)."""
        if probabilities.shape[0] != len(self.regions):
            raise SelfUNetError(
                f"{probabilities.shape[0]} probability channel(s) for {len(self.regions)} region(s); was the "
                "prediction made with another model?"
            )
        dtype = np.uint8 if max(self.regions_class_order, default=0) < 256 else np.int16
        out = np.zeros(probabilities.shape[1:], dtype=dtype)
        for channel, value in enumerate(self.regions_class_order):
            out[probabilities[channel] > REGION_THRESHOLD] = value
        return out

    def to_labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities (softmax classes or sigmoid regions) -> label map."""
        if self.regions:
            return self.paint(probabilities)
        return np.argmax(probabilities, axis=0).astype(np.uint8 if probabilities.shape[0] <= 256 else np.int16)

    def summary(self) -> dict:
        return self.model_dump(mode="json")


def scheme_from_declaration(
    source: str, labels: dict[int, str], regions: list[tuple[str, list[int]]] | None,
    regions_class_order: list[int] | None,
) -> LabelScheme:
    """Validate a dataset's label declaration and build its scheme (errors name ``source``)."""
    ignore = [v for v, n in labels.items() if n == IGNORE_NAME]
    ignore_label = ignore[0] if ignore else None
    if ignore_label is not None and ignore_label != max(labels):
        raise SelfUNetError(
            f"{source}: the label 'ignore' has value {ignore_label} but must have the highest value "
            f"({max(labels)}); renumber it."
        )
    if not regions:
        if regions_class_order:
            raise SelfUNetError(
                f"{source}: 'regions_class_order' is given but no label is a region (a list of values)."
            )
        return LabelScheme(ignore_label=ignore_label)
    valid = {v for v in labels if v > 0 and v != ignore_label}
    for name, values in regions:
        if not values or any(v not in valid for v in values):
            raise SelfUNetError(
                f"{source}: region '{name}' lists {values}; a region is a non-empty list of foreground label "
                f"values among {sorted(valid)} (neither 0 nor the ignore label)."
            )
    if regions_class_order is None:
        raise SelfUNetError(
            f"{source}: labels declared as regions need 'regions_class_order' (one label value per region, "
            "painted in that order), e.g. [1, 2, 3]."
        )
    if len(regions_class_order) != len(regions):
        raise SelfUNetError(
            f"{source}: 'regions_class_order' has {len(regions_class_order)} entries for {len(regions)} regions; "
            "give one label value per region."
        )
    for (name, values), value in zip(regions, regions_class_order, strict=True):
        if value not in values:
            raise SelfUNetError(
                f"{source}: regions_class_order paints region '{name}' with {value}, which is not one of its "
                f"values {values}."
            )
    return LabelScheme(
        regions=[Region(name=n, labels=sorted(set(v))) for n, v in regions],
        regions_class_order=list(regions_class_order), ignore_label=ignore_label,
    )
