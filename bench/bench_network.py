"""Time one training iteration of a planned 3D U-Net on this CPU: fp32 vs bf16 autocast, +channels-last.

An iteration = forward (deep supervision) + Dice/CE deep-supervision loss + backward + SGD step,
as in training. Prints a Markdown table; run with ``python bench/bench_network.py [--iters N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from selfunet.planning.plan_types import PlannerSettings
from selfunet.planning.topology import derive_topology
from selfunet.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights
from selfunet.training.network import build_network, count_parameters, memory_format_for, to_channels_last


def run(mode: str, patch: list[int], spacing: list[float], batch: int, iters: int, classes: int) -> dict:
    torch.manual_seed(0)
    topology, padded = derive_topology(spacing, patch, PlannerSettings(), 3)
    net = build_network(topology, in_channels=1, num_classes=classes)
    channels_last = "channels_last" in mode
    bf16 = "bf16" in mode
    if channels_last:
        to_channels_last(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    loss_fn = DeepSupervisionLoss(DiceCELoss(batch_dice=False), deep_supervision_weights(topology.num_stages - 1))
    x = torch.randn(batch, 1, *padded)
    if channels_last:
        x = x.contiguous(memory_format=memory_format_for(3))
    y = torch.randint(0, classes, (batch, 1, *padded))
    times, cpu_times = [], []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        c0 = time.process_time()
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            outputs = net(x)
        loss = loss_fn(outputs, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        if i > 0:  # the first iteration pays oneDNN's kernel selection
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    flops = 3 * batch * net.conv_flops(padded)  # backward ~ 2x forward
    med = statistics.median(times)
    return {
        "mode": mode, "patch": padded, "stages": topology.num_stages, "params": count_parameters(net),
        "median_s": med, "min_s": min(times),
        "cpu_s": statistics.median(cpu_times), "gflops": flops / 1e9, "gflops_per_s": flops / 1e9 / med,
        "loss": float(loss.detach()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 64, 80])
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "fp32+channels_last", "bf16+channels_last"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load before {os.getloadavg()[0]:.2f}")
    print("| mode | patch | stages | params | median s/iter | min s/iter | CPU s/iter | conv GFLOP/iter | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        r = run(mode, args.patch, args.spacing, args.batch, args.iters, args.classes)
        print(f"| {r['mode']} | {'x'.join(map(str, r['patch']))} (batch {args.batch}) | {r['stages']} | "
              f"{r['params'] / 1e6:.1f}M | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['cpu_s']:.2f} | "
              f"{r['gflops']:.0f} | "
              f"{r['gflops_per_s']:.0f} |", flush=True)
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
