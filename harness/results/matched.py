"""Methods compared at matched compute: every candidate's cross-validation Dice beside what it cost.

nnU-Net Revisited's lesson: a method is compared against the baseline at matching compute, so
its Dice is reported next to its training time and GPU memory. Per candidate of a leaderboard
(one point per candidate: its row without postprocessing, the network as trained): the
cross-validation mean foreground Dice, the training time (sum over its members' folds), the
peak memory (the largest of its jobs; GPU tensor memory on a GPU, resident memory on a CPU) and
the inference time, all from :mod:`harness.results.costs`.

A candidate is **Pareto-optimal** when no other candidate is at least as good on all three of
Dice (higher), training time and peak memory (lower) and strictly better on one: the candidates
worth their cost. Candidates without cost files are listed and never Pareto-optimal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.results.leaderboard import NA, Leaderboard


@dataclass
class CostPoint:
    candidate: str
    planners: str
    """the planner presets of its members (``default``, ``resenc-m``, ...), joined with ``+``."""
    dice: float | None
    train_seconds: float | None
    peak_memory_mb: float | None
    memory: str
    inference_seconds: float | None
    pareto: bool = False

    @property
    def has_cost(self) -> bool:
        return self.dice is not None and self.train_seconds is not None and self.peak_memory_mb is not None


def planners_of(members: Sequence[str]) -> str:
    names = [m.split("@", 1)[1] if "@" in m else "default" for m in members]
    return "+".join(dict.fromkeys(names)) or "default"


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` (Dice, seconds, MiB) is at least as good as ``b`` everywhere and better somewhere."""
    at_least = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
    return at_least and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])


def pareto_optimal(points: Sequence[Sequence[float]]) -> list[bool]:
    """Which (Dice, training seconds, peak MiB) points no other point dominates."""
    return [not any(dominates(q, p) for j, q in enumerate(points) if j != i) for i, p in enumerate(points)]


def cost_points(board: Leaderboard) -> list[CostPoint]:
    """One point per candidate (its raw row), best Dice first; Pareto-optimal ones marked."""
    seen: dict[str, CostPoint] = {}
    for row in board.rows:
        if row.candidate in seen or row.postprocessed:
            continue
        seen[row.candidate] = CostPoint(row.candidate, planners_of(row.members), row.mean_fg_dice, row.train_seconds,
                                        row.peak_memory_mb, row.memory or NA, row.inference_seconds)
    points = list(seen.values())
    measured = [p for p in points if p.has_cost]
    for p, optimal in zip(measured, pareto_optimal([(p.dice, p.train_seconds, p.peak_memory_mb) for p in measured])):
        p.pareto = optimal
    return sorted(points, key=lambda p: -(p.dice if p.dice is not None else -1.0))


MATCHED_NOTE = ("CV mean fg Dice: the candidate without postprocessing. Training time: the sum over its members' "
                "folds; peak memory: the largest of its jobs (cuda: GPU tensor memory, rss: resident memory of a CPU "
                "job); inference: predicting its validation cases. Pareto-optimal: no other candidate has at least "
                "its Dice with at most its training time and peak memory, and is better in one of them.")


def matched_rows(points: list[CostPoint]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows (shared by leaderboard.md and the HTML report)."""
    header = ["candidate", "planner", "CV mean fg Dice", "train (s)", "peak memory (MiB)", "inference (s)",
              "Pareto-optimal"]
    rows = [[p.candidate, p.planners, NA if p.dice is None else f"{p.dice:.4f}",
             NA if p.train_seconds is None else f"{p.train_seconds:.1f}",
             NA if p.peak_memory_mb is None else f"{p.peak_memory_mb:.0f} ({p.memory})",
             NA if p.inference_seconds is None else f"{p.inference_seconds:.1f}",
             "yes" if p.pareto else ("" if p.has_cost else NA)] for p in points]
    return header, rows
