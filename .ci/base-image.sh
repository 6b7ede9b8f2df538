#!/usr/bin/env bash
# Builds the local base image selfunet-base:bookworm (Debian bookworm minbase + Python 3.11) for
# machines that cannot reach an image registry: debootstrap from the Debian mirror apt already
# uses, then `docker import`. About a minute; skipped when the image exists (pass --force to redo).
#
#   DOCKER_HOST=unix://... .ci/base-image.sh [--force] [TAG]
#
# The project image is built FROM it with `harness image build --base-image selfunet-base:bookworm`
# (its default base is a CUDA PyTorch runtime image, which needs a registry).
set -euo pipefail
FORCE=0
if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
TAG=${1:-selfunet-base:bookworm}
if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG exists"; exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
# the mirror apt is configured with (deb822 or one-line sources), else Debian's default
MIRROR=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
[ -n "$MIRROR" ] || MIRROR=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DIR=$(mktemp -d /tmp/selfunet-base.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
echo "debootstrap bookworm from $MIRROR into $DIR ..."
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$DIR" "$MIRROR" \
  >"$DIR.log" 2>&1 || { tail -30 "$DIR.log"; exit 1; }
rm -f "$DIR.log"
# smaller image: no apt lists, caches, docs or man pages
rm -rf "$DIR"/var/lib/apt/lists/* "$DIR"/var/cache/apt/*.bin "$DIR"/var/cache/apt/archives/*.deb \
  "$DIR"/usr/share/doc/* "$DIR"/usr/share/man/* "$DIR"/usr/share/locale/*
tar -C "$DIR" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase bookworm + python3 ($MIRROR)" - "$TAG"
docker image ls "$TAG"
