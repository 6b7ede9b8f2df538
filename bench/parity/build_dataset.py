"""Build the small real-CT parity dataset from TotalSegmentator 2.18.0's reference files.

Why slabs: the source package ships one whole abdominal/pelvic CT with a full multi-organ label
(``tests/reference_files/example_ct.nii.gz`` + ``example_seg_fast_force_split.nii.gz``), far too
few volumes for a cross-validation. We cut it along z into contiguous, non-overlapping slabs
(each one case, with the origin moved to the slab's first slice so every slab sits where it was
in the scanner) and merge the 117 TotalSegmentator classes into four structures that each occur
in several slabs. No voxel appears in two cases (checked below), so there is no duplication;
the slabs do come from one patient, which the report states.

The same voxels are written twice: an MSD-layout task for selfunet and an nnU-Net v2 raw
dataset (``DatasetNNN_Name/imagesTr/<case>_0000.nii.gz``) for the reference.

Usage::

    python bench/parity/build_dataset.py --source /tmp/ts/totalsegmentator-2.18.0/tests/reference_files \
        --out /tmp/parity --slabs 6 [--downsample 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# TotalSegmentator class map "total" (totalsegmentator/map_to_binary.py, version 2.18.0):
# 5 liver; 2 kidney_right, 3 kidney_left; 25 sacrum, 26..50 vertebrae_S1..C1; 77 hip_left, 78 hip_right.
MERGED_CLASSES: dict[int, tuple[str, tuple[int, ...]]] = {
    1: ("liver", (5,)),
    2: ("kidneys", (2, 3)),
    3: ("spine", tuple(range(25, 51))),
    4: ("hip_bones", (77, 78)),
}
CASE_PREFIX = "tsct"
NNUNET_DATASET = "Dataset501_TSCTSlabs"


def merge_labels(seg: np.ndarray) -> np.ndarray:
    out = np.zeros(seg.shape, dtype=np.uint8)
    for value, (_, sources) in MERGED_CLASSES.items():
        out[np.isin(seg, sources)] = value
    return out


def slab_bounds(depth: int, slabs: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, depth, slabs + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(slabs)]


def downsample(image: sitk.Image, ct: np.ndarray, lab: np.ndarray, factor: int
               ) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """Coarser voxels by an integer ``factor`` per axis: the CT block-averaged (no aliasing), the
    labels by majority per block; the grid keeps its direction, its origin moves to the first
    block's centre. Why: on a 2-core CPU one training iteration at the source's 3 mm plan
    (20x112x128 patch) takes ~15 s, which puts 3 folds x 250 iterations x 2 implementations at
    about six hours; at 6 mm the plan's patch has ~8x fewer voxels."""
    if factor == 1:
        return image, ct, lab
    z, y, x = (n // factor * factor for n in ct.shape)
    blocks = (z // factor, factor, y // factor, factor, x // factor, factor)
    ct_small = ct[:z, :y, :x].reshape(blocks).mean(axis=(1, 3, 5)).round().astype(np.int16)
    classes = range(len(MERGED_CLASSES) + 1)
    votes = np.stack([(lab[:z, :y, :x] == v).reshape(blocks).sum(axis=(1, 3, 5)) for v in classes])
    lab_small = votes.argmax(0).astype(np.uint8)
    grid = sitk.GetImageFromArray(ct_small)
    grid.SetSpacing([s * factor for s in image.GetSpacing()])
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([(factor - 1) / 2] * 3))
    return grid, ct_small, lab_small


def build(source: Path, out: Path, slabs: int, factor: int = 1) -> dict:
    image = sitk.ReadImage(str(source / "example_ct.nii.gz"))
    seg = sitk.ReadImage(str(source / "example_seg_fast_force_split.nii.gz"))
    if image.GetSize() != seg.GetSize() or not np.allclose(image.GetOrigin(), seg.GetOrigin()):
        raise SystemExit("image and label geometry differ")
    ct = sitk.GetArrayFromImage(image).astype(np.int16)  # (z, y, x); HU fits int16
    lab = merge_labels(sitk.GetArrayFromImage(seg))
    image, ct, lab = downsample(image, ct, lab, factor)

    msd = out / "msd"
    raw = out / "nnunet_raw" / NNUNET_DATASET
    for d in (msd / "imagesTr", msd / "labelsTr", raw / "imagesTr", raw / "labelsTr"):
        d.mkdir(parents=True, exist_ok=True)

    cases, stats, seen = [], {}, np.zeros(ct.shape[0], dtype=int)
    for k, (z0, z1) in enumerate(slab_bounds(ct.shape[0], slabs)):
        seen[z0:z1] += 1
        case = f"{CASE_PREFIX}_{k:03d}"
        # origin of slab = physical position of voxel index (0, 0, z0) of the whole volume
        origin = image.TransformIndexToPhysicalPoint((0, 0, z0))
        for arr, dst in (
            (ct[z0:z1], [msd / "imagesTr" / f"{case}.nii.gz", raw / "imagesTr" / f"{case}_0000.nii.gz"]),
            (lab[z0:z1], [msd / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz"]),
        ):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(image.GetSpacing())
            img.SetDirection(image.GetDirection())
            img.SetOrigin(origin)
            for path in dst:
                sitk.WriteImage(img, str(path), useCompression=True)
        cases.append(case)
        stats[case] = {
            "z_slices": [z0, z1],
            "shape_zyx": list(ct[z0:z1].shape),
            "voxels_per_class": {MERGED_CLASSES[v][0]: int((lab[z0:z1] == v).sum()) for v in MERGED_CLASSES},
        }
    if not (seen == 1).all():
        raise SystemExit("slabs overlap or leave gaps")

    labels_msd = {"0": "background", **{str(v): n for v, (n, _) in MERGED_CLASSES.items()}}
    (msd / "dataset.json").write_text(json.dumps({
        "name": "TSCTSlabs",
        "description": "z-slabs of TotalSegmentator 2.18.0 example_ct, 4 merged classes (bench/parity)",
        "modality": {"0": "CT"},
        "labels": labels_msd,
        "numTraining": len(cases),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [],
    }, indent=2))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{n: v for v, (n, _) in MERGED_CLASSES.items()}},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }, indent=2))
    (out / "cases.json").write_text(json.dumps(stats, indent=2))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path,
                        default=Path(tempfile.gettempdir(), "ts", "totalsegmentator-2.18.0", "tests",
                                     "reference_files"))
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "parity")
    parser.add_argument("--slabs", type=int, default=6)
    parser.add_argument("--downsample", type=int, default=1,
                        help="integer factor of coarser voxels (2: 3 mm -> 6 mm; see downsample())")
    args = parser.parse_args()
    stats = build(args.source, args.out, args.slabs, args.downsample)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
