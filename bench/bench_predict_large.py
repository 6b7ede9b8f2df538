"""Peak memory and time of predicting one whole-body-sized CT: ours, the previous path, the reference.

A synthetic CT (default 700 x 512 x 512 voxels at 1.5 x 0.8 x 0.8 mm, int16, uncompressed NIfTI:
air, a body ellipse, bones) is predicted with a 1.5 mm isotropic plan (preprocessed grid
700 x 273 x 273) by a network with random weights and 2 or ~100 output classes:

* ``ours``: ``selfunet predict`` of this checkout (slab by slab);
* ``old``: ``selfunet predict`` of another checkout (``--old-tree``, e.g. a ``git worktree`` of
  the commit before streaming), which keeps the whole volume's class scores;
* ``reference``: nnU-Net v2's ``nnUNetPredictor`` (``--reference-python``), same plan, a
  checkpoint written for it (``fold_0/checkpoint_final.pth`` of the same architecture).

Memory does not depend on the weights or the network's width, and the time of everything but the
network does not either, so the network is tiny (4..32 features, one conv per stage): a 2-core CPU
then predicts the case in minutes, not hours. Mirroring is off and fp32 is used by both sides.

Every run is a fresh subprocess whose process group is watched: its resident memory (all its
processes together) is sampled every 0.2 s, and it is killed when it passes ``--cap-gb`` (the
machine is shared: never let a run take it down). The peak is the larger of the sampled one and
the kernel's ``ru_maxrss``; a killed run is reported as "over the cap".

Usage::

    git worktree add /tmp/before <commit before streaming>
    python bench/bench_predict_large.py --root /tmp/large --classes 2 100 --old-tree /tmp/before \\
        --reference-python "$(cat /tmp/refpy)" --out docs/benchmarks/prediction-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PATCH = [128, 128, 128]
FEATURES = [4, 8, 16, 32]
TARGET = [1.5, 1.5, 1.5]
CT = {"clip_low": -1000.0, "clip_high": 1500.0, "mean": 60.0, "std": 300.0}


# ------------------------------------------------------------------------------------ data ----
def make_ct(path: Path, shape: list[int], spacing: list[float]) -> None:
    """Air (-1000), a body ellipse of soft tissue with noise, a spine and ribs-like bright rings."""
    import SimpleITK as sitk

    z, y, x = shape
    yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
    cy, cx = y / 2, x / 2
    body = ((yy - cy) / (0.36 * y)) ** 2 + ((xx - cx) / (0.45 * x)) ** 2 <= 1
    spine = ((yy - cy - 0.2 * y) / (0.05 * y)) ** 2 + ((xx - cx) / (0.05 * x)) ** 2 <= 1
    ring = np.abs(np.sqrt(((yy - cy) / (0.33 * y)) ** 2 + ((xx - cx) / (0.42 * x)) ** 2) - 1) < 0.02
    rng = np.random.default_rng(0)
    volume = np.empty(shape, dtype=np.int16)
    for k in range(z):
        organ = ((yy - cy + 0.05 * y * np.sin(k / 40)) / (0.15 * y)) ** 2 + ((xx - cx + 0.1 * x) / (0.12 * x)) ** 2 <= 1
        plane = np.where(body, 40 + 20 * rng.standard_normal((y, x)), -1000)
        plane[organ & body] += 60
        plane[(spine | ring) & body] = 700
        volume[k] = plane.astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(image, str(path))


def ours_work(work: Path, classes: int, seed: int = 0) -> None:
    """A work directory holding one fold's checkpoint of the 1.5 mm plan (random weights)."""
    import torch

    from selfunet.planning.plan_types import (
        ChannelNormalization,
        Configuration,
        NetworkTopology,
        Plan,
        PlannerSettings,
    )
    from selfunet.training.network import build_network

    topology = NetworkTopology(dimension=3, features_per_stage=FEATURES, kernel_sizes=[[3, 3, 3]] * len(FEATURES),
                               strides=[[1, 1, 1]] + [[2, 2, 2]] * (len(FEATURES) - 1),
                               convs_per_stage_encoder=[1] * len(FEATURES),
                               convs_per_stage_decoder=[1] * (len(FEATURES) - 1))
    configuration = Configuration(
        name="3d_fullres", dimension=3, data_identifier="3d_fullres", spacing=TARGET, median_shape=[700, 273, 273],
        patch_size=PATCH, batch_size=2, normalization=[ChannelNormalization(scheme="ct", **CT)],
        topology=topology, batch_dice=False, estimated_feature_map_elements=1)
    plan = Plan(dataset_name="large_ct", num_input_channels=1, num_classes=classes,
                labels={str(k): ("background" if k == 0 else f"class_{k}") for k in range(classes)},
                transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2], settings=PlannerSettings(),
                configurations={"3d_fullres": configuration})
    torch.manual_seed(seed)
    network = build_network(topology, 1, classes, deep_supervision=False)
    fold = work / "train" / "3d_fullres" / "fold_0"
    fold.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "selfunet-checkpoint-1", "network": network.state_dict(), "configuration": "3d_fullres",
                "plan": plan.model_dump(mode="json")}, fold / "checkpoint_final.pt")


REFERENCE_SETUP = r"""
import json, sys, torch
from pathlib import Path
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
folder, classes, patch, features, target, ct = Path(sys.argv[1]), int(sys.argv[2]), *map(json.loads, sys.argv[3:7])
n = len(features)
labels = {("background" if k == 0 else f"class_{k}"): k for k in range(classes)}
dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii"}
arch = {"n_stages": n, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        "n_conv_per_stage": [1] * n, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
          "patch_size": patch, "median_image_size_in_voxels": [700, 273, 273], "spacing": target,
          "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
          "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
          "resampling_fn_data_kwargs": kwargs, "resampling_fn_seg_kwargs": {**kwargs, "is_seg": True, "order": 1},
          "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
          "resampling_fn_probabilities_kwargs": {**kwargs, "order": 1},
          "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                           "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
          "batch_dice": False}
plans = {"dataset_name": "Dataset999_LargeCT", "plans_name": "nnUNetPlans",
         "original_median_spacing_after_transp": target,
         "original_median_shape_after_transp": [700, 512, 512], "image_reader_writer": "SimpleITKIO",
         "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
         "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
         "foreground_intensity_properties_per_channel": {"0": {"max": 1500.0, "mean": ct["mean"], "median": ct["mean"],
             "min": -1000.0, "percentile_00_5": ct["clip_low"], "percentile_99_5": ct["clip_high"], "std": ct["std"]}}}
(folder / "fold_0").mkdir(parents=True, exist_ok=True)
(folder / "plans.json").write_text(json.dumps(plans))
(folder / "dataset.json").write_text(json.dumps(dataset))
manager = PlansManager(plans)
cm = manager.get_configuration("3d_fullres")
torch.manual_seed(0)
net = nnUNetTrainer.build_network_architecture(manager, cm, 1, classes, enable_deep_supervision=False)
torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset}},
           folder / "fold_0" / "checkpoint_final.pth")
"""

REFERENCE_PREDICT = r"""
import sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
folder, image, out = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
predictor = nnUNetPredictor(tile_step_size=float(sys.argv[5]), use_gaussian=True, use_mirroring=False,
                            perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
predictor.initialize_from_trained_model_folder(folder, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
data, properties = SimpleITKIO().read_images([image])
predictor.predict_single_npy_array(data, properties, None, out, False)
"""


# ------------------------------------------------------------------------------- measuring ----
def _group_rss(group: int) -> int:
    """Resident bytes of every process in process group ``group``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != group:  # field 5 of stat: the process group
                continue
            with open(f"/proc/{entry}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def measure(argv: list[str], cap_bytes: int, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``argv`` in a new session; wall time, peak RSS (sampled group sum and ru_maxrss), killed?"""
    wrapper = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
               "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, flush=True)")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", wrapper, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True)
    peak, killed = 0, False
    while process.poll() is None:
        rss = _group_rss(process.pid)
        peak = max(peak, rss)
        if rss > cap_bytes:
            os.killpg(process.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    out, err = process.communicate()
    wall = time.perf_counter() - started
    line = next((x for x in out.splitlines() if x.startswith("MAXRSS")), None)
    maxrss = int(line.split()[1]) * 1024 if line else 0
    returncode = int(line.split()[2]) if line else process.returncode
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(max(peak, maxrss) / 2**30, 2), "over_cap": killed,
            "returncode": returncode, "stderr_tail": "" if returncode == 0 and not killed else err[-1500:]}


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return {"cpu": model, "cores": os.cpu_count(), "bf16": bf16, "load_before": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="scratch folder (the CT is kept there)")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 100])
    parser.add_argument("--shape", type=int, nargs=3, default=[700, 512, 512], help="z y x")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.8, 0.8], help="z y x, mm")
    parser.add_argument("--impl", nargs="+", default=["ours", "old", "reference"])
    parser.add_argument("--old-tree", type=Path, help="a checkout of the path to compare with (git worktree)")
    parser.add_argument("--reference-python", help="python of a venv with nnunetv2")
    parser.add_argument("--cap-gb", type=float, default=12.0)
    parser.add_argument("--step-fraction", type=float, default=0.5,
                        help="window step for both sides (1.0: 3x fewer windows on a slow machine)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    image = root / "ct_0000.nii"
    if not image.is_file():
        make_ct(image, args.shape, args.spacing)
    inputs = root / "inputs"
    inputs.mkdir(exist_ok=True)
    if not (inputs / image.name).exists():
        os.link(image, inputs / image.name)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results = {"machine": machine(), "shape": args.shape, "spacing": args.spacing, "patch": PATCH,
               "step_fraction": args.step_fraction, "threads": args.threads,
               "features": FEATURES, "input_mb": round(image.stat().st_size / 2**20, 1), "runs": []}
    for classes in args.classes:
        work = root / f"work_{classes}"
        if not (work / "train").is_dir():
            ours_work(work, classes)
        for impl in args.impl:
            out = root / f"out_{impl}_{classes}"
            out.mkdir(exist_ok=True)
            if impl in ("ours", "old"):
                tree = HERE.parent if impl == "ours" else args.old_tree
                if tree is None:
                    continue
                argv = [sys.executable, "-m", "selfunet.cli", "predict", str(inputs), "-o", str(out), "-w", str(work),
                        "-c", "3d_fullres", "-f", "0", "--no-mirroring", "--amp", "off", "--device", "cpu",
                        "--step-fraction", str(args.step_fraction)]
                run = measure(argv, int(args.cap_gb * 2**30), {**env, "PYTHONPATH": str(Path(tree).resolve())},
                              cwd=root)
            else:
                if not args.reference_python:
                    continue
                folder = root / f"reference_{classes}"
                if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
                    subprocess.run([args.reference_python, "-c", REFERENCE_SETUP, str(folder), str(classes),
                                    json.dumps(PATCH), json.dumps(FEATURES), json.dumps(TARGET), json.dumps(CT)],
                                   check=True)
                argv = [args.reference_python, "-c", REFERENCE_PREDICT, str(folder), str(image), str(out / "ct"),
                        str(args.threads), str(args.step_fraction)]
                run = measure(argv, int(args.cap_gb * 2**30), {**env, "nnUNet_raw": str(root),
                              "nnUNet_preprocessed": str(root), "nnUNet_results": str(root)}, cwd=root)
            row = {"impl": impl, "classes": classes, **run, "load_after": os.getloadavg()[0]}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    compare_labels(root, args.classes, results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def compare_labels(root: Path, classes: list[int], results: dict) -> None:
    """Voxel agreement of the written label maps (ours against old and reference)."""
    import SimpleITK as sitk

    for k in classes:
        ours = root / f"out_ours_{k}" / "ct.nii"
        if not ours.is_file():
            ours = root / f"out_ours_{k}" / "ct_0000.nii"
        candidates = {"old": root / f"out_old_{k}", "reference": root / f"out_reference_{k}"}
        if not ours.is_file():
            continue
        mine = sitk.GetArrayFromImage(sitk.ReadImage(str(ours)))
        for name, folder in candidates.items():
            files = sorted(folder.glob("*.nii*")) if folder.is_dir() else []
            if not files:
                continue
            theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(files[0])))
            agree = float(np.mean(mine == theirs)) if theirs.shape == mine.shape else None
            results.setdefault("agreement", []).append({"classes": k, "ours_vs": name, "voxels_equal": agree})
            print(json.dumps(results["agreement"][-1]), flush=True)


if __name__ == "__main__":
    main()
