#!/usr/bin/env bash
# Run the algorithm on a case the way grand-challenge does (no network, read-only /input, the
# GPUs when the host has one; the model tarball mounted at /opt/ml/model when the export ships
# one) and, when test/expected/ exists, compare its label map with it voxel for voxel.
#   Usage: ./do_test_run.sh [TAG] [INPUT_FOLDER (default test/input: inputs.json + images)]
# Written by `harness export gc`: the values below were checked and shell-quoted on export.
set -euo pipefail
cd "$(dirname "$0")"
DEFAULT_TAG=@TAG@
PLATFORM=@PLATFORM@
OUTPUT_SLUG=@OUTPUT_SLUG@
MODEL_TARBALL=@MODEL_TARBALL@
MODEL_MOUNT=@MODEL_MOUNT@
TAG="${1:-$DEFAULT_TAG}"
INPUT=$(cd "${2:-test/input}" && pwd)
OUT=$(mktemp -d)
chmod 777 "$OUT"
EXTRA=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA+=(--gpus all); fi
if [ "$MODEL_TARBALL" = 1 ]; then EXTRA+=(-v "$PWD/model:$MODEL_MOUNT:ro"); fi
docker run --rm --platform "$PLATFORM" --network none --shm-size 2g "${EXTRA[@]}" \
  -v "$INPUT:/input:ro" -v "$OUT:/output" "$TAG"
ls -R "$OUT"
if [ -d test/expected ] && [ -z "${2:-}" ]; then
  # shellcheck disable=SC2016  # the Python program is passed literally
  docker run --rm --network none --entrypoint python -v "$PWD/test/expected:/expected:ro" \
    -v "$OUT:/output:ro" "$TAG" -c '
import sys, glob, SimpleITK as sitk
got = sorted(glob.glob("/output/images/" + sys.argv[1] + "/*.mha")); want = sorted(glob.glob("/expected/*"))
assert len(got) == 1 and len(want) == 1, (got, want)
a, b = sitk.GetArrayFromImage(sitk.ReadImage(got[0])), sitk.GetArrayFromImage(sitk.ReadImage(want[0]))
differ = int((a != b).sum()) if a.shape == b.shape else -1
same = 0 <= differ <= 1e-4 * b.size  # float ties may flip a voxel between environments
print("output agrees with selfunet predict:", same, f"({differ} of {b.size} voxels differ)"); sys.exit(0 if same else 1)' "$OUTPUT_SLUG"
fi
