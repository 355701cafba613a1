#!/usr/bin/env bash
# A tour of kcm: pools carved from the seeds' bundled 16-CPU example topology, then real
# pinning, exclusivity and crash recovery on this host's own CPUs.
#
# It runs what `pip install .` gives, in a venv of its own (.venv-demo/, rebuilt only when the
# sources change), and stops every process it starts by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."

# -- kcm as a user installs it --------------------------------------------------------------
py=""
for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        py=$candidate
        break
    fi
done
[ -n "$py" ] || { echo "demo: Python 3.11 or newer is needed" >&2; exit 1; }
venv=$PWD/.venv-demo
sources=$(cat pyproject.toml bin/* $(find src -name '*.py' -o -name py.typed | sort) | cksum)
if [ ! -x "$venv/bin/kcm" ] || [ "$(cat "$venv/.sources" 2>/dev/null)" != "$sources" ]; then
    echo "demo: pip install . into $venv" >&2
    pip_args=(-q --disable-pip-version-check install --no-compile .)
    # A venv without a pip of its own, filled by this Python's pip (22.3 or later has
    # --python): seconds faster than a venv with pip. Sources changed since: the same
    # install again, with the dependencies already there.
    if "$py" -m pip --version 2>/dev/null | grep -qE '^pip (2[3-9]|[3-9][0-9]|22\.([3-9]|[1-9][0-9]))'; then
        [ -x "$venv/bin/python" ] || "$py" -m venv --without-pip "$venv"
        pip=("$py" -m pip --python "$venv/bin/python")
    else
        [ -x "$venv/bin/pip" ] || { rm -rf "$venv"; "$py" -m venv "$venv"; }
        pip=("$venv/bin/python" -m pip)
    fi
    "${pip[@]}" "${pip_args[@]}" 2>&1 | { grep -v WARNING >&2 || true; }
    "$venv/bin/kcm" --version >/dev/null
    printf '%s\n' "$sources" >"$venv/.sources"
fi

work=$(mktemp -d /tmp/kcm-demo.XXXXXX)
started=()  # the PIDs of what this demo started and has not stopped yet
cleanup() {
    local pid
    for pid in "${started[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
# Forget a PID once its process is gone (or a zombie its new parent has yet to reap), so
# that nothing later signals whoever reuses it.
forget() {
    local pid kept=() stat
    for _ in $(seq 200); do
        stat=$(cat "/proc/$1/stat" 2>/dev/null) || break
        stat=${stat##*) }
        [ "${stat%% *}" = Z ] && break
        sleep 0.01
    done
    for pid in "${started[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
    started=("${kept[@]}")
}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# One word as the shell reads it back: plain words as they are, anything else single-quoted.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}
# Print a command so that it can be pasted back into a shell as it is, then run it.
# Leading NAME=value words are its environment.
run() {
    local word sep=""
    printf '$ '
    for word in "$@"; do printf '%s%s' "$sep" "$(quote "$word")"; sep=" "; done
    printf '\n'
    if [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then env "$@"; else "$@"; fi
}

say "kcm as pip install . gives it (the demo's venv)"
printf '$ export PATH=%s/bin:"$PATH"\n' "$(quote "$venv")"
export PATH="$venv/bin:$PATH"

say "kcm init on the seeds' example machine (16 CPUs, 8 cores, siblings n and n+8)"
example_sys=$PWD/examples/sysfs/seed-16cpu
run KCM_SYS_FS="$example_sys" kcm init --conf-dir="$work/example"
(cd "$work/example" && find . | sort)
say "kcm describe"
run kcm describe --conf-dir="$work/example"

cpus=$(getconf _NPROCESSORS_ONLN)
if [ "$cpus" -lt 2 ]; then
    say "this host has $cpus CPU: the pinning part needs 2"
    exit 0
fi
say "kcm on this host: one dataplane core, the rest infra"
host=$work/host
run kcm init --conf-dir="$host" --num-dp-cores=1 --num-cp-cores=0
run KCM_PROC_FS=/proc kcm isolate --conf-dir="$host" --pool=dataplane \
    'echo "pid $$ runs on CPUs $KCM_CPUS_ASSIGNED of pool $KCM_POOL:" $(grep Cpus_allowed_list /proc/self/status)'
run KCM_PROC_FS=/proc kcm isolate --conf-dir="$host" --pool=infra printf -- '%s|' 'a;b' '$HOME'
echo

say "exclusive: while one task holds the dataplane list, the next is refused"
# The holder's command writes its own PID, then becomes sleep: that is the process to stop.
holder_command='echo $$ > sleep.pid; exec sleep 30'
printf '$ (cd %s && KCM_PROC_FS=/proc kcm isolate %s --pool=dataplane %s) &\n' \
    "$(quote "$work")" "$(quote "--conf-dir=$host")" "$(quote "$holder_command")"
(cd "$work" && KCM_PROC_FS=/proc exec kcm isolate --conf-dir="$host" --pool=dataplane "$holder_command") &
holder=$!
disown "$holder"  # bash then prints no job notice when the kill below ends it
started+=("$holder")
for _ in $(seq 200); do [ -s "$work/sleep.pid" ] && break; sleep 0.02; done
sleeper=$(cat "$work/sleep.pid")
started+=("$sleeper")
run cat "$host"/pools/dataplane/*/tasks
echo "  <- the holder's PID"
run KCM_PROC_FS=/proc kcm isolate --conf-dir="$host" --pool=dataplane true || echo "(exit status $?)"

say "kill -9 of the holder (kcm, PID $holder) leaves its PID behind; reconcile clears it"
run kill -KILL "$holder"
forget "$holder"
# Its command, orphaned by the kill, still sleeps; it is no booking of kcm's any more.
[ "$(cat "/proc/$sleeper/comm" 2>/dev/null)" = sleep ] && run kill -TERM "$sleeper"
forget "$sleeper"
run cat "$host"/pools/dataplane/*/tasks
echo "  <- the dead PID"
run KCM_PROC_FS=/proc kcm reconcile --conf-dir="$host"
run KCM_PROC_FS=/proc kcm isolate --conf-dir="$host" --pool=dataplane \
    'echo "the list is free again: CPUs $KCM_CPUS_ASSIGNED"'

if [ -f examples/spp/conf.yml ]; then
    say "SPP runner: the plan for the seed's conf.yml on the 16-CPU example (nothing starts)"
    run KCM_SYS_FS="$example_sys" spp-wakeup --config examples/spp/conf.yml --dry-run
fi
