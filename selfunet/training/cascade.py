"""The cascade (docs/explanation/design.md#cascade): ``3d_cascade_fullres`` sees the ``3d_lowres`` prediction.

The low-resolution stage's segmentation, brought onto the full-resolution grid and one-hot
encoded (one channel per foreground class), is appended to the image channels. For its own
training cases the cascade uses the *out-of-fold* low-resolution predictions, so the network
learns from the kind of mistakes it will see at test time.

Training data of a cascade stage live in their own folder (``<data_identifier>_from_<previous>``)
holding the concatenated arrays; labels, foreground locations and properties are hard links to
the full-resolution data, so the sampler and augmenter need no special case.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from selfunet.artifacts import atomic_path, atomic_save_npy
from selfunet.data.labels import LabelScheme
from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import Configuration, Plan
from selfunet.preprocessing.preprocess import PreprocessedCase
from selfunet.preprocessing.resample import resample_volume
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)


def cascade_data_identifier(configuration: Configuration) -> str:
    return f"{configuration.data_identifier}_from_{configuration.previous_stage}"


def previous_stage_channels(crop_labels: np.ndarray, properties: PreprocessedCase, num_classes: int) -> np.ndarray:
    """Crop-space labels (array order) -> one-hot ``(K-1, *shape_after_resampling)`` float32 on the
    preprocessed grid of ``properties`` (plan order). Nearest-neighbour keeps the labels crisp."""
    if list(crop_labels.shape) != list(properties.shape_after_crop):
        raise SelfUNetError(
            f"case '{properties.case_id}': previous-stage segmentation of shape {crop_labels.shape} does not "
            f"match the crop shape {tuple(properties.shape_after_crop)}."
        )
    planned = np.ascontiguousarray(crop_labels.transpose(properties.transpose_forward)).astype(np.float32)
    on_grid = resample_volume(planned, properties.shape_after_resampling, [0, 0, 0])
    on_grid = np.rint(on_grid).astype(np.int16)
    return np.stack([(on_grid == k) for k in range(1, num_classes)]).astype(np.float32)


def _out_of_fold_labels(work: WorkDir, previous: str, case_id: str, scheme: LabelScheme) -> np.ndarray:
    from selfunet.preprocessing.revert import load_probabilities

    matches = sorted((work.root / "train" / previous).glob(f"fold_*/validation/{case_id}.npz"))
    if not matches:
        raise SelfUNetError(
            f"case '{case_id}': no out-of-fold prediction of '{previous}' under {work.root / 'train' / previous}; "
            f"train every fold of '{previous}' (with validation prediction) before its cascade stage."
        )
    probabilities, _ = load_probabilities(matches[0])
    return scheme.to_labels(probabilities)  # argmax, or painted regions


def _link_or_copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def prepare_cascade_data(work: Path, plan: Plan, configuration: Configuration,
                         console: Console | None = None) -> Path:
    """Build (or complete) the training folder of a cascade stage; returns it."""
    if configuration.previous_stage is None:
        raise SelfUNetError(f"configuration '{configuration.name}' is not a cascade stage.")
    workdir = WorkDir(work)
    source = workdir.preprocessed(configuration.data_identifier)
    target = workdir.preprocessed(cascade_data_identifier(configuration))
    target.mkdir(parents=True, exist_ok=True)
    case_ids = sorted(p.stem for p in source.glob("*.json") if not p.name.startswith(("dataset", ".")))
    if not case_ids:
        raise SelfUNetError(f"{source} holds no preprocessed cases: run `selfunet preprocess {work}` first.")
    console = console or Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task(f"cascade inputs for {configuration.name}", total=len(case_ids))
        for case_id in case_ids:
            if not (target / f"{case_id}.json").is_file():
                properties = PreprocessedCase.load(source / f"{case_id}.json")
                labels = _out_of_fold_labels(workdir, configuration.previous_stage, case_id, plan.label_scheme)
                extra = previous_stage_channels(labels, properties, plan.num_classes)
                data = np.load(source / f"{case_id}.npy", mmap_mode="r")
                atomic_save_npy(target / f"{case_id}.npy", np.concatenate([data, extra], axis=0))
                for suffix in ("_seg.npy", "_fg.npz", ".json"):  # the .json last: it marks completion
                    _link_or_copy(source / f"{case_id}{suffix}", target / f"{case_id}{suffix}")
            progress.advance(task)
    return target
