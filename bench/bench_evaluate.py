"""Seconds per case of `selfunet evaluate` on a CT-sized synthetic case (not run by the tests).

A 500 x 512 x 512 label map (z, y, x) at 1.0 x 0.78 x 0.78 mm with a large organ (an ellipsoid of
about 2 litres, ~300 x 380 x 380 voxel bounding box) and a lesion inside it; the prediction is the
same shapes shifted and resized, so neither Dice nor the surface distances are trivial.

    python bench/bench_evaluate.py                 # in-memory metrics + NIfTI round trip
    python bench/bench_evaluate.py --compare-edt   # also time the EDT method on the organ (slow)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from selfunet.data.io import ImageGeometry, write_label
from selfunet.evaluation.evaluate import evaluate_folders
from selfunet.evaluation.metrics import evaluate_arrays
from selfunet.evaluation.surface import surface_distances

SHAPE = (500, 512, 512)
SPACING = (1.0, 0.78, 0.78)


def ellipsoid(centre_mm: tuple[float, float, float], radii_mm: tuple[float, float, float]) -> np.ndarray:
    axes = [((np.arange(n, dtype=np.float32) * s - c) / r) ** 2
            for n, s, c, r in zip(SHAPE, SPACING, centre_mm, radii_mm)]
    z, y, x = np.ix_(*axes)
    return (z + y) + x <= 1.0


def make_case() -> tuple[np.ndarray, np.ndarray]:
    reference = np.zeros(SHAPE, dtype=np.uint8)
    reference[ellipsoid((250.0, 200.0, 200.0), (150.0, 145.0, 140.0))] = 1
    reference[ellipsoid((230.0, 210.0, 180.0), (20.0, 18.0, 22.0))] = 2
    prediction = np.zeros(SHAPE, dtype=np.uint8)
    prediction[ellipsoid((253.0, 201.0, 198.0), (147.0, 146.0, 143.0))] = 1
    prediction[ellipsoid((226.0, 212.0, 183.0), (18.0, 20.0, 20.0))] = 2
    return prediction, reference


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-edt", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    prediction, reference = make_case()
    print(f"case {SHAPE} at {SPACING} mm made in {time.perf_counter() - start:.1f} s; "
          f"organ {np.count_nonzero(reference == 1) / 1e6:.1f} M voxels")

    t_dice, m = timed(lambda: evaluate_arrays(prediction, reference, [1, 2], SPACING), args.repeats)
    print(f"Dice/IoU/TP/FP/FN, 2 classes:           {t_dice:6.2f} s/case  (Dice {m[1].dice:.4f}, {m[2].dice:.4f})")
    t_all, m = timed(lambda: evaluate_arrays(prediction, reference, [1, 2], SPACING, nsd_tolerance_mm=2.0, hd95=True),
                     args.repeats)
    print(f"+ NSD@2mm + HD95, 2 classes:             {t_all:6.2f} s/case  "
          f"(HD95 {m[1].hd95:.2f}, {m[2].hd95:.2f} mm; NSD {m[1].nsd:.4f}, {m[2].nsd:.4f})")
    organ_pred, organ_ref = prediction == 1, reference == 1
    t_kd, d = timed(lambda: surface_distances(organ_pred, organ_ref, SPACING), args.repeats)
    print(f"surface distances, organ only (k-d tree): {t_kd:6.2f} s  ({d.a_to_b.size + d.b_to_a.size} surface voxels)")
    if args.compare_edt:
        t_edt, e = timed(lambda: surface_distances(organ_pred, organ_ref, SPACING, method="edt"), 1)
        print(f"surface distances, organ only (EDT):      {t_edt:6.2f} s  "
              f"(HD95 {e.hd95():.4f} vs {d.hd95():.4f} mm)")

    with tempfile.TemporaryDirectory() as tmp:
        geometry = ImageGeometry(shape=SHAPE, spacing=SPACING, origin=(0.0, 0.0, 0.0),
                                 direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        write_label(Path(tmp) / "pred" / "case.nii.gz", prediction, geometry)
        write_label(Path(tmp) / "ref" / "case.nii.gz", reference, geometry)
        t_files, _ = timed(lambda: evaluate_folders(Path(tmp) / "pred", Path(tmp) / "ref", {1: "organ", 2: "lesion"},
                                                    nsd_tolerance_mm=2.0, hd95=True), 1)
        print(f"evaluate_folders (read 2 .nii.gz + all metrics): {t_files:6.2f} s/case")


if __name__ == "__main__":
    main()
