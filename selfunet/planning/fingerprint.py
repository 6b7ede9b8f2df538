"""The dataset fingerprint (docs/explanation/design.md#fingerprint): what the planner needs to know about a dataset.

One pass over the training cases, in parallel: crop each case to its non-zero region, record
shapes, spacing and label counts, and sample foreground intensities per channel. The sampling is
bounded (``max_foreground_samples`` over the whole dataset) so memory stays flat on big datasets,
and seeded per case from ``(seed, case index)``, so the result does not depend on how many
processes ran or in which order they finished.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from selfunet.data.cropping import bbox_shape, bounding_box, crop_to_bbox, nonzero_mask
from selfunet.data.dataset import CaseSpec, DatasetSpec, load_dataset, read_case_image, read_case_label
from selfunet.errors import SelfUNetError
from selfunet.planning.fingerprint_types import CaseFingerprint, ChannelIntensity, DatasetSummary, Fingerprint
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)

DEFAULT_MAX_FOREGROUND_SAMPLES = 10**8
#: below this many bytes of training files, starting worker processes (~1 s each: a fresh
#: interpreter importing numpy, scipy and SimpleITK) costs more than it saves.
POOL_MIN_BYTES = 32 * 2**20


def compute_fingerprint(
    dataset: DatasetSpec,
    processes: int = 2,
    seed: int = 1234,
    max_foreground_samples: int = DEFAULT_MAX_FOREGROUND_SAMPLES,
    pool_min_bytes: int = POOL_MIN_BYTES,
) -> Fingerprint:
    """Fingerprint every training case of ``dataset``.

    ``processes=1``, or a dataset smaller than ``pool_min_bytes`` on disk, runs in this process;
    the result is the same either way.
    """
    cases = dataset.training
    if not cases:
        raise SelfUNetError(f"{dataset.root}: the dataset has no training cases to fingerprint.")
    if max_foreground_samples < len(cases):
        raise SelfUNetError(
            f"max_foreground_samples={max_foreground_samples} is smaller than the number of training "
            f"cases ({len(cases)}); allow at least one sample per case."
        )
    per_case = max_foreground_samples // len(cases)
    jobs = [(dataset, case, index, seed, per_case) for index, case in enumerate(cases)]
    if processes > 1 and _bytes_on_disk(cases) < pool_min_bytes:
        log.debug("dataset smaller than %d bytes: fingerprinting in-process", pool_min_bytes)
        processes = 1
    results: list[tuple[CaseFingerprint, np.ndarray] | None] = [None] * len(cases)
    for index, result in _progress(_run(jobs, processes), len(cases)):
        results[index] = result

    case_fingerprints = [r[0] for r in results if r is not None]
    per_case_samples = [r[1] for r in results if r is not None and r[1].shape[1] > 0]
    samples = (np.concatenate(per_case_samples, axis=1) if per_case_samples
               else np.zeros((len(dataset.channel_names), 0)))
    # every case weighs the same, however large its foreground: the reference draws the same number
    # of voxels (with replacement) from each case, and equal weights reproduce that without the memory.
    weights = np.concatenate([np.full(s.shape[1], 1.0 / s.shape[1]) for s in per_case_samples]) if per_case_samples \
        else np.zeros(0)
    if samples.shape[1] == 0:
        raise SelfUNetError(
            f"{dataset.root}: no training case has any foreground label (> 0); nothing to learn. "
            "Check the label files with `selfunet check`."
        )
    intensity = [
        _channel_stats(channel, name, samples[channel], weights) for channel, name in enumerate(dataset.channel_names)
    ]
    relative = [
        float(np.prod(c.shape_after_crop)) / float(np.prod(c.shape_before_crop)) for c in case_fingerprints
    ]
    return Fingerprint(
        dataset=DatasetSummary(**dataset.summary()),
        cases=case_fingerprints,
        intensity=intensity,
        median_relative_size_after_crop=float(np.median(relative)),
        max_foreground_samples=max_foreground_samples,
        seed=seed,
    )


def run_fingerprint(dataset_root: Path, work: Path, processes: int = 2, seed: int = 1234) -> Fingerprint:
    """The ``selfunet fingerprint`` command: parse the dataset, fingerprint it, save WORK/fingerprint.json."""
    dataset = load_dataset(dataset_root)
    fingerprint = compute_fingerprint(dataset, processes=processes, seed=seed)
    target = WorkDir(Path(work)).fingerprint
    fingerprint.save(target)
    log.info(
        "fingerprint of %d cases written to %s (median relative size after crop %.3f)",
        len(fingerprint.cases),
        target,
        fingerprint.median_relative_size_after_crop,
    )
    return fingerprint


def fingerprint_case(
    dataset: DatasetSpec, case: CaseSpec, index: int, seed: int, max_samples: int
) -> tuple[CaseFingerprint, np.ndarray]:
    """One case's fingerprint and its foreground intensity samples ``(C, n)`` (float32)."""
    try:
        return _fingerprint_case(dataset, case, index, seed, max_samples)
    except SelfUNetError:
        raise
    except Exception as exc:  # anything unexpected still names the case and its files
        files = ", ".join(str(p) for p in (*case.images, case.label) if p is not None)
        raise SelfUNetError(f"case '{case.case_id}' ({files}): fingerprinting failed: {exc!r}") from exc


def _fingerprint_case(
    dataset: DatasetSpec, case: CaseSpec, index: int, seed: int, max_samples: int
) -> tuple[CaseFingerprint, np.ndarray]:
    image, geometry = read_case_image(dataset, case)
    label, label_geometry = read_case_label(case)
    if label_geometry.shape != geometry.shape:
        raise SelfUNetError(
            f"case '{case.case_id}': label {case.label} has shape {label_geometry.shape}, the image "
            f"{case.images[0]} {geometry.shape}; they must share one grid (run `selfunet check`)."
        )
    bbox = bounding_box(nonzero_mask(image))
    image = crop_to_bbox(image, bbox)
    label = crop_to_bbox(label, bbox)

    values, counts = np.unique(label, return_counts=True)
    unknown = [v for v in values.tolist() if v not in dataset.labels]
    if unknown:
        raise SelfUNetError(
            f"case '{case.case_id}': label file {case.label} holds value(s) {unknown} that dataset.json "
            f"does not declare (labels: {sorted(dataset.labels)}); run `selfunet check`."
        )
    label_counts = {str(v): 0 for v in sorted(dataset.labels)}
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        label_counts[str(int(value))] = int(count)

    foreground = np.flatnonzero(label.ravel() > 0)
    if len(foreground) > max_samples:
        rng = np.random.default_rng([seed, index])
        foreground = np.sort(rng.choice(foreground, size=max_samples, replace=False))
    samples = image.reshape(image.shape[0], -1)[:, foreground].astype(np.float32)

    return (
        CaseFingerprint(
            case_id=case.case_id,
            shape_before_crop=list(geometry.shape),
            shape_after_crop=bbox_shape(bbox),
            crop_bbox=bbox,
            spacing=list(geometry.spacing),
            label_voxel_counts=label_counts,
        ),
        samples,
    )


def _bytes_on_disk(cases: tuple[CaseSpec, ...]) -> int:
    paths = [p for case in cases for p in (*case.images, case.label) if p is not None]
    return sum(p.stat().st_size for p in paths if p.is_file())


def _channel_stats(channel: int, modality: str, values: np.ndarray, weights: np.ndarray) -> ChannelIntensity:
    """Weighted statistics (each case's samples sum to weight 1), so a case with a large foreground
    does not dominate; percentiles interpolate the weighted empirical distribution."""
    values = values.astype(np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_weights = values[order], weights[order]
    total = sorted_weights.sum()
    cdf = (np.cumsum(sorted_weights) - 0.5 * sorted_weights) / total
    low, median, high = np.interp([0.005, 0.5, 0.995], cdf, sorted_values)
    mean = float(np.sum(sorted_weights * sorted_values) / total)
    std = float(np.sqrt(np.sum(sorted_weights * (sorted_values - mean) ** 2) / total))
    return ChannelIntensity(
        channel=channel,
        modality=modality,
        mean=mean,
        std=std,
        median=float(median),
        min=float(sorted_values[0]),
        max=float(sorted_values[-1]),
        percentile_00_5=float(low),
        percentile_99_5=float(high),
        num_samples=int(values.size),
    )


def _job(args: tuple) -> tuple[int, tuple[CaseFingerprint, np.ndarray]]:
    dataset, case, index, seed, max_samples = args
    return index, fingerprint_case(dataset, case, index, seed, max_samples)


def _run(jobs: list[tuple], processes: int) -> Iterator[tuple[int, tuple[CaseFingerprint, np.ndarray]]]:
    if processes <= 1 or len(jobs) == 1:
        yield from map(_job, jobs)
        return
    # spawn, not fork: the caller may already hold threads (torch, BLAS) that a fork would copy
    # in a locked state.
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(processes, len(jobs))) as pool:
        yield from pool.imap_unordered(_job, jobs)


def _progress(results: Iterator, total: int) -> Iterator:
    with Progress(
        TextColumn("fingerprint"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("cases", total=total)
        for item in results:
            yield item
            progress.advance(task)
