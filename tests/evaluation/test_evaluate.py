"""Evaluation: hand-counted metrics, the empty-mask rules, folders of real NIfTI files, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.errors import SelfUNetError
from selfunet.evaluation.evaluate import evaluate_folders, parse_labels
from selfunet.evaluation.metrics import EMPTY_MASK_RULE, evaluate_arrays
from selfunet.evaluation.summary import CaseMetrics, EvaluationSummary, summarize, write_evaluation
from selfunet.evaluation.surface import image_diagonal_mm, normalized_surface_dice

SPACING = (3.0, 0.8, 0.8)  # array order (z, y, x)


def write_nifti(path: Path, array: np.ndarray, spacing_zyx: tuple[float, ...] = SPACING) -> Path:
    """Written with SimpleITK directly (not selfunet.data.io), so the spacing reversal is tested too."""
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def two_class_case() -> tuple[np.ndarray, np.ndarray]:
    """Counted by hand: class 1 TP=4 FP=2 FN=1, class 2 TP=1 FP=0 FN=2."""
    reference = np.zeros((2, 4, 4), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[0, 0, 0:4] = 1  # 4 voxels
    reference[0, 1, 0] = 1  # 5th
    prediction[0, 0, 0:4] = 1  # 4 TP
    prediction[1, 3, 2:4] = 1  # 2 FP
    reference[1, 0, 0:3] = 2  # 3 voxels
    prediction[1, 0, 0] = 2  # 1 TP, 2 FN
    return prediction, reference


def test_hand_counted_tp_fp_fn_dice_iou():
    prediction, reference = two_class_case()
    metrics = evaluate_arrays(prediction, reference, [1, 2], SPACING)
    one, two = metrics[1], metrics[2]
    assert (one.tp, one.fp, one.fn) == (4, 2, 1)
    assert one.dice == pytest.approx(8 / 11)
    assert one.iou == pytest.approx(4 / 7)
    assert (two.tp, two.fp, two.fn) == (1, 0, 2)
    assert two.dice == pytest.approx(2 / 4)
    assert two.iou == pytest.approx(1 / 3)
    assert one.nsd is None and one.hd95 is None  # not asked


def test_both_empty_is_nan_and_left_out_of_means():
    prediction, reference = two_class_case()
    metrics = evaluate_arrays(prediction, reference, [1, 2, 3], SPACING, nsd_tolerance_mm=1.0, hd95=True)
    three = metrics[3]
    assert three.reference_empty and three.prediction_empty
    assert (three.tp, three.fp, three.fn) == (0, 0, 0)
    assert all(math.isnan(v) for v in (three.dice, three.iou, three.nsd, three.hd95))
    other = {1: metrics[1], 2: metrics[2], 3: evaluate_arrays(reference, reference, [3], SPACING)[3]}
    summary = summarize([CaseMetrics.of("a", metrics), CaseMetrics.of("b", other)], {1: "a", 2: "b", 3: "c"},
                        nsd_tolerance_mm=1.0, hd95=True)
    assert math.isnan(summary.mean["3"]["dice"])  # every case undefined: NaN, not 0 or 1
    assert summary.counts["3"] == {"cases": 2, "both_empty": 2, "one_side_empty": 0}
    # the mean foreground Dice leaves the undefined class out
    assert summary.mean_foreground_dice == pytest.approx((8 / 11 + 2 / 4) / 2)


@pytest.mark.parametrize("empty_side", ["reference", "prediction"])
def test_one_side_empty_is_dice_zero_nsd_zero_hd95_worst_case(empty_side):
    mask = np.zeros((4, 10, 12), dtype=np.uint8)
    mask[1:3, 2:5, 3:7] = 1
    empty = np.zeros_like(mask)
    prediction, reference = (mask, empty) if empty_side == "reference" else (empty, mask)
    m = evaluate_arrays(prediction, reference, [1], SPACING, nsd_tolerance_mm=2.0, hd95=True)[1]
    assert m.dice == 0.0 and m.iou == 0.0 and m.nsd == 0.0
    diagonal = math.sqrt((4 * 3.0) ** 2 + (10 * 0.8) ** 2 + (12 * 0.8) ** 2)
    assert m.hd95 == pytest.approx(diagonal)
    assert m.reference_empty == (empty_side == "reference")
    assert m.prediction_empty == (empty_side == "prediction")
    # counted in the mean, not dropped
    summary = summarize([CaseMetrics.of("a", {1: m})], {1: "x"}, nsd_tolerance_mm=2.0, hd95=True)
    assert summary.mean["1"]["hd95"] == pytest.approx(diagonal)
    assert summary.mean["1"]["dice"] == 0.0
    assert summary.counts["1"]["one_side_empty"] == 1


def test_surface_metrics_of_a_hand_counted_case():
    prediction = np.zeros((1, 3, 6), dtype=np.uint8)
    reference = np.zeros_like(prediction)
    prediction[0, 1, 0:3] = 1
    reference[0, 1, 1:4] = 1
    m = evaluate_arrays(prediction, reference, [1], (5.0, 1.0, 2.0), nsd_tolerance_mm=1.0, hd95=True)[1]
    # surface distances are [0, 0, 2] both ways (see test_surface.test_hand_counted_line_segments)
    assert m.hd95 == pytest.approx(1.8)
    # NSD is the surfel-area one (the Decathlon's), not the voxel count (4 / 6 here)
    expected = normalized_surface_dice(prediction[0] == 1, reference[0] == 1, (1.0, 2.0), 1.0)
    assert m.nsd == pytest.approx(normalized_surface_dice(prediction == 1, reference == 1, (5.0, 1.0, 2.0), 1.0))
    assert m.nsd != pytest.approx(4 / 6) and 0 < expected < 1


def test_ignore_mask_excludes_voxels_from_the_counts():
    prediction, reference = two_class_case()
    ignore = np.zeros(reference.shape, dtype=bool)
    ignore[1, 3, 2:4] = True  # the two FP voxels of class 1
    ignore[0, 0, 0] = True  # one TP voxel of class 1
    m = evaluate_arrays(prediction, reference, [1], SPACING, ignore_mask=ignore)[1]
    assert (m.tp, m.fp, m.fn) == (3, 0, 1)


def test_shape_mismatch_rejected():
    with pytest.raises(SelfUNetError, match="shape"):
        evaluate_arrays(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), [1], SPACING)


def test_mean_foreground_dice_excludes_background_and_averages_class_means():
    cases = []
    for case_id, (d1, d2) in {"a": (1.0, 0.0), "b": (0.5, 1.0), "c": (0.0, 1.0)}.items():
        cases.append(CaseMetrics.of(case_id, {
            0: evaluate_arrays(np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), [0], (1, 1, 1))[0],
            1: _metrics_with_dice(d1), 2: _metrics_with_dice(d2),
        }))
    summary = summarize(cases, {0: "background", 1: "x", 2: "y"})
    assert summary.mean["1"]["dice"] == pytest.approx(0.5)
    assert summary.mean["2"]["dice"] == pytest.approx(2 / 3)
    assert summary.mean_foreground_dice == pytest.approx((0.5 + 2 / 3) / 2)
    assert summary.mean["0"]["dice"] == 1.0  # evaluated, but not part of the foreground mean


def _metrics_with_dice(dice: float):
    """A one-row case with the given Dice in {0, 0.5, 1}, from real arrays."""
    reference = np.array([[[1, 1, 0, 0]]])
    prediction = np.array([[{1.0: [1, 1, 0, 0], 0.5: [1, 0, 1, 0], 0.0: [0, 0, 1, 1]}[dice]]])
    metrics = evaluate_arrays(prediction, reference, [1], (1.0, 1.0, 1.0))[1]
    assert metrics.dice == pytest.approx(dice)
    return metrics


def test_summary_does_not_depend_on_case_order():
    """Workers finish in any order; float sums must not (this failed before sorting the cases)."""
    rng = np.random.default_rng(3)
    cases = []
    for i in range(12):
        reference = rng.random((3, 9, 9)) > 0.3
        prediction = rng.random((3, 9, 9)) > 0.6
        cases.append(CaseMetrics.of(f"c{i}", evaluate_arrays(prediction, reference, [True], (1.0, 0.7, 0.3))))
    forward = summarize(cases, {1: "x"})
    for seed in range(5):
        shuffled = [cases[j] for j in np.random.default_rng(seed).permutation(len(cases))]
        assert summarize(shuffled, {1: "x"}).model_dump_json() == forward.model_dump_json()


def test_summary_round_trips_through_json_with_nan(tmp_path):
    prediction, reference = two_class_case()
    case = CaseMetrics.of("a", evaluate_arrays(prediction, reference, [1, 2, 3], SPACING, 1.0, True))
    summary = summarize([case], {1: "x", 2: "y", 3: "z"}, 1.0, True)
    write_evaluation(summary, tmp_path)
    loaded = EvaluationSummary.load(tmp_path / "summary.json")
    assert loaded.empty_mask_rule == EMPTY_MASK_RULE
    assert math.isnan(loaded.per_case[0].classes["3"].dice)
    assert loaded.per_case[0].classes["1"] == summary.per_case[0].classes["1"]
    assert loaded.mean_foreground_dice == pytest.approx(summary.mean_foreground_dice)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_per_case_csv_has_one_row_per_case_and_class_with_notes(tmp_path):
    prediction, reference = two_class_case()
    cases = [CaseMetrics.of(cid, evaluate_arrays(prediction, reference, [1, 2, 3], SPACING, hd95=True))
             for cid in ("a", "b")]
    write_evaluation(summarize(cases, {1: "x", 2: "y", 3: "z"}, hd95=True), tmp_path)
    table = pd.read_csv(tmp_path / "per_case.csv")
    assert len(table) == 6
    row = table[(table.case_id == "a") & (table.label == 1)].iloc[0]
    assert (row.tp, row.fp, row.fn) == (4, 2, 1)
    assert row.dice == pytest.approx(8 / 11)
    assert math.isnan(row.nsd)  # not asked: empty cell
    empty = table[table.label == 3].iloc[0]
    assert math.isnan(empty.dice) and "both empty" in empty.note


# ---------------------------------------------------------------------------------- folders


def make_folders(tmp_path: Path, n: int = 3) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(0)
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    cases = {}
    for i in range(n):
        reference = np.zeros((6, 20, 24), dtype=np.uint8)
        reference[1:5, 4:14, 5:17] = 1
        reference[2:4, 6:9, 6:10] = 2
        prediction = reference.copy()
        prediction[rng.integers(0, 6), :, rng.integers(0, 24)] = 0  # some misses
        prediction[5, 0:i + 1, 0:3] = 1  # some false positives
        if i == 0:
            prediction[prediction == 2] = 1  # class 2 missed entirely in case 0
        write_nifti(ref_dir / f"case_{i:03d}.nii.gz", reference)
        write_nifti(pred_dir / f"case_{i:03d}.nii.gz", prediction)
        cases[f"case_{i:03d}"] = (prediction, reference)
    return pred_dir, ref_dir, cases


def test_evaluate_folders_matches_arrays_with_header_spacing(tmp_path):
    pred_dir, ref_dir, cases = make_folders(tmp_path)
    summary = evaluate_folders(pred_dir, ref_dir, {1: "organ", 2: "lesion"}, nsd_tolerance_mm=1.0, hd95=True)
    assert [c.case_id for c in summary.per_case] == sorted(cases)
    for case in summary.per_case:
        prediction, reference = cases[case.case_id]
        expected = evaluate_arrays(prediction, reference, [1, 2], SPACING, 1.0, True)
        for label in (1, 2):
            got = case.classes[str(label)].to_metrics()
            assert (got.tp, got.fp, got.fn, got.reference_empty) == (
                expected[label].tp, expected[label].fp, expected[label].fn, expected[label].reference_empty)
            # NIfTI stores the spacing as float32: 0.8 comes back as 0.800000011920929
            for name in ("dice", "iou", "nsd", "hd95"):
                assert getattr(got, name) == pytest.approx(getattr(expected[label], name), rel=1e-6)
        assert case.worst_case_hd95_mm == pytest.approx(image_diagonal_mm(reference.shape, SPACING))
    # case 0 misses class 2: HD95 is the worst case, the image diagonal in mm
    assert summary.per_case[0].classes["2"].hd95 == pytest.approx(image_diagonal_mm((6, 20, 24), SPACING))
    assert summary.counts["2"]["one_side_empty"] == 1


def test_spacing_is_read_in_array_order(tmp_path):
    """A shift of one voxel along z must measure 3.0 mm (z spacing), not 0.8 mm."""
    reference = np.zeros((8, 8, 8), dtype=np.uint8)
    reference[2:5, 2:6, 2:6] = 1
    prediction = np.roll(reference, 1, axis=0)
    write_nifti(tmp_path / "ref" / "c.nii.gz", reference)
    write_nifti(tmp_path / "pred" / "c.nii.gz", prediction)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", {1: "x"}, hd95=True)
    assert summary.per_case[0].classes["1"].hd95 == pytest.approx(3.0)


def test_2d_images_are_evaluated_in_2d(tmp_path):
    reference = np.zeros((10, 12), dtype=np.uint8)
    reference[2:6, 3:8] = 1
    for folder in ("ref", "pred"):
        image = sitk.GetImageFromArray(reference)
        image.SetSpacing((0.5, 2.0))
        (tmp_path / folder).mkdir()
        sitk.WriteImage(image, str(tmp_path / folder / "c.nii.gz"))
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", {1: "x"}, nsd_tolerance_mm=0.0, hd95=True)
    m = summary.per_case[0].classes["1"]
    assert (m.dice, m.hd95, m.nsd) == (1.0, 0.0, 1.0)
    assert summary.per_case[0].worst_case_hd95_mm == pytest.approx(math.hypot(10 * 2.0, 12 * 0.5))


def test_missing_prediction_names_case_and_file(tmp_path):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    (pred_dir / "case_001.nii.gz").unlink()
    with pytest.raises(SelfUNetError, match=r"case 'case_001'.*case_001\.nii\.gz"):
        evaluate_folders(pred_dir, ref_dir, {1: "organ"})


def test_shape_and_spacing_mismatch_name_the_case_and_file(tmp_path):
    pred_dir, ref_dir, cases = make_folders(tmp_path, n=2)
    write_nifti(pred_dir / "case_000.nii.gz", np.zeros((6, 20, 23)))
    with pytest.raises(SelfUNetError, match=r"case 'case_000'.*pred/case_000\.nii\.gz.*shape"):
        evaluate_folders(pred_dir, ref_dir, {1: "organ"})
    write_nifti(pred_dir / "case_000.nii.gz", cases["case_000"][0], spacing_zyx=(2.0, 0.8, 0.8))
    with pytest.raises(SelfUNetError, match=r"case 'case_000'.*spacing"):
        evaluate_folders(pred_dir, ref_dir, {1: "organ"})


def test_case_ids_select_cases_and_unknown_ids_fail(tmp_path):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    summary = evaluate_folders(pred_dir, ref_dir, {1: "organ"}, case_ids=["case_002", "case_000"])
    assert [c.case_id for c in summary.per_case] == ["case_000", "case_002"]
    with pytest.raises(SelfUNetError, match="case 'nope'"):
        evaluate_folders(pred_dir, ref_dir, {1: "organ"}, case_ids=["nope"])


def test_two_processes_give_the_same_summary(tmp_path):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    serial = evaluate_folders(pred_dir, ref_dir, {1: "organ", 2: "lesion"}, hd95=True)
    parallel = evaluate_folders(pred_dir, ref_dir, {1: "organ", 2: "lesion"}, hd95=True, processes=2)
    assert parallel.model_dump_json() == serial.model_dump_json()


def test_parse_labels():
    assert parse_labels("1,2") == {1: "1", 2: "2"}
    assert parse_labels("1:liver, 2:tumour") == {1: "liver", 2: "tumour"}
    with pytest.raises(SelfUNetError, match="--labels"):
        parse_labels("liver")


# ---------------------------------------------------------------------------------- CLI


def test_cli_evaluate_with_labels_prints_table_and_rule(tmp_path):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["evaluate", str(pred_dir), str(ref_dir), "--labels", "1:organ,2:lesion",
                                      "--nsd-tolerance-mm", "1.5", "--hd95", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "mean foreground" in result.output and "organ" in result.output and "HD95" in result.output
    assert "Empty-mask rule" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nsd_tolerance_mm"] == 1.5 and summary["hd95"] is True
    assert len(pd.read_csv(out / "per_case.csv")) == 3 * 2


def test_cli_evaluate_takes_labels_from_dataset_json(tmp_path):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "lesion": 2}, "file_ending": ".nii.gz",
    }))
    result = CliRunner().invoke(app, ["evaluate", str(pred_dir), str(ref_dir), "--dataset", str(dataset)])
    assert result.exit_code == 0, result.output
    summary = EvaluationSummary.load(pred_dir / "summary.json")  # default output: the prediction folder
    assert summary.labels == {"1": "organ", "2": "lesion"}  # foreground only


def test_cli_evaluate_reports_missing_prediction_without_traceback(tmp_path):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    (pred_dir / "case_002.nii.gz").unlink()
    result = CliRunner().invoke(app, ["evaluate", str(pred_dir), str(ref_dir), "--labels", "1"])
    assert result.exit_code == 1
    assert "case_002" in result.output and "Traceback" not in result.output


def test_cli_evaluate_without_labels_asks_for_them(tmp_path):
    pred_dir, ref_dir, _ = make_folders(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", str(pred_dir), str(ref_dir)])
    assert result.exit_code == 1
    assert "--labels" in result.output
