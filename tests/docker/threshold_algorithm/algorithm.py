"""A tiny grand-challenge algorithm for the tests: thresholds the demo task's two MR channels.

Reads the case the platform mounts at /input (inputs.json: the image sockets in order; one socket
holding a 4D image of both channels, or one socket per channel), labels the organ (1) where T1 is
bright and the lesion (2) where T2 is bright, and writes the label map to
/output/images/<OUTPUT_SLUG (default segmentation)>/.

THRESHOLD_MODE (a build argument, so each behaviour is its own tag) makes it fail the ways a
submission can, which the scorer must record and survive:
  ok              the label map
  crash           exit 1 with a message on stderr
  sleep           sleep far past any test's time limit
  oom             allocate (and zero) 4 GiB, past any test's memory limit
  missing         exit 0 without writing anything
  wrong-geometry  a label map with a different voxel spacing
"""

import json
import os
import sys
import time
from pathlib import Path

import SimpleITK as sitk

INPUT, OUTPUT = Path("/input"), Path("/output")
ORGAN_T1, LESION_T2 = 130.0, 150.0


def socket_images():
    listing = json.loads((INPUT / "inputs.json").read_text())
    images = []
    for item in listing:
        interface = item.get("interface") or item.get("socket") or {}
        folder = INPUT / interface.get("relative_path", f"images/{interface.get('slug')}")
        images.append(sitk.ReadImage(str(sorted(folder.glob("*.mha"))[0])))
    return images


def channels(images):
    out = []
    for image in images:
        if image.GetDimension() == 4:
            size = list(image.GetSize())
            out += [sitk.Extract(image, [*size[:3], 0], [0, 0, 0, c]) for c in range(size[3])]
        else:
            out.append(image)
    return out


def main():
    mode = os.environ.get("THRESHOLD_MODE", "ok")
    if mode == "crash":
        print("threshold: simulated crash", file=sys.stderr)
        sys.exit(1)
    if mode == "sleep":
        time.sleep(3600)
    if mode == "oom":
        hog = sitk.Image([1024, 1024, 512], sitk.sitkFloat64)  # zero-filled: every page touched
        print(hog.GetSize())
    t1, t2 = channels(socket_images())[:2]
    organ = sitk.Cast(t1, sitk.sitkFloat32) > ORGAN_T1  # UInt8 masks
    lesion = sitk.Cast(t2, sitk.sitkFloat32) > LESION_T2
    labels = sitk.Mask(organ, lesion, outsideValue=0, maskingValue=1) + lesion * 2
    labels.CopyInformation(t1)
    if mode == "wrong-geometry":
        labels.SetSpacing([s * 2 for s in labels.GetSpacing()])
    if mode == "missing":
        return
    target = OUTPUT / "images" / os.environ.get("OUTPUT_SLUG", "segmentation")
    target.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(labels, str(target / "output.mha"), True)


if __name__ == "__main__":
    main()
