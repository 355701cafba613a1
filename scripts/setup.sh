#!/usr/bin/env bash
# Make .venv with kcm and its test tools; as root, install the system packages the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if [ "${KCM_SETUP_PYTHON_ONLY:-}" = 1 ]; then :; else
command -v tmux >/dev/null || need+=(tmux)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v dpdk-testpmd >/dev/null || need+=(dpdk dpdk-dev)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v hyperfine >/dev/null || need+=(hyperfine)
# The guest kernel of tests/guest: QEMU to boot it, a static busybox for its initramfs.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
    || need+=(busybox-static)
# zsh runs the completion scripts' tests (kcm completion zsh) in a real zsh.
command -v zsh >/dev/null || need+=(zsh)
# promtool lints kcm's metrics and evaluates contrib/prometheus' alerting rules.
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        # Only promtool is wanted: never leave the Prometheus server of the package running.
        if [ -d /run/systemd/system ] && [[ " ${need[*]} " == *" prometheus "* ]]; then
            systemctl disable --now prometheus.service >/dev/null 2>&1 || true
        fi
    else
        echo "setup: missing ${need[*]} (install them, or run as root); tests needing them skip" >&2
    fi
fi
fi

py=""
for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        py=$candidate
        break
    fi
done
[ -n "$py" ] || { echo "setup: Python 3.11 or newer is needed" >&2; exit 1; }
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
    | grep -v -i -E 'warning|^\s*$|!!|corresp|location' >&2 || true
.venv/bin/kcm --version >/dev/null
