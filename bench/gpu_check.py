"""One command that measures the GPU path: run it on any CUDA machine (under 10 minutes).

What it writes (``--out``, one ``gpu_check.json`` and one ``gpu_check.md`` table):

* the device, its driver, torch, CUDA and cuDNN versions, and the precision ``--amp auto`` picks;
* for a 4-channel 128^3 plan (batch 2) and a 2D 512^2 plan (batch 12): seconds per training
  iteration and the share of it spent waiting for the loader (does the loader keep the GPU
  busy?), with ``torch.compile`` off and on; the peak GPU memory against the plan's
  feature-map estimate; the loader is the product's (``TrainBatchSource`` in background threads,
  page-locked reads, augmentation on the device), the network, loss and optimiser too;
* prediction time of one case per plan, with and without mirroring;
* the exported container run with ``--gpus all`` (``--container IMAGE``) where Docker has the
  NVIDIA runtime.

Without CUDA it runs the same code at tiny sizes on the CPU (a 16^3 and a 32^2 plan, a few
iterations, no compile), marks every GPU number "skipped: no CUDA device" and still writes both
files, so CI keeps the script working (tests/test_gpu_check.py). Usage::

    python bench/gpu_check.py --out gpu_check [--iterations 30] [--container selfunet-algorithm:latest]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SKIPPED = "skipped: no CUDA device"

#: name -> (channels, patch, batch, case shape (z, y, x))
GPU_PLANS = {"4ch 128^3 b2": (4, (128, 128, 128), 2, (150, 190, 180)),
             "2D 512^2 b12": (1, (512, 512), 12, (24, 560, 600))}
CPU_PLANS = {"4ch 16^3 b2 (CPU stand-in)": (4, (16, 16, 16), 2, (16, 16, 16)),
             "2D 32^2 b2 (CPU stand-in)": (1, (32, 32), 2, (1, 32, 32))}
#: the CPU stand-ins' networks keep the planned topology with at most this many features per stage
CPU_FEATURES = 4


def plan_topology(patch: tuple[int, ...], device: torch.device):
    """The planner's topology for ``patch`` (features capped on the CPU stand-in), and the patch."""
    from selfunet.planning.plan_types import PlannerSettings
    from selfunet.planning.topology import derive_topology

    dimension = len(patch)
    topology, padded = derive_topology([1.0] * dimension, patch, PlannerSettings(), dimension)
    if device.type != "cuda":
        topology = topology.model_copy(update={"features_per_stage": [
            min(f, CPU_FEATURES) for f in topology.features_per_stage]})
    return topology, tuple(padded)


def environment(device: torch.device) -> dict:
    from selfunet.runtime import precision_reason, resolve_amp

    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(device)}
    amp = resolve_amp("auto", device)
    info["precision"] = {"dtype": str(amp).replace("torch.", "") if amp is not None else "fp32",
                         "reason": precision_reason(amp, "auto", device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
        smi = shutil.which("nvidia-smi")
        if smi:
            done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                  text=True)
            info["driver"] = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None
    else:
        info.update(name=platform.processor() or platform.machine(), driver=SKIPPED)
    return info


def measure_training(folder: Path, ids: list[str], channels: int, patch: tuple[int, ...], batch: int,
                     iterations: int, device: torch.device, amp: torch.dtype | None, compiled: bool) -> dict:
    """Seconds per iteration and the loader-wait share, the product's loader/network/loss/optimiser."""
    from selfunet.data.labels import LabelScheme
    from selfunet.planning.topology import estimate_feature_map_elements
    from selfunet.training.augment import AugmentationConfig, Augmenter
    from selfunet.training.batches import TrainBatchSource, finish, pinned
    from selfunet.training.loader import open_loader
    from selfunet.training.loss import build_loss
    from selfunet.training.network import build_network
    from selfunet.training.sampling import PatchSampler

    dimension = len(patch)
    topology, patch = plan_topology(patch, device)
    cuda = device.type == "cuda"
    host_augmenter = Augmenter(AugmentationConfig(), patch, dimension, device="cpu", intensity_channels=channels)
    device_augmenter = Augmenter(AugmentationConfig(), patch, dimension, device=device, intensity_channels=channels)
    sampler = PatchSampler(folder, ids, patch, batch, dimension, read_patch_size=host_augmenter.read_patch_size)
    allocate = pinned if cuda else None
    source = TrainBatchSource(sampler, host_augmenter, seed=0, augment_here=not cuda, allocate=allocate)
    network = build_network(topology, channels, 3, deep_supervision=True).to(device)
    model = torch.compile(network) if compiled else network
    loss_fn = build_loss(LabelScheme(), False, len(topology.features_per_stage) - 1).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    waits, totals = [], []
    loader = open_loader(source, 0, prefetch=3, num_workers=max(1, min(4, (os.cpu_count() or 2) - 1)))
    try:
        for index in range(iterations + 1):  # the first iteration (warm-up, compilation) is not counted
            start = time.perf_counter()
            item = next(loader)
            waited = time.perf_counter() - start
            image, label = finish(item, device_augmenter)
            image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = loss_fn(model(image), label)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if cuda:
                torch.cuda.synchronize(device)
            if index:
                waits.append(waited)
                totals.append(time.perf_counter() - start)
    finally:
        loader.close()
    estimate = estimate_feature_map_elements(topology, patch, 3) * batch
    result = {"patch": list(patch), "batch": batch, "s_per_iteration": round(statistics.median(totals), 4),
              "data_wait_fraction": round(sum(waits) / sum(totals), 3),
              "estimated_feature_map_elements": int(estimate)}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        result.update(peak_gpu_memory_gb=round(peak / 2**30, 2), bytes_per_estimated_element=round(peak / estimate, 2))
    else:
        result.update(peak_gpu_memory_gb=SKIPPED)
    return result


def measure_prediction(channels: int, patch: tuple[int, ...], case: tuple[int, ...], device: torch.device,
                       amp: torch.dtype | None) -> dict:
    from selfunet.inference.inference_config import InferenceConfig
    from selfunet.inference.sliding_window import predict_sliding_window
    from selfunet.training.network import build_network

    topology, patch = plan_topology(patch, device)
    network = build_network(topology, channels, 3, deep_supervision=False).to(device)
    image = torch.randn(channels, *case)
    out = {}
    for name, axes in (("mirroring", None), ("no_mirroring", ())):
        config = InferenceConfig(mirror_axes=axes, amp_dtype=amp, device=device)
        start = time.perf_counter()
        predict_sliding_window(network, image, patch, 3, config)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out[f"predict_s_{name}"] = round(time.perf_counter() - start, 2)
    return out


def container_run(image: str | None) -> str | dict:
    """The exported algorithm container on the GPU (``docker run --gpus all``), when possible."""
    docker = shutil.which("docker")
    if docker is None:
        return "skipped: no docker client"
    info = subprocess.run([docker, "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    if info.returncode != 0 or "nvidia" not in info.stdout:
        return "skipped: Docker without the NVIDIA runtime"
    if not image:
        return "skipped: no --container IMAGE given"
    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = Path(scratch) / "input", Path(scratch) / "output"
        inputs.mkdir()
        outputs.mkdir()
        start = time.perf_counter()
        done = subprocess.run([docker, "run", "--rm", "--gpus", "all", "--network", "none",
                               "-v", f"{inputs}:/input:ro", "-v", f"{outputs}:/output", image],
                              capture_output=True, text=True)
        return {"returncode": done.returncode, "seconds": round(time.perf_counter() - start, 1),
                "log_tail": (done.stdout + done.stderr)[-800:]}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# GPU check: {env.get('name')}", "",
             f"- device {env['device']}, driver {env.get('driver')}, torch {env['torch']}, CUDA {env['cuda']}, "
             f"cuDNN {env['cudnn']}",
             f"- precision (--amp auto): {env['precision']['dtype']} ({env['precision']['reason']})",
             f"- container run (--gpus all): {result['container']}", ""]
    if result["mode"] != "cuda":
        lines += [f"CPU mode: {SKIPPED}; the code paths ran at tiny sizes, the numbers are not GPU numbers.", ""]
    lines += ["| plan | compile | s / iteration | data-wait share | peak GPU memory GB | estimate (elements) "
              "| predict s, mirroring | predict s, none |", "|---|---|---|---|---|---|---|---|"]
    for plan in result["plans"]:
        predicted = plan["prediction"]
        for row in plan["training"]:
            lines.append(f"| {plan['name']} | {row['compile']} | {row['s_per_iteration']} | "
                         f"{row['data_wait_fraction']} | {row['peak_gpu_memory_gb']} | "
                         f"{row['estimated_feature_map_elements'] or '-'} | {predicted['predict_s_mirroring']} | "
                         f"{predicted['predict_s_no_mirroring']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from bench_loader import write_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--container", help="an exported algorithm image to run with --gpus all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from selfunet.runtime import resolve_amp

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = resolve_amp("auto", device)
    iterations = args.iterations if cuda else min(args.iterations, 2)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "mode": "cuda" if cuda else "cpu",
              "environment": environment(device), "plans": []}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (channels, patch, batch, case) in (GPU_PLANS if cuda else CPU_PLANS).items():
            folder = Path(scratch) / name.split()[0].replace("^", "")
            ids = write_cases(folder, channels, case, 2)
            rows = []
            for compiled in ((False, True) if cuda else (False,)):
                row = measure_training(folder, ids, channels, patch, batch, iterations, device, amp, compiled)
                rows.append({"compile": "on" if compiled else "off", **row})
            if not cuda:
                rows.append({"compile": "on", "s_per_iteration": SKIPPED, "data_wait_fraction": SKIPPED,
                             "peak_gpu_memory_gb": SKIPPED, "estimated_feature_map_elements": None})
            result["plans"].append({"name": name, "training": rows,
                                    "prediction": measure_prediction(channels, patch, case, device, amp)})
    result["container"] = container_run(args.container) if cuda else SKIPPED
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
