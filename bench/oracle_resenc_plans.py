"""Side-by-side: our residual-encoder presets vs the reference's nnUNetPlannerResEncM/L/XL.

The ten Decathlon-shaped fingerprints of ``bench/oracle_plans.py`` are planned by the reference's
three residual-encoder planners (nnU-Net v2 2.8.1, run in the reference venv's python, all in one
process) and by ``selfunet.planning.plan.plan_experiment`` with the presets ``resenc-m``,
``resenc-l`` and ``resenc-xl``. Compared, for ``2d``, ``3d_fullres`` and ``3d_lowres``: target
spacing, strides, kernel sizes, features and residual blocks per stage, patch size, batch size and
the memory estimate (the reference network's own feature-map count). Our presets are planned with
the reference's cascade constants (trigger 25%, step 1.03) so the lowres loop itself is compared;
our defaults (12.5%, 1.01) only change which datasets get a cascade (see docs/reference/planning.md).

    python bench/oracle_resenc_plans.py [--reference-python PY] [--markdown out.md]

The reference is only run, never imported into selfunet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from oracle_plans import (  # noqa: E402
    REFERENCE_ESTIMATES,
    TASKS,
    Comparison,
    _folder,
    _table,
    craft,
    fields_of_ours,
    fields_of_reference,
    our_plans,
    tally,
)

from selfunet.planning.presets import planner_settings  # noqa: E402

#: our preset -> the reference planner class it must agree with
PRESET_CLASSES = {"resenc-m": "nnUNetPlannerResEncM", "resenc-l": "nnUNetPlannerResEncL",
                  "resenc-xl": "nnUNetPlannerResEncXL"}
DECATHLON = TASKS[:10]
CONFIGS = ("2d", "3d_fullres", "3d_lowres")
FIELDS = ("spacing", "strides", "kernels", "features", "blocks", "patch_size", "batch_size", "estimate")

_REFERENCE_SNIPPET = REFERENCE_ESTIMATES + """
import json, sys, io, contextlib, warnings
import torch
warnings.simplefilter("ignore")
import nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners as r
out = {}
classes = sys.argv[1].split(",")
for name in sys.argv[2:]:
    for cls in classes:
        # the planner instantiates a network per candidate patch only to count its feature maps;
        # on the meta device that count is the same and no weights are allocated or initialised
        with contextlib.redirect_stdout(io.StringIO()), torch.device("meta"):
            planner = getattr(r, cls)(name)
            plans = planner.plan_experiment()
            add_estimates(planner, plans)
        out[name + "/" + cls] = plans
print(json.dumps(out))
"""


def reference_plans(reference_python: str, crafted: dict, tmp: Path) -> dict[str, dict]:
    """Every preset class on every crafted task, in one reference process."""
    raw, pre, res = tmp / "raw", tmp / "preprocessed", tmp / "results"
    for task, (dataset, fingerprint) in crafted.items():
        for path in (raw / _folder(task), pre / _folder(task)):
            path.mkdir(parents=True, exist_ok=True)
        (raw / _folder(task) / "dataset.json").write_text(json.dumps(dataset))
        (pre / _folder(task) / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    res.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
               nnUNet_n_proc_DA="1", OMP_NUM_THREADS="1")
    run = subprocess.run([reference_python, "-c", _REFERENCE_SNIPPET, ",".join(PRESET_CLASSES.values()),
                          *(_folder(t) for t in crafted)], env=env, capture_output=True, text=True, timeout=3000)
    if run.returncode != 0:
        raise RuntimeError(f"reference planner failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _reference_fields(plans: dict, config: str) -> dict | None:
    fields = fields_of_reference(plans, config)
    if fields is None:
        return None
    arch = plans["configurations"][config]["architecture"]["arch_kwargs"]
    fields["features"] = list(arch["features_per_stage"])
    fields["blocks"] = list(arch["n_blocks_per_stage"])
    del fields["normalization"]  # the default planner's oracle covers it; the presets do not change it
    return fields


def _our_fields(plan, config: str) -> dict | None:
    fields = fields_of_ours(plan, config)
    if fields is None:
        return None
    topology = plan.configurations[config].topology
    fields["features"] = list(topology.features_per_stage)
    fields["blocks"] = list(topology.blocks_per_stage_encoder or [])
    del fields["normalization"]
    return fields


def compare(reference_python: str) -> tuple[dict[str, list[Comparison]], float]:
    """Per preset, one row per (task, configuration); and the reference process's wall time."""
    crafted = {task: craft(task) for task in DECATHLON}
    rows: dict[str, list[Comparison]] = {}
    with tempfile.TemporaryDirectory(prefix="oracle_resenc_") as tmp:
        start = time.perf_counter()
        ref = reference_plans(reference_python, crafted, Path(tmp))
        seconds = time.perf_counter() - start
        for preset, cls in PRESET_CLASSES.items():
            settings = planner_settings(preset, cascade_trigger_fraction=0.25, lowres_spacing_step=1.03)
            ours = our_plans(crafted, Path(tmp) / preset, settings)
            rows[preset] = [
                Comparison(task.name, config, _reference_fields(ref[f"{_folder(task)}/{cls}"], config),
                           _our_fields(ours[_folder(task)], config))
                for task in DECATHLON for config in CONFIGS
            ]
    return rows, seconds


def markdown(rows: dict[str, list[Comparison]]) -> str:
    lines = []
    for preset, cls in PRESET_CLASSES.items():
        same, total = tally(rows[preset], FIELDS)
        lines += [
            f"### `{preset}` vs `{cls}`: {same} / {total} fields identical",
            "",
            *_table(rows[preset], FIELDS),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", default=os.environ.get("SELFUNET_REFERENCE_PYTHON"),
                        required="SELFUNET_REFERENCE_PYTHON" not in os.environ)
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    rows, seconds = compare(args.reference_python)
    text = markdown(rows)
    print(text)
    print(f"reference planners: {seconds:.0f} s (one process)", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
