"""Ranking on constructed scores whose order and significance are known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.results.ranking import (
    CandidateScores,
    consensus,
    holm,
    per_case_scores,
    rank_scores,
    rank_task,
    wilcoxon_greater,
)
from selfunet.errors import SelfUNetError

CASES = [f"case_{i:02d}" for i in range(30)]


def _cand(name: str, values, second=None) -> CandidateScores:
    """Per-case Dice of class 1 (and class 2 when given)."""
    dice = {}
    for i, case in enumerate(CASES[: len(values)]):
        dice[case] = {"1": float(values[i])} | ({"2": float(second[i])} if second is not None else {})
    return CandidateScores(name, dice)


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_wilcoxon_exact_p_when_every_difference_favours_one_side():
    a = np.linspace(0.80, 0.89, 10)
    b = a - np.linspace(0.01, 0.10, 10)  # ten distinct positive differences
    assert wilcoxon_greater(a, b) == pytest.approx(1 / 2**10)
    assert wilcoxon_greater(b, a) == pytest.approx(1.0)
    assert wilcoxon_greater(a, a) == 1.0
    # ties: four equal positive differences are still only 1/16 under the null (no approximation)
    assert wilcoxon_greater(np.full(4, 0.9), np.full(4, 0.6)) == pytest.approx(1 / 16)
    # agrees with scipy's exact test where that applies (no ties, no zeros), both tails
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 1, 20), rng.uniform(0, 1, 20)
    for u, v in ((x, y), (y, x)):
        assert wilcoxon_greater(u, v) == pytest.approx(
            stats.wilcoxon(u, v, alternative="greater", method="exact").pvalue)


def test_clearly_separated_candidates_rank_in_order_stably_and_significantly():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.01, (3, 30))
    ranking = rank_task("t", [_cand("C", 0.70 + noise[2]), _cand("A", 0.90 + noise[0]), _cand("B", 0.80 + noise[1])])
    assert [r.name for r in ranking.rows] == ["A", "B", "C"]
    for expected, row in enumerate(ranking.rows, start=1):
        assert row.rank == row.case_rank == expected
        assert (row.rank_low, row.rank_high) == (expected, expected)
    assert ranking.row("A").p_first == 1.0 and ranking.row("B").p_first == 0.0
    assert sorted(ranking.row("A").better_than) == ["B", "C"]
    assert ranking.row("B").better_than == ["C"] and ranking.row("C").better_than == []
    # 30 cases all one way: exact p = 2^-30, Holm over 6 tests still tiny; the reverse is 1
    assert ranking.p_values[("A", "B")] < 1e-6 and ranking.p_values[("B", "A")] == 1.0
    assert ranking.bootstrap_ranks.shape == (1000, 3)


def test_indistinguishable_candidates_share_their_rank_interval_and_nothing_is_significant():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.6, 0.9, 30)
    ranking = rank_task("t", [_cand("X", base + rng.normal(0, 0.02, 30)), _cand("Y", base + rng.normal(0, 0.02, 30))])
    for row in ranking.rows:
        assert (row.rank_low, row.rank_high) == (1, 2)
        assert 0.05 < row.p_first < 0.95
        assert row.better_than == []
    assert all(p > 0.05 for p in ranking.p_values.values())


def test_aggregate_then_rank_and_rank_then_aggregate_can_disagree():
    # A wins 9 of 10 cases by 0.05 but fails one completely; B is steady
    a = [0.9] * 9 + [0.0]
    b = [0.85] * 10
    ranking = rank_task("t", [_cand("A", a), _cand("B", b)], resamples=200)
    assert ranking.row("B").rank == 1 and ranking.row("A").rank == 2  # means 0.85 > 0.81
    assert ranking.row("A").case_rank == 1 and ranking.row("B").case_rank == 2
    assert ranking.row("A").mean_case_rank == pytest.approx(1.1)
    assert ranking.row("A").mean_fg_dice == pytest.approx(0.81)


def test_the_aggregate_is_the_leaderboards_mean_of_class_means_with_undefined_values_left_out():
    # class 2 undefined (both empty) in case 0: its class mean is over cases 1-2 only
    cand = CandidateScores("A", {"c0": {"1": 0.9, "2": math.nan}, "c1": {"1": 0.6, "2": 0.5},
                                 "c2": {"1": 0.6, "2": 0.7}})
    ranking = rank_task("t", [cand], resamples=10)
    assert ranking.rows[0].mean_fg_dice == pytest.approx(((0.9 + 0.6 + 0.6) / 3 + (0.5 + 0.7) / 2) / 2)


def test_case_rule_missing_case_is_zero_and_a_correctly_empty_class_counts_as_one():
    a = CandidateScores("A", {"c0": {"1": 0.8, "2": math.nan}, "c1": {"1": 0.7, "2": math.nan}})
    b = CandidateScores("B", {"c0": {"1": 0.8, "2": 0.0}})  # predicted class 2 where none is; misses c1
    ranking = rank_task("t", [a, b], resamples=10)
    assert ranking.missing == {"B": 1}
    dice = np.array([[[0.8, np.nan], [0.7, np.nan]], [[0.8, 0.0], [0.0, 0.0]]])
    scores = per_case_scores(dice)
    # A's empty class 2 counts as 1 wherever B has a value for it (B's missing case c1 counts as 0)
    assert scores[0] == pytest.approx([0.9, 0.85])
    assert scores[1] == pytest.approx([0.4, 0.0])
    assert ranking.row("A").case_rank == 1


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    cands = [_cand(n, rng.uniform(0.5, 0.9, 30)) for n in "PQR"]
    first, again = rank_task("t", cands, seed=7), rank_task("t", cands, seed=7)
    other = rank_task("t", cands, seed=8)
    assert np.array_equal(first.bootstrap_ranks, again.bootstrap_ranks)
    assert not np.array_equal(first.bootstrap_ranks, other.bootstrap_ranks)


def test_duplicate_or_no_candidates_are_refused():
    with pytest.raises(SelfUNetError, match="unique"):
        rank_task("t", [_cand("A", [0.5]), _cand("A", [0.6])])
    with pytest.raises(SelfUNetError, match="no candidates"):
        rank_task("t", [])


def test_consensus_is_the_mean_rank_over_tasks_and_partial_candidates_stay_unranked():
    def ranking(task, order):  # order best first, clearly separated
        return rank_task(task, [_cand(name, [0.9 - 0.1 * i] * 10) for i, name in enumerate(order)], resamples=10)

    rankings = {"t1": ranking("t1", ["A", "B", "C", "D"]), "t2": ranking("t2", ["B", "A", "C"]),
                "t3": ranking("t3", ["B", "C", "A"])}
    rows = consensus({task: {r.name: r.rank for r in ranked.rows} for task, ranked in rankings.items()})
    assert [(r.name, r.rank) for r in rows] == [("B", 1), ("A", 2), ("C", 3), ("D", None)]
    assert rows[0].mean_rank == pytest.approx(4 / 3) and rows[1].mean_rank == pytest.approx(2.0)
    assert rows[1].ranks == {"t1": 1, "t2": 2, "t3": 3}


def test_score_files_of_submissions_are_ranked_and_other_csvs_ignored(tmp_path):
    header = "case,class,dice,status,reason,seconds\n"
    good = "".join(f"c{i},organ,{0.9 + i / 1000:.4f},ok,,1.0\nc{i},lesion,nan,ok,,1.0\n" for i in range(12))
    bad = "".join(f"c{i},organ,{0.5 + i / 1000:.4f},ok,,1.0\nc{i},lesion,0,ok,,1.0\n" for i in range(11))
    (tmp_path / "good.csv").write_text(header + good)
    (tmp_path / "bad.csv").write_text(header + bad)  # c11 missing: counts as 0
    (tmp_path / "leaderboard.csv").write_text("submission,mean_fg_dice\ngood,0.9\n")
    ranking = rank_scores("demo", tmp_path, resamples=100)
    assert [r.name for r in ranking.rows] == ["good", "bad"] and ranking.missing == {"bad": 1}
    assert ranking.row("good").better_than == ["bad"]
    assert ranking.row("good").mean_fg_dice == pytest.approx(np.mean([0.9 + i / 1000 for i in range(12)]))
    (tmp_path / "bad.csv").write_text(header + "c0,organ,oops,ok,,1\n")
    with pytest.raises(SelfUNetError, match=r"bad\.csv, line 2"):
        rank_scores("demo", tmp_path)
    assert rank_scores("demo", tmp_path / "none") is None


def test_score_command_ranks_the_scored_submissions(demo_root, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    empty = tmp_path / "empty"
    empty.mkdir()
    descriptor = tmp_path / "t.yaml"
    descriptor.write_text(f"name: t\ndataset: {demo_root}\ntest_labels: {demo_root / 'labelsTs'}\n")
    out = CliRunner().invoke(app, ["score", str(descriptor), "--work-root", str(tmp_path / "work"), "--results",
                                   str(tmp_path / "r"), "-s", f"ref={demo_root / 'labelsTs'}", "-s", f"none={empty}",
                                   "--no-selfunet"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "t: ranking on the held-out test cases" in out.output
    ranking = (tmp_path / "r" / "t" / "scores" / "ranking.md").read_text()
    assert "| 1 | ref | 1.0000 | 1-1 |" in ranking and "| 2 | none | 0.0000 | 2-2 |" in ranking
