"""``selfunet export-model W --format nnunet -o DIR``: a selfunet model as nnU-Net v2 trainer folders.

Written under ``DIR`` as nnU-Net's results folder holds them, so ``nnUNet_results=DIR nnUNetv2_predict
-d ### -c CONFIG -tr nnUNetTrainer -p selfunetPlans -f ...`` (or ``nnUNetPredictor
.initialize_from_trained_model_folder``) predicts with the model::

    DIR/Dataset###_Name/
      nnUNetTrainer__selfunetPlans__<configuration>/     one per configuration (cascade stages too)
        plans.json  dataset.json  dataset_fingerprint.json
        fold_<k>/checkpoint_final.pth                    the network weights under nnU-Net's names
        crossval_results_folds_<k_l..>/postprocessing.pkl  (+ .json) a single model's postprocessing
      ensembles/ensemble___<A>___<B>___<folds>/postprocessing.pkl   an ensemble's postprocessing
      inference_information.json                         the selected model or ensemble

The source is a work directory (its selection, as ``selfunet export-model`` packs it) or a
model.zip; either way it goes through :mod:`selfunet.model_archive` (export, then the verified
unpacking), so exactly what an archive carries is converted. The checkpoints hold plain values
only (``weights_only`` loads them); nnU-Net's ``trainer_name`` is ``nnUNetTrainer``, whose network
and prediction are ours (:mod:`selfunet.interop.nnunet_network`, :mod:`selfunet.interop.nnunet_plans`).

What nnU-Net cannot express is refused rather than approximated silently: different CT constants
for one channel in two configurations (nnU-Net keeps one set per channel). Our postprocessing rule
re-applies its all-foreground step after the per-class steps; nnU-Net's list of steps does not, which
matters only when removing a class's component splits the foreground (docs/guide/interoperability.md).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from selfunet.artifacts import atomic_write_bytes, atomic_write_json
from selfunet.errors import SelfUNetError
from selfunet.interop.nnunet_files import PP_FUNCTION, postprocessing_pickle, save_nnunet_checkpoint
from selfunet.interop.nnunet_network import state_to_nnunet
from selfunet.interop.nnunet_plans import dataset_json_from_plan, plans_from_plan

log = logging.getLogger(__name__)

TRAINER = "nnUNetTrainer"
PLANS_NAME = "selfunetPlans"
DATASET_NAME = re.compile(r"Dataset[0-9]{3}_[A-Za-z0-9_.-]+")


@dataclass
class ExportReport:
    root: Path
    dataset: str
    members: list[str]
    folders: list[Path] = field(default_factory=list)
    folds: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        first = self.members[0]
        number = int(self.dataset[len("Dataset"):len("Dataset") + 3])
        folds = " ".join(str(f) for f in self.folds[first])
        return (f"wrote {len(self.folders)} nnU-Net trainer folder(s) under {self.root / self.dataset} "
                f"({', '.join(f.name for f in self.folders)}); predict with nnU-Net: nnUNet_results={self.root} "
                f"nnUNetv2_predict -d {number} -c {first} -tr {TRAINER} -p {PLANS_NAME} -f {folds} -i IN -o OUT")


def nnunet_dataset_name(plan_name: str, wanted: str | None) -> str:
    """``Dataset###_Name``: ``wanted``, else the plan's dataset name if it has that form, else Dataset999_<name>."""
    if wanted is not None:
        if not DATASET_NAME.fullmatch(wanted):
            raise SelfUNetError(f"--nnunet-dataset {wanted!r}: use nnU-Net's form Dataset###_Name, e.g. "
                                "Dataset501_Liver.")
        return wanted
    if DATASET_NAME.fullmatch(plan_name):
        return plan_name
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", plan_name).strip("_") or "selfunet"
    return f"Dataset999_{cleaned[:60]}"


def _fingerprint_json(facts: dict) -> dict:
    properties = {str(c["channel"]): {k: c[k] for k in ("max", "mean", "median", "min", "percentile_00_5",
                                                        "percentile_99_5", "std")} for c in facts["intensity"]}
    # the archive keeps the dataset facts inference needs, not the per-case spacings and shapes
    return {"foreground_intensity_properties_per_channel": properties,
            "median_relative_size_after_cropping": facts.get("median_relative_size_after_crop", 1.0),
            "shapes_after_crop": [], "spacings": []}


def _postprocessing_targets(rule, plan) -> list:
    """Our rule as nnU-Net's steps: all foreground labels (a list), then each class (a label) or
    region (a tuple of labels, written as a list in JSON)."""
    scheme = plan.label_scheme
    foreground = sorted(int(v) for v in plan.labels if int(v) != 0 and int(v) != scheme.ignore_label)
    targets: list = [foreground] if rule.largest_component_all_foreground else []
    for key in rule.largest_component_per_class:
        targets.append(tuple(rule.values_of(int(key))) if scheme.has_regions else int(key))
    return targets


def _write_postprocessing(folder: Path, targets: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "postprocessing.pkl", postprocessing_pickle(targets))
    atomic_write_json(folder / "postprocessing.json", {
        "postprocessing_fns": [PP_FUNCTION] * len(targets),
        "postprocessing_kwargs": [{"labels_or_regions": list(t) if isinstance(t, tuple) else t} for t in targets]})


def export_nnunet(source: Path, output: Path, selection: Path | None = None,
                  dataset: str | None = None) -> ExportReport:
    """Write the model at ``source`` (work directory or model.zip) as nnU-Net trainer folders under ``output``."""
    from selfunet.model_archive import export_model, unpack_model_archive

    source, output = Path(source), Path(output)
    with tempfile.TemporaryDirectory(prefix="selfunet-nnunet-export-") as tmp:
        if source.is_file():
            if selection is not None:
                raise SelfUNetError("export-model: --selection is for a work directory; a model.zip carries its own.")
            archive = source
        else:
            archive = export_model(source, Path(tmp) / "model.zip", selection)
        return _write(unpack_model_archive(archive, Path(tmp) / "unpacked"), output, dataset)


def _write(folder: Path, output: Path, dataset: str | None) -> ExportReport:
    from selfunet.evaluation.ensemble import Selection
    from selfunet.planning.plan_types import Plan
    from selfunet.runtime import load_checkpoint

    plan = Plan.load(folder / "plan.json")
    selection = Selection.load(folder / "selection.json")
    facts = json.loads((folder / "dataset_facts.json").read_text())
    stages = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    name = nnunet_dataset_name(plan.dataset_name, dataset)
    plans = plans_from_plan(plan, facts["intensity"], name, PLANS_NAME, stages)
    summary = facts["dataset"]
    dataset_json = dataset_json_from_plan(plan, summary["channel_names"], summary["file_ending"],
                                          summary.get("num_training", 0))
    root = output / name
    report = ExportReport(output, name, list(selection.members))
    for stage in stages:
        trainer_folder = root / f"{TRAINER}__{PLANS_NAME}__{stage}"
        existing = [p for p in trainer_folder.glob("fold_*/checkpoint_final.pth")]
        if existing:
            raise SelfUNetError(f"{trainer_folder} already holds a model ({existing[0]}); choose another -o or "
                                "--nnunet-dataset, or delete it.")
        trainer_folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(trainer_folder / "plans.json", plans)
        atomic_write_json(trainer_folder / "dataset.json", dataset_json)
        atomic_write_json(trainer_folder / "dataset_fingerprint.json", _fingerprint_json(facts))
        configuration = plan.configurations[stage]
        report.folds[stage] = []
        for fold_dir in sorted((folder / "train" / stage).iterdir(), key=lambda p: int(p.name.split("_")[1])):
            fold = int(fold_dir.name.removeprefix("fold_"))
            state = load_checkpoint(fold_dir / "checkpoint_final.pt")["network"]
            weights = state_to_nnunet(state, configuration.topology)
            target = trainer_folder / fold_dir.name / "checkpoint_final.pth"
            target.parent.mkdir(parents=True, exist_ok=True)
            save_nnunet_checkpoint(target, {
                "network_weights": weights, "trainer_name": TRAINER, "current_epoch": 0,
                "init_args": {"plans": plans, "configuration": stage, "fold": fold, "dataset_json": dataset_json,
                              "device": "cpu"},
                "inference_allowed_mirroring_axes": tuple(range(configuration.dimension)),
                "exported_by": "selfunet export-model --format nnunet"})
            report.folds[stage].append(fold)
        report.folders.append(trainer_folder)
    members = list(selection.members)
    folds_text = "_".join(str(f) for f in report.folds[members[0]])
    targets = _postprocessing_targets(selection.postprocessing, plan)
    identifiers = [f"{TRAINER}__{PLANS_NAME}__{m}" for m in members]
    if len(members) == 1:
        pp_folder = root / identifiers[0] / f"crossval_results_folds_{folds_text}"
    else:
        pp_folder = root / "ensembles" / ("ensemble___" + "___".join(identifiers) + f"___{folds_text}")
    _write_postprocessing(pp_folder, targets)
    atomic_write_json(root / "inference_information.json", {
        "dataset_name_or_id": name, "folds": report.folds[members[0]], "considered_models": [],
        "ensembling_allowed": len(members) > 1,
        "best_model_or_ensemble": {
            "postprocessing_file": str((pp_folder / "postprocessing.pkl").resolve()),
            "some_plans_file": str((root / identifiers[0] / "plans.json").resolve()),
            "selected_model_or_models": [{"configuration": m, "trainer": TRAINER, "plans_identifier": PLANS_NAME}
                                         for m in members]}})
    log.info("exported %s as nnU-Net trainer folders under %s", "+".join(members), root)
    return report
