"""``harness score TASK --submission NAME=IMAGE_OR_FOLDER ...``: submissions on a task's held-out test set.

A submission is a grand-challenge algorithm container image (run once per case: the case laid
out under ``/input`` by :mod:`harness.challenge.gc_case`, the label map read from
``/output/images/<output slug>/``; with ``--model NAME=model.tar.gz`` its separate model tarball,
as ``harness export gc --model-tarball`` writes it, extracted once and mounted read-only at
``/opt/ml/model`` as the platform mounts it) or a folder of label maps named like the cases
(``<case><ending>``). selfunet's own selected model (``WORK/selection.json``, predicted with
``selfunet predict --selection`` one case at a time, as a container would) is scored beside them
on the same cases as the submission ``selfunet`` (``--no-selfunet`` leaves it out).

The test set is what the descriptor declares: ``test_labels:`` (reference label maps of the
dataset's test cases, named like the cases) or ``holdout:`` (training cases kept out of every
fold by the job graph, :meth:`harness.run.jobs.TaskGraph._make_splits`).

Containers run in :class:`harness.sandboxes.algorithm.AlgorithmSandbox` with the descriptor's
``scoring`` limits per case (time, memory, CPUs). A case whose run times out, runs out of memory
or crashes, or whose output is missing, unreadable or not on the reference's voxel grid, is
recorded with its status and reason and scored as the worst case (Dice 0 for every class), and
scoring goes on.

What a submission hands over is data to check, never a path to follow or a size to believe
(:mod:`harness.challenge.outputs`, docs/guide/security.md): its socket slugs (from the image's
labels) are validated before they name any folder; each run gets an output folder the harness
has just made; the output is reached without following links, must be one regular file holding
its own voxels, no larger than the reference grid needs, and its header must match the
reference's before a voxel is read. Anything else is the status ``refused`` with a reason that
starts with what was wrong (``symlink``, ``not a regular file``, ``hard link``, ``too large``,
``external data file``, ``socket slug``), scored as the worst case like the other failures.

Files (``results/<task>/scores/``; the format other tools read, e.g. rankings):

``<submission>.csv``
    long format, one row per case and foreground class, columns :data:`CSV_COLUMNS`:
    ``case`` (case id), ``class`` (the label's name from dataset.json), ``dice`` (``nan`` when
    reference and prediction are both empty, see :data:`~selfunet.evaluation.evaluate.EMPTY_MASK_RULE`;
    0 for a failed case), ``status`` (:data:`STATUSES`), ``reason`` (empty when ``ok``),
    ``seconds`` (wall time of the case's run; the same on each class row of a case).
``<submission>.json``
    where it came from: kind, reference (image id or folder), sockets, limits, wall time.
``predictions/<submission>/<case>.mha``, ``logs/<submission>/<case>.log``
    what each run wrote and printed.
``leaderboard.csv`` / ``leaderboard.md``
    one row per submission scored so far: mean Dice per class and over classes, failed cases.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.challenge.gc_case import write_case
from harness.challenge.model_tarball import mounted_model, with_models  # noqa: F401 (with_models: the CLI's)
from harness.challenge.outputs import REFUSED, checked_prediction, container_output, folder_prediction, geometry_problem
from harness.challenge.scoreboard import CSV_COLUMNS, OK, SELFUNET, scores_csv, write_board  # noqa: F401 (CSV_COLUMNS: tests)
from harness.results.safe_files import MAX_JSON_BYTES, fresh_folder, plain_folder, read_below
from harness.tasks.descriptor import TaskDescriptor
from harness.tasks.names import check_slug
from selfunet.artifacts import atomic_write_json, atomic_write_text
from selfunet.data.io import SUPPORTED_ENDINGS
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

#: every status a case can get; all but ``ok`` are scored as the worst case.
STATUSES = (OK, "timeout", "oom", "crash", "missing", "unreadable", "wrong-geometry", REFUSED)
DEFAULT_INPUT_SLUG = "image"
DEFAULT_OUTPUT_SLUG = "segmentation"
#: image labels an exported algorithm carries (harness export gc), read when no slug is given.
INPUTS_LABEL = "org.selfunet.gc.inputs"
OUTPUT_LABEL = "org.selfunet.gc.output"


# -- the test set ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestCase:
    case_id: str
    images: tuple[Path, ...]
    label: Path


def _label_file(folder: Path, case_id: str) -> Path | None:
    for ending in SUPPORTED_ENDINGS:
        if (folder / f"{case_id}{ending}").is_file():
            return folder / f"{case_id}{ending}"
    return None


def held_out_cases(task: TaskDescriptor) -> list[TestCase]:
    """The cases ``harness score`` tests on, with their reference labels (see the module doc)."""
    from selfunet.data.dataset import load_dataset

    spec = load_dataset(task.dataset)
    if task.test_labels is not None:
        if not spec.test:
            raise SelfUNetError(f"{task.source}: key 'test_labels': the dataset {task.dataset} has no test cases.")
        folder = task.test_labels
        if not folder.is_dir():
            raise SelfUNetError(f"{task.source}: key 'test_labels': folder {folder} does not exist; put the test "
                                "cases' label maps there (named like the cases) or fix the path.")
        cases, missing = [], []
        for case in spec.test:
            label = _label_file(folder, case.case_id)
            if label is None:
                missing.append(case.case_id)
            else:
                cases.append(TestCase(case.case_id, case.images, label))
        if missing:
            raise SelfUNetError(f"{folder}: no label map for test case(s) {missing[:10]} (expected e.g. "
                                f"{missing[0]}.nii.gz); every test case needs its reference.")
        return cases
    if task.holdout is not None:
        by_id = {c.case_id: c for c in spec.training}
        return [TestCase(i, by_id[i].images, by_id[i].label) for i in task.holdout.select(list(by_id))
                if by_id[i].label is not None]
    raise SelfUNetError(f"{task.source}: task '{task.name}' declares no held-out test set; add `test_labels: FOLDER` "
                        "(the test cases' label maps) or `holdout: {fraction: 0.2}` (training cases kept out of "
                        "training), then rerun `harness run` for a holdout.")


# -- submissions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Submission:
    name: str
    kind: Literal["container", "folder", "selfunet", "model"]
    ref: str
    model: Path | None = None
    """a container's separate model: a ``.tar.gz`` (or a folder) mounted at /opt/ml/model
    (:mod:`harness.challenge.model_tarball`)."""


def parse_submission(text: str) -> Submission:
    """``NAME=IMAGE`` (a tag or id in the engine) or ``NAME=FOLDER`` (an existing folder of label maps)."""
    name, sep, ref = text.partition("=")
    name, ref = name.strip(), ref.strip()
    if not sep or not name or not ref:
        raise SelfUNetError(f"--submission {text!r}: expected NAME=IMAGE or NAME=FOLDER (e.g. team-a=team-a:latest).")
    if not all(c.isalnum() or c in "_.-" for c in name) or name.startswith("."):
        raise SelfUNetError(f"--submission {text!r}: name '{name}' may hold letters, digits, '_', '.', '-' only "
                            "(it names files).")
    if name == SELFUNET:
        raise SelfUNetError(f"--submission {text!r}: the name '{SELFUNET}' is selfunet's own model; choose another.")
    return Submission(name, _submission_kind(ref), ref)


def _submission_kind(ref: str) -> Literal["container", "folder", "model"]:
    """A model archive (``selfunet export-model``'s model.zip, or an nnU-Net v2 model folder or zip:
    ``selfunet predict --model`` takes all three), a folder of label maps, or a container image."""
    from selfunet.interop.nnunet_import import is_nnunet_model

    path = Path(ref)
    if (path.is_file() and path.suffix == ".zip") or (path.is_dir() and is_nnunet_model(path)):
        return "model"
    return "folder" if path.is_dir() else "container"


@dataclass(frozen=True)
class Sockets:
    inputs: tuple[str, ...] = (DEFAULT_INPUT_SLUG,)
    output: str = DEFAULT_OUTPUT_SLUG
    problem: str | None = None
    """why the image's labels name no usable sockets (every case is then ``refused``; no slug of
    theirs is kept)."""


def image_sockets(image_labels: dict[str, str], inputs: list[str] | None, output: str | None) -> Sockets:
    """The options' slugs, else the ones an exported image names in its labels, else the defaults.

    Every slug is checked (:func:`~harness.tasks.names.check_slug`) before anything uses it: a bad
    one from the options is the user's error (raised); one from the image's labels is the
    submission's, and comes back as ``problem`` with the default slugs, so it never names a folder.
    """
    for slug in inputs or []:
        check_slug(slug, "--input-slug")
    if output is not None:
        check_slug(output, "--output-slug")
    found = [s for s in (image_labels.get(INPUTS_LABEL) or "").split(",") if s]
    sockets = Sockets(tuple(inputs or found or [DEFAULT_INPUT_SLUG]),
                      output or image_labels.get(OUTPUT_LABEL) or DEFAULT_OUTPUT_SLUG)
    try:
        for slug in (*sockets.inputs, sockets.output):
            check_slug(slug, "socket slug in the image's labels")
        if len(set(sockets.inputs)) != len(sockets.inputs):
            raise SelfUNetError(f"input sockets {list(sockets.inputs)} name one twice")
    except SelfUNetError as exc:
        return Sockets(problem=f"socket slug: {exc}")
    return sockets


# -- one case scored ------------------------------------------------------------------------------
@dataclass
class CaseResult:
    case_id: str
    status: str = OK
    reason: str = ""
    seconds: float = 0.0
    dice: dict[int, float] = field(default_factory=dict)

    def fail(self, status: str, reason: str) -> CaseResult:
        self.status, self.reason = status, reason
        return self


def score_case(result: CaseResult, prediction: Path | None, reference: Path, labels: dict[int, str],
               scheme=None) -> CaseResult:
    """Dice of each foreground class (region-based datasets: each region; ``scheme`` is the dataset's
    :class:`~selfunet.data.labels.LabelScheme`, whose ignore label counts nowhere); a failed case (any
    status but ok) gets 0 for every class."""
    from selfunet.data.io import image_to_array
    from selfunet.evaluation.evaluate import evaluate_arrays

    if result.status == OK:
        if prediction is None:
            result.fail("missing", "no label map for this case")
        else:
            want = sitk.ReadImage(str(reference))
            try:
                got = sitk.ReadImage(str(prediction))
            except RuntimeError as exc:
                got = None
                result.fail("unreadable", f"{prediction.name}: {str(exc).strip().splitlines()[-1][:200]}")
            problem = geometry_problem(got, want) if got is not None else None
            if problem:
                result.fail("wrong-geometry", problem)
            elif got is not None:
                pred, _ = image_to_array(got, str(prediction))
                ref, geometry = image_to_array(want, str(reference))
                reference_labels = ref[0].astype(np.int32)
                ignore = None if scheme is None or scheme.ignore_label is None else scheme.ignore_label
                regions = scheme.evaluation_classes(labels)[1] if scheme is not None and scheme.has_regions else None
                metrics = evaluate_arrays(np.rint(pred[0]).astype(np.int32), reference_labels, sorted(labels),
                                          geometry.spacing, ignore_mask=None if ignore is None else
                                          reference_labels == ignore, regions=regions)
                result.dice = {label: m.dice for label, m in metrics.items()}
    if result.status != OK:
        result.dice = dict.fromkeys(labels, 0.0)
    return result


def _last_line(log_path: Path) -> str:
    try:
        lines = [x.strip() for x in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [x for x in lines if x and not x.startswith("===")]
    return lines[-1][:300] if lines else ""


# -- running submissions --------------------------------------------------------------------------
@dataclass
class ScoreOptions:
    input_slugs: list[str] | None = None
    output_slug: str | None = None
    gpu: int | None = None
    case_timeout_s: float | None = None
    memory_gb: float | None = None
    cpus: float | None = None
    selfunet_mirroring: bool = True
    """mirror test-time augmentation for selfunet's own model (as an export made with or without it)."""


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def run_container(sub: Submission, task: TaskDescriptor, cases: list[TestCase], scores: Path, options: ScoreOptions,
                  console: Console, client=None) -> tuple[list[CaseResult], dict]:
    """Each case through the algorithm container; outputs kept under predictions/<name>/."""
    import docker.errors

    from harness.sandboxes.algorithm import MODEL_MOUNT, AlgorithmSandbox
    from harness.sandboxes.base import SandboxRequest, Slot
    from harness.sandboxes.docker import EXIT_OOM, EXIT_TIMEOUT
    from harness.sandboxes.image import docker_client

    client = client or docker_client()
    try:
        image = client.images.get(sub.ref)
    except docker.errors.ImageNotFound:
        raise SelfUNetError(f"--submission {sub.name}={sub.ref}: no such image in the Docker Engine and no such "
                            "folder; load it (`docker load -i FILE`) or build it first.") from None
    sockets = image_sockets(image.labels or {}, options.input_slugs, options.output_slug)
    limits = {"case_timeout_s": options.case_timeout_s or task.scoring.case_timeout_s,
              "memory_gb": options.memory_gb or task.scoring.memory_gb or task.resources.memory_gb,
              "cpus": _cpus(task, options)}
    if sockets.problem:  # the image's labels: the submission's failure, on every case, before any folder
        return [score_case(CaseResult(c.case_id).fail(REFUSED, sockets.problem), None, c.label, _labels(task),
                           _scheme(task)) for c in cases], {
            "kind": "container", "ref": sub.ref, "image": image.id, "tags": image.tags, "limits": limits}
    sandbox = AlgorithmSandbox(image=image.id, client=client, timeout_s=limits["case_timeout_s"],
                               cpus=limits["cpus"], memory_gb=limits["memory_gb"])
    predictions = fresh_folder(scores, Path("predictions") / sub.name, "harness score")
    logs = fresh_folder(scores, Path("logs") / sub.name, "harness score")
    results = []
    with tempfile.TemporaryDirectory(prefix="selfunet-score-", ignore_cleanup_errors=True) as tmp, \
            _progress(console) as progress, mounted_model(sub.model) as sandbox.model_dir:
        bar = progress.add_task(f"{task.name}: {sub.name}", total=len(cases))
        for case in cases:
            inputs_rel = Path(".inputs") / "-".join(sockets.inputs) / case.case_id  # validated slugs only
            inputs = scores / inputs_rel
            if not (plain_folder(scores, inputs_rel.parent, "harness score's cases") / case.case_id
                    / "inputs.json").is_file():
                write_case(fresh_folder(scores, inputs_rel, "harness score's cases"), case.images, sockets.inputs)
            output = Path(tmp) / "outputs" / case.case_id  # made fresh by the sandbox, never one made before
            log_path = logs / f"{case.case_id}.log"
            request = SandboxRequest(job_id=f"score-{sub.name}-{case.case_id}", argv=(), log_path=log_path,
                                     read_only=(inputs,), read_write=(output,))
            started = time.perf_counter()
            code = sandbox.run(request, Slot(0, options.gpu))
            result = CaseResult(case.case_id, seconds=time.perf_counter() - started)
            if code == EXIT_TIMEOUT:
                result.fail("timeout", f"ran past the {limits['case_timeout_s']:g} s limit per case")
            elif code == EXIT_OOM:
                result.fail("oom", f"killed at the {limits['memory_gb']} GB memory limit")
            elif code != 0:
                result.fail("crash", f"exit code {code}: {_last_line(log_path)}".rstrip(": "))
            kept = None
            if result.status == OK:
                kept = checked_prediction(result, partial(container_output, output, sockets.output),
                                          f"/output/images/{sockets.output}/", case.label,
                                          predictions / f"{case.case_id}.mha", Path(tmp) / ".checked" / case.case_id)
            results.append(score_case(result, kept, case.label, _labels(task), _scheme(task)))
            progress.advance(bar)
    record = {"kind": "container", "ref": sub.ref, "image": image.id, "tags": image.tags,
              "sockets": {"inputs": list(sockets.inputs), "output": sockets.output}, "limits": limits}
    if sub.model is not None:
        from harness.run.jobs import file_digest

        record["model"] = {"path": str(sub.model.resolve()), "mounted_at": MODEL_MOUNT,
                           "sha256": file_digest(sub.model) if sub.model.is_file() else None}
    return results, record


def score_folder(sub: Submission, task: TaskDescriptor, cases: list[TestCase], scores: Path
                 ) -> tuple[list[CaseResult], dict]:
    """Label maps named like the cases, read as a container's output is (links refused, header first;
    the folder itself is the user's choice and may be a link); kept under predictions/<name>/. A
    file with several names is allowed here (a folder may share files), not in a container's output."""
    folder = Path(sub.ref)
    predictions = fresh_folder(scores, Path("predictions") / sub.name, "harness score")
    results = []
    with tempfile.TemporaryDirectory(prefix="selfunet-score-") as tmp:
        for c in cases:
            result = CaseResult(c.case_id)
            kept = checked_prediction(result, partial(folder_prediction, folder, c.case_id), f"{folder}/", c.label,
                                      predictions / f"{c.case_id}.mha", Path(tmp) / c.case_id, single_link=False)
            results.append(score_case(result, kept, c.label, _labels(task), _scheme(task)))
    return results, {"kind": "folder", "ref": str(folder.resolve())}


def _cpus(task: TaskDescriptor, options: ScoreOptions) -> float:
    """The CPUs one submission gets per case: the command line's, else the descriptor's."""
    return options.cpus or task.scoring.cpus or task.resources.cpus


def run_selfunet(task: TaskDescriptor, work: Path, cases: list[TestCase], scores: Path, console: Console,
                 mirroring: bool = True, cpus: float | None = None) -> tuple[list[CaseResult], dict]:
    """``selfunet predict --selection`` per case (model loaded per case, as a container does)."""
    selection = work / "selection.json"
    try:  # a job wrote it: read as the file it is, never through a link
        chosen = json.loads(read_below(work, Path("selection.json"), "selection.json", MAX_JSON_BYTES))
    except (FileNotFoundError, NotADirectoryError):
        raise SelfUNetError(f"{selection} not found: run the task first (`harness run {task.source}`), or pass "
                            "--no-selfunet to score the submissions alone.") from None
    except ValueError as exc:
        raise SelfUNetError(f"{selection}: not readable JSON ({exc}); rerun `harness run {task.source}`.") from None
    predictor = ["-w", str(work), "--selection", str(selection)]
    results = _predict_and_score(SELFUNET, predictor, task, cases, scores, console, mirroring, cpus)
    return results, {"kind": SELFUNET, "ref": str(selection), "selection": chosen, "mirroring": mirroring}


def _predict_and_score(name: str, predictor: list[str], task: TaskDescriptor, cases: list[TestCase], scores: Path,
                       console: Console, mirroring: bool, cpus: float | None = None) -> list[CaseResult]:
    """``selfunet predict <case> <predictor options>`` per case in a subprocess, its output read
    through the same checks as a container's (a link, a stray file or a wrong header is refused),
    then scored; logs and kept predictions go to fresh folders under ``scores``.

    With ``cpus`` it computes with as many threads as a scored container gets (the Docker
    sandbox sets ``OMP_NUM_THREADS`` from the same limit): the same budget for every entry, and
    the same float summation order as the exported container, so their labels agree voxel for
    voxel."""
    env = None if cpus is None else {**os.environ, "OMP_NUM_THREADS": str(max(int(cpus), 1))}
    predictions = fresh_folder(scores, Path("predictions") / name, "harness score")
    logs = fresh_folder(scores, Path("logs") / name, "harness score")
    results = []
    with tempfile.TemporaryDirectory(prefix="selfunet-score-") as tmp, _progress(console) as progress:
        bar = progress.add_task(f"{task.name}: {name}", total=len(cases))
        for case in cases:
            out = Path(tmp) / "out" / case.case_id
            command = [sys.executable, "-m", "selfunet.cli", "predict", *map(str, case.images), "-o", str(out),
                       *predictor, *(() if mirroring else ("--no-mirroring",))]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            result = CaseResult(case.case_id, seconds=time.perf_counter() - started)
            log_path = logs / f"{case.case_id}.log"
            log_path.write_text(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
            kept = None
            if done.returncode != 0:
                result.fail("crash", f"exit code {done.returncode}: {_last_line(log_path)}")
            else:
                kept = checked_prediction(result, partial(folder_prediction, out, case.case_id), f"{out}/",
                                          case.label, predictions / f"{case.case_id}.mha",
                                          Path(tmp) / ".checked" / case.case_id)
            results.append(score_case(result, kept, case.label, _labels(task), _scheme(task)))
            progress.advance(bar)
    return results



def run_model(sub: Submission, task: TaskDescriptor, cases: list[TestCase], scores: Path, console: Console,
              mirroring: bool = True, cpus: float | None = None) -> tuple[list[CaseResult], dict]:
    """``selfunet predict --model`` per case for a model archive (an nnU-Net model is imported once,
    with every check of ``selfunet import-nnunet``, before the first case)."""
    from selfunet.interop.nnunet_import import model_archive_for
    from selfunet.model_archive import read_manifest

    with tempfile.TemporaryDirectory(prefix="selfunet-score-model-") as tmp:
        archive = model_archive_for(Path(sub.ref), Path(tmp))
        manifest = read_manifest(archive)
        results = _predict_and_score(sub.name, ["--model", str(archive)], task, cases, scores, console,
                                     mirroring, cpus)
    return results, {"kind": "model", "ref": str(Path(sub.ref).resolve()), "members": manifest.get("members"),
                     "folds": manifest.get("folds"), "mirroring": mirroring}


def _labels(task: TaskDescriptor) -> dict[int, str]:
    """What is scored: the foreground classes, or the regions (keys 1..R) of a region-based dataset."""
    from selfunet.data.dataset import load_dataset

    spec = load_dataset(task.dataset)
    return spec.label_scheme.evaluation_classes(spec.labels)[0]


def _scheme(task: TaskDescriptor):
    from selfunet.data.dataset import load_dataset

    return load_dataset(task.dataset).label_scheme


def score_task(task: TaskDescriptor, submissions: list[Submission], work: Path, results: Path,
               options: ScoreOptions | None = None, selfunet: bool = True, console: Console | None = None,
               client=None) -> dict[str, list[CaseResult]]:
    """Score every submission (and selfunet's model) on the task's held-out cases; write the files."""
    options = options or ScoreOptions()
    console = console or Console(stderr=True)
    cases = held_out_cases(task)
    if not cases:
        raise SelfUNetError(f"task '{task.name}': the held-out test set is empty.")
    names = [s.name for s in submissions]
    if len(set(names)) != len(names):
        raise SelfUNetError(f"--submission names must differ: {sorted(n for n in names if names.count(n) > 1)}.")
    scores = plain_folder(Path(results), Path(task.name) / "scores", "harness score")
    labels = _labels(task)
    queue: list[Submission | None] = [*([None] if selfunet else []), *submissions]
    out: dict[str, list[CaseResult]] = {}
    for sub in queue:
        started = time.perf_counter()
        if sub is None:
            name, (case_results, record) = SELFUNET, run_selfunet(task, Path(work), cases, scores, console,
                                                                   options.selfunet_mirroring, _cpus(task, options))
        elif sub.kind == "folder":
            name, (case_results, record) = sub.name, score_folder(sub, task, cases, scores)
        elif sub.kind == "model":
            name, (case_results, record) = sub.name, run_model(sub, task, cases, scores, console,
                                                               options.selfunet_mirroring, _cpus(task, options))
        else:
            name, (case_results, record) = sub.name, run_container(sub, task, cases, scores, options, console, client)
        record |= {"submission": name, "task": task.name, "cases": [c.case_id for c in cases],
                   "wall_seconds": round(time.perf_counter() - started, 2), "date": time.strftime("%Y-%m-%d %H:%M"),
                   "failed": {r.case_id: f"{r.status}: {r.reason}" for r in case_results if r.status != OK}}
        atomic_write_text(scores / f"{name}.csv", scores_csv(case_results, labels))
        atomic_write_json(scores / f"{name}.json", record)
        out[name] = case_results
        failed = len(record["failed"])
        console.print(f"{task.name}: {name} scored on {len(cases)} case(s) in {record['wall_seconds']:.1f} s"
                      + (f", {failed} failed" if failed else ""), highlight=False)
    write_board(task, scores)
    return out
