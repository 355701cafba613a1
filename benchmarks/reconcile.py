"""One ``kcm reconcile`` pass over many dead PIDs on one list, against ``python -c pass``.

    .venv/bin/python benchmarks/reconcile.py [--pids 100000] [--rounds 5] [--kcm PATH]

kcm is installed as users get it (as in bench.py), unless ``--kcm`` names another launcher
(an older build, for a before/after run). Each round builds the state afresh, untimed: one
shared list holding ``--pids`` PIDs above PID_MAX_LIMIT (never alive), either with the
``.owner-<pid>`` record that ``kcm isolate`` writes beside each PID it books (what a mass
``kill -9`` of isolates leaves) or without (PIDs written by CMK or another tool). It then times
``kcm reconcile --quiet``, checks from the files that the list was freed, and times, in the same
round, ``python -c pass``. The state lives on the
file systems named by ``--where``: ``/dev/shm`` (tmpfs) shows the algorithm, ``/tmp`` (here
ext4) adds a real unlink and fsync per file.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import make_venv

# Above PID_MAX_LIMIT (2^22): no live process has such a PID on any Linux.
FIRST_PID = 4194305


def build(root: Path, pids: int, owners: bool) -> str:
    conf = root / "kcm"
    list_dir = conf / "pools/infra/0"
    list_dir.mkdir(parents=True)
    (conf / "lock").write_text("")
    (conf / "pools/infra/exclusive").write_text("0")
    (list_dir / "tasks").write_text(",".join(str(FIRST_PID + i) for i in range(pids)))
    if owners:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        fd = os.open(list_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(pids):
                os.close(os.open(f".owner-{FIRST_PID + i}", flags, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
    return str(conf)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pids", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--where", nargs="+", default=["/dev/shm", "/tmp"])
    parser.add_argument("--kcm", help="a kcm launcher to time instead of a fresh install")
    parser.add_argument("--lock-timeout", default="300", help="KCM_LOCK_TIMEOUT for the pass")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kcm-bench-reconcile-") as tmp:
        bin_dir = make_venv(Path(tmp) / "venv")
        python = str(bin_dir / "python")
        kcm = options.kcm or str(bin_dir / "kcm")
        env = {**os.environ, "KCM_PROC_FS": "/proc", "KCM_LOCK_TIMEOUT": options.lock_timeout}
        # Builds before issue 9 have no --quiet (nor the JSON report).
        usage = subprocess.run([kcm, "--help"], capture_output=True, text=True).stdout
        quiet = ["--quiet"] if "--quiet" in usage else []
        rows = []
        for where in options.where:
            for owners in (True, False):
                passes: list[float] = []
                floors: list[float] = []
                for _ in range(options.rounds):
                    root = Path(tempfile.mkdtemp(prefix="kcm-bench-", dir=where))
                    try:
                        conf = build(root, options.pids, owners)
                        took, proc = timed([kcm, "reconcile", f"--conf-dir={conf}", *quiet], env)
                        tasks = Path(conf, "pools/infra/0/tasks").read_text()
                        left = os.listdir(f"{conf}/pools/infra/0")
                        if proc.returncode != 0 or tasks or left != ["tasks"]:
                            raise SystemExit(f"reconcile did not free the list: {proc.stderr}")
                        passes.append(took)
                        floors.append(timed([python, "-c", "pass"], env)[0])
                    finally:
                        shutil.rmtree(root)
                rows.append((where, owners, statistics.median(passes), statistics.median(floors)))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()},"
        f" Python {platform.python_version()}; {options.pids:,} dead PIDs on one list,"
        f" {options.rounds} rounds"
    )
    print()
    print("| state on | owner records | reconcile (s, median) | `python -c pass` (ms) | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for where, owners, took, floor in rows:
        fs = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "-T", where], capture_output=True, text=True
        ).stdout.split("\n")[0]
        print(
            f"| {where} ({fs}) | {'yes' if owners else 'no'} | {took:.3f} | {floor * 1000:.1f}"
            f" | {took / floor:.0f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
