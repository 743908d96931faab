#!/usr/bin/env bash
# A local Docker engine for the images and the container tests, on machines
# where no registry can be reached and only the loopback may carry traffic.
#
# Usage: scripts/docker-engine.sh COMMAND
#   up      use the engine that already answers (a developer's Docker), else
#           start our own dockerd and wait until it answers. Installs Debian's
#           docker.io (and debootstrap, for scripts/images.sh) with apt-get when
#           missing and running as root. Idempotent.
#   down    stop our own dockerd (never an engine this script did not start).
#   env     print `export DOCKER_HOST=...` for `eval "$(scripts/docker-engine.sh env)"`.
#   status  exit 0 when an engine answers; says whose.
#
# Our own dockerd runs with no bridge and no iptables rules, so containers can
# only use host networking (`docker run --network host`, testcontainers
# `network_mode="host"`): no 172.x addresses, no published ports. Storage is
# vfs (works on any file system, inside containers too); its files live under
#   ${PREDICTFLOW_DOCKER_DIR:-<repo>/var/docker}   data/, exec/, docker.sock, dockerd.log
#
# Environment (all optional):
#   PREDICTFLOW_DOCKER_DIR     where our engine keeps everything (see above)
#   DOCKER_HOST                an engine to use instead of ours when it answers
#   DOCKER_ENGINE_TIMEOUT      seconds `up` waits for dockerd (default 60)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${PREDICTFLOW_DOCKER_DIR:-$REPO_ROOT/var/docker}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
SOCK="$DIR/docker.sock"
OWN_HOST="unix://$SOCK"
PID_FILE="$DIR/dockerd.pid"
LOG="$DIR/dockerd.log"
TIMEOUT="${DOCKER_ENGINE_TIMEOUT:-60}"

log() { echo "docker-engine.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# answers HOST: exit 0 when the engine at HOST ("" = the client's default) answers.
answers() {
  command -v docker >/dev/null 2>&1 || return 1
  if [ -n "$1" ]; then
    DOCKER_HOST="$1" timeout 15 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
  else
    (unset DOCKER_HOST; timeout 15 docker version --format '{{.Server.Version}}' >/dev/null 2>&1)
  fi
}

own_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--exec-root=$DIR/exec" || return 1
  echo "$pid"
}

# An engine that is not ours and answers: $DOCKER_HOST when set, else the
# client's default socket. Prints its address ("default" for the latter).
foreign_engine() {
  if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "$OWN_HOST" ]; then
    answers "$DOCKER_HOST" && { echo "$DOCKER_HOST"; return 0; }
    return 1
  fi
  answers "" && { echo "default"; return 0; }
  return 1
}

apt_install() {
  [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 \
    || die "needs $* (install them: apt-get install $*)"
  log "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # docker.io's maintainer scripts would start a default dockerd (bridge,
  # iptables) where an init system runs: forbid service starts while installing.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created=1
  fi
  apt-get update -qq
  local rc=0
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  [ "$created" = 1 ] && rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install $* failed"
}

ensure_installed() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    # shellcheck disable=SC2207
    missing=($(printf '%s\n' "${missing[@]}" | sort -u))
    apt_install "${missing[@]}"
  fi
}

cmd_up() {
  local pid found
  if pid="$(own_pid)" && answers "$OWN_HOST"; then
    echo "our dockerd is running (pid $pid, $OWN_HOST)"
    return 0
  fi
  if [ -z "${pid:-}" ] && found="$(foreign_engine)"; then
    echo "using the Docker engine that already answers ($found); starting none"
    return 0
  fi
  ensure_installed
  [ "$(id -u)" -eq 0 ] || die "starting dockerd needs root (or run a Docker engine yourself)"
  mkdir -p "$DIR/data" "$DIR/exec"
  local t0 now
  t0=$(date +%s)
  if [ -z "${pid:-}" ]; then
    rm -f "$SOCK" "$PID_FILE"
    log "starting dockerd (data $DIR/data, log $LOG)"
    # setsid: the engine outlives this shell and its process group.
    setsid dockerd \
      --host="$OWN_HOST" \
      --data-root="$DIR/data" \
      --exec-root="$DIR/exec" \
      --pidfile="$PID_FILE" \
      --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
      --storage-driver=vfs \
      </dev/null >>"$LOG" 2>&1 &
  fi
  until answers "$OWN_HOST"; do
    now=$(date +%s)
    if [ $(( now - t0 )) -ge "$TIMEOUT" ]; then
      tail -n 30 "$LOG" >&2 || true
      die "dockerd did not answer on $OWN_HOST within ${TIMEOUT}s (log $LOG)"
    fi
    sleep 0.5
  done
  echo "dockerd up on $OWN_HOST in $(( $(date +%s) - t0 ))s (pid $(cat "$PID_FILE"))"
}

cmd_down() {
  local pid
  if ! pid="$(own_pid)"; then
    rm -f "$PID_FILE"
    echo "our dockerd is not running"
    return 0
  fi
  kill -TERM "$pid"
  local deadline=$(( $(date +%s) + 60 ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "dockerd (pid $pid) did not stop within 60s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.3
  done
  rm -f "$PID_FILE"
  echo "dockerd stopped (pid $pid)"
}

cmd_env() {
  local found
  if own_pid >/dev/null; then
    echo "export DOCKER_HOST=$OWN_HOST"
  elif found="$(foreign_engine)"; then
    if [ "$found" = default ]; then
      echo "# the Docker engine at the client's default address answers; nothing to set"
    else
      echo "export DOCKER_HOST=$found"
    fi
  else
    die "no Docker engine answers: run scripts/docker-engine.sh up"
  fi
}

cmd_status() {
  local pid found
  if pid="$(own_pid)"; then
    if answers "$OWN_HOST"; then
      echo "our dockerd is running and answering (pid $pid, $OWN_HOST)"
      return 0
    fi
    echo "our dockerd (pid $pid) is not answering on $OWN_HOST"
    return 1
  fi
  if found="$(foreign_engine)"; then
    echo "a Docker engine that is not ours answers ($found)"
    return 0
  fi
  echo "no Docker engine answers"
  return 1
}

case "${1:-}" in
  up) cmd_up ;;
  down|stop) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
