#!/usr/bin/env bash
# Make a cloud-init NoCloud seed: an ISO image labelled cidata holding
# user-data and meta-data, with Debian's cloud-localds (cloud-image-utils,
# installed here when missing). Attached to a VM as a drive, cloud-init reads it
# at first boot; the qemu app image is configured that way (packer/README.md,
# "First boot"; scripts/boot-vm.sh --seed).
#
#   scripts/make-nocloud-seed.sh SEED.iso USER_DATA [INSTANCE_ID]
#
# USER_DATA   a cloud-config file (first line `#cloud-config`).
# INSTANCE_ID meta-data's instance-id (default: a new one). cloud-init runs its
#             once-per-instance modules (write_files, SSH host keys) again
#             whenever the instance-id changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
out=$1 user_data=$2 instance_id=${3:-farmhand-$(date +%s)-$$}
[ -f "$user_data" ] || { echo "make-nocloud-seed: missing $user_data" >&2; exit 2; }
head -n 1 "$user_data" | grep -qx '#cloud-config' || {
  echo "make-nocloud-seed: $user_data: the first line must be #cloud-config" >&2; exit 2; }

command -v cloud-localds >/dev/null 2>&1 || bash "$here/apt-ensure.sh" make-nocloud-seed cloud-image-utils

meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
printf 'instance-id: %s\nlocal-hostname: farmhand-instance\n' "$instance_id" >"$meta"
cloud-localds "$out" "$user_data" "$meta"
