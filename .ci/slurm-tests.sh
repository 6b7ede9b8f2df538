#!/usr/bin/env bash
# The Slurm executor's tests on a real single-node Slurm cluster (docs/guide/slurm.md):
#
#   1. .ci/slurm.sh start: slurm-wlm + munge (Debian) when missing, munged, slurmctld, slurmd on
#      localhost with a generated slurm.conf
#   2. pytest -m slurm tests/slurm, required (SELFUNET_REQUIRE_SLURM=1: a missing cluster fails):
#      the demo through --executor slurm --detach and its leaderboard against the committed
#      baseline; a job over its memory and one over its time limit, each reported as such; the
#      harness killed while its job is queued, then rerun (adopted, not submitted twice); SIGTERM
#      cancelling exactly its own job (another run's and another user's survive)
#   3. the cluster stopped again (also on failure), if this script started it
#
# `.ci/run` does not call this script: it starts the cluster before the README's test command, which
# then runs tests/slurm with everything else. This script is for running just these tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$(date +%s)
stamp() { echo "[slurm-tests $(( $(date +%s) - START ))s] $*"; }

if ! .ci/slurm.sh status >/dev/null 2>&1; then
  trap '.ci/slurm.sh stop' EXIT
fi
eval "$(.ci/slurm.sh start)"
stamp "cluster up: SLURM_CONF=$SLURM_CONF"
sinfo

SELFUNET_REQUIRE_SLURM=1 "$PY" -m pytest -q -m slurm tests/slurm -p no:cacheprovider -rs
stamp "slurm tests passed"
