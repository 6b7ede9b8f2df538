"""Moving a plan to another dataset (``selfunet plan WORK --from-plan OTHER/plan.json``).

Fine-tuning a pretrained network needs the *same* network: same topology, patch size, target
spacing and axis order. So the transferred plan keeps every architectural decision of the source
plan and takes from this dataset only what describes its data: the intensity normalization
(recomputed from this dataset's fingerprint with the source plan's rules), the labels (and
regions / ignore label) and the dataset name. The number of input channels must match, since the
first layer's weights depend on it; channel names that differ are allowed (and logged), because
using e.g. a CT-pretrained encoder on another CT dataset with other channel names is legitimate.
The segmentation heads follow the new labels and are trained afresh
(:mod:`selfunet.training.pretrained`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from selfunet.errors import SelfUNetError
from selfunet.planning.fingerprint_types import Fingerprint
from selfunet.planning.plan import _num_classes, normalization_for, plan_table
from selfunet.planning.plan_types import Plan
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)


def transfer_plan(source: Plan, fingerprint: Fingerprint, source_name: str = "the source plan") -> Plan:
    """``source``'s configurations for the dataset behind ``fingerprint`` (see the module docstring)."""
    channels = len(fingerprint.dataset.channel_names)
    if channels != source.num_input_channels:
        raise SelfUNetError(
            f"{source_name} was made for {source.num_input_channels} input channel(s), this dataset has {channels} "
            f"({', '.join(fingerprint.dataset.channel_names)}); a plan (and its pretrained weights) can only move "
            "between datasets with the same number of channels."
        )
    normalization = normalization_for(fingerprint, source.settings)
    source_schemes = [n.scheme for n in next(iter(source.configurations.values())).normalization] \
        if source.configurations else []
    if source_schemes and source_schemes != [n.scheme for n in normalization]:
        log.warning("normalization schemes differ from %s (%s -> %s): the channels' modalities differ",
                    source_name, source_schemes, [n.scheme for n in normalization])
    configurations = {
        name: config.model_copy(update={"normalization": normalization})
        for name, config in source.configurations.items()
    }
    return source.model_copy(update={
        "dataset_name": fingerprint.dataset.name,
        "num_classes": _num_classes(fingerprint),
        "labels": dict(fingerprint.dataset.labels),
        "label_scheme": fingerprint.dataset.label_scheme,
        "configurations": configurations,
    })


def run_plan_transfer(work: Path, from_plan: Path, show: bool = False, console: Console | None = None) -> Plan:
    """``selfunet plan WORK --from-plan OTHER/plan.json``: WORK/fingerprint.json + OTHER's plan -> WORK/plan.json."""
    workdir = WorkDir(work)
    plan = transfer_plan(Plan.load(Path(from_plan)), Fingerprint.load(workdir.fingerprint), str(from_plan))
    plan.save(workdir.plan)
    log.info("wrote %s, transferred from %s (%s)", workdir.plan, from_plan, ", ".join(plan.configurations))
    if show:
        (console or Console()).print(plan_table(plan))
    return plan
