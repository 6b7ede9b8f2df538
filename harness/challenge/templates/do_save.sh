#!/usr/bin/env bash
# The files to upload to grand-challenge: the image (docker save | gzip) and, when the export
# ships the model apart from the image, the model tarball (model.tar.gz).
# Written by `harness export gc`: the values below were checked and shell-quoted on export.
set -euo pipefail
cd "$(dirname "$0")"
DEFAULT_TAG=@TAG@
ARCHIVE=@ARCHIVE@
MODEL_TARBALL=@MODEL_TARBALL@
TAG="${1:-$DEFAULT_TAG}"
docker save "$TAG" | gzip -c > "$ARCHIVE"
if [ "$MODEL_TARBALL" = 1 ]; then
  tar -C model -czf model.tar.gz .
  ls -l "$ARCHIVE" model.tar.gz
else
  ls -l "$ARCHIVE"
fi
