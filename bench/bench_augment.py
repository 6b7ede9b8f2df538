"""Throughput of the training data pipeline (patch sampling + augmentation) vs a training step.

Runs on the demo task end to end (demo data -> fingerprint -> plan -> preprocess, each skipped
when already done) and measures, per configuration (3d_fullres, 2d) of the real demo plan, on the
CPU of this machine:

* ``sample``: one ``PatchSampler.sample_batch`` (memory-mapped reads of the enlarged patch);
* ``augment``: one ``Augmenter.__call__`` on such a batch (defaults: docs/explanation/design.md#augmentation);
* ``loader``: samples/s of sample+augment produced by one ``BackgroundLoader`` worker thread,
  consumer idle (the supply rate);
* ``step``: one training step (forward + deep-supervision Dice+CE loss + backward + SGD step) of
  the plan's U-Net at the plan's batch size (the consumption rate), alone;
* ``overlapped``: training steps fed by the loader (sample+augment in the background thread),
  i.e. what training really does on a CPU; the time the step loop waits for batches is reported.

Usage: ``python bench/bench_augment.py [--work /tmp/selfunet_bench_augment] [--out docs/benchmarks/augmentation.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from selfunet.data.demo import make_demo_dataset
from selfunet.planning.fingerprint import run_fingerprint
from selfunet.planning.plan import run_plan
from selfunet.planning.plan_types import Plan
from selfunet.preprocessing.preprocess import run_preprocess
from selfunet.training.augment import AugmentationConfig, Augmenter, generator_for
from selfunet.training.loader import BackgroundLoader
from selfunet.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights
from selfunet.training.network import build_network
from selfunet.training.sampling import PatchSampler
from selfunet.workdir import WorkDir


def prepare(root: Path) -> tuple[WorkDir, Plan]:
    raw, work = root / "raw", WorkDir(root / "work")
    make_demo_dataset(raw, num_training=12, num_test=1)
    if not work.fingerprint.is_file():
        run_fingerprint(raw, work.root, processes=2)
    plan = run_plan(work.root) if not work.plan.is_file() else Plan.load(work.plan)
    run_preprocess(work.root, processes=2)
    return work, plan


def timed(fn: Callable[[int], object], n: int, warmup: int = 2) -> tuple[float, float]:
    """(median wall seconds, mean CPU seconds of this process) per call.

    The CPU time is the robust number on a shared machine: other jobs stretch the wall time but
    not the CPU time this work needs (with one intra-op thread and no background thread running,
    process CPU time is the time of this one computation).
    """
    for i in range(warmup):
        fn(10_000 + i)
    times = []
    cpu_start = time.process_time()
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times), (time.process_time() - cpu_start) / n


def bench_configuration(work: WorkDir, plan: Plan, name: str, batches: int, steps: int) -> dict[str, object]:
    conf = plan.configurations[name]
    folder = work.preprocessed(conf.data_identifier)
    case_ids = sorted(p.name[: -len(".json")] for p in folder.glob("*.json") if p.name != "dataset_preprocessed.json")
    sampler = PatchSampler(folder, case_ids, conf.patch_size, conf.batch_size, conf.dimension)
    augmenter = Augmenter(AugmentationConfig(), conf.patch_size, conf.dimension, "cpu")
    seed = 12345

    def sample(i: int):
        return sampler.sample_batch(seed, i)

    pre = [sample(i) for i in range(8)]

    def augment(i: int):
        batch = pre[i % len(pre)]
        return augmenter(torch.from_numpy(batch.image), torch.from_numpy(batch.label), generator_for(seed, i))

    def produce(i: int):
        batch = sampler.sample_batch(seed, i)
        return augmenter(torch.from_numpy(batch.image), torch.from_numpy(batch.label), generator_for(seed, i))

    t_sample, c_sample = timed(sample, batches)
    t_augment, c_augment = timed(augment, batches)

    with BackgroundLoader(produce, start_index=0, prefetch=2, num_workers=1) as loader:
        next(loader)
        start = time.perf_counter()
        for _ in range(batches):
            next(loader)
        loader_rate = batches * conf.batch_size / (time.perf_counter() - start)

    network = build_network(conf.topology, plan.num_input_channels, plan.num_classes, deep_supervision=True)
    loss_fn = DeepSupervisionLoss(
        DiceCELoss(batch_dice=conf.batch_dice), deep_supervision_weights(conf.topology.num_stages - 1)
    )
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    network.train()
    fixed = produce(0)

    def step(_: int, image: torch.Tensor = fixed[0], label: torch.Tensor = fixed[1]) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(image), label)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()

    t_step, c_step = timed(step, steps, warmup=1)

    waits, step_times = [], []
    with BackgroundLoader(produce, start_index=0, prefetch=2, num_workers=1) as loader:
        next(loader)
        for _ in range(steps):
            start = time.perf_counter()
            image, label = next(loader)
            got = time.perf_counter()
            step(0, image, label)
            waits.append(got - start)
            step_times.append(time.perf_counter() - got)

    b = conf.batch_size
    return {
        "name": name,
        "patch": conf.patch_size,
        "read": list(sampler.read_patch_size),
        "batch": b,
        "per_slice": augmenter.per_slice,
        "sample_ms": 1000 * t_sample,
        "augment_ms": 1000 * t_augment,
        "sample_cpu_ms": 1000 * c_sample,
        "augment_cpu_ms": 1000 * c_augment,
        "step_ms": 1000 * t_step,
        "step_cpu_ms": 1000 * c_step,
        "supply_cpu": b / (c_sample + c_augment),
        "consume_cpu": b / c_step,
        "ratio_cpu": c_step / (c_sample + c_augment),
        "loader_rate": loader_rate,
        "consume_wall": b / t_step,
        "ratio_wall": loader_rate / (b / t_step),
        "overlap_step_ms": 1000 * statistics.median(step_times),
        "overlap_wait_ms": 1000 * statistics.mean(waits),
    }


def render(rows: list[dict[str, object]], batches: int, steps: int) -> str:
    load = os.getloadavg()
    lines = [
        "# Data pipeline throughput (patch sampling + augmentation) vs a training step",
        "",
        f"Measured with `python bench/bench_augment.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), "
        f"numpy {np.__version__}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(other jobs shared the machine, so absolute times are noisy; medians over "
        f"{batches} batches and {steps} training steps).",
        "",
        "Data: the demo task (12 training cases), the real demo plan and its preprocessed arrays. "
        "Augmentation at the default probabilities on the CPU (on a GPU it runs on the device instead). "
        "A training step = forward + deep-supervision Dice+CE + backward + SGD step of the plan's U-Net, "
        "float32, CPU.",
        "",
        "CPU time per batch (the robust numbers on a shared machine):",
        "",
        "| configuration | patch | read patch | batch | per-slice | sample ms | augment ms | train step ms "
        "| supply samples/s | consumption samples/s | supply / consumption |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {'x'.join(map(str, r['patch']))} | {'x'.join(map(str, r['read']))} | {r['batch']} "
            f"| {r['per_slice']} | {r['sample_cpu_ms']:.1f} | {r['augment_cpu_ms']:.1f} | {r['step_cpu_ms']:.0f} "
            f"| {r['supply_cpu']:.0f} | {r['consume_cpu']:.1f} | {r['ratio_cpu']:.0f}x |"
        )
    lines += [
        "",
        "Wall time (medians; stretched by whatever else ran on the machine):",
        "",
        "| configuration | sample ms | augment ms | train step ms | 1 loader worker samples/s "
        "| consumption samples/s | supply / consumption | step ms fed by loader | wait ms/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['sample_ms']:.1f} | {r['augment_ms']:.1f} | {r['step_ms']:.0f} "
            f"| {r['loader_rate']:.0f} | {r['consume_wall']:.1f} | {r['ratio_wall']:.0f}x "
            f"| {r['overlap_step_ms']:.0f} | {r['overlap_wait_ms']:.1f} |"
        )
    lines += [
        "",
        "Reading: *supply / consumption* is the rate at which one worker (one core) samples and "
        "augments over the rate at which one training step consumes samples (target >= 3x). "
        "*wait ms/step* is how long the training loop waited for the next batch while the loader ran "
        "beside it: near 0 means data loading is hidden behind the step.",
        "On a GPU the augmentation runs on the training device (one batched grid_sample per batch) and "
        "the loader thread only samples, so the CPU side costs the *sample ms* column per batch.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "selfunet_bench_augment")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "augmentation.md")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--configurations", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work, plan = prepare(args.work)
    names = args.configurations or [n for n in ("3d_fullres", "2d", "3d_lowres") if n in plan.configurations]
    rows = []
    for name in names:
        row = bench_configuration(work, plan, name, args.batches, args.steps)
        print(row, flush=True)
        rows.append(row)
    text = render(rows, args.batches, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
