"""The ``harness`` command line over task descriptors.

* ``ls``, ``validate``: list and check descriptors and their datasets;
* ``fetch``: download, check and unpack the tasks' datasets (the Decathlon's, or a lab's mirror);
* ``run``: the job graph of every task, through an executor and a sandbox, resumable;
* ``status``: what a run is doing, read from its work root (from any terminal);
* ``leaderboard``: re-render ``results/`` (leaderboards, rankings, report) from disk;
* ``compare``: the CI regression check against a committed baseline;
* ``export task``, ``export gc``: challenge-format predictions, a grand-challenge container;
* ``score``: anyone's container or prediction folder on the held-out test cases;
* ``image build``: the project's Docker image;
* ``version``.

Commands are thin: they call the packages (:mod:`harness.tasks`, :mod:`harness.run`,
:mod:`harness.results`, :mod:`harness.challenge`, :mod:`harness.sandboxes`); library errors
(:class:`~selfunet.errors.SelfUNetError`) become a red message and exit code 1. Every command
that takes a TASK name resolves it through :func:`_find_task`.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from selfunet.cli import BudgetChoice, NnunetRawOpt, errors_to, print_version, set_verbose
from selfunet.errors import SelfUNetError

app = typer.Typer(name="harness", help="Benchmark selfunet over many tasks.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)

TasksArg = Annotated[
    Optional[list[Path]], typer.Argument(help="descriptor files or folders (default: tasks/)", show_default=False)
]
DataRootOpt = Annotated[Optional[Path], typer.Option(
    help="use DIR/<dataset folder name> (or its nnU-Net twin, Task04_X <-> Dataset004_X) instead of each "
    "descriptor's dataset path")]
MirrorOpt = Annotated[Optional[str], typer.Option(envvar="HARNESS_DATA_MIRROR", help="where the archives are: a "
                                                  "base URL or a folder (default: fetch.mirror, else MONAI's)")]
ChecksumsOpt = Annotated[Optional[Path], typer.Option(envvar="HARNESS_DATA_CHECKSUMS", help="the archives' MD5 "
                                                      "sums as `md5sum` prints them; over the built-in ones")]
TasksRootOpt = Annotated[
    Optional[Path], typer.Option(help="the folder every descriptor and `include:` must lie in (default: the folder "
                                 "named, or a named descriptor file's own folder)")
]


user_errors = errors_to(console)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=print_version("harness"),
                                          help="print the version and exit")] = False,
) -> None:
    set_verbose(verbose)


def _load(paths: Optional[list[Path]], data_root: Optional[Path], budget: Optional[str] = None,
          tasks_root: Optional[Path] = None, nnunet_raw: Optional[Path] = None) -> list:
    from harness.tasks.selection import load_selected

    return load_selected(paths, data_root, budget, tasks_root, nnunet_raw, note=lambda text: console.print(
        f"[yellow]note:[/] {escape(text)}", highlight=False, soft_wrap=True))


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@app.command("ls")
@user_errors
def ls(paths: TasksArg = None, data_root: DataRootOpt = None, tasks_root: TasksRootOpt = None,
       nnunet_raw: NnunetRawOpt = None) -> None:
    """List the tasks: dataset, configurations, folds, budget, and whether the data is there."""
    from harness.fetch.fetch import fetchable
    from harness.tasks.descriptor import dataset_problem

    table = Table(title="tasks")
    for column in ("task", "descriptor", "dataset", "configurations", "folds", "budget", "data"):
        table.add_column(column, no_wrap=column == "task", overflow="fold")
    for t in _load(paths, data_root, tasks_root=tasks_root, nnunet_raw=nnunet_raw):
        cfg = t.train_config()
        data = f"[red]missing[/]{' (harness fetch)' if fetchable(t) else ''}" if dataset_problem(t) else (
            "[green]ok[/]" if (t.dataset / "dataset.json").is_file() else "generated on first run")
        configurations = ", ".join(t.configurations or ["(all planned)"]) + (
            f" (planners: {', '.join(t.planners)})" if t.planners != ["default"] else "")
        table.add_row(t.name, escape(str(t.source)), escape(_short(t.dataset)), escape(configurations),
                      str(cfg.num_folds), f"{t.budget.preset}: {cfg.epochs} x {cfg.iterations_per_epoch}", data)
    Console().print(table)


@app.command()
@user_errors
def validate(paths: TasksArg = None, data_root: DataRootOpt = None,
             processes: Annotated[int, typer.Option("--processes", "-p", min=1)] = 2,
             tasks_root: TasksRootOpt = None, nnunet_raw: NnunetRawOpt = None) -> None:
    """Check descriptors and their datasets (selfunet check) without running anything; exit 1 on problems."""
    from harness.tasks.descriptor import check_task

    problems: list[str] = []
    tasks = _load(paths, data_root, tasks_root=tasks_root, nnunet_raw=nnunet_raw)
    for t in tasks:
        found = check_task(t, processes=processes)
        problems += found
        mark = "[green]ok[/]" if not found else f"[red]{len(found)} problem(s)[/]"
        console.print(f"{t.name} ({escape(str(t.source))}): {mark}", highlight=False, soft_wrap=True)
    for p in problems:
        console.print(f"[bold red]error:[/] {escape(p)}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    console.print(f"{len(tasks)} task(s) valid.")


@app.command()
@user_errors
def run(
    tasks: Annotated[list[Path], typer.Argument(help="descriptor files or folders, e.g. tasks/demo.yaml")],
    budget: Annotated[Optional[BudgetChoice], typer.Option(
        help="preset replacing each descriptor's budget and folds: full | ci | demo "
             "(docs/reference/task-descriptors.md)")] = None,
    force: Annotated[bool, typer.Option("--force", help="redo every job, ignoring finished markers")] = False,
    seeds: Annotated[Optional[str], typer.Option(
        help="train every configuration with each of these seeds, e.g. 0,1,2: leaderboards show mean ± std over "
        "seeds and selection uses the mean (default: the descriptor's seed)")] = None,
    jobs: Annotated[Optional[int], typer.Option(
        min=1, help="jobs at once (default: one per GPU; on CPU, cores // resources.cpus)")] = None,
    executor: Annotated[Literal["local", "ray", "slurm"], typer.Option(help="where jobs run: local | ray | slurm")]
    = "local",
    address: Annotated[Optional[str], typer.Option(
        help="--executor ray: cluster address (HOST:6379, auto, ray://HOST:10001); default $RAY_ADDRESS, else a "
        "local Ray instance")] = None,
    max_retries: Annotated[int, typer.Option(min=0, help="--executor ray/slurm: reruns of a job whose worker/node "
                                             "died (Slurm: NODE_FAIL, BOOT_FAIL, PREEMPTED)")] = 2,
    cpus_per_job: Annotated[float, typer.Option(min=0, help="--executor ray: CPUs each job reserves")] = 1.0,
    sandbox: Annotated[Literal["process", "docker"], typer.Option(help="how jobs run: process | docker")] = "process",
    image: Annotated[Optional[str], typer.Option(help="--sandbox docker: image tag or id (default selfunet:latest)")]
    = None,
    cpus: Annotated[Optional[float], typer.Option(help="--sandbox docker: CPUs per job (overrides resources.cpus)")]
    = None,
    memory_gb: Annotated[Optional[float], typer.Option(
        help="--sandbox docker: memory limit per job in GB (default: resources.memory_gb, else 75% of the host's)")]
    = None,
    job_timeout: Annotated[Optional[float], typer.Option(
        help="stop a job after SECONDS (overrides the descriptor's container.timeout_s; any sandbox)")] = None,
    container_user: Annotated[Optional[str], typer.Option(
        help="--sandbox docker: UID:GID jobs run as (default: yours; as root: the image's user 1000:1000; "
        "0:0 runs them as root, on purpose only)")] = None,
    work_root: Annotated[Path, typer.Option(help="work directories go to DIR/<task>")] = Path("work"),
    results: Annotated[Path, typer.Option(help="results go to DIR/<task>")] = Path("results"),
    data_root: DataRootOpt = None,
    tasks_root: TasksRootOpt = None,
    detach: Annotated[bool, typer.Option("--detach", help="--executor slurm: queue what can be queued (afterok), "
                                         "leave a follow-up job for the rest, and exit")] = False,
    slurm_partition: Annotated[Optional[str], typer.Option(help="--executor slurm: over each slurm.partition")] = None,
    slurm_account: Annotated[Optional[str], typer.Option(help="--executor slurm: over each slurm.account")] = None,
    slurm_qos: Annotated[Optional[str], typer.Option(help="--executor slurm: over each slurm.qos")] = None,
    slurm_constraint: Annotated[Optional[str], typer.Option(help="--executor slurm: over each slurm.constraint")]
    = None,
    slurm_extra: Annotated[Optional[list[str]], typer.Option(
        help="--executor slurm: one more #SBATCH option, after the descriptor's (repeat; --slurm-extra=--exclusive)")]
    = None,
    nnunet_raw: NnunetRawOpt = None,
    fetch: Annotated[bool, typer.Option("--fetch", help="first download missing datasets (harness fetch)")] = False,
    mirror: MirrorOpt = None, checksums: ChecksumsOpt = None,
    ctx: typer.Context = None,  # type: ignore[assignment]
) -> None:
    """Run every job of the tasks (resumable: finished jobs are skipped); exit 1 if any job failed."""
    from harness.executors import EXECUTORS
    from harness.executors.base import JobStatus
    from harness.executors.ray import RayExecutor  # imports Ray only when used
    from harness.fetch.fetch import fetch_hint, fetch_options, fetch_tasks, has_data
    from harness.run.runner import RunInterrupted, run_tasks, summary_table
    from harness.sandboxes import SANDBOXES
    from harness.tasks.descriptor import dataset_problem, folds_problem

    EXECUTORS = {**EXECUTORS, "ray": functools.partial(
        RayExecutor, address=address, max_retries=max_retries, num_cpus_per_job=cpus_per_job), "slurm": None}
    if executor != "ray" and address is not None:
        raise SelfUNetError("--address applies to --executor ray only.")
    if executor not in EXECUTORS:
        raise SelfUNetError(f"--executor {executor}: unknown; choose one of {', '.join(EXECUTORS)}.")
    if sandbox not in SANDBOXES:
        raise SelfUNetError(f"--sandbox {sandbox}: unknown; choose one of {', '.join(SANDBOXES)}.")
    from harness.results.seeds import parse_seeds

    seed_list = parse_seeds(seeds) if seeds is not None else None
    loaded = _load(tasks, data_root, budget, tasks_root=tasks_root, nnunet_raw=nnunet_raw)
    if fetch:
        fetch_tasks([t for t in loaded if not has_data(t)], fetch_options(mirror, checksums), console)
    problems = [p for p in (dataset_problem(t) or folds_problem(t) for t in loaded) if p]
    if problems:
        raise SelfUNetError("\n".join(problems) + ("" if fetch else fetch_hint(loaded)))
    options = {"image": image, "cpus": cpus, "memory_gb": memory_gb, "timeout_s": job_timeout, "user": container_user}
    if sandbox != "docker" and any(v is not None for k, v in options.items() if k != "timeout_s"):
        raise SelfUNetError("--image/--cpus/--memory-gb/--container-user apply to --sandbox docker only.")
    slurm = {"partition": slurm_partition, "account": slurm_account, "qos": slurm_qos,
             "constraint": slurm_constraint, "extra": slurm_extra or []}
    if executor == "slurm":  # a detached run's follow-up job reruns this command line
        from harness.executors.slurm import executor_for, same_command

        EXECUTORS["slurm"] = executor_for(loaded, work_root, slurm, detach, max_retries, same_command(ctx))
    elif detach or any(slurm.values()):
        raise SelfUNetError("--detach and --slurm-* apply to --executor slurm only.")
    if executor == "local" and jobs is None:
        from harness.executors.local import default_cpu_jobs

        jobs = default_cpu_jobs(max(t.resources.cpus for t in loaded))
    try:
        chosen = SANDBOXES[sandbox](**(options if sandbox == "docker" else {"timeout_s": job_timeout}))
        with EXECUTORS[executor](chosen, jobs=jobs) as ex:
            records = run_tasks(loaded, ex, work_root, results, force=force, console=console,
                                executor_name=executor, seeds=seed_list)
    except RunInterrupted as stop:
        name = signal.Signals(stop.signum).name
        console.print(f"[bold magenta]stopped by {name}[/]: {len(stop.stopped)} running job(s) stopped and marked "
                      "interrupted; rerun the same command to resume.", highlight=False, soft_wrap=True)
        raise typer.Exit(stop.exit_code) from None
    Console().print(summary_table(records))
    if detach and any(r.status == JobStatus.RUNNING for r in records):
        console.print(f"detached: jobs stay queued in Slurm; `harness status {escape(str(work_root))}` shows them, "
                      "the same `harness run` command picks them up.", highlight=False, soft_wrap=True)
    failed = [r for r in records if r.status == JobStatus.FAILED]
    for r in failed:
        console.print(f"[bold red]{r.task}/{r.job} failed[/] ({escape(r.reason.splitlines()[0] if r.reason else '')}); "
                      f"last lines of {escape(r.log)}:", highlight=False)
        console.print("\n".join(r.log_tail[-15:]), highlight=False, markup=False)
    if failed or any(r.status == JobStatus.BLOCKED for r in records):
        raise typer.Exit(1)


@app.command()
@user_errors
def status(
    work_root: Annotated[Path, typer.Argument(help="the work root of the run (harness run --work-root)")]
    = Path("work"),
    watch: Annotated[bool, typer.Option("--watch", "-w", help="redraw every --interval seconds until Ctrl-C")]
    = False,
    interval: Annotated[float, typer.Option(min=0.5, help="--watch: seconds between redraws")] = 5.0,
    all_jobs: Annotated[bool, typer.Option("--all", help="list every job, also pending and finished ones")] = False,
) -> None:
    """What a run is doing, from any terminal: jobs by state, running jobs (time, slot, log), failures, ETA."""
    from harness.run.status import show_status

    show_status(work_root, watch=watch, interval=interval, all_jobs=all_jobs)


@app.command()
@user_errors
def fetch(
    tasks: Annotated[list[str], typer.Argument(help="task names (under --tasks), descriptor files, or folders")],
    mirror: MirrorOpt = None, checksums: ChecksumsOpt = None,
    max_unpacked_gb: Annotated[float, typer.Option(min=0.001, help="refuse an archive unpacking to more")] = 64.0,
    retries: Annotated[int, typer.Option(min=0, help="reconnections per download, each resuming")] = 3,
    keep_archive: Annotated[bool, typer.Option("--keep-archive", help="keep the archive after unpacking")] = False,
    tasks_dir: Annotated[Path, typer.Option("--tasks", help="where task names are looked up")] = Path("tasks"),
    data_root: DataRootOpt = None, tasks_root: TasksRootOpt = None, nnunet_raw: NnunetRawOpt = None,
) -> None:
    """Download the tasks' datasets, check their MD5 sums, unpack them safely (docs/guide/fetching-data.md)."""
    from harness.fetch.fetch import fetch_options, fetch_tasks
    from harness.tasks.selection import select_named

    options = fetch_options(mirror, checksums, max_bytes=int(max_unpacked_gb * 1000**3), retries=retries,
                            keep_archive=keep_archive)
    fetch_tasks(select_named(tasks, tasks_dir, data_root, tasks_root, nnunet_raw), options, console)


# -- results: leaderboard, export, compare (harness/results/publish.py, export.py, compare.py) -------------
ResultsOpt = Annotated[Path, typer.Option("--results", help="results root (holds <task>/)")]


@app.command()
@user_errors
def leaderboard(
    tasks: Annotated[Optional[list[str]], typer.Argument(help="task names (default: every task under --results)",
                                                          show_default=False)] = None,
    results: ResultsOpt = Path("results"),
    work_root: Annotated[Optional[Path], typer.Option(help="work directories are DIR/<task> (default: the one "
                                                      "recorded in run.json)")] = None,
) -> None:
    """Re-render results/<task>/leaderboard.csv|.md, results/leaderboard.md and the HTML report from what is on
    disk."""
    from harness.report.html import write_report
    from harness.results.publish import rerender

    boards = rerender(tasks, results, work_root, console=Console())
    index = write_report(boards, results, work_root)
    written = f"{len(boards)} leaderboard(s) written; overview: {results / 'leaderboard.md'}; report: {index}"
    console.print(escape(written), highlight=False)


class _ExportGroup(typer.core.TyperGroup):
    """``harness export TASK [--zip]`` is short for ``harness export task TASK [--zip]``; named
    subcommands (``task``, ``gc``) and ``--help`` keep their meaning."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h") and any(
                not a.startswith("-") for a in args):
            args = ["task", *args]
        return super().parse_args(ctx, args)


export_app = typer.Typer(cls=_ExportGroup, no_args_is_help=True,
                         help="Export a task's selected model: `harness export task TASK [--zip]` (challenge-format "
                              "predictions; `harness export TASK` is short for it) or `harness export gc TASK ...` (a "
                              "grand-challenge algorithm container).")
app.add_typer(export_app, name="export")


@export_app.command("task")
@user_errors
def export_task_command(
    task: Annotated[str, typer.Argument(help="task name (looked up under --tasks) or descriptor file")],
    make_zip: Annotated[bool, typer.Option("--zip", help="also pack results/<task>/<TaskName>_predictions.zip")]
    = False,
    tasks_dir: Annotated[Path, typer.Option("--tasks", help="where task names are looked up")] = Path("tasks"),
    work_root: Annotated[Path, typer.Option(help="work directories are DIR/<task>")] = Path("work"),
    results: ResultsOpt = Path("results"),
    data_root: DataRootOpt = None,
    tasks_root: TasksRootOpt = None, nnunet_raw: NnunetRawOpt = None,
) -> None:
    """Copy the selected model's test predictions to results/<task>/predictions/<TaskName>/ (headers checked)."""
    from harness.results.export import export_command

    t = _find_task(task, tasks_dir, data_root, tasks_root, nnunet_raw)
    folder, archive = export_command(t, work_root / t.name, results, make_zip)
    if folder is None:
        console.print(f"{t.name}: nothing to export (no test cases, or export format 'none').", highlight=False)
        return
    console.print(escape(f"{t.name}: predictions in {folder}" + (f", zip {archive}" if archive else "")),
                  highlight=False)


@app.command()
@user_errors
def compare(
    results: Annotated[Path, typer.Argument(help="results root to check (holds <task>/leaderboard.csv)")],
    baseline: Annotated[Path, typer.Option(help="baseline root, e.g. results/baselines")],
    max_drop: Annotated[float, typer.Option(help="largest tolerated Dice drop (mean fg and per class)")] = 0.02,
) -> None:
    """Compare the selected models' CV Dice with a baseline; exit 1 on a drop beyond --max-drop or a missing task."""
    from harness.results.compare import compare as run_compare
    from harness.results.compare import comparison_table

    comparison = run_compare(results, baseline, max_drop)
    Console().print(comparison_table(comparison))
    for warning in comparison.warnings:  # numbers from unlike environments: said, not judged
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if not comparison.ok:
        for c in comparison.failures:
            change = "" if c.delta is None else f" {c.baseline:.4f} -> {c.current:.4f} ({c.delta:+.4f})"
            head = escape(f"{c.task} {c.metric}: {c.status}")
            console.print(f"[bold red]{head}[/]{change} {escape(c.note)}".rstrip(), highlight=False)
        raise typer.Exit(1)


@export_app.command("gc")
@user_errors
def export_gc_command(
    out: Annotated[Path, typer.Option("--out", help="build context folder to write")],
    task: Annotated[Optional[str], typer.Argument(
        help="work directory with selection.json, descriptor file, or task name (optional with --model)")] = None,
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="package this model.zip (selfunet export-model) instead of the work directory's folds")] = None,
    test: Annotated[bool, typer.Option("--test", help="build it, run it on a test case, compare with "
                                       "`selfunet predict --selection`")] = False,
    image: Annotated[str, typer.Option(help="base: the project image (harness image build)")] = "selfunet:latest",
    input_slug: Annotated[Optional[list[str]], typer.Option(
        help="the phase's input socket slug: once (all channels in one image, 4D for several channels) or once per "
        "channel (default: the image sockets of --inputs-json, else 'image')")] = None,
    output_slug: Annotated[str, typer.Option(help="output socket slug")] = "segmentation",
    inputs_json: Annotated[Optional[Path], typer.Option(
        help="the phase's inputs.json: the test case is laid out as it says (slugs, relative paths)")] = None,
    model_tarball: Annotated[bool, typer.Option(
        "--model-tarball", help="ship the model as model.tar.gz (mounted at /opt/ml/model by the platform) instead "
        "of inside the image")] = False,
    mirroring: Annotated[bool, typer.Option("--mirroring/--no-mirroring", help="mirror test-time augmentation in "
                                            "the container (off: several times faster on a CPU)")] = True,
    tag: Annotated[Optional[str], typer.Option(help="algorithm image tag (default selfunet-gc-<task>:latest)")] = None,
    tasks_dir: Annotated[Path, typer.Option("--tasks", help="where task names are looked up")] = Path("tasks"),
    work_root: Annotated[Path, typer.Option(help="work directories are DIR/<task>")] = Path("work"),
    dataset: Annotated[Optional[Path], typer.Option(help="dataset folder the test case comes from (default: the "
                                                    "task descriptor's; needed when TASK is a work directory)")]
    = None,
    tasks_root: TasksRootOpt = None,
) -> None:
    """A grand-challenge algorithm container build context for the task's selected model (docs/guide/containers.md)."""
    from harness.challenge.gc_export import export_gc, test_container

    path = None if task is None else Path(task)
    if path is not None and not path.exists():  # a work directory or a descriptor is taken as it is
        path = _find_task(task, tasks_dir, None, tasks_root).source
    context = export_gc(path, out, image=image, input_slugs=input_slug, output_slug=output_slug,
                        work_root=work_root, tag=tag, model_tarball=model_tarball, inputs_json=inputs_json,
                        mirroring=mirroring, model=model, dataset=dataset)
    console.print(f"grand-challenge build context: {escape(str(context))} (do_build.sh, do_test_run.sh, do_save.sh)",
                  highlight=False)
    if test:
        result = test_container(context)
        console.print(f"[green]container test passed[/]: {escape(str(result))}", highlight=False)


def _find_task(task: str, tasks_dir: Path, data_root: Optional[Path], tasks_root: Optional[Path] = None,
               nnunet_raw: Optional[Path] = None):
    """A descriptor file, or a task name looked up under ``tasks_dir``: the one lookup every
    command that takes a TASK argument goes through, so they all accept and refuse the same."""
    from harness.tasks.selection import find_task

    return find_task(task, tasks_dir, data_root, tasks_root, nnunet_raw)


@app.command()
@user_errors
def score(
    task: Annotated[str, typer.Argument(help="task name (looked up under --tasks) or descriptor file")],
    submission: Annotated[Optional[list[str]], typer.Option(
        "--submission", "-s", help="NAME=IMAGE (a grand-challenge algorithm image), NAME=FOLDER (label maps "
        "named like the cases) or NAME=MODEL (a model.zip, or an nnU-Net v2 model folder or zip, predicted with "
        "`selfunet predict --model`); repeat")] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", help="NAME=MODEL.tar.gz: the separate model tarball of container submission NAME (harness export "
        "gc --model-tarball), mounted read-only at /opt/ml/model as the platform mounts it; repeat")] = None,
    no_selfunet: Annotated[bool, typer.Option("--no-selfunet", help="leave selfunet's own selected model out")]
    = False,
    input_slug: Annotated[Optional[list[str]], typer.Option(
        help="input socket slug; one: all channels in one (4D) image; several: one per channel (default: the "
        "image's labels from `harness export gc`, else 'image')")] = None,
    output_slug: Annotated[Optional[str], typer.Option(help="output socket slug (default: the image's, else "
                                                       "'segmentation')")] = None,
    case_timeout: Annotated[Optional[float], typer.Option(help="seconds per case (default: scoring.case_timeout_s)")]
    = None,
    memory_gb: Annotated[Optional[float], typer.Option(help="memory limit per case in GB (default: scoring.memory_gb, "
                                                       "else resources.memory_gb)")] = None,
    cpus: Annotated[Optional[float], typer.Option(help="CPUs per case (default: scoring.cpus, else resources.cpus)")]
    = None,
    gpu: Annotated[Optional[int], typer.Option(help="host GPU index given to the containers (default: none)")] = None,
    mirroring: Annotated[bool, typer.Option("--mirroring/--no-mirroring", help="mirror test-time augmentation for "
                                            "selfunet's own model and NAME=MODEL submissions (match the export's)")]
    = True,
    tasks_dir: Annotated[Path, typer.Option("--tasks", help="where task names are looked up")] = Path("tasks"),
    work_root: Annotated[Path, typer.Option(help="work directories are DIR/<task>")] = Path("work"),
    results: ResultsOpt = Path("results"),
    data_root: DataRootOpt = None,
    tasks_root: TasksRootOpt = None, nnunet_raw: NnunetRawOpt = None,
) -> None:
    """Score submissions (and selfunet's model) on the task's held-out test set: results/<task>/scores/."""
    from harness.challenge.score import ScoreOptions, parse_submission, score_task, with_models

    t = _find_task(task, tasks_dir, data_root, tasks_root, nnunet_raw)
    submissions = with_models([parse_submission(s) for s in submission or []], model or [])
    if not submissions and no_selfunet:
        raise SelfUNetError("nothing to score: give --submission NAME=IMAGE_OR_FOLDER, or drop --no-selfunet.")
    options = ScoreOptions(input_slugs=input_slug, output_slug=output_slug, gpu=gpu, case_timeout_s=case_timeout,
                           memory_gb=memory_gb, cpus=cpus, selfunet_mirroring=mirroring)
    score_task(t, submissions, work_root / t.name, results, options, selfunet=not no_selfunet, console=console)
    board = results / t.name / "scores" / "leaderboard.md"
    console.print(board.read_text(), highlight=False, markup=False, soft_wrap=True)
    _rank_scored(t.name, results, work_root)


def _rank_scored(task: str, results: Path, work_root: Path) -> None:
    """After scoring: the ranking of everything scored so far (scores/ranking.md), and, when the task
    has leaderboards, those and the HTML report re-rendered with it (harness.results.ranking, harness.report.html)."""
    from harness.report.html import write_report
    from harness.results.publish import rerender
    from harness.results.ranking import rank_scores
    from harness.results.tables import ranking_markdown
    from selfunet.artifacts import atomic_write_text

    ranking = rank_scores(task, results / task / "scores")
    if ranking is None:
        return
    text = ranking_markdown(ranking, f"{task}: ranking on the held-out test cases")
    atomic_write_text(results / task / "scores" / "ranking.md", text)
    console.print(text, highlight=False, markup=False, soft_wrap=True)
    if (results / task / "selection.json").is_file():
        write_report(rerender([task], results, work_root), results, work_root)


image_app = typer.Typer(no_args_is_help=True, help="The project's Docker image (Dockerfile; docs/guide/containers.md).")
app.add_typer(image_app, name="image")


@image_app.command("build")
@user_errors
def image_build(
    base_image: Annotated[str, typer.Option(help="FROM image: a CUDA PyTorch runtime, or selfunet-base:bookworm "
                                            "(.ci/base-image.sh) where no registry is reachable")]
    = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
    tag: Annotated[Optional[list[str]], typer.Option(help="tags (default selfunet:<version>-<git rev>, "
                                                     "selfunet:<version>, selfunet:latest)")] = None,
    torch: Annotated[Optional[str], typer.Option(help="torch for the wheelhouse: a wheel file, a requirement, or "
                                                 "'none' (default: none on a pytorch/ base, else the CPU wheel)")]
    = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="do not print the build output")] = False,
) -> None:
    """Build the project image through the Docker Engine API (DOCKER_HOST honoured)."""
    from harness.sandboxes.image import build_image, image_summary

    chosen: str | bool | None = True if torch is None else (None if torch.lower() == "none" else torch)
    image_id = build_image(base_image, tags=tag or None, torch=chosen,
                          echo=None if quiet else (lambda line: console.print(line, highlight=False, markup=False)))
    Console().print(image_summary(image_id))


@app.command()
def version() -> None:
    """Print the installed selfunet version."""
    from selfunet import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
