"""``selfunet check``: find every problem of a dataset in one run, before hours of training.

Every later stage trusts its input: the fingerprint averages spacings, the preprocessor crops the
label with the image, the trainer samples foreground from the label. A shifted label header or an
undeclared label value does not crash them, it silently trains a worse model. So this module opens
every file once, compares what the files say with what ``dataset.json`` says, and collects *all*
problems (never stopping at the first), each naming the case, the file and what to do about it.

Bad data never raises here: a broken ``dataset.json`` becomes one error :class:`Problem`, and a
file SimpleITK cannot read becomes one error for that file while the other cases are still checked.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from selfunet.data.check_case import (
    DIRECTION_ATOL,
    ORIGIN_ATOL_MM,
    ORIGIN_VOXEL_FRACTION,
    SPACING_RTOL,
    CaseJob,
    CaseResult,
    Problem,
    Severity,
    check_case,
)
from selfunet.data.dataset import CaseSpec, DatasetSpec, load_dataset
from selfunet.data.io import SUPPORTED_ENDINGS
from selfunet.errors import SelfUNetError

__all__ = [
    "DIRECTION_ATOL",
    "ORIGIN_ATOL_MM",
    "ORIGIN_VOXEL_FRACTION",
    "SPACING_RTOL",
    "CheckReport",
    "Problem",
    "Severity",
    "check_dataset",
    "render_report",
]

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    dataset_root: Path
    problems: list[Problem] = field(default_factory=list)
    cases_checked: int = 0
    """training plus test cases whose files were opened."""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


# ---------------------------------------------------------------------------------------------
# the dataset as a whole


def _dataset_json_problem(root: Path, exc: SelfUNetError) -> Problem:
    if not root.is_dir():
        return Problem("error", None, root, str(exc), "pass the folder that holds dataset.json")
    descriptor = root / "dataset.json"
    if not descriptor.is_file():
        return Problem(
            "error", None, descriptor, str(exc),
            "add a dataset.json (MSD: modality, labels, training, test; "
            "nnU-Net v2: channel_names, labels, file_ending)",
        )
    return Problem(
        "error", None, descriptor, f"dataset.json cannot be used: {exc}",
        "edit dataset.json (MSD: modality, labels, training, test; "
        "nnU-Net v2: channel_names, labels, file_ending); no case can be checked before",
    )


def _image_files(folder: Path) -> list[Path]:
    """Visible image files of a folder (macOS ``._`` resource forks and temp files are hidden)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(SUPPORTED_ENDINGS)
    )


def _msd_problems(spec: DatasetSpec) -> tuple[list[Problem], list[CaseSpec]]:
    """Duplicate ids and unreferenced files; returns the problems and the distinct training cases."""
    problems: list[Problem] = []
    by_id: dict[str, list[tuple[int, CaseSpec]]] = defaultdict(list)
    for i, case in enumerate(spec.training):
        by_id[case.case_id].append((i, case))
    distinct: list[CaseSpec] = []
    seen: set[tuple[tuple[Path, ...], Path | None]] = set()
    for case in spec.training:
        key = (case.images, case.label)
        if key not in seen:
            seen.add(key)
            distinct.append(case)
    for cid, entries in by_id.items():
        if len(entries) < 2:
            continue
        indices = ", ".join(str(i) for i, _ in entries)
        images = {c.images[0] for _, c in entries}
        if len(images) == 1:
            problems.append(
                Problem(
                    "error", cid, entries[0][1].images[0],
                    f"the same image is listed {len(entries)} times in 'training' (entries {indices})",
                    "remove the repeated entries from dataset.json 'training'",
                )
            )
        else:
            files = ", ".join(str(_relative(p, spec.root)) for p in sorted(images))
            problems.append(
                Problem(
                    "error", cid, entries[0][1].images[0],
                    f"case id '{cid}' is used by {len(entries)} training entries ({indices}) whose image "
                    f"files share a name: {files}",
                    "rename the files so every case has its own file name (the case id)",
                )
            )
    test_ids: dict[str, list[Path]] = defaultdict(list)
    for case in spec.test:
        test_ids[case.case_id].append(case.images[0])
    for cid, paths in test_ids.items():
        if len(paths) > 1:
            problems.append(
                Problem("error", cid, paths[0], f"test case id '{cid}' is listed {len(paths)} times in 'test'",
                        "list each test image once, with a unique file name")
            )
    referenced = {p for c in spec.training for p in c.images} | {c.label for c in spec.training}
    referenced |= {p for c in spec.test for p in c.images}
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        for path in _image_files(spec.root / folder):
            if path.resolve() not in referenced:
                key = "test" if folder == "imagesTs" else "training"
                problems.append(
                    Problem(
                        "warning", None, path,
                        f"{folder}/{path.name} is not referenced by dataset.json '{key}' and is ignored",
                        f"add it to '{key}' in dataset.json, or move it out of {folder}",
                    )
                )
    return problems, distinct


def _nnunetv2_problems(spec: DatasetSpec) -> list[Problem]:
    """Channel files beyond the declared channels, stray names, and ``numTraining``."""
    problems: list[Problem] = []
    n = spec.num_channels
    ending = spec.file_ending
    for folder, cases in (("imagesTr", spec.training), ("imagesTs", spec.test)):
        ids = {c.case_id for c in cases}
        for path in _image_files(spec.root / folder):
            if not path.name.endswith(ending):
                continue
            stem = path.name[: -len(ending)]
            if not (len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit()):
                problems.append(
                    Problem("warning", None, path,
                            f"{folder}/{path.name} has no _XXXX channel suffix and is ignored",
                            f"rename it to <case>_0000{ending} (channel 0), or move it away")
                )
            elif int(stem[-4:]) >= n and stem[:-5] in ids:
                problems.append(
                    Problem(
                        "error", stem[:-5], path,
                        f"channel file _{stem[-4:]} found, but dataset.json 'channel_names' declares "
                        f"{n} channel(s) (_0000.._{n - 1:04d})",
                        "declare the channel in 'channel_names', or remove the file",
                    )
                )
    try:
        raw = json.loads((spec.root / "dataset.json").read_text())
        declared = raw.get("numTraining")
    except (OSError, ValueError):
        declared = None
    if isinstance(declared, int) and declared != len(spec.training):
        problems.append(
            Problem(
                "warning", None, spec.root / "dataset.json",
                f"'numTraining' says {declared}, but {len(spec.training)} training cases were found",
                "set 'numTraining' to the number of cases in imagesTr/labelsTr",
            )
        )
    return problems


def _mixed_dimensionality(results: list[CaseResult]) -> list[Problem]:
    by_ndim: dict[int, list[CaseResult]] = defaultdict(list)
    for r in results:
        if r.ndim_on_disk is not None:
            by_ndim[r.ndim_on_disk].append(r)
    if len(by_ndim) < 2:
        return []
    majority = max(by_ndim, key=lambda d: (len(by_ndim[d]), d))
    problems = []
    for ndim, members in sorted(by_ndim.items()):
        if ndim == majority:
            continue
        for r in members:
            problems.append(
                Problem(
                    "error", r.case_id, r.image_file,
                    f"image is {ndim}D while {len(by_ndim[majority])} other case(s) are {majority}D; "
                    "a dataset must be all 2D or all 3D",
                    f"convert this case to {majority}D, or remove it from the dataset",
                )
            )
    return problems


def _resampling_problems(results: list[CaseResult]) -> list[Problem]:
    """Cases that preprocessing would refuse: resampled to the dataset's median spacing (what the
    planner targets), their size would pass the image bound. One such spacing (1000 mm where the
    others have 1) is a broken header; reported here, before hours of planning."""
    import math

    from selfunet.data.header import ENV_MAX_VOXELS, image_bounds

    cases = [r for r in results if r.kind == "training" and r.geometry is not None and r.geometry.ndim_on_disk == 3]
    if not cases:
        return []
    median = [float(v) for v in np.median([r.geometry.spacing for r in cases], axis=0)]  # type: ignore[union-attr]
    limit = image_bounds().max_voxels
    problems = []
    for r in cases:
        geometry = r.geometry
        assert geometry is not None
        voxels = math.prod(max(1, round(n * s / t)) for n, s, t in zip(geometry.shape, geometry.spacing, median))
        if voxels > limit:
            problems.append(Problem(
                "error", r.case_id, r.image_file,
                f"spacing {tuple(round(s, 4) for s in geometry.spacing)} mm (z, y, x) is far from the dataset's median "
                f"{tuple(round(s, 4) for s in median)}: resampled to it, shape {geometry.shape} would become "
                f"{voxels:,} voxels, more than the bound of {limit:,}",
                f"fix the header's spacing (or remove the case); if it is real, raise {ENV_MAX_VOXELS} "
                "(docs/guide/security.md)"))
    return problems


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path


def _run_jobs(jobs: list[CaseJob], processes: int, console: Console | None) -> Iterator[CaseResult]:
    columns = (
        TextColumn("checking cases"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("check", total=len(jobs))
        done = 0
        if processes > 1 and len(jobs) > 1:
            # spawn, not fork: the progress bar's refresh thread must not be duplicated mid-lock.
            context = multiprocessing.get_context("spawn")
            try:
                with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=context) as pool:
                    for result in pool.map(check_case, jobs, chunksize=1):
                        yield result
                        done += 1
                        progress.advance(task)
            except BrokenProcessPool as exc:
                # a worker died (out of memory, or no importable __main__): finish here instead
                log.warning("worker processes failed (%s); checking the remaining cases in this process", exc)
        for job in jobs[done:]:
            yield check_case(job)
            progress.advance(task)


def check_dataset(root: Path, processes: int = 1, console: Console | None = None) -> CheckReport:
    """Check a dataset folder and return every problem found; never raises for bad data.

    ``processes`` > 1 reads cases in parallel worker processes; ``console`` is where the
    progress bar is drawn (rich's default console when None).
    """
    root = Path(root)
    report = CheckReport(dataset_root=root)
    try:
        spec = load_dataset(root)
    except SelfUNetError as exc:
        report.problems.append(_dataset_json_problem(root, exc))
        return report
    report.dataset_root = spec.root

    if spec.layout == "msd":
        dataset_problems, training = _msd_problems(spec)
        channel_key = "modality"
    else:
        dataset_problems, training = _nnunetv2_problems(spec), list(spec.training)
        channel_key = "channel_names"
    if not spec.training:
        dataset_problems.insert(
            0,
            Problem("error", None, spec.root / "dataset.json", "no training cases found",
                    "list the training cases in dataset.json 'training'" if spec.layout == "msd"
                    else "put <case>_0000 images in imagesTr and <case> label maps in labelsTr"),
        )
    test = list({c.images: c for c in spec.test}.values())  # a repeated test entry is checked once

    common = dict(
        layout=spec.layout, channel_key=channel_key, channel_names=spec.channel_names,
        declared_labels=tuple(sorted(spec.labels)),
    )
    jobs = [CaseJob(case=c, kind="training", **common) for c in training]  # type: ignore[arg-type]
    jobs += [CaseJob(case=c, kind="test", **common) for c in test]  # type: ignore[arg-type]
    results = list(_run_jobs(jobs, processes, console))

    report.problems.extend(dataset_problems)
    for r in results:
        report.problems.extend(r.problems)
    report.problems.extend(_mixed_dimensionality(results))
    report.problems.extend(_resampling_problems(results))
    report.cases_checked = len(results)
    log.debug("checked %d cases of %s: %d problems", len(results), spec.root, len(report.problems))
    return report


#: below this console width the report is printed as one block per problem instead of a table.
TABLE_MIN_WIDTH = 110
_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _problem_table(report: CheckReport, files: list[str]) -> Table:
    table = Table(title=Text(f"selfunet check: {report.dataset_root}"), expand=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("case", overflow="fold")
    table.add_column("file", overflow="fold")
    table.add_column("problem", overflow="fold", ratio=3)
    table.add_column("fix", overflow="fold", ratio=2)
    for p, file in zip(report.problems, files):
        # Text, not markup: a file name or a SimpleITK message may contain square brackets.
        table.add_row(
            Text(p.severity, style=_SEVERITY_STYLE[p.severity]),
            Text(p.case_id or "-"),
            Text(file),
            Text(p.message),
            Text(p.fix),
        )
    return table


def render_report(report: CheckReport, console: Console) -> None:
    """A table of every problem (or a green OK) and a one-line summary."""
    summary = (
        f"{_plural(len(report.errors), 'error')}, {_plural(len(report.warnings), 'warning')} "
        f"in {_plural(report.cases_checked, 'case')}"
    )
    if not report.problems:
        console.print(
            f"[bold green]OK[/] {escape(str(report.dataset_root))}: "
            f"{_plural(report.cases_checked, 'case')} checked, no problems found.",
            highlight=False,
        )
        return
    files = [str(_relative(p.file, report.dataset_root)) if p.file is not None else "-" for p in report.problems]
    if console.width >= TABLE_MIN_WIDTH:
        console.print(_problem_table(report, files), highlight=False)
    else:
        # five columns in a narrow terminal (or an 80-column CI log) would cut file names apart;
        # one block per problem keeps every name whole and greppable
        console.print(Text(f"selfunet check: {report.dataset_root}", style="bold"))
        for p, file in zip(report.problems, files):
            line = Text()
            line.append(f"{p.severity}: ", style=_SEVERITY_STYLE[p.severity])
            line.append(f"{p.case_id or '-'}  {file}\n  problem: {p.message}\n  fix: {p.fix}")
            console.print(line, highlight=False)
    style = "bold red" if report.errors else "yellow"
    console.print(f"[{style}]{summary}[/]", highlight=False)
