"""Leaderboards on a constructed work directory: real label maps, real evaluation and selection models.

The work directory holds a tiny MSD dataset (4 cases, organ + lesion), its real fingerprint, and
cross-validation predictions of two configurations and their pair, made by perturbing the
references in known ways (a stray organ blob that the largest-component rule removes, a missed
lesion, an eroded organ). Summaries come from ``selfunet.evaluation.crossval.evaluate_prediction_folder``,
the postprocessing rule from ``selfunet.evaluation.postprocess_selection.determine_postprocessing`` and the ranking
from ``selfunet.evaluation.ensemble.rank_candidates``, exactly as ``selfunet select`` makes them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from harness.cli import app
from harness.results.leaderboard import NA, SELECTED
from harness.results.publish import read_selected, render_task, write_overview, write_task_results
from harness.tasks.descriptor import TaskDescriptor
from selfunet.evaluation.crossval import (
    CrossvalResult,
    evaluate_prediction_folder,
    finite_or_none,
    fold_spread,
    load_references,
)
from selfunet.evaluation.ensemble import CandidateScore, Selection, class_dice, rank_candidates
from selfunet.evaluation.metrics import EMPTY_MASK_RULE
from selfunet.evaluation.postprocess_selection import determine_postprocessing
from selfunet.evaluation.summary import EvaluationSummary
from selfunet.planning.fingerprint import run_fingerprint
from selfunet.workdir import WorkDir

CASES = ["case_000", "case_001", "case_002", "case_003"]
FOLDS = [["case_000", "case_002"], ["case_001", "case_003"]]
SHAPE = (8, 24, 24)
SPACING = (2.0, 1.0, 1.0)  # z, y, x
NSD_MM = 1.0


def _write(path: Path, array: np.ndarray, pixel=np.uint8) -> None:
    image = sitk.GetImageFromArray(array.astype(pixel))
    image.SetSpacing(tuple(reversed(SPACING)))
    image.SetOrigin((10.0, -5.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def _reference(i: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 4 + i:14 + i, 4:14] = 1  # organ
    label[3:5, 8 + i:10 + i, 8:10] = 2  # lesion inside it
    return label


def _make_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    training = []
    for i, case in enumerate(CASES):
        ref = _reference(i)
        _write(root / "imagesTr" / f"{case}.nii.gz", ref * 50.0 + rng.normal(0, 5, SHAPE), np.float32)
        _write(root / "labelsTr" / f"{case}.nii.gz", ref)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "numTraining": len(CASES), "numTest": 0, "training": training, "test": [],
    }))
    return root


def _predictions(folder: Path, kind: str) -> None:
    for i, case in enumerate(CASES):
        pred = _reference(i)
        if kind == "stray":  # a far-away organ blob: removing all but the largest component helps
            pred[6:8, 20:23, 20:23] = 1
        elif kind == "no_lesion":
            pred[pred == 2] = 1
        elif kind == "eroded":
            pred[2, :, :] = 0
        _write(folder / f"{case}.nii.gz", pred)


def _candidate(work: Path, members: list[str], folder: Path, summary: EvaluationSummary, references,
               spread) -> CandidateScore:
    return CandidateScore(name="+".join(members), members=members, num_cases=len(summary.per_case),
                          prediction_dir=str(folder.relative_to(work)),
                          mean_foreground_dice=finite_or_none(summary.mean_foreground_dice),
                          dice=class_dice(summary, references), fold_spread=spread)


def build_work(tmp: Path) -> Path:
    """The constructed work directory (see module doc); selection.json as `selfunet select` writes it."""
    data = _make_dataset(tmp / "data")
    work = tmp / "work"
    run_fingerprint(data, work, processes=1)
    references = load_references(WorkDir(work))
    folds = list(enumerate(FOLDS))
    candidates = []
    for config, kind in (("3d_fullres", "stray"), ("2d", "no_lesion")):
        folder = work / "crossval" / config
        _predictions(folder, kind)
        summary, fold_results = evaluate_prediction_folder(folder, references, folds, NSD_MM, True)
        spread = fold_spread(f.mean_foreground_dice for f in fold_results)
        CrossvalResult(configuration=config, num_cases=len(CASES), file_ending=".nii.gz", nsd_tolerance_mm=NSD_MM,
                       hd95=True, mean_foreground_dice=summary.mean_foreground_dice, folds=fold_results,
                       fold_spread=spread).save(folder / "crossval.json")
        candidates.append(_candidate(work, [config], folder, summary, references, spread))
    pair = work / "ensembles" / "2d+3d_fullres"
    _predictions(pair, "eroded")
    summary, _ = evaluate_prediction_folder(pair, references, [], None, False, overall_cases=CASES)  # as select does
    candidates.append(_candidate(work, ["2d", "3d_fullres"], pair, summary, references, None))
    final = []
    for cand in rank_candidates(candidates):
        pairs = [(work / cand.prediction_dir / f"{c}.nii.gz", references.path(c)) for c in CASES]
        rule = determine_postprocessing(pairs, list(references.labels))
        final.append(cand.model_copy(update={"postprocessing": rule}))
    Selection(selected=final[0].name, members=final[0].members, postprocessing=final[0].postprocessing,
              candidates=final, labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz", num_cases=len(CASES),
              empty_mask_rule=EMPTY_MASK_RULE).save(work / "selection.json")
    return work


@pytest.fixture(scope="module")
def work_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_work(tmp_path_factory.mktemp("leaderboard"))


@pytest.fixture
def work(work_template: Path, tmp_path: Path) -> Path:
    shutil.copytree(work_template.parent / "data", tmp_path / "data")
    out = Path(shutil.copytree(work_template, tmp_path / "work"))
    fingerprint = json.loads((out / "fingerprint.json").read_text())  # point at the copied dataset
    text = json.dumps(fingerprint).replace(str(work_template.parent / "data"), str(tmp_path / "data"))
    (out / "fingerprint.json").write_text(text)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _spread(summary: EvaluationSummary) -> tuple[float, float, float]:
    """Oracle: per fold, the mean over classes of the per-class mean Dice over that fold's cases."""
    means = []
    for cases in FOLDS:
        per_class = [np.nanmean([c.classes[k].dice for c in summary.per_case if c.case_id in cases])
                     for k in ("1", "2")]
        means.append(float(np.mean(per_class)))
    return float(np.std(means)), min(means), max(means)


def test_every_candidate_with_and_without_postprocessing_and_the_selected_one_marked(work: Path, tmp_path: Path):
    results = tmp_path / "results"
    board = render_task("tiny", results, work, nsd_tolerance_mm=NSD_MM, hd95=True)
    assert board is not None
    rows = _rows(results / "tiny" / "leaderboard.csv")
    selection = Selection.load(work / "selection.json")
    assert selection.selected == "3d_fullres"
    assert [(r["candidate"], r["postprocessing"] == "none") for r in rows] == [
        (c.name, raw) for c in selection.candidates for raw in (True, False)]
    assert {"dice_organ", "dice_lesion", "nsd", "nsd_organ", "nsd_lesion", "hd95", "hd95_organ", "hd95_lesion",
            "fold_std", "fold_min", "fold_max"} <= set(rows[0])
    selected = [r for r in rows if r["selected"] == SELECTED]
    assert len(selected) == 1 and selected[0]["candidate"] == "3d_fullres"
    assert selected[0]["postprocessing"] == "largest foreground component"
    assert read_selected(results / "tiny" / "leaderboard.csv") == selected[0]
    assert (results / "tiny" / "selection.json").read_text() == (work / "selection.json").read_text()

    for cand, raw, post in zip(selection.candidates, rows[::2], rows[1::2], strict=True):
        summary = EvaluationSummary.load(work / cand.prediction_dir / "summary.json")
        assert float(raw["mean_fg_dice"]) == pytest.approx(summary.mean_foreground_dice, abs=1e-6)
        assert float(raw["dice_organ"]) == pytest.approx(summary.mean["1"]["dice"], abs=1e-6)
        assert float(post["dice_lesion"]) == pytest.approx(cand.postprocessing.dice_after["2"], abs=1e-6)
        assert float(post["mean_fg_dice"]) == pytest.approx(cand.postprocessing.mean_foreground_dice_after, abs=1e-6)
        assert NA not in (raw["nsd"], raw["hd95"], post["nsd"], post["hd95"]), cand.name
        std, low, high = _spread(summary)
        assert (float(raw["fold_std"]), float(raw["fold_min"]), float(raw["fold_max"])) == pytest.approx(
            (std, low, high), abs=1e-6)
    # the stray blob costs organ Dice and HD95; the rule removes it, and the re-evaluation agrees with its evidence
    raw, post = rows[0], rows[1]
    assert float(post["dice_organ"]) == pytest.approx(1.0) and float(raw["dice_organ"]) < 0.99
    assert float(post["hd95_organ"]) == pytest.approx(0.0) and float(raw["hd95_organ"]) > 0
    assert float(post["fold_std"]) == pytest.approx(0.0)

    md = (results / "tiny" / "leaderboard.md").read_text()
    assert EMPTY_MASK_RULE in md and "**→**" in md and "2d+3d_fullres" in md
    overview = write_overview(results).read_text()
    assert "| tiny | 3d_fullres (postprocessing: largest foreground component) | 1.0000 |" in overview


def test_pair_metrics_the_selection_did_not_compute_are_computed_and_cached(work: Path, tmp_path: Path):
    render_task("tiny", tmp_path / "results", work, nsd_tolerance_mm=NSD_MM, hd95=True)
    cached = work / "leaderboard" / "2d+3d_fullres" / "raw" / "summary.json"
    summary = EvaluationSummary.load(cached)
    assert summary.nsd_tolerance_mm == NSD_MM and summary.hd95
    pair = EvaluationSummary.load(work / "ensembles" / "2d+3d_fullres" / "summary.json")
    assert pair.nsd_tolerance_mm is None  # select's own evaluation is left alone
    stamp = cached.stat().st_mtime_ns
    render_task("tiny", tmp_path / "results", work, nsd_tolerance_mm=NSD_MM, hd95=True)
    assert cached.stat().st_mtime_ns == stamp  # reused, not recomputed


def test_metrics_not_asked_have_no_columns_and_a_missing_work_dir_gives_na(work: Path, tmp_path: Path):
    results = tmp_path / "results"
    render_task("tiny", results, work)
    assert not any(c.startswith(("nsd", "hd95")) for c in _rows(results / "tiny" / "leaderboard.csv")[0])
    shutil.rmtree(work)
    render_task("tiny", results, tmp_path / "gone", nsd_tolerance_mm=NSD_MM)
    rows = _rows(results / "tiny" / "leaderboard.csv")
    assert {r["nsd"] for r in rows} == {NA}
    assert rows[0]["fold_std"] != NA  # configurations carry their spread in selection.json
    assert rows[2]["candidate"] == "2d+3d_fullres" and rows[2]["fold_std"] == NA


def _task(work: Path, **update) -> TaskDescriptor:
    return TaskDescriptor(name="tiny", dataset=work.parent / "data", metrics={"nsd_tolerance_mm": NSD_MM}, **update)


def _record(work: Path, select: str = "succeeded") -> dict:
    return {"task": "tiny", "work": str(work), "finished": 1_700_000_000.0, "succeeded": select == "succeeded",
            "descriptor_content": {"budget": {"preset": "ci"}, "metrics": {"nsd_tolerance_mm": NSD_MM}},
            "train_config": {"epochs": 3, "iterations_per_epoch": 12, "num_folds": 2},
            "jobs": [{"job": "select", "status": select}]}


def test_write_task_results_and_the_leaderboard_command_rerender_from_disk(work: Path, tmp_path: Path):
    results = tmp_path / "results"
    (results / "tiny").mkdir(parents=True)
    (results / "tiny" / "run.json").write_text(json.dumps(_record(work)))
    write_task_results(_task(work), work, results, _record(work))
    first = (results / "tiny" / "leaderboard.csv").read_text()
    assert "ci (3 epochs x 12 iterations, 2 folds)" in (results / "leaderboard.md").read_text()
    assert "- budget: ci" in (results / "tiny" / "leaderboard.md").read_text()

    (results / "tiny" / "leaderboard.csv").unlink()
    (results / "leaderboard.md").unlink()
    out = CliRunner().invoke(app, ["leaderboard", "--results", str(results)], terminal_width=250)
    assert out.exit_code == 0, out.output
    assert (results / "tiny" / "leaderboard.csv").read_text() == first  # work dir and metrics from run.json
    assert "tiny: cross-validation leaderboard" in out.output and (results / "leaderboard.md").is_file()

    missing = CliRunner().invoke(app, ["leaderboard", "nosuchtask", "--results", str(results)])
    assert missing.exit_code == 1 and "no results for task 'nosuchtask'" in missing.output


def test_a_failed_select_leaves_the_previous_leaderboard_alone(work: Path, tmp_path: Path):
    results = tmp_path / "results"
    (results / "tiny").mkdir(parents=True)
    (results / "tiny" / "run.json").write_text(json.dumps(_record(work, select="failed")))  # as the runner does
    write_task_results(_task(work), work, results, _record(work, select="failed"))
    assert not (results / "tiny" / "leaderboard.csv").exists()
    assert "| tiny | no selection |" in (results / "leaderboard.md").read_text()


def test_ranking_of_the_rows_and_of_scored_submissions_and_the_consensus_over_tasks(work: Path, tmp_path: Path):
    results = tmp_path / "results"
    scores = results / "tiny" / "scores"
    scores.mkdir(parents=True)
    header = "case,class,dice,status,reason,seconds\n"
    for name, organ in (("team_a", 0.9), ("team_b", 0.6)):
        (scores / f"{name}.csv").write_text(header + "".join(
            f"{c},organ,{organ + i / 100:.3f},ok,,1.0\n{c},lesion,{organ:.3f},ok,,1.0\n" for i, c in enumerate(CASES)))
    board = render_task("tiny", results, work)
    render_task("tiny2", results, work)
    # the postprocessed 3d_fullres is perfect on every case; its raw twin has a stray organ blob
    assert board.ranking.rows[0].name == "3d_fullres+pp" and board.ranking.rows[0].p_first == 1.0
    assert board.ranking.row("3d_fullres").rank > 1
    # 4 cases: the smallest exact one-sided Wilcoxon p is 1/16 > 0.05, so no difference is significant
    assert all(not r.better_than for r in board.ranking.rows)
    assert [r.name for r in board.test_ranking.rows] == ["team_a", "team_b"]
    ranking = _rows(results / "tiny" / "ranking.csv")
    assert {r["set"] for r in ranking} == {"crossval", "test"}
    assert [r["candidate"] for r in ranking if r["set"] == "test"] == ["team_a", "team_b"]
    selected = read_selected(results / "tiny" / "leaderboard.csv")
    assert selected["rank"] == "1" and selected["rank_low"] == "1"
    md = (results / "tiny" / "leaderboard.md").read_text()
    assert "## Ranking on the cross-validation cases" in md and "## Ranking on the held-out test cases" in md
    overview = write_overview(results).read_text()
    assert "## Consensus over tasks: cross-validation" in overview
    assert "| 1 | 3d_fullres+pp | 1.00 | 1 | 1 |" in overview
    assert "held-out test cases" not in overview  # only one task has scored submissions


def test_with_several_seeds_the_ranking_averages_each_seeds_per_case_dice(work: Path, tmp_path: Path):
    from harness.results.leaderboard import build_leaderboard

    seed_dir = work / "seeds" / "1"
    seed_dir.mkdir(parents=True)
    for name in ("fingerprint.json", "selection.json", "crossval", "ensembles"):
        source = work / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, seed_dir / name)
    worse = seed_dir / "crossval" / "3d_fullres"
    (worse / "summary.json").unlink()
    _predictions(worse, "no_lesion")  # seed 1's 3d_fullres misses the lesion everywhere
    selection = Selection.load(work / "selection.json")
    (work / "seeds.json").write_text(json.dumps({"seeds": [0, 1], "work_dirs": {"0": ".", "1": "seeds/1"},
                                                 "candidates": {}}))
    board = build_leaderboard("tiny", work, work / "selection.json")
    raw = next(r for r in board.rows if r.candidate == "3d_fullres" and r.postprocessing == "none")
    first = EvaluationSummary.load(work / "crossval" / "3d_fullres" / "summary.json")
    for case in first.per_case:  # lesion: (seed 0's Dice + 0) / 2
        assert raw.per_case[case.case_id]["2"] == pytest.approx(case.classes["2"].dice / 2)
    assert "per-case Dice averaged over the seeds" in " ".join(board.notes)
    assert board.ranking.row("3d_fullres").mean_fg_dice < first.mean_foreground_dice
    assert selection.selected == "3d_fullres"
