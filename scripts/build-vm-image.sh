#!/usr/bin/env bash
# Build (once) the Debian 12 VM disk image that the molecule `vm` scenario and
# the Packer qemu source boot. Built from Debian's packages with debootstrap,
# no bootloader: the VM is started by qemu's direct kernel boot.
#
# Usage: scripts/build-vm-image.sh [--print-dir]
#   Prints the image directory (the last line of stdout). Reruns are instant:
#   the result is cached under $FARMHAND_VM_CACHE (default /var/cache/farmhand-vm),
#   keyed by a hash of this script, so editing the script builds a new image.
#   Concurrent runs wait for each other (flock).
#
# Outputs, in DIR=$FARMHAND_VM_CACHE/debian12-<hash>/ :
#   DIR/root.img       raw ext4 filesystem image (whole disk, no partition table),
#                      sparse, ROOT_SIZE (default 10G); mounted as /dev/vda
#   DIR/vmlinuz        the image's kernel (linux-image-amd64, the generic one:
#                      it has snd-aloop; the cloud kernel has no sound modules)
#   DIR/initrd.img     its initramfs
#   DIR/cmdline        the kernel command line to boot with:
#                      console=ttyS0 root=/dev/vda rw net.ifnames=0
#   DIR/id_ed25519     SSH private key for root@VM (and .pub; authorized in the image)
#   DIR/image.env      the above as shell variables: VM_ROOT VM_KERNEL VM_INITRD
#                      VM_CMDLINE VM_SSH_KEY VM_SSH_USER
#
# Inside: systemd, udev, openssh-server (root by key only), python3 and
# python3-apt (for Ansible), ifupdown + dhclient on eth0 (net.ifnames=0),
# lvm2, sudo, apt sources for bookworm, -updates and -security, hostname
# `farmhand-vm`, serial console on ttyS0.
#
# Boot it with scripts/boot-vm.sh (a throw-away qcow2 overlay keeps the cached
# image pristine):
#   scripts/boot-vm.sh --extra-disks 2 --ssh-port 2222 --pidfile /tmp/vm.pid
# or by hand (KVM is present on these machines but hangs: always -accel tcg):
#   qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -nographic \
#     -kernel DIR/vmlinuz -initrd DIR/initrd.img -append "$(cat DIR/cmdline)" \
#     -drive file=overlay.qcow2,if=virtio,format=qcow2 \
#     -netdev user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22 -device virtio-net-pci,netdev=n0
#   ssh -i DIR/id_ed25519 -p 2222 root@127.0.0.1
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${FARMHAND_VM_CACHE:-/var/cache/farmhand-vm}
ROOT_SIZE=${ROOT_SIZE:-10G}
SUITE=bookworm
PACKAGES=linux-image-amd64,systemd,systemd-sysv,udev,openssh-server,python3,python3-apt,ifupdown,isc-dhcp-client,lvm2,sudo,ca-certificates,kmod,procps,iproute2,less

log() { echo "build-vm-image: $*" >&2; }

need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

hash=$( (cat "$0"; echo "$ROOT_SIZE $MIRROR") | sha256sum | cut -c1-12)
DIR=$CACHE/debian12-$hash
mkdir -p "$CACHE"

exec 9>"$CACHE/.lock"
flock 9

if [ -f "$DIR/.complete" ]; then
  [ "${1:-}" = --print-dir ] || log "cached: $DIR"
  echo "$DIR"
  exit 0
fi

start=$(date +%s)
work=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

log "debootstrap $SUITE from $MIRROR (about a minute)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

log "configuring the image"
ssh-keygen -q -t ed25519 -N '' -C farmhand-vm -f "$work/id_ed25519"
install -d -m 0700 "$rootfs/root/.ssh"
install -m 0600 "$work/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"

echo farmhand-vm >"$rootfs/etc/hostname"
cat >"$rootfs/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	farmhand-vm
::1		localhost ip6-localhost ip6-loopback
EOF

cat >"$rootfs/etc/fstab" <<'EOF'
# <file system> <mount point> <type> <options> <dump> <pass>
/dev/vda  /  ext4  defaults,errors=remount-ro  0  1
EOF

cat >"$rootfs/etc/network/interfaces" <<'EOF'
# The kernel command line has net.ifnames=0: the virtio NIC is eth0.
auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
EOF

cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF

# debootstrap takes the suite's point release only: bring in -updates and
# -security now (a newer kernel ABI included), so the kernel the VM boots is
# the newest and a later `apt-get upgrade` in the image does not replace it.
log "applying updates (bookworm-updates, bookworm-security)"
mount -t proc proc "$rootfs/proc"
trap 'umount "$rootfs/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
# No package may start a service here (it would run on this host).
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
in_root() { chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive "$@" >>"$work/upgrade.log" 2>&1 || {
  tail -n 30 "$work/upgrade.log" >&2
  exit 1
}; }
in_root apt-get update -qq
in_root apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade
# Only the newest kernel stays: the image boots that one.
newest=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1 | sed 's|.*/vmlinuz-||')
old_kernels=$(chroot "$rootfs" dpkg-query -W -f='${Package}\n' 'linux-image-[0-9]*' | grep -v -- "-$newest\$" || true)
if [ -n "$old_kernels" ]; then
  # shellcheck disable=SC2086
  in_root apt-get -y -qq purge $old_kernels
fi
umount "$rootfs/proc"
rm -f "$rootfs/etc/resolv.conf" "$rootfs/usr/sbin/policy-rc.d"

# Root logs in by key only; no password is set anywhere.
mkdir -p "$rootfs/etc/ssh/sshd_config.d"
cat >"$rootfs/etc/ssh/sshd_config.d/farmhand-vm.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF

# Under TCG emulation the first boot can be slow: don't let the boot give up on it.
mkdir -p "$rootfs/etc/systemd/system.conf.d"
cat >"$rootfs/etc/systemd/system.conf.d/farmhand-vm.conf" <<'EOF'
[Manager]
DefaultTimeoutStartSec=300s
EOF

# Same machine-id in every copy would give every VM the same DHCP identity: empty
# file = a new id at first boot.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"

chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin

kernel=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1)
initrd=$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n 1)
install -m 0644 "$kernel" "$work/vmlinuz"
install -m 0644 "$initrd" "$work/initrd.img"
echo "console=ttyS0 root=/dev/vda rw net.ifnames=0" >"$work/cmdline"

log "making the ext4 image ($ROOT_SIZE, sparse)"
truncate -s "$ROOT_SIZE" "$work/root.img"
mkfs.ext4 -q -L farmhand-root -d "$rootfs" "$work/root.img"
rm -rf "$rootfs"

mkdir -p "$DIR"
mv "$work/root.img" "$work/vmlinuz" "$work/initrd.img" "$work/cmdline" \
   "$work/id_ed25519" "$work/id_ed25519.pub" "$DIR/"
cat >"$DIR/image.env" <<EOF
VM_DIR=$DIR
VM_ROOT=$DIR/root.img
VM_KERNEL=$DIR/vmlinuz
VM_INITRD=$DIR/initrd.img
VM_CMDLINE='$(cat "$DIR/cmdline")'
VM_SSH_KEY=$DIR/id_ed25519
VM_SSH_USER=root
EOF
touch "$DIR/.complete"
ln -sfn "$DIR" "$CACHE/debian12-latest"
log "built $DIR in $(($(date +%s) - start)) s"
echo "$DIR"
