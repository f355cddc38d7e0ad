#!/usr/bin/env bash
# Boot a Debian VM disk (by default the cached image of scripts/build-vm-image.sh)
# under qemu (software emulation: -accel tcg, KVM hangs on these machines), in
# the background, on a throw-away qcow2 overlay so the disk booted stays pristine.
#
#   scripts/boot-vm.sh [--image DIR] [--disk ROOT] [--kernel F --initrd F --cmdline S]
#                      [--ssh-key F] [--extra-disks N] [--extra-disk-size 2G]
#                      [--ssh-port P] [--memory MiB] [--cpus N] [--workdir D]
#                      [--pidfile F] [--timeout S] [--seed ISO]
#   scripts/boot-vm.sh --stop --pidfile F
#
# --image DIR   a directory as build-vm-image.sh makes it (root.img, vmlinuz,
#               initrd.img, cmdline, id_ed25519); default: build (or reuse) it.
# --disk ROOT   boot this disk instead (raw or qcow2, e.g. a Packer qemu output);
#               --kernel/--initrd/--cmdline/--ssh-key default to the image DIR's.
# --extra-disks N  attach N blank raw disks (vdb, vdc, ...) of --extra-disk-size.
# --seed ISO    attach ISO read-only after the extra disks: a cloud-init NoCloud
#               seed (scripts/make-nocloud-seed.sh), found by its label cidata.
# --ssh-port P  host port forwarded to the VM's port 22 on 127.0.0.1 (default: a free one).
# --pidfile F   qemu's pid goes there (default WORKDIR/qemu.pid); F.env records
#               the VM's details for --stop.
# --workdir D   overlay, extra disks and the serial log (console.log) go there
#               (default: a new temporary directory, removed by --stop).
#
# Waits until root can log in over SSH (default timeout 300 s), then prints, on
# stdout, shell variables: VM_SSH_HOST VM_SSH_PORT VM_SSH_USER VM_SSH_KEY
# VM_PID VM_WORKDIR VM_CONSOLE, e.g.
#   eval "$(scripts/boot-vm.sh --extra-disks 2 --pidfile /tmp/vm.pid)"
#   ssh -i "$VM_SSH_KEY" -p "$VM_SSH_PORT" -o StrictHostKeyChecking=no root@127.0.0.1
#   scripts/boot-vm.sh --stop --pidfile /tmp/vm.pid
# Exit 1 (and the last lines of the console) when the VM does not come up; the
# VM is then stopped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

image='' disk='' kernel='' initrd='' cmdline='' key='' seed=''
extra=0 extra_size=2G port='' memory=2048 cpus=2 workdir='' pidfile='' timeout=300 stop=0
while (($#)); do
  case $1 in
    --image) image=$2; shift ;;
    --disk) disk=$2; shift ;;
    --kernel) kernel=$2; shift ;;
    --initrd) initrd=$2; shift ;;
    --cmdline) cmdline=$2; shift ;;
    --ssh-key) key=$2; shift ;;
    --extra-disks) extra=$2; shift ;;
    --extra-disk-size) extra_size=$2; shift ;;
    --seed) seed=$2; shift ;;
    --ssh-port) port=$2; shift ;;
    --memory) memory=$2; shift ;;
    --cpus) cpus=$2; shift ;;
    --workdir) workdir=$2; shift ;;
    --pidfile) pidfile=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    --stop) stop=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "boot-vm: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "boot-vm: $*" >&2; }

stop_vm() { # pidfile
  local pf=$1 pid='' wd='' own=0
  [ -f "$pf.env" ] && { wd=$(sed -n 's/^VM_WORKDIR=//p' "$pf.env"); own=$(sed -n 's/^VM_OWN_WORKDIR=//p' "$pf.env"); }
  [ -f "$pf" ] && pid=$(cat "$pf")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pf" "$pf.env"
  if [ "$own" = 1 ] && [ -n "$wd" ]; then rm -rf "$wd"; fi
}

if ((stop)); then
  [ -n "$pidfile" ] || { echo "boot-vm: --stop needs --pidfile" >&2; exit 2; }
  stop_vm "$pidfile"
  exit 0
fi

if [ -z "$image" ] && { [ -z "$disk" ] || [ -z "$kernel" ] || [ -z "$initrd" ] || [ -z "$key" ]; }; then
  image=$(bash "$here/build-vm-image.sh" --print-dir | tail -n 1)
fi
disk=${disk:-$image/root.img}
kernel=${kernel:-$image/vmlinuz}
initrd=${initrd:-$image/initrd.img}
key=${key:-$image/id_ed25519}
if [ -z "$cmdline" ]; then
  if [ -n "$image" ] && [ -f "$image/cmdline" ]; then cmdline=$(cat "$image/cmdline"); else cmdline='console=ttyS0 root=/dev/vda rw net.ifnames=0'; fi
fi
for f in "$disk" "$kernel" "$initrd" "$key"; do
  [ -f "$f" ] || { echo "boot-vm: missing $f" >&2; exit 2; }
done

own=0
if [ -z "$workdir" ]; then
  workdir=$(mktemp -d /tmp/farmhand-vm.XXXXXX); own=1
  trap 'rm -rf "$workdir"' EXIT # until qemu runs; then --stop removes it
fi
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)
pidfile=${pidfile:-$workdir/qemu.pid}
if [ -z "$port" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

fmt=$(qemu-img info --output=json "$disk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
disk=$(cd "$(dirname "$disk")" && pwd)/$(basename "$disk")
rm -f "$workdir/overlay.qcow2"
qemu-img create -q -f qcow2 -F "$fmt" -b "$disk" "$workdir/overlay.qcow2"
drives=(-drive "file=$workdir/overlay.qcow2,if=virtio,format=qcow2")
for ((i = 0; i < extra; i++)); do
  rm -f "$workdir/extra$i.img"
  truncate -s "$extra_size" "$workdir/extra$i.img"
  drives+=(-drive "file=$workdir/extra$i.img,if=virtio,format=raw")
done
if [ -n "$seed" ]; then
  [ -f "$seed" ] || { echo "boot-vm: missing $seed" >&2; exit 2; }
  drives+=(-drive "file=$(cd "$(dirname "$seed")" && pwd)/$(basename "$seed"),if=virtio,format=raw,readonly=on")
fi

: >"$workdir/console.log"
qemu-system-x86_64 -accel tcg -m "$memory" -smp "$cpus" \
  -display none -serial "file:$workdir/console.log" -monitor none \
  -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
  "${drives[@]}" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
  -pidfile "$pidfile" -daemonize
pid=$(cat "$pidfile")
trap - EXIT
cat >"$pidfile.env" <<EOF
VM_SSH_HOST=127.0.0.1
VM_SSH_PORT=$port
VM_SSH_USER=root
VM_SSH_KEY=$key
VM_PID=$pid
VM_WORKDIR=$workdir
VM_CONSOLE=$workdir/console.log
VM_OWN_WORKDIR=$own
EOF

log "qemu pid $pid, ssh on 127.0.0.1:$port, console $workdir/console.log; waiting for SSH"
start=$(date +%s)
ssh_opts=(-i "$key" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
          -o ConnectTimeout=5 -o LogLevel=ERROR)
until timeout 15 ssh "${ssh_opts[@]}" root@127.0.0.1 true 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null || (($(date +%s) - start > timeout)); then
    log "the VM did not come up in ${timeout} s; console:"
    tail -n 40 "$workdir/console.log" >&2 || true
    stop_vm "$pidfile"
    exit 1
  fi
  sleep 2
done
log "up in $(($(date +%s) - start)) s"
grep -v '^VM_OWN_WORKDIR=' "$pidfile.env"
