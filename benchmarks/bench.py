"""Start-up cost of kcm against its peers, measured in one run, alternating, as medians.

    .venv/bin/python benchmarks/bench.py [--rounds N]

It installs kcm (no dependencies, byte-compiled, as `pip install .` does) into a fresh venv
in a temp dir, so the figures are what users run, not an editable checkout. Peers: the same
interpreter's `-c pass` and `taskset -c 0 true`. Ratios, not absolute times, are the result:
absolute times on these shared VMs drift by tens of percent from minute to minute.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = "kcm describe -o table (same state)"
ISOLATE = "kcm isolate --pool=infra true"
ISOLATE_NO_CGROUP = "kcm isolate --pool=infra true (no cgroup)"


def remove_parent(parent: str) -> None:
    """Remove the run's cgroup parent (empty by now: every isolate removed its booking)."""
    for hierarchy in ("/sys/fs/cgroup/cpuset", "/sys/fs/cgroup"):
        top = Path(hierarchy, parent)
        if top.is_dir():
            for level in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
                level.rmdir()
            top.rmdir()


def make_venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    subprocess.run(
        [
            str(where / "bin/pip"),
            "install",
            "-q",
            "--no-deps",
            "--disable-pip-version-check",
            str(ROOT),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return where / "bin"


def build_isolate_state(bin_dir: Path, where: Path) -> str:
    sys_root = where / "sys"
    base = sys_root / "devices/system/cpu"
    base.mkdir(parents=True)
    (base / "online").write_text("0-1\n")
    for cpu in (0, 1):
        topo = base / f"cpu{cpu}/topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{cpu}\n")
        (topo / "thread_siblings_list").write_text(f"{cpu}\n")
    conf = str(where / "kcm")
    subprocess.run(
        [
            str(bin_dir / "kcm"),
            "init",
            f"--conf-dir={conf}",
            "--num-dp-cores=1",
            "--num-cp-cores=0",
        ],
        check=True,
        env={**os.environ, "KCM_SYS_FS": str(sys_root)},
    )
    return conf


def build_big_state(where: Path) -> str:
    """1024 CPUs in 512 lists of two hyperthreads, 10,000 tasks: 256 exclusive lists each
    held by one task, 256 shared lists sharing the other 9,744."""
    conf = where / "big"
    (conf / "pools").mkdir(parents=True)
    (conf / "lock").write_text("")
    pid = 100000
    for pool, exclusive, first in (("dataplane", True, 0), ("infra", False, 256)):
        pool_dir = conf / "pools" / pool
        pool_dir.mkdir()
        (pool_dir / "exclusive").write_text("1" if exclusive else "0")
        for i in range(first, first + 256):
            cl = pool_dir / f"{i},{i + 512}"
            cl.mkdir()
            n = 1 if exclusive else (9744 // 256 + (1 if i - first < 9744 % 256 else 0))
            (cl / "tasks").write_text(",".join(str(pid + k) for k in range(n)))
            pid += n
    return str(conf)


def build_big_sysfs(where: Path) -> str:
    """The NUMA nodes of the big state's machine: two sockets of 256 cores, two threads each,
    numbered as Linux does (first threads 0-511, their siblings 512-1023). Only the node files:
    they are all the table reads of sysfs."""
    root = where / "big-sys"
    for node, cpus in ((0, "0-255,512-767"), (1, "256-511,768-1023")):
        node_dir = root / f"devices/system/node/node{node}"
        node_dir.mkdir(parents=True)
        (node_dir / "cpulist").write_text(f"{cpus}\n")
    return str(root)


def spawn_time(argv: list[str], env: dict[str, str]) -> float:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {argv}")
    return elapsed


def measure(
    commands: dict[str, list[str]],
    env: dict[str, str],
    rounds: int,
    envs: dict[str, dict[str, str]] | None = None,
) -> dict[str, float]:
    """Median ms of each command, alternating round by round; ``envs`` gives some their own."""
    envs = envs or {}
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for name, argv in commands.items():  # warm caches
        for _ in range(3):
            spawn_time(argv, envs.get(name, env))
    for _ in range(rounds):
        for name, argv in commands.items():
            samples[name].append(spawn_time(argv, envs.get(name, env)))
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kcm-bench-") as tmp:
        where = Path(tmp)
        bin_dir = make_venv(where / "venv")
        python = str(bin_dir / "python")
        kcm = str(bin_dir / "kcm")
        conf = build_isolate_state(bin_dir, where)
        big = build_big_state(where)
        # The table looks its tasks up in the real /proc: the generated PIDs are (almost all)
        # not running, so each costs a failed lookup, the common case of a state with leftovers.
        # isolate holds its booking in a cgroup (as root, with a cpuset hierarchy) under a
        # parent of this run's own, removed at the end; the same isolate without a cgroup
        # (KCM_CGROUP_FS at an empty directory) runs beside it.
        parent = f"kcm-bench-{os.getpid()}"
        env = {
            **os.environ,
            "KCM_PROC_FS": "/proc",
            "KCM_SYS_FS": build_big_sysfs(where),
            "KCM_CGROUP_PARENT": parent,
        }
        (where / "no-cgroupfs").mkdir()
        no_cgroup = {**env, "KCM_CGROUP_FS": str(where / "no-cgroupfs")}
        taskset = subprocess.run(["which", "taskset"], capture_output=True, text=True).stdout
        true = subprocess.run(["which", "true"], capture_output=True, text=True).stdout.strip()
        isolate = [kcm, "isolate", f"--conf-dir={conf}", "--pool=infra", "true"]
        medians = measure(
            {
                "python -c pass": [python, "-c", "pass"],
                ISOLATE: isolate,
                ISOLATE_NO_CGROUP: isolate,
                "kcm isolate --pool=dataplane true": [
                    kcm,
                    "isolate",
                    f"--conf-dir={conf}",
                    "--pool=dataplane",
                    "true",
                ],
                "taskset -c 0 true": [taskset.strip(), "-c", "0", true],
                "kcm describe (1024 CPUs, 512 lists, 10,000 tasks)": [
                    kcm,
                    "describe",
                    f"--conf-dir={big}",
                ],
                TABLE: [kcm, "describe", "-o", "table", f"--conf-dir={big}"],
            },
            env,
            options.rounds,
            envs={ISOLATE_NO_CGROUP: no_cgroup},
        )
        remove_parent(parent)
    base = medians["python -c pass"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()},"
        f" Python {platform.python_version()}; {options.rounds} alternating rounds"
    )
    print()
    print("| command | median (ms) | vs `python -c pass` |")
    print("| --- | ---: | ---: |")
    for name, ms in medians.items():
        print(f"| `{name}` | {ms:.2f} | {ms / base:.2f}x |")
    isolate = medians[ISOLATE] / base
    bare = medians[ISOLATE_NO_CGROUP] / base
    describe = medians["kcm describe (1024 CPUs, 512 lists, 10,000 tasks)"] / base
    table = medians[TABLE] / base
    print()
    print(
        f"isolate {isolate:.2f}x with its booking cgroup (target <= 1.5x):"
        f" {'met' if isolate <= 1.5 else 'MISSED'}, {bare:.2f}x without;"
        f" describe {describe:.2f}x (target <= 3x): {'met' if describe <= 3 else 'MISSED'};"
        f" describe -o table {table:.2f}x (target <= 3x): {'met' if table <= 3 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
