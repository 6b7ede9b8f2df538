"""The reference (nnU-Net v2) side of the interoperability oracle tests; run with the reference's python.

    $SELFUNET_REFERENCE_PYTHON tests/interop/reference_driver.py JOB.json

One process does everything a job asks (importing nnunetv2 and torch once is most of the cost on
a small CPU machine):

* ``datasets``: per dataset (already in ``nnUNet_raw`` layout): fingerprint; plan with the named
  planner (under ``plans_name`` if given); shrink the network (``features_per_stage``: the plans'
  stages and kernels, fewer features; batches of at most 8 in 2D and 2 in 3D; with ``max_patch`` a
  smaller patch, so that a test image takes several overlapping windows); preprocess; write
  ``splits_final.json`` (the last ``val_cases`` cases validate fold 0); train fold 0 of each
  configuration for ``iterations`` iterations (torch, numpy and random seeded); validate the
  configurations in ``validate`` and pack them with ``nnUNetv2_export_model_to_zip``'s function
  into ``export_zip``; write the ``postprocessing`` steps as a ``postprocessing.pkl`` where
  ``nnUNetv2_find_best_configuration`` puts it;
* ``predict``: ``nnUNetPredictor.initialize_from_trained_model_folder`` + ``predict_from_files_sequential``
  on a folder of images, with or without mirroring, probabilities saved; with ``postprocessing``
  (a ``postprocessing.pkl``) the label maps also postprocessed as ``nnUNetv2_apply_postprocessing``
  does, into ``<output>_postprocessed``.

Training uses nnU-Net's own ``run_training`` with the shipped training-length variant
``nnUNetTrainer_1epoch``; the only change is its number of iterations per epoch (a subclass under the
same name, returned by nnU-Net's trainer lookup), so the checkpoints name a trainer class that
nnU-Net itself finds again when it predicts. nnU-Net's worker pools (fingerprint, preprocessing,
export) run as thread pools in this process, which saves a fresh interpreter per pool and changes
nothing they compute. Nothing of nnU-Net is copied.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
import random
import sys
import time
import types
from pathlib import Path


def _in_process_pools(*modules) -> None:
    """nnU-Net's ``multiprocessing.get_context("spawn").Pool`` as a thread pool, in the given modules."""

    class Shim(types.ModuleType):
        def __getattr__(self, name):
            return getattr(multiprocessing, name)

        @staticmethod
        def get_context(method=None):
            return types.SimpleNamespace(Pool=multiprocessing.pool.ThreadPool)

    for module in modules:
        module.multiprocessing = Shim("multiprocessing")


def _shrink(plans_file: Path, base_features: int, max_batch: dict, max_patch: dict | None) -> None:
    """Fewer features per stage (same stages, kernels and strides), a smaller batch (the residual
    presets' planners fill a batch with up to the whole of a tiny dataset) and, with ``max_patch``,
    a smaller patch (a multiple of the network's total stride per axis), so that a test image takes
    several overlapping windows."""
    plans = json.loads(plans_file.read_text())
    for config in plans["configurations"].values():
        kind = "2d" if len(config.get("patch_size", [])) == 2 else "3d"
        kwargs = config.get("architecture", {}).get("arch_kwargs")
        if kwargs:
            kwargs["features_per_stage"] = [base_features * 2**i for i in range(kwargs["n_stages"])]
        if kwargs and max_patch and kind in max_patch:
            total = [1] * len(config["patch_size"])
            for stride in kwargs["strides"]:
                total = [t * s for t, s in zip(total, stride)]
            config["patch_size"] = [max(t, min(p, m) // t * t) for p, m, t in zip(config["patch_size"],
                                                                                  max_patch[kind], total)]
        if "batch_size" in config:
            config["batch_size"] = min(config["batch_size"], max_batch[kind])
    plans_file.write_text(json.dumps(plans, indent=1))


def prepare(spec: dict, log) -> None:
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation
    from nnunetv2.run import run_training as rt
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import nnUNetTrainer_1epoch
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    dataset_id = int(spec["id"])
    name = maybe_convert_to_dataset_name(dataset_id)
    planner = spec.get("planner", "ExperimentPlanner")
    configurations = spec["configurations"]
    started = time.time()
    if not (Path(nnUNet_preprocessed) / name / "dataset_fingerprint.json").is_file():
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=False, verbose=False)
    threads = torch.get_num_threads()
    os.environ["nnUNet_n_proc_DA"] = "1"  # noqa: SIM112 (nnU-Net's variable); the planner sets torch's threads to it while it estimates memory
    plans_id = plan_experiments([dataset_id], planner, preprocess_class_name="DefaultPreprocessor",
                                gpu_memory_target_in_gb=spec.get("gpu_memory_gb"),
                                overwrite_plans_name=spec.get("plans_name"))
    plans_file = Path(nnUNet_preprocessed) / name / f"{plans_id}.json"
    _shrink(plans_file, spec.get("features", 8), spec.get("max_batch", {"2d": 8, "3d": 2}), spec.get("max_patch"))
    preprocess([dataset_id], plans_id, configurations=configurations, num_processes=[1] * len(configurations),
               verbose=False)
    labels = Path(os.environ["nnUNet_raw"]) / name / "labelsTr"  # noqa: SIM112 (nnU-Net's variable)
    cases = sorted(p.name[: -len(".nii.gz")] for p in labels.glob("*.nii.gz"))
    val = spec.get("val_cases", 1)
    (Path(nnUNet_preprocessed) / name / "splits_final.json").write_text(
        json.dumps([{"train": cases[:-val], "val": cases[-val:]}]))
    log(f"{name} ({plans_id}): planned and preprocessed in {time.time() - started:.1f} s")
    torch.set_num_threads(threads)
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 (nnU-Net's variable); data augmentation in this process: no worker processes

    iterations, validate = spec.get("iterations", 10), set(spec.get("validate", []))

    class Budget(nnUNetTrainer_1epoch):  # nnU-Net records __init__'s arguments by name: spell them out
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = 1

        def perform_actual_validation(self, save_probabilities: bool = False):
            if self.configuration_name in validate:  # export_pretrained_model needs its summary.json
                super().perform_actual_validation(save_probabilities)

    Budget.__name__ = Budget.__qualname__ = "nnUNetTrainer_1epoch"
    lookup = rt.recursive_find_trainer_class_by_name
    rt.recursive_find_trainer_class_by_name = lambda n: Budget if n == "nnUNetTrainer_1epoch" else lookup(n)
    try:
        for configuration in configurations:
            started = time.time()
            for seed in (torch.manual_seed, np.random.seed, random.seed):  # nnU-Net seeds nothing itself
                seed(spec.get("seed", 0))
            rt.run_training(str(dataset_id), configuration, 0, trainer_class_name="nnUNetTrainer_1epoch",
                            plans_identifier=plans_id, device=torch.device("cpu"))
            log(f"{name} {configuration}: trained {iterations} iterations in {time.time() - started:.1f} s")
    finally:
        rt.recursive_find_trainer_class_by_name = lookup
    for configuration, steps in (spec.get("postprocessing") or {}).items():
        # what nnUNetv2_find_best_configuration writes: nnU-Net's function objects and their keyword
        # arguments; its label lists hold numpy integers (LabelManager.foreground_labels), its regions tuples
        folder = Path(nnUNet_results) / name / f"nnUNetTrainer_1epoch__{plans_id}__{configuration}" / \
            "crossval_results_folds_0"
        folder.mkdir(parents=True, exist_ok=True)
        targets = [tuple(s["region"]) if isinstance(s, dict) else [np.int64(v) for v in s] if isinstance(s, list)
                   else int(s) for s in steps]
        save_pickle(([remove_all_but_largest_component_from_segmentation] * len(steps),
                     [{"labels_or_regions": t} for t in targets]), str(folder / "postprocessing.pkl"))
    if spec.get("export_zip"):
        from nnunetv2.model_sharing.model_export import export_pretrained_model

        export_pretrained_model(dataset_id, spec["export_zip"], configurations=tuple(validate),
                                trainer="nnUNetTrainer_1epoch", plans_identifier=plans_id, folds=(0,))
        log(f"{name}: exported {spec['export_zip']}")


def predict(spec: dict, log) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    started = time.time()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=spec["mirroring"],
                                device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(spec["model"], use_folds=tuple(spec.get("folds", (0,))),
                                                   checkpoint_name=spec.get("checkpoint", "checkpoint_final.pth"))
    Path(spec["output"]).mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(spec["input"], spec["output"], save_probabilities=True, overwrite=True,
                                            folder_with_segs_from_prev_stage=None)
    if spec.get("postprocessing"):  # what nnUNetv2_apply_postprocessing does with the chosen postprocessing.pkl
        from batchgenerators.utilities.file_and_folder_operations import load_pickle
        from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing_to_folder

        functions, kwargs = load_pickle(spec["postprocessing"])
        apply_postprocessing_to_folder(spec["output"], spec["output"] + "_postprocessed", functions, kwargs,
                                       plans_file_or_dict=str(Path(spec["model"]) / "plans.json"),
                                       dataset_json_file_or_dict=str(Path(spec["model"]) / "dataset.json"),
                                       num_processes=1)
    log(f"predicted {spec['input']} with {Path(spec['model']).name} (mirroring {spec['mirroring']}) in "
        f"{time.time() - started:.1f} s")


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    for key in ("raw", "preprocessed", "results"):
        if key in job:
            os.environ[f"nnUNet_{key}"] = job[key]
    import torch

    torch.set_num_threads(max(1, min(job.get("threads", 2), os.cpu_count() or 1)))
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.inference import predict_from_raw_data
    from nnunetv2.postprocessing import remove_connected_components
    from nnunetv2.preprocessing.preprocessors import default_preprocessor
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer

    _in_process_pools(fingerprint_extractor, default_preprocessor, nnUNetTrainer, predict_from_raw_data,
                      remove_connected_components)
    begun = time.time()

    def log(message: str) -> None:
        print(f"[reference {time.time() - begun:6.1f} s] {message}", flush=True)

    for spec in job.get("datasets", []):
        prepare(spec, log)
    for spec in job.get("predict", []):
        predict(spec, log)


if __name__ == "__main__":
    main()
