"""Leaderboard rendering: the ranking in CSV/Markdown, and rich tables that fit an 80-column terminal."""

from __future__ import annotations

import csv
import io

import numpy as np
from rich.console import Console

from harness.results.leaderboard import Leaderboard, Row, rank_rows
from harness.results.tables import fit_columns, rich_table, to_csv, to_markdown

LABELS = {"1": "liver", "2": "tumour", "3": "portal_vein_and_hepatic_vessels"}
NAMES = ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres", "3d_fullres+3d_cascade_fullres"]


def _board(nsd: bool = True, hd95: bool = True) -> Leaderboard:
    """Five candidates, each twice (raw, postprocessed), clearly ordered by their per-case Dice."""
    rng = np.random.default_rng(0)
    rows = []
    for i, name in enumerate(NAMES):
        base = 0.9 - 0.05 * i
        per_case = {f"case_{c:02d}": {v: float(base + rng.normal(0, 0.005)) for v in LABELS} for c in range(12)}
        mean = float(np.mean([d for case in per_case.values() for d in case.values()]))
        for post in (False, True):
            rows.append(Row(name, name.split("+"), "largest foreground component" if post else "none",
                            name == "2d" and post, mean, dict.fromkeys(LABELS, mean),
                            nsd={"fg": 0.95, **dict.fromkeys(LABELS, 0.95)},
                            hd95={"fg": 3.2, **dict.fromkeys(LABELS, 3.2)},
                            fold_mean=mean, fold_std=0.01, fold_min=mean - 0.01, fold_max=mean + 0.01, num_cases=12,
                            postprocessed=post, per_case=per_case))
    board = Leaderboard("Task08_HepaticVessel", LABELS, rows, nsd_tolerance_mm=2.0 if nsd else None, hd95=hd95,
                        selected="2d", empty_mask_rule="Both empty: undefined.")
    board.ranking = rank_rows(board)
    return board


def test_ranking_columns_in_the_csv_and_a_ranking_section_in_the_markdown():
    board = _board()
    rows = list(csv.DictReader(io.StringIO(to_csv(board))))
    # each +pp twin has the same per-case Dice as its raw row: tied ranks
    assert [r["rank"] for r in rows] == ["1", "1", "3", "3", "5", "5", "7", "7", "9", "9"]
    assert (rows[0]["rank_low"], rows[0]["rank_high"]) == ("1", "1") and rows[-1]["rank_high"] == "9"
    assert "3d_fullres" in rows[0]["better_than"] and rows[-1]["better_than"] == ""
    md = to_markdown(board)
    assert "## Ranking on the cross-validation cases" in md and "Holm-adjusted p-values" in md
    assert "1000 bootstrap resamples of the 12 cases" in md


def test_identity_rule_rows_share_the_raw_rows_ranking():
    board = _board()
    for row in board.rows[1::2]:
        row.postprocessed = False  # "no rule helped": same predictions as the raw row
    board.ranking = rank_rows(board)
    assert len(board.ranking.rows) == 5
    rows = list(csv.DictReader(io.StringIO(to_csv(board))))
    assert [r["rank"] for r in rows] == ["1", "1", "2", "2", "3", "3", "4", "4", "5", "5"]


def test_rich_table_fits_80_columns_and_keeps_names_and_the_key_metric_whole():
    board = _board()
    console = Console(width=80, record=True, color_system=None)
    console.print(rich_table(board, console.width))
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    body = [line for line in lines if "│" in line]
    for name in NAMES:
        assert any(f" {name} " in line for line in body), name
    for row in board.rows:
        assert any(f"{row.mean_fg_dice:.4f}" in line and f" {row.candidate} " in line for line in body)
    assert "more column(s) in leaderboard.md" in text  # what was dropped is said
    assert "fg Dice" in text


def test_a_wide_console_shows_every_column():
    board = _board(nsd=False, hd95=False)
    console = Console(width=250, record=True, color_system=None)
    console.print(rich_table(board, console.width))
    text = console.export_text()
    assert "more column(s)" not in text and "portal_vein…" in text and "fold std" in text


def test_fit_columns_never_drops_priority_zero():
    columns = [("candidate", ["x" * 100], 0), ("fg Dice", ["0.9000"], 0), ("extra", ["1"], 3)]
    keep, dropped = fit_columns(columns, 80)
    assert keep == [0, 1] and dropped == ["extra"]
