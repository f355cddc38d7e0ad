#!/usr/bin/env bash
# Build the worker as a container image, farmhand-worker:latest (README.md,
# "The worker as a container"). No registry is reachable, so:
#   1. the base, Debian 12 from debootstrap (minbase, plus what the worker runs:
#      python3 and venv, OpenSSH's client for SFTP channels, iptables for
#      `farmhand firewall`, tini as PID 1), `docker import`ed once and cached
#      by its tag (FORCE_BASE=1 makes it again);
#   2. the wheelhouse, fetched on this host from PyPI: exactly the files
#      worker/requirements.lock pins, hash-checked, for the base's Python
#      (the farmhand role's build_wheelhouse.py, as for the role and Packer),
#      and farmhand's own wheel (byte-reproducible);
#   3. worker/container/Containerfile on top of the base, the wheelhouse as
#      its context: pip install --require-hashes, then farmhand --no-deps.
# Docker's layer cache keeps step 3 quick while neither lock nor code changed.
#   usage: scripts/build-worker-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-${FARMHAND_WORKER_IMAGE:-farmhand-worker:latest}}
BASE_TAG=${FARMHAND_WORKER_BASE:-farmhand-build/debian12-worker-base:latest}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-.venv/bin/python}
CONTEXT=${FARMHAND_WORKER_CONTEXT:-build/worker-image}
PACKAGES=python3,python3-venv,ca-certificates,openssh-client,iptables,tini,passwd

say() { echo "build-worker-image: $*"; }

if [[ ${FORCE_BASE:-0} == 1 ]] || ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "build-worker-image: debootstrap missing (scripts/setup-host.sh installs it)" >&2; exit 1; }
  root=$(mktemp -d /tmp/farmhand-worker-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  say "debootstrap --variant=minbase bookworm into $root"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >/dev/null
  # A container needs no package lists, caches or machine identity of the build host.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
  : > "$root"/etc/machine-id
  say "importing $BASE_TAG"
  tar -C "$root" --numeric-owner -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["/bin/bash"]' \
    -m "debootstrap --variant=minbase --include=$PACKAGES bookworm $MIRROR" - "$BASE_TAG" >/dev/null
  rm -rf "$root"
  trap - EXIT
fi

# The wheelhouse for the base's own Python: markers such as
# python_full_version < "3.11.3" depend on its full version.
read -r pyver arch < <(docker run --rm --network none "$BASE_TAG" \
  python3 -c 'import platform; print(platform.python_version(), platform.machine())')
say "wheelhouse for Python $pyver on $arch from worker/requirements.lock"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/app"
# pip's and setuptools' chatter goes to a log, shown when the fetch fails.
if ! SOURCE_DATE_EPOCH=315532800 PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" ansible/roles/farmhand/files/build_wheelhouse.py \
  "$CONTEXT/wheels" --source . --lock worker/requirements.lock --python-version "$pyver" --arch "$arch" >"$CONTEXT.log" 2>&1; then
  cat "$CONTEXT.log" >&2
  echo "build-worker-image: the wheelhouse could not be made (above)" >&2
  exit 1
fi
mv "$CONTEXT"/wheels/farmhand-*.whl "$CONTEXT/app/"
cp worker/container/Containerfile "$CONTEXT/Containerfile"

# The classic builder: it takes FROM from the local image store and never
# asks a registry (Debian 12's docker.io ships no buildx either).
say "building $TAG"
if ! DOCKER_BUILDKIT=0 docker build --build-arg "BASE=$BASE_TAG" \
  --label "org.opencontainers.image.version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' worker/farmhand/__init__.py)" \
  -f "$CONTEXT/Containerfile" -t "$TAG" "$CONTEXT" >"$CONTEXT.build.log" 2>&1; then
  cat "$CONTEXT.build.log" >&2
  echo "build-worker-image: docker build failed (above)" >&2
  exit 1
fi
say "built $TAG"
