"""``selfunet import-nnunet MODEL -o model.zip``: an nnU-Net v2 trained model as a selfunet model archive.

``MODEL`` is a trainer folder, a dataset results folder (``Dataset###_Name/``: the model chosen by
``nnUNetv2_find_best_configuration`` in its ``inference_information.json``, or its only trainer
folder, or the ones named with ``--configuration``) or an ``nnUNetv2_export_model_to_zip`` zip.

Everything is checked before an archive is written (so before anything is predicted): the trainer
class (nnUNetTrainer and its training-length variants only), the plans
(:mod:`selfunet.interop.nnunet_plans`), the network and each fold's weights
(:mod:`selfunet.interop.nnunet_network`: every tensor used exactly once), the mirror axes the model
was trained for (all of them), the cascade's previous stage, and the postprocessing. The archive is
then written by :func:`selfunet.model_archive.export_model` from a staged work directory, so it is
an ordinary model.zip: ``selfunet predict --model``, ``harness export gc --model`` and
``harness score -s NAME=model.zip`` take it.

Postprocessing: ``crossval_results_folds_<folds>/postprocessing.pkl`` of the trainer folder (one
configuration) or ``ensembles/<ensemble>/postprocessing.pkl`` (the ensemble
``inference_information.json`` chose), read without unpickling objects
(:func:`selfunet.interop.nnunet_files.read_postprocessing_pickle`) and expressed as our
:class:`~selfunet.inference.postprocess.PostprocessingRule`. ``--postprocessing none`` leaves it out,
``--postprocessing FILE`` reads that file.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from selfunet.errors import SelfUNetError, clip, quote
from selfunet.interop.nnunet_files import (
    PostprocessingStep,
    load_nnunet_checkpoint,
    read_json,
    read_postprocessing_pickle,
)
from selfunet.interop.nnunet_folders import (
    CHECKPOINTS,
    TrainerFolder,
    check_trainer,
    dataset_folder,
    find_trainer_folders,
    fold_folders,
    unpack_zip,
)
from selfunet.interop.nnunet_network import WeightMapping, state_from_nnunet
from selfunet.interop.nnunet_plans import plan_from_nnunet

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What was imported (for the command's summary and the tests)."""

    output: Path
    members: list[str]
    folds: dict[str, list[str]]
    trainers: dict[str, str]
    postprocessing: str
    mappings: dict[str, WeightMapping] = field(default_factory=dict)


# -- choosing the trainer folders ------------------------------------------------------------------
def _chosen_by_inference_information(folders: list[TrainerFolder], root: Path | None) -> tuple[list[TrainerFolder],
                                                                                                Path | None] | None:
    """The model (or ensemble) ``inference_information.json`` names, and its postprocessing file."""
    info_path = root / "inference_information.json" if root else None
    if info_path is None or not info_path.is_file():
        return None
    info = read_json(info_path, "inference_information.json")
    best = info.get("best_model_or_ensemble")
    selected = best.get("selected_model_or_models") if isinstance(best, dict) else None
    if not isinstance(selected, list) or not selected:
        raise SelfUNetError(f"{info_path}: no best_model_or_ensemble.selected_model_or_models; pass --configuration.")
    chosen = []
    for entry in selected:
        if not isinstance(entry, dict):
            raise SelfUNetError(f"{info_path}: selected_model_or_models holds {quote(entry, 80)}.")
        identifier = f"{entry.get('trainer')}__{entry.get('plans_identifier')}__{entry.get('configuration')}"
        match = [f for f in folders if f.identifier == identifier]
        if not match:
            raise SelfUNetError(f"{info_path}: the selected model {identifier} is not in {root}; give its trainer "
                                "folder, or pass --configuration to choose among those present.")
        chosen.append(match[0])
    pp_file = best.get("postprocessing_file")
    pp_path = None
    if isinstance(pp_file, str) and root is not None:  # stored with the training machine's absolute path
        parts = Path(pp_file).parts
        if root.name in parts:
            pp_path = root.joinpath(*parts[parts.index(root.name) + 1:])
    return chosen, pp_path


def choose_folders(source: Path, configurations: list[str] | None) -> tuple[list[TrainerFolder], Path | None]:
    """The trainer folders to import (members, in order) and the postprocessing file that goes with
    them when ``inference_information.json`` names one."""
    folders = find_trainer_folders(source)
    if not folders:
        raise SelfUNetError(f"{source}: no nnU-Net v2 trainer folder (<Trainer>__<Plans>__<configuration>/ with "
                            "plans.json) here or up to two levels below.")
    if configurations:
        chosen = []
        for wanted in configurations:
            match = [f for f in folders if wanted in (f.configuration, f.identifier)]
            if len(match) != 1:
                raise SelfUNetError(f"{source}: --configuration {wanted} matches {len(match)} trainer folders "
                                    f"({', '.join(f.identifier for f in folders)}); name one by "
                                    "<Trainer>__<Plans>__<configuration>.")
            chosen.append(match[0])
        return chosen, None
    if len(folders) == 1:
        return folders, None
    by_information = _chosen_by_inference_information(folders, dataset_folder(folders))
    if by_information is not None:
        return by_information
    raise SelfUNetError(f"{source} holds several models ({', '.join(f.identifier for f in folders)}) and no "
                        "inference_information.json; choose with --configuration (repeat it for an ensemble).")


def _with_previous_stages(chosen: list[TrainerFolder], plans: dict, everything: list[TrainerFolder]) -> list[
        TrainerFolder]:
    stages = list(chosen)
    pending = list(chosen)
    while pending:
        folder = pending.pop(0)
        config = plans.get("configurations", {}).get(folder.configuration, {})
        previous = config.get("previous_stage") if isinstance(config, dict) else None
        if previous is None or any(s.configuration == previous for s in stages):
            continue
        match = [f for f in everything if (f.trainer, f.plans, f.configuration) == (folder.trainer, folder.plans,
                                                                                     previous)]
        sibling = folder.path.parent / f"{folder.trainer}__{folder.plans}__{previous}"
        if not match and not (sibling / "plans.json").is_file():
            raise SelfUNetError(
                f"{folder.path}: configuration '{folder.configuration}' is a cascade stage that needs the predictions "
                f"of '{previous}', but its trainer folder {sibling} is missing; put it beside this one (or import "
                f"'{previous}' alone).")
        found = match[0] if match else TrainerFolder(sibling, folder.trainer, folder.plans, previous)
        stages.append(found)
        pending.append(found)
    return stages


# -- postprocessing ---------------------------------------------------------------------------------
def rule_from_steps(steps: list[PostprocessingStep], plan, where: str):
    """nnU-Net's postprocessing steps as our rule; what the rule cannot say is refused."""
    from selfunet.inference.postprocess import PostprocessingRule

    scheme = plan.label_scheme
    foreground = {int(v) for v in plan.labels if int(v) != 0 and int(v) != scheme.ignore_label}
    regions = {i + 1: tuple(sorted(r.labels)) for i, r in enumerate(scheme.regions)}
    all_foreground, per_class = False, []
    for index, step in enumerate(steps):
        labels = set(step.labels)
        if step.background_label != 0:
            problem = f"sets removed voxels to {step.background_label}, not background"
        elif index == 0 and labels == foreground:
            all_foreground = True
            continue
        elif regions and (key := next((k for k, v in regions.items() if set(v) == labels), None)) is not None:
            per_class.append(key)
            continue
        elif not regions and len(labels) == 1 and labels <= foreground:
            per_class.append(labels.pop())
            continue
        else:
            problem = f"keeps the largest component of labels {sorted(labels)}"
        raise SelfUNetError(
            f"{where}: step {index + 1} {problem}, which selfunet's postprocessing rule (all foreground first, then "
            "per class or region) cannot express. Import with `--postprocessing none`, then decide postprocessing "
            "again (`selfunet select` on a selfunet cross-validation, or nnUNetv2_find_best_configuration).")
    return PostprocessingRule(largest_component_all_foreground=all_foreground, largest_component_per_class=per_class,
                              regions={str(k): list(v) for k, v in regions.items()})


def _postprocessing_file(choice: str, members: list[TrainerFolder], folds: list[str], suggested: Path | None
                         ) -> Path | None:
    if choice == "none":
        return None
    if choice != "auto":
        return Path(choice)
    if suggested is not None and suggested.is_file():
        return suggested
    if len(members) == 1:
        candidate = members[0].path / f"crossval_results_folds_{'_'.join(folds)}" / "postprocessing.pkl"
        if candidate.is_file():
            return candidate
        others = sorted(members[0].path.glob("crossval_results_folds_*/postprocessing.pkl"))
        if others:
            log.warning("%s: postprocessing was chosen for other folds (%s), not for folds %s; imported without it",
                        members[0].path, ", ".join(p.parent.name for p in others), ", ".join(folds))
    return None


# -- the import -------------------------------------------------------------------------------------
def _mirror_axes_ok(payload: dict, dimension: int, where: str) -> None:
    axes = payload.get("inference_allowed_mirroring_axes")
    if axes is None or sorted(int(a) for a in axes) != list(range(dimension)):
        raise SelfUNetError(
            f"{where}: the model allows mirroring along {quote(axes, 40)} at inference; selfunet mirrors along "
            f"every axis ({tuple(range(dimension))}), so the predictions would differ; refused.")


def _fingerprint(folder: TrainerFolder, plans: dict, dataset: dict):
    from selfunet.planning.nnunet_compat import fingerprint_from_nnunet

    path = folder.path / "dataset_fingerprint.json"
    raw = read_json(path, "dataset_fingerprint.json") if path.is_file() else {}
    if raw.get("spacings"):
        return fingerprint_from_nnunet(path, folder.path / "dataset.json")
    # shared models sometimes come without it (or without its per-case lists: selfunet's export): the
    # plans carry the intensity facts inference needs, and their median case stands for the cases
    with tempfile.TemporaryDirectory(prefix="selfunet-fp-") as tmp:
        shape = [max(1, round(float(s))) for s in plans.get("original_median_shape_after_transp", [1, 1, 1])]
        spacing = plans.get("original_median_spacing_after_transp", [1.0, 1.0, 1.0])
        backward = plans.get("transpose_backward", [0, 1, 2])
        raw = {"foreground_intensity_properties_per_channel": plans.get(
            "foreground_intensity_properties_per_channel", raw.get("foreground_intensity_properties_per_channel", {})),
            "median_relative_size_after_cropping": raw.get("median_relative_size_after_cropping", 1.0),
            "spacings": [[spacing[a] for a in backward]], "shapes_after_crop": [[shape[a] for a in backward]]}
        (Path(tmp) / "dataset_fingerprint.json").write_text(json.dumps(raw))
        return fingerprint_from_nnunet(Path(tmp) / "dataset_fingerprint.json", folder.path / "dataset.json")


def import_nnunet(source: Path, output: Path, configurations: list[str] | None = None,
                  folds: list[str] | None = None, checkpoint: str = "final",
                  postprocessing: str = "auto") -> ImportReport:
    """Check and convert the nnU-Net model at ``source``; write the selfunet model archive ``output``."""
    source, output = Path(source), Path(output)
    if checkpoint not in CHECKPOINTS:
        raise SelfUNetError(f"--checkpoint {checkpoint!r}: choose final or best.")
    if not source.exists():
        raise SelfUNetError(f"{source}: no such folder or zip.")
    with tempfile.TemporaryDirectory(prefix="selfunet-nnunet-") as tmp:
        root = unpack_zip(source, Path(tmp) / "unpacked") if source.is_file() else source
        members, suggested_pp = choose_folders(root, configurations)
        plans = read_json(members[0].path / "plans.json", "plans.json")
        stages = _with_previous_stages(members, plans, find_trainer_folders(root))
        return _convert(stages, [m.configuration for m in members], plans, suggested_pp, output, Path(tmp), folds,
                        checkpoint, postprocessing, source)


def _convert(stages: list[TrainerFolder], members: list[str], plans: dict, suggested_pp: Path | None, output: Path,
             tmp: Path, folds: list[str] | None, checkpoint: str, postprocessing: str, source: Path) -> ImportReport:
    from selfunet.evaluation.ensemble import CandidateScore, Selection
    from selfunet.model_archive import export_model
    from selfunet.runtime import save_checkpoint
    from selfunet.training.network import build_network

    names = [s.configuration for s in stages]
    if len(set(names)) != len(names):
        raise SelfUNetError(f"{source}: the chosen trainer folders repeat a configuration ({', '.join(names)}); one "
                            "archive holds each configuration once: choose with --configuration.")
    dataset = read_json(stages[0].path / "dataset.json", "dataset.json")
    for stage in stages:
        check_trainer(stage.trainer, str(stage.path))
        if read_json(stage.path / "plans.json", "plans.json") != plans or read_json(
                stage.path / "dataset.json", "dataset.json") != dataset:
            raise SelfUNetError(f"{stage.path}: its plans.json or dataset.json differs from {stages[0].path}'s; "
                                "models planned differently cannot share one archive: import them one at a time.")
    fingerprint = _fingerprint(stages[0], plans, dataset)
    plan = plan_from_nnunet(plans, dataset, fingerprint, [s.configuration for s in stages], str(stages[0].path))
    work = tmp / "work"
    work.mkdir()
    report = ImportReport(output, members, {}, {}, "none")
    for stage in stages:
        configuration = plan.configurations[stage.configuration]
        chosen = fold_folders(stage, checkpoint, folds)
        if "all" in chosen and len(chosen) > 1:
            raise SelfUNetError(f"{stage.path}: fold 'all' cannot be mixed with numbered folds; pass --fold all alone.")
        report.folds[stage.configuration] = list(chosen)
        for fold_name, path in chosen.items():
            payload = load_nnunet_checkpoint(path)
            trainer = payload.get("trainer_name", stage.trainer)
            check_trainer(str(trainer), str(path))
            report.trainers[stage.configuration] = str(trainer)
            init = payload.get("init_args") if isinstance(payload.get("init_args"), dict) else {}
            if init.get("configuration", stage.configuration) != stage.configuration:
                raise SelfUNetError(f"{path}: the checkpoint was trained for configuration "
                                    f"{quote(init.get('configuration'), 60)}, the folder says "
                                    f"'{stage.configuration}'.")
            _mirror_axes_ok(payload, configuration.dimension, str(path))
            network = build_network(configuration.topology, plan.input_channels(stage.configuration),
                                    plan.num_outputs, deep_supervision=False)
            state, mapping = state_from_nnunet(payload["network_weights"], network, str(path))
            report.mappings[f"{stage.configuration}/fold_{fold_name}"] = mapping
            del payload
            fold = 0 if fold_name == "all" else int(fold_name)
            target = work / "train" / stage.configuration / f"fold_{fold}" / "checkpoint_final.pt"
            target.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(target, {"format": "selfunet-checkpoint-1", "network": state,
                                     "plan": plan.model_dump(mode="json"), "configuration": stage.configuration,
                                     "fold": fold})
    member_folds = report.folds[members[0]]
    pp_path = _postprocessing_file(postprocessing, stages[:len(members)], member_folds, suggested_pp)
    from selfunet.inference.postprocess import PostprocessingRule

    rule = PostprocessingRule()
    if pp_path is not None:
        rule = rule_from_steps(read_postprocessing_pickle(pp_path), plan, str(pp_path))
        report.postprocessing = f"{pp_path.parent.name}/{pp_path.name}"
    plan.save(work / "plan.json")
    fingerprint.save(work / "fingerprint.json")
    scheme = plan.label_scheme
    evaluated = scheme.evaluation_classes({int(k): v for k, v in plan.labels.items()})[0]
    name = "+".join(members)
    Selection(selected=name, members=members, postprocessing=rule,
              candidates=[CandidateScore(name=name, members=members, num_cases=0,
                                         prediction_dir=f"nnU-Net: {clip(str(source), 200)}",
                                         mean_foreground_dice=None, dice={}, postprocessing=rule)],
              labels={str(k): v for k, v in evaluated.items()}, file_ending=fingerprint.dataset.file_ending,
              num_cases=0, empty_mask_rule="").save(work / "selection.json")
    export_model(work, output)
    log.info("imported %s (%s; folds %s; postprocessing %s) into %s", source, name, report.folds,
             report.postprocessing, output)
    return report


# -- --model accepting nnU-Net models directly ----------------------------------------------------
def is_nnunet_model(path: Path) -> bool:
    """A folder with an nnU-Net trainer folder in it (or below), or a zip without a selfunet manifest
    that holds a plans.json."""
    path = Path(path)
    if path.is_dir():
        return bool(find_trainer_folders(path))
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [i.filename for i in archive.infolist()[:10_000]]
        except (zipfile.BadZipFile, OSError):
            return False
        return "manifest.json" not in names and any(n.endswith("/plans.json") for n in names)
    return False


def model_archive_for(path: Path, folder: Path) -> Path:
    """``path`` itself when it is a selfunet model archive; an nnU-Net model imported into
    ``folder/model.zip`` (every check of :func:`import_nnunet`) otherwise."""
    path = Path(path)
    if not is_nnunet_model(path):
        return path
    target = Path(folder) / "model.zip"
    import_nnunet(path, target)
    return target
