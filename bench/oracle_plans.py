"""Side-by-side: our planner vs the reference nnU-Net v2 ExperimentPlanner on crafted fingerprints.

Each crafted fingerprint mimics one Medical Segmentation Decathlon task (modalities, typical
spacings and cropped shapes with a realistic per-case spread). For each one this script writes an
nnU-Net raw + preprocessed folder (dataset.json + dataset_fingerprint.json; the reference planner
reads only the fingerprint, so no images are needed), runs the reference default planner (8 GB) in
the reference venv's python, plans the same fingerprint with ``selfunet.planning.plan.plan_experiment`` via
``selfunet.planning.nnunet_compat``, and compares, for ``2d`` and ``3d_fullres``: target spacing,
normalization, strides per stage, kernel sizes, patch size and batch size.

    python bench/oracle_plans.py [--reference-python VENV/bin/python] [--markdown out.md]

(default: ``$SELFUNET_REFERENCE_PYTHON``; ``bench/reference/setup_reference.sh VENV`` installs it).

The reference is only run, never imported into selfunet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfunet.planning.nnunet_compat import fingerprint_from_nnunet  # noqa: E402
from selfunet.planning.plan import plan_experiment  # noqa: E402
from selfunet.planning.plan_types import Plan, PlannerSettings  # noqa: E402

FIELDS = ("spacing", "normalization", "strides", "kernels", "patch_size", "batch_size")
CONFIGS = ("2d", "3d_fullres")


@dataclass(frozen=True)
class Task:
    """A crafted dataset: per-case spacings and cropped shapes drawn around typical values."""

    dataset_id: int
    name: str
    channels: tuple[str, ...]
    labels: tuple[str, ...]  # foreground names; background added
    cases: int
    spacing: tuple[float, float, float]  # median (z, y, x)
    spacing_spread: tuple[float, float, float]  # relative sd per axis
    shape: tuple[int, int, int]  # median cropped (z, y, x)
    shape_spread: tuple[float, float, float]
    crop_ratio: float
    seed: int
    fixed_inplane_shape: bool = False  # CT scans: 512x512 before cropping mostly
    z_spacings: tuple[float, ...] = ()  # if given, cycled through instead of drawing axis-0 spacings


TASKS = (
    Task(4, "Hippocampus", ("MRI",), ("anterior", "posterior"), 260, (1.0, 1.0, 1.0), (0, 0, 0),
         (36, 50, 35), (0.08, 0.08, 0.08), 1.0, 4),
    Task(1, "BrainTumour", ("FLAIR", "T1w", "t1gd", "T2w"), ("edema", "non-enhancing", "enhancing"), 96,
         (1.0, 1.0, 1.0), (0, 0, 0), (138, 169, 138), (0.05, 0.06, 0.06), 0.6, 1),
    Task(5, "Prostate", ("T2", "ADC"), ("PZ", "TZ"), 32, (3.6, 0.625, 0.625), (0.05, 0.05, 0.05),
         (20, 320, 319), (0.1, 0.0, 0.0), 1.0, 5),
    Task(3, "Liver", ("CT",), ("liver", "cancer"), 100, (1.0, 0.77, 0.77), (0.4, 0.1, 0.1),
         (432, 512, 512), (0.35, 0.0, 0.0), 0.98, 3, True),
    Task(7, "Pancreas", ("CT",), ("pancreas", "cancer"), 90, (2.5, 0.8, 0.8), (0.1, 0.1, 0.1),
         (93, 512, 512), (0.2, 0.0, 0.0), 1.0, 7, True),
    Task(6, "Lung", ("CT",), ("cancer",), 63, (1.24, 0.79, 0.79), (0.3, 0.1, 0.1),
         (252, 512, 512), (0.3, 0.0, 0.0), 1.0, 6, True),
    Task(2, "Heart", ("MRI",), ("left atrium",), 20, (1.37, 1.25, 1.25), (0.0, 0.0, 0.0),
         (115, 320, 232), (0.1, 0.0, 0.05), 1.0, 2),
    Task(9, "Spleen", ("CT",), ("spleen",), 41, (5.0, 0.79, 0.79), (0.35, 0.1, 0.1),
         (90, 512, 512), (0.3, 0.0, 0.0), 1.0, 9, True),
    Task(8, "HepaticVessel", ("CT",), ("vessel", "tumour"), 100, (5.0, 0.8, 0.8), (0.25, 0.1, 0.1),
         (49, 512, 512), (0.3, 0.0, 0.0), 1.0, 8, True),
    Task(10, "Colon", ("CT",), ("colon cancer",), 70, (5.0, 0.78, 0.78), (0.3, 0.1, 0.1),
         (95, 512, 512), (0.3, 0.0, 0.0), 1.0, 10, True),
    # edge cases of the rules, beyond the Decathlon shapes
    Task(27, "ACDClike", ("cineMRI",), ("RV", "MLV", "LVC"), 101, (10.0, 1.56, 1.56), (0.2, 0.15, 0.15),
         (9, 237, 208), (0.15, 0.15, 0.15), 1.0, 27),  # anisotropic: 10th percentile of z
    Task(60, "AnisoClamp", ("CT",), ("organ",), 40, (4.0, 0.8, 0.8), (0.0, 0.05, 0.05),
         (30, 512, 512), (0.2, 0.0, 0.0), 0.9, 60, True,
         z_spacings=(0.5, 4.0, 4.0, 4.0, 4.0)),  # 10th percentile finer than in-plane: +1e-5
    Task(61, "Microscopy2D", ("noNorm", "rescale_to_0_1"), ("cell",), 30, (999.0, 0.3, 0.3), (0.0, 0.0, 0.0),
         (1, 600, 800), (0.0, 0.1, 0.1), 0.7, 61),  # 2D-only; special normalization names
    Task(62, "LargeMRI", ("T1", "T2"), ("lesion",), 25, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
         (150, 300, 300), (0.03, 0.03, 0.03), 0.7, 62),  # 12.5..25%, but lowres too close: dropped
    Task(63, "CascadeBoundary", ("MRI",), ("lesion",), 20, (2.5, 0.8, 0.8), (0.0, 0.0, 0.0),
         (100, 400, 400), (0.0, 0.0, 0.0), 1.0, 63),  # fullres patch covers 12.9%: only the reference cascades
    Task(64, "StepEffect", ("MRI",), ("lesion",), 20, (2.5, 0.8, 0.8), (0.0, 0.0, 0.0),
         (60, 512, 512), (0.0, 0.0, 0.0), 1.0, 64),  # 11.7%: both trigger; step 1.01 lands on a dropped lowres
)


def craft(task: Task) -> tuple[dict, dict]:
    """(dataset.json, dataset_fingerprint.json) in nnU-Net v2 format for one crafted task."""
    rng = np.random.default_rng(task.seed)
    spacings, shapes = [], []
    for _ in range(task.cases):
        spacing = []
        for median, spread in zip(task.spacing, task.spacing_spread):
            if task.z_spacings and not spacing:
                spacing.append(task.z_spacings[len(spacings) % len(task.z_spacings)])
                continue
            value = median * float(np.exp(rng.normal(0, spread))) if spread else median
            spacing.append(round(value, 5))
        shape = []
        for axis, (median, spread) in enumerate(zip(task.shape, task.shape_spread)):
            if axis > 0 and task.fixed_inplane_shape:
                shape.append(median)
                continue
            value = median * float(np.exp(rng.normal(0, spread))) if spread else median
            shape.append(max(1, round(value)))
        spacings.append(spacing)
        shapes.append(shape)
    intensity = {}
    for index, name in enumerate(task.channels):
        if name == "CT":
            low, high = -1000.0 + 50 * rng.random(), 300 + 200 * rng.random()
            mean, std = 60 + 60 * rng.random(), 40 + 60 * rng.random()
        else:
            low, high = 10 * rng.random(), 1000 + 1000 * rng.random()
            mean, std = 300 + 200 * rng.random(), 100 + 100 * rng.random()
        intensity[str(index)] = {
            "max": high + 500, "mean": mean, "median": mean + 1, "min": low - 100,
            "percentile_00_5": low, "percentile_99_5": high, "std": std,
        }
    fingerprint = {
        "foreground_intensity_properties_per_channel": intensity,
        "median_relative_size_after_cropping": task.crop_ratio,
        "shapes_after_crop": shapes,
        "spacings": spacings,
    }
    case_ids = [f"{task.name.lower()}_{i:03d}" for i in range(task.cases)]
    dataset = {
        "name": task.name,
        "channel_names": {str(i): n for i, n in enumerate(task.channels)},
        "labels": {"background": 0, **{n: i + 1 for i, n in enumerate(task.labels)}},
        "numTraining": task.cases,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
        # lets the reference planner list the cases without any image on disk
        "dataset": {
            c: {"images": [f"imagesTr/{c}_{i:04d}.nii.gz" for i in range(len(task.channels))],
                "label": f"labelsTr/{c}.nii.gz"}
            for c in case_ids
        },
    }
    return dataset, fingerprint


#: reference-side helper shared by the planner drivers: each configuration's plans get the
#: planner's own static VRAM estimate under ``_estimate`` (compared with ours).
REFERENCE_ESTIMATES = """
def add_estimates(planner, plans):
    channels = len(planner.dataset_json['channel_names'])
    labels = len(planner.dataset_json['labels'])
    for config in plans['configurations'].values():
        if 'architecture' not in config:
            continue
        arch = config['architecture']
        config['_estimate'] = int(planner.static_estimate_VRAM_usage(
            config['patch_size'], channels, labels, arch['network_class_name'], arch['arch_kwargs'],
            arch['_kw_requires_import']))
"""

_REFERENCE_SNIPPET = REFERENCE_ESTIMATES + """
import json, sys, io, contextlib
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
import torch
# the planner builds a network per candidate patch only to count its feature maps: on the meta
# device that needs no weight memory or init (same plans; checked in docs/reference/planning.md's run)
torch.set_default_device("meta")
out = {}
for name in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()):
        planner = ExperimentPlanner(name, 8)
        plans = planner.plan_experiment()
        add_estimates(planner, plans)
    out[name] = plans
print(json.dumps(out))
"""


def _folder(task: Task) -> str:
    return f"Dataset{task.dataset_id:03d}_{task.name}"


def reference_plans(reference_python: str, crafted: dict[Task, tuple[dict, dict]], tmp: Path,
                    processes: int = 1) -> dict[str, dict]:
    """Run the reference default planner (8 GB) on every crafted task, tasks dealt out to
    ``processes`` processes (one imports nnunetv2 once and plans every task: the cheapest in CPU
    time, which is what a test run on a shared CI machine pays).

    Besides the plans, each configuration gets ``_estimate``: the reference network's own
    feature-map count for its patch, to check our arithmetic estimate against.
    """
    raw, pre, res = tmp / "raw", tmp / "preprocessed", tmp / "results"
    for task, (dataset, fingerprint) in crafted.items():
        for path in (raw / _folder(task), pre / _folder(task)):
            path.mkdir(parents=True, exist_ok=True)
        (raw / _folder(task) / "dataset.json").write_text(json.dumps(dataset))
        (pre / _folder(task) / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    res.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
               nnUNet_n_proc_DA="1", OMP_NUM_THREADS="1")
    folders = [_folder(t) for t in crafted]
    jobs = max(1, min(len(folders), processes))
    procs = [
        subprocess.Popen([reference_python, "-c", _REFERENCE_SNIPPET, *folders[i::jobs]], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(jobs)
    ]
    result: dict[str, dict] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"reference planner failed:\n{err[-3000:]}")
        result.update(json.loads(out.strip().splitlines()[-1]))
    return result


def our_plans(crafted: dict[Task, tuple[dict, dict]], tmp: Path, settings: PlannerSettings) -> dict[str, Plan]:
    """Plan every crafted task with selfunet, through the nnU-Net fingerprint converter."""
    result = {}
    for task, (dataset, fingerprint) in crafted.items():
        folder = tmp / "ours" / _folder(task)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps(dataset))
        (folder / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
        converted = fingerprint_from_nnunet(folder / "dataset_fingerprint.json", folder / "dataset.json")
        result[_folder(task)] = plan_experiment(converted, settings)
    return result


_REF_SCHEME = {"CTNormalization": "ct", "ZScoreNormalization": "zscore", "NoNormalization": "none",
               "RescaleTo01Normalization": "rescale01"}


def fields_of_reference(plans: dict, config: str) -> dict | None:
    c = plans["configurations"].get(config)
    if c is None:
        return None
    arch = c["architecture"]["arch_kwargs"]
    return {
        "spacing": [round(float(s), 6) for s in c["spacing"]],
        "normalization": [f"{_REF_SCHEME.get(s, s)}{'+mask' if m else ''}"
                          for s, m in zip(c["normalization_schemes"], c["use_mask_for_norm"])],
        "strides": [list(s) for s in arch["strides"]],
        "kernels": [list(k) for k in arch["kernel_sizes"]],
        "patch_size": list(c["patch_size"]),
        "batch_size": c["batch_size"],
        "estimate": c.get("_estimate"),
    }


def fields_of_ours(plan: Plan, config: str) -> dict | None:
    c = plan.configurations.get(config)
    if c is None:
        return None
    spacing = c.spacing[1:] if c.dimension == 2 else c.spacing  # our 2D spacing also lists out-of-plane
    return {
        "spacing": [round(float(s), 6) for s in spacing],
        "normalization": [f"{n.scheme}{'+mask' if n.use_nonzero_mask else ''}" for n in c.normalization],
        "strides": c.topology.strides,
        "kernels": c.topology.kernel_sizes,
        "patch_size": c.patch_size,
        "batch_size": c.batch_size,
        "estimate": c.estimated_feature_map_elements,
    }


#: the reference's cascade constants, to check our lowres loop itself against it
REFERENCE_CASCADE = PlannerSettings(cascade_trigger_fraction=0.25, lowres_spacing_step=1.03)


@dataclass
class Comparison:
    task: str
    config: str
    reference: dict | None
    ours: dict | None

    def same(self, name: str) -> bool:
        if self.reference is None or self.ours is None:
            return self.reference is None and self.ours is None
        return self.reference[name] == self.ours[name]


def compare(reference_python: str, processes: int = 1
            ) -> tuple[list[Comparison], list[Comparison], dict[str, tuple[list, list]]]:
    """(2d + 3d_fullres with our defaults, 3d_lowres with the reference's cascade constants,
    configuration names per task: reference vs ours with our defaults)."""
    crafted = {task: craft(task) for task in TASKS}
    with tempfile.TemporaryDirectory(prefix="oracle_plans_") as tmp:
        ref = reference_plans(reference_python, crafted, Path(tmp), processes)
        ours = our_plans(crafted, Path(tmp), PlannerSettings())
        ours_ref_cascade = our_plans(crafted, Path(tmp) / "refcascade", REFERENCE_CASCADE)
    main, lowres, names = [], [], {}
    for task in TASKS:
        key = _folder(task)
        for config in CONFIGS:
            main.append(Comparison(task.name, config, fields_of_reference(ref[key], config),
                                   fields_of_ours(ours[key], config)))
        lowres.append(Comparison(task.name, "3d_lowres", fields_of_reference(ref[key], "3d_lowres"),
                                 fields_of_ours(ours_ref_cascade[key], "3d_lowres")))
        names[task.name] = (sorted(ref[key]["configurations"]), sorted(ours[key].configurations))
    return main, lowres, names


def tally(rows: list[Comparison], fields: tuple[str, ...]) -> tuple[int, int]:
    scored = [(r, f) for r in rows for f in fields if r.reference is not None or r.ours is not None]
    return sum(r.same(f) for r, f in scored), len(scored)


def _short(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list) and value and isinstance(value[0], list):
        return " ".join("x".join(str(v) for v in item) for item in value)
    if isinstance(value, list):
        return "x".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, int) and value > 10**6:
        return f"{value / 1e6:.3f}M"
    return str(value)


def _table(rows: list[Comparison], fields: tuple[str, ...]) -> list[str]:
    lines = ["| task | config | " + " | ".join(fields) + " |", "|---" * (len(fields) + 2) + "|"]
    for r in rows:
        if r.reference is None and r.ours is None:
            lines.append(f"| {r.task} | {r.config} | " + " | ".join("(none)" for _ in fields) + " |")
            continue
        cells = []
        for f in fields:
            rv = None if r.reference is None else r.reference[f]
            ov = None if r.ours is None else r.ours[f]
            if r.same(f):
                cells.append(_short(rv))
            else:
                cells.append(f"**ref {_short(rv)} / ours {_short(ov)}**")
        lines.append(f"| {r.task} | {r.config} | " + " | ".join(cells) + " |")
    return lines


def markdown(main: list[Comparison], lowres: list[Comparison], names: dict[str, tuple[list, list]]) -> str:
    same, total = tally(main, FIELDS)
    est_same, est_total = tally(main, ("estimate",))
    low_same, low_total = tally(lowres, (*FIELDS, "estimate"))
    lines = [
        f"Parity of `2d` and `3d_fullres` ({len(TASKS)} crafted fingerprints, 8 GB): "
        f"**{same} / {total}** fields identical ({', '.join(FIELDS)}); "
        f"memory estimate identical in **{est_same} / {est_total}**.",
        "",
        "Cells show the common value; a bold cell shows both where they differ. Spacings in plan axis "
        "order (mm), rounded to 4 digits here (compared to 6).",
        "",
        *_table(main, (*FIELDS, "estimate")),
        "",
        f"`3d_lowres` with the reference's cascade constants (trigger 25%, step 1.03): "
        f"**{low_same} / {low_total}** fields identical (incl. estimate).",
        "",
        *_table(lowres, (*FIELDS, "estimate")),
        "",
        "Configurations planned with our defaults (cascade trigger 12.5%, step 1.01) vs the reference:",
        "",
        "| task | reference | selfunet |",
        "|---|---|---|",
        *[f"| {t} | {', '.join(r)} | {', '.join(o)} |" for t, (r, o) in names.items()],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", default=os.environ.get("SELFUNET_REFERENCE_PYTHON"),
                        required="SELFUNET_REFERENCE_PYTHON" not in os.environ)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="reference processes (each imports nnunetv2 once)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    text = markdown(*compare(args.reference_python, args.processes))
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
