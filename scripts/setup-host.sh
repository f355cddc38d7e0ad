#!/usr/bin/env bash
# Make this Debian 12 host ready for farmhand and its tests: install what is
# missing from Debian's packages and start dockerd when its socket does not answer.
# Idempotent: a second run installs and starts nothing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

for pkg in docker.io busybox-static debootstrap docker-registry apache2-utils python3-venv python3-pip make openssh-server rabbitmq-server redis-server; do
  pkg_installed "$pkg" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "setup-host: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

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
