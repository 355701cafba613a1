"""How long ``kcm audit`` takes over a host of thousands of threads, against peers, in one run.

    .venv/bin/python benchmarks/audit.py [--threads 5000] [--rounds 5]

A fake /proc, /sys and cgroup tree (real files, as the tests build them) of a 16-CPU host with
the seeds' four dataplane lists, in two shapes: unfenced (every thread may run on a dataplane
CPU, so the audit reads each one's sched and cgroup as well) and fenced (only the bookings and
the per-CPU kernel threads touch the dataplane CPUs). Peers, measured alternating with it:
the interpreter's ``-c pass`` and ``cat`` of every thread's ``stat`` and ``status`` (the two
files the audit must read of each thread, in C). Medians; ratios are the result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.hostfs import PER_CPU_KTHREAD, FakeHost  # noqa: E402
from tests.fixtures.state import build_state  # noqa: E402

KCM = str(Path(sys.executable).parent / "kcm")
DATAPLANE = {"4,12": "", "5,13": "", "6,14": "", "7,15": ""}


def build(where: str, threads: int, fenced: bool) -> FakeHost:
    host = FakeHost(where, cpus=16)
    allowed = "0-3,8-11" if fenced else "0-15"
    host.cpusets["/"].load_balance = not fenced
    tid = 1000
    while tid - 1000 < threads:
        pid = tid
        for _ in range(5):
            host.thread(pid, "worker", tid % 4, allowed, tid=tid, runtime_ns=tid * 1000)
            tid += 1
    for cpu in range(16):
        host.thread(100 + cpu, f"ksoftirqd/{cpu}", cpu, str(cpu), flags=PER_CPU_KTHREAD)
    for irq in range(64):
        host.irq(100 + irq, f"eth0-q{irq}", allowed, str(irq % 4), counts={irq % 16: irq})
    host.write()
    return host


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        conf = build_state(
            f"{tmp}/kcm", {"dataplane": (True, DATAPLANE), "infra": (False, {"0-3,8-11": ""})}
        )
        hosts = {
            shape: build(f"{tmp}/{shape}", args.threads, shape == "fenced")
            for shape in ("unfenced", "fenced")
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KCM_", "CMK_"))}
        cases: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], None),
        }
        for shape, host in hosts.items():
            cases[f"kcm audit, {shape}"] = (
                [KCM, "audit", f"--conf-dir={conf}", "--interval=0.001", "--output=json"],
                {**env, **host.env()},
            )
        proc = hosts["unfenced"].proc
        cases["cat stat+status of each thread"] = (
            ["sh", "-c", 'cat "$0"/*/task/*/stat "$0"/*/task/*/status >/dev/null', proc],
            None,
        )
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (argv, case_env) in cases.items():
                times[name].append(timed(argv, case_env))
    floor = statistics.median(times["python -c pass"])
    threads = args.threads + 16
    print(f"{threads} threads, 64 IRQs, 16 CPUs, {args.rounds} rounds, medians:")
    print("| case | median (ms) | vs `python -c pass` |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.1f} | {median / floor:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
