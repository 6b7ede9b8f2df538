"""Task descriptors: one YAML file per task, validated by a schema, with ``include:`` of shared bases.

A descriptor says *what* to benchmark (the dataset folder, which configurations, how many folds,
the training budget, the metrics, the export format); the job graph (:mod:`harness.run.jobs`) says
*how*. Loading is strict on purpose (lm-evaluation-harness skips broken descriptors at debug
level; we do not): an unknown key, a bad value, a missing include or a missing dataset folder is a
:class:`~selfunet.errors.SelfUNetError` naming the file, the key and the fix, with "did you mean
...?" for near-miss keys.

``include:`` (a path or a list of paths, relative to the including file) pulls in base files
first; the including file's keys override them, mappings merged key by key (so a task can change
``metrics.hd95`` and keep the base's ``metrics.nsd_tolerance_mm``). A relative ``dataset`` path is
resolved against the folder of the file that wrote it, so a base may name a data folder too; an
nnU-Net dataset name or id is looked up under the nnU-Net raw folder (:mod:`selfunet.data.dataset_locator`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from harness.executors.slurm_spec import SlurmOptions
from harness.sandboxes.policy import ContainerPolicy
from harness.tasks.names import reserved_name_problem
from harness.tasks.yaml_reader import LOOKUP_KEY, load_raw
from selfunet.data.dataset_locator import DatasetLookup, lookup_in_root, nnunet_id
from selfunet.errors import SelfUNetError, clip, quote
from selfunet.planning.presets import PRESETS
from selfunet.training.budgets import BUDGETS, budget_config
from selfunet.training.train_config import TrainConfig

#: where ``harness ls`` / ``validate`` / ``run`` look when no path is given.
DEFAULT_TASKS_DIR = Path("tasks")
#: files or folders starting with these are bases, not tasks (``tasks/_base/decathlon.yaml``).
BASE_PREFIXES = ("_", ".")
KNOWN_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
from harness.tasks.sections import (  # noqa: E402,F401 (the sections are part of the descriptor's API)
    MAX_CASE_TIMEOUT_S,
    MAX_CPUS,
    MAX_DEMO_CASES,
    MAX_GPU_MEMORY_GB,
    MAX_MEMORY_GB,
    PLAIN_NAME,
    SEED_MAX,
    Budget,
    Demo,
    Export,
    Fetch,
    Holdout,
    Metrics,
    Resources,
    Scoring,
    Seed,
    _non_finite,
    _Strict,
)


class TaskDescriptor(_Strict):
    name: str = Field(pattern=PLAIN_NAME)
    description: str = ""
    dataset: Path
    """dataset folder (MSD or nnU-Net v2 layout); absolute after loading."""
    demo: Optional[Demo] = None
    configurations: Optional[list[str]] = None
    """configurations to train and consider; default: every one the planner makes."""
    folds: Optional[int] = Field(default=None, ge=2, le=1000, strict=True)
    """cross-validation folds (2 up to the number of training cases); default: the budget preset's
    (5 for ``full``)."""
    budget: Budget = Field(default_factory=Budget)
    gpu_memory_gb: float = Field(default=8.0, gt=0, le=MAX_GPU_MEMORY_GB)
    """the default planner's GPU memory target; the residual-encoder presets keep their own."""
    planners: list[str] = Field(default_factory=lambda: ["default"])
    """planner presets to plan, train and select across (``default``, ``resenc-m``, ``resenc-l``,
    ``resenc-xl``); each preset's configurations are candidates named ``<config>@<preset>``."""
    metrics: Metrics = Field(default_factory=Metrics)
    seed: Seed = 0
    training: dict[str, Any] = Field(default_factory=dict)
    """TrainConfig fields the train jobs run with, over the budget preset (``momentum: 0.9``;
    augmentation ones under ``augmentation:``, e.g. ``{p_rotation: 0.0}``): every ``selfunet train``
    option by its field name."""
    export: Export = Field(default_factory=Export)
    resources: Resources = Field(default_factory=Resources)
    container: ContainerPolicy = Field(default_factory=ContainerPolicy)
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)
    """``--executor slurm``: partition, account, QOS, constraint and extra ``#SBATCH`` lines
    (docs/guide/slurm.md); ``--slurm-*`` options override them."""
    """``--sandbox docker``: hardened by default; each field loosens one setting (docs/guide/containers.md)."""
    test_labels: Optional[Path] = None
    """folder of the test cases' reference label maps (named like the cases), for ``harness score``;
    absolute after loading."""
    holdout: Optional[Holdout] = None
    """training cases kept out of training and cross-validation, scored by ``harness score``."""
    scoring: Scoring = Field(default_factory=Scoring)
    fetch: Fetch = Field(default_factory=Fetch)
    """where ``harness fetch`` gets the dataset; not part of the results (the checksum pins the bytes)."""

    # not part of the YAML: where the descriptor came from and where its dataset was looked for (set by the loader).
    source: Path = Field(default=Path("<memory>"), exclude=True)
    dataset_lookup: Optional[DatasetLookup] = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _one_test_set(self) -> TaskDescriptor:
        if self.test_labels is not None and self.holdout is not None:
            raise ValueError("'test_labels' and 'holdout' both given; a task has one held-out test set: keep one")
        return self

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        problem = reserved_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("training")
    @classmethod
    def _training_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        elsewhere = {"epochs": "budget.epochs", "iterations_per_epoch": "budget.iterations_per_epoch",
                     "validation_iterations": "budget.validation_iterations", "num_folds": "folds", "seed": "seed"}
        for key in value:
            if key in elsewhere:
                raise ValueError(f"'{key}' is set by the descriptor's `{elsewhere[key]}` key, not under training")
        bad = _non_finite(value)
        if bad:  # TrainConfig ranges its own fields; no field of it takes an infinity or a NaN
            raise ValueError(f"training.{bad[0]} is {bad[1]}, not a number a run can use; give a finite value")
        try:
            TrainConfig.from_dict(value, source="training")
        except SelfUNetError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("configurations")
    @classmethod
    def _known_configurations(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is None:
            return value
        if not value:
            raise ValueError("empty list; leave the key out to use every configuration the planner makes")
        for name in value:
            if name not in KNOWN_CONFIGURATIONS:
                close = difflib.get_close_matches(name, KNOWN_CONFIGURATIONS, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ValueError(f"unknown configuration '{name}'; {hint}choose from {', '.join(KNOWN_CONFIGURATIONS)}")
        return sorted(dict.fromkeys(value), key=KNOWN_CONFIGURATIONS.index)

    @field_validator("planners")
    @classmethod
    def _known_planners(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("empty list; leave the key out to use the default planner only")
        for name in value:
            if name not in PRESETS:
                close = difflib.get_close_matches(name, list(PRESETS), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ValueError(f"unknown planner '{name}'; {hint}choose from {', '.join(PRESETS)}")
        return list(dict.fromkeys(value))

    # -- derived ----------------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        """The TrainConfig the train jobs run with (preset, then this file's overrides)."""
        b = self.budget
        return budget_config(b.preset, epochs=b.epochs, iterations_per_epoch=b.iterations_per_epoch,
                             validation_iterations=b.validation_iterations, num_folds=self.folds, seed=self.seed,
                             **self.training)

    @property
    def num_folds(self) -> int:
        return self.train_config().num_folds

    @property
    def export_folder(self) -> str:
        return self.export.folder or self.dataset.name

    def with_budget(self, preset: str) -> TaskDescriptor:
        """``harness run --budget``: the preset replaces this file's budget and folds (the rule in
        docs/reference/task-descriptors.md; :meth:`budget_override_note` says what changed)."""
        if preset not in BUDGETS:
            raise SelfUNetError(f"--budget {quote(preset)}: unknown preset; choose one of {', '.join(BUDGETS)}.")
        return self.model_copy(update={"budget": Budget(preset=preset), "folds": None})

    def budget_override_note(self, preset: str) -> str | None:
        """What ``--budget PRESET`` overrides of this descriptor, in words (None when nothing differs)."""
        replaced = self.with_budget(preset)
        mine, theirs = self.train_config(), replaced.train_config()
        changes = []
        if self.budget != replaced.budget:
            changes.append(f"budget '{self.budget.preset}' ({mine.epochs} x {mine.iterations_per_epoch}) -> "
                           f"'{preset}' ({theirs.epochs} x {theirs.iterations_per_epoch})")
        if mine.num_folds != theirs.num_folds:
            origin = "its `folds`" if self.folds is not None else f"budget '{self.budget.preset}'"
            changes.append(f"folds {mine.num_folds} (from {origin}) -> {theirs.num_folds}")
        if not changes:
            return None
        return (f"task {self.name} ({self.source}): --budget {preset} replaces the descriptor's "
                + " and ".join(changes) + " (--budget replaces budget and folds; docs/reference/task-descriptors.md)")

    def with_data_root(self, data_root: Path) -> TaskDescriptor:
        """``harness run --data-root DIR``: the dataset folder of the same name under DIR, or its
        nnU-Net twin (``Task04_Hippocampus`` <-> ``Dataset004_Hippocampus``; an id finds its
        ``Dataset###_*``); a test label folder inside the dataset folder moves with it."""
        reference = self.dataset_lookup.reference if self.dataset_lookup is not None else ""
        lookup = lookup_in_root(data_root, reference if nnunet_id(reference) is not None else self.dataset.name)
        dataset = lookup.path
        update: dict[str, Any] = {"dataset": dataset, "dataset_lookup": lookup}
        if self.test_labels is not None and self.dataset in self.test_labels.parents:
            update["test_labels"] = dataset / self.test_labels.relative_to(self.dataset)
        return self.model_copy(update=update)

    def content(self) -> dict:
        """Everything that affects results, as plain JSON (what the descriptor hash covers). An empty
        ``training`` is left out, so descriptors written before it existed keep their hash."""
        content = json.loads(self.model_dump_json())
        if not content.get("training"):
            content.pop("training", None)
        content.pop("slurm", None)  # where jobs are queued, not what they compute
        if content.get("resources", {}).get("gpus") is None:
            content.get("resources", {}).pop("gpus", None)
        scoring = content.get("scoring") or {}
        if scoring.get("missing") == "worst" and scoring.get("missing_value") is None:  # the default: hash as before
            scoring.pop("missing", None)
            scoring.pop("missing_value", None)
        content.pop("fetch", None)  # where the bytes come from, not what they are
        return content

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.content(), sort_keys=True).encode()).hexdigest()


# -- loading --------------------------------------------------------------------------------------
def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The sub-model that holds the key at ``loc`` (for the did-you-mean of nested keys)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _yaml_keys(model: type[BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items() if not f.exclude] + (
        ["include"] if model is TaskDescriptor else [])


def _describe(err: dict, path: Path) -> str:
    loc = tuple(p for p in err["loc"] if not isinstance(p, int))
    key = clip(".".join(str(p) for p in err["loc"]), 100)
    if err["type"] == "extra_forbidden":
        # the unknown key itself may be a number (``1: x``); list indices above it are dropped
        parents = tuple(p for p in err["loc"][:-1] if not isinstance(p, int))
        parent = _model_at(TaskDescriptor, parents)
        known = _yaml_keys(parent) if parent else []
        close = difflib.get_close_matches(clip(str(err["loc"][-1]), 100), known, n=1, cutoff=0.6)
        fix = f"did you mean '{'.'.join(map(str, (*parents, close[0])))}'?" if close else (
            f"remove it; known keys here: {', '.join(known)}")
        return f"{path}: key '{key}': unknown key; {fix}"
    if err["type"] == "invalid_key":
        return f"{path}: key {quote(err['loc'][-1], 100)}: keys are names (text), not numbers; rename or remove it."
    if err["type"] == "missing":
        return f"{path}: key '{key}': required but missing; add `{loc[-1]}: ...` (or include a base that sets it)."
    value = err.get("input")
    shown = f" (got {quote(value)})" if not isinstance(value, dict) else ""
    msg = clip(err["msg"].removeprefix("Value error, "))
    return f"{path}: key '{key}': {msg}{shown}; fix the value."


def load_task(path: Path, root: Path | None = None, nnunet_raw: Path | None = None) -> TaskDescriptor:
    """Read, include, merge and validate one descriptor; every problem in one error. ``root``: the
    tasks root its includes must lie in (:func:`harness.tasks.yaml_reader.load_raw`); ``nnunet_raw``:
    where an nnU-Net dataset name or id in ``dataset`` is looked up."""
    path = Path(path)
    raw = load_raw(path, root, nnunet_raw)
    lookup = raw.pop(LOOKUP_KEY, None)
    try:
        task = TaskDescriptor.model_validate(raw)
    except ValidationError as exc:
        raise SelfUNetError("\n".join(_describe(e, path) for e in exc.errors())) from None
    return task.model_copy(update={"source": path, "dataset_lookup": lookup})


def dataset_problem(task: TaskDescriptor) -> str | None:
    """Why the task's dataset folder cannot be used as it stands (None when it can)."""
    root = task.dataset
    if task.demo is not None:
        if (root / "dataset.json").is_file() and not (root / ".selfunet_demo.json").is_file():
            return (f"{task.source}: key 'dataset': {root} holds a dataset that is not the demo; point 'dataset' at "
                    "an empty folder or remove 'demo:'.")
        return None
    if not root.is_dir():
        lookup = task.dataset_lookup
        looked = (f" (looked at:\n{lookup.where_looked()}\n)" if lookup is not None and len(lookup.looked) > 1
                  else "")
        return (f"{task.source}: key 'dataset': folder {root} does not exist{looked}; put the dataset there, fix the "
                f"path (relative to {task.source.parent}), or pass --data-root DIR (uses DIR/{root.name}, or its "
                "nnU-Net twin Dataset###_Name).")
    if not (root / "dataset.json").is_file():
        return f"{task.source}: key 'dataset': {root} has no dataset.json; point 'dataset' at the task folder itself."
    return None


def discover_with_roots(paths: list[Path] | None = None) -> list[tuple[Path, Path | None]]:
    """(descriptor file, tasks root) for every file named by ``paths``: a folder is searched
    recursively (sorted, bases left out) and is the root of what is found in it; a file named
    itself gets None (its own folder, :func:`harness.tasks.yaml_reader.load_raw`)."""
    paths = list(paths) if paths else [DEFAULT_TASKS_DIR]
    found: dict[Path, Path | None] = {}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(p.rglob("*.y*ml")):
                rel = f.relative_to(p)
                if f.suffix in (".yaml", ".yml") and not any(part.startswith(BASE_PREFIXES) for part in rel.parts):
                    found.setdefault(f, p)
        elif p.is_file():
            found.setdefault(p, None)
        else:
            raise SelfUNetError(f"{p}: no such task file or folder; pass a descriptor (tasks/demo.yaml) or a folder.")
    return list(found.items())


def discover(paths: list[Path] | None = None) -> list[Path]:
    """Descriptor files named by ``paths`` (files, or folders searched recursively), sorted, bases left out."""
    return [f for f, _ in discover_with_roots(paths)]


def load_tasks(paths: list[Path] | None = None, root: Path | None = None,
               nnunet_raw: Path | None = None) -> list[TaskDescriptor]:
    """All tasks under ``paths``; every broken descriptor reported together; names that differ only
    in case refused (they share a results folder on a case-insensitive disk, and an image tag).

    ``root`` (``--tasks-root``): the folder every descriptor and include must lie in; default the
    folder each was found in, or a named file's own folder. ``nnunet_raw``: where nnU-Net dataset
    names and ids are looked up."""
    tasks, errors = [], []
    for f, found_in in discover_with_roots(paths):
        try:
            tasks.append(load_task(f, root if root is not None else found_in, nnunet_raw))
        except SelfUNetError as exc:
            errors.append(str(exc))
    if errors:
        raise SelfUNetError("\n".join(errors))
    seen: dict[str, TaskDescriptor] = {}
    for t in tasks:
        other = seen.get(t.name.casefold())
        if other is not None:
            clash = (f"is also defined in {other.source}" if other.name == t.name else
                     f"and task '{other.name}' of {other.source} differ only in case")
            raise SelfUNetError(f"{t.source}: key 'name': task '{t.name}' {clash}; give each task its own name "
                                "(names are compared without regard to case: they name folders and image tags).")
        seen[t.name.casefold()] = t
    return tasks


def training_case_count(task: TaskDescriptor) -> int | None:
    """How many training cases the task's dataset has (None when its dataset.json cannot be read)."""
    if task.demo is not None and not (task.dataset / "dataset.json").is_file():
        return task.demo.cases  # generated on first run
    from selfunet.data.dataset import load_dataset

    try:
        return len(load_dataset(task.dataset).training)
    except SelfUNetError:
        return None  # `selfunet check` reports why


def folds_problem(task: TaskDescriptor) -> str | None:
    """Cross-validation needs 2 <= folds <= training cases (checked by ``validate`` and at run start)."""
    folds, cases = task.num_folds, training_case_count(task)
    if cases is None or folds <= cases:
        return None
    origin = f"{folds} folds" if task.folds is not None else (
        f"not set, so the budget preset '{task.budget.preset}' gives {folds} folds")
    if cases < 2:
        return (f"{task.source}: key 'folds': {origin}, but dataset {task.dataset} has {cases} training case(s); "
                "cross-validation needs at least 2: add training cases.")
    return (f"{task.source}: key 'folds': {origin}, but dataset {task.dataset} has only {cases} training cases; "
            f"set `folds:` between 2 and {cases}.")


def check_task(task: TaskDescriptor, processes: int = 1) -> list[str]:
    """``harness validate``: the descriptor's paths, the folds against the cases and, when present, the
    dataset (``selfunet check``)."""
    problem = dataset_problem(task)
    if problem:
        return [problem]
    folds = folds_problem(task)
    if task.demo is not None and not (task.dataset / "dataset.json").is_file():
        return [folds] if folds else []  # generated on first run
    from selfunet.data.check import check_dataset

    report = check_dataset(task.dataset, processes=processes)
    return ([folds] if folds else []) + [f"{task.source}: dataset {task.dataset}: {p.message} ({p.fix})"
                                         for p in report.errors]

