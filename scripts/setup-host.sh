#!/usr/bin/env bash
# Make this Debian 12 host ready for farmhand and its tests: install what is
# missing from Debian's packages and start dockerd when its socket does not answer.
# Idempotent: a second run installs and starts nothing.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

bash "$(dirname "$0")/apt-ensure.sh" setup-host docker.io busybox-static debootstrap docker-registry apache2-utils \
  python3-venv python3-pip make openssh-server rabbitmq-server redis-server redis-sentinel openssl iptables iproute2 prometheus

# On a cgroup v1 host whose boot mounted only some controllers, containerd's
# shim cannot load a container's cgroups ("cannot find cgroup mount
# destination"), so it never watches for OOM kills and Docker reports
# OOMKilled=false for a container the kernel killed for memory. Mount every
# enabled controller that is missing, one hierarchy per line of /proc/cgroups,
# as systemd or cgroupfs-mount would on a normal host.
mount_missing_cgroups() {
  [ -r /proc/cgroups ] || return 0
  [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ] && return 0
  local hier subsystems
  for hier in $(awk '!/^#/ && $4 == 1 && $2 != 0 { print $2 }' /proc/cgroups | sort -u); do
    subsystems=$(awk -v h="$hier" '!/^#/ && $2 == h { print $1 }' /proc/cgroups | paste -sd, -)
    local mounted=1 s
    for s in ${subsystems//,/ }; do
      awk -F' - ' '{ split($2, f, " "); if (f[1] == "cgroup") print f[3] }' /proc/self/mountinfo | tr ',' '\n' | grep -qx "$s" || mounted=0
    done
    [ "$mounted" = 1 ] && continue
    mkdir -p "/sys/fs/cgroup/$subsystems"
    if mount -t cgroup -o "$subsystems" cgroup "/sys/fs/cgroup/$subsystems"; then
      echo "setup-host: mounted cgroup controllers $subsystems"
    else
      echo "setup-host: could not mount cgroup controllers $subsystems; Docker may not report OOM kills" >&2
    fi
  done
}
mount_missing_cgroups

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
