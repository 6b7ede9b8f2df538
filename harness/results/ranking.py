"""Ranking with rigor, as challenge organisers rank: which differences between candidates are real?

Input: per-case, per-class Dice of any set of candidates on the same cases (selfunet's own
cross-validation candidates, or submissions scored on a held-out test set). Per task:

* **aggregate-then-rank** (``rank``): the leaderboard's mean foreground Dice (per-class mean over
  cases, undefined values left out, then the mean over classes), ranked, best = 1;
* **rank-then-aggregate** (``case_rank``): in every case, the candidates ranked by that case's
  mean foreground Dice (ties share the mean rank), then the mean rank over cases, ranked;
* **bootstrap rank stability**: the cases resampled with replacement (:data:`RESAMPLES` times,
  seeded), the aggregate-then-rank ranking redone on each resample; a candidate's 95 % interval
  is the 2.5th to 97.5th percentile of its ranks, ``p_first`` the share of resamples it wins;
* **significance**: every ordered pair (A, B), a one-sided Wilcoxon signed-rank test "A's per-case
  Dice is higher than B's" (``scipy.stats.wilcoxon``), p-values Holm-corrected over all pairs;
  ``better_than`` lists the candidates A beats at ``alpha``.

Per-case comparisons need one value per candidate and case. A case a candidate has no score for
counts as Dice 0 (as a missing prediction does in a challenge). A class empty in both reference
and prediction has no Dice (the empty-mask rule); where another candidate has a Dice for it, the
empty one was right and counts as 1; where no candidate has one, the class is left out of that
case. Over tasks, the **consensus** is the mean of a candidate's per-task ranks (aggregate-then-
rank), over the candidates present in every task.
"""

from __future__ import annotations

import contextlib
import csv
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from selfunet.errors import SelfUNetError

RESAMPLES = 1000
SEED = 0
ALPHA = 0.05
#: the rule for per-case comparisons, stated under every ranking table.
CASE_RULE = ("Per-case comparisons: a missing case counts as Dice 0; a class empty in reference and prediction "
             "counts as Dice 1 where another candidate has it non-empty, and is left out where every candidate "
             "has it empty.")


@dataclass(frozen=True)
class CandidateScores:
    """One candidate's Dice per case and foreground class (label value as a string; NaN = undefined)."""

    name: str
    dice: Mapping[str, Mapping[str, float]]


@dataclass
class RankRow:
    name: str
    mean_fg_dice: float
    rank: int
    """aggregate-then-rank (1 = best)."""
    mean_case_rank: float
    case_rank: int
    """rank-then-aggregate."""
    rank_low: int
    rank_high: int
    """95 % bootstrap interval of ``rank``."""
    p_first: float
    """share of bootstrap resamples in which this candidate ranks first."""
    better_than: list[str] = field(default_factory=list)


@dataclass
class TaskRanking:
    task: str
    rows: list[RankRow]
    """best first (aggregate-then-rank)."""
    cases: list[str]
    labels: list[str]
    p_values: dict[tuple[str, str], float]
    """(A, B) -> Holm-adjusted p of "A better than B"."""
    bootstrap_ranks: np.ndarray
    """resamples x candidates (in ``rows`` order): the rank in each resample."""
    resamples: int = RESAMPLES
    seed: int = SEED
    alpha: float = ALPHA
    missing: dict[str, int] = field(default_factory=dict)
    """candidate -> cases it had no score for (counted as 0)."""

    def row(self, name: str) -> RankRow:
        return next(r for r in self.rows if r.name == name)


# -- the statistics -------------------------------------------------------------------------------
def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest p times (m - k + 1), made monotone, capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


def wilcoxon_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Wilcoxon signed-rank p-value of "a > b" on paired values (1 when they never differ).

    Zero differences are dropped (Wilcoxon's rule). Up to :data:`EXACT_MAX` remaining differences
    the p-value is exact, ties included (the null distribution of the positive rank sum over the
    tied mid-ranks, :func:`_exact_upper_tail`); the normal approximation is anti-conservative for
    few, tied cases, which scipy uses there. Above that, scipy's normal approximation with tie
    correction.
    """
    diff = np.asarray(a, float) - np.asarray(b, float)
    nonzero = diff[diff != 0]
    if not nonzero.size:
        return 1.0
    if nonzero.size <= EXACT_MAX:
        doubled = np.rint(2 * stats.rankdata(np.abs(nonzero))).astype(int)  # mid-ranks are multiples of 1/2
        return _exact_upper_tail(doubled, int(doubled[nonzero > 0].sum()))
    return float(stats.wilcoxon(nonzero, alternative="greater", method="approx").pvalue)


EXACT_MAX = 50


def _exact_upper_tail(weights: np.ndarray, observed: int) -> float:
    """P(sum of a random subset of ``weights`` >= observed), each weight in with probability 1/2."""
    counts = np.zeros(int(weights.sum()) + 1)
    counts[0] = 1.0
    for w in weights:
        counts[w:] = counts[w:] + counts[:-w].copy()  # w >= 2: doubled ranks start at 2
    return float(counts[observed:].sum() / counts.sum())


def _aggregate(dice: np.ndarray) -> np.ndarray:
    """(..., candidates, cases, classes) -> (..., candidates): per-class nanmean over cases, then over classes."""
    with _quiet():
        per_class = np.nanmean(dice, axis=-2)
        return np.nanmean(per_class, axis=-1)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's "mean of empty slice": an all-NaN class is expected and handled."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _ranks(values: np.ndarray, method: str = "min") -> np.ndarray:
    """Rank along the last axis, highest value = 1; NaN ranks last."""
    filled = np.where(np.isnan(values), -np.inf, values)
    return stats.rankdata(-filled, axis=-1, method=method)


def _matrix(candidates: Sequence[CandidateScores]) -> tuple[np.ndarray, list[str], list[str], dict[str, int]]:
    cases = sorted({c for cand in candidates for c in cand.dice})
    labels = sorted({lab for cand in candidates for case in cand.dice.values() for lab in case}, key=_label_key)
    dice = np.full((len(candidates), len(cases), len(labels)), np.nan)
    missing: dict[str, int] = {}
    for i, cand in enumerate(candidates):
        for j, case in enumerate(cases):
            if case not in cand.dice:
                dice[i, j, :] = 0.0
                missing[cand.name] = missing.get(cand.name, 0) + 1
                continue
            for k, lab in enumerate(labels):
                value = cand.dice[case].get(lab)
                dice[i, j, k] = math.nan if value is None else float(value)
    return dice, cases, labels, missing


def _label_key(label: str) -> tuple[int, str]:
    return (int(label), "") if label.lstrip("-").isdigit() else (1 << 30, label)


def per_case_scores(dice: np.ndarray) -> np.ndarray:
    """(candidates, cases, classes) -> (candidates, cases) under :data:`CASE_RULE`; a case no class
    of which is defined for any candidate is NaN for all (and left out)."""
    defined_somewhere = ~np.all(np.isnan(dice), axis=0, keepdims=True)
    filled = np.where(np.isnan(dice) & defined_somewhere, 1.0, dice)
    with _quiet():
        return np.nanmean(filled, axis=-1)


def rank_task(task: str, candidates: Sequence[CandidateScores], resamples: int = RESAMPLES, seed: int = SEED,
              alpha: float = ALPHA) -> TaskRanking:
    """Both rankings, bootstrap intervals and Holm-corrected pairwise Wilcoxon tests (see module doc)."""
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise SelfUNetError(f"task '{task}': candidate names must be unique for ranking, got {names}.")
    if not candidates:
        raise SelfUNetError(f"task '{task}': no candidates to rank.")
    dice, cases, labels, missing = _matrix(candidates)
    if not cases:
        raise SelfUNetError(f"task '{task}': the candidates have no per-case scores to rank.")
    means = _aggregate(dice)
    rank = _ranks(means).astype(int)

    scores = per_case_scores(dice)
    usable = ~np.any(np.isnan(scores), axis=0)
    case_ranks = _ranks(scores[:, usable].T, method="average")  # cases x candidates
    mean_case_rank = case_ranks.mean(axis=0) if usable.any() else np.full(len(names), np.nan)
    case_rank = _ranks(-mean_case_rank).astype(int)

    rng = np.random.default_rng(seed)
    boot = np.empty((resamples, len(names)), dtype=int)
    chunk = max(1, 2_000_000 // max(1, dice.size))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, len(cases), size=(stop - start, len(cases)))
        sampled = np.moveaxis(dice[:, idx, :], 1, 0)  # resamples x candidates x cases x classes
        boot[start:stop] = _ranks(_aggregate(sampled)).astype(int)

    pairs = [(a, b) for a in range(len(names)) for b in range(len(names)) if a != b]
    raw = [wilcoxon_greater(scores[a, usable], scores[b, usable]) for a, b in pairs]
    adjusted = holm(raw) if raw else []
    p_values = {(names[a], names[b]): p for (a, b), p in zip(pairs, adjusted)}

    rows = []
    for i, name in enumerate(names):
        low, high = np.percentile(boot[:, i], [2.5, 97.5], method="nearest") if resamples else (rank[i], rank[i])
        rows.append(RankRow(
            name=name, mean_fg_dice=float(means[i]), rank=int(rank[i]), mean_case_rank=float(mean_case_rank[i]),
            case_rank=int(case_rank[i]), rank_low=int(low), rank_high=int(high),
            p_first=float(np.mean(boot[:, i] == 1)) if resamples else math.nan,
            better_than=[names[j] for j in range(len(names)) if j != i and p_values[(name, names[j])] < alpha]))
    order = sorted(range(len(names)), key=lambda i: (rows[i].rank, rows[i].case_rank, i))
    return TaskRanking(task=task, rows=[rows[i] for i in order], cases=[c for c, u in zip(cases, usable) if u],
                       labels=labels, p_values=p_values, bootstrap_ranks=boot[:, order], resamples=resamples,
                       seed=seed, alpha=alpha, missing=missing)


# -- over tasks -----------------------------------------------------------------------------------
@dataclass
class ConsensusRow:
    name: str
    mean_rank: float
    ranks: dict[str, int]
    """task -> aggregate-then-rank rank."""
    rank: int | None
    """None for a candidate not ranked in every task."""


def consensus(ranks: Mapping[str, Mapping[str, int]]) -> list[ConsensusRow]:
    """``task -> candidate -> rank`` to the mean rank over tasks; candidates missing from a task are
    listed after the ranked ones, unranked."""
    tasks = sorted(ranks)
    names: dict[str, dict[str, int]] = {}
    for task in tasks:
        for name, rank in ranks[task].items():
            names.setdefault(name, {})[task] = int(rank)
    complete = {n: r for n, r in names.items() if len(r) == len(tasks)}
    mean = {n: float(np.mean(list(r.values()))) for n, r in names.items()}
    ordered = sorted(complete, key=lambda n: (mean[n], n))
    values = np.array([mean[n] for n in ordered])
    ranked = stats.rankdata(values, method="min").astype(int) if len(values) else []
    out = [ConsensusRow(n, mean[n], complete[n], int(r)) for n, r in zip(ordered, ranked)]
    out += [ConsensusRow(n, mean[n], names[n], None) for n in sorted(set(names) - set(complete))]
    return out


# -- per-case score files of submissions (harness score) ------------------------------------------
SCORE_COLUMNS = ("case", "class", "dice")


def read_case_scores(path: Path) -> CandidateScores | None:
    """``<submission>.csv`` (one row per case and class: case, class, dice, ...) as CandidateScores
    named after the file; None for a CSV without those columns (e.g. a leaderboard beside them)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not set(SCORE_COLUMNS) <= set(reader.fieldnames or ()):
            return None
        dice: dict[str, dict[str, float]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row["dice"]) if row["dice"] not in ("", "n/a") else math.nan
            except ValueError as exc:
                raise SelfUNetError(f"{path}, line {line}: dice '{row['dice']}' is not a number (use nan for "
                                    "undefined).") from exc
            dice.setdefault(row["case"], {})[row["class"]] = value
    return CandidateScores(path.stem, dice)


def rank_scores(task: str, folder: Path, resamples: int = RESAMPLES, seed: int = SEED) -> TaskRanking | None:
    """The ranking of every per-case score file in ``folder`` (``results/<task>/scores/``); None when
    fewer than two candidates are there."""
    folder = Path(folder)
    found = [c for c in (read_case_scores(p) for p in sorted(folder.glob("*.csv"))) if c is not None] \
        if folder.is_dir() else []
    return rank_task(task, found, resamples=resamples, seed=seed) if len(found) >= 2 else None
