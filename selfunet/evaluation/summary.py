"""The evaluation summary over cases: ``summary.json`` (per case, per-class means), ``per_case.csv``
and the table printed by ``selfunet evaluate``.

Means leave NaN out (the empty-mask rule of :mod:`selfunet.evaluation.metrics`); the per-case
table keeps every case and flags the empty ones.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich import box
from rich.console import Console
from rich.table import Table

from selfunet.artifacts import Artifact, atomic_write_text
from selfunet.evaluation.metrics import EMPTY_MASK_RULE, ClassMetrics, metric_names


class ClassMetricsModel(BaseModel):
    """JSON twin of :class:`ClassMetrics` (NaN is written as the JSON constant ``NaN``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    tp: int
    fp: int
    fn: int
    dice: float
    iou: float
    reference_empty: bool
    prediction_empty: bool
    nsd: float | None = None
    hd95: float | None = None

    @classmethod
    def of(cls, metrics: ClassMetrics) -> ClassMetricsModel:
        return cls(**{name: getattr(metrics, name) for name in cls.model_fields})

    def to_metrics(self) -> ClassMetrics:
        return ClassMetrics(**self.model_dump())


class CaseMetrics(BaseModel):
    """All classes of one case; ``classes`` is keyed by the label value as a string (``"1"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    case_id: str
    classes: dict[str, ClassMetricsModel]
    prediction_file: str | None = None
    reference_file: str | None = None
    worst_case_hd95_mm: float | None = None
    """the image diagonal, used as HD95 where exactly one side is empty."""

    @classmethod
    def of(cls, case_id: str, metrics: dict[int, ClassMetrics], **extra: object) -> CaseMetrics:
        return cls(case_id=case_id, classes={str(k): ClassMetricsModel.of(v) for k, v in metrics.items()}, **extra)


class EvaluationSummary(Artifact):
    """``summary.json``: per-case metrics, per-class means and the mean foreground Dice.

    Keys of ``labels``, ``mean`` and ``counts`` are label values as strings; ``mean`` leaves NaNs
    out (see :data:`EMPTY_MASK_RULE`), so a class whose every case is empty on both sides has a
    NaN mean Dice.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")
    PRODUCED_BY = "`selfunet evaluate PRED_DIR REF_DIR`"

    labels: dict[str, str]
    nsd_tolerance_mm: float | None
    hd95: bool
    empty_mask_rule: str
    per_case: list[CaseMetrics]
    mean: dict[str, dict[str, float]]
    mean_foreground_dice: float
    mean_foreground: dict[str, float] = Field(default_factory=dict)
    """mean over foreground classes of each per-class mean metric (Dice, IoU, NSD, HD95)."""
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    """per class: ``cases``, ``both_empty`` (Dice undefined), ``one_side_empty`` (HD95 worst case)."""


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(
    per_case: Sequence[CaseMetrics], labels: dict[int, str], nsd_tolerance_mm: float | None = None, hd95: bool = False
) -> EvaluationSummary:
    """Per-class means over cases (NaNs left out) and the mean foreground Dice."""
    # one fixed order, so float sums (and thus the JSON) do not depend on which worker finished first
    per_case = sorted(per_case, key=lambda c: c.case_id)
    names = metric_names(nsd_tolerance_mm, hd95)
    mean: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for label in sorted(labels):
        key = str(label)
        rows = [case.classes[key] for case in per_case if key in case.classes]
        mean[key] = {name: _nanmean([float(getattr(r, name)) for r in rows if getattr(r, name) is not None])
                     for name in names}
        counts[key] = {
            "cases": len(rows),
            "both_empty": sum(r.reference_empty and r.prediction_empty for r in rows),
            "one_side_empty": sum(r.reference_empty != r.prediction_empty for r in rows),
        }
    foreground = [str(label) for label in sorted(labels) if label > 0]
    mean_foreground = {
        name: _nanmean([mean[key][name] for key in foreground])
        for name in names if name in ("dice", "iou", "nsd", "hd95")
    }
    return EvaluationSummary(
        labels={str(k): v for k, v in sorted(labels.items())},
        nsd_tolerance_mm=nsd_tolerance_mm,
        hd95=hd95,
        empty_mask_rule=EMPTY_MASK_RULE,
        per_case=per_case,
        mean=mean,
        mean_foreground_dice=mean_foreground.get("dice", math.nan),
        mean_foreground=mean_foreground,
        counts=counts,
    )


CSV_COLUMNS = ("case_id", "label", "name", "tp", "fp", "fn", "dice", "iou", "nsd", "hd95",
               "reference_empty", "prediction_empty", "note")


def _note(row: ClassMetricsModel, hd95: bool) -> str:
    if row.reference_empty and row.prediction_empty:
        return "both empty: metrics undefined (NaN), left out of means"
    if row.reference_empty != row.prediction_empty:
        side = "reference" if row.reference_empty else "prediction"
        worst = "; HD95 = worst case (image diagonal)" if hd95 else ""
        return f"{side} empty: Dice 0, NSD 0{worst}"
    return ""


def per_case_csv(summary: EvaluationSummary) -> str:
    """One row per case x class; undefined values are ``nan``, metrics not asked for are empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case in summary.per_case:
        for key, row in sorted(case.classes.items(), key=lambda kv: int(kv[0])):
            writer.writerow([
                case.case_id, key, summary.labels.get(key, key), row.tp, row.fp, row.fn,
                repr(row.dice), repr(row.iou),
                "" if row.nsd is None else repr(row.nsd), "" if row.hd95 is None else repr(row.hd95),
                row.reference_empty, row.prediction_empty, _note(row, summary.hd95),
            ])
    return buffer.getvalue()


def write_evaluation(summary: EvaluationSummary, out_dir: Path) -> None:
    """``summary.json`` and ``per_case.csv`` into ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    summary.save(out_dir / "summary.json")
    atomic_write_text(out_dir / "per_case.csv", per_case_csv(summary))


def _fmt(value: float, digits: int = 3) -> str:
    return "NaN" if math.isnan(value) else f"{value:.{digits}f}"


def render_summary(summary: EvaluationSummary, console: Console) -> None:
    """Per-class means as a table, with the empty-mask rule printed under it."""
    units = []
    if summary.nsd_tolerance_mm is not None:
        units.append(f"NSD at {summary.nsd_tolerance_mm:g} mm")
    if summary.hd95:
        units.append("HD95 in mm")
    table = Table(title=f"evaluation of {len(summary.per_case)} case(s): per-class means over cases",
                  caption="; ".join(units) or None, box=box.SIMPLE_HEAD)
    table.add_column("class", no_wrap=True)
    table.add_column("cases", justify="right")
    table.add_column("Dice", justify="right")
    table.add_column("IoU", justify="right")
    if summary.nsd_tolerance_mm is not None:
        table.add_column("NSD", justify="right")
    if summary.hd95:
        table.add_column("HD95", justify="right")
    table.add_column("both empty", justify="right")
    table.add_column("one empty", justify="right")
    for key, name in summary.labels.items():
        mean, count = summary.mean.get(key, {}), summary.counts.get(key, {})
        cells = [f"{key}: {name}", str(count.get("cases", "")), _fmt(mean.get("dice", math.nan)),
                 _fmt(mean.get("iou", math.nan))]
        if summary.nsd_tolerance_mm is not None:
            cells.append(_fmt(mean.get("nsd", math.nan)))
        if summary.hd95:
            cells.append(_fmt(mean.get("hd95", math.nan), 2))
        cells += [str(count.get("both_empty", "")), str(count.get("one_side_empty", ""))]
        table.add_row(*cells)
    fg = summary.mean_foreground
    cells = ["mean foreground", "", _fmt(summary.mean_foreground_dice), _fmt(fg.get("iou", math.nan))]
    if summary.nsd_tolerance_mm is not None:
        cells.append(_fmt(fg.get("nsd", math.nan)))
    if summary.hd95:
        cells.append(_fmt(fg.get("hd95", math.nan), 2))
    table.add_row(*cells, "", "", style="bold", end_section=True)
    console.print(table)
    console.print(f"Empty-mask rule: {summary.empty_mask_rule}", highlight=False)
