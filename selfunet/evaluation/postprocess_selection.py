"""Deciding the connected-component postprocessing on the cross-validation (docs/explanation/design.md#postprocessing).

For every out-of-fold case the Dice with and without each step is measured; a step is adopted
when it helps by more than :data:`TOLERANCE` (the rule's steps and how they are applied are in
:mod:`selfunet.inference.postprocess`). "Rises" means strictly: a step that changes nothing is not
adopted, so the default is "no postprocessing".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from selfunet.data.io import read_image
from selfunet.errors import SelfUNetError
from selfunet.inference.postprocess import PostprocessingRule, keep_largest_component, largest_foreground

log = logging.getLogger(__name__)

#: a Dice change at or below this is "no change" (float noise, identical predictions).
TOLERANCE = 1e-9


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2TP/(2TP+FP+FN) of two boolean masks; NaN if both empty (not averaged, docs/explanation/design.md#evaluation)."""
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


def case_effects(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int],
                 regions: Mapping[int, Sequence[int]] | None = None, ignore_label: int | None = None) -> CaseEffects:
    """One pass over a case: enough to decide both steps without keeping the volumes.

    Removing voxels of class ``c`` turns them into background, so it changes only class ``c``'s
    Dice; step 2 can therefore be measured one class at a time. ``regions`` (key -> label values)
    makes each key a region; reference voxels labelled ``ignore_label`` count nowhere.
    """
    keep = None if ignore_label is None else reference != ignore_label

    def member(array: np.ndarray, c: int) -> np.ndarray:
        return np.isin(array, list(regions[c])) if regions is not None and c in regions else array == c

    def score(mask: np.ndarray, reference_mask: np.ndarray) -> float:
        # components are found on the whole prediction; only the scoring leaves ignored voxels out
        return dice(mask, reference_mask) if keep is None else dice(mask & keep, reference_mask)

    step1 = largest_foreground(prediction)
    step1_changed = not np.array_equal(step1, prediction)
    base, after1, pc_base, pc_after1 = {}, {}, {}, {}
    for c in labels:
        reference_mask = member(reference, c) if keep is None else member(reference, c) & keep
        mask = member(prediction, c)
        base[c] = score(mask, reference_mask)
        pc_base[c] = score(keep_largest_component(mask), reference_mask)
        mask1 = member(step1, c) if step1_changed else mask
        if mask1 is mask or np.array_equal(mask1, mask):  # step 1 left this class alone: same numbers
            after1[c], pc_after1[c] = base[c], pc_base[c]
        else:
            after1[c] = score(mask1, reference_mask)
            pc_after1[c] = score(keep_largest_component(mask1), reference_mask)
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


def decide_postprocessing(effects: Sequence[CaseEffects], labels: Sequence[int],
                          regions: Mapping[int, Sequence[int]] | None = None) -> PostprocessingRule:
    """The two-step decision (docs/explanation/design.md#postprocessing) from per-case effects."""
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
        regions={str(k): [int(v) for v in values] for k, values in (regions or {}).items()},
    )
    log.info("postprocessing decision: all-foreground LCC %s, per-class LCC %s (mean fg Dice %.4f -> %.4f)",
             use_step1, chosen, mean_before, _mean(list(final.values())))
    return rule


def _effects_of_files(args: tuple) -> CaseEffects:
    prediction_path, reference_path, labels, regions, ignore_label = args
    prediction, _ = read_image(prediction_path)
    reference, _ = read_image(reference_path)
    if prediction.shape != reference.shape:
        raise SelfUNetError(
            f"{prediction_path}: shape {prediction.shape[1:]} differs from the reference {reference_path} "
            f"({reference.shape[1:]}); the prediction is not in the reference's geometry."
        )
    return case_effects(prediction[0], reference[0], labels, regions, ignore_label)


def determine_postprocessing(pairs: Sequence[tuple[Path, Path]], labels: Sequence[int], processes: int = 1,
                             console: Console | None = None, description: str = "postprocessing",
                             regions: Mapping[int, Sequence[int]] | None = None,
                             ignore_label: int | None = None) -> PostprocessingRule:
    """Decide the rule on ``(prediction file, reference file)`` pairs of cross-validation cases
    (``regions``/``ignore_label`` as for :func:`case_effects`)."""
    foreground = tuple(int(c) for c in labels if int(c) > 0)
    console = console or Console(stderr=True)
    region_values = None if regions is None else {int(k): tuple(v) for k, v in regions.items()}
    jobs = [(Path(p), Path(r), foreground, region_values, ignore_label) for p, r in pairs]
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
    return decide_postprocessing(effects, foreground, region_values)
