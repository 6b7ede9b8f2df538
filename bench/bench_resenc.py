"""What each planner preset implies: memory (planned patch x batch, estimate) and CPU training-step time.

1. Memory: the ten Decathlon-shaped fingerprints of ``bench/oracle_plans.py`` planned with every
   preset (no reference needed). Per task and preset, the 3d_fullres patch, batch size, the
   planner's feature-map estimate of one sample and of the batch (its proxy for activation
   memory) and the network's parameter count. The GPU memory each preset targets is the
   reference's (8 / 8 / 24 / 40 GB); the estimate x batch column shows how much of it a plan uses
   relative to the default planner.
2. Time: one training step (forward with deep supervision, Dice+CE loss, backward, SGD step;
   fp32) of each preset's 3d_fullres network on one shape, the Hippocampus-shaped task (small
   enough for a CPU), at the preset's planned patch with batch 2; the time of the planned batch is
   extrapolated linearly from it (per-sample cost x batch) and marked as such.

    python bench/bench_resenc.py [--iters 3] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from oracle_plans import TASKS, _folder, craft  # noqa: E402

from selfunet.planning.nnunet_compat import fingerprint_from_nnunet  # noqa: E402
from selfunet.planning.plan import plan_experiment  # noqa: E402
from selfunet.planning.plan_types import Plan  # noqa: E402
from selfunet.planning.presets import planner_settings  # noqa: E402
from selfunet.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights  # noqa: E402
from selfunet.training.network import build_network, count_parameters  # noqa: E402

PRESETS = ("default", "resenc-m", "resenc-l", "resenc-xl")
#: the GPU memory each preset is made for (the reference's targets)
VRAM_GB = {"default": 8, "resenc-m": 8, "resenc-l": 24, "resenc-xl": 40}
TIMED_TASK = "Hippocampus"


def plan_all(tmp: Path) -> dict[str, dict[str, Plan]]:
    """preset -> task name -> plan, for the ten Decathlon-shaped fingerprints."""
    plans: dict[str, dict[str, Plan]] = {p: {} for p in PRESETS}
    for task in TASKS[:10]:
        dataset, fingerprint = craft(task)
        folder = tmp / _folder(task)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps(dataset))
        (folder / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
        converted = fingerprint_from_nnunet(folder / "dataset_fingerprint.json", folder / "dataset.json")
        for preset in PRESETS:
            plans[preset][task.name] = plan_experiment(converted, planner_settings(preset))
    return plans


def memory_table(plans: dict[str, dict[str, Plan]]) -> list[str]:
    lines = ["| task | preset (GPU target) | 3d_fullres patch | batch | estimate / sample | estimate x batch "
             "| vs default | params |", "|---|---|---|---|---|---|---|---|"]
    for task in plans["default"]:
        base = None
        for preset in PRESETS:
            c = plans[preset][task].configurations["3d_fullres"]
            total = c.estimated_feature_map_elements * c.batch_size
            base = base or total
            with torch.device("meta"):
                params = count_parameters(build_network(c.topology, plans[preset][task].num_input_channels,
                                                        plans[preset][task].num_classes))
            lines.append(f"| {task} | {preset} ({VRAM_GB[preset]} GB) | {'x'.join(map(str, c.patch_size))} | "
                         f"{c.batch_size} | {c.estimated_feature_map_elements / 1e6:.0f}M | {total / 1e6:.0f}M | "
                         f"{total / base:.2f}x | {params / 1e6:.1f}M |")
    return lines


def step_seconds(plan: Plan, batch: int, iters: int) -> tuple[float, float, float]:
    """Median wall and CPU (this process) seconds of one training step at ``batch``, and the conv
    GFLOP of that step. On a shared machine the CPU time is the steadier of the two."""
    torch.manual_seed(0)
    c = plan.configurations["3d_fullres"]
    net = build_network(c.topology, plan.num_input_channels, plan.num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    loss_fn = DeepSupervisionLoss(DiceCELoss(batch_dice=False), deep_supervision_weights(c.topology.num_stages - 1))
    x = torch.randn(batch, plan.num_input_channels, *c.patch_size)
    y = torch.randint(0, plan.num_classes, (batch, 1, *c.patch_size))
    times, cpu = [], []
    for i in range(iters + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        if i > 0:  # the first step pays oneDNN's kernel selection
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    return statistics.median(times), statistics.median(cpu), 3 * batch * net.conv_flops(c.patch_size) / 1e9


def time_table(plans: dict[str, dict[str, Plan]], iters: int) -> list[str]:
    """Presets whose networks and patches are equal (M, L and XL on a small task) are timed once."""
    lines = [f"| preset | {TIMED_TASK} 3d_fullres patch | params | wall s / step (batch 2) | CPU s / step (batch 2) "
             "| conv GFLOP / step (batch 2) | planned batch | CPU s / step at planned batch (extrapolated) |",
             "|---|---|---|---|---|---|---|---|"]
    measured: dict[str, tuple[float, float, float]] = {}
    for preset in PRESETS:
        plan = plans[preset][TIMED_TASK]
        c = plan.configurations["3d_fullres"]
        key = c.topology.model_dump_json() + str(c.patch_size)
        if key not in measured:
            measured[key] = step_seconds(plan, 2, iters)
        wall, cpu, gflop = measured[key]
        with torch.device("meta"):
            params = count_parameters(build_network(c.topology, plan.num_input_channels, plan.num_classes))
        lines.append(f"| {preset} | {'x'.join(map(str, c.patch_size))} | {params / 1e6:.1f}M | {wall:.1f} | "
                     f"{cpu:.1f} | {gflop:.0f} | {c.batch_size} | {cpu / 2 * c.batch_size:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_resenc_") as tmp:
        plans = plan_all(Path(tmp))
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average before "
              f"{os.getloadavg()[0]:.1f}")
    lines = [header, "", *memory_table(plans), "", *time_table(plans, args.iters), "",
             f"load average after {os.getloadavg()[0]:.1f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
