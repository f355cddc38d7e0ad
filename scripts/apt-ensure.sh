#!/usr/bin/env bash
# Install the Debian packages named that are not installed yet; a no-op when all are.
# The one place the set-up scripts install packages (waits for a held dpkg lock).
#   usage: scripts/apt-ensure.sh LABEL PACKAGE...
set -euo pipefail
label=$1
shift
need=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
((${#need[@]})) || exit 0
echo "$label: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
