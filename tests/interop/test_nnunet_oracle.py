"""Oracle: nnU-Net v2's own trained models predicted by nnU-Net and by selfunet, and selfunet's models
predicted by nnU-Net (docs/guide/interoperability.md reports the numbers).

The reference trains five small models on the demo data (tests/interop/reference_driver.py, one
process): a plain U-Net 3d_fullres and 2d on the two-channel MR-like task, a residual-encoder U-Net
(nnUNetPlannerResEncM) and a region-based 3d_fullres model whose first channel is named CT (so CT
normalization is mapped too). Each is imported with ``selfunet import-nnunet`` and the test images
are predicted by ``nnUNetPredictor`` and by ``selfunet predict --model``, with and without mirroring;
where the model folder carries a ``postprocessing.pkl``, nnU-Net's labels are postprocessed as
``nnUNetv2_apply_postprocessing`` does and ours by the imported rule.

With the patches nnU-Net plans for these small images, a test image fits one window; a fifth
model (3d_fullres with a 12 x 32 x 32 patch) makes the windows overlap, which is where the two
Gaussian weight maps differ.

The bar, per case: labels identical on at least :data:`MIN_LABEL_AGREEMENT` of the voxels
(:data:`MIN_LABEL_AGREEMENT_OVERLAP` where windows overlap), and the probabilities (softmax, or
sigmoid per region) within :data:`PROBABILITY_TOLERANCE` (mean and 99.9th percentile of
|difference| over the voxels). Exact equality is not expected: nnU-Net resamples the
logits back to the image grid and then applies the softmax, we resample the probabilities (the
largest difference, at class boundaries of cases whose spacing is not the target's); it sums the
window logits in float16 (we sum in float32); its Gaussian weight map is centred at ``patch // 2``
(ours at ``(patch - 1) / 2``, half a voxel apart: it reweights overlapping windows) and it rounds
window starts half-to-even; its spline resampling of the images clips each slice to the slice's
input range and repeats the edge voxels, ours does not clip and mirrors.

Budget: a few minutes on 2 cores in all; the trained models are shared by every test (session
fixtures), the datasets are 6 + 2 tiny cases, the networks have 8 features in their first stage.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from selfunet.cli import app

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
MIN_LABEL_AGREEMENT = 0.999
#: where windows overlap, the two Gaussian weight maps differ by half a voxel (the module doc)
MIN_LABEL_AGREEMENT_OVERLAP = 0.995
#: mean and 99.9th percentile of |p_selfunet - p_nnunet| per case
PROBABILITY_TOLERANCE = {"mean": 5e-3, "p99.9": 0.15}
ITERATIONS = 30
runner = CliRunner()


@dataclass(frozen=True)
class Model:
    key: str
    dataset: str
    configuration: str
    planner: str = "ExperimentPlanner"
    postprocessing: tuple = ()
    max_patch: tuple = ()
    """a smaller patch than planned: the test images then take several overlapping windows."""

    @property
    def plans(self) -> str:
        if self.max_patch:
            return "nnUNetPlansSmallPatch"
        return "nnUNetResEncUNetMPlans" if self.planner == "nnUNetPlannerResEncM" else "nnUNetPlans"

    @property
    def min_agreement(self) -> float:
        return MIN_LABEL_AGREEMENT_OVERLAP if self.max_patch else MIN_LABEL_AGREEMENT

    @property
    def folder_name(self) -> str:
        return f"nnUNetTrainer_1epoch__{self.plans}__{self.configuration}"


DEMO, REGIONS = "Dataset931_Demo", "Dataset932_Regions"
MODELS = (
    Model("3d_fullres", DEMO, "3d_fullres", postprocessing=([1, 2], 2)),
    Model("2d", DEMO, "2d"),
    Model("resenc_2d", DEMO, "2d", planner="nnUNetPlannerResEncM"),
    Model("regions_ct", REGIONS, "3d_fullres", postprocessing=([1, 2, 3], {"region": [2, 3]})),
    Model("3d_fullres_overlap", DEMO, "3d_fullres", max_patch=(12, 32, 32)),
)


@dataclass
class Bench:
    root: Path
    python: str

    def trainer_folder(self, model: Model) -> Path:
        return self.root / "results" / model.dataset / model.folder_name

    def images(self, dataset: str) -> Path:
        return self.root / "raw" / dataset / "imagesTs"

    def run_reference(self, job: dict, name: str) -> None:
        path = self.root / f"{name}.json"
        path.write_text(json.dumps({"raw": str(self.root / "raw"), "preprocessed": str(self.root / "preprocessed"),
                                    "results": str(self.root / "results"), **job}, indent=1))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        done = subprocess.run([self.python, str(HERE / "reference_driver.py"), str(path)], capture_output=True,
                              text=True, timeout=3600)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        (self.root / f"{name}.log").write_text(done.stdout + done.stderr)
        print(f"reference {name}: {time.time() - started:.0f} s wall, "
              f"{used.ru_utime + used.ru_stime - before.ru_utime - before.ru_stime:.0f} s CPU")
        assert done.returncode == 0, f"the reference failed ({name}):\n{(done.stdout + done.stderr)[-4000:]}"


def _datasets(raw: Path, demo_nnunetv2: Path, tmp: Path) -> None:
    from selfunet.data.demo import make_demo_dataset

    shutil.copytree(demo_nnunetv2, raw / DEMO)
    regions = make_demo_dataset(tmp / "regions", num_training=6, num_test=2, seed=0, variant="regions")
    shutil.copytree(regions.root, raw / REGIONS, ignore=shutil.ignore_patterns(".selfunet*", "labelsTs"))
    descriptor = json.loads((raw / REGIONS / "dataset.json").read_text())
    descriptor["channel_names"] = {"0": "CT", "1": "MR-T2"}  # CTNormalization on channel 0
    descriptor["numTraining"] = 6
    (raw / REGIONS / "dataset.json").write_text(json.dumps(descriptor, indent=1))


def _steps_file(bench: Bench, model: Model) -> Path | None:
    if not model.postprocessing:
        return None
    return bench.trainer_folder(model) / "crossval_results_folds_0" / "postprocessing.pkl"


@pytest.fixture(scope="session")
def bench(reference_python: str, demo_dataset_nnunetv2, tmp_path_factory: pytest.TempPathFactory) -> Bench:
    """The reference's trained models, their predictions of the test images, and the export zip."""
    root = tmp_path_factory.mktemp("nnunet_interop")
    _datasets(root / "raw", Path(demo_dataset_nnunetv2.root), root)
    bench = Bench(root, reference_python)
    datasets = []
    groups: dict[tuple, list[Model]] = {}
    for m in MODELS:
        groups.setdefault((m.dataset, m.planner, m.plans), []).append(m)
    for (dataset, planner, plans), members in groups.items():
        spec = {"id": int(dataset[7:10]), "planner": planner, "configurations": [m.configuration for m in members],
                "features": 8, "iterations": ITERATIONS, "val_cases": 1,
                "postprocessing": {m.configuration: list(m.postprocessing) for m in members if m.postprocessing}}
        if members[0].max_patch:
            spec.update(plans_name=plans, max_patch={"3d": list(members[0].max_patch)})
        if plans == "nnUNetPlans" and dataset == DEMO:
            spec.update(validate=["3d_fullres"], export_zip=str(root / "exported.zip"))
        datasets.append(spec)
    predictions = []
    for model in MODELS:
        for mirroring in (True, False):
            spec = {"model": str(bench.trainer_folder(model)), "input": str(bench.images(model.dataset)),
                    "output": str(root / "reference" / f"{model.key}-{'m' if mirroring else 'n'}"),
                    "mirroring": mirroring}
            if model.postprocessing:
                spec["postprocessing"] = str(_steps_file(bench, model))
            predictions.append(spec)
    bench.run_reference({"datasets": datasets, "predict": predictions}, "train_and_predict")
    return bench


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="session")
def ours(bench: Bench) -> dict[str, Path]:
    """Each model imported with `selfunet import-nnunet` and predicted with `selfunet predict --model`."""
    started = time.process_time()
    archives = {}
    for model in MODELS:
        archive = bench.root / "imported" / f"{model.key}.zip"
        _invoke("import-nnunet", str(bench.trainer_folder(model)), "-o", str(archive))
        archives[model.key] = archive
        for mirroring in (True, False):
            _invoke("predict", str(bench.images(model.dataset)), "-o",
                    str(bench.root / "selfunet" / f"{model.key}-{'m' if mirroring else 'n'}"), "--model", str(archive),
                    "--save-probabilities", "--device", "cpu", "--amp", "off",
                    *(() if mirroring else ("--no-mirroring",)))
    print(f"selfunet: imported and predicted in {time.process_time() - started:.0f} s CPU")
    return archives


def _probabilities(ours_file: Path, reference_shape: tuple[int, ...], regions: bool) -> np.ndarray:
    from selfunet.preprocessing.revert import load_probabilities, uncrop

    cropped, properties = load_probabilities(ours_file)
    return np.stack([uncrop(channel, properties, fill=1.0 if k == 0 and not regions else 0.0)
                     for k, channel in enumerate(cropped)]).reshape(reference_shape)


def compare(reference: Path, selfunet: Path, regions: bool = False, reference_labels: Path | None = None) -> list[dict]:
    """Per case: label agreement and |probability difference| (mean, 99.9th percentile, max)."""
    rows = []
    for label_file in sorted((reference_labels or reference).glob("*.nii.gz")):
        case = label_file.name[: -len(".nii.gz")]
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        mine = sitk.GetArrayFromImage(sitk.ReadImage(str(selfunet / label_file.name)))
        ref_p = np.load(reference / f"{case}.npz")["probabilities"].astype(np.float32)
        diff = np.abs(_probabilities(selfunet / f"{case}.npz", ref_p.shape, regions) - ref_p)
        rows.append({"case": case, "voxels": int(ref.size), "agreement": float((ref == mine).mean()),
                     "differing": int((ref != mine).sum()), "p_mean": float(diff.mean()),
                     "p99.9": float(np.quantile(diff, 0.999)), "p_max": float(diff.max())})
    assert rows, f"no predictions in {reference}"
    return rows


def _record(bench: Bench, name: str, rows: list[dict]) -> None:
    """Every comparison into agreement.json (and $SELFUNET_INTEROP_REPORT), which the docs table reports."""
    path = bench.root / "agreement.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[name] = rows
    path.write_text(json.dumps(table, indent=1))
    if os.environ.get("SELFUNET_INTEROP_REPORT"):
        shutil.copyfile(path, os.environ["SELFUNET_INTEROP_REPORT"])
    for r in rows:
        print(f"{name} {r['case']}: labels {100 * r['agreement']:.3f}% ({r['differing']} of {r['voxels']} differ), "
              f"|dp| mean {r['p_mean']:.1e} p99.9 {r['p99.9']:.3f} max {r['p_max']:.3f}")


def _check(rows: list[dict], min_agreement: float = MIN_LABEL_AGREEMENT) -> None:
    for r in rows:
        assert r["agreement"] >= min_agreement, r
        assert r["p_mean"] <= PROBABILITY_TOLERANCE["mean"] and r["p99.9"] <= PROBABILITY_TOLERANCE["p99.9"], r


@pytest.mark.parametrize("mirroring", [True, False], ids=["mirroring", "no-mirroring"])
@pytest.mark.parametrize("model", MODELS, ids=[m.key for m in MODELS])
def test_selfunet_predicts_what_nnunet_predicts(bench: Bench, ours: dict[str, Path], model: Model,
                                               mirroring: bool) -> None:
    suffix = "m" if mirroring else "n"
    reference = bench.root / "reference" / f"{model.key}-{suffix}"
    labels = Path(f"{reference}_postprocessed") if model.postprocessing else None
    rows = compare(reference, bench.root / "selfunet" / f"{model.key}-{suffix}", model.dataset == REGIONS, labels)
    _record(bench, f"import {model.key} {'mirroring' if mirroring else 'no mirroring'}", rows)
    _check(rows, model.min_agreement)


def test_import_uses_every_tensor_once_and_reads_the_postprocessing(bench: Bench, ours: dict[str, Path]) -> None:
    from selfunet.interop.nnunet_import import import_nnunet
    from selfunet.model_archive import load_model_archive

    for model in MODELS:
        report = import_nnunet(bench.trainer_folder(model), bench.root / "check" / f"{model.key}.zip")
        ((_, mapping),) = report.mappings.items()
        loaded = load_model_archive(report.output, __import__("torch").device("cpu"))
        network = loaded.models[model.configuration][0].network
        assert sorted(o for _, o in mapping.pairs) == sorted(network.state_dict())
        assert len({t for t, _ in mapping.pairs}) == len(mapping.pairs)
        assert report.trainers == {model.configuration: "nnUNetTrainer_1epoch"}
        rule = loaded.postprocessing
        assert loaded.plan.configurations[model.configuration].patch_size == list(
            json.loads((bench.trainer_folder(model) / "plans.json").read_text())["configurations"][
                model.configuration]["patch_size"])
        if model.key == "3d_fullres":
            assert rule.largest_component_all_foreground and rule.largest_component_per_class == [2]
        elif model.key == "regions_ct":
            assert rule.largest_component_all_foreground and rule.largest_component_per_class == [2]
            assert rule.values_of(2) == [2, 3]
            assert loaded.plan.configurations["3d_fullres"].normalization[0].scheme == "ct"
        else:
            assert rule.is_identity
        if model.planner == "nnUNetPlannerResEncM":
            assert loaded.plan.configurations["2d"].topology.architecture == "residual_encoder"


def test_exported_zip_imports_like_the_folder(bench: Bench, ours: dict[str, Path], tmp_path: Path) -> None:
    """``nnUNetv2_export_model_to_zip`` output (plans, dataset files, checkpoint, its postprocessing)."""
    import torch

    from selfunet.model_archive import load_model_archive

    output = _invoke("import-nnunet", str(bench.root / "exported.zip"), "-o", str(tmp_path / "zip.zip"))
    output = " ".join(output.split())
    assert "3d_fullres (3d_fullres: folds 0" in output and "crossval_results_folds_0/postprocessing.pkl" in output
    zipped, folder = (load_model_archive(p, torch.device("cpu")) for p in (tmp_path / "zip.zip", ours["3d_fullres"]))
    a, b = (m.models["3d_fullres"][0].network.state_dict() for m in (zipped, folder))
    assert all(torch.equal(a[k], b[k]) for k in a) and zipped.plan == folder.plan
    assert zipped.postprocessing == folder.postprocessing


def test_a_results_folder_with_several_models_needs_a_choice(bench: Bench, ours: dict[str, Path],
                                                            tmp_path: Path) -> None:
    result = runner.invoke(app, ["import-nnunet", str(bench.root / "results" / DEMO), "-o", str(tmp_path / "x.zip")])
    assert result.exit_code == 1 and "--configuration" in result.output
    output = _invoke("import-nnunet", str(bench.root / "results" / DEMO), "-c",
                     "nnUNetTrainer_1epoch__nnUNetResEncUNetMPlans__2d", "-o", str(tmp_path / "x.zip"))
    assert "2d (2d: folds 0" in " ".join(output.split())


# -- the other direction: selfunet models predicted by nnU-Net ----------------------------------------
@pytest.fixture(scope="session")
def exported(bench: Bench, ours: dict[str, Path], tiny_work_template: Path) -> dict[str, Path]:
    """A model trained here (the tiny demo plan, fold 0) and the imported 3d_fullres model, each
    exported with `selfunet export-model --format nnunet` and predicted by nnU-Net."""
    from selfunet.evaluation.ensemble import Selection
    from selfunet.inference.postprocess import PostprocessingRule

    work = Path(shutil.copytree(tiny_work_template, bench.root / "selfunet_work"))
    _invoke("train", str(work), "-c", "3d_fullres", "-f", "0", "--epochs", "1", "--iterations-per-epoch",
            str(ITERATIONS), "--validation-iterations", "1", "--device", "cpu", "--amp", "off",
            "--no-predict-validation")
    Selection(selected="3d_fullres", members=["3d_fullres"], postprocessing=PostprocessingRule(), candidates=[],
              labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz", num_cases=6).save(work / "selection.json")
    results = bench.root / "exported_results"
    _invoke("export-model", str(work), "--format", "nnunet", "-o", str(results), "--nnunet-dataset",
            "Dataset934_Trained")
    _invoke("export-model", str(ours["3d_fullres"]), "--format", "nnunet", "-o", str(results), "--nnunet-dataset",
            "Dataset933_RoundTrip")
    folders = {"trained": results / "Dataset934_Trained" / "nnUNetTrainer__selfunetPlans__3d_fullres",
               "roundtrip": results / "Dataset933_RoundTrip" / "nnUNetTrainer__selfunetPlans__3d_fullres"}
    predictions = [{"model": str(folders[key]), "input": str(bench.images(DEMO)), "mirroring": mirroring,
                    "output": str(bench.root / "reference" / f"export-{key}-{'m' if mirroring else 'n'}")}
                   for key in folders for mirroring in (True, False)]
    bench.run_reference({"predict": predictions}, "predict_exported")
    for mirroring in (True, False):
        out = bench.root / "selfunet" / f"trained-{'m' if mirroring else 'n'}"
        _invoke("predict", str(bench.images(DEMO)), "-o", str(out),
                "-w", str(work), "-c", "3d_fullres", "--save-probabilities", "--device", "cpu", "--amp", "off",
                *(() if mirroring else ("--no-mirroring",)))
    return folders


@pytest.mark.parametrize("mirroring", [True, False], ids=["mirroring", "no-mirroring"])
def test_nnunet_predicts_what_selfunet_predicts_with_an_exported_model(bench: Bench, exported: dict[str, Path],
                                                                       mirroring: bool) -> None:
    suffix = "m" if mirroring else "n"
    rows = compare(bench.root / "reference" / f"export-trained-{suffix}", bench.root / "selfunet" / f"trained-{suffix}")
    _record(bench, f"export trained-here 3d_fullres {'mirroring' if mirroring else 'no mirroring'}", rows)
    _check(rows, MIN_LABEL_AGREEMENT_OVERLAP)  # the tiny plan's 16 x 32 x 32 patch: the windows overlap


@pytest.mark.parametrize("mirroring", [True, False], ids=["mirroring", "no-mirroring"])
def test_round_trip_predicts_exactly_like_the_original(bench: Bench, exported: dict[str, Path],
                                                      mirroring: bool) -> None:
    """nnU-Net -> selfunet -> nnU-Net: nnU-Net predicts the round-tripped model exactly as the original."""
    suffix = "m" if mirroring else "n"
    original = bench.root / "reference" / f"3d_fullres-{suffix}"
    back = bench.root / "reference" / f"export-roundtrip-{suffix}"
    for label_file in sorted(original.glob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(back / label_file.name)))
        assert np.array_equal(a, b), label_file.name
        case = label_file.name[: -len(".nii.gz")]
        assert np.array_equal(np.load(original / f"{case}.npz")["probabilities"],
                              np.load(back / f"{case}.npz")["probabilities"]), case


if __name__ == "__main__":  # pragma: no cover - `python test_nnunet_oracle.py agreement.json` prints the docs table
    table = json.loads(Path(sys.argv[1]).read_text())
    print("| comparison | case | voxels | labels identical | differing voxels | mean \\|Δp\\| | p99.9 \\|Δp\\| | "
          "max \\|Δp\\| |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in table.items():
        for r in rows:
            print(f"| {name} | {r['case']} | {r['voxels']:,} | {100 * r['agreement']:.3f}% | {r['differing']} | "
                  f"{r['p_mean']:.1e} | {r['p99.9']:.3f} | {r['p_max']:.3f} |")
