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
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
#: task names and export folders: one path component of letters, digits, ``_ . -`` (no ``/``, no ``..``).
PLAIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

# Ranges of every number a descriptor sets: a value outside is refused by `harness validate`, with
# the range, instead of failing hours later (a seed numpy cannot take) or never (an infinite limit).
#: seeds: what numpy's and torch's generators take.
SEED_MAX = 2**32 - 1
#: GPU memory target of the planner, GB (the largest GPUs have ~192).
MAX_GPU_MEMORY_GB = 1024.0
#: memory limit of a job or a scoring container, GB.
MAX_MEMORY_GB = 16384.0
#: CPUs of a job or a scoring container.
MAX_CPUS = 1024
#: seconds one submission may run on one case (the platform allows far less).
MAX_CASE_TIMEOUT_S = 24 * 3600.0
#: a demo dataset is for trying things out.
MAX_DEMO_CASES = 1000
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, strict=True)]


def _non_finite(value: Any, where: str = "") -> tuple[str, float] | None:
    """The first ``.inf``/``.nan`` in a nested mapping or list (its dotted key, the value), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Budget(_Strict):
    """A named preset (``selfunet.training.budgets``) plus optional overrides of its fields."""

    preset: str = "full"
    epochs: Optional[int] = Field(default=None, ge=1, le=100_000, strict=True)
    iterations_per_epoch: Optional[int] = Field(default=None, ge=1, le=1_000_000, strict=True)
    validation_iterations: Optional[int] = Field(default=None, ge=0, le=1_000_000, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _preset_shorthand(cls, value: Any) -> Any:
        return {"preset": value} if isinstance(value, str) else value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in BUDGETS:
            raise ValueError(f"unknown budget preset '{value}'; choose one of {', '.join(BUDGETS)}")
        return value


class Metrics(_Strict):
    """Dice is always computed; NSD and HD95 only when asked (they cost surface distances)."""

    nsd_tolerance_mm: Optional[float] = Field(default=None, gt=0, le=1000)
    hd95: bool = False


class Demo(_Strict):
    """Generate the synthetic demo task into ``dataset`` on first use (``selfunet demo-data``)."""

    cases: int = Field(default=8, ge=2, le=MAX_DEMO_CASES, strict=True)
    test_cases: int = Field(default=2, ge=0, le=MAX_DEMO_CASES, strict=True)
    seed: Seed = 0
    variant: Literal["default", "regions", "sparse"] = "default"
    """``regions``: BraTS-like nested regions; ``sparse``: a few annotated slices, the rest ``ignore``."""

    @model_validator(mode="before")
    @classmethod
    def _true_shorthand(cls, value: Any) -> Any:
        return {} if value is True else value


class Export(_Strict):
    """Challenge-format output: ``msd`` = one label map per test image, named like the image."""

    format: Literal["msd", "none"] = "msd"
    folder: Optional[str] = Field(default=None, pattern=PLAIN_NAME)
    """folder name under results/<task>/predictions/ (default: the dataset folder's name). A plain
    name, never a path: the export replaces that folder whole, so ``/some/dir`` or ``../..`` would
    delete what is there."""


class Resources(_Strict):
    """What one job of this task may use; the process sandbox passes ``cpus`` as worker processes,
    the Docker sandbox enforces both (without ``memory_gb``: a fraction of the host's memory,
    :data:`harness.sandboxes.policy.DEFAULT_MEMORY_FRACTION`)."""

    cpus: int = Field(default=2, ge=1, le=MAX_CPUS, strict=True)
    memory_gb: Optional[float] = Field(default=None, gt=0, le=MAX_MEMORY_GB)


class Holdout(_Strict):
    """Training cases held out for ``harness score``: never in a training or validation fold.

    Either ``cases`` (case ids) or ``fraction`` (of the training cases, drawn with ``seed``; at
    least one case). Why a seeded draw and not "the last N": case ids often encode the site or the
    acquisition date, and a tail would be a biased test set.
    """

    cases: Optional[list[str]] = None
    fraction: Optional[float] = Field(default=None, gt=0, lt=1)
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_of(self) -> Holdout:
        if (self.cases is None) == (self.fraction is None):
            raise ValueError("give exactly one of 'cases' (a list of case ids) or 'fraction' (e.g. 0.2)")
        if self.cases is not None and not self.cases:
            raise ValueError("'cases' is empty; list at least one training case id")
        return self

    def select(self, case_ids: list[str]) -> list[str]:
        """The held-out ids among ``case_ids`` (sorted); unknown ids in ``cases`` are an error."""
        ids = sorted(case_ids)
        if self.cases is not None:
            unknown = sorted(set(self.cases) - set(ids))
            if unknown:
                raise SelfUNetError(f"holdout.cases names case ids that are not training cases: {unknown[:10]}; "
                                    f"known ids look like {ids[:3]}.")
            return sorted(set(self.cases))
        import random

        count = max(1, round(len(ids) * float(self.fraction or 0)))
        if count >= len(ids):
            raise SelfUNetError(f"holdout.fraction {self.fraction} leaves no training case out of {len(ids)}; "
                                "lower it.")
        return sorted(random.Random(self.seed).sample(ids, count))


class Scoring(_Strict):
    """Limits of one submission container on one case (``harness score``); like the platform's."""

    case_timeout_s: float = Field(default=600.0, gt=0, le=MAX_CASE_TIMEOUT_S)
    memory_gb: Optional[float] = Field(default=None, gt=0, le=MAX_MEMORY_GB)
    """default: ``resources.memory_gb``."""
    cpus: Optional[float] = Field(default=None, gt=0, le=MAX_CPUS)
    """default: ``resources.cpus``."""
    missing: Literal["worst", "value", "exclude"] = "worst"
    """how a missing or failed case counts in the rankings (:class:`harness.results.ranking.MissingPolicy`):
    the worst value (Dice 0), ``missing_value``, or left out for every candidate."""
    missing_value: Optional[float] = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _missing_value_with_value(self) -> Scoring:
        if self.missing == "value" and self.missing_value is None:
            raise ValueError("'missing: value' needs 'missing_value' (a Dice between 0 and 1)")
        if self.missing != "value" and self.missing_value is not None:
            raise ValueError(f"'missing_value' is used only with 'missing: value' (not '{self.missing}'); remove it")
        return self


class Fetch(_Strict):
    """Where ``harness fetch`` gets the dataset (docs/guide/fetching-data.md); a Decathlon task needs none."""

    mirror: Optional[str] = None
    """base URL (``https://``, ``http://``, ``file://``) or folder of the archives; ``--mirror`` overrides it."""
    archive: Optional[str] = Field(default=None, pattern=PLAIN_NAME)
    """the archive's name under the mirror (default: ``<dataset folder name>.tar``)."""
    md5: Optional[str] = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")
    """its MD5 sum (default: the built-in Decathlon table; ``--checksums FILE`` overrides)."""


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

