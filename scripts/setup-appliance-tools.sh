#!/usr/bin/env bash
# Install what `make molecule` needs, kept apart from the worker's own .venv
# so that Ansible's large dependency set never leaks into farmhand's tests:
#   - a virtualenv (default .venv-appliance) with ansible (brings
#     community.general and community.docker, so Galaxy is never contacted),
#     molecule with the docker driver, pytest-testinfra and the linters;
#   - Debian packages for the container scenario (debootstrap: the systemd
#     test image is built locally, never pulled) and the VM scenarios
#     (qemu-system-x86, e2fsprogs for mkfs.ext4 -d, openssh-client).
# Idempotent: a second run installs nothing (a stamp file records the pins).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${APPLIANCE_VENV:-.venv-appliance}
PYTHON=${PYTHON:-python3}
PINS=(
  "ansible>=9,<11"
  "ansible-core>=2.16,<2.18"
  "molecule>=24.2,<26"
  "molecule-plugins[docker]>=23.5"
  "pytest-testinfra>=10.1"
  "ansible-lint>=24.2"
  "yamllint>=1.35"
  "docker>=7.1"
  "jmespath"
)

bash "$(dirname "$0")/apt-ensure.sh" setup-appliance-tools debootstrap qemu-system-x86 qemu-utils e2fsprogs openssh-client python3-venv

stamp="$VENV/.installed"
want=$(printf '%s\n' "${PINS[@]}")
if [[ -f $stamp ]] && [[ "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
printf '%s\n' "$want" >"$stamp"
