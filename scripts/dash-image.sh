#!/bin/sh
# dash-image.sh IMAGE: a tiny image holding dash and the libraries it links, imported
# from this machine's own files with `docker import`, so no registry is needed. Kept
# if IMAGE exists already. The VM tests build their task image with it inside the VM.
set -e
image=${1:?usage: dash-image.sh IMAGE}
docker image inspect "$image" >/dev/null 2>&1 && exit 0
d=$(mktemp -d); cd "$d"; mkdir -m 1777 tmp
for f in /usr/bin/dash $(ldd /usr/bin/dash | grep -o '/[^ ]*'); do cp --parents -L "$f" .; done
tar -c . | docker import - "$image" >/dev/null; cd /; rm -rf "$d"
