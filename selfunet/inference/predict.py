"""``selfunet predict``: trained folds -> label maps in the original geometry (docs/explanation/design.md#inference).

The chain for one case: read the image(s) -> preprocess in memory exactly like the training data
-> sliding-window prediction with every fold (softmax probabilities averaged) -> revert to the
original crop space and shape -> write with the input's header. Out-of-fold validation
predictions use the same chain on the already preprocessed arrays, and keep their probabilities
(in the original crop space, where every configuration of a case agrees) for ensemble selection.
Everything after preprocessing runs slab by slab (:mod:`selfunet.inference.streaming`), so the
memory of a case does not grow with classes x volume.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from selfunet.data.grids import read_channel_files
from selfunet.data.io import SUPPORTED_ENDINGS, file_ending, strip_ending
from selfunet.errors import SelfUNetError
from selfunet.inference.sliding_window import InferenceConfig
from selfunet.inference.streaming import (
    Rows,
    average_rows,
    collect_rows,
    crop_labels_from_rows,
    crop_rows,
    labels_from_rows,
    whole_rows,
)
from selfunet.planning.plan_types import Configuration, Plan
from selfunet.preprocessing.preprocess import PreprocessedCase, preprocess_image_for_inference
from selfunet.preprocessing.revert import write_prediction
from selfunet.runtime import check_stop
from selfunet.workdir import WorkDir, member_name, split_member

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    network: torch.nn.Module
    plan: Plan
    configuration: Configuration
    checkpoint: Path


def load_trained_model(checkpoint: Path, device: torch.device) -> TrainedModel:
    """Rebuild the network from the plan stored inside the checkpoint and load its weights."""
    from selfunet.runtime import load_checkpoint
    from selfunet.training.network import build_network

    payload = load_checkpoint(checkpoint)
    plan = Plan.from_dict(payload["plan"], source=str(checkpoint))
    configuration = plan.configurations[payload["configuration"]]
    network = build_network(configuration.topology, plan.input_channels(configuration.name), plan.num_outputs,
                            deep_supervision=False)
    network.load_state_dict(payload["network"])
    network.to(device).eval()
    return TrainedModel(network, plan, configuration, Path(checkpoint))


def inference_config(configuration: Configuration, mirroring: bool, amp_dtype: torch.dtype | None,
                     device: torch.device, overrides: Mapping[str, Any] | None = None) -> InferenceConfig:
    """The sliding-window settings: the given field overrides (``--step-fraction`` ...), then the
    run-time ones; ``mirroring=False`` turns TTA off whatever ``mirror_axes`` says."""
    values = {**(overrides or {}), "amp_dtype": amp_dtype, "device": device}
    if not mirroring:
        values["mirror_axes"] = ()
    return InferenceConfig(**values)


def model_rows(models: list[TrainedModel], data: np.ndarray, config: InferenceConfig,
               properties: PreprocessedCase) -> Rows:
    """Crop-space probability rows of one preprocessed case, averaged over the folds ``models``."""
    first = models[0]
    return crop_rows([m.network for m in models], np.asarray(data, dtype=np.float32),
                     first.configuration.patch_size, first.plan.num_outputs, config, properties,
                     first.configuration.resampling, first.plan.label_scheme.activation)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def predict_validation_cases(work: WorkDir, configuration: str, fold: int, case_ids: list[str], checkpoint: Path,
                             mirroring: bool = True, amp: str = "auto", device: str = "auto",
                             inference: Mapping[str, Any] | None = None, console: Console | None = None) -> Path:
    """Out-of-fold predictions of one fold: labels (original geometry) + crop-space probabilities.

    Already finished cases (label and probabilities present) are skipped, so an interrupted
    validation resumes.
    """
    from selfunet.runtime import resolve_amp, resolve_device

    console = console or Console(stderr=True)
    torch_device = resolve_device(device)
    model = load_trained_model(checkpoint, torch_device)
    config = inference_config(model.configuration, mirroring, resolve_amp(amp, torch_device), torch_device, inference)
    folder = work.preprocessed(model.configuration.data_identifier)
    if model.configuration.previous_stage is not None:
        from selfunet.training.cascade import cascade_data_identifier

        folder = work.preprocessed(cascade_data_identifier(model.configuration))
    out = work.training(configuration, fold) / "validation"
    out.mkdir(parents=True, exist_ok=True)
    ending = _dataset_ending(work)
    with _progress(console) as progress:
        task = progress.add_task(f"validation {configuration} fold {fold}", total=len(case_ids))
        for case_id in case_ids:
            check_stop(f"while predicting the validation cases of {configuration} fold {fold}")
            log.debug("validation prediction: case %s", case_id)
            label_path, prob_path = out / f"{case_id}{ending}", out / f"{case_id}.npz"
            if not (label_path.is_file() and prob_path.is_file()):
                properties = PreprocessedCase.load(folder / f"{case_id}.json")
                data = np.load(folder / f"{case_id}.npy", mmap_mode="r")
                rows = model_rows([model], np.array(data, dtype=np.float32), config, properties)
                labels = labels_from_rows(rows, properties, model.plan.label_scheme, model.plan.num_outputs,
                                          probabilities_path=prob_path)
                write_prediction(label_path, labels, properties)
            progress.advance(task)
    return out


def _dataset_ending(work: WorkDir) -> str:
    from selfunet.planning.fingerprint_types import Fingerprint

    try:
        return Fingerprint.load(work.fingerprint).dataset.file_ending
    except SelfUNetError:
        return ".nii.gz"


@dataclass(frozen=True)
class InputCase:
    case_id: str
    files: tuple[Path, ...]
    output_name: str


def discover_inputs(inputs: list[Path], num_channels: int) -> list[InputCase]:
    """Cases from files and folders: MSD style (one file per case, channels in a 4D file) or
    nnU-Net v2 style (``case_0000.nii.gz`` per channel). Output names follow the input's style."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                            and p.name.lower().endswith(SUPPORTED_ENDINGS))
        elif item.is_file():
            files.append(item)
        else:
            raise SelfUNetError(f"{item}: no such file or folder to predict.")
    if not files:
        raise SelfUNetError(f"no images ({', '.join(SUPPORTED_ENDINGS)}) found in {', '.join(map(str, inputs))}.")
    channel_style = all(len(s := strip_ending(f)) > 5 and s[-5] == "_" and s[-4:].isdigit() for f in files)
    if channel_style:
        groups: dict[str, dict[int, Path]] = {}
        for f in files:
            stem = strip_ending(f)
            groups.setdefault(stem[:-5], {})[int(stem[-4:])] = f
        cases = []
        for case_id, by_channel in sorted(groups.items()):
            missing = [c for c in range(num_channels) if c not in by_channel]
            if missing:
                raise SelfUNetError(
                    f"case '{case_id}': channel file(s) {', '.join(f'{case_id}_{c:04d}' for c in missing)} missing; "
                    f"the model needs {num_channels} channel(s)."
                )
            first = by_channel[0]
            cases.append(InputCase(case_id, tuple(by_channel[c] for c in range(num_channels)),
                                   f"{case_id}{file_ending(first)}"))
        return cases
    return [InputCase(strip_ending(f), (f,), f.name) for f in files]


def read_input_case(case: InputCase, num_channels: int):
    """The case's channels as float32 ``(C, z, y, x)`` and channel 0's geometry; every header is
    checked (bounds, external data files, one grid for all channels) before a voxel is read, and
    NaN or infinite voxels are refused (docs/guide/security.md)."""
    return read_channel_files(case.case_id, case.files, num_channels, "the model expects")


def find_checkpoints(work: WorkDir, configuration: str, folds: list[int] | None, name: str) -> list[Path]:
    root = work.root / "train" / configuration
    if folds is None:
        found = sorted(root.glob(f"fold_*/{name}"))
        if not found:
            raise SelfUNetError(
                f"no {name} under {root}: train first (`selfunet train {work.root} -c {configuration} -f 0`)."
            )
        return found
    paths = [work.training(configuration, f) / name for f in folds]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SelfUNetError(f"checkpoint(s) missing: {', '.join(missing)}; train those folds first.")
    return paths


def case_rows(stage: str, image: np.ndarray, geometry, case_id: str, models: dict[str, list[TrainedModel]],
              configs: dict[str, InferenceConfig]) -> tuple[Rows, PreprocessedCase]:
    """Crop-space probability rows of one stage for one case (computed as they are consumed).

    Crop space is the same for every configuration of a case, so ensembles average there; a
    cascade stage first predicts its previous stage and appends that segmentation as channels.
    """
    from selfunet.training.cascade import previous_stage_channels

    first = models[stage][0]
    plan, configuration = first.plan, first.configuration
    data, properties = preprocess_image_for_inference(image, geometry, plan, configuration, case_id)
    if configuration.previous_stage is not None:
        previous_member = member_name(configuration.previous_stage, split_member(stage)[1])
        previous, previous_properties = case_rows(previous_member, image, geometry, case_id, models, configs)
        previous_plan = models[previous_member][0].plan
        crop_labels = crop_labels_from_rows(previous, previous_properties, previous_plan.label_scheme,
                                            previous_plan.num_outputs)
        extra = previous_stage_channels(crop_labels, properties, plan.num_classes)
        data = np.concatenate([data, extra], axis=0)
    return model_rows(models[stage], data, configs[stage], properties), properties


def _load_stage_models(workdir: WorkDir, members: list[str], folds: list[int] | None, checkpoint_name: str,
                       device: torch.device) -> dict[str, list[TrainedModel]]:
    models: dict[str, list[TrainedModel]] = {}
    pending = list(members)
    while pending:
        stage = pending.pop()
        if stage in models:
            continue
        stage_work, configuration = workdir.member(stage)
        models[stage] = [load_trained_model(p, device)
                         for p in find_checkpoints(stage_work, configuration, folds, checkpoint_name)]
        previous = models[stage][0].configuration.previous_stage
        if previous is not None:
            pending.append(member_name(previous, split_member(stage)[1]))
    return models


def refuse_overlapping_output(inputs: list[Path], output: Path) -> None:
    """Refuse, before any work, an output folder that would write over the inputs: the folder of an
    input image (``predict IN -o IN``: a label map has the image's name and would replace it), or a
    folder inside an input folder. An input folder inside the output folder is fine: predictions are
    written at the output's top level only. Links are followed (``-o link-to-IN`` is ``-o IN``)."""
    out = Path(output).resolve()
    for item in inputs:
        item = Path(item)
        folder = (item if item.is_dir() else item.parent).resolve()
        if out == folder:
            raise SelfUNetError(
                f"predict: the output folder {output} is the folder of the input {item}; the label maps would "
                "be written over (or beside) the images: choose another folder with -o."
            )
        if item.is_dir() and folder in out.parents:
            raise SelfUNetError(
                f"predict: the output folder {output} lies inside the input folder {item}; choose a folder outside "
                "it with -o, so predictions never mix with (or overwrite) the images."
            )


def predict_cases(inputs: list[Path], output: Path, work: Path | None, configurations: list[str],
                  folds: list[int] | None = None, checkpoint_name: str = "checkpoint_final.pt",
                  mirroring: bool = True, amp: str = "auto", device: str = "auto",
                  save_probabilities_files: bool = False, postprocessing=None,
                  inference: Mapping[str, Any] | None = None, console: Console | None = None,
                  models: dict[str, list[TrainedModel]] | None = None) -> list[Path]:
    """Predict every input case and write label maps into ``output``.

    ``configurations`` with more than one entry is an ensemble: crop-space probabilities of the
    members (each averaged over its folds) are averaged; a member ``<configuration>@<preset>``
    comes from ``WORK/planners/<preset>/`` (:meth:`WorkDir.member`). ``postprocessing`` is a
    :class:`selfunet.inference.postprocess.PostprocessingRule` applied to the final labels.
    ``models`` (configuration -> loaded folds, e.g. from a model.zip) replaces reading the
    checkpoints of ``work``; their device must be ``device``.
    """
    from selfunet.runtime import resolve_amp, resolve_device

    if not configurations:
        raise SelfUNetError("no configuration to predict with; pass -c CONFIG (several for an ensemble).")
    refuse_overlapping_output(inputs, output)
    console = console or Console(stderr=True)
    torch_device = resolve_device(device)
    if models is None:
        if work is None:
            raise SelfUNetError("predict: give a work directory (--work) or a model archive (--model).")
        models = _load_stage_models(WorkDir(work), configurations, folds, checkpoint_name, torch_device)
    missing = [c for c in configurations if c not in models]
    if missing:
        raise SelfUNetError(f"configuration(s) {', '.join(missing)} not in the model; it has {', '.join(models)}.")
    amp_dtype = resolve_amp(amp, torch_device)
    configs = {stage: inference_config(m[0].configuration, mirroring, amp_dtype, torch_device, inference)
               for stage, m in models.items()}
    plan = models[configurations[0]][0].plan
    cases = discover_inputs(inputs, plan.num_input_channels)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    # one inference mode around every case: the members' slab streams are generators that each
    # enter and leave inference mode, and interleaved (an ensemble) the first to finish would turn
    # it off under the others, whose in-place sums on inference tensors then fail
    with _progress(console) as progress, torch.inference_mode():
        task = progress.add_task(f"predict {'+'.join(configurations)}", total=len(cases))
        for case in cases:
            check_stop("while predicting")
            image, geometry = read_input_case(case, plan.num_input_channels)
            streams: list[Rows] = []
            properties: PreprocessedCase | None = None
            for member in configurations:
                rows, member_properties = case_rows(member, image, geometry, case.case_id, models, configs)
                if properties is not None and member_properties.transpose_forward != properties.transpose_forward:
                    # rows of another axis order do not line up: this member is reverted whole
                    whole = collect_rows(rows, plan.num_outputs, member_properties)
                    rows = whole_rows(whole, properties.transpose_forward)
                properties = properties or member_properties
                streams.append(rows)
            del image  # every member is preprocessed: the slabs need only their own arrays from here on
            probabilities_path = output / f"{case.case_id}.npz" if save_probabilities_files else None
            labels = labels_from_rows(average_rows(streams), properties, plan.label_scheme, plan.num_outputs,
                                      probabilities_path)
            if postprocessing is not None:
                from selfunet.inference.postprocess import apply_postprocessing

                labels = apply_postprocessing(labels, postprocessing)
            target = output / case.output_name
            write_prediction(target, labels, properties)
            written.append(target)
            progress.advance(task)
    console.print(escape(f"wrote {len(written)} prediction(s) to {output}"), highlight=False)
    return written
