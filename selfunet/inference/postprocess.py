"""Connected-component postprocessing: the rule and how it is applied (docs/explanation/design.md#postprocessing).

How the rule is decided on the cross-validation lives in
:mod:`selfunet.evaluation.postprocess_selection`; this module is what prediction needs.


A network sometimes predicts small islands far from the organ. Whether removing them helps is an
empirical question, so it is decided on the out-of-fold predictions of the selected model and
stored as data (:class:`PostprocessingRule`, inside ``WORK/selection.json``):

1. **all foreground as one region**: keep only the largest connected component of ``labels > 0``
   (other components become background). Accepted when the mean foreground Dice rises and no
   class's mean Dice falls.
2. **per class**, on top of step 1's result when it was accepted: keep only the largest component
   of that class. Accepted per class when that class's mean Dice rises.

"Rises" means strictly, by more than :data:`TOLERANCE`: a step that changes nothing is not
adopted, so the default is "no postprocessing".

Region-based models: step 2 works per *region* (the voxels whose label is one of the region's
values; :attr:`PostprocessingRule.regions`); a removed component becomes background, as in the
reference. With nested regions removing a component of an inner region also shrinks the outer
ones; the decision measures the region it changes (an approximation, as the reference's).

Connectivity is *full* (26-neighbourhood in 3D; a 2D image, stored with a leading axis of size 1,
gets the 8-neighbourhood): voxels touching at a corner belong together, so a thin oblique
structure is not cut into pieces by the voxel grid. Ties in component size go to the component
met first in array (C) order, so the result is deterministic.

Applying a rule with both steps re-runs step 1 after step 2: removing a class's small component
can, rarely, split the foreground into two pieces, and the final pass keeps the result a single
region. This makes :func:`apply_postprocessing` idempotent. The Dice values stored with the rule
are measured with step 1 and step 2 as decided; the final pass only matters in that rare case.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy import ndimage

from selfunet.data.io import SUPPORTED_ENDINGS, read_image, write_label
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

class PostprocessingRule(BaseModel):
    """The decision (what to apply) plus the evidence it was made on (mean Dice before/after).

    Per-class Dice maps are keyed by the label value as a string (JSON keys); ``None`` marks a
    class whose Dice is undefined in every case (empty reference and empty prediction).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    largest_component_all_foreground: bool = False
    largest_component_per_class: list[int] = []
    connectivity: str = "full"
    """"full": 26-neighbourhood in 3D, 8 in 2D (the only value supported)."""
    num_cases: int = 0
    mean_foreground_dice_before: float | None = None
    mean_foreground_dice_after_all_foreground: float | None = None
    """step 1's candidate result, whether or not it was accepted."""
    mean_foreground_dice_after: float | None = None
    """with the rule as decided."""
    dice_before: dict[str, float | None] = {}
    dice_after_all_foreground: dict[str, float | None] = {}
    dice_after: dict[str, float | None] = {}
    regions: dict[str, list[int]] = {}
    """region-based models: region number (the keys of ``largest_component_per_class``) -> label values."""

    def values_of(self, key: int) -> list[int]:
        """Label values of a per-class key: the region's values, or the label itself."""
        return self.regions.get(str(key), [int(key)])

    @property
    def is_identity(self) -> bool:
        return not self.largest_component_all_foreground and not self.largest_component_per_class

    def describe(self, labels: dict[str, str]) -> str:
        """The rule in words, with class (region) names from ``labels``: the one wording shown by
        ``selfunet select`` and written to leaderboards."""
        parts = []
        if self.largest_component_all_foreground:
            parts.append("largest foreground component")
        if self.largest_component_per_class:
            names = ", ".join(labels.get(str(c), str(c)) for c in self.largest_component_per_class)
            parts.append(f"largest component of {names}")
        return "; ".join(parts) or "none (no rule helped)"


def describe_rule(rule: PostprocessingRule | None, labels: dict[str, str]) -> str:
    """:meth:`PostprocessingRule.describe`, or "not computed" where no rule was decided."""
    return "not computed" if rule is None else rule.describe(labels)


# -- applying -------------------------------------------------------------------------------------
def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` restricted to its largest connected component (full connectivity)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    box = _bounding_box(mask)
    components, count = ndimage.label(mask[box], structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out = np.zeros_like(mask)
    out[box] = components == int(np.argmax(sizes))
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def largest_foreground(labels: np.ndarray) -> np.ndarray:
    foreground = labels > 0
    out = labels.copy()
    out[foreground & ~keep_largest_component(foreground)] = 0
    return out


def _largest_of_class(labels: np.ndarray, label: int | list[int]) -> np.ndarray:
    mask = np.isin(labels, label) if isinstance(label, list) else labels == label
    out = labels.copy()
    out[mask & ~keep_largest_component(mask)] = 0
    return out


def apply_postprocessing(labels: np.ndarray, rule: PostprocessingRule) -> np.ndarray:
    """A new label map with the rule applied (the input is not modified)."""
    out = np.array(labels, copy=True)
    if rule.largest_component_all_foreground:
        out = largest_foreground(out)
    for label in rule.largest_component_per_class:
        out = _largest_of_class(out, rule.values_of(int(label)) if rule.regions else int(label))
    if rule.largest_component_all_foreground and rule.largest_component_per_class:
        out = largest_foreground(out)
    return out


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def _label_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(SUPPORTED_ENDINGS))


def postprocess_folder(input_dir: Path, output_dir: Path, rule: PostprocessingRule,
                       console: Console | None = None) -> list[Path]:
    """Apply ``rule`` to every label map in ``input_dir``; write them, headers kept, to ``output_dir``."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise SelfUNetError(f"{input_dir}: no such folder of label maps to postprocess.")
    files = _label_files(input_dir)
    if not files:
        raise SelfUNetError(f"{input_dir}: no label maps ({', '.join(SUPPORTED_ENDINGS)}) found.")
    if input_dir.resolve() == output_dir.resolve():
        raise SelfUNetError(f"{output_dir}: the output folder must differ from the input folder.")
    console = console or Console(stderr=True)
    written = []
    with _progress(console) as progress:
        task = progress.add_task("postprocess", total=len(files))
        for path in files:
            labels, geometry = read_image(path)
            write_label(output_dir / path.name, apply_postprocessing(labels[0], rule), geometry)
            written.append(output_dir / path.name)
            progress.advance(task)
    return written
