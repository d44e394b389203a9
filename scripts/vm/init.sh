#!/bin/busybox sh
# /init of the vduse-ts test VM (busybox, runs as PID 1 in the initramfs).
#
# Contract with the host runner (scripts/vm/vm.mjs), all through the 9p share tagged "vmctl":
#   params       shell assignments: VM_TIMEOUT (seconds), VM_WORK (path of the rw "work" share, may be empty)
#   cmd          script run by /bin/sh inside the host root (chroot), as root
#   rc           written at the end: the command's exit code (atomically, via rc.tmp)
#   timed-out    written by the watchdog before it resets the guest
#   setup-error  written when the guest could not be set up (then no rc)
#   dmesg.txt    the kernel log, written when the command failed or timed out
# Command output goes to the virtio-serial ports named vm.stdout and vm.stderr, kernel noise to ttyS0.

/bin/busybox mkdir -p /bin /proc /sys /dev /ctl /newroot
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

ctl_ok=
fail() {
  echo "vm-init: $*"
  if [ -n "$ctl_ok" ]; then echo "$*" >/ctl/setup-error; fi
  poweroff -f
  sleep 60
}

# Modules, in the order resolved from the kernel package's modules.dep (one "file [params]" per line).
while read -r mod args; do
  [ -n "$mod" ] || continue
  # shellcheck disable=SC2086 # params are split on purpose
  insmod "/lib/modules/$mod" $args || fail "insmod $mod failed"
done </lib/modules/load-order

mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmctl /ctl || fail "cannot mount the vmctl share"
ctl_ok=1
[ -r /ctl/params ] || fail "no /ctl/params"
. /ctl/params

# Watchdog: the time limit of the whole run. sysrq-b resets at once, even when I/O is stuck in D state
# (a dead VDUSE daemon). No sync here: it could hang on that very I/O; the 9p shares are uncached.
(
  sleep "${VM_TIMEOUT:-1800}"
  echo "$VM_TIMEOUT" >/ctl/timed-out
  echo w >/proc/sysrq-trigger
  dmesg >/ctl/dmesg.txt
  echo b >/proc/sysrq-trigger
) &

hostname vduse-vm
ip link set lo up || fail "cannot bring lo up"

R=/newroot
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot $R ||
  fail "cannot mount the host root"
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "cannot mount /tmp"
mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "cannot mount /run"
mount -t tmpfs -o mode=1777 tmpfs $R/var/tmp || fail "cannot mount /var/tmp"
mount -t proc proc $R/proc || fail "cannot mount /proc"
mount -t sysfs sysfs $R/sys || fail "cannot mount /sys"
mount -t devtmpfs devtmpfs $R/dev || fail "cannot mount /dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts $R/dev/pts || fail "cannot mount /dev/pts"
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm || fail "cannot mount /dev/shm"
if [ -d /sys/kernel/config ]; then mount -t configfs configfs $R/sys/kernel/config; fi
mkdir -p $R/run/vm
mount --bind /ctl $R/run/vm || fail "cannot bind the vmctl share"
if [ -n "$VM_WORK" ]; then
  mkdir -p "$R$VM_WORK" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 work "$R$VM_WORK" ||
    fail "cannot mount the work share at $VM_WORK"
fi

out=
err=
for p in /sys/class/virtio-ports/*; do
  case "$(cat "$p/name" 2>/dev/null)" in
    vm.stdout) out=/dev/${p##*/} ;;
    vm.stderr) err=/dev/${p##*/} ;;
  esac
done
[ -n "$out" ] && [ -n "$err" ] || fail "virtio-serial ports vm.stdout/vm.stderr not found"

chroot $R /bin/sh /run/vm/cmd </dev/null >"$out" 2>"$err"
rc=$?

if [ "$rc" != 0 ]; then dmesg >/ctl/dmesg.txt; fi
echo "$rc" >/ctl/rc.tmp && mv /ctl/rc.tmp /ctl/rc
poweroff -f
sleep 60
