#!/bin/busybox sh
# PID 1 of the guest (tests/guest): mount the host's root read-only over 9p, give it the
# kernel's filesystems, writable scratch and the cgroup hierarchy the kernel command line asks
# for (kcm.cgroup=v2|v1), run the job the host wrote (kcm.job=<path on the host>) chrooted
# into it, report its exit status, and power off.
#
# Serial ports: ttyS0 is the kernel's console; ttyS1 carries the job's output alone; ttyS2
# carries status lines ("start <uptime>", "exit <code>", "fail <why>") that only this script
# and the job's harness write, so kernel messages never interleave with what the host parses.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1

status() { echo "$*" >/dev/ttyS2; }
fail() {
    status "fail $*"
    poweroff -f
    sleep 60
}

# Raw ports: no \r added before each \n, nothing echoed.
stty -F /dev/ttyS1 raw -echo || fail "stty ttyS1"
stty -F /dev/ttyS2 raw -echo || fail "stty ttyS2"

cgroup=""
job=""
keep=""  # <path>:<its real path>,...: a checkout below /tmp, /var/tmp or /run the tmpfs must not hide
for word in $(cat /proc/cmdline); do
    case "$word" in
        kcm.cgroup=*) cgroup="${word#kcm.cgroup=}" ;;
        kcm.job=*) job="${word#kcm.job=}" ;;
        kcm.keep=*) keep="${word#kcm.keep=}" ;;
    esac
done

for module in /modules/*.ko; do
    insmod "$module" || fail "insmod $module"
done

# cache=loose: the share is read-only and the host's files do not change under a test run,
# so the guest may keep what it read (Python's start-up reads hundreds of files).
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host \
    || fail "mount the host's root over 9p"
# The job sits in the host's /tmp, which the tmpfs below hides: read it first.
cp "/host$job" /job || fail "read the job $job"

root=/host
mount -t proc proc "$root/proc" || fail "mount proc"
mount -t sysfs sysfs "$root/sys" || fail "mount sysfs"
mount -t devtmpfs devtmpfs "$root/dev" || fail "mount devtmpfs"
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts devpts "$root/dev/pts" || fail "mount devpts"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm" || fail "mount /dev/shm"
n=0
for pair in $(echo "$keep" | tr ',' ' '); do
    real="${pair#*:}"
    mkdir -p "/keep/$n" && mount -o bind "$root$real" "/keep/$n" || fail "keep $real"
    n=$((n + 1))
done
for dir in /tmp /var/tmp /run; do
    mount -t tmpfs -o mode=1777 tmpfs "$root$dir" || fail "mount tmpfs on $dir"
done
n=0
for pair in $(echo "$keep" | tr ',' ' '); do
    path="${pair%%:*}"
    mkdir -p "$root$path" && mount -o bind "/keep/$n" "$root$path" || fail "mount $path again"
    n=$((n + 1))
done

case "$cgroup" in
    v2)
        mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup" || fail "mount cgroup2"
        ;;
    v1)
        mount -t tmpfs -o mode=0755 cgroup "$root/sys/fs/cgroup" || fail "mount cgroup tmpfs"
        mkdir "$root/sys/fs/cgroup/cpuset"
        mount -t cgroup -o cpuset cpuset "$root/sys/fs/cgroup/cpuset" \
            || fail "mount the cgroup v1 cpuset hierarchy"
        ;;
    *)
        fail "kcm.cgroup=$cgroup: want v2 or v1"
        ;;
esac

cp /job "$root/run/kcm-guest-job" || fail "copy the job"
status "start $(cut -d' ' -f1 /proc/uptime)"
chroot "$root" /bin/sh /run/kcm-guest-job >/dev/ttyS1 2>&1 </dev/null
code=$?
# Whatever the job left running goes, then the last close of the output port waits until
# the port has sent everything. (No run lost output without this; it is cheap insurance
# that the power-off never cuts the tail of what the job wrote.)
kill -KILL -1 2>/dev/null
sleep 0.1
: >/dev/ttyS1
status "exit $code"
poweroff -f
sleep 60
