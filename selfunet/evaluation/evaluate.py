"""Evaluation (SPEC section 5): per case and class TP/FP/FN, Dice, IoU, NSD and HD95 in mm.

The empty-mask rules are applied explicitly, in one place (:func:`evaluate_arrays`), and written
into every table as :data:`EMPTY_MASK_RULE`:

* reference and prediction both empty: Dice, IoU, NSD and HD95 are undefined (NaN) and left out
  of every mean; the case still appears in the per-case table;
* exactly one side empty: Dice = IoU = 0, NSD = 0, and HD95 = the worst case, defined as the
  image diagonal in mm (:func:`selfunet.evaluation.surface.image_diagonal_mm`); it is counted in the mean
  and flagged in the per-case table, never dropped.

Spacing is in array order (as :func:`selfunet.data.io.read_image` returns it) and is taken from the
*reference* header; a prediction on a different grid is an error, not something to resample.
Surface definitions (connectivity, distances) are in :mod:`selfunet.evaluation.surface`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from selfunet.artifacts import Artifact, atomic_write_text
from selfunet.data.io import SUPPORTED_ENDINGS, read_image, strip_ending
from selfunet.data.io import file_ending as ending_of
from selfunet.errors import SelfUNetError
from selfunet.evaluation.surface import image_diagonal_mm, surface_distances

log = logging.getLogger(__name__)

EMPTY_MASK_RULE = (
    "Reference and prediction both empty: Dice, IoU, NSD and HD95 are undefined (NaN) and left out "
    "of the means. Exactly one side empty: Dice = IoU = NSD = 0 and HD95 = the worst case, the image "
    "diagonal in mm; these count in the means."
)

#: the metrics every evaluation reports, in table order; NSD and HD95 follow when asked.
BASE_METRICS: tuple[str, ...] = ("dice", "iou", "tp", "fp", "fn")


@dataclass(frozen=True)
class ClassMetrics:
    """The metrics of one class in one case."""

    tp: int
    fp: int
    fn: int
    dice: float
    """2TP/(2TP+FP+FN); NaN when reference and prediction are both empty."""
    iou: float
    """TP/(TP+FP+FN); NaN when both are empty."""
    reference_empty: bool
    prediction_empty: bool
    nsd: float | None = None
    """normalized surface Dice at the tolerance; None when not asked."""
    hd95: float | None = None
    """mm; None when not asked."""

    @property
    def one_side_empty(self) -> bool:
        return self.reference_empty != self.prediction_empty


def _validate_inputs(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], ignore_mask: np.ndarray | None
) -> tuple[float, ...]:
    if prediction.shape != reference.shape:
        raise SelfUNetError(
            f"prediction shape {prediction.shape} differs from reference shape {reference.shape}; "
            "predictions must be on the reference image grid."
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != reference.ndim:
        raise SelfUNetError(f"spacing {spacing} has {len(spacing)} values for a {reference.ndim}D label map.")
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise SelfUNetError(f"spacing {spacing}: every voxel size must be a positive number of mm.")
    if ignore_mask is not None and ignore_mask.shape != reference.shape:
        raise SelfUNetError(f"ignore_mask shape {ignore_mask.shape} differs from the label map's {reference.shape}.")
    return spacing


def evaluate_arrays(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    nsd_tolerance_mm: float | None = None,
    hd95: bool = False,
    ignore_mask: np.ndarray | None = None,
) -> dict[int, ClassMetrics]:
    """Metrics of each label in ``labels`` for one case (label maps on one grid, array order).

    ``ignore_mask`` (True = ignore) removes voxels from both label maps before anything is
    counted, e.g. the ``-1`` region outside a body mask; surfaces are those of the remaining masks.
    """
    spacing = _validate_inputs(prediction, reference, spacing, ignore_mask)
    if nsd_tolerance_mm is not None and not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise SelfUNetError(f"NSD tolerance must be a number of mm >= 0, got {nsd_tolerance_mm}.")
    keep = None if ignore_mask is None else ~np.asarray(ignore_mask, dtype=bool)
    surfaces = nsd_tolerance_mm is not None or hd95
    worst_hd95 = image_diagonal_mm(reference.shape, spacing)
    results: dict[int, ClassMetrics] = {}
    for label in labels:
        pred, ref = prediction == label, reference == label
        if keep is not None:
            pred &= keep
            ref &= keep
        n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
        tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
        fp, fn = n_pred - tp, n_ref - tp
        both_empty = n_pred == 0 and n_ref == 0
        dice = math.nan if both_empty else 2 * tp / (2 * tp + fp + fn)
        iou = math.nan if both_empty else tp / (tp + fp + fn)
        nsd_value: float | None = None
        hd95_value: float | None = None
        if surfaces:
            if both_empty:
                nsd_value, hd95_value = math.nan, math.nan
            elif n_pred == 0 or n_ref == 0:
                nsd_value, hd95_value = 0.0, worst_hd95
            else:
                distances = surface_distances(pred, ref, spacing)
                nsd_value = distances.nsd(nsd_tolerance_mm) if nsd_tolerance_mm is not None else None
                hd95_value = distances.hd95() if hd95 else None
            if nsd_tolerance_mm is None:
                nsd_value = None
            if not hd95:
                hd95_value = None
        results[int(label)] = ClassMetrics(
            tp=tp, fp=fp, fn=fn, dice=dice, iou=iou, reference_empty=n_ref == 0, prediction_empty=n_pred == 0,
            nsd=nsd_value, hd95=hd95_value,
        )
    return results


# --------------------------------------------------------------------------------------------
# JSON-able twins and the summary artifact


class ClassMetricsModel(BaseModel):
    """JSON twin of :class:`ClassMetrics` (NaN is written as the JSON constant ``NaN``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    tp: int
    fp: int
    fn: int
    dice: float
    iou: float
    reference_empty: bool
    prediction_empty: bool
    nsd: float | None = None
    hd95: float | None = None

    @classmethod
    def of(cls, metrics: ClassMetrics) -> ClassMetricsModel:
        return cls(**{name: getattr(metrics, name) for name in cls.model_fields})

    def to_metrics(self) -> ClassMetrics:
        return ClassMetrics(**self.model_dump())


class CaseMetrics(BaseModel):
    """All classes of one case; ``classes`` is keyed by the label value as a string (``"1"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    case_id: str
    classes: dict[str, ClassMetricsModel]
    prediction_file: str | None = None
    reference_file: str | None = None
    worst_case_hd95_mm: float | None = None
    """the image diagonal, used as HD95 where exactly one side is empty."""

    @classmethod
    def of(cls, case_id: str, metrics: dict[int, ClassMetrics], **extra: object) -> CaseMetrics:
        return cls(case_id=case_id, classes={str(k): ClassMetricsModel.of(v) for k, v in metrics.items()}, **extra)


class EvaluationSummary(Artifact):
    """``summary.json``: per-case metrics, per-class means and the mean foreground Dice.

    Keys of ``labels``, ``mean`` and ``counts`` are label values as strings; ``mean`` leaves NaNs
    out (see :data:`EMPTY_MASK_RULE`), so a class whose every case is empty on both sides has a
    NaN mean Dice.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")
    PRODUCED_BY = "`selfunet evaluate PRED_DIR REF_DIR`"

    labels: dict[str, str]
    nsd_tolerance_mm: float | None
    hd95: bool
    empty_mask_rule: str
    per_case: list[CaseMetrics]
    mean: dict[str, dict[str, float]]
    mean_foreground_dice: float
    mean_foreground: dict[str, float] = Field(default_factory=dict)
    """mean over foreground classes of each per-class mean metric (Dice, IoU, NSD, HD95)."""
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    """per class: ``cases``, ``both_empty`` (Dice undefined), ``one_side_empty`` (HD95 worst case)."""


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def metric_names(nsd_tolerance_mm: float | None, hd95: bool) -> tuple[str, ...]:
    return BASE_METRICS + (("nsd",) if nsd_tolerance_mm is not None else ()) + (("hd95",) if hd95 else ())


def summarize(
    per_case: Sequence[CaseMetrics], labels: dict[int, str], nsd_tolerance_mm: float | None = None, hd95: bool = False
) -> EvaluationSummary:
    """Per-class means over cases (NaNs left out) and the mean foreground Dice."""
    # one fixed order, so float sums (and thus the JSON) do not depend on which worker finished first
    per_case = sorted(per_case, key=lambda c: c.case_id)
    names = metric_names(nsd_tolerance_mm, hd95)
    mean: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for label in sorted(labels):
        key = str(label)
        rows = [case.classes[key] for case in per_case if key in case.classes]
        mean[key] = {name: _nanmean([float(getattr(r, name)) for r in rows if getattr(r, name) is not None])
                     for name in names}
        counts[key] = {
            "cases": len(rows),
            "both_empty": sum(r.reference_empty and r.prediction_empty for r in rows),
            "one_side_empty": sum(r.reference_empty != r.prediction_empty for r in rows),
        }
    foreground = [str(label) for label in sorted(labels) if label > 0]
    mean_foreground = {
        name: _nanmean([mean[key][name] for key in foreground])
        for name in names if name in ("dice", "iou", "nsd", "hd95")
    }
    return EvaluationSummary(
        labels={str(k): v for k, v in sorted(labels.items())},
        nsd_tolerance_mm=nsd_tolerance_mm,
        hd95=hd95,
        empty_mask_rule=EMPTY_MASK_RULE,
        per_case=per_case,
        mean=mean,
        mean_foreground_dice=mean_foreground.get("dice", math.nan),
        mean_foreground=mean_foreground,
        counts=counts,
    )


# --------------------------------------------------------------------------------------------
# folders


def _reference_files(reference_dir: Path, file_ending: str | None) -> dict[str, Path]:
    if not reference_dir.is_dir():
        raise SelfUNetError(f"{reference_dir}: reference folder not found.")
    found: dict[str, Path] = {}
    for path in sorted(reference_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        name = path.name.lower()
        if file_ending is not None:
            if not name.endswith(file_ending.lower()):
                continue
            found[path.name[: -len(file_ending)]] = path
        elif name.endswith(SUPPORTED_ENDINGS):
            found[strip_ending(path)] = path
    return found


def _prediction_file(prediction_dir: Path, case_id: str, reference: Path, file_ending: str | None) -> Path | None:
    endings = [file_ending] if file_ending else [ending_of(reference), *SUPPORTED_ENDINGS]
    for ending in dict.fromkeys(endings):
        candidate = prediction_dir / f"{case_id}{ending}"
        if candidate.is_file():
            return candidate
    return None


def find_case_pairs(
    prediction_dir: Path, reference_dir: Path, case_ids: Sequence[str] | None = None, file_ending: str | None = None
) -> list[tuple[str, Path, Path]]:
    """``(case_id, prediction, reference)`` for every reference case (or each of ``case_ids``).

    Every missing file is reported in one error: a run with a missing prediction must not yield
    a mean that silently covers fewer cases.
    """
    prediction_dir, reference_dir = Path(prediction_dir), Path(reference_dir)
    if not prediction_dir.is_dir():
        raise SelfUNetError(f"{prediction_dir}: prediction folder not found.")
    references = _reference_files(reference_dir, file_ending)
    wanted = sorted(references) if case_ids is None else list(dict.fromkeys(case_ids))
    if not wanted:
        raise SelfUNetError(f"{reference_dir}: no reference label files ({', '.join(SUPPORTED_ENDINGS)}) found.")
    pairs, problems = [], []
    for case_id in wanted:
        reference = references.get(case_id)
        if reference is None:
            problems.append(f"case '{case_id}': no reference file {reference_dir / case_id}{file_ending or '.*'}")
            continue
        prediction = _prediction_file(prediction_dir, case_id, reference, file_ending)
        if prediction is None:
            expected = prediction_dir / f"{case_id}{file_ending or ending_of(reference)}"
            problems.append(f"case '{case_id}': prediction {expected} is missing (reference {reference})")
            continue
        pairs.append((case_id, prediction, reference))
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise SelfUNetError(f"{len(problems)} case(s) cannot be evaluated: {shown}. Predict the missing cases first.")
    return pairs


def _read_label_map(path: Path, case_id: str) -> tuple[np.ndarray, tuple[float, ...]]:
    array, geometry = read_image(path)
    if array.shape[0] != 1:
        raise SelfUNetError(f"case '{case_id}': {path} has {array.shape[0]} channels; a label map has one.")
    if geometry.ndim_on_disk == 2:
        return array[0, 0], tuple(geometry.spacing[1:])
    return array[0], tuple(geometry.spacing)


def evaluate_case_files(
    case_id: str, prediction_file: Path, reference_file: Path, labels: Sequence[int],
    nsd_tolerance_mm: float | None = None, hd95: bool = False,
) -> CaseMetrics:
    """Read one prediction/reference pair, check they share a grid, and evaluate it."""
    reference, spacing = _read_label_map(reference_file, case_id)
    prediction, prediction_spacing = _read_label_map(prediction_file, case_id)
    if prediction.shape != reference.shape:
        raise SelfUNetError(
            f"case '{case_id}': prediction {prediction_file} has shape {prediction.shape}, reference "
            f"{reference_file} {reference.shape}; predictions must be exported on the reference grid."
        )
    if not np.allclose(prediction_spacing, spacing, rtol=1e-4, atol=1e-6):
        raise SelfUNetError(
            f"case '{case_id}': prediction {prediction_file} has spacing {prediction_spacing}, reference "
            f"{reference_file} {spacing}; predictions must be exported with the reference header."
        )
    metrics = evaluate_arrays(prediction, reference, labels, spacing, nsd_tolerance_mm, hd95)
    return CaseMetrics.of(
        case_id, metrics, prediction_file=str(prediction_file), reference_file=str(reference_file),
        worst_case_hd95_mm=image_diagonal_mm(reference.shape, spacing),
    )


def _job(args: tuple) -> CaseMetrics:
    return evaluate_case_files(*args)


def _run(jobs: list[tuple], processes: int) -> Iterator[CaseMetrics]:
    if processes <= 1 or len(jobs) <= 1:
        yield from map(_job, jobs)
        return
    # spawn, not fork: the caller may hold torch/BLAS threads that a fork would copy locked.
    with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
        yield from pool.imap_unordered(_job, jobs)


def evaluate_folders(
    prediction_dir: Path,
    reference_dir: Path,
    labels: dict[int, str],
    nsd_tolerance_mm: float | None = None,
    hd95: bool = False,
    processes: int = 1,
    case_ids: Sequence[str] | None = None,
    file_ending: str | None = None,
    console: Console | None = None,
) -> EvaluationSummary:
    """Evaluate every reference case (or ``case_ids``) against the same-named prediction file."""
    if not labels:
        raise SelfUNetError("no labels to evaluate; pass the label values (e.g. --labels 1,2) or a dataset.")
    pairs = find_case_pairs(Path(prediction_dir), Path(reference_dir), case_ids, file_ending)
    label_values = sorted(labels)
    jobs = [(cid, pred, ref, label_values, nsd_tolerance_mm, hd95) for cid, pred, ref in pairs]
    per_case: list[CaseMetrics] = []
    with Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("cases", total=len(jobs))
        for case in _run(jobs, processes):
            per_case.append(case)
            progress.advance(task)
    log.info("evaluated %d case(s) from %s", len(per_case), prediction_dir)
    return summarize(per_case, labels, nsd_tolerance_mm, hd95)


# --------------------------------------------------------------------------------------------
# output

CSV_COLUMNS = ("case_id", "label", "name", "tp", "fp", "fn", "dice", "iou", "nsd", "hd95",
               "reference_empty", "prediction_empty", "note")


def _note(row: ClassMetricsModel, hd95: bool) -> str:
    if row.reference_empty and row.prediction_empty:
        return "both empty: metrics undefined (NaN), left out of means"
    if row.reference_empty != row.prediction_empty:
        side = "reference" if row.reference_empty else "prediction"
        worst = "; HD95 = worst case (image diagonal)" if hd95 else ""
        return f"{side} empty: Dice 0, NSD 0{worst}"
    return ""


def per_case_csv(summary: EvaluationSummary) -> str:
    """One row per case x class; undefined values are ``nan``, metrics not asked for are empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case in summary.per_case:
        for key, row in sorted(case.classes.items(), key=lambda kv: int(kv[0])):
            writer.writerow([
                case.case_id, key, summary.labels.get(key, key), row.tp, row.fp, row.fn,
                repr(row.dice), repr(row.iou),
                "" if row.nsd is None else repr(row.nsd), "" if row.hd95 is None else repr(row.hd95),
                row.reference_empty, row.prediction_empty, _note(row, summary.hd95),
            ])
    return buffer.getvalue()


def write_evaluation(summary: EvaluationSummary, out_dir: Path) -> None:
    """``summary.json`` and ``per_case.csv`` into ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    summary.save(out_dir / "summary.json")
    atomic_write_text(out_dir / "per_case.csv", per_case_csv(summary))


def _fmt(value: float, digits: int = 3) -> str:
    return "NaN" if math.isnan(value) else f"{value:.{digits}f}"


def render_summary(summary: EvaluationSummary, console: Console) -> None:
    """Per-class means as a table, with the empty-mask rule printed under it."""
    units = []
    if summary.nsd_tolerance_mm is not None:
        units.append(f"NSD at {summary.nsd_tolerance_mm:g} mm")
    if summary.hd95:
        units.append("HD95 in mm")
    table = Table(title=f"evaluation of {len(summary.per_case)} case(s): per-class means over cases",
                  caption="; ".join(units) or None, box=box.SIMPLE_HEAD)
    table.add_column("class", no_wrap=True)
    table.add_column("cases", justify="right")
    table.add_column("Dice", justify="right")
    table.add_column("IoU", justify="right")
    if summary.nsd_tolerance_mm is not None:
        table.add_column("NSD", justify="right")
    if summary.hd95:
        table.add_column("HD95", justify="right")
    table.add_column("both empty", justify="right")
    table.add_column("one empty", justify="right")
    for key, name in summary.labels.items():
        mean, count = summary.mean.get(key, {}), summary.counts.get(key, {})
        cells = [f"{key}: {name}", str(count.get("cases", "")), _fmt(mean.get("dice", math.nan)),
                 _fmt(mean.get("iou", math.nan))]
        if summary.nsd_tolerance_mm is not None:
            cells.append(_fmt(mean.get("nsd", math.nan)))
        if summary.hd95:
            cells.append(_fmt(mean.get("hd95", math.nan), 2))
        cells += [str(count.get("both_empty", "")), str(count.get("one_side_empty", ""))]
        table.add_row(*cells)
    fg = summary.mean_foreground
    cells = ["mean foreground", "", _fmt(summary.mean_foreground_dice), _fmt(fg.get("iou", math.nan))]
    if summary.nsd_tolerance_mm is not None:
        cells.append(_fmt(fg.get("nsd", math.nan)))
    if summary.hd95:
        cells.append(_fmt(fg.get("hd95", math.nan), 2))
    table.add_row(*cells, "", "", style="bold", end_section=True)
    console.print(table)
    console.print(f"Empty-mask rule: {summary.empty_mask_rule}", highlight=False)


# --------------------------------------------------------------------------------------------
# command


def parse_labels(text: str) -> dict[int, str]:
    """``"1,2"`` or ``"1:liver,2:tumour"`` -> ``{1: "liver", 2: "tumour"}`` (unnamed: the value)."""
    labels: dict[int, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        value, _, name = item.partition(":")
        try:
            labels[int(value)] = name.strip() or value.strip()
        except ValueError as exc:
            raise SelfUNetError(
                f"--labels: {item!r} is not a label value; write e.g. '1,2' or '1:liver,2:tumour'."
            ) from exc
    if not labels:
        raise SelfUNetError("--labels is empty; write e.g. '1,2' or '1:liver,2:tumour'.")
    return labels


def resolve_labels(labels: str | None, dataset: Path | None, reference_dir: Path) -> dict[int, str]:
    """The classes to evaluate: ``--labels``, else the foreground of ``--dataset``'s dataset.json,
    else of the dataset.json next to the reference folder (``DATASET/labelsTr``)."""
    from selfunet.data.dataset import load_dataset

    if labels is not None and dataset is not None:
        raise SelfUNetError("give either --labels or --dataset, not both.")
    if labels is not None:
        return parse_labels(labels)
    if dataset is None:
        if not (Path(reference_dir).parent / "dataset.json").is_file():
            raise SelfUNetError(
                f"which labels? {reference_dir} is not inside a dataset folder with a dataset.json; "
                "pass --labels 1,2 or --dataset DATASET."
            )
        dataset = Path(reference_dir).parent
    spec = load_dataset(dataset)
    return {value: name for value, name in spec.labels.items() if value > 0}


def run_evaluate(
    prediction_dir: Path, reference_dir: Path, out_dir: Path | None = None, labels: str | None = None,
    dataset: Path | None = None, nsd_tolerance_mm: float | None = None, hd95: bool = False,
    processes: int = 1, console: Console | None = None, table_console: Console | None = None,
) -> EvaluationSummary:
    """What ``selfunet evaluate`` does: evaluate, write summary.json + per_case.csv, print the table."""
    label_map = resolve_labels(labels, dataset, reference_dir)
    summary = evaluate_folders(prediction_dir, reference_dir, label_map, nsd_tolerance_mm, hd95, processes,
                               console=console)
    out_dir = Path(out_dir) if out_dir is not None else Path(prediction_dir)
    write_evaluation(summary, out_dir)
    render_summary(summary, table_console or Console())
    (console or Console(stderr=True)).print(f"wrote {out_dir / 'summary.json'} and {out_dir / 'per_case.csv'}")
    return summary
