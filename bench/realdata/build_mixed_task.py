"""Build a small real-data task of mixed CT/MR cases of very different sizes (for budget checks).

Why: the ci budget must stay small on real data, and synthetic demo volumes hide what large
real slices cost (a 512x512 CT slice makes a 2D plan with a big patch and batch). The source is
the reference files that TotalSegmentator 2.18.0 ships in its source distribution
(``pip download totalsegmentator==2.18.0 --no-deps --no-binary :all:``, then unpack; the files
are under ``tests/reference_files``): one 512x512x20 CT at 0.98x0.98x2 mm (DICOM), one
abdominal CT at 3 mm (whole and reduced field of view) and one MR at 3 mm, each with its
TotalSegmentator labels. We keep two structures, liver (1) and the kidneys (2); the fifth case is
the MR mirrored left-right (a speed benchmark only needs a realistic size mix, not five
patients). Labels are TotalSegmentator's own predictions, not manual annotations.

``--variant fine`` swaps the two 3 mm CT cases for mirrored copies of the 0.98 mm CT, so the
median spacing is the fine one and the 3 mm cases are upsampled to large slices: the shape of
dataset that made a ci-budget 2d training run for 47 minutes.

Usage::

    python bench/realdata/build_mixed_task.py --source REFERENCE_FILES --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: TotalSegmentator class values (task "total" for CT, "total_mr" for MR) kept per structure.
CT_CLASSES = {1: [5], 2: [2, 3]}  # liver; kidney right + left
MR_CLASSES = {1: [5], 2: [2, 3]}


def _remap(labels: sitk.Image, classes: dict[int, list[int]]) -> sitk.Image:
    source = sitk.GetArrayFromImage(labels)
    out = np.zeros(source.shape, dtype=np.uint8)
    for target, values in classes.items():
        out[np.isin(source, values)] = target
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(labels)
    return image


def _read_dicom(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def build(source: Path, out: Path, variant: str = "coarse") -> Path:
    task = out / ("Task90_MixedRealSizes" if variant == "coarse" else "Task91_MixedRealSizesFine")
    (task / "imagesTr").mkdir(parents=True, exist_ok=True)
    (task / "labelsTr").mkdir(parents=True, exist_ok=True)
    mr = sitk.ReadImage(str(source / "example_mr_sm.nii.gz"))
    mr_labels = sitk.ReadImage(str(source / "example_seg_mr.nii.gz"))
    cases = {
        "mixed_000": (_read_dicom(source / "example_ct_dicom"),
                      sitk.ReadImage(str(source / "example_seg_dicom.nii.gz")), CT_CLASSES),
        "mixed_001": (sitk.ReadImage(str(source / "example_ct.nii.gz")),
                      sitk.ReadImage(str(source / "example_seg_fast_force_split.nii.gz")), CT_CLASSES),
        "mixed_002": (sitk.ReadImage(str(source / "example_ct_sm.nii.gz")),
                      sitk.ReadImage(str(source / "example_seg.nii.gz")), CT_CLASSES),
        "mixed_003": (mr, mr_labels, MR_CLASSES),
        "mixed_004": (sitk.Flip(mr, [True, False, False]), sitk.Flip(mr_labels, [True, False, False]), MR_CLASSES),
    }
    if variant == "fine":
        big_image, big_labels, _ = cases["mixed_000"]
        cases["mixed_001"] = (sitk.Flip(big_image, [True, False, False]), sitk.Flip(big_labels, [True, False, False]),
                              CT_CLASSES)
        cases["mixed_002"] = (sitk.Flip(big_image, [False, True, False]), sitk.Flip(big_labels, [False, True, False]),
                              CT_CLASSES)
    training = []
    for case_id, (image, labels, classes) in cases.items():
        image = sitk.Cast(image, sitk.sitkFloat32)
        labels = _remap(labels, classes)
        labels.CopyInformation(image)  # same grid; DICOM and NIfTI headers differ in the last digits
        sitk.WriteImage(image, str(task / "imagesTr" / f"{case_id}.nii.gz"))
        sitk.WriteImage(labels, str(task / "labelsTr" / f"{case_id}.nii.gz"))
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
        print(case_id, image.GetSize(), [round(s, 2) for s in image.GetSpacing()])
    dataset = {
        "name": "MixedRealSizes", "description": "CT and MR of very different sizes (TotalSegmentator examples)",
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "liver", "2": "kidney"},
        "numTraining": len(training), "numTest": 0, "training": training, "test": [],
    }
    (task / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="TotalSegmentator's tests/reference_files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", choices=("coarse", "fine"), default="coarse",
                        help="fine: three 0.98 mm CTs make the median spacing fine (large 2D slices)")
    args = parser.parse_args()
    print(build(args.source, args.out, args.variant))


if __name__ == "__main__":
    main()
