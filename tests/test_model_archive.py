"""Model sharing and fine-tuning end to end on the demo data: export-model, predict --model,
plan --from-plan, train --pretrained-weights.

Two folds of the tiny plan are trained for two iterations each (plumbing, not quality). The
selection is written directly (one member, a largest-component rule) instead of being computed by
cross-validation: what is tested here is that the archive carries it, not how it is decided.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.dataset import DatasetSpec
from selfunet.data.demo import make_demo_dataset
from selfunet.errors import SelfUNetError
from selfunet.evaluation.ensemble import Selection
from selfunet.inference.postprocess import PostprocessingRule
from selfunet.planning.fingerprint_types import Fingerprint
from selfunet.planning.plan_types import Plan
from selfunet.planning.transfer import transfer_plan

runner = CliRunner()
TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--device", "cpu",
         "--no-predict-validation"]


@pytest.fixture(scope="module")
def exported(tiny_work_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(work directory with two trained folds and a selection, its model.zip)."""
    work = Path(shutil.copytree(tiny_work_template, tmp_path_factory.mktemp("archive") / "work"))
    for fold in (0, 1):
        result = runner.invoke(app, ["train", str(work), "-c", "3d_fullres", "-f", str(fold), *TRAIN])
        assert result.exit_code == 0, result.output
    Selection(selected="3d_fullres", members=["3d_fullres"],
              postprocessing=PostprocessingRule(largest_component_all_foreground=True),
              candidates=[], labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz", num_cases=6,
              ).save(work / "selection.json")
    archive = work.parent / "model.zip"
    result = runner.invoke(app, ["export-model", str(work), "-o", str(archive)])
    assert result.exit_code == 0, result.output
    return work, archive


def small_test_image(demo_dataset: DatasetSpec, folder: Path) -> Path:
    """A 4x16x16 crop of the first test image (both channels, same header): prediction in seconds."""
    full = sitk.ReadImage(str(demo_dataset.test[0].images[0]))  # 4D: (x, y, z, channel)
    small = sitk.GetImageFromArray(sitk.GetArrayFromImage(full)[:, 6:10, 20:36, 20:36], isVector=False)
    for setter, getter in ((small.SetSpacing, full.GetSpacing), (small.SetOrigin, full.GetOrigin),
                           (small.SetDirection, full.GetDirection)):
        setter(getter())
    path = folder / "small.nii.gz"
    sitk.WriteImage(small, str(path))
    return path


def test_archive_holds_json_and_plain_state_dicts_with_checked_hashes(exported: tuple[Path, Path]) -> None:
    _, archive = exported
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        assert names == {"manifest.json", *manifest["files"]}
        assert {"plan.json", "fingerprint.json", "selection.json", "weights/3d_fullres/fold_0.pt",
                "weights/3d_fullres/fold_1.pt"} <= names
        assert manifest["folds"] == {"3d_fullres": [0, 1]} and manifest["versions"]["torch"] == torch.__version__
        facts = json.loads(z.read("fingerprint.json"))
        assert facts["dataset"]["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
        assert "root" not in facts["dataset"] and len(facts["intensity"]) == 2
        for name in names:
            data = z.read(name)
            if name.endswith(".pt"):  # only tensors: weights_only loading succeeds
                state = torch.load(io.BytesIO(data), weights_only=True)
                assert all(isinstance(v, torch.Tensor) for v in state.values())
            else:
                json.loads(data)


def test_predict_with_the_archive_equals_predict_with_the_work_directory(
        exported: tuple[Path, Path], demo_dataset: DatasetSpec, tmp_path: Path) -> None:
    work, archive = exported
    image = small_test_image(demo_dataset, tmp_path)
    common = ["-c", "3d_fullres", "--device", "cpu"]
    from_work = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / "a"), "-w", str(work),
                                    "--selection", str(work / "selection.json"), *common])
    assert from_work.exit_code == 0, from_work.output
    shutil.rmtree(work / "train")  # the archive must be self-sufficient
    from_zip = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / "b"), "--model", str(archive),
                                   "--device", "cpu"])
    assert from_zip.exit_code == 0, from_zip.output
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / image.name)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / image.name)))
    np.testing.assert_array_equal(a, b)


def test_a_damaged_archive_is_refused_naming_the_file(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, archive = exported
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "weights/3d_fullres/fold_1.pt":
                data = data[:-8] + b"\0" * 8
            target.writestr(name, data)
    (tmp_path / "in").mkdir()
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(damaged)])
    assert result.exit_code == 1
    assert "fold_1.pt" in result.output and "sha256" in result.output


def test_from_plan_keeps_the_architecture_and_takes_this_datasets_facts(
        tiny_work_template: Path, tmp_path: Path) -> None:
    source = Plan.load(tiny_work_template / "plan.json")
    regions = make_demo_dataset(tmp_path / "regions", num_training=3, num_test=0, variant="regions")
    work = tmp_path / "work"
    assert runner.invoke(app, ["fingerprint", str(regions.root), "-w", str(work)]).exit_code == 0
    result = runner.invoke(app, ["plan", str(work), "--from-plan", str(tiny_work_template / "plan.json")])
    assert result.exit_code == 0, result.output
    moved = Plan.load(work / "plan.json")
    fingerprint = Fingerprint.load(work / "fingerprint.json")
    config, original = moved.configurations["3d_fullres"], source.configurations["3d_fullres"]
    for field in ("topology", "patch_size", "spacing", "batch_size", "data_identifier"):
        assert getattr(config, field) == getattr(original, field), field
    assert moved.transpose_forward == source.transpose_forward
    assert moved.label_scheme.has_regions and moved.num_outputs == 3 and moved.dataset_name == "SelfUNetDemoRegions"
    assert moved.labels == {str(k): v for k, v in fingerprint.dataset.labels.items()}
    # channel count must agree
    one_channel = fingerprint.model_copy(update={"dataset": fingerprint.dataset.model_copy(
        update={"channel_names": ["CT"]})})
    with pytest.raises(SelfUNetError, match="2 input channel"):
        transfer_plan(source, one_channel)


def test_fine_tuning_from_the_exported_weights_on_another_dataset(
        exported: tuple[Path, Path], tmp_path: Path) -> None:
    work, archive = exported
    regions = make_demo_dataset(tmp_path / "regions", num_training=4, num_test=0, variant="regions")
    target = tmp_path / "work"
    assert runner.invoke(app, ["fingerprint", str(regions.root), "-w", str(target)]).exit_code == 0
    assert runner.invoke(app, ["plan", str(target), "--from-plan", str(work / "plan.json")]).exit_code == 0
    assert runner.invoke(app, ["preprocess", str(target), "-c", "3d_fullres", "-p", "1"]).exit_code == 0
    with zipfile.ZipFile(archive) as z:
        (tmp_path / "fold_0.pt").write_bytes(z.read("weights/3d_fullres/fold_0.pt"))
    result = runner.invoke(app, ["train", str(target), "-c", "3d_fullres", "-f", "0", *TRAIN,
                                 "--pretrained-weights", str(tmp_path / "fold_0.pt")])
    assert result.exit_code == 0, result.output
    saved = json.loads((target / "train" / "3d_fullres" / "fold_0" / "train_config.json").read_text())
    assert saved["pretrained_weights"] == str((tmp_path / "fold_0.pt").resolve())
    # a plan with another topology cannot take these weights: the error names the layer
    plan = Plan.load(target / "plan.json")
    config = plan.configurations["3d_fullres"]
    features = [f * 2 for f in config.topology.features_per_stage]
    wider = config.topology.model_copy(update={"features_per_stage": features})
    plan.model_copy(update={"configurations": {"3d_fullres": config.model_copy(update={"topology": wider})}}).save(
        target / "plan.json")
    result = runner.invoke(app, ["train", str(target), "-c", "3d_fullres", "-f", "1", *TRAIN,
                                 "--pretrained-weights", str(tmp_path / "fold_0.pt")])
    assert result.exit_code == 1
    assert "layer 'encoder.0." in result.output and "has shape" in result.output


def test_grand_challenge_context_from_the_archive_predicts_like_selfunet(
        exported: tuple[Path, Path], demo_dataset: DatasetSpec, tmp_path: Path) -> None:
    """`harness export gc --model model.zip`: the archive (verified) becomes the context's model/, and
    the entry point (run here on the host, as the container runs it) gives `selfunet predict --model`'s labels."""
    import os
    import subprocess
    import sys

    from harness.challenge.gc_case import write_case
    from harness.cli import app as harness_app

    _, archive = exported
    context = tmp_path / "gc"
    result = runner.invoke(harness_app, ["export", "gc", "--model", str(archive), "--out", str(context)])
    assert result.exit_code == 0, result.output
    config = json.loads((context / "gc.json").read_text())
    assert config["source_model"] == str(archive.resolve()) and config["members"] == ["3d_fullres"]
    assert sorted(p.name for p in (context / "model" / "train" / "3d_fullres").iterdir()) == ["fold_0", "fold_1"]

    small = small_test_image(demo_dataset, tmp_path)
    write_case(tmp_path / "input", [small], ["image"])
    (tmp_path / "output").mkdir()
    env = {**os.environ, "GC_INPUT": str(tmp_path / "input"), "GC_OUTPUT": str(tmp_path / "output"),
           "GC_DEVICE": "cpu", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, str(context / "inference.py")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    (produced,) = sorted((tmp_path / "output" / "images" / "segmentation").glob("*.mha"))
    expected = runner.invoke(app, ["predict", str(small), "-o", str(tmp_path / "host"), "--model", str(archive)])
    assert expected.exit_code == 0, expected.output
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(produced)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "host" / small.name)))
    np.testing.assert_array_equal(a, b)
