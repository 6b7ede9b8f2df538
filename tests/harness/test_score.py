"""`harness score` without an engine: the held-out test set, folder submissions, failure statuses, files.

Containers (our export and an independent one) are scored in tests/docker/test_score_containers.py.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from harness.challenge.score import (
    CSV_COLUMNS,
    INPUTS_LABEL,
    OUTPUT_LABEL,
    SELFUNET,
    Sockets,
    held_out_cases,
    image_sockets,
    parse_submission,
    score_task,
)
from harness.cli import app
from harness.tasks.descriptor import TaskDescriptor, load_task
from selfunet.errors import SelfUNetError


def _task(root: Path, **fields) -> TaskDescriptor:
    return TaskDescriptor.model_validate({"name": "t", "dataset": str(root), **fields})


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_test_labels_give_the_dataset_test_cases_with_their_references(demo_root: Path) -> None:
    cases = held_out_cases(_task(demo_root, test_labels=str(demo_root / "labelsTs")))
    assert [c.case_id for c in cases] == ["demo_100", "demo_101"]
    assert all(c.label.is_file() and c.label.parent.name == "labelsTs" for c in cases)


def test_a_missing_test_label_names_the_case(demo_root: Path, tmp_path: Path) -> None:
    partial = tmp_path / "labels"
    partial.mkdir()
    shutil.copy(demo_root / "labelsTs" / "demo_100.nii.gz", partial)
    with pytest.raises(SelfUNetError, match="demo_101"):
        held_out_cases(_task(demo_root, test_labels=str(partial)))


def test_holdout_fraction_is_a_seeded_draw_of_training_cases(demo_root: Path) -> None:
    a = held_out_cases(_task(demo_root, holdout={"fraction": 0.34, "seed": 3}))
    b = held_out_cases(_task(demo_root, holdout={"fraction": 0.34, "seed": 3}))
    assert [c.case_id for c in a] == [c.case_id for c in b] and len(a) == 2
    assert all(c.label.parent.name == "labelsTr" for c in a)
    with pytest.raises(SelfUNetError, match="demo_999"):
        held_out_cases(_task(demo_root, holdout={"cases": ["demo_999"]}))


def test_a_task_without_a_test_set_is_refused_with_the_fix(demo_root: Path) -> None:
    with pytest.raises(SelfUNetError, match="test_labels"):
        held_out_cases(_task(demo_root))


def test_descriptor_keys_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: d\ntest_labels: d/labelsTs\nholdout: {fraction: 0.2}\n")
    with pytest.raises(SelfUNetError, match="one held-out test set"):
        load_task(bad)
    bad.write_text("name: x\ndataset: d\nholdout: {fraction: 0.2, cases: [a]}\n")
    with pytest.raises(SelfUNetError, match="exactly one"):
        load_task(bad)
    good = tmp_path / "good.yaml"
    good.write_text("name: x\ndataset: d\ntest_labels: d/labelsTs\nscoring: {case_timeout_s: 30}\n")
    task = load_task(good)
    assert task.test_labels == (tmp_path / "d" / "labelsTs").resolve() and task.scoring.case_timeout_s == 30
    moved = task.with_data_root(tmp_path / "elsewhere")
    assert moved.test_labels == (tmp_path / "elsewhere" / "d" / "labelsTs").resolve()


def test_submission_names_and_sockets(tmp_path: Path) -> None:
    assert parse_submission(f"mine={tmp_path}").kind == "folder"
    assert parse_submission("team-a=team-a:latest").kind == "container"
    for bad in ("noequals", "=img", "a b=img", f"{SELFUNET}=img"):
        with pytest.raises(SelfUNetError):
            parse_submission(bad)
    labels = {INPUTS_LABEL: "t1,t2", OUTPUT_LABEL: "mask"}
    assert image_sockets(labels, None, None) == Sockets(("t1", "t2"), "mask")
    assert image_sockets(labels, ["x"], "y") == Sockets(("x",), "y")
    assert image_sockets({}, None, None) == Sockets(("image",), "segmentation")


def test_folder_submissions_every_failure_scored_as_the_worst_case(demo_root: Path, tmp_path: Path) -> None:
    labels = demo_root / "labelsTs"
    perfect = labels
    broken = tmp_path / "broken"
    broken.mkdir()
    moved = sitk.ReadImage(str(labels / "demo_100.nii.gz"))
    moved.SetOrigin([v + 5.0 for v in moved.GetOrigin()])
    sitk.WriteImage(moved, str(broken / "demo_100.nii.gz"))
    (broken / "demo_101.nii.gz").write_bytes(b"not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    task = _task(demo_root, test_labels=str(labels))
    results = tmp_path / "results"
    out = score_task(task, [parse_submission(f"perfect={perfect}"), parse_submission(f"broken={broken}"),
                            parse_submission(f"empty={empty}")], tmp_path / "work", results, selfunet=False)
    assert {r.status for r in out["perfect"]} == {"ok"}
    assert [r.status for r in out["broken"]] == ["wrong-geometry", "unreadable"]
    assert "origin" in out["broken"][0].reason
    assert [r.status for r in out["empty"]] == ["missing", "missing"]
    scores = results / "t" / "scores"
    rows = _rows(scores / "broken.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["case"], r["class"]) for r in rows] == [("demo_100", "organ"), ("demo_100", "lesion"),
                                                       ("demo_101", "organ"), ("demo_101", "lesion")]
    assert {r["dice"] for r in rows} == {"0.000000"} and all(r["reason"] for r in rows)
    assert {r["dice"] for r in _rows(scores / "perfect.csv")} == {"1.000000"}
    board = _rows(scores / "leaderboard.csv")
    assert next(r["submission"] for r in board) == "perfect" and board[0]["failed"] == "0"
    assert {r["submission"]: r["failed"] for r in board} == {"perfect": "0", "broken": "2", "empty": "2"}


def test_score_command_needs_the_trained_model_or_no_selfunet(demo_root: Path, tmp_path: Path) -> None:
    descriptor = tmp_path / "t.yaml"
    descriptor.write_text(f"name: t\ndataset: {demo_root}\ntest_labels: {demo_root / 'labelsTs'}\n")
    args = ["score", str(descriptor), "--work-root", str(tmp_path / "work"), "--results", str(tmp_path / "r")]
    missing = CliRunner().invoke(app, [*args, "-s", f"ref={demo_root / 'labelsTs'}"])
    assert missing.exit_code == 1 and "selection.json" in missing.output and "--no-selfunet" in missing.output
    ok = CliRunner().invoke(app, [*args, "-s", f"ref={demo_root / 'labelsTs'}", "--no-selfunet"], terminal_width=200)
    assert ok.exit_code == 0, ok.output
    assert "| ref | 2 | 0 | 1.0000 |" in ok.output
