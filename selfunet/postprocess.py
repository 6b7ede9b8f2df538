"""Connected-component postprocessing decided on the cross-validation (SPEC section 4).

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
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy import ndimage

from selfunet.errors import SelfUNetError
from selfunet.io import SUPPORTED_ENDINGS, read_image, write_label

log = logging.getLogger(__name__)

#: a Dice change at or below this is "no change" (float noise, identical predictions).
TOLERANCE = 1e-9


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

    @property
    def is_identity(self) -> bool:
        return not self.largest_component_all_foreground and not self.largest_component_per_class


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


def _largest_foreground(labels: np.ndarray) -> np.ndarray:
    foreground = labels > 0
    out = labels.copy()
    out[foreground & ~keep_largest_component(foreground)] = 0
    return out


def _largest_of_class(labels: np.ndarray, label: int) -> np.ndarray:
    mask = labels == label
    out = labels.copy()
    out[mask & ~keep_largest_component(mask)] = 0
    return out


def apply_postprocessing(labels: np.ndarray, rule: PostprocessingRule) -> np.ndarray:
    """A new label map with the rule applied (the input is not modified)."""
    out = np.array(labels, copy=True)
    if rule.largest_component_all_foreground:
        out = _largest_foreground(out)
    for label in rule.largest_component_per_class:
        out = _largest_of_class(out, int(label))
    if rule.largest_component_all_foreground and rule.largest_component_per_class:
        out = _largest_foreground(out)
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


# -- deciding -------------------------------------------------------------------------------------
def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2TP/(2TP+FP+FN) of two boolean masks; NaN when both are empty (left out of means, SPEC 5)."""
    tp = int(np.count_nonzero(prediction & reference))
    denominator = int(np.count_nonzero(prediction)) + int(np.count_nonzero(reference))
    return float("nan") if denominator == 0 else 2.0 * tp / denominator


@dataclass(frozen=True)
class CaseEffects:
    """Per-class Dice of one case under every variant the decision compares."""

    base: dict[int, float]
    all_foreground: dict[int, float]
    per_class_on_base: dict[int, float]
    per_class_on_all_foreground: dict[int, float]


def case_effects(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> CaseEffects:
    """One pass over a case: enough to decide both steps without keeping the volumes.

    Removing voxels of class ``c`` turns them into background, so it changes only class ``c``'s
    Dice; step 2 can therefore be measured one class at a time.
    """
    step1 = _largest_foreground(prediction)
    step1_changed = not np.array_equal(step1, prediction)
    base, after1, pc_base, pc_after1 = {}, {}, {}, {}
    for c in labels:
        reference_mask = reference == c
        mask = prediction == c
        base[c] = dice(mask, reference_mask)
        pc_base[c] = dice(keep_largest_component(mask), reference_mask)
        mask1 = step1 == c if step1_changed else mask
        if mask1 is mask or np.array_equal(mask1, mask):  # step 1 left this class alone: same numbers
            after1[c], pc_after1[c] = base[c], pc_base[c]
        else:
            after1[c] = dice(mask1, reference_mask)
            pc_after1[c] = dice(keep_largest_component(mask1), reference_mask)
    return CaseEffects(base, after1, pc_base, pc_after1)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _class_means(cases: Sequence[dict[int, float]], labels: Sequence[int]) -> dict[int, float]:
    return {c: _mean([case[c] for case in cases]) for c in labels}


def _rises(after: float, before: float) -> bool:
    if math.isnan(after):
        return False
    return math.isnan(before) or after > before + TOLERANCE


def _falls(after: float, before: float) -> bool:
    if math.isnan(before):
        return False
    return math.isnan(after) or after < before - TOLERANCE


def _jsonable(means: dict[int, float]) -> dict[str, float | None]:
    return {str(c): (None if math.isnan(v) else v) for c, v in means.items()}


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def decide_postprocessing(effects: Sequence[CaseEffects], labels: Sequence[int]) -> PostprocessingRule:
    """The two-step decision of SPEC section 4 from per-case effects (see the module docstring)."""
    labels = [int(c) for c in labels if int(c) > 0]
    if not effects:
        raise SelfUNetError("postprocessing needs at least one cross-validation case to decide on.")
    before = _class_means([e.base for e in effects], labels)
    after1 = _class_means([e.all_foreground for e in effects], labels)
    mean_before, mean_after1 = _mean(list(before.values())), _mean(list(after1.values()))
    use_step1 = _rises(mean_after1, mean_before) and not any(_falls(after1[c], before[c]) for c in labels)
    start = after1 if use_step1 else before
    per_class = _class_means(
        [e.per_class_on_all_foreground if use_step1 else e.per_class_on_base for e in effects], labels)
    chosen = [c for c in labels if _rises(per_class[c], start[c])]
    final = {c: (per_class[c] if c in chosen else start[c]) for c in labels}
    rule = PostprocessingRule(
        largest_component_all_foreground=use_step1,
        largest_component_per_class=chosen,
        num_cases=len(effects),
        mean_foreground_dice_before=_none_if_nan(mean_before),
        mean_foreground_dice_after_all_foreground=_none_if_nan(mean_after1),
        mean_foreground_dice_after=_none_if_nan(_mean(list(final.values()))),
        dice_before=_jsonable(before),
        dice_after_all_foreground=_jsonable(after1),
        dice_after=_jsonable(final),
    )
    log.info("postprocessing decision: all-foreground LCC %s, per-class LCC %s (mean fg Dice %.4f -> %.4f)",
             use_step1, chosen, mean_before, _mean(list(final.values())))
    return rule


def _effects_of_files(args: tuple[Path, Path, tuple[int, ...]]) -> CaseEffects:
    prediction_path, reference_path, labels = args
    prediction, _ = read_image(prediction_path)
    reference, _ = read_image(reference_path)
    if prediction.shape != reference.shape:
        raise SelfUNetError(
            f"{prediction_path}: shape {prediction.shape[1:]} differs from the reference {reference_path} "
            f"({reference.shape[1:]}); the prediction is not in the reference's geometry."
        )
    return case_effects(prediction[0], reference[0], labels)


def determine_postprocessing(pairs: Sequence[tuple[Path, Path]], labels: Sequence[int], processes: int = 1,
                             console: Console | None = None, description: str = "postprocessing") -> PostprocessingRule:
    """Decide the rule on ``(prediction file, reference file)`` pairs of cross-validation cases."""
    foreground = tuple(int(c) for c in labels if int(c) > 0)
    console = console or Console(stderr=True)
    jobs = [(Path(p), Path(r), foreground) for p, r in pairs]
    effects: list[CaseEffects] = []
    with _progress(console) as progress:
        task = progress.add_task(description, total=len(jobs))
        if processes > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=processes) as pool:
                for result in pool.map(_effects_of_files, jobs):
                    effects.append(result)
                    progress.advance(task)
        else:
            for job in jobs:
                effects.append(_effects_of_files(job))
                progress.advance(task)
    return decide_postprocessing(effects, foreground)
