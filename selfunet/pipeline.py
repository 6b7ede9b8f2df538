"""``selfunet run``: every stage for one dataset, each skipped when its artifact is complete.

check -> fingerprint -> plan -> preprocess -> train (configuration x fold, with out-of-fold
validation predictions; lowres before its cascade) -> cross-validation -> selection (ensembles,
postprocessing) -> test predictions. A rerun after a crash resumes: finished stages are skipped,
an interrupted training resumes from its latest checkpoint, preprocessing and prediction skip
finished cases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import Plan, PlannerSettings
from selfunet.training.train_config import TrainConfig
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)

#: training order: a cascade stage needs its previous stage's out-of-fold predictions first.
CONFIGURATION_ORDER = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


@dataclass(frozen=True)
class RunOptions:
    configurations: tuple[str, ...] | None = None
    """configurations to train and consider (default: all the planner makes)."""
    folds: tuple[int, ...] | None = None
    """folds to train (default: all); selection needs every fold of a configuration."""
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: dict[str, Any] = field(default_factory=dict)
    """InferenceConfig field overrides for the out-of-fold and test predictions (``--step-fraction`` ...)."""
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    processes: int = 2
    nsd_tolerance_mm: float | None = None
    hd95: bool = False
    predict_test: bool = True


@dataclass
class StageTiming:
    name: str
    seconds: float
    skipped: bool


@dataclass
class RunReport:
    work: Path
    timings: list[StageTiming] = field(default_factory=list)
    selection_path: Path | None = None
    test_predictions: Path | None = None


class _Stages:
    def __init__(self, report: RunReport, console: Console) -> None:
        self.report, self.console = report, console

    def run(self, name: str, done: bool, action) -> None:
        if done:
            self.console.print(f"[dim]- {name}: done already, skipped[/]")
            self.report.timings.append(StageTiming(name, 0.0, True))
            return
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        action()
        self.report.timings.append(StageTiming(name, time.perf_counter() - start, False))


def ordered(configurations: list[str]) -> list[str]:
    known = [c for c in CONFIGURATION_ORDER if c in configurations]
    return known + sorted(c for c in configurations if c not in CONFIGURATION_ORDER)


def choose_configurations(plan: Plan, requested: tuple[str, ...] | None) -> list[str]:
    if requested is None:
        return ordered(list(plan.configurations))
    unknown = [c for c in requested if c not in plan.configurations]
    if unknown:
        raise SelfUNetError(
            f"configuration(s) {', '.join(unknown)} not in the plan; it has {', '.join(plan.configurations)}."
        )
    chosen = set(requested)
    for name in requested:  # a cascade stage needs its previous stage trained too
        previous = plan.configurations[name].previous_stage
        if previous is not None:
            chosen.add(previous)
    return ordered(sorted(chosen))


def run_pipeline(dataset: Path, work: Path, options: RunOptions, console: Console | None = None) -> RunReport:
    """Every stage on ``dataset`` in ``work``, holding the work directory's lock (one writer at a time:
    a second ``selfunet run`` on the same folder exits saying who holds it)."""
    from selfunet.locks import WORK_LOCK, exclusive

    with exclusive(Path(work), WORK_LOCK, "the work directory"):
        return _run_pipeline(dataset, work, options, console)


def _run_pipeline(dataset: Path, work: Path, options: RunOptions, console: Console | None = None) -> RunReport:
    from selfunet.data.check import check_dataset, render_report
    from selfunet.planning.fingerprint import run_fingerprint
    from selfunet.planning.fingerprint_types import Fingerprint
    from selfunet.planning.plan import plan_experiment
    from selfunet.preprocessing.preprocess import run_preprocess

    console = console or Console(stderr=True)
    workdir = WorkDir(work)
    workdir.root.mkdir(parents=True, exist_ok=True)
    report = RunReport(work=workdir.root)
    stages = _Stages(report, console)
    dataset = Path(dataset).resolve()

    def check() -> None:
        result = check_dataset(dataset, processes=options.processes, console=console)
        render_report(result, console)
        if result.errors:
            raise SelfUNetError(f"{dataset}: {len(result.errors)} problem(s) found (listed above); fix them first.")

    def fingerprint_done() -> bool:
        if not workdir.fingerprint.is_file():
            return False
        return Path(Fingerprint.load(workdir.fingerprint).dataset.root) == dataset

    stages.run("check", fingerprint_done(), check)
    stages.run("fingerprint", fingerprint_done(),
               lambda: run_fingerprint(dataset, workdir.root, processes=options.processes))

    def plan_done() -> bool:
        return workdir.plan.is_file() and Plan.load(workdir.plan).settings == options.planner

    def make_plan() -> None:
        plan_experiment(Fingerprint.load(workdir.fingerprint), options.planner).save(workdir.plan)

    stages.run("plan", plan_done(), make_plan)
    plan = Plan.load(workdir.plan)
    configurations = choose_configurations(plan, options.configurations)
    stages.run("preprocess", False,
               lambda: run_preprocess(workdir.root, configurations, processes=options.processes, console=console))

    from selfunet.runtime import checkpoint_problem
    from selfunet.training.train import CHECKPOINT_FINAL

    for name in configurations:
        num_folds = _num_folds(workdir, plan, name, options)
        folds = options.folds if options.folds is not None else tuple(range(num_folds))
        for fold in folds:
            out = workdir.training(name, fold)
            done = checkpoint_problem(out / CHECKPOINT_FINAL) is None and _validation_complete(workdir, name, fold)
            stages.run(f"train {name} fold {fold}", done,
                       lambda n=name, f=fold: run_training(workdir.root, n, f, options.train, resume=True,
                                                           inference=options.inference, console=console))

    full_cv = options.folds is None
    if not full_cv:
        console.print("[yellow]only some folds were trained: cross-validation and selection need every fold; "
                      "stopping after training.[/]")
        return report

    from selfunet.evaluation.crossval import run_crossval
    from selfunet.evaluation.ensemble import select_model

    for name in configurations:
        stages.run(f"cross-validation {name}", False,
                   lambda n=name: run_crossval(workdir.root, n, nsd_tolerance_mm=options.nsd_tolerance_mm,
                                               hd95=options.hd95))
    selection_path = workdir.root / "selection.json"
    stages.run("selection + postprocessing", _selection_current(workdir, selection_path, configurations),
               lambda: select_model(workdir.root, configurations))
    report.selection_path = selection_path

    if options.predict_test:
        _predict_test(workdir, dataset, selection_path, options, stages, console, report)
    return report


def _num_folds(workdir: WorkDir, plan: Plan, name: str, options: RunOptions) -> int:
    from selfunet.training.splits import load_or_create_splits

    data = workdir.preprocessed(plan.configurations[name].data_identifier)
    case_ids = sorted(p.stem for p in data.glob("*.json") if not p.name.startswith(("dataset", ".")))
    return len(load_or_create_splits(workdir.splits, case_ids, options.train.num_folds, options.train.split_seed))


def _validation_complete(workdir: WorkDir, name: str, fold: int) -> bool:
    import json

    summary = workdir.training(name, fold) / "training_summary.json"
    if not summary.is_file():
        return False
    validation = workdir.training(name, fold) / "validation"
    cases = json.loads(summary.read_text()).get("validation_cases", [])
    return all((validation / f"{c}.npz").is_file() for c in cases)


def _selection_current(workdir: WorkDir, selection_path: Path, configurations: list[str]) -> bool:
    """selection.json exists, covers these configurations and is newer than every CV result."""
    from selfunet.evaluation.ensemble import Selection

    if not selection_path.is_file():
        return False
    selection = Selection.load(selection_path)
    singles = {c.name for c in selection.candidates if len(c.members) == 1}
    if singles != set(configurations):
        return False
    newest = max(((workdir.root / "crossval" / c / "crossval.json").stat().st_mtime
                  for c in configurations if (workdir.root / "crossval" / c / "crossval.json").is_file()), default=None)
    return newest is not None and selection_path.stat().st_mtime >= newest


def _predict_test(workdir: WorkDir, dataset: Path, selection_path: Path, options: RunOptions, stages: _Stages,
                  console: Console, report: RunReport) -> None:
    from selfunet.data.dataset import load_dataset
    from selfunet.evaluation.ensemble import Selection
    from selfunet.inference.predict import predict_cases
    from selfunet.training.budgets import prediction_overrides

    spec = load_dataset(dataset)
    if not spec.test:
        console.print("no test images in the dataset: nothing to predict.")
        return
    selection = Selection.load(selection_path)
    out = workdir.root / "test_predictions"
    files = [f for case in spec.test for f in case.images]
    expected = [out / case.images[0].name if spec.layout == "msd" else out / f"{case.case_id}{spec.file_ending}"
                for case in spec.test]
    done = all(p.is_file() and p.stat().st_mtime >= selection_path.stat().st_mtime for p in expected)
    stages.run("test predictions", done, lambda: predict_cases(
        files, out, workdir.root, list(selection.members), postprocessing=selection.postprocessing,
        mirroring=options.train.validation_mirroring, amp=options.train.amp, device=options.train.device,
        inference=prediction_overrides(options.train, options.inference), console=console))
    report.test_predictions = out


def run_training(work: Path, configuration: str, fold: int, config: TrainConfig, resume: bool = False,
                 restart: bool = False, inference: Mapping[str, Any] | None = None,
                 console: Console | None = None) -> Path:
    """Train one fold, then (optionally) predict its validation cases for model selection.

    This lives here, above both stages, because training must not import inference.

    One writer per fold: a second ``selfunet train`` of the same fold (or a ``selfunet run`` training
    it) exits saying who holds it. A stop signal (SIGTERM, SIGINT, SIGHUP) is answered within one
    iteration, validation batch or prediction window, in training and in the validation prediction.
    ``inference`` holds InferenceConfig field overrides for the validation predictions.
    """
    from selfunet.locks import exclusive
    from selfunet.runtime import stop_on_signals
    from selfunet.training.train import Trainer

    trainer = Trainer(work, configuration, fold, config, console=console)
    folder = trainer.out.parent
    with exclusive(folder, f".{trainer.out.name}.lock", f"training of {configuration} fold {fold}"), \
            stop_on_signals():
        started = time.perf_counter()
        final = trainer.run(resume=resume, restart=restart)
        trained = time.perf_counter()
        if config.predict_validation and trainer.val_ids:
            from selfunet.inference.predict import predict_validation_cases
            from selfunet.training.budgets import prediction_overrides

            predict_validation_cases(trainer.work, trainer.configuration.name, fold, trainer.val_ids, final,
                                     mirroring=config.validation_mirroring, amp=config.amp, device=config.device,
                                     inference=prediction_overrides(config, inference), console=trainer.console)
        write_cost(trainer.out, trainer.device, trained - started, time.perf_counter() - trained,
                   len(trainer.val_ids) if config.predict_validation else 0, resumed=resume)
    return final


COST_FILE = "cost.json"


def write_cost(fold_dir: Path, device, train_seconds: float, prediction_seconds: float, predicted_cases: int,
               resumed: bool = False) -> None:
    """``train/<config>/fold_<k>/cost.json``: what the fold cost, for the benchmark tables.

    ``train_seconds`` is the wall time of training in this process (a resumed run adds the time
    recorded by the run it continues); ``prediction_seconds`` that of predicting the validation
    cases; ``peak_memory_mb`` the process's peak (GPU tensor memory on a GPU, resident memory on a
    CPU: :func:`selfunet.runtime.peak_memory_mb`).
    """
    import json

    from selfunet.artifacts import atomic_write_json
    from selfunet.runtime import peak_memory_mb

    path = Path(fold_dir) / COST_FILE
    earlier = 0.0
    if resumed and path.is_file():
        try:
            earlier = float(json.loads(path.read_text()).get("train_seconds", 0.0))
        except (OSError, ValueError, AttributeError):
            earlier = 0.0
    peak, kind = peak_memory_mb(device)
    atomic_write_json(path, {"train_seconds": earlier + train_seconds, "prediction_seconds": prediction_seconds,
                             "predicted_cases": predicted_cases, "peak_memory_mb": peak, "memory": kind,
                             "device": str(device)})
