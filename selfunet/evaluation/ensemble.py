"""``selfunet select``: pick the best configuration or pair of configurations (docs/explanation/design.md#selection).

Candidates are every configuration whose cross-validation is complete and every pair of them; a
configuration planned by another planner preset (``WORK/planners/<preset>/``) is a candidate
named ``<configuration>@<preset>`` (e.g. ``3d_fullres@resenc-m``), so a residual-encoder model
competes with, and pairs with, the default ones.
A pair's prediction for a case is the argmax of the mean of its two members' out-of-fold
probabilities, averaged in the original *crop* space (the same grid for every configuration, see
:mod:`selfunet.preprocessing.revert`) and then un-cropped; it is written to ``WORK/ensembles/<a>+<b>/`` (labels;
the averaged probabilities too with ``save_probabilities``).

Ranking is by mean foreground Dice over all cross-validation cases. Candidates within
:data:`TIE_TOLERANCE` of the best count as tied; a tie goes to the simpler candidate (a single
configuration before a pair), then to the fixed order :data:`CONFIGURATION_ORDER` of its members.
The postprocessing decision (:mod:`selfunet.evaluation.postprocess_selection`) is made on the winner's predictions
(and, for the table, on every other candidate's as well).

``WORK/selection.json`` (:class:`Selection`), schema version 1::

    selected            name of the chosen candidate, e.g. "3d_fullres" or "2d+3d_fullres"
    members             its configurations, e.g. ["2d", "3d_fullres"] (what `selfunet predict` runs)
    postprocessing      PostprocessingRule of the selected candidate (applied at prediction time)
    candidates[]        every candidate, best first (the selected one first):
        name, members, num_cases, prediction_dir (relative to WORK),
        mean_foreground_dice, dice {label value: mean Dice or null},
        fold_spread {mean, std, min, max} over folds of the mean foreground Dice (single only, else null),
        postprocessing  the rule that candidate would get (null if not computed)
    labels              {label value: name} of the foreground classes
    file_ending, num_cases, tie_tolerance, configuration_order, empty_mask_rule
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from selfunet.artifacts import Artifact
from selfunet.data.labels import LabelScheme
from selfunet.errors import SelfUNetError
from selfunet.evaluation.crossval import (
    FoldSpread,
    References,
    crossval_dir,
    evaluate_prediction_folder,
    finite_or_none,
    is_complete,
    load_crossval_result,
    load_references,
    metrics_cover,
    run_crossval,
)
from selfunet.evaluation.postprocess_selection import determine_postprocessing
from selfunet.inference.postprocess import PostprocessingRule, describe_rule
from selfunet.workdir import WorkDir, member_name, split_member

if TYPE_CHECKING:
    from selfunet.evaluation.summary import EvaluationSummary

log = logging.getLogger(__name__)

#: mean foreground Dice values closer than this are a tie.
TIE_TOLERANCE = 1e-9
#: tie-break order of configurations (simpler / cheaper first); unknown names follow, sorted.
CONFIGURATION_ORDER: tuple[str, ...] = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CandidateScore(_Frozen):
    name: str
    members: list[str]
    num_cases: int
    prediction_dir: str
    mean_foreground_dice: float | None
    dice: dict[str, float | None]
    fold_spread: FoldSpread | None = None
    postprocessing: PostprocessingRule | None = None


class Selection(Artifact):
    """``WORK/selection.json``: the chosen model and its postprocessing (schema in the module doc)."""

    SCHEMA_VERSION: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "`selfunet select WORK`"

    selected: str
    members: list[str]
    postprocessing: PostprocessingRule
    candidates: list[CandidateScore]
    labels: dict[str, str]
    file_ending: str
    num_cases: int
    tie_tolerance: float = TIE_TOLERANCE
    configuration_order: list[str] = Field(default_factory=lambda: list(CONFIGURATION_ORDER))
    empty_mask_rule: str = ""


# -- ranking --------------------------------------------------------------------------------------
def configuration_sort_key(name: str) -> tuple[int, str, int, str]:
    """Configuration order first, then the planner: the default one before the presets (a member of
    another planner is ``3d_fullres@resenc-m``, :func:`selfunet.workdir.split_member`)."""
    configuration, preset = split_member(name)
    rank = CONFIGURATION_ORDER.index(configuration) if configuration in CONFIGURATION_ORDER else len(
        CONFIGURATION_ORDER)
    return (rank, "" if rank < len(CONFIGURATION_ORDER) else configuration, 0 if preset is None else 1, preset or "")


def _simplicity(candidate: CandidateScore) -> tuple:
    return len(candidate.members), tuple(configuration_sort_key(m) for m in candidate.members)


def _score(candidate: CandidateScore) -> float:
    value = candidate.mean_foreground_dice
    return -math.inf if value is None or math.isnan(value) else value


def rank_candidates(candidates: Sequence[CandidateScore]) -> list[CandidateScore]:
    """Best first: the selected candidate (ties to the simpler one), then the rest by score."""
    if not candidates:
        raise SelfUNetError("no candidates to rank: no configuration has a complete cross-validation.")
    best = max(_score(c) for c in candidates)
    tied = [c for c in candidates if _score(c) >= best - TIE_TOLERANCE]
    selected = min(tied, key=_simplicity)
    rest = sorted((c for c in candidates if c is not selected), key=lambda c: (-_score(c), _simplicity(c)))
    return [selected, *rest]


# -- pair ensembles -------------------------------------------------------------------------------
def pair_name(members: Sequence[str]) -> str:
    return "+".join(sorted(members, key=configuration_sort_key))


def ensemble_dir(work: WorkDir, members: Sequence[str]) -> Path:
    return work.root / "ensembles" / pair_name(members)


def average_probabilities(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of crop-space probability arrays of one case (all of the same shape), float32."""
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise SelfUNetError(f"cannot average probabilities of different shapes {sorted(shapes)}.")
    total = np.zeros(arrays[0].shape, dtype=np.float32)
    for array in arrays:
        total += array
    return total / len(arrays)


def ensemble_case(probability_files: Sequence[Path], label_path: Path, probabilities_path: Path | None,
                  scheme: LabelScheme | None = None) -> None:
    """Average the members' crop-space probabilities of one case, argmax (regions: paint), un-crop, write."""
    from selfunet.preprocessing.revert import (
        labels_from_cropped_probabilities,
        load_probabilities,
        save_probabilities,
        write_prediction,
    )

    loaded = [load_probabilities(p) for p in probability_files]
    properties = loaded[0][1]
    for path, (_, other) in zip(probability_files[1:], loaded[1:]):
        if other.shape_after_crop != properties.shape_after_crop or other.crop_bbox != properties.crop_bbox:
            raise SelfUNetError(
                f"{path}: case '{properties.case_id}' has crop {other.crop_bbox} / shape {other.shape_after_crop}, "
                f"{probability_files[0]} has {properties.crop_bbox} / {properties.shape_after_crop}; the members "
                "were not preprocessed from the same images."
            )
    mean = average_probabilities([p for p, _ in loaded])
    write_prediction(label_path, labels_from_cropped_probabilities(mean, properties, scheme), properties)
    if probabilities_path is not None:
        save_probabilities(probabilities_path, mean, properties)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def build_ensemble(work: WorkDir, members: Sequence[str], case_ids: Sequence[str], file_ending: str,
                   save_probabilities: bool = False, console: Console | None = None) -> Path:
    """Write the members' averaged predictions of every case; cases newer than their inputs are kept."""
    from selfunet.planning.fingerprint_types import Fingerprint

    out = ensemble_dir(work, members)
    console = console or Console(stderr=True)
    scheme = Fingerprint.load(work.fingerprint).dataset.label_scheme  # regions are painted, not argmaxed
    with _progress(console) as progress:
        task = progress.add_task(f"ensemble {pair_name(members)}", total=len(case_ids))
        for case_id in case_ids:
            sources = [crossval_dir(*work.member(m)) / f"{case_id}.npz" for m in members]
            missing = [str(s) for s in sources if not s.is_file()]
            if missing:
                raise SelfUNetError(f"probabilities missing: {', '.join(missing)}; run `selfunet crossval` first.")
            label_path, prob_path = out / f"{case_id}{file_ending}", out / f"{case_id}.npz"
            outputs = [label_path, prob_path] if save_probabilities else [label_path]
            newest_input = max(s.stat().st_mtime for s in sources)
            if not all(p.is_file() and p.stat().st_mtime >= newest_input for p in outputs):
                ensemble_case(sources, label_path, prob_path if save_probabilities else None, scheme)
            progress.advance(task)
    return out


# -- scoring --------------------------------------------------------------------------------------
def class_dice(summary: EvaluationSummary, references: References) -> dict[str, float | None]:
    """Per-class mean Dice keyed by label value (string); the summary may key by value or name."""
    out: dict[str, float | None] = {}
    for value, name in references.labels.items():
        entry = summary.mean.get(str(value), summary.mean.get(name, {}))
        out[str(value)] = finite_or_none(entry.get("dice")) if entry else None
    return out


def _evaluate_ensemble(work: WorkDir, out: Path, references: References, case_ids: list[str],
                       nsd_tolerance_mm: float | None, hd95: bool, processes: int) -> EvaluationSummary:
    from selfunet.evaluation.summary import EvaluationSummary

    summary_path = out / "summary.json"
    labels = [out / f"{c}{references.file_ending}" for c in case_ids]
    if summary_path.is_file() and summary_path.stat().st_mtime >= max(p.stat().st_mtime for p in labels):
        try:
            summary = EvaluationSummary.load(summary_path)
            if len(summary.per_case) == len(case_ids) and metrics_cover(
                    summary.nsd_tolerance_mm, summary.hd95, nsd_tolerance_mm, hd95):
                return summary
        except SelfUNetError:
            pass
    summary, _ = evaluate_prediction_folder(out, references, [], nsd_tolerance_mm, hd95, processes,
                                            overall_cases=case_ids)
    return summary


def discover_configurations(work: WorkDir) -> list[str]:
    """Configurations under ``WORK/train`` (and ``WORK/planners/<preset>/train``, as
    ``<configuration>@<preset>``) whose every fold has its validation predictions."""
    root = work.root / "train"
    names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    planners = work.root / "planners"
    for folder in sorted(planners.iterdir()) if planners.is_dir() else []:
        if (folder / "train").is_dir():
            names += [member_name(p.name, folder.name) for p in (folder / "train").iterdir() if p.is_dir()]
    names = sorted(names, key=configuration_sort_key)
    complete = [n for n in names if is_complete(*work.member(n))]
    for name in sorted(set(names) - set(complete), key=configuration_sort_key):
        log.warning("configuration '%s' skipped: its cross-validation is incomplete (`selfunet crossval %s -c %s` "
                    "says what is missing).", name, work.root, name)
    if not complete:
        raise SelfUNetError(
            f"no configuration under {root} has a complete cross-validation; train every fold first "
            f"(`selfunet train {work.root} -c CONFIG -f K` for each fold K)."
        )
    return complete


def select_model(work: Path | WorkDir, configurations: list[str] | None = None, nsd_tolerance_mm: float | None = None,
                 hd95: bool = False, processes: int = 1, postprocess_all: bool = True,
                 save_probabilities: bool = False, console: Console | None = None) -> Selection:
    """Evaluate every candidate, pick the best, decide its postprocessing; write ``WORK/selection.json``.

    ``save_probabilities`` also keeps each pair's averaged probabilities (``<case>.npz``); off by
    default because nothing downstream reads them and, for large 3D datasets, six pairs of
    compressed float16 volumes per case cost a lot of disk and time.
    """
    work = work if isinstance(work, WorkDir) else WorkDir(work)
    console = console or Console(stderr=True)
    names = sorted(dict.fromkeys(configurations or discover_configurations(work)), key=configuration_sort_key)
    references = load_references(work)
    summaries: dict[tuple[str, ...], EvaluationSummary] = {}
    scores: list[CandidateScore] = []
    for name in names:
        member_work, configuration = work.member(name)
        summary = run_crossval(member_work, configuration, nsd_tolerance_mm, hd95, processes)
        summaries[(name,)] = summary
        result = load_crossval_result(member_work, configuration)
        scores.append(_candidate(work, (name,), crossval_dir(member_work, configuration), summary, references,
                                 result.fold_spread))
    case_sets = {m: sorted(c.case_id for c in s.per_case) for m, s in summaries.items()}
    for a, b in itertools.combinations(names, 2):
        if case_sets[(a,)] != case_sets[(b,)]:
            raise SelfUNetError(
                f"configurations '{a}' and '{b}' were cross-validated on different cases; retrain both with the "
                f"same {work.splits}."
            )
        case_ids = case_sets[(a,)]
        out = build_ensemble(work, (a, b), case_ids, references.file_ending, save_probabilities, console)
        summary = _evaluate_ensemble(work, out, references, case_ids, nsd_tolerance_mm, hd95, processes)
        summaries[(a, b)] = summary
        scores.append(_candidate(work, (a, b), out, summary, references, None))
    ranked = rank_candidates(scores)
    final = []
    for i, candidate in enumerate(ranked):
        if i == 0 or postprocess_all:
            pairs = [(work.root / candidate.prediction_dir / f"{c}{references.file_ending}", references.path(c))
                     for c in case_sets[(candidate.members[0],)]]
            rule = determine_postprocessing(pairs, list(references.labels), processes, console,
                                            description=f"postprocessing {candidate.name}",
                                            **references.evaluation_options)
            candidate = candidate.model_copy(update={"postprocessing": rule})
        final.append(candidate)
    winner = final[0]
    first_summary = next(iter(summaries.values()))
    selection = Selection(
        selected=winner.name, members=list(winner.members),
        postprocessing=winner.postprocessing or PostprocessingRule(),
        candidates=final, labels={str(k): v for k, v in references.labels.items()},
        file_ending=references.file_ending, num_cases=winner.num_cases,
        empty_mask_rule=str(getattr(first_summary, "empty_mask_rule", "")),
    )
    selection.save(work.root / "selection.json")
    log.info("selected %s (mean foreground Dice %s)", winner.name, winner.mean_foreground_dice)
    return selection


def _candidate(work: WorkDir, members: Sequence[str], folder: Path, summary: EvaluationSummary,
               references: References, spread: FoldSpread | None) -> CandidateScore:
    return CandidateScore(
        name=pair_name(members), members=sorted(members, key=configuration_sort_key),
        num_cases=len(summary.per_case), prediction_dir=str(folder.relative_to(work.root)),
        mean_foreground_dice=finite_or_none(summary.mean_foreground_dice), dice=class_dice(summary, references),
        fold_spread=spread,
    )


# -- the table ------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def render_selection(selection: Selection, console: Console) -> None:
    """One row per candidate, without and with its postprocessing; the selected one marked."""
    table = Table(title="model selection (cross-validation, mean Dice over cases)",
                  caption=selection.empty_mask_rule or "Dice undefined (empty reference and prediction) is left out "
                  "of means.")
    table.add_column("", justify="center")
    table.add_column("candidate")
    table.add_column("mean fg Dice", justify="right")
    for name in selection.labels.values():
        table.add_column(name, justify="right")
    table.add_column("fold std [min, max]", justify="right")
    table.add_column("postprocessing")
    table.add_column("fg Dice after pp", justify="right")
    for candidate in selection.candidates:
        chosen = candidate.name == selection.selected
        spread = candidate.fold_spread
        spread_text = "-" if spread is None or spread.std is None else (
            f"{spread.std:.4f} [{_fmt(spread.min)}, {_fmt(spread.max)}]")
        rule = candidate.postprocessing
        table.add_row(
            "[bold green]*[/]" if chosen else "", f"[bold]{candidate.name}[/]" if chosen else candidate.name,
            _fmt(candidate.mean_foreground_dice), *(_fmt(candidate.dice.get(v)) for v in selection.labels),
            spread_text, describe_rule(rule, selection.labels),
            _fmt(rule.mean_foreground_dice_after) if rule is not None else "-",
        )
    console.print(table)
    console.print(f"selected: [bold]{escape(selection.selected)}[/] (members {escape(', '.join(selection.members))}); "
                  f"postprocessing: {escape(describe_rule(selection.postprocessing, selection.labels))}",
                  highlight=False)
