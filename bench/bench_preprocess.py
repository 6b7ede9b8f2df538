"""Side-by-side: selfunet fingerprint + plan + preprocess vs nnU-Net v2 on the demo task.

Usage::

    python bench/bench_preprocess.py --out /tmp/bench_pp [--cases 20] [--processes 2] [--repeats 2]
        [--refvenv /work/refvenv] [--markdown docs/benchmarks/preprocessing.md]

Both tools run as command-line subprocesses (so import time counts for both), each stage on a
fresh output folder, with the same number of worker processes. Measured per stage:

* wall time (``time.perf_counter`` around the subprocess);
* peak memory as the largest *sum* of the resident set sizes of the process tree (sampled every
  20 ms from ``/proc``; this is what a machine has to hold when all workers run at once), and the
  largest single-process RSS seen in the same samples. (``ru_maxrss`` is not used: on Linux a
  child inherits the high-water mark of the parent it was forked from, i.e. of this script.)

The reference gets the same cases converted to its ``DatasetNNN_Name`` raw layout (one file
per channel). selfunet reads the MSD layout (4D NIfTI) directly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from selfunet.data.demo import make_demo_dataset

PAGE_KB = os.sysconf("SC_PAGE_SIZE") / 1024


def _tree_rss_kb(root: int) -> tuple[int, int]:
    """(sum of RSS, largest single RSS) in KiB over ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as handle:
                pages = int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(pages * PAGE_KB)
    total, largest, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        largest = max(largest, rss.get(pid, 0))
        stack.extend(children.get(pid, []))
    return total, largest


def measure(command: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> dict:
    """Run ``command``; return wall seconds, peak tree RSS (MiB) and max single RSS (MiB)."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    peak, single = 0, 0
    while True:
        pid, status, _ = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        total, largest = _tree_rss_kb(process.pid)
        peak, single = max(peak, total), max(single, largest)
        time.sleep(0.02)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if log:
        out.close()
    if process.returncode != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{tail}")
    return {"wall_s": wall, "peak_tree_rss_mib": peak / 1024, "max_single_rss_mib": single / 1024}


def to_nnunet_raw(msd_root: Path, raw_root: Path, dataset_id: int = 501, name: str = "Demo") -> Path:
    """The MSD demo as ``raw_root/Dataset501_Demo`` (imagesTr/<case>_000c.nii.gz, labelsTr)."""
    msd = json.loads((msd_root / "dataset.json").read_text())
    target = raw_root / f"Dataset{dataset_id:03d}_{name}"
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(parents=True, exist_ok=True)
    for entry in msd["training"]:
        case = Path(entry["image"]).name[: -len(".nii.gz")]
        image = sitk.ReadImage(str(msd_root / entry["image"]))
        size = list(image.GetSize())
        for c in range(size[3]):
            channel = sitk.Extract(image, size=[*size[:3], 0], index=[0, 0, 0, c])
            sitk.WriteImage(channel, str(target / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
        shutil.copy(msd_root / entry["label"], target / "labelsTr" / f"{case}.nii.gz")
    descriptor = {
        "channel_names": msd["modality"],
        "labels": {v: int(k) for k, v in msd["labels"].items()},
        "numTraining": len(msd["training"]),
        "file_ending": ".nii.gz",
    }
    (target / "dataset.json").write_text(json.dumps(descriptor, indent=2))
    return target


def run_ours(dataset: Path, work: Path, processes: int, logs: Path) -> dict[str, dict]:
    shutil.rmtree(work, ignore_errors=True)
    exe = [sys.executable, "-m", "selfunet.cli"]
    return {
        "fingerprint": measure([*exe, "fingerprint", str(dataset), "-w", str(work), "-p", str(processes)],
                               log=logs / "ours_fingerprint.log"),
        "plan": measure([*exe, "plan", str(work)], log=logs / "ours_plan.log"),
        "preprocess": measure([*exe, "preprocess", str(work), "-c", "3d_fullres", "-p", str(processes)],
                              log=logs / "ours_preprocess.log"),
    }


def run_reference(raw: Path, root: Path, refvenv: Path, processes: int, logs: Path) -> dict[str, dict]:
    preprocessed = root / "nnUNet_preprocessed"
    shutil.rmtree(preprocessed, ignore_errors=True)
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(preprocessed),
        "nnUNet_results": str(root / "nnUNet_results"),
        "PATH": f"{refvenv / 'bin'}:{os.environ['PATH']}",
    }
    bin_ = refvenv / "bin"
    return {
        "fingerprint": measure([str(bin_ / "nnUNetv2_extract_fingerprint"), "-d", "501", "-np", str(processes)],
                               env=env, log=logs / "ref_fingerprint.log"),
        "plan": measure([str(bin_ / "nnUNetv2_plan_experiment"), "-d", "501"], env=env, log=logs / "ref_plan.log"),
        "preprocess": measure(
            [str(bin_ / "nnUNetv2_preprocess"), "-d", "501", "-c", "3d_fullres", "-np", str(processes)],
            env=env, log=logs / "ref_preprocess.log",
        ),
    }


def summarize(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Median wall time over repeats, max memory over repeats, per stage and in total."""
    out: dict[str, dict] = {}
    for stage in runs[0]:
        out[stage] = {
            "wall_s": statistics.median(r[stage]["wall_s"] for r in runs),
            "peak_tree_rss_mib": max(r[stage]["peak_tree_rss_mib"] for r in runs),
            "max_single_rss_mib": max(r[stage]["max_single_rss_mib"] for r in runs),
        }
    out["total"] = {
        "wall_s": statistics.median(sum(r[s]["wall_s"] for s in r) for r in runs),
        "peak_tree_rss_mib": max(v["peak_tree_rss_mib"] for v in out.values()),
        "max_single_rss_mib": max(v["max_single_rss_mib"] for v in out.values()),
    }
    return out


def markdown(ours: dict, ref: dict, meta: dict) -> str:
    lines = [
        "# Preprocessing benchmark: selfunet vs nnU-Net v2",
        "",
        f"Demo task, {meta['cases']} training cases (2 channels, ~{meta['voxels']} voxels/case), "
        f"{meta['processes']} worker processes, {meta['repeats']} repeat(s) (wall: median; memory: max), "
        f"{meta['cpus']} CPU cores. Reference: nnU-Net {meta['ref_version']} "
        "(`nnUNetv2_extract_fingerprint`, `nnUNetv2_plan_experiment`, `nnUNetv2_preprocess -c 3d_fullres`). "
        "Both run as CLI subprocesses (import time included). Produced by `bench/bench_preprocess.py`.",
        "",
        "| stage | selfunet wall (s) | nnU-Net wall (s) | speed-up | selfunet peak tree RSS (MiB) "
        "| nnU-Net peak tree RSS (MiB) | selfunet max process RSS (MiB) | nnU-Net max process RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in ("fingerprint", "plan", "preprocess", "total"):
        a, b = ours[stage], ref[stage]
        lines.append(
            f"| {stage} | {a['wall_s']:.2f} | {b['wall_s']:.2f} | {b['wall_s'] / a['wall_s']:.1f}x "
            f"| {a['peak_tree_rss_mib']:.0f} | {b['peak_tree_rss_mib']:.0f} "
            f"| {a['max_single_rss_mib']:.0f} | {b['max_single_rss_mib']:.0f} |"
        )
    lines += [
        "",
        "Peak tree RSS = the largest sum of resident memory over the process and all its workers "
        "(sampled every 20 ms); max process RSS = the largest single process in the same samples.",
        "",
        "Random patch read ((2, 64, 128, 128) from a (2, 128, 256, 256) float32 volume, warm page cache): "
        f"memory-mapped .npy {meta['patch_read']['npy_mmap_ms']:.1f} ms, "
        f".npz {meta['patch_read']['npz_ms']:.1f} ms, "
        f"compressed .npz {meta['patch_read']['npz_compressed_ms']:.1f} ms per patch "
        f"(file sizes {', '.join(f'{k} {v:.0f} MiB' for k, v in meta['patch_read']['file_mib'].items())}).",
        "",
    ]
    return "\n".join(lines)


def patch_read_benchmark(folder: Path, reads: int = 30, seed: int = 0) -> dict[str, float]:
    """Milliseconds per random patch read: memory-mapped .npy vs .npz (plain and compressed).

    A (2, 128, 256, 256) float32 volume (64 MiB) and (2, 64, 128, 128) patches, as a patch sampler
    would read them; the page cache is warm (the file was just written), which favours the npz
    variants: they still have to decompress / copy the whole array for every patch.
    """
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    volume = rng.normal(size=(2, 128, 256, 256)).astype(np.float32)
    np.save(folder / "v.npy", volume)
    np.savez(folder / "v.npz", data=volume)
    np.savez_compressed(folder / "vc.npz", data=volume)
    starts = [[int(rng.integers(0, n - p + 1)) for n, p in zip(volume.shape[1:], (64, 128, 128))]
              for _ in range(reads)]

    def read(loader) -> float:
        begin = time.perf_counter()
        for z, y, x in starts:
            patch = np.array(loader()[:, z : z + 64, y : y + 128, x : x + 128])
            assert patch.shape == (2, 64, 128, 128)
        return (time.perf_counter() - begin) / reads * 1000

    def npz(path: Path):
        with np.load(path) as handle:
            return handle["data"]

    return {
        "npy_mmap_ms": read(lambda: np.load(folder / "v.npy", mmap_mode="r")),
        "npz_ms": read(lambda: npz(folder / "v.npz")),
        "npz_compressed_ms": read(lambda: npz(folder / "vc.npz")),
        "file_mib": {name: (folder / name).stat().st_size / 2**20 for name in ("v.npy", "v.npz", "vc.npz")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--refvenv", type=Path, default=Path("/work/refvenv"))
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()

    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec = make_demo_dataset(out / "demo", num_training=args.cases, num_test=0)
    raw = out / "nnUNet_raw"
    if not (raw / "Dataset501_Demo" / "dataset.json").is_file():
        to_nnunet_raw(out / "demo", raw)
    ref_version = subprocess.run(
        [str(args.refvenv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('nnunetv2'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()

    ours_runs, ref_runs = [], []
    for repeat in range(args.repeats):
        # alternate the order so neither tool always runs with a warm page cache
        if repeat % 2 == 0:
            ref_runs.append(run_reference(raw, out, args.refvenv, args.processes, logs))
            ours_runs.append(run_ours(out / "demo", out / "work", args.processes, logs))
        else:
            ours_runs.append(run_ours(out / "demo", out / "work", args.processes, logs))
            ref_runs.append(run_reference(raw, out, args.refvenv, args.processes, logs))
        print(f"repeat {repeat}: ours {json.dumps(ours_runs[-1])}\n          ref  {json.dumps(ref_runs[-1])}")

    image = sitk.ReadImage(str(spec.training[0].images[0]))
    meta = {
        "cases": args.cases,
        "processes": args.processes,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "ref_version": ref_version,
        "voxels": f"{image.GetSize()[0] * image.GetSize()[1] * image.GetSize()[2]:,}",
    }
    ours, ref = summarize(ours_runs), summarize(ref_runs)
    meta["patch_read"] = patch_read_benchmark(out / "patch_read")
    (out / "results.json").write_text(json.dumps({"meta": meta, "ours": ours, "reference": ref,
                                                  "ours_runs": ours_runs, "reference_runs": ref_runs}, indent=2))
    text = markdown(ours, ref, meta)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
