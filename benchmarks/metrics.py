"""What kcm metrics' reconcile and fence families cost, against peers measured in the same run.

    .venv/bin/python benchmarks/metrics.py [--rounds 30]

1. The reconcile loop records its totals once per pass (``kcm.totals.record``: the lock, temp
   file, fsync, rename, fsync the directory). Timed in process, alternating with the pass it
   follows (``kcm.reconcile.reconcile`` over a state of 64 lists, 16 of them held by this
   process, on this host's /proc) and with a bare ``os.fsync`` of a 200-byte file in the
   same directory (the floor of any durable write there).
2. A scrape's audit of the dataplane (``kcm.fence.command.audit_now``: one sample without
   ``sched``, then the judgement) against the first sample of ``kcm audit``
   (``HostReader.sample`` with ``sched``) and against its own read alone, on
   fake hosts of 380 and 5,000 threads where every thread may run on the dataplane CPUs (the
   worst case: each one's cgroup is read too), and on this host's real /proc.
3. ``kcm metrics`` once, as a process, with an exclusive dataplane pool (the audit runs) and
   with the same pool shared (it does not), on the 380-thread fake host.

Medians; ratios are the result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.audit import build  # noqa: E402
from kcm import reconcile, totals  # noqa: E402
from kcm.fence.audit import DataplaneList  # noqa: E402
from kcm.fence.command import audit_now, cgroup_bookings  # noqa: E402
from kcm.fence.reader import HostReader  # noqa: E402
from tests.fixtures.state import build_state  # noqa: E402

KCM = str(Path(sys.executable).parent / "kcm")
LISTS = (
    DataplaneList("4,12", frozenset({4, 12}), ()),
    DataplaneList("5,13", frozenset({5, 13}), ()),
    DataplaneList("6,14", frozenset({6, 14}), ()),
    DataplaneList("7,15", frozenset({7, 15}), ()),
)


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def recording(where: str, rounds: int) -> None:
    lists = {f"{i},{i + 64}": (str(os.getpid()) if i < 16 else "") for i in range(64)}
    conf = build_state(f"{where}/kcm", {"infra": (False, lists)})
    counted = totals.Totals(pid=os.getpid(), started=time.time(), interval=60.0)
    floor = f"{where}/kcm/.floor"

    def fsync_floor() -> None:
        fd = os.open(floor, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"x" * 200)
            os.fsync(fd)
        finally:
            os.close(fd)

    def record() -> None:
        nonlocal counted
        counted = counted.after_pass(time.time(), 0.001, ok=True)
        totals.record(conf, counted)

    found = interleaved(
        {
            "pass": lambda: reconcile.reconcile(conf, "/proc"),
            "record": record,
            "fsync": fsync_floor,
        },
        rounds,
    )
    print("1. recording the totals, per pass (64 lists, 16 held)")
    print(f"   reconcile pass          {found['pass']:8.2f} ms")
    print(
        f"   totals.record           {found['record']:8.2f} ms"
        f"  ({found['record'] / found['pass']:.2f}x the pass,"
        f" {found['record'] / found['fsync']:.2f}x one fsync)"
    )
    print(f"   one fsync'ed write      {found['fsync']:8.2f} ms")


def audits(where: str, rounds: int) -> None:
    print("2. the scrape's audit against kcm audit's first sample")
    hosts = {}
    for threads in (380, 5000):
        hosts[f"fake, {threads} threads"] = build(f"{where}/host{threads}", threads, fenced=False)
    dataplane = frozenset().union(*(cl.cpus for cl in LISTS))
    for name, host in hosts.items():
        reader = HostReader(host.proc, host.sys, host.cgroup)
        booking_of = cgroup_bookings(f"{where}/kcm", host.cgroup)
        found = interleaved(
            {
                "instant": lambda r=reader, b=booking_of: audit_now(
                    f"{where}/kcm", LISTS, r, booking_of=b
                ),
                "sample": lambda r=reader, b=booking_of: r.sample(
                    dataplane, time.monotonic, booking_of=b
                ),
                "read": lambda r=reader, b=booking_of: r.sample(
                    dataplane, time.monotonic, booking_of=b, sched=False
                ),
            },
            rounds if "380" in name else max(3, rounds // 6),
        )
        print(
            f"   {name:24} audit_now {found['instant']:8.2f} ms"
            f" ({found['instant'] / found['sample']:.2f}x a sample with sched,"
            f" {found['sample']:.2f} ms; its read alone, without sched, {found['read']:.2f} ms)"
        )
    real = HostReader("/proc", "/sys", "/sys/fs/cgroup")
    one = (DataplaneList("1", frozenset({1}), ()),)
    n = sum(len(os.listdir(f"/proc/{p}/task")) for p in os.listdir("/proc") if p.isdigit())
    found = interleaved(
        {
            "instant": lambda: audit_now(
                f"{where}/kcm",
                one,
                real,
                booking_of=cgroup_bookings(f"{where}/kcm", "/sys/fs/cgroup"),
            ),
            "sample": lambda: real.sample(frozenset({1}), time.monotonic),
        },
        rounds,
    )
    print(
        f"   {f'this host, ~{n} threads':24} audit_now {found['instant']:8.2f} ms"
        f" ({found['instant'] / found['sample']:.2f}x a sample with sched,"
        f" {found['sample']:.2f} ms)"
    )


def scrape(where: str, rounds: int) -> None:
    host = build(f"{where}/scrape-host", 380, fenced=False)
    env = {**os.environ, **host.env()}
    lists = {cl.name: "" for cl in LISTS}
    exclusive = build_state(f"{where}/exclusive", {"dataplane": (True, lists)})
    shared = build_state(f"{where}/shared", {"dataplane": (False, lists)})

    def run(conf: str) -> Callable[[], object]:
        argv = [KCM, "metrics", f"--conf-dir={conf}"]
        return lambda: subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)

    found = interleaved({"with": run(exclusive), "without": run(shared)}, rounds)
    print("3. kcm metrics once, 380-thread fake host")
    print(
        f"   with the audit {found['with']:8.2f} ms, without {found['without']:8.2f} ms"
        f" ({found['with'] / found['without']:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="kcm-bench-metrics-") as where:
        recording(where, args.rounds)
        audits(where, args.rounds)
        scrape(where, max(5, args.rounds // 3))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
