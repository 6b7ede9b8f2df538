"""The job graph of one task, content hashes of job inputs, and the markers that make reruns resume.

Per task::

    [demo-data] -> check -> fingerprint -> plan -> preprocess -> train-<config>-fold<k> (each)
        -> crossval-<config> -> select -> [seeds] -> predict-test -> export

With several training seeds (``harness run --seeds 0,1,2``) the first seed's jobs are the ones
above, in WORK; every further seed has its own ``train-...-seed<s>``, ``crossval-...-seed<s>`` and
``select-seed<s>`` in ``WORK/seeds/<s>/``, and the ``seeds`` job selects by the mean over seeds
(:mod:`harness.results.seeds`).

With several planners (descriptor key ``planners``), each preset P adds its own chain
``plan@P -> preprocess@P -> train-<config>@P-fold<k> -> crossval-<config>@P`` in the work
directory ``WORK/planners/P`` (same fingerprint, the default one's splits copied in; for a further
seed, ``WORK/seeds/<s>/planners/P`` linked to it like the seed's own work directory), and
``select`` ranks the configurations of every planner together (members named ``<config>@P``).

The configurations exist only once ``plan.json`` does, and the folds once ``splits.json`` does, so
the graph grows as jobs finish (:meth:`TaskGraph.expand`). A job's hash is computed when it becomes
ready, from: its own inputs (the descriptor fields it reads), the hashes of the jobs it depends on
(so a change redoes everything downstream), the content of the artifacts it reads that a user may
edit by hand (``plan.json``, ``splits.json``, ``selection.json``), the code version and the
sandbox image. A finished job leaves ``WORK/.harness/jobs/<job>.json`` holding that hash; a rerun
skips a job whose marker matches and whose outputs are still there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.tasks.descriptor import TaskDescriptor
from selfunet.artifacts import atomic_write_bytes, atomic_write_json
from selfunet.errors import SelfUNetError
from selfunet.workdir import WorkDir, member_name

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 50


@dataclass(frozen=True)
class Job:
    """One node of the graph: a ``selfunet`` CLI call (``argv``) or, rarely, an in-process ``action``.

    ``inputs`` is what the hash covers besides upstream hashes and ``artifacts``; it must hold
    every setting that changes the job's result and nothing that does not (worker counts, paths
    of logs), so that ``--jobs 4`` does not redo a finished task.
    """

    id: str
    stage: str
    argv: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)
    artifacts: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    """files that must exist for a matching marker to count (a deleted output redoes the job)."""
    restart_argv: tuple[str, ...] | None = None
    """argv used when earlier results of *different* inputs must be discarded (train --restart)."""
    action: Callable[[], None] | None = None
    uses_gpu: bool = False
    read_only: tuple[Path, ...] = ()


@functools.cache
def code_version() -> str:
    """selfunet's version plus the git tree id of the committed ``selfunet/`` package, when there is one.

    The tree of the package, not the commit: a commit that only touches the harness, tests or docs
    does not redo trainings. Uncommitted edits are not seen; use ``--force`` after those.
    """
    import selfunet

    version = selfunet.__version__
    package = Path(selfunet.__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=package, capture_output=True, text=True,
                             timeout=10)
        if top.returncode == 0:
            rel = package.relative_to(Path(top.stdout.strip()).resolve()).as_posix()
            tree = subprocess.run(["git", "rev-parse", f"HEAD:{rel}"], cwd=package, capture_output=True, text=True,
                                  timeout=10)
            if tree.returncode == 0:
                version += f"+tree.{tree.stdout.strip()[:12]}"
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return version


def file_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_digest(root: Path) -> str:
    """dataset.json's content plus name, size and mtime of every image: cheap, and any edit shows."""
    digest = hashlib.sha256((file_digest(root / "dataset.json") or "").encode())
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        folder = root / sub
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    st = f.stat()
                    digest.update(f"{sub}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def job_hash(job: Job, dep_hashes: Mapping[str, str], image: str | None, version: str | None = None) -> str:
    payload = {
        "job": job.id, "stage": job.stage, "inputs": job.inputs, "deps": dict(sorted(dep_hashes.items())),
        "artifacts": {p.name: file_digest(p) for p in job.artifacts}, "code": version or code_version(),
        "image": image,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# -- markers --------------------------------------------------------------------------------------
@dataclass
class Markers:
    """``WORK/.harness/jobs/<job>.json`` (status, hash, times, exit code, log tail) and the logs."""

    work: Path

    @property
    def root(self) -> Path:
        return self.work / ".harness"

    def marker(self, job_id: str) -> Path:
        return self.root / "jobs" / f"{job_id}.json"

    def log(self, job_id: str) -> Path:
        return self.root / "logs" / f"{job_id}.log"

    def read(self, job_id: str) -> dict | None:
        try:
            return json.loads(self.marker(job_id).read_text())
        except (OSError, json.JSONDecodeError):
            return None  # missing or torn by a crash: the job simply runs again

    def write(self, job_id: str, record: dict) -> None:
        atomic_write_json(self.marker(job_id), record)

    def log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> list[str]:
        try:
            text = self.log(job_id).read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def output_problem(path: Path) -> str | None:
    """Why a job's output cannot be trusted (None when it can): missing, empty, a JSON file that does
    not parse, a checkpoint that does not load. Checkpoints are opened memory-mapped with
    ``weights_only=True``: cheap, and nothing written by a job is unpickled as code."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        return None
    if path.stat().st_size == 0:
        return "empty"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"not readable JSON ({type(exc).__name__})"
    elif path.suffix == ".pt":
        from selfunet.runtime import checkpoint_problem

        return checkpoint_problem(path)
    return None


def invalid_outputs(job: Job) -> dict[Path, str]:
    """The job's outputs that exist but cannot be trusted, with the reason."""
    problems = {p: output_problem(p) for p in job.outputs if Path(p).exists()}
    return {p: why for p, why in problems.items() if why}


def is_done(marker: dict | None, digest: str, job: Job) -> bool:
    """The marker says succeeded with this hash, and every output is there and valid."""
    return (marker is not None and marker.get("status") == "succeeded" and marker.get("hash") == digest
            and all(output_problem(p) is None for p in job.outputs))


def set_aside(path: Path) -> Path:
    """Move an untrustworthy output out of the way (kept for inspection, never trusted again)."""
    target = path.with_name(f"{path.name}.invalid-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(target)
    return target


# -- the graph of one task ------------------------------------------------------------------------
class TaskGraph:
    """Builds the jobs of one task; ``expand`` adds the jobs a finished job makes possible."""

    def __init__(self, task: TaskDescriptor, work: Path, results: Path, seeds: list[int] | None = None) -> None:
        self.task = task
        self.work = Path(work).resolve()
        self.results = Path(results).resolve()
        self.markers = Markers(self.work)
        self.train_config = task.train_config()
        self.seeds = list(seeds) if seeds else [self.train_config.seed]
        """training seeds; the first trains in WORK, the others in WORK/seeds/<seed> (harness.results.seeds)."""
        if self.train_config.seed != self.seeds[0]:
            self.train_config = self.train_config.model_copy(update={"seed": self.seeds[0]})
        self.configurations: list[str] = []
        """member names of every planner's configurations (``3d_fullres``, ``3d_fullres@resenc-m``)."""
        self.num_folds = 0
        self.planners = list(task.planners)
        if len(self.seeds) > 1 and "default" not in self.planners:
            raise SelfUNetError(f"task '{task.name}': several seeds need the default planner among 'planners' "
                                "(the seeds' work directories share its files); add `default` to planners.")
        self._by_planner: dict[str, list[str]] = {}
        self._trained: set[str] = set()
        self._expanders: dict[str, Callable[[], list[Job]]] = {}
        for planner in self.planners:
            sfx = self._suffix(planner)
            self._expanders[f"plan{sfx}"] = functools.partial(self._after_plan, planner)
            self._expanders[f"preprocess{sfx}"] = functools.partial(self._after_preprocess, planner)
        self._overrides: dict[str, Any] | None = None

    # --- helpers
    @property
    def _p(self) -> tuple[str, ...]:
        return ("-p", str(self.task.resources.cpus))

    def _w(self, name: str) -> Path:
        return self.work / name

    @staticmethod
    def _suffix(planner: str) -> str:
        """"" for the default planner, "@<preset>" otherwise (job ids and member names)."""
        return member_name("", planner)

    def _planner_work(self, planner: str, work: Path | None = None) -> Path:
        base = work or self.work
        return base if planner == "default" else WorkDir(base).planner(planner).root

    def initial_jobs(self) -> list[Job]:
        t, data = self.task, str(self.task.dataset)
        jobs: list[Job] = []
        first_deps: tuple[str, ...] = ()
        if t.demo is not None:
            def generate() -> None:
                from selfunet.data.demo import make_demo_dataset

                make_demo_dataset(t.dataset, num_training=t.demo.cases, num_test=t.demo.test_cases, seed=t.demo.seed,
                                  variant=t.demo.variant)

            # the default variant hashes as before the variants existed (no rerun of existing demo data)
            demo = t.demo.model_dump(exclude={"variant"} if t.demo.variant == "default" else None)
            jobs.append(Job("demo-data", "data", inputs={"demo": demo, "dataset": data},
                            outputs=(t.dataset / "dataset.json",), action=generate))
            first_deps = ("demo-data",)
        dataset_inputs = {"dataset": data, "dataset_digest": _LazyDigest(t.dataset)}
        jobs += [
            Job("check", "check", ("check", data, *self._p), first_deps, dataset_inputs, read_only=(t.dataset,)),
            Job("fingerprint", "fingerprint", ("fingerprint", data, "--work", str(self.work), *self._p), ("check",),
                dataset_inputs, outputs=(self._w("fingerprint.json"),), read_only=(t.dataset,)),
        ]
        for planner in self.planners:
            if planner == "default":
                jobs.append(Job("plan", "plan", ("plan", str(self.work), "--gpu-memory-gb", str(t.gpu_memory_gb)),
                                ("fingerprint",), {"gpu_memory_gb": t.gpu_memory_gb},
                                artifacts=(self._w("fingerprint.json"),), outputs=(self._w("plan.json"),)))
                continue
            # a preset plans for its own GPU memory target (8 / 24 / 40 GB), from the shared fingerprint
            work = self._planner_work(planner)
            jobs.append(Job(f"plan{self._suffix(planner)}", "plan",
                            ("plan", str(work), "--preset", planner, "--fingerprint", str(self._w("fingerprint.json"))),
                            ("fingerprint",), {"preset": planner}, artifacts=(self._w("fingerprint.json"),),
                            outputs=(work / "plan.json",)))
        return jobs

    def expands(self, job_id: str) -> bool:
        """Whether the graph grows once ``job_id`` has finished (plan, preprocess)."""
        return job_id in self._expanders

    def expand(self, job_id: str) -> list[Job]:
        """Jobs that become known once ``job_id`` has finished (raises SelfUNetError if it cannot)."""
        expander = self._expanders.get(job_id)
        return expander() if expander else []

    def _after_plan(self, planner: str = "default") -> list[Job]:
        from selfunet.pipeline import choose_configurations
        from selfunet.planning.plan_types import Plan

        work, sfx = self._planner_work(planner), self._suffix(planner)
        plan = Plan.load(work / "plan.json")
        requested = tuple(self.task.configurations) if self.task.configurations else None
        if requested is not None and planner != "default":
            # a preset may plan fewer configurations (e.g. no cascade): it trains those it has
            requested = tuple(c for c in requested if c in plan.configurations) or None
        configurations = choose_configurations(plan, requested)
        self._by_planner[planner] = configurations
        self.configurations = [member_name(c, p) for p in self.planners for c in self._by_planner.get(p, [])]
        argv = ["preprocess", str(work)]
        for name in configurations:
            argv += ["-c", name]
        return [Job(f"preprocess{sfx}", "preprocess", (*argv, *self._p), (f"plan{sfx}",),
                    {"configurations": configurations}, artifacts=(work / "plan.json",),
                    read_only=(self.task.dataset,))]

    def _copy_splits(self, planner: str) -> None:
        """A preset's work directory gets the default one's splits, so every candidate is
        cross-validated on the same folds (pairs across planners need that)."""
        target = self._planner_work(planner) / "splits.json"
        content = self._w("splits.json").read_bytes()
        if not target.is_file() or target.read_bytes() != content:
            atomic_write_bytes(target, content)

    def _make_splits(self, planner: str = "default") -> int:
        """Write WORK/splits.json (what ``selfunet train`` would write on first use) before any training,
        so train hashes can cover it; a file with another fold count than the task asks for is
        replaced (the descriptor decides the folds; a hand-edited file with the right count wins).

        The task's ``holdout`` cases are left out of every fold: ``selfunet train`` and ``crossval``
        read the folds from this file, so those cases are never trained on nor used to select the
        model, and ``harness score`` can test on them. (They are still preprocessed, and the
        fingerprint's dataset statistics include them: the plan sees their images, not how they score.)
        A preset's work directory gets a copy of WORK's splits (the first planner to finish
        preprocessing writes them)."""
        wanted = self._write_splits(planner)
        if planner != "default":
            self._copy_splits(planner)
        return wanted

    def _write_splits(self, planner: str) -> int:
        from selfunet.planning.plan_types import Plan
        from selfunet.training.splits import load_splits, make_splits, save_splits

        work = self._planner_work(planner)
        plan = Plan.load(work / "plan.json")
        data = work / "preprocessed" / plan.configurations[self._by_planner[planner][0]].data_identifier
        case_ids = sorted(p.stem for p in data.glob("*.json") if not p.name.startswith(("dataset", ".")))
        if not case_ids:
            raise SelfUNetError(f"{data}: no preprocessed cases; rerun the preprocess job.")
        held_out = set(self.task.holdout.select(case_ids)) if self.task.holdout is not None else set()
        case_ids = [c for c in case_ids if c not in held_out]
        wanted, splits = self.train_config.num_folds, self._w("splits.json")
        if splits.is_file():
            folds = load_splits(splits, case_ids + sorted(held_out))
            leaked = sorted(held_out & {c for f in folds for c in (*f.train, *f.val)})
            if leaked:
                log.warning("%s puts held-out case(s) %s in a fold: writing new splits without them.", splits,
                            leaked[:5])
            elif len(folds) == wanted:
                return wanted
            else:
                log.warning("%s holds %d folds but task '%s' asks for %d: writing new splits.", splits, len(folds),
                            self.task.name, wanted)
        save_splits(splits, make_splits(case_ids, wanted, self.train_config.split_seed))
        return wanted

    def _train_overrides(self) -> dict[str, Any]:
        """TrainConfig fields that differ from the defaults (augmentation ones nested), as JSON: what
        the train jobs' hashes cover. ``selfunet train`` has an option for every one of them."""
        if self._overrides is None:
            defaults = type(self.train_config)().model_dump(mode="json")
            current = self.train_config.model_dump(mode="json")
            passed = {k: v for k, v in current.items() if k != "augmentation" and v != defaults[k]}
            augmentation = {k: v for k, v in current["augmentation"].items() if v != defaults["augmentation"][k]}
            if augmentation:
                passed["augmentation"] = augmentation
            self._overrides = passed
        return self._overrides

    def _train_argv(self, name: str, fold: int, work: Path | None = None, seed: int | None = None) -> tuple[str, ...]:
        from selfunet.cli_options import train_argv

        config = self.train_config if seed is None else self.train_config.model_copy(update={"seed": seed})
        return ("train", str(work or self.work), "-c", name, "-f", str(fold), *train_argv(config))

    def _after_preprocess(self, planner: str = "default") -> list[Job]:
        """This planner's training and cross-validation jobs for every seed; once every planner's
        are known, the selections (which rank all planners' configurations) and what follows."""
        from harness.results.seeds import link_seed_work, seed_work, select_by_seed_mean

        self.num_folds = self._make_splits(planner)
        jobs = []
        for seed in self.seeds:
            work = seed_work(self.work, self.seeds, seed)
            if work != self.work:
                link_seed_work(self._planner_work(planner), self._planner_work(planner, work))
            jobs += self._train_jobs(planner, work, "" if work == self.work else f"-seed{seed}",
                                     None if work == self.work else seed)
        self._trained.add(planner)
        if self._trained != set(self.planners):
            return jobs  # select waits until every planner's jobs are known
        for seed in self.seeds:
            work = seed_work(self.work, self.seeds, seed)
            jobs.append(self._select_job(work, "" if work == self.work else f"-seed{seed}"))
        if len(self.seeds) > 1:
            jobs.append(Job("seeds", "select", (), ("select", *(f"select-seed{s}" for s in self.seeds[1:])),
                            {"seeds": self.seeds}, outputs=(self._w("seeds.json"),),
                            action=functools.partial(select_by_seed_mean, self.work, self.seeds)))
        return jobs + self._prediction_jobs()

    def _train_jobs(self, planner: str, seed_dir: Path, suffix: str, seed: int | None) -> list[Job]:
        """Training and cross-validation of one planner's configurations for one seed (the seed's
        work directory ``seed_dir``; job ids end in ``suffix``)."""
        from selfunet.planning.plan_types import Plan

        shared, work = self._planner_work(planner), self._planner_work(planner, seed_dir)
        plan = Plan.load(shared / "plan.json")
        overrides = self._train_overrides() | ({"seed": seed} if seed is not None else {})
        jobs = []
        for name in self._by_planner[planner]:
            member = member_name(name, planner)
            previous = plan.configurations[name].previous_stage
            previous_member = member_name(previous, planner) if previous else None
            fold_ids = []
            for fold in range(self.num_folds):
                job_id = f"train-{member}-fold{fold}{suffix}"
                deps = (f"preprocess{self._suffix(planner)}",
                        *(f"train-{previous_member}-fold{k}{suffix}" for k in range(self.num_folds) if previous))
                argv = self._train_argv(name, fold, work, seed)
                inputs = {"configuration": name, "fold": fold, "train_config": overrides}
                jobs.append(Job(job_id, "train", (*argv, "--resume"), deps,
                                inputs if planner == "default" else {**inputs, "planner": planner},
                                artifacts=(shared / "plan.json", shared / "splits.json"),
                                outputs=(work / "train" / name / f"fold_{fold}" / "checkpoint_final.pt",),
                                restart_argv=(*argv, "--restart"), uses_gpu=True))
                fold_ids.append(job_id)
            argv = ["crossval", str(work), "-c", name, *self._metric_flags(), *self._p]
            jobs.append(Job(f"crossval-{member}{suffix}", "crossval", tuple(argv), tuple(fold_ids),
                            {"metrics": self.task.metrics.model_dump()}, read_only=(self.task.dataset,)))
        return jobs

    def _select_job(self, work: Path, suffix: str) -> Job:
        """Selection over every planner's configurations of one seed."""
        argv = ["select", str(work)]
        for name in self.configurations:
            argv += ["-c", name]
        return Job(f"select{suffix}", "select", (*argv, *self._p),
                   tuple(f"crossval-{n}{suffix}" for n in self.configurations),
                   {"configurations": self.configurations}, outputs=(work / "selection.json",))

    def _metric_flags(self) -> list[str]:
        m = self.task.metrics
        return ([f"--nsd-tolerance-mm={m.nsd_tolerance_mm}"] if m.nsd_tolerance_mm else []) + (
            ["--hd95"] if m.hd95 else [])

    def _prediction_cap(self) -> tuple[str, ...]:
        """Small budgets bound the voxels of windows per predicted case, for test images as for validation."""
        cap = self.train_config.prediction_max_window_voxels
        return () if cap is None else ("--max-window-voxels", str(cap))

    def _prediction_jobs(self) -> list[Job]:
        from selfunet.data.dataset import load_dataset

        spec = load_dataset(self.task.dataset)
        deps: tuple[str, ...] = ("seeds",) if len(self.seeds) > 1 else ("select",)
        jobs = []
        if spec.test:
            files = [str(f) for case in spec.test for f in case.images]
            jobs.append(Job("predict-test", "predict",
                            ("predict", *files, "-o", str(self._w("test_predictions")), "-w", str(self.work),
                             "--selection", str(self._w("selection.json")),
                             # small budgets (ci, demo) skip mirror TTA for test images as for validation
                             *(() if self.train_config.validation_mirroring else ("--no-mirroring",)),
                             *self._prediction_cap()), deps,
                            {"test_cases": sorted(c.case_id for c in spec.test)},
                            artifacts=(self._w("selection.json"),), outputs=(self._w("test_predictions"),),
                            uses_gpu=True, read_only=(self.task.dataset,)))
            deps = ("predict-test",)
        from harness.results.export import export_target

        out = export_target(self.task, self.results)
        jobs.append(Job("export", "export", (), deps, {"export": self.task.export.model_dump()},
                        outputs=(out,) if spec.test and self.task.export.format != "none" else (),
                        action=functools.partial(export_predictions, self.task, self.work, self.results)))
        return jobs


class _LazyDigest:
    """The dataset digest, computed when the hash is (the demo data may not exist yet at build time)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return dataset_digest(self.root)

    __repr__ = __str__


def export_predictions(task: TaskDescriptor, work: Path, results: Path) -> None:
    """The export job: results/<task>/selection.json and the challenge folder (:mod:`harness.results.export`)."""
    from harness.results.export import export_task

    export_task(task, work, results)
