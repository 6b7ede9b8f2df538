#!/usr/bin/env bash
# A private Docker Engine for CI on machines without systemd or a system daemon.
#
#   .ci/docker-engine.sh start   # prints `export DOCKER_HOST=unix://...`; idempotent
#   .ci/docker-engine.sh stop    # stops *this* engine by its pid file and unmounts what it leaves
#   .ci/docker-engine.sh status
#
# Everything lives under $SELFUNET_DOCKER_ROOT (default /var/cache/selfunet-docker): the socket,
# the data root (images and build layers: a rerun on the same machine reuses them) and the exec
# root. No iptables, no bridge: containers get network "none" (or the host's, for builds that
# need nothing from the network anyway), which is all the project's containers use.
set -euo pipefail
ROOT=${SELFUNET_DOCKER_ROOT:-/var/cache/selfunet-docker}
SOCK=$ROOT/docker.sock
PIDFILE=$ROOT/pid
LOG=$ROOT/dockerd.log
export DOCKER_HOST=unix://$SOCK

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

install_engine() {
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "installing docker.io (Debian) ..." >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
}

start() {
  if running; then echo "export DOCKER_HOST=$DOCKER_HOST"; return 0; fi
  install_engine
  mkdir -p "$ROOT/data" "$ROOT/exec"
  # a previous engine killed hard leaves its netns mount and pid file behind
  umount "$ROOT/exec/netns/default" 2>/dev/null || true
  rm -f "$SOCK" "$PIDFILE"
  nohup dockerd --iptables=false --ip6tables=false --ip-forward=false --bridge=none \
    --storage-driver=overlay2 --exec-opt native.cgroupdriver=cgroupfs \
    -H "unix://$SOCK" --data-root "$ROOT/data" --exec-root "$ROOT/exec" --pidfile "$PIDFILE" \
    >"$LOG" 2>&1 &
  for _ in $(seq 1 60); do
    if docker version >/dev/null 2>&1; then echo "export DOCKER_HOST=$DOCKER_HOST"; return 0; fi
    sleep 0.5
  done
  echo "dockerd did not come up; last lines of $LOG:" >&2
  tail -20 "$LOG" >&2
  return 1
}

stop() {
  if running; then
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  umount "$ROOT/exec/netns/default" 2>/dev/null || true
  rm -f "$SOCK" "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE")), DOCKER_HOST=$DOCKER_HOST"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
