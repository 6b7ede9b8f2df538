"""Several training seeds: a seed dimension in the job graph, per-seed work directories, selection
by the mean over seeds, and mean ± std in the leaderboard."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from test_jobs import FakeSandbox

from harness.executors import LocalExecutor
from harness.results.leaderboard import build_leaderboard
from harness.results.seeds import parse_seeds, seed_stats
from harness.results.tables import to_csv, to_markdown
from harness.run.jobs import TaskGraph
from harness.run.runner import Runner
from harness.tasks.descriptor import TaskDescriptor
from selfunet.errors import SelfUNetError
from selfunet.evaluation.ensemble import CandidateScore, Selection
from selfunet.inference.postprocess import PostprocessingRule
from selfunet.planning.plan import plan_experiment

#: seed -> candidate -> mean fg Dice. Seed 0 alone picks 3d_fullres; the mean over seeds picks 2d.
SCORES = {0: {"3d_fullres": 0.80, "2d": 0.79}, 1: {"3d_fullres": 0.70, "2d": 0.78}, 2: {"3d_fullres": 0.72, "2d": 0.77}}


class SeedSandbox(FakeSandbox):
    """The fake sandbox of test_jobs, whose select writes a real selection.json with per-seed scores."""

    def run(self, request, slot) -> int:
        code = super().run(request, slot)
        if request.argv[0] == "select" and code == 0:
            work = Path(request.argv[1])
            seed = int(work.name) if work.parent.name == "seeds" else 0
            candidates = []
            for name, score in sorted(SCORES[seed].items(), key=lambda kv: -kv[1]):
                rule = PostprocessingRule(largest_component_all_foreground=True, num_cases=6,
                                          mean_foreground_dice_after=score + 0.01,
                                          dice_after={"1": score + 0.01, "2": score + 0.01})
                candidates.append(CandidateScore(name=name, members=[name], num_cases=6,
                                                 prediction_dir=f"crossval/{name}", mean_foreground_dice=score,
                                                 dice={"1": score, "2": score}, postprocessing=rule))
            Selection(selected=candidates[0].name, members=candidates[0].members,
                      postprocessing=candidates[0].postprocessing, candidates=candidates,
                      labels={"1": "organ", "2": "lesion"}, file_ending=".nii.gz",
                      num_cases=6).save(work / "selection.json")
        return code


@pytest.fixture
def run(tmp_path: Path, demo_root: Path, demo_fingerprint):
    case_ids = sorted(json.loads((demo_root / "dataset.json").read_text())["training"][i]["image"].split("/")[-1]
                      .removesuffix(".nii.gz") for i in range(6))
    plan_json = plan_experiment(demo_fingerprint).model_dump_json()
    task = TaskDescriptor.model_validate({"name": "t", "dataset": str(demo_root), "budget": "ci",
                                          "configurations": ["2d", "3d_fullres"]})

    def go(seeds):
        sandbox = SeedSandbox(plan_json, case_ids)
        graph = TaskGraph(task, tmp_path / "work", tmp_path / "results", seeds)
        with LocalExecutor(sandbox, gpus=0) as executor:
            records = Runner([graph], executor, version="test", progress=False).run()
        return {r.job: r for r in records}, sandbox

    return go, tmp_path / "work"


def test_each_seed_trains_in_its_own_work_dir_and_selection_uses_the_seed_mean(run) -> None:
    go, work = run
    records, sandbox = go([0, 1, 2])
    assert all(r.status == "succeeded" for r in records.values()), {j: r.status for j, r in records.items()}
    for seed in (1, 2):
        seed_dir = work / "seeds" / str(seed)
        assert {f"train-2d-fold0-seed{seed}", f"crossval-3d_fullres-seed{seed}", f"select-seed{seed}"} <= set(records)
        assert (seed_dir / "plan.json").is_symlink() and (seed_dir / "preprocessed").resolve() == (
            work / "preprocessed").resolve()
        assert (seed_dir / "train" / "2d" / "fold_1" / "checkpoint_final.pt").is_file()
        trains = [c for c in sandbox.calls if c[0] == "train" and c[1] == str(seed_dir)]
        assert len(trains) == 4 and all(c[c.index("--seed") + 1] == str(seed) for c in trains)
    primary = [c for c in sandbox.calls if c[0] == "train" and c[1] == str(work)]
    assert len(primary) == 4 and all("--seed" not in c for c in primary)  # the first seed: today's layout and argv
    selection = Selection.load(work / "selection.json")
    assert selection.selected == "2d" and selection.members == ["2d"]  # 0.78 mean vs 0.74
    assert selection.postprocessing.largest_component_all_foreground
    seeds = json.loads((work / "seeds.json").read_text())
    assert seeds["selected_on_first_seed"] == "3d_fullres" and seeds["seeds"] == [0, 1, 2]
    stages = sandbox.stages()
    assert stages.index("predict") > max(i for i, s in enumerate(stages) if s == "select")

    again, _ = go([0, 1, 2])
    assert {r.status for r in again.values()} == {"skipped"}


def test_one_seed_keeps_todays_graph(run) -> None:
    go, work = run
    records, _ = go(None)
    assert not any("seed" in job for job in records) and not (work / "seeds").exists()
    assert Selection.load(work / "selection.json").selected == "3d_fullres"


def test_leaderboard_shows_mean_and_std_over_seeds(run, tmp_path: Path) -> None:
    go, work = run
    go([0, 1, 2])
    board = build_leaderboard("t", work, work / "selection.json", compute=False)
    rows = list(csv.DictReader(io.StringIO(to_csv(board))))
    raw_2d = next(r for r in rows if r["candidate"] == "2d" and r["postprocessing"] == "none")
    assert float(raw_2d["mean_fg_dice"]) == pytest.approx(0.78) and raw_2d["seeds"] == "3"
    assert float(raw_2d["std_mean_fg_dice"]) == pytest.approx(0.008165, abs=1e-6)  # pstdev(0.79, 0.78, 0.77)
    post_3d = next(r for r in rows if r["candidate"] == "3d_fullres" and r["postprocessing"] != "none")
    assert float(post_3d["mean_fg_dice"]) == pytest.approx(0.75) and float(post_3d["dice_organ"]) == pytest.approx(
        0.75)
    assert [r["selected"] for r in rows].count("yes") == 1 and next(
        r for r in rows if r["selected"] == "yes")["candidate"] == "2d"
    assert "0.7800 ± 0.0082" in to_markdown(board)


def test_bad_seed_lists_are_refused() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("7") == [7]
    for text in ("0,a", "", "1,1"):
        with pytest.raises(SelfUNetError, match="--seeds"):
            parse_seeds(text)


def test_seed_stats_skip_a_seed_without_a_rule() -> None:
    scores = {"candidates": {"a": {"0": {"raw": {"mean_fg_dice": 0.5, "dice": {"1": 0.5}}, "postprocessed": None},
                                   "1": {"raw": {"mean_fg_dice": 0.7, "dice": {"1": 0.7}}, "postprocessed": None}}}}
    mean, std = seed_stats(scores, "a", postprocessed=False)
    assert mean == {"fg": pytest.approx(0.6), "1": pytest.approx(0.6)} and std["fg"] == pytest.approx(0.1)
    assert seed_stats(scores, "a", postprocessed=True) is None


def test_seeds_times_planners_each_seed_has_each_planners_work_dir(tmp_path: Path, demo_root: Path,
                                                                    demo_fingerprint) -> None:
    case_ids = sorted(json.loads((demo_root / "dataset.json").read_text())["training"][i]["image"].split("/")[-1]
                      .removesuffix(".nii.gz") for i in range(6))
    task = TaskDescriptor.model_validate({"name": "t", "dataset": str(demo_root), "budget": "ci",
                                          "configurations": ["3d_fullres"], "planners": ["default", "resenc-m"]})
    sandbox = SeedSandbox(plan_experiment(demo_fingerprint).model_dump_json(), case_ids)
    work = tmp_path / "work"
    with LocalExecutor(sandbox, gpus=0) as executor:
        records = Runner([TaskGraph(task, work, tmp_path / "results", [0, 1])], executor, version="test",
                         progress=False).run()
    assert all(r.status == "succeeded" for r in records), {r.job: r.status for r in records}
    jobs = {r.job for r in records}
    assert {"train-3d_fullres@resenc-m-fold1", "train-3d_fullres@resenc-m-fold1-seed1",
            "crossval-3d_fullres@resenc-m-seed1", "select-seed1"} <= jobs
    preset_seed = work / "seeds" / "1" / "planners" / "resenc-m"
    assert (preset_seed / "plan.json").is_symlink() and (preset_seed / "splits.json").resolve() == (
        work / "planners" / "resenc-m" / "splits.json").resolve()
    assert (preset_seed / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file()
    select = next(c for c in sandbox.calls if c[0] == "select" and c[1] == str(work / "seeds" / "1"))
    assert [select[i + 1] for i, a in enumerate(select) if a == "-c"] == ["3d_fullres", "3d_fullres@resenc-m"]
    with pytest.raises(SelfUNetError, match="add `default` to planners"):
        TaskGraph(task.model_copy(update={"planners": ["resenc-m"]}), work, tmp_path / "results", [0, 1])
