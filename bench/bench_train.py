"""Training speed against the reference nnU-Net v2 on the same data and plan, and demo Dice.

Usage (see docs/benchmarks/training-cpu.md for the numbers and the machine):

    python bench/bench_train.py setup  --root /tmp/bench_train        # data, both preprocessings
    python bench/bench_train.py iters  --root /tmp/bench_train --iters 10 [--patch 48 64 80]
    python bench/bench_train.py demo-dice --root /tmp/bench_train --epochs 12 --iterations 20

``setup`` writes the demo task (20 training cases) once, runs our fingerprint/plan/preprocess and
the reference's ``nnUNetv2_plan_and_preprocess`` (in /work/refvenv, never imported here), then
overwrites the reference's 3d_fullres plan with ours (patch, batch size, stages, kernels,
strides, features) under the plans name ``SelfUNetMatched``, so both train the same network on
the same patches. ``iters`` times seconds per training iteration *including* data loading and
augmentation (ours: the Trainer's own background loader; reference: its ``nnUNetTrainer``
dataloader with its default number of augmentation processes on this CPU) and interleaves the
runs so both see the same machine load. ``--patch`` replaces the patch size in both plans (the
topology is re-derived by our planner rules and copied to the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REF_PYTHON = os.environ.get("SELFUNET_REFERENCE_PYTHON", "/work/refvenv/bin/python")
DATASET_ID = 987
DATASET_NAME = f"Dataset{DATASET_ID}_SelfUNetDemo"
PLANS = "SelfUNetMatched"


def ref_env(root: Path) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "nnunet_raw"), nnUNet_preprocessed=str(root / "nnunet_preprocessed"),
               nnUNet_results=str(root / "nnunet_results"))
    return env


def convert_for_reference(msd_root: Path, raw_root: Path) -> None:
    """MSD demo task -> nnU-Net v2 raw layout (one file per channel), written with SimpleITK."""
    import SimpleITK as sitk

    out = raw_root / DATASET_NAME
    descriptor = json.loads((msd_root / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for entry in descriptor["training"]:
        case = Path(entry["image"]).name[: -len(".nii.gz")]
        image = sitk.ReadImage(str(msd_root / entry["image"]))
        size = list(image.GetSize())
        for c in range(size[3] if image.GetDimension() == 4 else 1):
            channel = image if image.GetDimension() == 3 else sitk.Extract(image, [*size[:3], 0], [0, 0, 0, c])
            sitk.WriteImage(channel, str(out / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(msd_root / entry["label"])), str(out / "labelsTr" / f"{case}.nii.gz"))
    (out / "dataset.json").write_text(json.dumps({
        "channel_names": descriptor["modality"],
        "labels": {name: int(value) for value, name in descriptor["labels"].items()},
        "numTraining": len(descriptor["training"]), "file_ending": ".nii.gz",
    }, indent=2))


def setup(root: Path, cases: int) -> None:
    from selfunet.data.demo import make_demo_dataset
    from selfunet.planning.fingerprint import run_fingerprint
    from selfunet.planning.plan import run_plan
    from selfunet.preprocessing.preprocess import run_preprocess

    root.mkdir(parents=True, exist_ok=True)
    data = make_demo_dataset(root / "data", num_training=cases, num_test=2, seed=0)
    work = root / "work"
    run_fingerprint(Path(data.root), work, processes=2)
    run_plan(work)
    run_preprocess(work, ["3d_fullres"], processes=2)
    convert_for_reference(Path(data.root), root / "nnunet_raw")
    subprocess.run([str(Path(REF_PYTHON).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c",
                    "3d_fullres", "-np", "2", "--verify_dataset_integrity"], check=True, env=ref_env(root))
    match_reference_plan(root, None)


def match_reference_plan(root: Path, patch: list[int] | None) -> None:
    """Write our (possibly re-patched) 3d_fullres plan, and the same into the reference's plans."""
    from selfunet.planning.plan_types import Plan
    from selfunet.planning.topology import derive_topology

    work = root / "work"
    plan = Plan.load(work / "plan.json")
    config = plan.configurations["3d_fullres"]
    if patch is not None:
        topology, padded = derive_topology(config.spacing, patch, plan.settings, 3)
        config = config.model_copy(update={"patch_size": list(padded), "topology": topology, "batch_size": 2})
        bench_plan = plan.model_copy(update={"configurations": {"3d_fullres": config}})
    else:
        bench_plan = plan
    bench_plan.save(root / f"plan_{'x'.join(map(str, config.patch_size))}.json")
    ref_folder = root / "nnunet_preprocessed" / DATASET_NAME
    ref = json.loads((ref_folder / "nnUNetPlans.json").read_text())
    ref["plans_name"] = PLANS
    conf = ref["configurations"]["3d_fullres"]
    t = config.topology
    conf["patch_size"] = list(config.patch_size)
    conf["batch_size"] = config.batch_size
    arch = conf["architecture"]["arch_kwargs"]
    arch.update(n_stages=t.num_stages, features_per_stage=list(t.features_per_stage),
                kernel_sizes=[list(k) for k in t.kernel_sizes], strides=[list(s) for s in t.strides],
                n_conv_per_stage=list(t.convs_per_stage_encoder),
                n_conv_per_stage_decoder=list(t.convs_per_stage_decoder))
    conf["data_identifier"] = "nnUNetPlans_3d_fullres"
    (ref_folder / f"{PLANS}.json").write_text(json.dumps(ref, indent=2))


TREE_CPU = r"""
def tree_cpu_seconds(root_pid=None):
    import os
    root_pid = root_pid or os.getpid()
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                fields = open(f'/proc/{entry}/stat').read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, _) in parents.items():
            if ppid == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(parents[p][1] for p in tree if p in parents) / os.sysconf('SC_CLK_TCK')
"""
_namespace: dict = {}
exec(TREE_CPU, _namespace)  # the same text runs inside the reference driver
tree_cpu_seconds = _namespace["tree_cpu_seconds"]


# ------------------------------------------------------------------------------ ours --------------
def time_ours(root: Path, patch_tag: str, iters: int, amp: str, channels_last: bool, warmup: int = 2) -> dict:
    """Seconds per iteration of our Trainer: next(loader) + device transfer + train step."""
    import torch
    from rich.console import Console

    from selfunet.planning.plan_types import Plan
    from selfunet.training.loader import BackgroundLoader
    from selfunet.training.train import Trainer
    from selfunet.training.train_config import TrainConfig

    work = root / "work"
    original = (work / "plan.json").read_bytes()
    Plan.load(root / f"plan_{patch_tag}.json").save(work / "plan.json")
    try:
        config = TrainConfig(epochs=1, iterations_per_epoch=iters, device="cpu", amp=amp,
                             channels_last=channels_last, predict_validation=False)
        trainer = Trainer(work, "3d_fullres", 0, config, console=Console(quiet=True))
        trainer._build()
    finally:
        (work / "plan.json").write_bytes(original)
    trainer.network.train()
    times = []
    with BackgroundLoader(trainer.batch_source, 0, prefetch=config.prefetch_batches,
                          num_workers=config.loader_workers) as loader:
        for i in range(warmup + iters):
            if i == warmup:
                cpu_start = tree_cpu_seconds()
            start = time.perf_counter()
            image, label = trainer._device_batch(next(loader))
            trainer._train_step(image, label)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    flops = trainer.network.conv_flops(trainer.patch, deep_supervision=True) * trainer.configuration.batch_size * 3
    return {"impl": "selfunet", "amp": amp, "channels_last": channels_last, "threads": torch.get_num_threads(),
            "patch": trainer.patch, "batch": trainer.configuration.batch_size,
            "median_s": statistics.median(times), "mean_s": statistics.mean(times), "times": times,
            "cpu_s_per_iter": (tree_cpu_seconds() - cpu_start) / iters, "train_gflop_per_iter": flops / 1e9}


# ------------------------------------------------------------------------------ reference ---------
REF_DRIVER = TREE_CPU + r"""
import json, sys, time, statistics, os
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
folder, plans_name, iters, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
plans = load_json(join(folder, plans_name + '.json'))
plans['continue_training'] = False
dataset_json = load_json(join(folder, 'dataset.json'))
trainer = nnUNetTrainer(plans, '3d_fullres', 0, dataset_json, device=torch.device('cpu'))
trainer.on_train_start()
trainer.on_train_epoch_start()
times = []
for i in range(warmup + iters):
    if i == warmup:
        cpu_start = tree_cpu_seconds()
    t = time.perf_counter()
    trainer.train_step(next(trainer.dataloader_train))
    if i >= warmup:
        times.append(time.perf_counter() - t)
out = dict(impl='nnunetv2', amp='off', channels_last=False, threads=torch.get_num_threads(),
           patch=trainer.configuration_manager.patch_size, batch=trainer.batch_size,
           da_processes=get_allowed_n_proc_DA(), median_s=statistics.median(times),
           mean_s=statistics.mean(times), times=times, cpu_s_per_iter=(tree_cpu_seconds() - cpu_start) / iters)
print('RESULT ' + json.dumps(out), flush=True)
import multiprocessing
for child in multiprocessing.active_children():  # the augmentation workers hold our stdout
    child.kill()
os._exit(0)
"""


def time_reference(root: Path, iters: int, warmup: int = 2) -> dict:
    folder = root / "nnunet_preprocessed" / DATASET_NAME
    result = subprocess.run([REF_PYTHON, "-c", REF_DRIVER, str(folder), PLANS, str(iters), str(warmup)],
                            capture_output=True, text=True, env=ref_env(root), timeout=3600)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"reference driver failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def time_ours_subprocess(root: Path, patch_tag: str, iters: int, amp: str, channels_last: bool) -> dict:
    """Each variant in a fresh process: no oneDNN cache or allocator state carried between runs."""
    code = ("import json, sys; sys.path.insert(0, 'bench'); from bench_train import time_ours; "
            f"print('RESULT ' + json.dumps(time_ours(__import__('pathlib').Path({str(root)!r}), {patch_tag!r}, "
            f"{iters}, {amp!r}, {channels_last})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600,
                            cwd=Path(__file__).resolve().parents[1])
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"our driver failed:\n{result.stderr[-3000:]}")


def iters_command(root: Path, iters: int, patch: list[int] | None, variants: list[str], rounds: int) -> list[dict]:
    match_reference_plan(root, patch)
    from selfunet.planning.plan_types import Plan

    tag = "x".join(map(str, patch)) if patch else "x".join(
        map(str, Plan.load(root / "work" / "plan.json").configurations["3d_fullres"].patch_size))
    if patch:
        from selfunet.planning.topology import derive_topology

        spacing = Plan.load(root / "work" / "plan.json").configurations["3d_fullres"].spacing
        _, padded = derive_topology(spacing, patch, Plan.load(root / "work" / "plan.json").settings, 3)
        tag = "x".join(map(str, padded))
    results = []
    for r in range(rounds):  # interleaved: reference, then each of ours, then again
        for variant in variants:
            load = os.getloadavg()[0]
            if variant == "ref":
                res = time_reference(root, iters)
            else:
                amp, cl = variant.split("+")
                res = time_ours_subprocess(root, tag, iters, amp, cl == "cl")
            res["round"], res["load_before"] = r, load
            results.append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "times"}), flush=True)
    return results


def cpu_peak() -> dict:
    """Peak FLOP/s assumptions for this CPU, from /proc/cpuinfo (see docs/benchmarks/training-cpu.md)."""
    info = Path("/proc/cpuinfo").read_text()
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
    cores = os.cpu_count() or 1
    ghz = (sum(mhz) / len(mhz) / 1000) if mhz else float("nan")
    # AVX-512 FMA: 16 fp32 lanes x 2 FLOP x 2 FMA pipes (Zen 4 executes a 512-bit op as two
    # 256-bit halves over its two 256-bit FMA pipes, i.e. also 32 FLOP/cycle)
    fp32_per_cycle = 32 if "avx512f" in flags else 16
    bf16_per_cycle = 2 * fp32_per_cycle if "avx512_bf16" in flags else fp32_per_cycle
    if "amx_bf16" in flags:
        bf16_per_cycle = 1024
    return {"cores": cores, "ghz": ghz, "fp32_gflops": cores * ghz * fp32_per_cycle,
            "bf16_gflops": cores * ghz * bf16_per_cycle, "avx512_bf16": "avx512_bf16" in flags,
            "amx": "amx_bf16" in flags}


# ------------------------------------------------------------------------------ prediction --------
REF_PREDICT_DRIVER = r"""
import json, sys, time, os
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
folder, plans_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
cases = json.loads(sys.argv[4])
plans = load_json(join(folder, plans_name + '.json')); plans['continue_training'] = False
dataset_json = load_json(join(folder, 'dataset.json'))
trainer = nnUNetTrainer(plans, '3d_fullres', 0, dataset_json, device=torch.device('cpu'))
trainer.initialize()
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                            perform_everything_on_device=False, device=torch.device('cpu'), allow_tqdm=False)
net = trainer.network
net.decoder.deep_supervision = False
predictor.manual_initialization(net, trainer.plans_manager, trainer.configuration_manager,
                                [net.state_dict()], dataset_json, 'nnUNetTrainer', (0, 1, 2))
io = SimpleITKIO()
times = []
for files in cases:
    t = time.perf_counter()
    image, props = io.read_images(files)
    predictor.predict_single_npy_array(image, props, None, join(out, os.path.basename(files[0])[:-12]), False)
    times.append(time.perf_counter() - t)
print('RESULT ' + json.dumps(dict(impl='nnunetv2', times=times, threads=torch.get_num_threads())), flush=True)
import multiprocessing
for child in multiprocessing.active_children():  # the augmentation workers hold our stdout
    child.kill()
os._exit(0)
"""


def predict_bench(root: Path, cases: int) -> list[dict]:
    """Seconds per case, 8x mirror TTA, read + preprocess + sliding window + revert + write.

    Weights do not change the cost, so ours is a 1-iteration training and the reference uses its
    freshly initialised network (same plan, same cases, fp32 for both, then ours with bf16).
    """
    import shutil

    from rich.console import Console

    from selfunet.inference.predict import predict_cases
    from selfunet.pipeline import run_training
    from selfunet.training.train_config import TrainConfig

    work = root / "work"
    if not (work / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file():
        run_training(work, "3d_fullres", 0, TrainConfig(epochs=1, iterations_per_epoch=1, validation_iterations=0,
                                                       predict_validation=False, device="cpu"), restart=True)
    raw = root / "nnunet_raw" / DATASET_NAME / "imagesTr"
    ids = sorted({p.name[:-12] for p in raw.glob("*_0000.nii.gz")})[:cases]
    results = []
    ref_out = root / "ref_predictions"
    shutil.rmtree(ref_out, ignore_errors=True)
    ref_out.mkdir()
    folder = root / "nnunet_preprocessed" / DATASET_NAME
    ref_cases = [[str(raw / f"{c}_0000.nii.gz"), str(raw / f"{c}_0001.nii.gz")] for c in ids]
    load = os.getloadavg()[0]
    result = subprocess.run([REF_PYTHON, "-c", REF_PREDICT_DRIVER, str(folder), PLANS, str(ref_out),
                             json.dumps(ref_cases)], capture_output=True, text=True, env=ref_env(root), timeout=3600)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"reference predictor failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    results.append({**json.loads(line[7:]), "load_before": load})
    inputs = root / "predict_inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    for c in ids:
        for k in (0, 1):
            shutil.copyfile(raw / f"{c}_{k:04d}.nii.gz", inputs / f"{c}_{k:04d}.nii.gz")
    for amp in ("off", "bf16"):
        load = os.getloadavg()[0]
        times = []
        for c in ids:  # one case per call, so the per-case time includes everything
            out = root / f"our_predictions_{amp}"
            start = time.perf_counter()
            predict_cases([inputs / f"{c}_0000.nii.gz", inputs / f"{c}_0001.nii.gz"], out, work, ["3d_fullres"],
                          [0], amp=amp, device="cpu", console=Console(quiet=True))
            times.append(time.perf_counter() - start)
        results.append({"impl": f"selfunet amp={amp}", "times": times, "load_before": load})
    for r in results:
        r["median_s"] = statistics.median(r["times"])
    return results


# ------------------------------------------------------------------------------ demo Dice ---------
def demo_dice(root: Path, epochs: int, iterations: int, fold: int) -> dict:
    """Short real training on the demo task, then Dice of the out-of-fold predictions."""
    import numpy as np
    import SimpleITK as sitk
    from rich.console import Console

    from selfunet.pipeline import run_training
    from selfunet.training.train_config import TrainConfig

    work = root / "work"
    start = time.perf_counter()
    config = TrainConfig(epochs=epochs, iterations_per_epoch=iterations, validation_iterations=5,
                         checkpoint_every=max(1, epochs // 2))
    run_training(work, "3d_fullres", fold, config, restart=True, console=Console(stderr=True))
    seconds = time.perf_counter() - start
    out = work / "train" / "3d_fullres" / f"fold_{fold}"
    summary = json.loads((out / "training_summary.json").read_text())
    per_case = {}
    for case in summary["validation_cases"]:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "validation" / f"{case}.nii.gz")))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "data" / "labelsTr" / f"{case}.nii.gz")))
        dice = []
        for c in (1, 2):
            p, r = pred == c, ref == c
            denominator = p.sum() + r.sum()
            dice.append(float(2 * (p & r).sum() / denominator) if denominator else float("nan"))
        per_case[case] = dice
    values = np.array(list(per_case.values()))
    return {"epochs": epochs, "iterations": iterations, "seconds": seconds, "per_case": per_case,
            "mean_dice_per_class": np.nanmean(values, 0).tolist(), "mean_foreground_dice": float(np.nanmean(values))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["setup", "iters", "peak", "predict", "demo-dice"])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "bench_train")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--patch", type=int, nargs=3)
    parser.add_argument("--variants", nargs="+", default=["ref", "off+cl", "off+ncl", "bf16+cl", "bf16+ncl"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--json", type=Path, help="append the results as JSON lines here")
    args = parser.parse_args()
    if args.command == "setup":
        setup(args.root, args.cases)
        return
    if args.command == "peak":
        results = [cpu_peak()]
    elif args.command == "predict":
        results = predict_bench(args.root, args.cases if args.cases != 20 else 4)
    elif args.command == "iters":
        results = iters_command(args.root, args.iters, args.patch, args.variants, args.rounds)
    else:
        results = [demo_dice(args.root, args.epochs, args.iterations, args.fold)]
    for res in results:
        print(json.dumps(res))
        if args.json:
            with args.json.open("a") as handle:
                handle.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
