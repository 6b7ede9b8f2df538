"""The numbers behind the challenge-report figures, on constructed scores whose answer is known:
the significance matrix, the bootstrap rank distribution (blob plot), the per-case places (podium
plot), the ranks under every scheme with Kendall's tau (robustness), the missing-case policy and
the Pareto-optimal candidates of the matched-compute table; then each figure is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness.report import plots_ranking
from harness.results.leaderboard import Leaderboard, Row
from harness.results.matched import cost_points, pareto_optimal
from harness.results.ranking import (
    CandidateScores,
    MissingPolicy,
    case_rule,
    kendall_taus,
    rank_scores,
    rank_task,
)
from harness.tasks.descriptor import TaskDescriptor
from selfunet.errors import SelfUNetError

CASES = [f"c{i:02d}" for i in range(30)]


def _cand(name: str, values, failed=()) -> CandidateScores:
    return CandidateScores(name, {c: {"1": float(v)} for c, v in zip(CASES, values)}, frozenset(failed))


def test_three_separated_candidates_give_a_triangular_significance_map_and_certain_places():
    rng = np.random.default_rng(0)
    ranking = rank_task("t", [_cand(n, base + rng.normal(0, 0.005, 30)) for n, base in
                              (("C", 0.6), ("A", 0.9), ("B", 0.75))], resamples=200)
    assert ranking.names == ["A", "B", "C"]
    assert ranking.significance().tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    assert np.array_equal(ranking.rank_frequencies(), np.eye(3))  # the blob plot: one blob per candidate
    assert (ranking.case_places() == [1, 2, 3]).all()  # every case: A first, B second, C third
    assert np.array_equal(ranking.podium_counts(), 30 * np.eye(3, dtype=int))
    assert all(ranks == {"A": 1, "B": 2, "C": 3} for ranks in ranking.schemes.values())
    assert set(kendall_taus(ranking.schemes).values()) == {1.0}
    for draw in (plots_ranking.significance_map, plots_ranking.blob_plot, plots_ranking.podium_plot,
                 plots_ranking.robustness_plot):
        assert draw(ranking).startswith("data:image/png;base64,")


def test_mean_and_median_disagree_on_a_candidate_with_a_few_catastrophes():
    # A: 0.9 on 7 of 10 cases, 0 on 3 (mean 0.63, median 0.9); B: 0.8 everywhere (mean = median 0.8)
    a, b = [0.9] * 7 + [0.0] * 3, [0.8] * 10
    ranking = rank_task("t", [_cand("A", a), _cand("B", b)], resamples=100)
    assert ranking.schemes["mean"] == {"A": 2, "B": 1}
    assert ranking.schemes["median"] == {"A": 1, "B": 2}
    assert ranking.schemes["rank-then-aggregate"] == {"A": 1, "B": 2}  # A wins 7 of the 10 cases
    # Wilcoxon: W+ = 7 x 4 = 28 against W- = 3 x 9 = 27: neither direction significant, so both share rank 1
    assert ranking.schemes["test-then-rank"] == {"A": 1, "B": 1}
    assert not ranking.significance().any()
    taus = kendall_taus(ranking.schemes)
    assert taus[("mean", "median")] == pytest.approx(-1.0)
    assert taus[("median", "rank-then-aggregate")] == pytest.approx(1.0)
    assert math.isnan(taus[("mean", "test-then-rank")])  # a scheme that ties everyone orders nothing
    # places: A first in 7 cases, second in 3
    assert ranking.podium_counts().tolist() == [[3, 7], [7, 3]]  # rows in rank order: B, A


def test_kendall_tau_of_one_swap_among_three():
    taus = kendall_taus({"x": {"a": 1, "b": 2, "c": 3}, "y": {"a": 1, "b": 3, "c": 2}})
    assert taus[("x", "y")] == pytest.approx(1 / 3)


@pytest.mark.parametrize(("policy", "x_first_case", "cases"), [
    (MissingPolicy("worst"), 0.0, 30), (MissingPolicy("value", 0.5), 0.5, 30), (MissingPolicy("exclude"), None, 29)])
def test_the_missing_case_policy(policy, x_first_case, cases):
    x = {c: {"1": 0.9} for c in CASES[1:]}  # X has no score for c00
    y = {c: {"1": 0.7} for c in CASES}
    ranking = rank_task("t", [CandidateScores("X", x), CandidateScores("Y", y)], resamples=50, policy=policy)
    assert len(ranking.cases) == cases and ranking.missing == {"X": 1} and ranking.policy == policy
    if x_first_case is None:
        assert ranking.excluded == ["c00"] and "c00" not in ranking.cases
    else:
        assert ranking.case_scores[ranking.names.index("X"), 0] == x_first_case
    assert f"scoring.missing: {policy.rule}" in case_rule(policy)  # printed under every ranking


def test_a_failed_case_in_a_score_file_counts_as_the_policy_says(tmp_path: Path):
    for name, organ in (("a", 0.9), ("b", 0.6)):
        rows = "".join(f"{c},organ,{organ},{'crash' if name == 'a' and i < 2 else 'ok'},,1.0\n"
                       for i, c in enumerate(CASES[:10]))
        (tmp_path / f"{name}.csv").write_text("case,class,dice,status,reason,seconds\n" + rows)
    worst = rank_scores("t", tmp_path, resamples=50)
    assert worst.missing == {"a": 2} and worst.case_scores[worst.names.index("a"), :2].tolist() == [0.0, 0.0]
    excluded = rank_scores("t", tmp_path, resamples=50, policy=MissingPolicy("exclude"))
    assert excluded.excluded == ["c00", "c01"] and len(excluded.cases) == 8


def test_descriptor_scoring_missing_is_validated():
    ok = TaskDescriptor.model_validate({"name": "t", "dataset": "/d", "scoring": {"missing": "value",
                                                                                 "missing_value": 0.25}})
    assert (ok.scoring.missing, ok.scoring.missing_value) == ("value", 0.25)
    assert "missing" not in TaskDescriptor.model_validate({"name": "t", "dataset": "/d"}).content()["scoring"]
    for bad in ({"missing": "value"}, {"missing": "worst", "missing_value": 0.1}, {"missing": "zero"},
                {"missing": "value", "missing_value": 1.5}):
        with pytest.raises(ValueError):
            TaskDescriptor.model_validate({"name": "t", "dataset": "/d", "scoring": bad})
    with pytest.raises(SelfUNetError):
        MissingPolicy("value")


def test_pareto_optimal_candidates_of_the_matched_compute_table():
    assert pareto_optimal([(0.9, 100, 1000), (0.8, 50, 1000), (0.7, 60, 1200), (0.9, 100, 1000)]) == [
        True, True, False, True]  # equal points do not dominate each other
    rows = [Row("3d_fullres", ["3d_fullres"], "none", False, 0.80, {}, train_seconds=50.0, peak_memory_mb=900.0,
                memory="rss"),
            Row("3d_fullres@resenc-m", ["3d_fullres@resenc-m"], "none", False, 0.85, {}, train_seconds=120.0,
                peak_memory_mb=1500.0, memory="rss"),
            Row("2d", ["2d"], "none", False, 0.78, {}, train_seconds=60.0, peak_memory_mb=950.0, memory="rss"),
            Row("2d", ["2d"], "largest", True, 0.79, {}),
            Row("3d_lowres", ["3d_lowres"], "none", False, 0.70, {})]
    points = cost_points(Leaderboard("t", {"1": "organ"}, rows))
    assert [(p.candidate, p.planners, p.pareto) for p in points] == [
        ("3d_fullres@resenc-m", "resenc-m", True), ("3d_fullres", "default", True), ("2d", "default", False),
        ("3d_lowres", "default", False)]
    assert not points[-1].has_cost
    assert plots_ranking.cost_plot(points).startswith("data:image/png;base64,")


def test_consensus_heatmap_draws_missing_tasks():
    uri = plots_ranking.consensus_heatmap({"t1": {"a": 1, "b": 2}, "t2": {"a": 2}}, ["a", "b"])
    assert uri.startswith("data:image/png;base64,")


def test_a_preset_members_cost_is_read_from_its_planner_work_directory(tmp_path: Path):
    import json

    from harness.results.costs import candidate_cost

    for where, seconds in ((tmp_path / "train" / "3d_fullres", 10.0),
                           (tmp_path / "planners" / "resenc-m" / "train" / "3d_fullres", 30.0)):
        for fold in (0, 1):
            (where / f"fold_{fold}").mkdir(parents=True)
            (where / f"fold_{fold}" / "cost.json").write_text(json.dumps(
                {"train_seconds": seconds, "prediction_seconds": 1.0, "peak_memory_mb": seconds * 10, "memory": "rss"}))
    assert candidate_cost(tmp_path, ["3d_fullres@resenc-m"])["train_seconds"] == 60.0
    both = candidate_cost(tmp_path, ["3d_fullres", "3d_fullres@resenc-m"])
    assert (both["train_seconds"], both["peak_memory_mb"]) == (80.0, 300.0)
