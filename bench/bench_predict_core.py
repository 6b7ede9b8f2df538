"""Seconds per case of the sliding-window core: one 3D U-Net, 8x mirror TTA, fp32 vs bf16.

A ~50x60x65 single-channel volume with the planner's topology for a 48x64x80 patch (isotropic
spacing), so the case needs padding on two axes and two windows on the first. Run:

    python bench/bench_predict_core.py [--repeats 2] [--threads N] [--device cpu]

Prints a markdown table (copy it into docs/benchmarks/prediction-cpu.md).
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from selfunet.inference.sliding_window import InferenceConfig, compute_window_starts, predict_sliding_window
from selfunet.planning.plan_types import PlannerSettings
from selfunet.planning.topology import derive_topology
from selfunet.training.network import build_network, count_parameters, to_channels_last

VOLUME = (50, 60, 65)
PATCH = (48, 64, 80)
CLASSES = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--windows-per-batch", type=int, default=4)
    parser.add_argument("--channels-last", action="store_true", help="channels_last_3d weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    topology, patch = derive_topology([1.0, 1.0, 1.0], PATCH, PlannerSettings(), 3)
    net = build_network(topology, in_channels=1, num_classes=CLASSES, deep_supervision=False).to(args.device)
    if args.channels_last:
        net = to_channels_last(net)
    image = torch.randn(1, *VOLUME)
    padded = [max(v, p) for v, p in zip(VOLUME, patch)]
    n_windows = math.prod(len(s) for s in compute_window_starts(padded, patch, 0.5))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"device {args.device}, channels_last={args.channels_last}; volume {VOLUME}, patch {patch}, "
        f"{topology.num_stages} stages, "
        f"{count_parameters(net) / 1e6:.1f} M parameters, {n_windows} windows x 8 mirrors\n"
    )
    print("| precision | wall s per case (median) | all runs | CPU s per case (median) | forward passes/s |")
    print("|---|---|---|---|---|")
    reference = None
    for name, dtype in [("fp32", None), ("bf16 autocast", torch.bfloat16)]:
        config = InferenceConfig(amp_dtype=dtype, windows_per_batch=args.windows_per_batch, device=args.device)
        times, cpu_times = [], []
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            logits = predict_sliding_window(net, image, patch, CLASSES, config)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        times.sort()
        median = times[len(times) // 2]
        cpu_median = sorted(cpu_times)[len(cpu_times) // 2]
        passes = math.ceil(n_windows / args.windows_per_batch) * 8
        print(
            f"| {name} | {median:.1f} | {', '.join(f'{t:.1f}' for t in times)} | {cpu_median:.1f} "
            f"| {passes / median:.2f} |"
        )
        if reference is None:
            reference = logits
        else:
            agree = (logits.argmax(0) == reference.argmax(0)).float().mean().item()
            print(
                f"\nbf16 vs fp32: max |logit diff| {(logits - reference).abs().max():.3g}, argmax agreement {agree:.4f}"
            )


if __name__ == "__main__":
    main()
