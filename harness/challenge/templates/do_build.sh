#!/usr/bin/env bash
# Build the algorithm image for the platform grand-challenge runs (no other architecture; no
# network needed: everything is in this folder and the base image).
# Written by `harness export gc`: the values below were checked and shell-quoted on export.
set -euo pipefail
cd "$(dirname "$0")"
DEFAULT_TAG=@TAG@
PLATFORM=@PLATFORM@
BASE=@BASE@
TAG="${1:-$DEFAULT_TAG}"
# the platform runs an algorithm as its image's user: refuse a base image that runs as root
BASE_USER=$(docker image inspect --format '{{.Config.User}}' "$BASE")
case "$BASE_USER" in
  ""|root|0|root:*|0:*)
    echo "error: $BASE runs as root (User='$BASE_USER'); build FROM an image with a non-root USER" >&2
    exit 1 ;;
esac
docker build --platform "$PLATFORM" --network none -t "$TAG" .
