#!/usr/bin/env bash
# Build farmhand-test/debian12-systemd:latest, the Debian 12 host that
# molecule's default scenario converges site.yml on. No registry is reachable
# from CI, so the image comes from Debian's packages (debootstrap) and
# `docker import`, never from a pull. Cached by tag: a second run does nothing
# (FORCE=1 rebuilds).
#   usage: scripts/build-systemd-image.sh [TAG]
set -euo pipefail

TAG=${1:-farmhand-test/debian12-systemd:latest}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ ${FORCE:-0} != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build-systemd-image: debootstrap missing (scripts/setup-appliance-tools.sh)" >&2; exit 1; }

dir=$(mktemp -d /tmp/farmhand-systemd-rootfs.XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo "build-systemd-image: debootstrap bookworm into $dir"
# What a bare cloud host has and Ansible needs (python3, sudo, ca-certificates
# for apt over https); everything else is the roles' job to install.
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,ca-certificates,iproute2,procps,kmod,udev \
  bookworm "$dir" "$MIRROR" >/dev/null
# Services that make no sense in a container and only slow down boot.
for unit in getty.target console-getty.service systemd-remount-fs.service systemd-firstboot.service; do
  ln -sf /dev/null "$dir/etc/systemd/system/$unit"
done
rm -f "$dir"/etc/machine-id "$dir"/var/lib/dbus/machine-id
touch "$dir"/etc/machine-id
# Keep the apt lists: a real host has them (and apt cache_valid_time trusts them).
rm -rf "$dir"/var/cache/apt/archives/*.deb
echo "build-systemd-image: importing $TAG"
tar -C "$dir" -c . | docker import \
  -c 'CMD ["/lib/systemd/systemd"]' -c 'ENV container=docker' - "$TAG" >/dev/null
echo "build-systemd-image: built $TAG"
