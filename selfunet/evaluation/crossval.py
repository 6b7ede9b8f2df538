"""``selfunet crossval``: one configuration's out-of-fold predictions, merged and evaluated.

The rules it serves: docs/explanation/design.md#selection.

Every training case is predicted by the fold that did not train on it
(``WORK/train/<configuration>/fold_<k>/validation/``). This stage gathers those folders into one,
so later stages (ensembling, postprocessing, reports) see a single set of predictions per
configuration, and evaluates them against the dataset's reference labels::

    WORK/crossval/<configuration>/
        <case><ending>  <case>.npz     merged predictions (hard links to the fold folders)
        summary.json  per_case.csv     evaluation over all cases (selfunet.evaluation.summary)
        fold_<k>/summary.json, per_case.csv   the same for fold k's validation cases
        crossval.json                  CrossvalResult: fold means and their spread

The stage is resumable: when ``crossval.json`` is newer than every input (validation files,
``splits.json``) and was made with the same metric options, it is loaded instead of recomputed.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from selfunet.artifacts import Artifact, atomic_path
from selfunet.errors import SelfUNetError
from selfunet.workdir import WorkDir

if TYPE_CHECKING:
    from selfunet.evaluation.summary import EvaluationSummary

log = logging.getLogger(__name__)


# -- the dataset side: reference labels -----------------------------------------------------------
@dataclass(frozen=True)
class References:
    """The reference labels of the training cases, as one folder of ``<case><ending>`` files."""

    folder: Path
    labels: dict[int, str]
    """foreground label value -> name (region-based datasets: region number 1..R -> region name)."""
    file_ending: str
    case_ids: tuple[str, ...]
    regions: dict[int, tuple[int, ...]] | None = None
    """region number -> its label values; None for plain classes."""
    ignore_label: int | None = None
    """reference voxels with this value count in no metric (sparse annotation)."""

    @property
    def evaluation_options(self) -> dict:
        """The keyword arguments that make :func:`evaluate_folders` respect regions and ignore."""
        return {"regions": self.regions, "ignore_label": self.ignore_label}

    def path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}{self.file_ending}"


def load_references(work: WorkDir) -> References:
    """The dataset behind ``WORK/fingerprint.json`` and a folder of its labels named by case id.

    nnU-Net v2 datasets (and MSD ones named the usual way) already have ``labelsTr/<case><ending>``;
    otherwise ``WORK/crossval/reference/`` is filled with links under those names, so evaluation
    can match predictions to references by file name.
    """
    from selfunet.data.dataset import load_dataset
    from selfunet.planning.fingerprint_types import Fingerprint

    fingerprint = Fingerprint.load(work.fingerprint)
    dataset = load_dataset(fingerprint.dataset.root)
    ending = dataset.file_ending
    scheme = dataset.label_scheme
    labels, members = scheme.evaluation_classes(dataset.labels)
    label_files = {c.case_id: c.label for c in dataset.training if c.label is not None}
    folders = {path.parent for path in label_files.values()}
    named_by_id = all(path.name == f"{case_id}{ending}" for case_id, path in label_files.items())
    if len(folders) == 1 and named_by_id:
        folder = folders.pop()
    else:
        folder = work.root / "crossval" / "reference"
        for case_id, path in label_files.items():
            link_or_copy(path, folder / f"{case_id}{ending}")
    return References(folder, labels, ending, tuple(label_files), members if scheme.has_regions else None,
                      scheme.ignore_label)


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s content: a hard link where possible, else a copy.

    An existing target that is the same file, or newer than the source, is kept.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise SelfUNetError(f"{source}: file not found.")
    if target.exists():
        if os.path.samefile(source, target) or target.stat().st_mtime >= source.stat().st_mtime:
            return
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        with atomic_path(target) as tmp:
            shutil.copy2(source, tmp)


# -- artifacts ------------------------------------------------------------------------------------
class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FoldResult(_Frozen):
    fold: int
    cases: list[str]
    mean_foreground_dice: float | None
    """``None`` when undefined (every case empty in reference and prediction)."""


class FoldSpread(_Frozen):
    """Mean, population std, min and max over folds of each fold's mean foreground Dice."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None


class CrossvalResult(Artifact):
    """``WORK/crossval/<configuration>/crossval.json``: the fold means and their spread."""

    SCHEMA_VERSION: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "`selfunet crossval WORK -c CONFIG`"

    configuration: str
    num_cases: int
    file_ending: str
    nsd_tolerance_mm: float | None = None
    hd95: bool = False
    mean_foreground_dice: float | None
    """over all cases of all folds (the number that ranks configurations)."""
    folds: list[FoldResult]
    fold_spread: FoldSpread


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def fold_spread(values: Iterable[float | None]) -> FoldSpread:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return FoldSpread(mean=None, std=None, min=None, max=None)
    return FoldSpread(mean=statistics.fmean(finite), std=statistics.pstdev(finite), min=min(finite), max=max(finite))


# -- gathering ------------------------------------------------------------------------------------
def crossval_dir(work: WorkDir, configuration: str) -> Path:
    return work.root / "crossval" / configuration


def validation_files(work: WorkDir, configuration: str, file_ending: str, case_ids: Iterable[str]
                     ) -> tuple[list[tuple[int, list[str]]], dict[str, tuple[Path, Path]]]:
    """Per fold its validation case ids, and per case its (label, probabilities) files.

    Raises one :class:`SelfUNetError` naming every fold with missing predictions and the command
    that produces them.
    """
    from selfunet.training.splits import load_splits

    if not work.splits.is_file():
        raise SelfUNetError(
            f"{work.splits} not found: train the folds first (`selfunet train {work.root} -c {configuration} -f 0`)."
        )
    splits = load_splits(work.splits, list(case_ids))
    folds: list[tuple[int, list[str]]] = []
    files: dict[str, tuple[Path, Path]] = {}
    problems: list[str] = []
    for k, fold in enumerate(splits):
        folder = work.training(configuration, k) / "validation"
        cases = [c for c in fold.val if c not in files]
        if len(cases) != len(fold.val):
            log.warning("fold %d repeats validation cases of earlier folds; they are taken from the first.", k)
        missing = []
        for case_id in cases:
            label, probabilities = folder / f"{case_id}{file_ending}", folder / f"{case_id}.npz"
            if label.is_file() and probabilities.is_file():
                files[case_id] = (label, probabilities)
            else:
                missing.append(case_id)
        if missing:
            trained = (work.training(configuration, k) / "checkpoint_final.pt").is_file()
            command = f"selfunet train {work.root} -c {configuration} -f {k}" + (" --resume" if trained else "")
            what = (f"no validation predictions in {folder}" if len(missing) == len(cases)
                    else f"{len(missing)} of {len(cases)} validation case(s) missing in {folder}: "
                         f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
            problems.append(f"fold {k}: {what}; run `{command}`")
        folds.append((k, cases))
    if problems:
        raise SelfUNetError(
            f"cross-validation of '{configuration}' is incomplete:\n  " + "\n  ".join(problems)
        )
    return folds, files


def is_complete(work: WorkDir, configuration: str) -> bool:
    """Whether every fold of ``configuration`` has all its validation predictions."""
    try:
        references = load_references(work)
        validation_files(work, configuration, references.file_ending, references.case_ids)
    except SelfUNetError:
        return False
    return True


def metrics_cover(stored_nsd: float | None, stored_hd95: bool, nsd_tolerance_mm: float | None, hd95: bool) -> bool:
    """Whether an evaluation made with the stored options has every metric now asked for."""
    return (nsd_tolerance_mm is None or stored_nsd == nsd_tolerance_mm) and (stored_hd95 or not hd95)


def _newest_mtime(paths: Iterable[Path]) -> float:
    return max((p.stat().st_mtime for p in paths), default=0.0)


def _up_to_date(out: Path, inputs: list[Path], nsd_tolerance_mm: float | None, hd95: bool,
                num_cases: int) -> CrossvalResult | None:
    result_path = out / "crossval.json"
    if not (result_path.is_file() and (out / "summary.json").is_file()):
        return None
    try:
        result = CrossvalResult.load(result_path)
    except SelfUNetError:
        return None
    if result.num_cases != num_cases or not metrics_cover(result.nsd_tolerance_mm, result.hd95, nsd_tolerance_mm, hd95):
        return None
    if result_path.stat().st_mtime < _newest_mtime(inputs):
        return None
    return result


# -- evaluating -----------------------------------------------------------------------------------
def evaluate_prediction_folder(folder: Path, references: References, folds: list[tuple[int, list[str]]],
                               nsd_tolerance_mm: float | None, hd95: bool, processes: int = 1,
                               overall_cases: list[str] | None = None) -> tuple[EvaluationSummary, list[FoldResult]]:
    """Overall and per-fold evaluation of a folder of ``<case><ending>`` predictions.

    Writes ``summary.json``/``per_case.csv`` into ``folder`` and into ``folder/fold_<k>/``. The
    overall evaluation covers ``overall_cases`` (default: every fold's cases); each case is read
    once, the fold summaries are summaries of subsets of the overall per-case metrics.
    """
    from selfunet.evaluation.evaluate import evaluate_folders
    from selfunet.evaluation.summary import summarize, write_evaluation

    all_cases = overall_cases if overall_cases is not None else [c for _, cases in folds for c in cases]
    overall = evaluate_folders(folder, references.folder, references.labels, nsd_tolerance_mm=nsd_tolerance_mm,
                               hd95=hd95, processes=processes, case_ids=all_cases,
                               file_ending=references.file_ending, **references.evaluation_options)
    fold_results = []
    for k, cases in folds:
        wanted = set(cases)
        summary = summarize([c for c in overall.per_case if c.case_id in wanted], references.labels,
                            nsd_tolerance_mm, hd95)
        write_evaluation(summary, folder / f"fold_{k}")
        fold_results.append(FoldResult(fold=k, cases=list(cases),
                                       mean_foreground_dice=finite_or_none(summary.mean_foreground_dice)))
    write_evaluation(overall, folder)
    return overall, fold_results


def run_crossval(work: Path | WorkDir, configuration: str, nsd_tolerance_mm: float | None = None,
                 hd95: bool = False, processes: int = 1) -> EvaluationSummary:
    """Merge the fold validation folders of ``configuration`` and evaluate them (see module doc)."""
    from selfunet.evaluation.summary import EvaluationSummary

    work = work if isinstance(work, WorkDir) else WorkDir(work)
    references = load_references(work)
    folds, files = validation_files(work, configuration, references.file_ending, references.case_ids)
    out = crossval_dir(work, configuration)
    inputs = [p for pair in files.values() for p in pair] + [work.splits]
    if _up_to_date(out, inputs, nsd_tolerance_mm, hd95, len(files)) is not None:
        log.info("%s is up to date; reusing it.", out / "crossval.json")
        return EvaluationSummary.load(out / "summary.json")
    for case_id, (label, probabilities) in files.items():
        link_or_copy(label, out / label.name)
        link_or_copy(probabilities, out / f"{case_id}.npz")
    overall, fold_results = evaluate_prediction_folder(out, references, folds, nsd_tolerance_mm, hd95, processes)
    result = CrossvalResult(
        configuration=configuration, num_cases=len(files), file_ending=references.file_ending,
        nsd_tolerance_mm=nsd_tolerance_mm, hd95=hd95,
        mean_foreground_dice=finite_or_none(overall.mean_foreground_dice),
        folds=fold_results, fold_spread=fold_spread(f.mean_foreground_dice for f in fold_results),
    )
    result.save(out / "crossval.json")
    spread = result.fold_spread
    log.info("crossval %s: mean foreground Dice %s over %d cases (folds: std %s, min %s, max %s)",
             configuration, result.mean_foreground_dice, result.num_cases, spread.std, spread.min, spread.max)
    return overall


def load_crossval_result(work: WorkDir, configuration: str) -> CrossvalResult:
    return CrossvalResult.load(crossval_dir(work, configuration) / "crossval.json")


def render_crossval(work: Path | WorkDir, configuration: str, console: Console) -> None:
    """Per-fold and overall mean foreground Dice of one configuration as a table."""
    work = work if isinstance(work, WorkDir) else WorkDir(work)
    result = load_crossval_result(work, configuration)

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    table = Table(title=f"cross-validation {configuration}")
    table.add_column("fold")
    table.add_column("cases", justify="right")
    table.add_column("mean fg Dice", justify="right")
    for fold in result.folds:
        table.add_row(str(fold.fold), str(len(fold.cases)), fmt(fold.mean_foreground_dice))
    spread = result.fold_spread
    table.add_row("[bold]all[/]", str(result.num_cases), f"[bold]{fmt(result.mean_foreground_dice)}[/]")
    console.print(table)
    console.print(f"fold spread: std {fmt(spread.std)}, min {fmt(spread.min)}, max {fmt(spread.max)}; "
                  f"results in {escape(str(crossval_dir(work, configuration)))}", highlight=False)
    console.print("Dice undefined (reference and prediction both empty) is left out of the means.", highlight=False)
