#!/usr/bin/env bash
# Install what the Packer images, the Vagrant environment and their tests need,
# from Debian's packages: packer (1.6.6, builders and provisioners built in),
# vagrant (for `vagrant validate`), qemu and debootstrap (the qemu source boots
# the VM image of scripts/build-vm-image.sh), openssh-client.
# Idempotent: a second run installs nothing.
#   usage: scripts/setup-packer-tools.sh [--no-vagrant]
set -euo pipefail

pkgs=(packer qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client)
[ "${1:-}" = --no-vagrant ] || pkgs+=(vagrant)

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need=()
for pkg in "${pkgs[@]}"; do
  pkg_installed "$pkg" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "setup-packer-tools: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
