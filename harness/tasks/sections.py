"""The sections of a task descriptor (budget, metrics, demo, export, resources, holdout,
scoring, fetch) and the ranges of every number they hold: each a strict pydantic model, so an
unknown key or a value out of range is refused by ``harness validate`` with the range, instead
of failing hours later. :class:`harness.tasks.descriptor.TaskDescriptor` puts them together.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selfunet.errors import SelfUNetError
from selfunet.training.budgets import BUDGETS

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
    gpus: Optional[int] = Field(default=None, ge=0, le=1, strict=True)
    """GPUs of a training or prediction job under ``--executor slurm`` (``--gres=gpu:N``): 0 keeps them on
    CPUs; default: one where the cluster has GPUs (a selfunet job uses one GPU)."""


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
