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
  ``better_than`` lists the candidates A beats at ``alpha``;
* **ranking robustness** (``schemes``, as challengeR draws it): the ranks under aggregate-then-rank
  with the mean (``rank``) and with the median of the per-case scores, rank-then-aggregate
  (``case_rank``) and test-then-rank (the number of candidates beaten significantly, most = 1);
  :func:`kendall_taus` compares every two schemes (Kendall's tau-b, 1 = the same order).

Per-case comparisons need one value per candidate and case. A case a candidate has no score for,
or a failed one (a score file's ``status`` other than ``ok``), counts as the descriptor's
``scoring.missing`` says (:class:`MissingPolicy`): ``worst`` (Dice 0, as a missing prediction in a
challenge; the default), ``value`` (``scoring.missing_value``) or ``exclude`` (the case is left out
for every candidate, so every comparison stays paired). A class empty in both reference and
prediction has no Dice (the empty-mask rule); where another candidate has a Dice for it, the
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
#: the Dice of the worst case (``scoring.missing: worst``).
WORST_DICE = 0.0
#: the ranking schemes of the robustness check, in the order they are shown.
SCHEMES = {"mean": "aggregate-then-rank (mean)", "median": "aggregate-then-rank (median)",
           "rank-then-aggregate": "rank-then-aggregate (mean case rank)",
           "test-then-rank": "test-then-rank (significant wins)"}


@dataclass(frozen=True)
class MissingPolicy:
    """How a missing or failed case of a candidate counts (descriptor ``scoring.missing``)."""

    rule: str = "worst"
    """worst | value | exclude"""
    value: float | None = None
    """the Dice a missing case gets under ``value``."""

    def __post_init__(self) -> None:
        if self.rule not in ("worst", "value", "exclude"):
            raise SelfUNetError(f"scoring.missing '{self.rule}': choose worst, value or exclude.")
        if self.rule == "value" and (self.value is None or not 0.0 <= self.value <= 1.0):
            raise SelfUNetError("scoring.missing 'value' needs scoring.missing_value between 0 and 1.")

    @property
    def fill(self) -> float:
        return WORST_DICE if self.rule == "worst" else float(self.value if self.value is not None else math.nan)

    def describe(self) -> str:
        if self.rule == "worst":
            return "a missing or failed case counts as the worst case (Dice 0)"
        if self.rule == "value":
            return f"a missing or failed case counts as Dice {self.fill:g}"
        return "a case missing or failed for any candidate is left out for all (complete cases only)"


def case_rule(policy: MissingPolicy | None = None) -> str:
    """The rule for per-case comparisons, stated under every ranking table."""
    policy = policy or MissingPolicy()
    return (f"Per-case comparisons (scoring.missing: {policy.rule}): {policy.describe()}; a class empty in "
            "reference and prediction counts as Dice 1 where another candidate has it non-empty, and is left out "
            "where every candidate has it empty.")


CASE_RULE = case_rule()


@dataclass(frozen=True)
class CandidateScores:
    """One candidate's Dice per case and foreground class (label value as a string; NaN = undefined)."""

    name: str
    dice: Mapping[str, Mapping[str, float]]
    failed: frozenset[str] = frozenset()
    """cases whose run failed (their Dice, if any, is not the candidate's: ``scoring.missing`` decides)."""


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
    """candidate -> cases it had no score for, or a failed one (counted as ``policy`` says)."""
    policy: MissingPolicy = field(default_factory=MissingPolicy)
    case_scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    """candidates (``rows`` order) x ``cases``: the per-case mean foreground Dice compared."""
    schemes: dict[str, dict[str, int]] = field(default_factory=dict)
    """scheme (:data:`SCHEMES`) -> candidate -> rank."""
    excluded: list[str] = field(default_factory=list)
    """cases left out under ``scoring.missing: exclude``."""

    def row(self, name: str) -> RankRow:
        return next(r for r in self.rows if r.name == name)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rows]

    def significance(self) -> np.ndarray:
        """candidates x candidates (``rows`` order): True where the row is significantly better than
        the column (Holm-adjusted one-sided Wilcoxon p < alpha)."""
        names = self.names
        return np.array([[a != b and self.p_values[(a, b)] < self.alpha for b in names] for a in names], dtype=bool)

    def rank_frequencies(self) -> np.ndarray:
        """candidates x ranks 1..n: the share of bootstrap resamples giving each candidate each rank."""
        n = len(self.rows)
        out = np.zeros((n, n))
        if self.bootstrap_ranks.size:
            for i in range(n):
                out[i] = np.bincount(self.bootstrap_ranks[:, i] - 1, minlength=n)[:n] / self.bootstrap_ranks.shape[0]
        return out

    def case_places(self) -> np.ndarray:
        """cases x candidates: each candidate's place among the candidates in each case (1 = best;
        ties share the best place)."""
        if not self.case_scores.size:
            return np.zeros((0, len(self.rows)), dtype=int)
        return _ranks(self.case_scores.T).astype(int)

    def podium_counts(self) -> np.ndarray:
        """candidates x places 1..n: in how many cases each candidate took each place."""
        places, n = self.case_places(), len(self.rows)
        return np.array([np.bincount(places[:, i] - 1, minlength=n)[:n] for i in range(n)]) if n else np.zeros((0, 0))


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


def _matrix(candidates: Sequence[CandidateScores], policy: MissingPolicy | None = None
            ) -> tuple[np.ndarray, list[str], list[str], dict[str, int], np.ndarray]:
    """Dice (candidates x cases x classes) with missing cases filled as ``policy`` says, the cases,
    the classes, the missing count per candidate and which cases a candidate misses."""
    policy = policy or MissingPolicy()
    cases = sorted({c for cand in candidates for c in cand.dice} | {c for cand in candidates for c in cand.failed})
    labels = sorted({lab for cand in candidates for case in cand.dice.values() for lab in case}, key=_label_key)
    dice = np.full((len(candidates), len(cases), len(labels)), np.nan)
    absent = np.zeros((len(candidates), len(cases)), dtype=bool)
    missing: dict[str, int] = {}
    for i, cand in enumerate(candidates):
        for j, case in enumerate(cases):
            if case not in cand.dice or case in cand.failed:
                dice[i, j, :] = policy.fill
                absent[i, j] = True
                missing[cand.name] = missing.get(cand.name, 0) + 1
                continue
            for k, lab in enumerate(labels):
                value = cand.dice[case].get(lab)
                dice[i, j, k] = math.nan if value is None else float(value)
    return dice, cases, labels, missing, absent


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
              alpha: float = ALPHA, policy: MissingPolicy | None = None) -> TaskRanking:
    """Both rankings, bootstrap intervals, Holm-corrected pairwise Wilcoxon tests and the robustness
    schemes (see module doc); missing and failed cases count as ``policy`` says."""
    policy = policy or MissingPolicy()
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise SelfUNetError(f"task '{task}': candidate names must be unique for ranking, got {names}.")
    if not candidates:
        raise SelfUNetError(f"task '{task}': no candidates to rank.")
    dice, cases, labels, missing, absent = _matrix(candidates, policy)
    excluded: list[str] = []
    if policy.rule == "exclude":
        keep = ~absent.any(axis=0)
        excluded = [c for c, k in zip(cases, keep) if not k]
        dice, cases = dice[:, keep], [c for c, k in zip(cases, keep) if k]
    if not cases:
        raise SelfUNetError(f"task '{task}': the candidates have no per-case scores to rank"
                            + (" (scoring.missing: exclude left no case scored by every candidate)." if excluded
                               else "."))
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

    wins = np.array([sum(p_values[(a, b)] < alpha for b in names if b != a) for a in names], dtype=float)
    with _quiet():
        medians = np.nanmedian(scores[:, usable], axis=1) if usable.any() else np.full(len(names), np.nan)
    schemes = {"mean": rank, "median": _ranks(medians).astype(int), "rank-then-aggregate": case_rank,
               "test-then-rank": _ranks(wins).astype(int)}

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
                       seed=seed, alpha=alpha, missing=missing, policy=policy, case_scores=scores[order][:, usable],
                       schemes={k: {names[i]: int(v[i]) for i in order} for k, v in schemes.items()},
                       excluded=excluded)


def kendall_taus(schemes: Mapping[str, Mapping[str, int]]) -> dict[tuple[str, str], float]:
    """Kendall's tau-b between the ranks of every two schemes (over the candidates they share);
    NaN where a scheme ranks every candidate the same."""
    keys = list(schemes)
    out: dict[tuple[str, str], float] = {}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            shared = [n for n in schemes[a] if n in schemes[b]]
            if len(shared) < 2:
                out[(a, b)] = math.nan
                continue
            with _quiet():
                tau = stats.kendalltau([schemes[a][n] for n in shared], [schemes[b][n] for n in shared]).statistic
            out[(a, b)] = float(tau)
    return out


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
    """``<submission>.csv`` (one row per case and class: case, class, dice, and ``status`` where
    ``harness score`` wrote it) as CandidateScores named after the file, a case whose status is not
    ``ok`` among ``failed``; None for a CSV without those columns (e.g. a leaderboard beside them)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not set(SCORE_COLUMNS) <= set(reader.fieldnames or ()):
            return None
        dice: dict[str, dict[str, float]] = {}
        failed: set[str] = set()
        for line, row in enumerate(reader, start=2):
            if row.get("status") not in (None, "", "ok"):
                failed.add(row["case"])
            try:
                value = float(row["dice"]) if row["dice"] not in ("", "n/a") else math.nan
            except ValueError as exc:
                raise SelfUNetError(f"{path}, line {line}: dice '{row['dice']}' is not a number (use nan for "
                                    "undefined).") from exc
            dice.setdefault(row["case"], {})[row["class"]] = value
    return CandidateScores(path.stem, dice, frozenset(failed))


def rank_scores(task: str, folder: Path, resamples: int = RESAMPLES, seed: int = SEED,
                policy: MissingPolicy | None = None) -> TaskRanking | None:
    """The ranking of every per-case score file in ``folder`` (``results/<task>/scores/``); None when
    fewer than two candidates are there."""
    folder = Path(folder)
    found = [c for c in (read_case_scores(p) for p in sorted(folder.glob("*.csv"))) if c is not None] \
        if folder.is_dir() else []
    return rank_task(task, found, resamples=resamples, seed=seed, policy=policy) if len(found) >= 2 else None


def policy_of(content: Mapping | None) -> MissingPolicy:
    """The missing-case policy of a descriptor's content (run.json's ``descriptor_content``)."""
    scoring = (content or {}).get("scoring") or {}
    return MissingPolicy(scoring.get("missing") or "worst", scoring.get("missing_value"))
