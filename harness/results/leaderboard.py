"""Leaderboards: every candidate of a task's model selection, as rows read from the work directory.

A task's leaderboard (``results/<task>/leaderboard.csv`` and ``.md``) has two rows per candidate
of ``WORK/selection.json`` (each configuration, each pair): its cross-validation scores without
postprocessing and with the postprocessing rule that candidate would get. The selected model's
postprocessed row is marked (``selected = yes``): that is what ``selfunet predict`` deploys and
the number ``harness compare`` guards. ``results/leaderboard.md`` has one row per task.

Where the numbers come from (all read from disk, so ``harness leaderboard`` can re-render):

* mean foreground Dice, per-class Dice, postprocessing rule and its Dice before/after:
  ``WORK/selection.json`` (:class:`selfunet.evaluation.ensemble.Selection`), or ``results/<task>/selection.json``
  when the work directory is gone;
* NSD and HD95 (only when the task's ``metrics`` ask): ``mean[<label>]["nsd"|"hd95"]`` and
  ``mean_foreground`` of the candidate's ``summary.json`` (``WORK/<prediction_dir>/summary.json``,
  an :class:`selfunet.evaluation.summary.EvaluationSummary`), used only when its ``nsd_tolerance_mm`` equals
  the one asked; otherwise "n/a". Postprocessed rows carry them only when the rule changes
  nothing (the evaluation of postprocessed predictions keeps Dice only);
* spread over folds: ``WORK/crossval/<config>/crossval.json`` for configurations; for pairs the
  fold means are recomputed from the pair's per-case metrics and the folds' case lists.

The empty-mask rule (:data:`selfunet.evaluation.metrics.EMPTY_MASK_RULE`) is stated in every Markdown file.
Rendering (CSV, Markdown, rich) is in :mod:`harness.results.tables`; the files under ``results/`` are
written by :mod:`harness.results.publish`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.results.costs import apply_costs
from harness.results.ranking import CandidateScores, MissingPolicy, RankRow, TaskRanking, rank_task
from harness.results.safe_files import plain_folder
from harness.results.seeds import SEEDS_FILE, apply_seed_means, load_seed_scores
from harness.tasks.names import RESULTS_RESERVED
from selfunet.artifacts import atomic_write_text
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

NA = "n/a"
SELECTED = "yes"
#: folders under the results root that are not tasks (the names a task may not take).
NOT_TASKS = RESULTS_RESERVED


# -- the rows -------------------------------------------------------------------------------------
@dataclass
class Row:
    candidate: str
    members: list[str]
    postprocessing: str
    """"none" for the raw row; the rule in words for the postprocessed one."""
    selected: bool
    mean_fg_dice: float | None
    dice: dict[str, float | None]
    """label value -> mean Dice."""
    nsd: dict[str, float | None] = field(default_factory=dict)
    """"fg" (mean over foreground classes) and label value -> mean NSD."""
    hd95: dict[str, float | None] = field(default_factory=dict)
    fold_mean: float | None = None
    fold_std: float | None = None
    fold_min: float | None = None
    fold_max: float | None = None
    num_cases: int = 0
    seeds: int = 1
    """training seeds the Dice values are the mean of (harness.results.seeds)."""
    seed_std: dict[str, float | None] = field(default_factory=dict)
    """population std over seeds: "fg" and label value -> std (several seeds only)."""
    train_seconds: float | None = None
    inference_seconds: float | None = None
    peak_memory_mb: float | None = None
    memory: str = ""
    """what peak_memory_mb measured: "cuda" (GPU tensor memory) or "rss" (resident memory);
    see harness.results.costs."""
    postprocessed: bool = False
    """the row's predictions differ from the raw row's (a rule that changes something)."""
    per_case: dict[str, dict[str, float]] | None = None
    """case -> foreground label value -> Dice (NaN undefined): what the ranking compares; None when the
    per-case evaluation is not on disk."""

    @property
    def rank_name(self) -> str:
        """The name this row has in a ranking: the candidate, plus "+pp" for a postprocessed row."""
        return f"{self.candidate}+pp" if self.postprocessed else self.candidate


@dataclass
class Leaderboard:
    task: str
    labels: dict[str, str]
    """foreground label value -> name (column names)."""
    rows: list[Row]
    nsd_tolerance_mm: float | None = None
    hd95: bool = False
    selected: str | None = None
    empty_mask_rule: str = ""
    notes: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    """what the Markdown header states: dataset, date, budget, ..."""
    ranking: TaskRanking | None = None
    """the cross-validation ranking of the rows that have per-case scores (:func:`rank_rows`)."""
    test_ranking: TaskRanking | None = None
    """submissions (and selfunet's model) on the held-out test cases: ``results/<task>/scores/``."""
    policy: MissingPolicy = field(default_factory=MissingPolicy)
    """how a missing or failed case counts in the rankings (descriptor ``scoring.missing``)."""

    @property
    def selected_row(self) -> Row | None:
        return next((r for r in self.rows if r.selected), None)

    @property
    def seeds(self) -> int:
        return max((r.seeds for r in self.rows), default=1)

    def columns(self) -> list[str]:
        names = [class_column("dice", self.labels, v) for v in self.labels]
        cols = ["task", "selected", "candidate", "members", "postprocessing", "mean_fg_dice", *names]
        if self.seeds > 1:
            cols += ["seeds", "std_mean_fg_dice", *(f"std_{n}" for n in names)]
        if self.nsd_tolerance_mm is not None:
            cols += ["nsd", *(class_column("nsd", self.labels, v) for v in self.labels)]
        if self.hd95:
            cols += ["hd95", *(class_column("hd95", self.labels, v) for v in self.labels)]
        return [*cols, "fold_mean", "fold_std", "fold_min", "fold_max", "num_cases", *COST_COLUMNS, *RANK_COLUMNS]

    def rank_of(self, row: Row) -> RankRow | None:
        if self.ranking is None:
            return None
        return next((r for r in self.ranking.rows if r.name == row.rank_name), None)

    def records(self) -> list[dict[str, str]]:
        out = []
        for r in self.rows:
            rec = {"task": self.task, "selected": SELECTED if r.selected else "", "candidate": r.candidate,
                   "members": "+".join(r.members), "postprocessing": r.postprocessing,
                   "mean_fg_dice": fmt(r.mean_fg_dice)}
            for v in self.labels:
                rec[class_column("dice", self.labels, v)] = fmt(r.dice.get(v))
            if self.seeds > 1:
                rec |= {"seeds": str(r.seeds), "std_mean_fg_dice": fmt(r.seed_std.get("fg"))}
                for v in self.labels:
                    rec[f"std_{class_column('dice', self.labels, v)}"] = fmt(r.seed_std.get(v))
            for metric, values, on in (("nsd", r.nsd, self.nsd_tolerance_mm is not None), ("hd95", r.hd95, self.hd95)):
                if on:
                    rec[metric] = fmt(values.get("fg"))
                    for v in self.labels:
                        rec[class_column(metric, self.labels, v)] = fmt(values.get(v))
            rec |= {"fold_mean": fmt(r.fold_mean), "fold_std": fmt(r.fold_std), "fold_min": fmt(r.fold_min),
                    "fold_max": fmt(r.fold_max), "num_cases": str(r.num_cases),
                    "train_seconds": fmt(r.train_seconds, 1), "inference_seconds": fmt(r.inference_seconds, 1),
                    "peak_memory_mb": fmt(r.peak_memory_mb, 0), "memory": r.memory or NA}
            rec |= rank_record(self.rank_of(r))
            out.append(rec)
        return out


#: cost of a candidate (harness.results.costs): training and inference wall time, peak memory and its kind.
COST_COLUMNS = ("train_seconds", "inference_seconds", "peak_memory_mb", "memory")
#: ranking columns of leaderboard.csv (harness.results.ranking): aggregate-then-rank with its 95 % bootstrap
#: interval and the share of resamples won, rank-then-aggregate, and who it beats significantly.
RANK_COLUMNS = ("rank", "rank_low", "rank_high", "p_first", "case_rank", "mean_case_rank", "better_than")


def rank_record(rank: RankRow | None) -> dict[str, str]:
    if rank is None:
        return dict.fromkeys(RANK_COLUMNS, NA)
    return {"rank": str(rank.rank), "rank_low": str(rank.rank_low), "rank_high": str(rank.rank_high),
            "p_first": fmt(rank.p_first, 3), "case_rank": str(rank.case_rank),
            "mean_case_rank": fmt(rank.mean_case_rank, 3), "better_than": "; ".join(rank.better_than)}


def class_column(metric: str, labels: dict[str, str], value: str) -> str:
    """``dice_organ``; the label value joins the name when two classes share a name."""
    name = labels[value]
    clash = sum(n == name for n in labels.values()) > 1
    return f"{metric}_{value}_{name}" if clash else f"{metric}_{name}"


def fmt(value: float | None, digits: int = 6) -> str:
    return NA if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# -- reading the work directory -------------------------------------------------------------------
def _load_summary(path: Path):
    from selfunet.evaluation.summary import EvaluationSummary

    if path.is_symlink():  # the folders above are checked by _candidate_folder
        log.warning("%s: a symbolic link, not read (a job wrote it?); its NSD/HD95 show as n/a.", path)
        return None
    if not path.is_file():
        return None
    try:
        return EvaluationSummary.load(path)
    except SelfUNetError as exc:
        log.warning("%s: unreadable (%s); its NSD/HD95 show as n/a.", path, exc)
        return None


def _summary_of(work: Path, prediction_dir: str, name: str):
    folder = _candidate_folder(work, prediction_dir, name)
    return None if folder is None else _load_summary(folder / "summary.json")


def _surface_metrics(summary, labels: dict[str, str], nsd_tol: float | None, hd95: bool
                     ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """NSD and HD95 (mean over foreground and per class) from an EvaluationSummary, when it has them."""
    nsd: dict[str, float | None] = {}
    hd: dict[str, float | None] = {}
    if summary is None:
        return nsd, hd
    if nsd_tol is not None and summary.nsd_tolerance_mm == nsd_tol:
        nsd["fg"] = _finite(summary.mean_foreground.get("nsd"))
        nsd |= {v: _finite(summary.mean.get(v, {}).get("nsd")) for v in labels}
    if hd95 and summary.hd95:
        hd["fg"] = _finite(summary.mean_foreground.get("hd95"))
        hd |= {v: _finite(summary.mean.get(v, {}).get("hd95")) for v in labels}
    return nsd, hd


def _covers(summary, nsd_tol: float | None, hd95: bool) -> bool:
    from selfunet.evaluation.crossval import metrics_cover

    return summary is not None and metrics_cover(summary.nsd_tolerance_mm, summary.hd95, nsd_tol, hd95)


def _candidate_folder(work: Path, prediction_dir: str, name: str) -> Path | None:
    """``WORK/<prediction_dir>`` of a candidate of a job-written selection.json, or None (with a
    warning) when its name is not a configuration name (it names a cache folder) or the folder
    leaves WORK or passes a link there."""
    from harness.tasks.names import check_configuration, check_relative_inside

    try:
        for part in str(name).split("+"):
            check_configuration(part, "candidate name in selection.json")
        check_relative_inside(prediction_dir, "prediction_dir in selection.json")
        return plain_folder(work, Path(prediction_dir), "a candidate's predictions", create=False)
    except FileNotFoundError:
        return work / prediction_dir
    except SelfUNetError as exc:
        log.warning("%s: candidate %r left out of the metrics computed here: %s", work / "selection.json", name, exc)
        return None


def evaluate_candidate(work: Path, prediction_dir: str, name: str, rule, nsd_tol: float | None, hd95: bool,
                       processes: int = 1):
    """The candidate's CV evaluation with the metrics asked, postprocessed by ``rule`` when it does something.

    Reuses the candidate's own summary.json when it has those metrics and no rule applies;
    otherwise evaluates (after applying the rule) into ``WORK/leaderboard/<name>/<raw|postprocessed>/``,
    a cache kept while it is newer than the predictions and covers the metrics. Returns None when
    the predictions are not there.
    """
    from selfunet.evaluation.crossval import load_references
    from selfunet.evaluation.evaluate import evaluate_folders
    from selfunet.evaluation.summary import EvaluationSummary, write_evaluation
    from selfunet.inference.postprocess import postprocess_folder
    from selfunet.workdir import WorkDir

    folder = _candidate_folder(work, prediction_dir, name)
    if folder is None:
        return None
    applies = rule is not None and not rule.is_identity
    own = None if applies else _load_summary(folder / "summary.json")
    if own is not None and _covers(own, nsd_tol, hd95):
        return own
    if not folder.is_dir():
        return own
    try:
        references = load_references(WorkDir(work))
    except SelfUNetError as exc:
        log.warning("%s: cannot find the reference labels (%s); metrics not in %s show as n/a.", work, exc,
                    folder / "summary.json")
        return own
    inputs = [folder / f"{c}{references.file_ending}" for c in references.case_ids]
    if not all(p.is_file() for p in inputs):
        return own
    out = plain_folder(work, Path("leaderboard") / name / ("postprocessed" if applies else "raw"),
                       "the leaderboard's cache")
    cached = _load_summary(out / "summary.json")
    rule_file = out / "rule.json"
    rule_text = rule.model_dump_json() if applies else ""
    newest = max(p.stat().st_mtime for p in inputs)
    if (cached is not None and _covers(cached, nsd_tol, hd95) and (out / "summary.json").stat().st_mtime >= newest
            and (not applies or (rule_file.is_file() and rule_file.read_text() == rule_text))):
        return cached
    source = folder
    if applies:
        source = out / "labels"
        postprocess_folder(folder, source, rule, console=Console(stderr=True, quiet=True))
    summary: EvaluationSummary = evaluate_folders(
        source, references.folder, references.labels, nsd_tolerance_mm=nsd_tol, hd95=hd95, processes=processes,
        case_ids=list(references.case_ids), file_ending=references.file_ending,
        console=Console(stderr=True, quiet=True), **references.evaluation_options)
    write_evaluation(summary, out)
    if applies:
        atomic_write_text(rule_file, rule_text)
    return summary


def _fold_cases(work: Path) -> list[list[str]]:
    """Validation cases of each fold, from any configuration's crossval.json (all share splits.json)."""
    paths = [*sorted((work / "crossval").glob("*/crossval.json")),
             *sorted(work.glob("planners/*/crossval/*/crossval.json"))]
    for path in paths:
        try:
            raw = json.loads(path.read_text())
            return [list(f["cases"]) for f in raw.get("folds", [])]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
    return []


def _pair_spread(summary, labels: dict[str, str], folds: list[list[str]]):
    """Spread over folds of a pair's mean foreground Dice, from its per-case metrics."""
    from selfunet.evaluation.crossval import fold_spread
    from selfunet.evaluation.summary import summarize

    if summary is None or not folds:
        return None
    int_labels = {int(v): n for v, n in summary.labels.items()}
    means = []
    for cases in folds:
        wanted = set(cases)
        subset = [c for c in summary.per_case if c.case_id in wanted]
        if not subset:
            return None
        means.append(summarize(subset, int_labels).mean_foreground_dice)
    return fold_spread(means)


def build_leaderboard(task: str, work: Path | None, selection_path: Path, nsd_tolerance_mm: float | None = None,
                      hd95: bool = False, meta: dict[str, str] | None = None, compute: bool = True,
                      processes: int = 1, policy: MissingPolicy | None = None) -> Leaderboard:
    """Every candidate of ``selection_path`` without and with its postprocessing (see module doc)."""
    from selfunet.evaluation.ensemble import Selection
    from selfunet.evaluation.metrics import EMPTY_MASK_RULE
    from selfunet.inference.postprocess import describe_rule

    selection = Selection.load(selection_path)
    labels = dict(sorted(selection.labels.items(), key=lambda kv: int(kv[0])))
    have_work = work is not None and work.is_dir()
    folds = _fold_cases(work) if have_work else []
    rows: list[Row] = []
    notes: list[str] = []
    for cand in selection.candidates:
        summary = None
        if have_work:
            summary = (evaluate_candidate(work, cand.prediction_dir, cand.name, None, nsd_tolerance_mm, hd95,
                                          processes) if compute else
                       _summary_of(work, cand.prediction_dir, cand.name))
        nsd, hd = _surface_metrics(summary, labels, nsd_tolerance_mm, hd95)
        spread = cand.fold_spread if cand.fold_spread is not None else _pair_spread(summary, labels, folds)
        raw = Row(cand.name, list(cand.members), "none", False, _finite(cand.mean_foreground_dice),
                  {v: _finite(cand.dice.get(v)) for v in labels}, nsd, hd, num_cases=cand.num_cases,
                  per_case=per_case_dice(summary, labels))
        if spread is not None:
            raw.fold_mean, raw.fold_std = _finite(spread.mean), _finite(spread.std)
            raw.fold_min, raw.fold_max = _finite(spread.min), _finite(spread.max)
        rows.append(raw)
        rule = cand.postprocessing
        if cand.name == selection.selected and rule is None:
            rule = selection.postprocessing
        if rule is None:
            continue
        if rule.is_identity:  # applying nothing changes nothing: every number carries over
            post = Row(**{**raw.__dict__, "postprocessing": describe_rule(rule, labels)})
        else:
            post = Row(cand.name, list(cand.members), describe_rule(rule, labels), False,
                       _finite(rule.mean_foreground_dice_after), {v: _finite(rule.dice_after.get(v)) for v in labels},
                       num_cases=rule.num_cases or cand.num_cases, postprocessed=True)
            done = (evaluate_candidate(work, cand.prediction_dir, cand.name, rule, nsd_tolerance_mm, hd95, processes)
                    if have_work and compute else None)
            if done is not None:
                post.nsd, post.hd95 = _surface_metrics(done, labels, nsd_tolerance_mm, hd95)
                post.per_case = per_case_dice(done, labels)
                spread = _pair_spread(done, labels, folds)
                if spread is not None:
                    post.fold_mean, post.fold_std = _finite(spread.mean), _finite(spread.std)
                    post.fold_min, post.fold_max = _finite(spread.min), _finite(spread.max)
        post.selected = cand.name == selection.selected
        rows.append(post)
    if not any(r.selected for r in rows):  # a selection without postprocessing rows: mark the raw one
        for r in rows:
            r.selected = r.candidate == selection.selected
            if r.selected:
                break
    if nsd_tolerance_mm is not None or hd95:
        asked = " and ".join(([f"NSD ({nsd_tolerance_mm:g} mm)"] if nsd_tolerance_mm is not None else [])
                             + (["HD95 (mm)"] if hd95 else []))
        notes.append(f"{asked}: evaluated on the cross-validation predictions (postprocessed ones for "
                     "postprocessed rows; cached under WORK/leaderboard/); n/a where the work directory or its "
                     "predictions are gone.")
    notes.append("Fold spread: population std, min and max over folds of each fold's mean foreground Dice.")
    board = Leaderboard(task=task, labels=labels, rows=rows, nsd_tolerance_mm=nsd_tolerance_mm, hd95=hd95,
                        selected=selection.selected, empty_mask_rule=selection.empty_mask_rule or EMPTY_MASK_RULE,
                        notes=notes, meta=dict(meta or {}), policy=policy or MissingPolicy())
    board.ranking = rank_rows(board)
    scores = load_seed_scores((work if have_work else selection_path.parent) / SEEDS_FILE)
    if scores is not None:
        apply_seed_means(board, scores)
        if have_work and compute and average_per_case_over_seeds(board, work, scores, processes):
            board.ranking = rank_rows(board)
    if have_work:
        apply_costs(board, work)
    return board


def average_per_case_over_seeds(board: Leaderboard, work: Path, scores: dict, processes: int = 1) -> bool:
    """With several seeds, each row's per-case Dice becomes the mean over seeds (each seed's own
    predictions, postprocessed with that seed's rule for a postprocessed row), so the ranking
    compares what the seed-mean columns show. False (rows untouched) when a seed's predictions
    are not all there."""
    from selfunet.evaluation.ensemble import Selection

    averaged: dict[int, list[dict[str, dict[str, float]]]] = {}
    for rel in (scores.get("work_dirs") or {}).values():
        seed_dir = (work / str(rel)).resolve()
        if seed_dir == work.resolve():
            continue
        if work.resolve() not in seed_dir.parents:  # seeds.json is a job's file: its folders stay in WORK
            log.warning("%s: work_dirs names %s, outside the work directory; per-case Dice not averaged.",
                        work / SEEDS_FILE, seed_dir)
            return False
        try:
            selection = Selection.load(seed_dir / "selection.json")
        except SelfUNetError:
            return False
        by_name = {c.name: c for c in selection.candidates}
        for i, row in enumerate(board.rows):
            cand = by_name.get(row.candidate)
            if row.per_case is None or cand is None:
                return False
            rule = cand.postprocessing if row.postprocessed else None
            summary = evaluate_candidate(seed_dir, cand.prediction_dir, cand.name, rule, None, False, processes)
            per_case = per_case_dice(summary, board.labels)
            if per_case is None or set(per_case) != set(row.per_case):
                return False
            averaged.setdefault(i, [row.per_case]).append(per_case)
    for i, tables in averaged.items():
        board.rows[i].per_case = {case: {v: _nanmean([t[case].get(v, math.nan) for t in tables]) for v in board.labels}
                                  for case in tables[0]}
    if averaged:
        board.notes.append("Ranking: per-case Dice averaged over the seeds (each seed's own predictions and rule).")
    return bool(averaged)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def per_case_dice(summary, labels: dict[str, str]) -> dict[str, dict[str, float]] | None:
    """case -> foreground label -> Dice of an EvaluationSummary (None without one)."""
    if summary is None:
        return None
    return {c.case_id: {v: float(c.classes[v].dice) if v in c.classes else math.nan for v in labels}
            for c in summary.per_case}


def rank_rows(board: Leaderboard) -> TaskRanking | None:
    """Rank every distinct row with per-case scores (a rule that changes nothing adds no candidate);
    None when fewer than two have them (nothing to compare)."""
    seen: dict[str, Row] = {}
    for row in board.rows:
        if row.per_case is not None and row.rank_name not in seen:
            seen[row.rank_name] = row
    if len(seen) < 2:
        return None
    return rank_task(board.task, [CandidateScores(name, row.per_case or {}) for name, row in seen.items()],
                     policy=board.policy)

