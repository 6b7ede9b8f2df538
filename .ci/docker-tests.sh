#!/usr/bin/env bash
# CI step: the container features on a real Docker Engine (docs/guide/containers.md).
#
#   1. docker.io + debootstrap (Debian) when missing; a private engine under $SELFUNET_DOCKER_ROOT
#      (default /var/cache/selfunet-docker: images and build layers survive for the next run)
#   2. the local base image selfunet-base:bookworm (skipped when present)
#   3. the project image (`harness image build`; cached layers make a rebuild after a source
#      change take seconds)
#   4. pytest -m docker tests/docker: sandbox failures, OOM, timeout, read-only data, no network,
#      file ownership, the GPU device request; the demo task end to end with --sandbox docker
#      (leaderboard equal to the process sandbox's), then a second training seed in containers
#      (--seeds 0,1 on the same work root: seed 0 reused); the grand-challenge container built, run with
#      no network and a read-only /input, and compared with `selfunet predict --selection`;
#      `harness score` of that export (one 4D socket; a socket per channel with a model tarball,
#      also scored with `--model NAME=model.tar.gz` mounted at /opt/ml/model)
#      beside an independent threshold container (tests/docker/threshold_algorithm, built from the
#      base image and the wheelhouse's SimpleITK) and its crash/timeout/oom/missing/wrong-geometry tags;
#      hostile containers (tests/docker/hostile_algorithm: an output linked to the host reference
#      label, an .mha naming a host data file, a climbing socket slug) scored as `refused` (~20 s);
#      an nnU-Net v2 model the reference trains (needs SELFUNET_REFERENCE_PYTHON, as .ci/run exports),
#      imported and scored as a container, a model.zip and the nnU-Net folder (~1.5 min)
#   5. the engine stopped (also on failure)
#
# Needs root (dockerd). Times and image sizes are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$(date +%s)
stamp() { echo "[docker-tests $(( $(date +%s) - START ))s] $*"; }

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  stamp "installing docker.io debootstrap"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
eval "$(.ci/docker-engine.sh start)"
trap '.ci/docker-engine.sh stop' EXIT
stamp "engine up: $DOCKER_HOST"

.ci/base-image.sh selfunet-base:bookworm
stamp "base image ready"

"$PY" -m harness.cli image build --base-image selfunet-base:bookworm --quiet
stamp "project image built"

"$PY" -m pytest -q -m docker tests/docker -p no:cacheprovider -rs
stamp "docker tests passed"

docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^selfunet' || true
stamp "done"
