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

bash "$(dirname "$0")/apt-ensure.sh" setup-packer-tools "${pkgs[@]}"
