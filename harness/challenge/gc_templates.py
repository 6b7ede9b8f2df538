"""The files ``harness export gc`` writes into an algorithm's build context, as text templates.

``inference.py`` (the container's entry point, standard library + selfunet only), the
``Dockerfile`` and the platform template's ``do_build.sh`` / ``do_test_run.sh`` / ``do_save.sh``.
Kept apart from :mod:`harness.challenge.gc_export`, which fills them in: every value pasted into them is
checked by :mod:`harness.tasks.names` and quoted there first.
"""

from __future__ import annotations

INFERENCE_PY = '''"""grand-challenge algorithm entry point, written by `harness export gc` (selfunet).

Reads the case grand-challenge mounts at /input (inputs.json names each socket's relative path;
without it, images/<slug>/), predicts it with the selected model (members' folds averaged,
postprocessing applied) and writes the label map as .mha to /output/images/<output slug>/.
The model: /opt/ml/model when the platform mounted a model tarball there, else the copy in the
image (/opt/algorithm/model). GC_INPUT, GC_OUTPUT and GC_MODEL override the three folders.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "gc.json").read_text())
INPUT = Path(os.environ.get("GC_INPUT", "/input"))
OUTPUT = Path(os.environ.get("GC_OUTPUT", "/output"))
MOUNTED = Path("/opt/ml/model")
MODEL = Path(os.environ.get("GC_MODEL") or (MOUNTED if (MOUNTED / "selection.json").is_file() else HERE / "model"))
ENDINGS = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd", ".tif", ".tiff")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def socket_folders():
    """slug -> folder; inputs.json (a list of socket values) may move a slug elsewhere."""
    folders = {slug: INPUT / "images" / slug for slug in CONFIG["input_slugs"]}
    listing = INPUT / "inputs.json"
    if listing.is_file():
        for item in json.loads(listing.read_text()):
            interface = item.get("interface") or item.get("socket") or {}
            slug, relative = interface.get("slug"), interface.get("relative_path")
            if slug in folders and relative:
                folder = (INPUT / relative).resolve()
                if folder != INPUT.resolve() and INPUT.resolve() not in folder.parents:
                    fail(f"inputs.json: socket '{slug}' names {relative!r}, outside {INPUT}.")
                folders[slug] = folder
    return folders


def input_files():
    files = []
    for slug, folder in socket_folders().items():
        images = sorted(p for p in folder.glob("*") if p.name.lower().endswith(ENDINGS)) if folder.is_dir() else []
        if len(images) != 1:
            fail(f"input socket '{slug}': expected exactly one image in {folder}, found {len(images)}.")
        files.append(images[0])
    return files


def main():
    from selfunet.evaluation.ensemble import Selection
    from selfunet.inference.predict import predict_cases

    if not (MODEL / "selection.json").is_file():
        fail(f"no model: {MODEL}/selection.json missing (upload the model tarball, or set GC_MODEL).")
    selection = Selection.load(MODEL / "selection.json")
    files = input_files()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if len(files) == 1:
            inputs = [files[0]]
        else:  # one socket per channel: present them as case_0000, case_0001, ... (nnU-Net v2 naming)
            (tmp / "in").mkdir()
            inputs = []
            for channel, f in enumerate(files):
                linked = tmp / "in" / f"case_{channel:04d}.mha"
                sitk.WriteImage(sitk.ReadImage(str(f)), str(linked))
                inputs.append(linked)
        written = predict_cases(inputs, tmp / "out", MODEL, list(selection.members),
                                postprocessing=selection.postprocessing, device=os.environ.get("GC_DEVICE", "auto"),
                                mirroring=CONFIG.get("mirroring", True))
        if len(written) != 1:
            fail(f"expected one prediction, got {len(written)}.")
        target = OUTPUT / "images" / CONFIG["output_slug"]
        target.mkdir(parents=True, exist_ok=True)
        name = files[0].name
        for ending in ENDINGS:
            if name.lower().endswith(ending):
                name = name[: -len(ending)]
        out = target / f"{name}.mha"
        labels = sitk.ReadImage(str(written[0]))
        for key in labels.GetMetaDataKeys():  # NIfTI header fields .mha cannot hold
            labels.EraseMetaData(key)
        sitk.WriteImage(labels, str(out), True)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
'''

DOCKERFILE = """# grand-challenge algorithm: selfunet model {selected} ({members}), exported {date}.
# Build: ./do_build.sh   Test: ./do_test_run.sh   Save for upload: ./do_save.sh
FROM --platform={platform} {base}
LABEL org.selfunet.gc.inputs={inputs} org.selfunet.gc.output={output}
{copy_model}COPY inference.py gc.json {algorithm}/
ENV GC_DEVICE=auto
ENTRYPOINT ["python", "{algorithm}/inference.py"]
CMD []
"""

BUILD_SH = """#!/usr/bin/env bash
# Build the algorithm image for {platform} (the platform runs no other architecture; no network
# needed: everything is in this folder and the base image).
set -euo pipefail
cd "$(dirname "$0")"
DEFAULT_TAG={tag}
TAG="${{1:-$DEFAULT_TAG}}"
BASE={base}
# the platform runs an algorithm as its image's user: refuse a base image that runs as root
BASE_USER=$(docker image inspect --format '{{{{.Config.User}}}}' "$BASE")
case "$BASE_USER" in
  ""|root|0|root:*|0:*)
    echo "error: $BASE runs as root (User='$BASE_USER'); build FROM an image with a non-root USER" >&2
    exit 1 ;;
esac
docker build --platform {platform} --network none -t "$TAG" .
"""

TEST_SH = """#!/usr/bin/env bash
# Run the algorithm on a case the way grand-challenge does (no network, read-only /input, the
# GPUs when the host has one) and, when test/expected/ exists, compare its label map with it voxel
# for voxel.  Usage: ./do_test_run.sh [TAG] [INPUT_FOLDER (default test/input: inputs.json + images)]
set -euo pipefail
cd "$(dirname "$0")"
DEFAULT_TAG={tag}
TAG="${{1:-$DEFAULT_TAG}}"
OUTPUT_SLUG={output_slug}
INPUT=$(cd "${{2:-test/input}}" && pwd)
OUT=$(mktemp -d)
chmod 777 "$OUT"
EXTRA=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA+=(--gpus all); fi
{model_mount}docker run --rm --platform {platform} --network none --shm-size 2g "${{EXTRA[@]}}" \\
  -v "$INPUT:/input:ro" -v "$OUT:/output" "$TAG"
ls -R "$OUT"
if [ -d test/expected ] && [ -z "${{2:-}}" ]; then
  docker run --rm --network none --entrypoint python -v "$PWD/test/expected:/expected:ro" \\
    -v "$OUT:/output:ro" "$TAG" -c '
import sys, glob, SimpleITK as sitk
got = sorted(glob.glob("/output/images/" + sys.argv[1] + "/*.mha")); want = sorted(glob.glob("/expected/*"))
assert len(got) == 1 and len(want) == 1, (got, want)
a, b = sitk.GetArrayFromImage(sitk.ReadImage(got[0])), sitk.GetArrayFromImage(sitk.ReadImage(want[0]))
same = a.shape == b.shape and (a == b).all()
print("output equals selfunet predict:", same); sys.exit(0 if same else 1)' "$OUTPUT_SLUG"
fi
"""

SAVE_SH = """#!/usr/bin/env bash
# The files to upload to grand-challenge: the image (docker save | gzip){model_note}.
set -euo pipefail
cd "$(dirname "$0")"
DEFAULT_TAG={tag}
TAG="${{1:-$DEFAULT_TAG}}"
ARCHIVE={archive}
docker save "$TAG" | gzip -c > "$ARCHIVE"
{save_model}ls -l "$ARCHIVE"{model_listing}
"""
