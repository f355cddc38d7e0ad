#!/usr/bin/env bash
# Build the local images farmhand's examples and tests run in. No registry is
# reachable, so images are made from Debian packages with `docker import`,
# and each is built only when its tag is missing (delete the tag to rebuild).
set -euo pipefail

BUSYBOX_TAG=${BUSYBOX_TAG:-farmhand-test/busybox:latest}
PATH_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

if ! docker image inspect "$BUSYBOX_TAG" >/dev/null 2>&1; then
  echo "build-test-images: building $BUSYBOX_TAG from busybox-static"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/out"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  printf 'root:*:19000:0:99999:7:::\n' > "$root/etc/shadow"
  chmod 0640 "$root/etc/shadow"
  tar -C "$root" -c . | docker import -c "$PATH_ENV" -c 'CMD ["/bin/sh"]' - "$BUSYBOX_TAG" >/dev/null
fi
