"""``selfunet evaluate``: score a folder of predictions against a folder of references.

Pairs files by case id, reads each pair (checking they share a grid: a prediction on a different
grid is an error, not something to resample; spacing comes from the *reference* header), scores
it with :func:`selfunet.evaluation.metrics.evaluate_arrays` (in worker processes when asked) and
writes the summary of :mod:`selfunet.evaluation.summary`.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from selfunet.data.io import SUPPORTED_ENDINGS, read_image, strip_ending
from selfunet.data.io import file_ending as ending_of
from selfunet.errors import SelfUNetError
from selfunet.evaluation.metrics import evaluate_arrays
from selfunet.evaluation.summary import CaseMetrics, EvaluationSummary, render_summary, summarize, write_evaluation
from selfunet.evaluation.surface import image_diagonal_mm

log = logging.getLogger(__name__)


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
    regions: Mapping[int, Sequence[int]] | None = None, ignore_label: int | None = None,
) -> CaseMetrics:
    """Read one prediction/reference pair, check they share a grid, and evaluate it.

    ``regions``: key -> label values for region-based datasets; ``ignore_label``: reference voxels
    with this value count nowhere (sparse annotation)."""
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
    ignore_mask = None if ignore_label is None else reference == ignore_label
    metrics = evaluate_arrays(prediction, reference, labels, spacing, nsd_tolerance_mm, hd95, ignore_mask, regions)
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
    regions: Mapping[int, Sequence[int]] | None = None,
    ignore_label: int | None = None,
) -> EvaluationSummary:
    """Evaluate every reference case (or ``case_ids``) against the same-named prediction file.

    ``labels`` maps each evaluated key to its name; for region-based datasets the keys are region
    numbers and ``regions`` gives their label values (:meth:`LabelScheme.evaluation_classes`)."""
    if not labels:
        raise SelfUNetError("no labels to evaluate; pass the label values (e.g. --labels 1,2) or a dataset.")
    pairs = find_case_pairs(Path(prediction_dir), Path(reference_dir), case_ids, file_ending)
    label_values = sorted(labels)
    region_values = None if regions is None else {int(k): tuple(v) for k, v in regions.items()}
    jobs = [(cid, pred, ref, label_values, nsd_tolerance_mm, hd95, region_values, ignore_label)
            for cid, pred, ref in pairs]
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
    return resolve_evaluation(labels, dataset, reference_dir)[0]


def resolve_evaluation(
    labels: str | None, dataset: Path | None, reference_dir: Path
) -> tuple[dict[int, str], dict[int, tuple[int, ...]] | None, int | None]:
    """``(key -> name, key -> label values of a region or None, ignore label or None)``: what
    :func:`resolve_labels` finds, with the dataset's regions and ignore label (from a dataset)."""
    from selfunet.data.dataset import load_dataset

    if labels is not None and dataset is not None:
        raise SelfUNetError("give either --labels or --dataset, not both.")
    if labels is not None:
        return parse_labels(labels), None, None
    if dataset is None:
        if not (Path(reference_dir).parent / "dataset.json").is_file():
            raise SelfUNetError(
                f"which labels? {reference_dir} is not inside a dataset folder with a dataset.json; "
                "pass --labels 1,2 or --dataset DATASET."
            )
        dataset = Path(reference_dir).parent
    spec = load_dataset(dataset)
    scheme = spec.label_scheme
    names, members = scheme.evaluation_classes(spec.labels)
    return names, (members if scheme.has_regions else None), scheme.ignore_label


def run_evaluate(
    prediction_dir: Path, reference_dir: Path, out_dir: Path | None = None, labels: str | None = None,
    dataset: Path | None = None, nsd_tolerance_mm: float | None = None, hd95: bool = False,
    processes: int = 1, console: Console | None = None, table_console: Console | None = None,
) -> EvaluationSummary:
    """What ``selfunet evaluate`` does: evaluate, write summary.json + per_case.csv, print the table."""
    label_map, regions, ignore_label = resolve_evaluation(labels, dataset, reference_dir)
    summary = evaluate_folders(prediction_dir, reference_dir, label_map, nsd_tolerance_mm, hd95, processes,
                               console=console, regions=regions, ignore_label=ignore_label)
    out_dir = Path(out_dir) if out_dir is not None else Path(prediction_dir)
    write_evaluation(summary, out_dir)
    render_summary(summary, table_console or Console())
    (console or Console(stderr=True)).print(escape(f"wrote {out_dir / 'summary.json'} and {out_dir / 'per_case.csv'}"),
                                            highlight=False)
    return summary
