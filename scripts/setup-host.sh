#!/usr/bin/env bash
# Make this Debian 12 host ready for farmhand and its tests: install what is
# missing from Debian's packages and start dockerd when its socket does not answer.
# Idempotent: a second run installs and starts nothing.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

bash "$(dirname "$0")/apt-ensure.sh" setup-host docker.io busybox-static debootstrap docker-registry apache2-utils \
  python3-venv python3-pip make openssh-server rabbitmq-server redis-server

docker_ok() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if ! docker_ok; then
  echo "setup-host: starting dockerd"
  mkdir -p /var/log
  if have systemctl && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker || true
  fi
  if ! docker_ok; then
    setsid nohup dockerd >/var/log/farmhand-dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do
    docker_ok && break
    sleep 1
  done
  docker_ok || { echo "setup-host: dockerd did not come up; see /var/log/farmhand-dockerd.log" >&2; exit 1; }
fi
