"""Model selection: ranking and its tie rule, pair averaging, and the whole select stage on a fake
cross-validation (fold folders written directly, see ``test_crossval``)."""

from __future__ import annotations

import numpy as np
import pytest
from test_crossval import (
    BBOX,
    CROP,
    GEOMETRY,
    SHAPE,
    build_work,
    one_hot,
    properties_of,
    reference_label,
    write_validation,
)
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.io import read_image
from selfunet.errors import SelfUNetError
from selfunet.evaluation.ensemble import (
    CandidateScore,
    Selection,
    average_probabilities,
    ensemble_case,
    pair_name,
    rank_candidates,
    select_model,
)
from selfunet.preprocessing.revert import load_probabilities, save_probabilities


def candidate(members: list[str], score: float | None) -> CandidateScore:
    return CandidateScore(name=pair_name(members), members=members, num_cases=5, prediction_dir="x",
                          mean_foreground_dice=score, dice={})


def test_best_mean_foreground_dice_wins():
    ranked = rank_candidates([candidate(["2d"], 0.80), candidate(["3d_fullres"], 0.85),
                              candidate(["2d", "3d_fullres"], 0.83)])
    assert [c.name for c in ranked] == ["3d_fullres", "2d+3d_fullres", "2d"]


def test_pair_wins_when_strictly_better():
    ranked = rank_candidates([candidate(["2d"], 0.80), candidate(["2d", "3d_fullres"], 0.8001),
                              candidate(["3d_fullres"], 0.79)])
    assert ranked[0].name == "2d+3d_fullres"


def test_tie_goes_to_the_single_model():
    ranked = rank_candidates([candidate(["2d", "3d_fullres"], 0.8 + 5e-10), candidate(["3d_fullres"], 0.8)])
    assert ranked[0].name == "3d_fullres"


def test_tie_between_singles_goes_to_the_fixed_order():
    ranked = rank_candidates([candidate(["3d_lowres"], 0.8), candidate(["3d_fullres"], 0.8),
                              candidate(["my_config"], 0.8)])
    assert [c.name for c in ranked] == ["3d_fullres", "3d_lowres", "my_config"]


def test_undefined_score_ranks_last():
    ranked = rank_candidates([candidate(["2d"], None), candidate(["3d_fullres"], 0.1)])
    assert [c.name for c in ranked] == ["3d_fullres", "2d"]


def test_no_candidates_is_an_error():
    with pytest.raises(SelfUNetError, match="no candidates"):
        rank_candidates([])


def test_pair_name_uses_the_fixed_order():
    assert pair_name(["3d_lowres", "2d"]) == "2d+3d_lowres"


def test_average_refuses_different_shapes():
    with pytest.raises(SelfUNetError, match="different shapes"):
        average_probabilities([np.zeros((2, 3, 3, 3)), np.zeros((2, 3, 3, 4))])


def test_pair_averages_crop_space_probabilities_then_uncrops(tmp_path):
    shape = (2, *CROP)
    a = np.zeros(shape, np.float32)
    b = np.zeros(shape, np.float32)
    a[0], a[1] = 0.4, 0.6  # a: foreground everywhere, weakly
    b[0], b[1] = 0.9, 0.1  # b: background everywhere, strongly ...
    b[:, 0, 0, 0] = (0.1, 0.9)  # ... except one voxel
    a[:, 1, 1, 1] = (0.75, 0.25)  # and a votes background strongly in another
    props = properties_of("case_000")
    save_probabilities(tmp_path / "a.npz", a, props)
    save_probabilities(tmp_path / "b.npz", b, props)
    ensemble_case([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "out.nii.gz", tmp_path / "out.npz")
    labels, geometry = read_image(tmp_path / "out.nii.gz")
    assert labels.shape[1:] == SHAPE
    expected = np.zeros(SHAPE, np.uint8)
    box = tuple(slice(lo, hi) for lo, hi in BBOX)
    expected[box] = np.argmax((a.astype(np.float16).astype(np.float32) + b.astype(np.float16)) / 2, axis=0)
    assert np.array_equal(labels[0], expected)
    assert labels[0][BBOX[0][0], BBOX[1][0], BBOX[2][0]] == 1  # (0.6 + 0.9) / 2 > (0.4 + 0.1) / 2
    assert labels[0].sum() == 1  # elsewhere background wins the average
    mean, properties = load_probabilities(tmp_path / "out.npz")
    assert np.allclose(mean, (a + b) / 2, atol=1e-3)
    assert properties.case_id == "case_000"
    assert geometry.spacing == pytest.approx(GEOMETRY.spacing)


def test_pair_of_cases_with_different_crops_is_refused(tmp_path):
    props = properties_of("case_000")
    other = props.model_copy(update={"crop_bbox": [[0, 6], [2, 14], [2, 14]]})
    save_probabilities(tmp_path / "a.npz", np.ones((2, *CROP), np.float32) / 2, props)
    save_probabilities(tmp_path / "b.npz", np.ones((2, *CROP), np.float32) / 2, other)
    with pytest.raises(SelfUNetError, match="same images"):
        ensemble_case([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "o.nii.gz", None)


# -- the whole stage on a fake cross-validation ---------------------------------------------------
def organ_sure_lesion_unsure(cropped: np.ndarray, index: int) -> np.ndarray:
    """Right organ; at the lesion it leans to organ (0.45 vs lesion 0.4): misses the lesion."""
    probabilities = one_hot(cropped)
    lesion = cropped == 2
    probabilities[:, lesion] = np.array([0.15, 0.45, 0.4], np.float32)[:, None]
    return probabilities


def lesion_sure_organ_unsure(cropped: np.ndarray, index: int) -> np.ndarray:
    """Right lesion; misses half of the organ (background 0.5 vs organ 0.45)."""
    probabilities = one_hot(cropped, sharpness=0.8)
    half = (cropped == 1) & (np.arange(cropped.shape[-1]) < 6)
    probabilities[:, half] = np.array([0.5, 0.45, 0.05], np.float32)[:, None]
    return probabilities


def with_far_blob(cropped: np.ndarray, index: int) -> np.ndarray:
    probabilities = organ_sure_lesion_unsure(cropped, index)
    probabilities[:, 0, -1, -1] = np.array([0.0, 1.0, 0.0], np.float32)
    return probabilities


def test_select_picks_the_pair_that_fixes_both_members(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "2d", organ_sure_lesion_unsure)
    write_validation(work, "3d_fullres", lesion_sure_organ_unsure)
    selection = select_model(work, save_probabilities=True)
    assert selection.selected == "2d+3d_fullres"
    assert selection.members == ["2d", "3d_fullres"]
    assert selection.candidates[0].name == "2d+3d_fullres"
    scores = {c.name: c for c in selection.candidates}
    assert scores["2d+3d_fullres"].mean_foreground_dice == pytest.approx(1.0)
    assert scores["2d"].mean_foreground_dice < 1.0 and scores["3d_fullres"].mean_foreground_dice < 1.0
    assert scores["2d"].dice["2"] == pytest.approx(0.0)
    assert scores["2d"].fold_spread is not None and scores["2d+3d_fullres"].fold_spread is None
    assert selection.postprocessing.is_identity
    pair_dir = work.root / "ensembles" / "2d+3d_fullres"
    assert len(list(pair_dir.glob("*.nii.gz"))) == 6 and len(list(pair_dir.glob("*.npz"))) == 6
    saved = Selection.load(work.root / "selection.json")
    assert saved == selection


def test_select_decides_postprocessing_of_the_winner(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "3d_fullres", with_far_blob)
    selection = select_model(work, ["3d_fullres"])
    assert selection.selected == "3d_fullres"
    assert selection.postprocessing.largest_component_all_foreground
    assert selection.postprocessing.mean_foreground_dice_after > selection.postprocessing.mean_foreground_dice_before


def test_select_without_complete_configuration_is_an_error(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "2d", organ_sure_lesion_unsure, folds=[0])
    with pytest.raises(SelfUNetError, match="complete cross-validation"):
        select_model(work)
    with pytest.raises(SelfUNetError, match="fold 1"):
        select_model(work, ["2d"])


def test_select_command_prints_every_candidate_and_marks_the_winner(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "2d", organ_sure_lesion_unsure)
    write_validation(work, "3d_fullres", lesion_sure_organ_unsure)
    result = CliRunner().invoke(app, ["select", str(work.root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert not list((work.root / "ensembles" / "2d+3d_fullres").glob("*.npz"))  # labels only by default
    for name in ("2d+3d_fullres", "3d_fullres", "2d", "selected"):
        assert name in result.output
    assert (work.root / "selection.json").is_file()


def test_crossval_and_postprocess_commands(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "3d_fullres", with_far_blob)
    runner = CliRunner()
    result = runner.invoke(app, ["crossval", str(work.root), "-c", "3d_fullres"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["select", str(work.root)]).exit_code == 0
    out = tmp_path / "post"
    result = runner.invoke(app, ["postprocess", str(work.root / "crossval" / "3d_fullres"), str(out),
                                 "--selection", str(work.root / "selection.json")])
    assert result.exit_code == 0, result.output
    cleaned, _ = read_image(out / "case_000.nii.gz")
    assert cleaned[0][BBOX[0][0], BBOX[1][1] - 1, BBOX[2][1] - 1] == 0  # the far blob is gone
    reference = reference_label(0)
    assert np.array_equal(cleaned[0], np.where(reference == 2, 1, reference))  # blob removed, lesion still missed


def test_crossval_command_names_the_missing_fold(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "2d", organ_sure_lesion_unsure, folds=[0, 1])
    result = CliRunner().invoke(app, ["crossval", str(work.root), "-c", "2d"])
    assert result.exit_code == 1
    assert "fold 2" in result.output


def test_select_ranks_and_pairs_configurations_across_planners(tmp_path):
    """A preset's work dir (WORK/planners/resenc-m: same fingerprint and splits) is found by
    discovery; its configuration is the candidate 3d_fullres@resenc-m and pairs with WORK's."""
    import shutil

    work = build_work(tmp_path)
    preset = work.planner("resenc-m")
    preset.root.mkdir(parents=True)
    shutil.copy(work.fingerprint, preset.fingerprint)
    shutil.copy(work.splits, preset.splits)
    write_validation(work, "2d", organ_sure_lesion_unsure)
    write_validation(preset, "3d_fullres", lesion_sure_organ_unsure)
    selection = select_model(work)
    names = [c.name for c in selection.candidates]
    assert sorted(names) == ["2d", "2d+3d_fullres@resenc-m", "3d_fullres@resenc-m"]
    assert selection.selected == "2d+3d_fullres@resenc-m"
    assert selection.members == ["2d", "3d_fullres@resenc-m"]
    resenc = next(c for c in selection.candidates if c.name == "3d_fullres@resenc-m")
    assert resenc.prediction_dir == "planners/resenc-m/crossval/3d_fullres" and resenc.fold_spread is not None
    assert len(list((work.root / "ensembles" / "2d+3d_fullres@resenc-m").glob("*.nii.gz"))) == 6
