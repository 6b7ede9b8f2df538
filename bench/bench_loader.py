"""Training data loader, side by side with the reference's: voxels read and host CPU per batch.

Three plan shapes: a 4-channel 128^3 patch at batch 2, a 64x192x160 patch at batch 2,
and a 2D 512x512 patch at batch 12. The same synthetic preprocessed cases are written in both
formats (ours: ``<case>.npy``, ``_seg.npy``, ``_fg.npz``, ``.json``; the reference's numpy
dataset: the same ``.npy`` files plus a ``.pkl`` with the class locations), so both read the
same bytes through memory maps.

* reference: nnU-Net v2's ``nnUNetDataLoader`` with its default trainer's training transforms
  (``get_training_transforms`` with the rotation, dummy-2D and read-patch rule of
  ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``, the non-zero mask on, and the
  deep-supervision targets it makes), run with the reference's python in a subprocess (never
  imported here); one batch = ``generate_train_batch()``.
* ours, two rows: "CPU training" = one ``TrainBatchSource`` call with ``augment_here`` (draw,
  read the per-sample boxes, augment on the host: what a CPU-only machine does per batch);
  "CUDA training, host part" = the same call without augmenting (draw and read into the buffers
  that would be page-locked; the GPU augments). The device's own work (the copy and the
  augmentation kernels) is not host CPU and is not measured here (no GPU on this machine).

Host CPU = process CPU seconds (``time.process_time``: all threads) per batch, one torch thread
on both sides, so a loaded machine changes the numbers less than wall time would. Voxels read =
voxels of the arrays each loader fills per batch (all channels and the segmentation, padding
included).

Usage: ``python bench/bench_loader.py [--root DIR] [--batches 20] [--reference-python PY]``
(``--reference-python`` defaults to ``$SELFUNET_REFERENCE_PYTHON``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from selfunet.training.augment import AugmentationConfig, Augmenter
from selfunet.training.batches import TrainBatchSource
from selfunet.training.sampling import PatchSampler

#: name -> (channels, patch, batch, case shape (z, y, x), cases)
SHAPES = {
    "4ch 128^3 b2": (4, (128, 128, 128), 2, (150, 190, 180), 3),
    "64x192x160 b2": (1, (64, 192, 160), 2, (90, 260, 230), 3),
    "2D 512x512 b12": (1, (512, 512), 12, (24, 560, 600), 3),
}


def write_cases(folder: Path, channels: int, shape: tuple[int, int, int], cases: int) -> list[str]:
    """Synthetic preprocessed cases: a body (non-zero mask) with two organs; -1 outside the body."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = []
    _, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for i in range(cases):
        case = f"case_{i:03d}"
        ids.append(case)
        if (folder / f"{case}.pkl").is_file():
            continue
        body = ((y - shape[1] / 2) / (shape[1] * 0.45)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1
        body = np.broadcast_to(body, shape)
        seg = np.where(body, 0, -1).astype(np.int8)
        seg[shape[0] // 4 : shape[0] // 2, shape[1] // 3 : shape[1] // 2, shape[2] // 3 : shape[2] // 2] = 1
        seg[shape[0] // 2 : shape[0] * 3 // 4, shape[1] // 2 : shape[1] * 2 // 3, shape[2] // 2 : shape[2] * 2 // 3] = 2
        image = rng.standard_normal((channels, *shape), dtype=np.float32)
        image[:, ~body] = 0
        np.save(folder / f"{case}.npy", image)
        np.save(folder / f"{case}_seg.npy", seg[None])
        locations = {c: np.argwhere(seg == c).astype(np.int64) for c in (1, 2)}
        picks = {c: v[rng.choice(len(v), min(len(v), 10000), replace=False)] for c, v in locations.items()}
        np.savez(folder / f"{case}_fg.npz", **{f"class_{c}": v.astype(np.int32) for c, v in picks.items()})
        (folder / f"{case}.json").write_text(json.dumps({"case_id": case, "classes_present": [1, 2]}))
        # the reference's properties: class locations with a leading channel index
        ref_locations = {c: np.concatenate([np.zeros((len(v), 1), np.int64), v], 1) for c, v in picks.items()}
        with open(folder / f"{case}.pkl", "wb") as handle:
            pickle.dump({"class_locations": ref_locations}, handle)
    return ids


def deep_supervision_scales(patch: tuple[int, ...]) -> list[list[float]]:
    """A plain U-Net's output scales for the patch (halving every axis above 4 voxels)."""
    scales, current = [[1.0] * len(patch)], [float(p) for p in patch]
    while min(current) > 8:
        step = [0.5 if c > 4 else 1.0 for c in current]
        current = [c * s for c, s in zip(current, step)]
        scales.append([s * t for s, t in zip(scales[-1], step)])
    return scales[:-1] if len(scales) > 1 else scales


def measure_ours(folder: Path, ids: list[str], channels: int, patch: tuple[int, ...], batch: int,
                 batches: int) -> dict:
    torch.set_num_threads(1)
    dimension = len(patch)
    augmentation = dict(config=AugmentationConfig(), patch_size=patch, dimension=dimension,
                        intensity_channels=channels, mask_channels=list(range(channels)))
    augmenter = Augmenter(device="cpu", **augmentation)
    sampler = PatchSampler(folder, ids, patch, batch, dimension, read_patch_size=augmenter.read_patch_size)
    out = {}
    for name, here in (("cpu", True), ("host", False)):
        source = TrainBatchSource(sampler, augmenter, seed=0, augment_here=here)
        source(10_000)  # warm-up: page cache, caches
        cpu, voxels = [], []
        for index in range(batches):
            start = time.process_time()
            item = source(index)
            cpu.append(time.process_time() - start)
            if not here:  # the same draws and boxes in both modes: count them once
                voxels.append(item.boxes.voxels)
        out[name] = {"cpu_ms": 1000 * statistics.mean(cpu), "voxels": statistics.mean(voxels) if voxels else None}
    out["cpu"]["voxels"] = out["host"]["voxels"]
    return out


REFERENCE_DRIVER = r"""
import json, statistics, sys, time
import numpy as np, torch
from types import SimpleNamespace
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.label_handling.label_handling import LabelManager

folder, ids, channels, patch, batch, batches, scales = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), \
    tuple(json.loads(sys.argv[4])), int(sys.argv[5]), int(sys.argv[6]), json.loads(sys.argv[7])
torch.set_num_threads(1)
np.random.seed(0)
torch.manual_seed(0)
stub = SimpleNamespace(configuration_manager=SimpleNamespace(patch_size=patch), print_to_log_file=lambda *a, **k: None)
configure = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size
rotation, dummy_2d, initial, mirror_axes = configure(stub)
transforms = nnUNetTrainer.get_training_transforms(patch, rotation, scales, mirror_axes, dummy_2d,
                                                   use_mask_for_norm=[True] * channels, is_cascaded=False)
labels = LabelManager({"background": 0, "a": 1, "b": 2}, regions_class_order=None)
loader = nnUNetDataLoader(nnUNetDatasetNumpy(folder, ids), batch, initial, patch, labels,
                          oversample_foreground_percent=0.33, transforms=transforms)
loader.generate_train_batch()
cpu = []
for _ in range(batches):
    start = time.process_time()
    loader.generate_train_batch()
    cpu.append(time.process_time() - start)
read = [int(v) for v in initial]
voxels = batch * (channels + 1) * int(np.prod(read))
print(json.dumps({"cpu_ms": 1000 * statistics.mean(cpu), "voxels": voxels, "read": read}))
"""


def measure_reference(python: str, folder: Path, ids: list[str], channels: int, patch: tuple[int, ...],
                      batch: int, batches: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", nnUNet_raw=str(folder), nnUNet_preprocessed=str(folder),
               nnUNet_results=str(folder))
    result = subprocess.run(
        [python, "-c", REFERENCE_DRIVER, str(folder), json.dumps(ids), str(channels), json.dumps(list(patch)),
         str(batch), str(batches), json.dumps(deep_supervision_scales(patch))],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reference loader failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "selfunet_bench_loader")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--reference-python", default=os.environ.get("SELFUNET_REFERENCE_PYTHON"))
    parser.add_argument("--only", nargs="*", default=None, help="plan shapes to run (names of SHAPES)")
    args = parser.parse_args()
    rows = []
    for name, (channels, patch, batch, shape, cases) in SHAPES.items():
        if args.only and name not in args.only:
            continue
        folder = args.root / name.replace(" ", "_").replace("^", "")
        ids = write_cases(folder, channels, shape, cases)
        ours = measure_ours(folder, ids, channels, patch, batch, args.batches)
        ref = measure_reference(args.reference_python, folder, ids, channels, patch, batch, args.batches) \
            if args.reference_python else None
        rows.append((name, ours, ref))
        print(json.dumps({"shape": name, "ours": ours, "reference": ref}), flush=True)
    print()
    print("| plan | reference: voxels read / batch | ours: voxels read (ratio) | reference: host CPU ms / batch "
          "| ours, CPU training: host CPU ms (ratio) | ours, CUDA training: host CPU ms (ratio) |")
    print("|---|---|---|---|---|---|")
    for name, ours, ref in rows:
        rv, rc = (ref["voxels"], ref["cpu_ms"]) if ref else (float("nan"), float("nan"))
        print(f"| {name} | {rv / 1e6:.1f} M | {ours['host']['voxels'] / 1e6:.1f} M ({ours['host']['voxels'] / rv:.2f}) "
              f"| {rc:.0f} | {ours['cpu']['cpu_ms']:.0f} ({ours['cpu']['cpu_ms'] / rc:.2f}) "
              f"| {ours['host']['cpu_ms']:.0f} ({ours['host']['cpu_ms'] / rc:.2f}) |")


if __name__ == "__main__":
    main()
