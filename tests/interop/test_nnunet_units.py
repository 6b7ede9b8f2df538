"""The nnU-Net v2 interop pieces without the reference installed: safe readers, the structural weight
mapping, plans conversion and refusals, postprocessing, and an export -> import round trip of a
selfunet model that must predict exactly as before (the oracle tests in test_nnunet_oracle.py run
the reference itself)."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from selfunet.errors import SelfUNetError
from selfunet.interop.nnunet_files import (
    PP_FUNCTION,
    PP_MODULE,
    PostprocessingStep,
    load_nnunet_checkpoint,
    postprocessing_pickle,
    read_postprocessing_pickle,
)
from selfunet.interop.nnunet_folders import check_trainer, unpack_zip
from selfunet.interop.nnunet_import import rule_from_steps
from selfunet.interop.nnunet_network import (
    PLAIN_CLASS,
    RESIDUAL_CLASS,
    architecture_from_topology,
    state_from_nnunet,
    state_to_nnunet,
    topology_from_architecture,
)
from selfunet.interop.nnunet_plans import resolve_configuration
from selfunet.planning.plan_types import NetworkTopology
from selfunet.training.network import build_network

PLAIN = NetworkTopology(dimension=3, features_per_stage=[4, 8, 16], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], convs_per_stage_encoder=[2, 2, 2],
                        convs_per_stage_decoder=[2, 2])
RESIDUAL = NetworkTopology(dimension=3, features_per_stage=[4, 8, 16], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                           strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], convs_per_stage_encoder=[2, 6, 8],
                           convs_per_stage_decoder=[1, 1], architecture="residual_encoder",
                           blocks_per_stage_encoder=[1, 3, 4])
FLAT = NetworkTopology(dimension=2, features_per_stage=[4, 8], kernel_sizes=[[3, 3], [3, 3]], strides=[[1, 1], [2, 2]],
                       convs_per_stage_encoder=[2, 2], convs_per_stage_decoder=[2])


def _random_network(topology: NetworkTopology, seed: int = 0):
    torch.manual_seed(seed)
    network = build_network(topology, 2, 3, deep_supervision=False)
    for parameter in network.parameters():
        parameter.data.normal_(0, 0.3)
    return network.eval()


# -- the network -----------------------------------------------------------------------------------
@pytest.mark.parametrize("topology", [PLAIN, RESIDUAL, FLAT], ids=["plain", "residual", "2d"])
def test_architecture_round_trip(topology: NetworkTopology) -> None:
    arch = architecture_from_topology(topology)
    residual = topology.architecture == "residual_encoder"
    assert arch["network_class_name"] == (RESIDUAL_CLASS if residual else PLAIN_CLASS)
    assert topology_from_architecture(json.loads(json.dumps(arch)), topology.dimension, "t") == topology


@pytest.mark.parametrize("topology", [PLAIN, RESIDUAL, FLAT], ids=["plain", "residual", "2d"])
def test_every_tensor_is_used_exactly_once(topology: NetworkTopology) -> None:
    """nnU-Net's names (aliases included) -> our network: each of our tensors filled by exactly one
    of theirs, each of theirs used once or checked as an alias of one that is."""
    network = _random_network(topology)
    theirs = state_to_nnunet(network.state_dict(), topology)
    assert any(".all_modules." in k for k in theirs) and any(k.startswith("decoder.encoder.") for k in theirs)
    fresh = build_network(topology, 2, 3, deep_supervision=False)
    state, mapping = state_from_nnunet(dict(theirs), fresh, "t")
    ours = [o for _, o in mapping.pairs]
    used = [t for t, _ in mapping.pairs]
    assert sorted(ours) == sorted(fresh.state_dict()) and len(set(ours)) == len(ours)
    assert len(set(used)) == len(used)
    assert set(used) | set(mapping.aliases) == set(theirs) and not set(used) & set(mapping.aliases)
    assert set(mapping.aliases.values()) <= set(theirs)
    for key, tensor in network.state_dict().items():
        assert torch.equal(state[key], tensor)


def test_weight_mapping_refusals() -> None:
    network = _random_network(PLAIN)
    theirs = dict(state_to_nnunet(network.state_dict(), PLAIN))
    fresh = build_network(PLAIN, 2, 3, deep_supervision=False)
    bad = dict(theirs)
    key = next(k for k in bad if ".all_modules.0.weight" in k)
    bad[key] = bad[key] + 1  # an alias that differs from what it repeats
    with pytest.raises(SelfUNetError, match="should repeat"):
        state_from_nnunet(bad, fresh, "t")
    bad = {**theirs, "decoder.extra_head.weight": torch.zeros(1)}
    with pytest.raises(SelfUNetError, match="belong to no part"):
        state_from_nnunet(bad, fresh, "t")
    bad = dict(theirs)
    bad["decoder.seg_layers.1.weight"] = torch.zeros(5, 4, 1, 1, 1)  # five classes, the plan has three
    with pytest.raises(SelfUNetError, match=r"seg_layers\.1\.weight"):
        state_from_nnunet(bad, fresh, "t")
    bad = {**theirs, "encoder.stages.0.0.convs.0.norm.running_mean": torch.zeros(4)}
    with pytest.raises(SelfUNetError, match="batch norm"):
        state_from_nnunet(bad, fresh, "t")
    bad = {k: v for k, v in theirs.items() if "decoder.stages.1.convs.1" not in k}
    with pytest.raises(SelfUNetError, match=r"decoder\.stages"):
        state_from_nnunet(bad, fresh, "t")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("network_class_name", "my_lab.MyUNet", "custom network"),
    ("norm_op", "torch.nn.modules.batchnorm.BatchNorm3d", "norm_op"),
    ("nonlin", "torch.nn.ReLU", "nonlin"),
    ("nonlin_kwargs", {"negative_slope": 0.2, "inplace": True}, "nonlin_kwargs"),
    ("conv_bias", False, "conv_bias"),
    ("nonlin_first", True, "nonlin_first"),
    ("squeeze_excitation", True, "squeeze_excitation"),
    ("made_up_option", 1, "not understood"),
])
def test_architecture_refusals(field: str, value, message: str) -> None:
    arch = architecture_from_topology(PLAIN)
    if field == "network_class_name":
        arch[field] = value
    else:
        arch["arch_kwargs"][field] = value
    with pytest.raises(SelfUNetError, match=message):
        topology_from_architecture(arch, 3, "plans.json")


# -- the plans ------------------------------------------------------------------------------------
def test_inherits_from_is_resolved_and_cycles_refused() -> None:
    plans = {"configurations": {"3d_fullres": {"patch_size": [8, 8, 8], "batch_size": 2},
                                "3d_bs4": {"inherits_from": "3d_fullres", "batch_size": 4},
                                "a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}}}
    assert resolve_configuration(plans, "3d_bs4", "p") == {"patch_size": [8, 8, 8], "batch_size": 4}
    with pytest.raises(SelfUNetError, match="circle"):
        resolve_configuration(plans, "a", "p")
    with pytest.raises(SelfUNetError, match=r"not in plans\.json"):
        resolve_configuration(plans, "2d", "p")


# -- postprocessing ---------------------------------------------------------------------------------
def _fake_nnunet(monkeypatch: pytest.MonkeyPatch):
    """A stand-in module at nnU-Net's path, so the stock unpickler can resolve the function."""
    module = types.ModuleType(PP_MODULE)

    def remove_all_but_largest_component_from_segmentation(segmentation, labels_or_regions, background_label=0):
        return segmentation

    remove_all_but_largest_component_from_segmentation.__module__ = PP_MODULE
    remove_all_but_largest_component_from_segmentation.__qualname__ = PP_FUNCTION
    setattr(module, PP_FUNCTION, remove_all_but_largest_component_from_segmentation)
    for name in ("nnunetv2", "nnunetv2.postprocessing"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, PP_MODULE, module)
    return getattr(module, PP_FUNCTION)


def test_postprocessing_pickle_reads_back_with_nnunets_own_unpickler(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    data = postprocessing_pickle([[1, 2], 2, (2, 3)])
    function = _fake_nnunet(monkeypatch)
    functions, kwargs = pickle.loads(data)  # what nnU-Net's load_pickle does
    assert functions == [function] * 3
    assert kwargs == [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}, {"labels_or_regions": (2, 3)}]
    (tmp_path / "postprocessing.pkl").write_bytes(data)
    assert read_postprocessing_pickle(tmp_path / "postprocessing.pkl") == [
        PostprocessingStep((1, 2)), PostprocessingStep((2,)), PostprocessingStep((2, 3))]
    assert pickle.loads(postprocessing_pickle([])) == ([], [])


def test_postprocessing_pickle_as_nnunet_writes_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """nnU-Net pickles its function by reference and numpy integers (LabelManager's label lists)."""
    function = _fake_nnunet(monkeypatch)
    steps = ([function, function], [{"labels_or_regions": [np.int64(1), np.int64(2)]}, {"labels_or_regions": 1}])
    for protocol in (2, 4, 5):
        (tmp_path / "postprocessing.pkl").write_bytes(pickle.dumps(steps, protocol=protocol))
        assert read_postprocessing_pickle(tmp_path / "postprocessing.pkl") == [
            PostprocessingStep((1, 2)), PostprocessingStep((1,))]


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/selfunet-pickle-ran"),))


def test_postprocessing_pickle_never_runs_code(tmp_path: Path) -> None:
    marker = Path("/tmp/selfunet-pickle-ran")
    marker.unlink(missing_ok=True)
    (tmp_path / "postprocessing.pkl").write_bytes(pickle.dumps(([_Evil()], [{"labels_or_regions": 1}])))
    with pytest.raises(SelfUNetError, match="never unpickles"):
        read_postprocessing_pickle(tmp_path / "postprocessing.pkl")
    assert not marker.exists()
    (tmp_path / "postprocessing.pkl").write_bytes(pickle.dumps((["not a function"], [{"labels_or_regions": 1}])))
    with pytest.raises(SelfUNetError, match="is not nnU-Net's"):
        read_postprocessing_pickle(tmp_path / "postprocessing.pkl")


def test_checkpoint_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "trainer": _Evil()}, path)
    marker = Path("/tmp/selfunet-pickle-ran")
    marker.unlink(missing_ok=True)
    with pytest.raises(SelfUNetError, match="refused"):
        load_nnunet_checkpoint(path)
    assert not marker.exists()
    torch.save({"network_weights": {"w": torch.zeros(1)}, "logging": {"dice": [np.float32(0.5), np.float64(0.1)]},
                "_best_ema": np.float32(0.3), "inference_allowed_mirroring_axes": (0, 1, 2)}, path)
    payload = load_nnunet_checkpoint(path)  # numpy scalars in the training log are plain values
    assert payload["logging"]["dice"][0] == pytest.approx(0.5)
    assert payload["inference_allowed_mirroring_axes"] == (0, 1, 2)


class _Scheme:
    def __init__(self, plan_labels, regions=None):
        from selfunet.data.labels import LabelScheme, Region

        self.labels = plan_labels
        self.label_scheme = LabelScheme(regions=[Region(name=f"r{i}", labels=r) for i, r in enumerate(regions or [])],
                                        regions_class_order=[r[-1] for r in regions or []])


def test_postprocessing_steps_become_our_rule() -> None:
    plan = _Scheme({"0": "bg", "1": "organ", "2": "lesion"})
    rule = rule_from_steps([PostprocessingStep((1, 2)), PostprocessingStep((2,))], plan, "pp")
    assert rule.largest_component_all_foreground and rule.largest_component_per_class == [2]
    rule = rule_from_steps([PostprocessingStep((1,))], plan, "pp")
    assert not rule.largest_component_all_foreground and rule.largest_component_per_class == [1]
    with pytest.raises(SelfUNetError, match="--postprocessing none"):
        rule_from_steps([PostprocessingStep((2,)), PostprocessingStep((1, 2))], plan, "pp")
    with pytest.raises(SelfUNetError, match="not background"):
        rule_from_steps([PostprocessingStep((1, 2), background_label=3)], plan, "pp")
    regions = _Scheme({"0": "bg", "1": "a", "2": "b", "3": "c"}, [[1, 2, 3], [2, 3], [3]])
    rule = rule_from_steps([PostprocessingStep((1, 2, 3)), PostprocessingStep((2, 3)), PostprocessingStep((3,))],
                           regions, "pp")
    assert rule.largest_component_all_foreground and rule.largest_component_per_class == [2, 3]
    assert rule.values_of(2) == [2, 3]


# -- folders ----------------------------------------------------------------------------------------
def test_trainer_names() -> None:
    for name in ("nnUNetTrainer", "nnUNetTrainer_1epoch", "nnUNetTrainer_250epochs", "nnUNetTrainer_8000epochs"):
        check_trainer(name, "x")
    for name in ("nnUNetTrainerDA5", "nnUNetTrainer_250epochs_NoMirroring", "nnUNetTrainerBN", "MyTrainer",
                 "nnUNetTrainerNoMirroring"):
        with pytest.raises(SelfUNetError, match="custom trainer"):
            check_trainer(name, "x")


def test_zip_members_outside_the_folder_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../escape.json", "{}")
    with pytest.raises(SelfUNetError, match="outside the folder"):
        unpack_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escape.json").exists()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Dataset001_X/nnUNetTrainer__nnUNetPlans__2d/plans.json", "{}")
        z.writestr("Dataset001_X/nnUNetTrainer__nnUNetPlans__2d/fold_0/progress.png", b"\x89PNG")
    unpack_zip(archive, tmp_path / "out")
    assert (tmp_path / "out/Dataset001_X/nnUNetTrainer__nnUNetPlans__2d/plans.json").is_file()
    assert not (tmp_path / "out/Dataset001_X/nnUNetTrainer__nnUNetPlans__2d/fold_0/progress.png").exists()


# -- export -> import round trip (no reference needed) ----------------------------------------------
@pytest.fixture(scope="module")
def random_model(tiny_work_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory whose two folds hold untrained (random) weights, with a selection."""
    from selfunet.evaluation.ensemble import Selection
    from selfunet.inference.postprocess import PostprocessingRule
    from selfunet.planning.plan_types import Plan
    from selfunet.runtime import save_checkpoint

    work = Path(shutil.copytree(tiny_work_template, tmp_path_factory.mktemp("interop") / "work"))
    plan = Plan.load(work / "plan.json")
    topology = plan.configurations["3d_fullres"].topology
    for fold in (0, 1):
        torch.manual_seed(fold)
        network = build_network(topology, plan.input_channels("3d_fullres"), plan.num_outputs)
        for parameter in network.parameters():
            parameter.data.normal_(0, 0.1)
        path = work / "train" / "3d_fullres" / f"fold_{fold}" / "checkpoint_final.pt"
        path.parent.mkdir(parents=True)
        save_checkpoint(path, {"format": "selfunet-checkpoint-1", "network": network.state_dict(),
                               "plan": plan.model_dump(mode="json"), "configuration": "3d_fullres", "fold": fold})
    Selection(selected="3d_fullres", members=["3d_fullres"],
              postprocessing=PostprocessingRule(largest_component_all_foreground=True, largest_component_per_class=[2]),
              candidates=[], labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz", num_cases=6,
              ).save(work / "selection.json")
    return work


def test_export_then_import_gives_the_same_model(random_model: Path, tmp_path: Path, demo_root: Path) -> None:
    from typer.testing import CliRunner

    from selfunet.cli import app
    from selfunet.model_archive import load_model_archive

    runner = CliRunner()
    result = runner.invoke(app, ["export-model", str(random_model), "--format", "nnunet", "-o", str(tmp_path / "res")])
    assert result.exit_code == 0, result.output
    assert "nnUNetv2_predict -d 999" in result.output
    dataset = next((tmp_path / "res").iterdir())
    trainer = dataset / "nnUNetTrainer__selfunetPlans__3d_fullres"
    assert sorted(p.name for p in trainer.iterdir()) == [
        "crossval_results_folds_0_1", "dataset.json", "dataset_fingerprint.json", "fold_0", "fold_1", "plans.json"]
    payload = torch.load(trainer / "fold_1" / "checkpoint_final.pth", weights_only=True)
    assert payload["trainer_name"] == "nnUNetTrainer" and payload["inference_allowed_mirroring_axes"] == (0, 1, 2)
    plans = json.loads((trainer / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["ZScoreNormalization"] * 2
    assert json.loads((dataset / "inference_information.json").read_text())["best_model_or_ensemble"][
        "selected_model_or_models"] == [{"configuration": "3d_fullres", "trainer": "nnUNetTrainer",
                                         "plans_identifier": "selfunetPlans"}]

    result = runner.invoke(app, ["import-nnunet", str(dataset), "-o", str(tmp_path / "back.zip")])
    assert result.exit_code == 0, result.output
    assert "folds 0, 1" in result.output and "crossval_results_folds_0_1/postprocessing.pkl" in result.output
    original = load_model_archive(_archive(random_model, tmp_path), torch.device("cpu"))
    back = load_model_archive(tmp_path / "back.zip", torch.device("cpu"))
    assert back.postprocessing.largest_component_all_foreground
    assert back.postprocessing.largest_component_per_class == [2]
    derived = {"data_identifier", "estimated_feature_map_elements"}
    assert back.plan.configurations["3d_fullres"].model_dump(exclude=derived) == \
        original.plan.configurations["3d_fullres"].model_dump(exclude=derived)
    for a, b in zip(original.models["3d_fullres"], back.models["3d_fullres"]):
        for key, tensor in a.network.state_dict().items():
            assert torch.equal(tensor, b.network.state_dict()[key])

    # predict --model takes the nnU-Net folder directly, and predicts what the original archive predicts
    image = next((demo_root / "imagesTs").iterdir())
    for source, out in ((_archive(random_model, tmp_path), "a"), (trainer, "b")):
        result = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / out), "--model", str(source),
                                     "--device", "cpu", "--amp", "off", "--no-mirroring"])
        assert result.exit_code == 0, result.output
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / image.name)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / image.name)))
    assert np.array_equal(a, b)


def _archive(work: Path, tmp_path: Path) -> Path:
    from selfunet.model_archive import export_model

    target = tmp_path / "original.zip"
    return target if target.is_file() else export_model(work, target)


def test_import_refusals(random_model: Path, tmp_path: Path) -> None:
    from selfunet.interop.nnunet_export import export_nnunet
    from selfunet.interop.nnunet_import import import_nnunet

    export_nnunet(random_model, tmp_path / "res")
    dataset = next((tmp_path / "res").iterdir())
    trainer = dataset / "nnUNetTrainer__selfunetPlans__3d_fullres"

    custom = dataset / "nnUNetTrainerDA5__selfunetPlans__3d_fullres"
    shutil.copytree(trainer, custom)
    with pytest.raises(SelfUNetError, match="custom trainer"):
        import_nnunet(custom, tmp_path / "m.zip")
    shutil.rmtree(custom)

    plans = json.loads((trainer / "plans.json").read_text())
    changed = json.loads(json.dumps(plans))
    changed["configurations"]["3d_fullres"]["normalization_schemes"][0] = "RGBTo01Normalization"
    (trainer / "plans.json").write_text(json.dumps(changed))
    with pytest.raises(SelfUNetError, match="RGBTo01Normalization"):
        import_nnunet(trainer, tmp_path / "m.zip")
    changed = json.loads(json.dumps(plans))
    changed["image_reader_writer"] = "NibabelIOWithReorient"
    (trainer / "plans.json").write_text(json.dumps(changed))
    with pytest.raises(SelfUNetError, match="SimpleITK"):
        import_nnunet(trainer, tmp_path / "m.zip")
    changed = json.loads(json.dumps(plans))
    changed["configurations"]["3d_fullres"]["previous_stage"] = "3d_lowres"
    changed["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "previous_stage": None}
    (trainer / "plans.json").write_text(json.dumps(changed))
    with pytest.raises(SelfUNetError, match="cascade"):
        import_nnunet(trainer, tmp_path / "m.zip")
    (trainer / "plans.json").write_text(json.dumps(plans))

    checkpoint = trainer / "fold_0" / "checkpoint_final.pth"
    payload = torch.load(checkpoint, weights_only=True)
    torch.save({**payload, "inference_allowed_mirroring_axes": (1, 2)}, checkpoint)
    with pytest.raises(SelfUNetError, match="mirroring"):
        import_nnunet(trainer, tmp_path / "m.zip")
    torch.save({**payload, "trainer_name": "nnUNetTrainerNoMirroring"}, checkpoint)
    with pytest.raises(SelfUNetError, match="custom trainer"):
        import_nnunet(trainer, tmp_path / "m.zip")
    torch.save(payload, checkpoint)
    assert not (tmp_path / "m.zip").exists()
    report = import_nnunet(trainer, tmp_path / "m.zip", folds=["1"], postprocessing="none")
    assert report.folds == {"3d_fullres": ["1"]} and report.postprocessing == "none"


def test_harness_scores_a_model_archive_and_an_nnunet_folder(random_model: Path, tmp_path: Path,
                                                            demo_root: Path) -> None:
    """`harness score -s NAME=model.zip` and `-s NAME=<nnU-Net folder>`: predicted with `selfunet predict
    --model` case by case; the folder is imported once and scores exactly like the archive."""
    import csv

    from harness.challenge.score import ScoreOptions, parse_submission, score_task
    from harness.tasks.descriptor import TaskDescriptor
    from selfunet.interop.nnunet_export import export_nnunet

    archive = _archive(random_model, tmp_path)
    folder = export_nnunet(random_model, tmp_path / "res").folders[0]
    subs = [parse_submission(f"zipped={archive}"), parse_submission(f"nnunet={folder}"),
            parse_submission(f"labels={demo_root / 'labelsTs'}")]
    assert [s.kind for s in subs] == ["model", "model", "folder"]
    task = TaskDescriptor.model_validate({"name": "demo", "dataset": str(demo_root),
                                          "test_labels": str(demo_root / "labelsTs")})
    out = score_task(task, subs, tmp_path / "work", tmp_path / "results", ScoreOptions(selfunet_mirroring=False),
                     selfunet=False)
    assert {r.status for rows in out.values() for r in rows} == {"ok"}
    scores = tmp_path / "results" / "demo" / "scores"

    def dice(name: str) -> dict:
        with open(scores / f"{name}.csv", newline="") as handle:
            return {(r["case"], r["class"]): r["dice"] for r in csv.DictReader(handle)}

    assert dice("zipped") == dice("nnunet")
    assert {float(d) for d in dice("labels").values()} == {1.0}
    record = json.loads((scores / "nnunet.json").read_text())
    assert record["kind"] == "model" and record["folds"] == {"3d_fullres": [0, 1]}
