"""A battery of hostile model archives (docs/guide/security.md), and `selfunet predict` refusing an output folder
that is its input folder.

Every archive is built here from the tiny plan with untrained weights (no training: seconds), then
broken in one way: member names and manifest keys that would build paths outside their place,
sizes the zip's directory declares (or lies about), absurd plan values, malformed manifests, plans,
selections and weights. Each must end in a SelfUNetError naming the archive and the member or
field, never an "unexpected" error, and nothing may be written outside the unpack folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.dataset import DatasetSpec
from selfunet.errors import SelfUNetError
from selfunet.evaluation.ensemble import Selection
from selfunet.inference.postprocess import PostprocessingRule
from selfunet.model_archive import FORMAT, MAX_MEMBERS, load_model_archive, unpack_model_archive
from selfunet.planning.plan_types import Plan
from selfunet.training.network import build_network

runner = CliRunner()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parts(tiny_work_template: Path) -> dict[str, object]:
    """The members of a valid archive as plain values: plan, facts, selection and one fold's weights."""
    plan = Plan.load(tiny_work_template / "plan.json")
    torch.manual_seed(0)
    network = build_network(plan.configurations["3d_fullres"].topology, plan.input_channels("3d_fullres"),
                            plan.num_outputs, deep_supervision=False)
    selection = Selection(selected="3d_fullres", members=["3d_fullres"], postprocessing=PostprocessingRule(),
                          candidates=[], labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz", num_cases=6)
    facts = json.loads((tiny_work_template / "fingerprint.json").read_text())
    return {
        "plan": plan.model_dump(mode="json"),
        "fingerprint": {"dataset": {k: v for k, v in facts["dataset"].items() if k != "root"},
                        "intensity": facts["intensity"],
                        "median_relative_size_after_crop": facts["median_relative_size_after_crop"]},
        "selection": selection.model_dump(mode="json"),
        "state": {k: v.clone() for k, v in network.state_dict().items()},
    }


def _pt(state: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def build(path: Path, parts: dict, *, plan=None, selection=None, state=None, folds=None, extra=None,
          manifest_edit=None, raw_manifest: bytes | None = None) -> Path:
    """A model archive from ``parts`` with any piece replaced; the manifest's sha256 values match
    the members unless ``manifest_edit`` changes them."""
    folds = folds if folds is not None else {"3d_fullres": [0]}
    files: dict[str, bytes] = {
        "plan.json": json.dumps(plan if plan is not None else parts["plan"]).encode(),
        "fingerprint.json": json.dumps(parts["fingerprint"]).encode(),
        "selection.json": json.dumps(selection if selection is not None else parts["selection"]).encode(),
    }
    for stage, stage_folds in folds.items():
        for fold in stage_folds if isinstance(stage_folds, list) else []:
            data = state if isinstance(state, bytes) else _pt(state if state is not None else parts["state"])
            files[f"weights/{stage}/fold_{fold}.pt"] = data
    files.update(extra or {})
    manifest = {"format": FORMAT, "selected": "3d_fullres", "members": ["3d_fullres"], "folds": folds,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    if manifest_edit is not None:
        manifest_edit(manifest)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", raw_manifest if raw_manifest is not None else json.dumps(manifest))
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def refused(path: Path, *words: str) -> str:
    """load and unpack both refuse ``path`` with a SelfUNetError naming it and ``words``; unpacking
    writes nothing."""
    for action in (lambda: load_model_archive(path, CPU), lambda: unpack_model_archive(path, path.parent / "out")):
        with pytest.raises(SelfUNetError) as info:
            action()
        message = str(info.value)
        assert str(path) in message and "unexpected" not in message, message
        for word in words:
            assert word in message, message
    assert not (path.parent / "out").exists()
    return message


def test_a_valid_archive_loads_and_unpacks(parts: dict, tmp_path: Path) -> None:
    path = build(tmp_path / "model.zip", parts)
    loaded = load_model_archive(path, CPU)
    assert loaded.members == ["3d_fullres"] and len(loaded.models["3d_fullres"]) == 1
    folder = unpack_model_archive(path, tmp_path / "unpacked")
    assert (folder / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file()


# ---------------------------------------------------------------------------------------------
# names: nothing builds a path before it is checked


@pytest.mark.parametrize("name", ["../../escape.pt", "/abs/fold_0.pt", "weights/../../x/fold_0.pt",
                                  "weights/3d_fullres/fold_0.pt/../../../y", "notes.txt", "weights/a b/fold_0.pt"])
def test_member_names_outside_the_layout_are_refused(parts: dict, tmp_path: Path, name: str) -> None:
    path = build(tmp_path / "model.zip", parts, extra={name: b"x"})
    refused(path, "is not part of a model archive")
    assert not list(tmp_path.rglob("escape.pt")) and not (tmp_path / "x").exists()


@pytest.mark.parametrize("stage", ["../../victim", "a/b", ".hidden", "", "x" * 65])
def test_fold_keys_that_are_not_configuration_names_are_refused(parts: dict, tmp_path: Path, stage: str) -> None:
    path = build(tmp_path / "model.zip", parts, manifest_edit=lambda m: m.update(folds={stage: [0]}))
    refused(path, "manifest.json field 'folds'", "is not a configuration name")
    assert not (tmp_path.parent / "victim").exists()


@pytest.mark.parametrize("folds", [["0/../../x"], [-1], [True], [1000], [0.0], [0, 0], [], "0"])
def test_fold_numbers_are_checked(parts: dict, tmp_path: Path, folds) -> None:
    path = build(tmp_path / "model.zip", parts, manifest_edit=lambda m: m.update(folds={"3d_fullres": folds}))
    refused(path, "manifest.json field 'folds.3d_fullres'")


def test_manifest_files_entries_are_checked(parts: dict, tmp_path: Path) -> None:
    path = build(tmp_path / "a.zip", parts, manifest_edit=lambda m: m["files"].update({"../x.json": "0" * 64}))
    refused(path, "manifest.json field 'files'")
    path = build(tmp_path / "b.zip", parts, manifest_edit=lambda m: m["files"].update({"plan.json": "not-hex"}))
    refused(path, "manifest.json field 'files'", "sha256")


# ---------------------------------------------------------------------------------------------
# sizes: the directory is checked before reading, and reading is bounded


def test_a_member_declaring_more_than_its_bound_is_refused_unread(parts: dict, tmp_path: Path) -> None:
    plan = dict(parts["plan"], padding=" " * (17 * 2**20))  # 17 MiB that deflate to kilobytes
    path = build(tmp_path / "model.zip", parts, plan=plan)
    assert path.stat().st_size < 2**20
    refused(path, "member 'plan.json' declares", "more than the bound")


def _patch_declared_size(path: Path, name: str, size: int) -> None:
    """Make the zip's directory (and the member's local header) claim ``size`` uncompressed bytes."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x01\x02", 24, 46), (b"PK\x03\x04", 22, 30)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_at: start + name_at + len(encoded)] == encoded:
                data[start + size_at: start + size_at + 4] = size.to_bytes(4, "little")
            start += 4
    path.write_bytes(bytes(data))


def test_a_directory_that_lies_about_a_size_cannot_inflate_past_it(parts: dict, tmp_path: Path) -> None:
    path = build(tmp_path / "model.zip", parts)
    _patch_declared_size(path, "plan.json", 10)
    refused(path, "'plan.json' cannot be read", "damaged")


def test_an_archive_listing_too_many_members_is_refused_before_its_directory_is_read(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(MAX_MEMBERS + 1):
            archive.writestr(f"m{i}", b"")
    refused(path, f"lists {MAX_MEMBERS + 1:,} members")


def test_not_a_zip_and_missing_archives(tmp_path: Path) -> None:
    (tmp_path / "junk.zip").write_bytes(b"\x00" * 1000)
    refused(tmp_path / "junk.zip", "not a selfunet model archive")
    with pytest.raises(SelfUNetError, match="model archive not found"):
        load_model_archive(tmp_path / "none.zip", CPU)


# ---------------------------------------------------------------------------------------------
# malformed pieces: clean errors naming the member and the field


@pytest.mark.parametrize(("raw", "words"), [
    (b"{not json", ["'manifest.json' is not valid JSON"]),
    (b"[1, 2]", ["'manifest.json' must be a JSON object"]),
    (json.dumps({"format": "other-9"}).encode(), ["archive format 'other-9'"]),
    (json.dumps({"format": FORMAT, "files": {}, "folds": {}}).encode(), ["manifest.json field 'files'"]),
    (json.dumps({"format": FORMAT, "files": {"plan.json": "0" * 64}}).encode(), ["manifest.json field 'folds'"]),
    (b"\xff\xfe\x00", ["'manifest.json' is not valid JSON"]),
])
def test_malformed_manifests(parts: dict, tmp_path: Path, raw: bytes, words: list[str]) -> None:
    refused(build(tmp_path / "model.zip", parts, raw_manifest=raw), *words)


def _plan_with(parts: dict, **changes) -> dict:
    plan = json.loads(json.dumps(parts["plan"]))
    configuration = plan["configurations"]["3d_fullres"]
    for key, value in changes.items():
        if key in configuration["topology"]:
            configuration["topology"][key] = value
        elif key in configuration:
            configuration[key] = value
        else:
            plan[key] = value
    return plan


@pytest.mark.parametrize(("changes", "field"), [
    ({"features_per_stage": [8, 16, 10**7]}, "features_per_stage"),
    ({"features_per_stage": [4096, 4096, 4096]}, "parameters"),
    ({"patch_size": [4096, 4096, 4096]}, "patch_size"),
    ({"patch_size": [10**6, 32, 32]}, "patch_size"),
    ({"batch_size": 10**9}, "batch_size"),
    ({"batch_size": 4096, "patch_size": [256, 512, 512]}, "activations"),
    ({"num_classes": 10**9}, "num_classes"),
    ({"num_input_channels": 0}, "num_input_channels"),
    ({"spacing": [-1.0, 1.0, 1.0]}, "spacing"),
    ({"spacing": [1e30, 1.0, 1.0]}, "spacing"),
    ({"strides": [[1, 1, 1]] * 3 + [[2, 2, 2]] * 40}, "strides"),
    ({"kernel_sizes": [[3, 3, 3], [3, 3, 3]]}, "kernel_sizes"),
    ({"transpose_forward": [0, 0, 1]}, "transpose_forward"),
    ({"data_identifier": "../../elsewhere"}, "data_identifier"),
    ({"previous_stage": "3d_lowres"}, "previous_stage"),
    ({"configurations": {"x": 1}}, "configurations"),
])
def test_absurd_or_malformed_plans_name_the_field(parts: dict, tmp_path: Path, changes: dict, field: str) -> None:
    refused(build(tmp_path / "model.zip", parts, plan=_plan_with(parts, **changes)), "plan.json", field)


def test_a_plan_without_the_archived_configuration(parts: dict, tmp_path: Path) -> None:
    plan = json.loads(json.dumps(parts["plan"]))
    plan["configurations"] = {"2d_other": {**plan["configurations"]["3d_fullres"], "name": "2d_other"}}
    refused(build(tmp_path / "model.zip", parts, plan=plan), "names configuration '3d_fullres', which plan.json")


@pytest.mark.parametrize(("selection", "words"), [
    ({"members": ["3d_lowres"]}, ["selection.json", "members"]),
    ({"postprocessing": "yes"}, ["selection.json", "postprocessing"]),
    ({"members": "3d_fullres"}, ["selection.json", "members"]),
])
def test_malformed_selections(parts: dict, tmp_path: Path, selection: dict, words: list[str]) -> None:
    refused(build(tmp_path / "model.zip", parts, selection={**parts["selection"], **selection}), *words)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(("state", "words"), [
    (b"\x00" * 64, ["not a torch weights file"]),
    ([1, 2, 3], ["must hold a mapping of parameter names to tensors"]),
    ({"x": 1}, ["must hold a mapping"]),
    (_Payload(), ["not a plain state dict of tensors"]),
])
def test_weights_that_are_not_a_state_dict(parts: dict, tmp_path: Path, state, words: list[str],
                                          capsys: pytest.CaptureFixture) -> None:
    refused(build(tmp_path / "model.zip", parts, state=state), "weights/3d_fullres/fold_0.pt", *words)
    assert "this must never run" not in capsys.readouterr().out


def test_weights_that_do_not_fit_the_plans_network(parts: dict, tmp_path: Path) -> None:
    state = dict(parts["state"])
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    message = refused(build(tmp_path / "a.zip", parts, state=state), "does not fit the network", first, "has shape")
    assert "(3, 3)" in message
    state = {k: v for k, v in parts["state"].items() if k != first}
    refused(build(tmp_path / "b.zip", parts, state={**state, "evil": torch.zeros(1)}), f"missing {first}",
            "extra tensor 'evil'")
    integer = {k: (v.to(torch.int64) if v.is_floating_point() else v) for k, v in parts["state"].items()}
    refused(build(tmp_path / "c.zip", parts, state=integer), "expected a floating-point tensor")


def test_a_member_that_does_not_match_its_sha256(parts: dict, tmp_path: Path) -> None:
    path = build(tmp_path / "model.zip", parts,
                 manifest_edit=lambda m: m["files"].update({"selection.json": "0" * 64}))
    refused(path, "'selection.json' does not match the sha256")


# ---------------------------------------------------------------------------------------------
# the command line: clean errors, and predict's output folder


def small_image(demo_dataset: DatasetSpec, folder: Path, spacing=None, value=None) -> Path:
    full = sitk.ReadImage(str(demo_dataset.test[0].images[0]))  # 4D: (x, y, z, channel)
    array = sitk.GetArrayFromImage(full)[:, 6:10, 20:36, 20:36].astype(np.float32)
    if value is not None:
        array[0, 1, 2, 3] = value
    small = sitk.GetImageFromArray(array, isVector=False)
    small.SetSpacing(spacing or full.GetSpacing())
    small.SetOrigin(full.GetOrigin())
    small.SetDirection(full.GetDirection())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "small.mha"
    sitk.WriteImage(small, str(path))
    return path


def test_predict_refuses_hostile_inputs_cleanly(parts: dict, demo_dataset: DatasetSpec, tmp_path: Path) -> None:
    archive = build(tmp_path / "model.zip", parts)
    good = small_image(demo_dataset, tmp_path / "good")  # predicts (tests/test_model_archive.py): not rerun here
    infinite = small_image(demo_dataset, tmp_path / "inf", value=np.inf)
    result = runner.invoke(app, ["predict", str(infinite), "-o", str(tmp_path / "out2"), "--model", str(archive),
                                 "--device", "cpu"])
    assert result.exit_code == 1 and "1 infinite voxel" in result.output and str(infinite) in result.output
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())
    coarse = small_image(demo_dataset, tmp_path / "coarse", spacing=(1000.0, 1000.0, 1000.0, 1.0))
    result = runner.invoke(app, ["predict", str(coarse), "-o", str(tmp_path / "out3"), "--model", str(archive),
                                 "--device", "cpu"])
    assert result.exit_code == 1 and "case 'small'" in result.output and "spacing" in result.output
    assert "unexpected" not in result.output
    hostile = build(tmp_path / "hostile.zip", parts, plan=_plan_with(parts, patch_size=[4096, 4096, 4096]))
    result = runner.invoke(app, ["predict", str(good), "-o", str(tmp_path / "out4"), "--model", str(hostile)])
    assert result.exit_code == 1 and "plan.json" in result.output and "patch_size" in result.output


def _predict(inputs: list[Path], output: Path):
    return runner.invoke(app, ["predict", *map(str, inputs), "-o", str(output), "--model", "/nonexistent/m.zip"])


def test_predict_refuses_an_output_folder_that_is_or_is_inside_its_input(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = images / "case.nii.gz"
    image.write_bytes(b"not read")
    (tmp_path / "link").symlink_to(images, target_is_directory=True)
    for inputs, output, words in (
        ([images], images, "is the folder of the input"),
        ([image], images, "is the folder of the input"),
        ([images], tmp_path / "link", "is the folder of the input"),
        ([images], images / "predictions", "lies inside the input folder"),
    ):
        result = _predict(inputs, output)
        assert result.exit_code == 1 and words in result.output, result.output
        assert "-o" in result.output
    assert image.read_bytes() == b"not read" and not (images / "predictions").exists()
    # an input folder inside the output folder is fine (predictions go to the output's top level)
    result = _predict([images], tmp_path)
    assert result.exit_code == 1 and "model archive not found" in result.output
