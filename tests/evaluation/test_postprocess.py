"""Connected-component postprocessing: decisions on constructed predictions with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from selfunet.data.io import ImageGeometry, read_image, write_label
from selfunet.errors import SelfUNetError
from selfunet.evaluation.postprocess_selection import case_effects, decide_postprocessing, determine_postprocessing
from selfunet.inference.postprocess import (
    PostprocessingRule,
    apply_postprocessing,
    keep_largest_component,
    postprocess_folder,
)

SHAPE = (16, 32, 32)


def _box(labels: np.ndarray, value: int, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> None:
    labels[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = value


def _organ_case(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference: one organ. Prediction: the organ slightly off plus a spurious blob far away."""
    reference = np.zeros(SHAPE, np.uint8)
    _box(reference, 1, (4, 12), (8, 20), (8, 20))
    prediction = np.zeros(SHAPE, np.uint8)
    _box(prediction, 1, (4, 12), (8 + shift, 20 + shift), (8, 20))
    _box(prediction, 1, (1, 3), (27, 30), (27, 30))  # the spurious blob
    return prediction, reference


def _kidneys_case() -> tuple[np.ndarray, np.ndarray]:
    """Two kidneys with the same label (two real components), a lesion (2) in the left one, and a
    spurious lesion voxel cluster in the right kidney that the reference does not have."""
    reference = np.zeros(SHAPE, np.uint8)
    _box(reference, 1, (4, 12), (8, 20), (2, 10))
    _box(reference, 1, (4, 12), (8, 20), (22, 30))
    _box(reference, 2, (6, 9), (11, 15), (4, 8))
    prediction = reference.copy()
    prediction[7:9, 12:14, 25:27] = 2  # inside the right kidney: touches class 1, no new fg component
    return prediction, reference


def _rule_for(cases: list[tuple[np.ndarray, np.ndarray]], labels=(1, 2)) -> PostprocessingRule:
    return decide_postprocessing([case_effects(p, r, labels) for p, r in cases], labels)


def test_spurious_far_blob_is_removed_by_the_all_foreground_step():
    rule = _rule_for([_organ_case(0), _organ_case(1), _organ_case(2)], labels=(1,))
    assert rule.largest_component_all_foreground
    assert rule.mean_foreground_dice_after > rule.mean_foreground_dice_before
    prediction, reference = _organ_case(0)
    cleaned = apply_postprocessing(prediction, rule)
    assert np.array_equal(cleaned, reference)


def test_second_real_component_of_a_class_is_kept():
    reference = np.zeros(SHAPE, np.uint8)
    _box(reference, 1, (4, 12), (8, 20), (2, 10))
    _box(reference, 1, (4, 12), (8, 20), (22, 30))
    prediction = reference.copy()
    prediction[4, 8:20, 2:10] = 0  # imperfect, but both kidneys present
    rule = _rule_for([(prediction, reference), (reference.copy(), reference)], labels=(1,))
    assert not rule.largest_component_all_foreground
    assert rule.largest_component_per_class == []
    assert rule.is_identity
    assert rule.dice_after == rule.dice_before


def test_per_class_step_accepted_only_for_the_class_it_helps():
    rule = _rule_for([_kidneys_case(), _kidneys_case()])
    assert not rule.largest_component_all_foreground  # would drop a kidney
    assert rule.largest_component_per_class == [2]  # class 1 would lose a kidney; class 2 loses the spurious lesion
    assert rule.dice_after["2"] > rule.dice_before["2"]
    assert rule.dice_after["1"] == rule.dice_before["1"]
    prediction, reference = _kidneys_case()
    expected = reference.copy()
    expected[7:9, 12:14, 25:27] = 0  # a removed component becomes background, not the class around it
    assert np.array_equal(apply_postprocessing(prediction, rule), expected)


def test_per_class_step_is_decided_on_top_of_the_all_foreground_step():
    cases = []
    for prediction, reference in (_kidneys_case(), _kidneys_case()):
        # one organ only: drop the right kidney from both, keep the spurious lesion inside the left one
        for array in (prediction, reference):
            array[:, :, 20:] = 0
        prediction[5:7, 16:18, 3:5] = 2  # spurious lesion inside the left kidney
        prediction[1:3, 28:31, 27:30] = 1  # spurious far blob
        cases.append((prediction, reference))
    rule = _rule_for(cases)
    assert rule.largest_component_all_foreground
    assert rule.largest_component_per_class == [2]
    assert rule.mean_foreground_dice_after > rule.mean_foreground_dice_after_all_foreground
    expected = cases[0][1].copy()
    expected[5:7, 16:18, 3:5] = 0
    assert np.array_equal(apply_postprocessing(cases[0][0], rule), expected)


def test_no_change_means_no_postprocessing():
    _, reference = _organ_case()
    rule = _rule_for([(reference.copy(), reference)], labels=(1,))
    assert rule.is_identity


def test_step_one_rejected_when_a_class_falls_although_the_mean_rises():
    # class 1: a far false-positive blob (removal helps a lot); class 2: a real, small, separate object
    # that step 1 would delete (Dice 1 -> 0 would be a fall); the mean must not be enough.
    reference = np.zeros(SHAPE, np.uint8)
    _box(reference, 1, (2, 14), (4, 28), (4, 20))
    _box(reference, 2, (6, 8), (6, 8), (26, 28))
    prediction = reference.copy()
    _box(prediction, 1, (2, 14), (4, 28), (22, 24))  # separate false positive of class 1, bigger than class 2
    rule = _rule_for([(prediction, reference)])
    assert not rule.largest_component_all_foreground


def test_full_connectivity_joins_voxels_touching_at_a_corner():
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True
    mask_far = mask.copy()
    mask_far[0, 2, 0] = True  # corner-touches (1, 1, 1) as well
    assert keep_largest_component(mask).sum() == 3
    assert keep_largest_component(mask_far).sum() == 4


def test_largest_component_of_an_empty_mask_is_empty():
    assert not keep_largest_component(np.zeros((2, 3, 4), bool)).any()


def test_apply_is_idempotent_and_does_not_modify_its_input():
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 20, 20)) > 0.93).astype(np.uint8) * rng.integers(1, 3, (12, 20, 20)).astype(np.uint8)
    _box(labels, 1, (3, 9), (4, 12), (4, 12))
    original = labels.copy()
    for rule in (PostprocessingRule(largest_component_all_foreground=True),
                 PostprocessingRule(largest_component_per_class=[1, 2]),
                 PostprocessingRule(largest_component_all_foreground=True, largest_component_per_class=[2])):
        once = apply_postprocessing(labels, rule)
        assert np.array_equal(apply_postprocessing(once, rule), once)
    assert np.array_equal(labels, original)


def test_apply_is_idempotent_when_a_class_removal_splits_the_foreground():
    labels = np.zeros((1, 5, 20), np.uint8)
    labels[0, :, 0:6] = 1  # big class-1 object W
    labels[0, 2, 6:9] = 2  # class-2 Y attached to W
    labels[0, 2, 9] = 1  # small class-1 bridge X
    labels[0, 2, 10:12] = 2  # class-2 Z, reachable only through X
    rule = PostprocessingRule(largest_component_all_foreground=True, largest_component_per_class=[1])
    once = apply_postprocessing(labels, rule)
    assert once[0, 2, 10:12].tolist() == [0, 0]  # Z is cut off with X, so the final pass drops it
    assert np.array_equal(apply_postprocessing(once, rule), once)


def test_rule_survives_json_round_trip_with_undefined_dice():
    rule = _rule_for([_organ_case(0)], labels=(1, 2))  # class 2 is empty everywhere: Dice undefined
    assert rule.dice_before["2"] is None
    again = PostprocessingRule.model_validate_json(rule.model_dump_json())
    assert again == rule


def test_decision_needs_cases():
    with pytest.raises(SelfUNetError, match="at least one"):
        decide_postprocessing([], [1])


def _geometry(shape=SHAPE) -> ImageGeometry:
    return ImageGeometry(shape=shape, spacing=(3.0, 0.8, 0.7), origin=(1.0, -2.0, 5.0),
                         direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def test_decision_from_nifti_files_and_folder_application(tmp_path):
    pred_dir, ref_dir, out_dir = tmp_path / "pred", tmp_path / "ref", tmp_path / "out"
    pairs = []
    for i, shift in enumerate((0, 1, 2)):
        prediction, reference = _organ_case(shift)
        write_label(pred_dir / f"case_{i}.nii.gz", prediction, _geometry())
        write_label(ref_dir / f"case_{i}.nii.gz", reference, _geometry())
        pairs.append((pred_dir / f"case_{i}.nii.gz", ref_dir / f"case_{i}.nii.gz"))
    rule = determine_postprocessing(pairs, [0, 1], processes=1)
    assert rule.largest_component_all_foreground
    written = postprocess_folder(pred_dir, out_dir, rule)
    assert [p.name for p in written] == ["case_0.nii.gz", "case_1.nii.gz", "case_2.nii.gz"]
    cleaned, geometry = read_image(out_dir / "case_0.nii.gz")
    assert np.array_equal(cleaned[0], _organ_case(0)[1])
    assert geometry.spacing == pytest.approx((3.0, 0.8, 0.7))
    assert sitk.ReadImage(str(out_dir / "case_0.nii.gz")).GetOrigin() == pytest.approx((1.0, -2.0, 5.0))


def test_postprocess_folder_refuses_to_overwrite_its_input(tmp_path):
    write_label(tmp_path / "a.nii.gz", np.zeros(SHAPE, np.uint8), _geometry())
    with pytest.raises(SelfUNetError, match="must differ"):
        postprocess_folder(tmp_path, tmp_path, PostprocessingRule())
