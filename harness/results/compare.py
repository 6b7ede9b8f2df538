"""``harness compare RESULTS --baseline BASELINE``: the CI regression check on leaderboards.

For every task of the baseline (``BASELINE/<task>/leaderboard.csv``) the selected row of
``RESULTS/<task>/leaderboard.csv`` is compared with the baseline's selected row: the mean
foreground Dice and every class's Dice (``dice_<class>`` columns). A value more than ``max_drop``
below the baseline is a failure, and so is a value that became n/a or a task missing from
RESULTS; a value more than ``max_drop`` above is reported as improved; a task only in RESULTS is
reported as new. Which model was selected may change (that is reported, not judged): the check is
about the quality of what would be deployed.

Numbers are comparable only from like environments: when a task's environment fingerprint
(``environment.json``, :mod:`harness.results.environment`) differs from the baseline's in a way
that changes numbers (the precision the trainings ran in, the GPU model, GPU against CPU), the
comparison says so as a warning (``Comparison.warnings``), not a failure; a baseline written
before fingerprints existed is compared as before, with a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from harness.results.leaderboard import NA
from harness.results.publish import read_selected, task_dirs
from selfunet.errors import SelfUNetError

DEFAULT_MAX_DROP = 0.02
#: float noise that is never a change (the CSV keeps six decimals).
EPSILON = 1e-9


@dataclass(frozen=True)
class Change:
    task: str
    metric: str
    baseline: float | None
    current: float | None
    status: str
    """ok | dropped | improved | missing | new | n/a"""
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("dropped", "missing")

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.current is None else self.current - self.baseline


@dataclass(frozen=True)
class Comparison:
    changes: list[Change]
    max_drop: float
    warnings: list[str] = field(default_factory=list)
    """environment differences that change numbers (harness.results.environment.differences)."""

    @property
    def failures(self) -> list[Change]:
        return [c for c in self.changes if c.failed]

    @property
    def ok(self) -> bool:
        return not self.failures


def _value(text: str | None) -> float | None:
    if text is None or text == NA or text == "":
        return None
    value = float(text)
    return None if math.isnan(value) else value


def compared_metrics(row: dict[str, str]) -> list[str]:
    return ["mean_fg_dice", *(k for k in row if k.startswith("dice_"))]


def _tasks(root: Path) -> dict[str, Path]:
    """Task folders of a results tree; RESULTS may also be a single task folder holding leaderboard.csv."""
    root = Path(root)
    if (root / "leaderboard.csv").is_file():
        return {root.name: root}
    return {d.name: d for d in task_dirs(root) if (d / "leaderboard.csv").is_file()}


def compare(results: Path, baseline: Path, max_drop: float = DEFAULT_MAX_DROP) -> Comparison:
    """Every baseline task's selected scores against RESULTS' (see module doc)."""
    if max_drop < 0:
        raise SelfUNetError(f"--max-drop {max_drop}: must be >= 0 (a Dice difference, e.g. 0.02).")
    base_tasks, new_tasks = _tasks(baseline), _tasks(results)
    if not base_tasks:
        raise SelfUNetError(f"{baseline}: no baseline leaderboards (expected BASELINE/<task>/leaderboard.csv); "
                            "pass the folder that holds them, e.g. results/baselines.")
    from harness.results import environment

    changes: list[Change] = []
    warnings: list[str] = []
    for task, folder in sorted(base_tasks.items()):
        if task in new_tasks:
            warnings += [f"{task}: {d}" for d in environment.differences(environment.read(folder),
                                                                        environment.read(new_tasks[task]))]
        base = read_selected(folder / "leaderboard.csv")
        if base is None:
            raise SelfUNetError(f"{folder / 'leaderboard.csv'}: no row marked selected; regenerate the baseline.")
        current = read_selected(new_tasks[task] / "leaderboard.csv") if task in new_tasks else None
        if current is None:
            where = new_tasks[task] / "leaderboard.csv" if task in new_tasks else Path(results) / task
            changes.append(Change(task, "(task)", _value(base["mean_fg_dice"]), None, "missing",
                                  f"no selected model in {where}"))
            continue
        note = ""
        if (current["candidate"], current["postprocessing"]) != (base["candidate"], base["postprocessing"]):
            note = (f"selected {current['candidate']} ({current['postprocessing']}), baseline "
                    f"{base['candidate']} ({base['postprocessing']})")
        for metric in compared_metrics(base):
            b, c = _value(base.get(metric)), _value(current.get(metric))
            if b is None:
                status = "n/a" if c is None else "new"
            elif c is None:
                status = "missing"
            elif c < b - max_drop - EPSILON:
                status = "dropped"
            elif c > b + max_drop + EPSILON:
                status = "improved"
            else:
                status = "ok"
            changes.append(Change(task, metric, b, c, status, note if metric == "mean_fg_dice" else ""))
        for metric in compared_metrics(current):
            if metric not in base:
                changes.append(Change(task, metric, None, _value(current[metric]), "new", "class not in baseline"))
    for task in sorted(set(new_tasks) - set(base_tasks)):
        row = read_selected(new_tasks[task] / "leaderboard.csv")
        changes.append(Change(task, "mean_fg_dice", None, _value(row["mean_fg_dice"]) if row else None, "new",
                              "task not in the baseline"))
    return Comparison(changes, max_drop, warnings)


STYLE = {"ok": "green", "dropped": "bold red", "missing": "bold red", "improved": "cyan", "new": "yellow",
         "n/a": "dim"}


def _num(value: float | None, signed: bool = False) -> str:
    return NA if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")


def comparison_table(comparison: Comparison) -> Table:
    failed = len(comparison.failures)
    caption = f"{failed} failure(s)" if failed else "no drop beyond the tolerance"
    if comparison.warnings:
        caption += "; environment differs from the baseline's: " + "; ".join(comparison.warnings)
    table = Table(title=f"compare (tolerance: a drop of more than {comparison.max_drop:g} fails)", caption=caption)
    for column in ("task", "metric", "baseline", "current", "change", "status", "note"):
        table.add_column(column, justify="right" if column in ("baseline", "current", "change") else "left")
    for c in comparison.changes:
        table.add_row(c.task, c.metric, _num(c.baseline), _num(c.current), _num(c.delta, signed=True),
                      f"[{STYLE[c.status]}]{c.status}[/]", c.note)
    return table
