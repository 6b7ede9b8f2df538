"""Seconds for one task's ranking (harness.results.ranking.rank_task) at challenge sizes (not run by the tests).

Candidates x cases x classes of synthetic per-case Dice (each candidate a constant offset plus
noise, a few undefined values), the full analysis: both rankings, 1,000 bootstrap resamples and
the Holm-corrected pairwise Wilcoxon tests (exact up to 50 cases).

    python bench/bench_ranking.py
"""

from __future__ import annotations

import time

import numpy as np

from harness.results.ranking import CandidateScores, rank_task

SIZES = ((5, 20, 2), (10, 50, 3), (10, 200, 3), (20, 500, 13))


def candidates(n: int, cases: int, classes: int, rng: np.random.Generator) -> list[CandidateScores]:
    out = []
    for i in range(n):
        dice = {}
        for c in range(cases):
            values = np.clip(0.85 - 0.01 * i + rng.normal(0, 0.05, classes), 0, 1)
            values[rng.uniform(size=classes) < 0.02] = np.nan
            dice[f"case_{c:04d}"] = {str(k + 1): float(v) for k, v in enumerate(values)}
        out.append(CandidateScores(f"cand_{i:02d}", dice))
    return out


def main() -> None:
    rng = np.random.default_rng(0)
    print("candidates  cases  classes  seconds")
    for n, cases, classes in SIZES:
        data = candidates(n, cases, classes, rng)
        start = time.perf_counter()
        rank_task("bench", data)
        print(f"{n:10d}  {cases:5d}  {classes:7d}  {time.perf_counter() - start:7.2f}")


if __name__ == "__main__":
    main()
