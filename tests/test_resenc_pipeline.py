"""Residual-encoder preset end to end: ``selfunet plan --preset resenc-m`` on the demo, one tiny
training epoch of one fold, prediction with it (directly and as the member
``3d_fullres@resenc-m`` of another work directory)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import make_tiny_work
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.dataset import DatasetSpec
from selfunet.evaluation.ensemble import configuration_sort_key
from selfunet.inference.predict import load_trained_model
from selfunet.planning.plan_types import Plan
from selfunet.training.resenc_network import ResidualBlock
from selfunet.workdir import WorkDir, member_name, split_member

runner = CliRunner()
TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--device", "cpu",
         "--no-predict-validation"]


def test_plan_command_with_a_preset_writes_a_residual_plan(demo_root: Path, tmp_path: Path, demo_fingerprint) -> None:
    work = tmp_path / "work"
    demo_fingerprint.save(work / "fingerprint.json")
    result = runner.invoke(app, ["plan", str(work), "--preset", "resenc-m", "--show"])
    assert result.exit_code == 0, result.output
    plan = Plan.load(work / "plan.json")
    assert plan.schema_version == 2 and plan.settings.preset == "resenc-m"
    assert plan.settings.batch_cap_fraction == 1.0 and plan.settings.gpu_memory_gb == 8.0
    for configuration in plan.configurations.values():
        topology = configuration.topology
        assert topology.architecture == "residual_encoder"
        assert topology.blocks_per_stage_encoder[:3] == [1, 3, 4][: topology.num_stages]
        assert topology.convs_per_stage_decoder == [1] * (topology.num_stages - 1)
    bad = runner.invoke(app, ["plan", str(work), "--preset", "resenc-s"])
    assert bad.exit_code != 0 and "unknown planner preset 'resenc-s'" in bad.output


def test_a_version_1_plan_still_loads_as_plain_unets(tmp_path: Path, demo_fingerprint) -> None:
    from selfunet.planning.plan import plan_experiment

    raw = json.loads(plan_experiment(demo_fingerprint).model_dump_json())
    raw["schema_version"] = 1
    for name in ("preset", "decoder_convs_per_stage", "architecture", "residual_blocks_per_stage",
                 "budget_per_reference_batch"):
        raw["settings"].pop(name)
    for configuration in raw["configurations"].values():
        configuration["topology"].pop("architecture")
        configuration["topology"].pop("blocks_per_stage_encoder")
    (tmp_path / "plan.json").write_text(json.dumps(raw))
    plan = Plan.load(tmp_path / "plan.json")
    assert all(c.topology.architecture == "plain" for c in plan.configurations.values())


def test_member_names_address_another_planners_work_dir(tmp_path: Path) -> None:
    work = WorkDir(tmp_path)
    assert split_member("3d_fullres@resenc-m") == ("3d_fullres", "resenc-m")
    assert split_member("2d") == ("2d", None) and member_name("2d", "default") == "2d"
    assert work.member("3d_lowres@resenc-l") == (WorkDir(tmp_path / "planners" / "resenc-l"), "3d_lowres")
    names = ["3d_fullres@resenc-m", "3d_fullres", "2d@resenc-m", "2d"]
    assert sorted(names, key=configuration_sort_key) == ["2d", "2d@resenc-m", "3d_fullres", "3d_fullres@resenc-m"]


@pytest.mark.slow
def test_resenc_plan_trains_one_fold_and_predicts(demo_root: Path, demo_dataset: DatasetSpec,
                                                   tmp_path: Path) -> None:
    work = make_tiny_work(demo_root, tmp_path / "resenc", preset="resenc-m")
    result = runner.invoke(app, ["train", str(work), "-c", "3d_fullres", "-f", "0", *TRAIN])
    assert result.exit_code == 0, result.output
    checkpoint = work / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    model = load_trained_model(checkpoint, torch.device("cpu"))
    assert model.plan.settings.preset == "resenc-m"
    assert sum(isinstance(m, ResidualBlock) for m in model.network.modules()) == 1 + 3 + 4

    image = demo_dataset.test[0].images[0]  # one case keeps the test fast; test_predict covers the rest
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(image), "-o", str(out), "-w", str(work), "-c", "3d_fullres",
                                 "-f", "0", "--no-mirroring", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = sorted(out.glob("*.nii.gz"))
    assert [w.name for w in written] == [Path(image).name]
    prediction, source = sitk.ReadImage(str(written[0])), sitk.ReadImage(str(image))
    assert prediction.GetSize() == source.GetSize()[:3]
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2}

    # the same model as a member of another work directory: WORK/planners/resenc-m
    parent = tmp_path / "parent"
    shutil.copytree(work, parent / "planners" / "resenc-m")
    member_out = tmp_path / "member"
    result = runner.invoke(app, ["predict", str(image), "-o", str(member_out), "-w", str(parent),
                                 "-c", "3d_fullres@resenc-m", "-f", "0", "--no-mirroring", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for a in written:
        b = member_out / a.name
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(b))))
