"""`kcm isolate` of several kcm trees installed side by side, in shuffled order, with the peers
that bound its start-up: to tell a change of the code from a change of the machine.

    .venv/bin/python benchmarks/side_by_side.py --rounds 300 before=/tmp/old-tree after=.

Each tree (a directory holding pyproject.toml, e.g. from ``git archive <commit> | tar -x``) is
installed as users get it (``pip install --no-deps``, byte-compiled) into a venv of its own
with a state of its own, and each round runs every command once in a new random order. Beside
``python -c pass`` and ``taskset -c 0 true`` it times what the last tree's isolate is made of:
the interpreter without its teardown (``os._exit``), the launcher with ``kcm.cli``
(``--version``), the interpreter importing what isolate imports, ``sh -c true`` (the
sub-shell), and the same isolate with its state on tmpfs (no cost of durability). Wall and CPU
time (the process's and its children's, from ``wait4``) are medians; CPU time moves far less
with the load of a shared machine.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import build_isolate_state, remove_parent
from booking_cgroups import spawn  # wall and CPU ms of one run

PASS = "python -c pass"


def install(src: str, where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    subprocess.run(
        [str(where / "bin/pip"), "install", "-q", "--no-deps", "--disable-pip-version-check", src],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return where / "bin"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("trees", nargs="+", metavar="LABEL=DIR")
    options = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="kcm-side-") as tmp,
        tempfile.TemporaryDirectory(prefix="kcm-side-", dir="/dev/shm") as shm,
    ):
        parent = f"kcm-side-{os.getpid()}"
        env = {**os.environ, "KCM_PROC_FS": "/proc", "KCM_CGROUP_PARENT": parent}
        commands: dict[str, list[str]] = {}
        bin_dir = Path()
        for spec in options.trees:
            label, _, src = spec.partition("=")
            where = Path(tmp, label)
            where.mkdir()
            bin_dir = install(str(Path(src).resolve()), where / "venv")
            conf = build_isolate_state(bin_dir, where)
            commands[f"isolate, {label}"] = [
                str(bin_dir / "kcm"), "isolate", f"--conf-dir={conf}", "--pool=infra", "true"
            ]  # fmt: skip
        python, kcm = str(bin_dir / "python"), str(bin_dir / "kcm")
        on_tmpfs = build_isolate_state(bin_dir, Path(shm))
        true = shutil.which("true") or "/bin/true"
        imports = "import kcm.cli, kcm.isolate, kcm.host.cgroups.v1, fcntl, os; os._exit(0)"
        commands |= {
            PASS: [python, "-c", "pass"],
            "taskset -c 0 true": [shutil.which("taskset") or "taskset", "-c", "0", true],
            "isolate, last tree, state on tmpfs": [
                kcm, "isolate", f"--conf-dir={on_tmpfs}", "--pool=infra", "true"
            ],
            "python -c 'os._exit(0)' (no teardown)": [python, "-c", "import os; os._exit(0)"],
            "kcm --version (launcher, kcm.cli)": [kcm, "--version"],
            "python importing isolate's modules": [python, "-c", imports],
            "sh -c true": ["/bin/sh", "-c", "true"],
        }  # fmt: skip
        names = list(commands)
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for name in names:  # warm caches
            for _ in range(3):
                spawn(commands[name], env)
        load_before, started = os.getloadavg()[0], time.time()
        for _ in range(options.rounds):
            random.shuffle(names)
            for name in names:
                w, c = spawn(commands[name], env)
                wall[name].append(w)
                cpu[name].append(c)
        load_after = os.getloadavg()[0]
        remove_parent(parent)
    base_wall, base_cpu = statistics.median(wall[PASS]), statistics.median(cpu[PASS])
    print(
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))} UTC, {options.rounds} rounds"
        f" shuffled, load average {load_before:.2f} -> {load_after:.2f}"
    )
    print()
    print("| command | wall (ms) | vs `-c pass` | CPU (ms) | vs `-c pass` |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in commands:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        ratios = f"{w / base_wall:.2f}x | {c:.2f} | {c / base_cpu:.2f}x"
        print(f"| {name} | {w:.2f} | {ratios} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
