#!/usr/bin/env bash
# A tour of kcm: pools carved from the seeds' bundled 16-CPU example topology, then real
# pinning, exclusivity and crash recovery on this host's own CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
KCM_SETUP_PYTHON_ONLY=1 bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d /tmp/kcm-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "kcm init on the seeds' example machine (16 CPUs, 8 cores, siblings n and n+8)"
export KCM_SYS_FS=$PWD/examples/sysfs/seed-16cpu
run kcm init --conf-dir="$work/example"
(cd "$work/example" && find . | sort)
say "kcm describe"
run kcm describe --conf-dir="$work/example"
unset KCM_SYS_FS

cpus=$(getconf _NPROCESSORS_ONLN)
if [ "$cpus" -lt 2 ]; then
    say "this host has $cpus CPU: the pinning part needs 2"
    exit 0
fi
say "kcm on this host: one dataplane core, the rest infra"
export KCM_PROC_FS=/proc
run kcm init --conf-dir="$work/host" --num-dp-cores=1 --num-cp-cores=0
run kcm isolate --conf-dir="$work/host" --pool=dataplane \
    'echo "pid $$ runs on CPUs $KCM_CPUS_ASSIGNED of pool $KCM_POOL:" $(grep Cpus_allowed_list /proc/self/status)'
run kcm isolate --conf-dir="$work/host" --pool=infra printf -- '%s|' 'a;b' '$HOME'
echo

say "exclusive: while one task holds the dataplane list, the next is refused"
kcm isolate --conf-dir="$work/host" --pool=dataplane 'sleep 30' &
holder=$!
for _ in $(seq 50); do grep -q "$holder" "$work"/host/pools/dataplane/*/tasks && break; sleep 0.1; done
run kcm describe --conf-dir="$work/host" | grep -A3 '"tasks"' | head -4
run kcm isolate --conf-dir="$work/host" --pool=dataplane true || echo "(exit status $?)"

say "kill -9 of the holder leaves its PID behind; reconcile clears it"
kill -9 "$holder"; wait "$holder" 2>/dev/null || true
pkill -f '^sleep 30$' || true
cat "$work"/host/pools/dataplane/*/tasks; echo "  <- the dead PID"
run kcm reconcile --conf-dir="$work/host"
run kcm isolate --conf-dir="$work/host" --pool=dataplane 'echo "the list is free again: CPUs $KCM_CPUS_ASSIGNED"'

if command -v spp-wakeup >/dev/null && [ -f examples/spp/conf.yml ]; then
    say "SPP runner: the plan for the seed's conf.yml on the 16-CPU example (nothing starts)"
    KCM_SYS_FS=$PWD/examples/sysfs/seed-16cpu run spp-wakeup --config examples/spp/conf.yml --dry-run
fi
