"""``harness compare``: drops beyond the tolerance fail, improvements and new tasks are only reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.results.compare import compare
from harness.results.leaderboard import Leaderboard, Row
from harness.results.tables import to_csv
from selfunet.artifacts import atomic_write_text
from selfunet.errors import SelfUNetError

LABELS = {"1": "organ", "2": "lesion"}


def write_board(root: Path, task: str, organ: float | None, lesion: float | None, selected: str = "3d_fullres",
                other: float = 0.5) -> Path:
    """A leaderboard.csv whose selected (postprocessed) row has these class Dice values."""
    values = [v for v in (organ, lesion) if v is not None]
    mean = sum(values) / len(values) if values else None
    rows = [
        Row(selected, selected.split("+"), "none", False, other, {"1": other, "2": other}),
        Row(selected, selected.split("+"), "largest foreground component", True, mean, {"1": organ, "2": lesion}),
        Row("2d", ["2d"], "none", False, other, {"1": other, "2": other}),
    ]
    board = Leaderboard(task=task, labels=LABELS, rows=rows, selected=selected)
    atomic_write_text(root / task / "leaderboard.csv", to_csv(board))
    return root / task / "leaderboard.csv"


def _status(comparison, task: str, metric: str) -> str:
    return next(c.status for c in comparison.changes if c.task == task and c.metric == metric)


def test_within_tolerance_passes_and_a_larger_gain_is_reported(tmp_path: Path):
    write_board(tmp_path / "base", "demo", 0.90, 0.70)
    write_board(tmp_path / "new", "demo", 0.885, 0.80)  # organ -0.015, lesion +0.10
    result = compare(tmp_path / "new", tmp_path / "base", max_drop=0.02)
    assert result.ok
    assert _status(result, "demo", "dice_organ") == "ok"
    assert _status(result, "demo", "dice_lesion") == "improved"
    assert _status(result, "demo", "mean_fg_dice") == "improved"  # (0.885 + 0.80) / 2 vs 0.80


def test_a_class_drop_beyond_the_tolerance_fails_even_if_the_mean_holds(tmp_path: Path):
    write_board(tmp_path / "base", "demo", 0.90, 0.70)
    write_board(tmp_path / "new", "demo", 0.95, 0.64)  # mean 0.795 vs 0.80 is within 0.02; lesion drops 0.06
    result = compare(tmp_path / "new", tmp_path / "base", max_drop=0.02)
    assert not result.ok
    assert [(c.metric, c.status) for c in result.failures] == [("dice_lesion", "dropped")]
    assert result.failures[0].delta == pytest.approx(-0.06, abs=1e-6)
    assert compare(tmp_path / "new", tmp_path / "base", max_drop=0.07).ok


def test_a_missing_task_or_a_class_gone_undefined_fails_and_a_new_task_is_reported(tmp_path: Path):
    write_board(tmp_path / "base", "demo", 0.90, 0.70)
    write_board(tmp_path / "base", "heart", 0.90, 0.70)
    write_board(tmp_path / "new", "demo", 0.90, None)
    write_board(tmp_path / "new", "spleen", 0.95, 0.95)
    result = compare(tmp_path / "new", tmp_path / "base")
    assert {(c.task, c.metric, c.status) for c in result.failures} == {
        ("demo", "dice_lesion", "missing"), ("heart", "(task)", "missing")}
    assert _status(result, "spleen", "mean_fg_dice") == "new"


def test_a_changed_selection_is_noted_not_judged(tmp_path: Path):
    write_board(tmp_path / "base", "demo", 0.90, 0.70)
    write_board(tmp_path / "new", "demo", 0.90, 0.70, selected="2d+3d_fullres")
    result = compare(tmp_path / "new", tmp_path / "base")
    assert result.ok
    note = next(c.note for c in result.changes if c.metric == "mean_fg_dice")
    assert "selected 2d+3d_fullres" in note and "baseline 3d_fullres" in note


def test_an_empty_baseline_is_an_error(tmp_path: Path):
    (tmp_path / "base").mkdir()
    with pytest.raises(SelfUNetError, match="no baseline leaderboards"):
        compare(tmp_path / "new", tmp_path / "base")


def test_compare_command_exit_codes_and_table(tmp_path: Path):
    write_board(tmp_path / "base", "demo", 0.90, 0.70)
    write_board(tmp_path / "good", "demo", 0.90, 0.69)
    write_board(tmp_path / "bad", "demo", 0.80, 0.70)
    ok = CliRunner().invoke(app, ["compare", str(tmp_path / "good"), "--baseline", str(tmp_path / "base")],
                            terminal_width=200)
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, ["compare", str(tmp_path / "bad"), "--baseline", str(tmp_path / "base"),
                                   "--max-drop", "0.05"], terminal_width=200)
    assert bad.exit_code == 1
    assert "demo dice_organ: dropped" in bad.output
    # a single task folder works as RESULTS too
    one = CliRunner().invoke(app, ["compare", str(tmp_path / "good" / "demo"), "--baseline", str(tmp_path / "base")])
    assert one.exit_code == 0, one.output
