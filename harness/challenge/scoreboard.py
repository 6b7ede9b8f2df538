"""A task's held-out scores on disk: one ``<submission>.csv`` of per-case, per-class Dice with
each case's status, and the board over submissions (``leaderboard.csv`` / ``.md``) made from
those files alone, so a rerun of one submission re-ranks every one without scoring them again.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from selfunet.artifacts import atomic_write_text
from selfunet.errors import SelfUNetError

if TYPE_CHECKING:
    from harness.tasks.descriptor import TaskDescriptor

CSV_COLUMNS = ("case", "class", "dice", "status", "reason", "seconds")
#: the status of a case that was scored normally; every other status counts as Dice 0.
OK = "ok"
#: the name selfunet's own selected model has on the board.
SELFUNET = "selfunet"


def _num(value: float, digits: int) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def scores_csv(results: list, labels: dict[int, str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        for label, name in labels.items():
            writer.writerow([r.case_id, name, _num(r.dice.get(label, math.nan), 6), r.status, r.reason,
                             f"{r.seconds:.2f}"])
    return buffer.getvalue()


def read_scores(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and tuple(rows[0]) != CSV_COLUMNS:
        raise SelfUNetError(f"{path}: columns {tuple(rows[0])}, expected {CSV_COLUMNS}.")
    return rows


def board_rows(scores: Path) -> list[dict[str, str]]:
    """One row per ``<submission>.csv`` in ``scores``: mean Dice per class and over classes."""
    rows = []
    for path in sorted(scores.glob("*.csv")):
        if path.name == "leaderboard.csv":
            continue
        table = read_scores(path)
        classes = list(dict.fromkeys(r["class"] for r in table))
        cases = list(dict.fromkeys(r["case"] for r in table))
        failed = {r["case"] for r in table if r["status"] != OK}
        means = {}
        for name in classes:
            values = [float(r["dice"]) for r in table if r["class"] == name]
            finite = [v for v in values if not math.isnan(v)]
            means[name] = sum(finite) / len(finite) if finite else math.nan
        finite_means = [v for v in means.values() if not math.isnan(v)]
        seconds = [float(r["seconds"]) for r in {r["case"]: r for r in table}.values()]
        row = {"submission": path.stem, "cases": str(len(cases)), "failed": str(len(failed)),
               "mean_fg_dice": _num(sum(finite_means) / len(finite_means) if finite_means else math.nan, 4)}
        row |= {f"dice_{name}": _num(means[name], 4) for name in classes}
        row["seconds_per_case"] = _num(sum(seconds) / len(seconds) if seconds else math.nan, 1)
        rows.append(row)
    return sorted(rows, key=lambda r: -float(r["mean_fg_dice"]) if r["mean_fg_dice"] != "nan" else math.inf)


def write_board(task: TaskDescriptor, scores: Path) -> list[dict[str, str]]:
    rows = board_rows(scores)
    if not rows:
        return rows
    columns = list(dict.fromkeys(c for r in rows for c in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", restval="n/a")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(scores / "leaderboard.csv", buffer.getvalue())
    lines = [f"# {task.name}: held-out test set", "",
             f"Per-case scores: `<submission>.csv` beside this file. A failed case (timeout, crash, missing or "
             f"wrong-geometry output) counts as Dice 0 for every class. `{SELFUNET}` is selfunet's own selected model.",
             "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r.get(c, "n/a") for c in columns) + " |" for r in rows]
    atomic_write_text(scores / "leaderboard.md", "\n".join(lines) + "\n")
    return rows
