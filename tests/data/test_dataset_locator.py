"""Dataset references as nnU-Net's users type them (folders, Dataset###_Name, ids), and where a failed lookup looked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app as harness_app
from harness.tasks.descriptor import dataset_problem, load_task
from selfunet.cli import app as selfunet_app
from selfunet.data.dataset_locator import locate_dataset, lookup_dataset, lookup_in_root, nnunet_id
from selfunet.errors import SelfUNetError


def dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"name": folder.name}))
    return folder


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """An nnU-Net raw folder with Dataset004_Hippocampus and Dataset009_Spleen."""
    root = tmp_path / "nnUNet_raw"
    dataset(root / "Dataset004_Hippocampus")
    dataset(root / "Dataset009_Spleen")
    return root


@pytest.mark.parametrize(("reference", "expected"), [
    ("4", 4), ("004", 4), (4, 4), ("Dataset004", 4), ("Dataset004_Hippocampus", 4), ("Dataset120_X", 120),
    ("0", None), ("1000", None), ("Task04_Hippocampus", None), ("data/Dataset004_Hippocampus", None),
    (Path("a/4"), None), ("Dataset4_X", None),
])
def test_what_counts_as_an_nnunet_reference(reference: object, expected: int | None) -> None:
    assert nnunet_id(reference) == expected


@pytest.mark.parametrize("reference", ["4", "004", "Dataset004", "Dataset004_Hippocampus"])
def test_name_and_id_found_under_nnunet_raw(tmp_path: Path, raw: Path, reference: str) -> None:
    assert locate_dataset(reference, base=tmp_path, nnunet_raw=raw) == raw / "Dataset004_Hippocampus"


def test_a_path_beside_wins_and_plain_paths_still_work(tmp_path: Path, raw: Path) -> None:
    local = dataset(tmp_path / "Dataset004_Hippocampus")
    assert locate_dataset("Dataset004_Hippocampus", base=tmp_path, nnunet_raw=raw) == local
    assert locate_dataset(str(raw / "Dataset009_Spleen")) == raw / "Dataset009_Spleen"
    assert locate_dataset("nnUNet_raw/Dataset009_Spleen", base=tmp_path) == raw / "Dataset009_Spleen"


def test_a_failed_lookup_names_every_place_it_looked(tmp_path: Path, raw: Path) -> None:
    with pytest.raises(SelfUNetError) as info:
        locate_dataset("Dataset007_Pancreas", base=tmp_path, nnunet_raw=raw)
    message = str(info.value)
    assert f"{tmp_path / 'Dataset007_Pancreas'}: no such folder" in message
    assert f"{raw / 'Dataset007_Pancreas'}: no such folder" in message
    with pytest.raises(SelfUNetError) as info:
        locate_dataset("7", base=tmp_path, nnunet_raw=raw)
    assert f"{raw / 'Dataset007_*'}: no nnU-Net folder Dataset007_* there" in str(info.value)
    with pytest.raises(SelfUNetError) as info:
        locate_dataset("4", base=tmp_path)
    assert "nnUNet_raw is not set" in str(info.value) and "--nnunet-raw DIR" in str(info.value)


def test_two_folders_with_one_id_are_ambiguous(raw: Path) -> None:
    dataset(raw / "Dataset004_Other")
    with pytest.raises(SelfUNetError, match=r"holds 2 folders with that id.*Dataset004_Hippocampus, Dataset004_Other"):
        lookup_dataset("4", nnunet_raw=raw)
    assert locate_dataset("Dataset004_Other", nnunet_raw=raw) == raw / "Dataset004_Other"


def test_a_folder_without_dataset_json_is_found_but_a_real_one_wins(tmp_path: Path, raw: Path) -> None:
    (tmp_path / "4").mkdir()
    assert locate_dataset("4", base=tmp_path, nnunet_raw=raw) == raw / "Dataset004_Hippocampus"
    assert locate_dataset("4", base=tmp_path) == tmp_path / "4"  # the stage's check then says what it lacks


def test_a_data_root_knows_both_namings(tmp_path: Path, raw: Path) -> None:
    assert lookup_in_root(raw, "Task04_Hippocampus").path == raw / "Dataset004_Hippocampus"
    assert lookup_in_root(raw, "4").path == raw / "Dataset004_Hippocampus"
    msd = dataset(tmp_path / "msd" / "Task09_Spleen")
    assert lookup_in_root(tmp_path / "msd", "Dataset009_Spleen").path == msd
    missing = lookup_in_root(raw, "Task07_Pancreas")
    assert not missing.found and missing.path == raw / "Task07_Pancreas"
    assert [p.name for p, _ in missing.looked] == ["Task07_Pancreas", "Dataset007_Pancreas", "Dataset007_*"]


def test_descriptors_take_names_and_ids(tmp_path: Path, raw: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "by_id.yaml").write_text("name: hippo\ndataset: 4\n")
    (tasks / "by_name.yaml").write_text("name: spleen\ndataset: Dataset009_Spleen\n")
    assert load_task(tasks / "by_id.yaml", nnunet_raw=raw).dataset == raw / "Dataset004_Hippocampus"
    assert load_task(tasks / "by_name.yaml", nnunet_raw=raw).dataset == raw / "Dataset009_Spleen"
    unresolved = load_task(tasks / "by_name.yaml")  # no nnUNet_raw: missing, and the message says where it looked
    problem = dataset_problem(unresolved) or ""
    assert "does not exist" in problem and f"{tasks / 'Dataset009_Spleen'}: no such folder" in problem
    assert "nnUNet_raw is not set" in problem
    # --data-root with an nnU-Net layout: a Decathlon descriptor finds Dataset004_Hippocampus
    (tasks / "decathlon.yaml").write_text("name: Task04_Hippocampus\ndataset: ../data/Task04_Hippocampus\n")
    moved = load_task(tasks / "decathlon.yaml").with_data_root(raw)
    assert moved.dataset == raw / "Dataset004_Hippocampus" and dataset_problem(moved) is None
    assert load_task(tasks / "by_id.yaml", nnunet_raw=raw).with_data_root(raw).dataset == raw / "Dataset004_Hippocampus"


def test_the_command_lines_read_nnunet_raw_from_the_environment(tmp_path: Path, raw: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hippo.yaml").write_text("name: hippo\ndataset: Dataset004_Hippocampus\nfolds: 2\n")
    runner = CliRunner()
    wide = {"COLUMNS": "300"}
    listed = runner.invoke(harness_app, ["ls", str(tmp_path / "tasks")], env={"nnUNet_raw": str(raw), **wide})
    assert listed.exit_code == 0 and "Dataset004_Hippocampus" in listed.output and "missing" not in listed.output
    checked = runner.invoke(harness_app, ["ls", str(tmp_path / "tasks"), "--nnunet-raw", str(raw)], env=wide)
    assert "missing" not in checked.output
    # selfunet check by id: found under nnUNet_raw (the stub dataset.json is then reported by the check itself)
    found = runner.invoke(selfunet_app, ["check", "4"], env={"nnUNet_raw": str(raw), **wide})
    assert "Dataset004_Hippocampus" in found.output and "not found; looked at" not in found.output
    lost = runner.invoke(selfunet_app, ["fingerprint", "7", "--work", str(tmp_path / "w"), "--nnunet-raw", str(raw)],
                         env=wide)
    assert lost.exit_code == 1 and "dataset '7': not found; looked at" in lost.output
    assert "Dataset007_*" in lost.output and not (tmp_path / "w").exists()
