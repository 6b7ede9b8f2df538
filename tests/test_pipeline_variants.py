"""`selfunet run` on the region-based and the sparsely annotated (ignore label) demo tasks.

Both use the ci budget (3 epochs x 12 iterations, 2 folds) on the tiny plan of the conftest
(``make_tiny_work``: the real plan's preprocessing, a 3-stage network on 16x32x32 patches), which
is as small as a run that still learns gets. The thresholds are far above what an untrained
network reaches (about 0 for the regions, whose sigmoid outputs start near 0.5 everywhere and
cover the whole image) but far below what a full budget gives, so they catch a broken pipeline,
not noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import make_tiny_work
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.demo import make_demo_dataset
from selfunet.evaluation.ensemble import Selection

runner = CliRunner()


def _run(dataset: Path, work: Path) -> None:
    result = runner.invoke(app, ["run", str(dataset), "--work", str(work), "--budget", "ci", "--processes", "1",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_region_based_demo_runs_through_selfunet_run(tmp_path: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", num_training=6, num_test=1, variant="regions")
    work = make_tiny_work(data.root, tmp_path / "work")
    _run(data.root, work)

    selection = Selection.load(work / "selection.json")
    assert selection.labels == {"1": "whole", "2": "core", "3": "enhancing"}
    summary = json.loads((work / "crossval" / "3d_fullres" / "summary.json").read_text())
    dice = {key: values["dice"] for key, values in summary["mean"].items()}
    print("cross-validation Dice per region:", dice, "mean", summary["mean_foreground_dice"])
    assert dice["1"] > 0.6 and dice["2"] > 0.2
    rule = selection.postprocessing
    assert rule.regions == {} or rule.regions == {"1": [1, 2, 3], "2": [2, 3], "3": [3]}
    # the test prediction is a label map painted in regions_class_order: values 0..3 only
    prediction = work / "test_predictions" / f"{data.test[0].case_id}.nii.gz"
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))))
    assert set(values.tolist()) <= {0, 1, 2, 3} and 1 in values


@pytest.mark.slow
def test_sparsely_annotated_demo_runs_through_selfunet_run_and_learns(tmp_path: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", num_training=6, num_test=2, variant="sparse")
    work = make_tiny_work(data.root, tmp_path / "work")
    _run(data.root, work)

    summary = json.loads((work / "crossval" / "3d_fullres" / "summary.json").read_text())
    assert set(summary["labels"]) == {"1", "2"}  # 'ignore' is no class
    # measured against the DENSE labels of the test cases, which training never saw
    result = runner.invoke(app, ["evaluate", str(work / "test_predictions"), str(data.root / "labelsTs"),
                                 "--labels", "1:organ,2:lesion", "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    dense = json.loads((tmp_path / "eval" / "summary.json").read_text())
    organ, lesion = dense["mean"]["1"]["dice"], dense["mean"]["2"]["dice"]
    print(f"sparse demo, test Dice vs dense labels: organ {organ:.3f}, lesion {lesion:.3f}; "
          f"CV (annotated slices) {summary['mean_foreground_dice']:.3f}")
    # chance: the organ is ~3% of the image, so a prediction independent of the image scores ~0.03-0.06
    assert organ > 0.6
