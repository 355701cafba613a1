"""Many ``kcm isolate`` at once over exclusive and shared pools: no list is ever held twice.

Every command records its pool, list, affinity and the wall-clock interval it ran in; the
intervals of one exclusive list must never overlap. A share of the commands leave a process
behind (``sleep &`` or ``setsid sleep &``), which keeps its list booked after the command
exits. Meanwhile a sampler reads every file of the state without the lock and parses it,
checks that no exclusive list ever names two PIDs, and reads every process's cgroup and
``Cpus_allowed_list`` from /proc: no CPU of an exclusive list may run processes of two
bookings at once.

    .venv/bin/python -m stress.concurrency --isolates 1000
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from kcm import cpulist
from stress import common
from stress.common import (
    KCM,
    Report,
    booking_cgroups,
    exclusive_lists,
    kcm_env,
    make_state,
    pinned_part,
    placed,
    scan,
    shared_cpus,
    spread_lists,
    stderr_problem,
)
from stress.common import run as run_cmd

RECORDER = r"""#!/bin/bash
# $1: records directory, $2: seconds to hold the list, $3: what to leave behind when it exits
# (none, bg: a background sleep, setsid: a sleep in a session of its own). Forks only for sleep.
case $3 in
    bg) sleep "$2" </dev/null >/dev/null 2>&1 & ;;
    setsid) setsid sleep "$2" </dev/null >/dev/null 2>&1 & ;;
esac
t0=$EPOCHREALTIME
aff=
while read -r key value; do
    [[ $key == Cpus_allowed_list: ]] && aff=$value
done < /proc/$BASHPID/status
sleep "$2"
t1=$EPOCHREALTIME
printf '%s %s %s %s %s\n' "$KCM_POOL" "$KCM_CPUS_ASSIGNED" "$aff" "$t0" "$t1" > "$1/$BASHPID-$t0"
"""

EXCLUSIVE_POOL = "dataplane"
LEFTOVERS = ("bg", "setsid")
SHARED_POOL = "infra"
REFUSED = "kcm: error: no free CPU list in exclusive pool"
LOCK_TIMEOUT = "kcm: error: could not lock"


@dataclass(frozen=True)
class Record:
    pool: str
    cpu_list: str
    affinity: str
    start: float
    end: float


def read_records(directory: str) -> list[Record]:
    records = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            pool, cl, affinity, start, end = f.read().split()
        records.append(Record(pool, cl, affinity, float(start), float(end)))
    return records


def double_allocations(records: list[Record]) -> list[str]:
    """Each pair of overlapping intervals on one exclusive list, described."""
    by_list: dict[str, list[Record]] = {}
    for r in records:
        if r.pool == EXCLUSIVE_POOL:
            by_list.setdefault(r.cpu_list, []).append(r)
    found = []
    for name, held in by_list.items():
        held.sort(key=lambda r: r.start)
        latest = held[0]
        for r in held[1:]:
            if r.start < latest.end:
                found.append(
                    f"{EXCLUSIVE_POOL}/{name} held at once: [{latest.start}, {latest.end}]"
                    f" and [{r.start}, {r.end}]"
                )
            if r.end > latest.end:
                latest = r
    return found


class Sampler(threading.Thread):
    """Reads the state without the lock until stopped; counts samples and what was wrong."""

    def __init__(self, conf_dir: str, report: Report) -> None:
        super().__init__(daemon=True)
        self.conf_dir = conf_dir
        self.report = report
        self.stop = threading.Event()
        self.samples = 0
        self.process_scans = 0
        self.booked_processes_seen = 0
        self.describes = 0
        self.describe_lock_timeouts = 0
        self.files_read = 0

    def run(self) -> None:
        next_describe = 0.0
        while not self.stop.is_set():
            found = scan(self.conf_dir)
            self.samples += 1
            self.files_read += len(found.tasks) + len(found.exclusive)
            for torn in found.torn:
                self.report.fail(f"sample {self.samples}: torn file {torn}")
            for key, pids in found.tasks.items():
                if key.startswith(EXCLUSIVE_POOL + "/") and len(pids) > 1:
                    self.report.fail(f"sample {self.samples}: exclusive {key} lists {pids}")
            processes = placed(self.conf_dir)
            self.process_scans += 1
            self.booked_processes_seen += len(processes)
            for overlap in shared_cpus(processes, {EXCLUSIVE_POOL}):
                self.report.count("exclusive_cpus_shared")
                self.report.fail(f"process scan {self.process_scans}: {overlap}")
            if time.monotonic() >= next_describe:
                described = run_cmd([KCM, "describe", f"--conf-dir={self.conf_dir}"], kcm_env())
                self.describes += 1
                if described.returncode == 5 and not stderr_problem(
                    described.stderr, (LOCK_TIMEOUT,)
                ):
                    self.describe_lock_timeouts += 1  # a clean refusal, like an isolate's
                elif described.returncode != 0:
                    self.report.fail(f"describe under load: {described.stderr.strip()}")
                next_describe = time.monotonic() + 0.5


def stress(
    workdir: str,
    isolates: int,
    exclusive_count: int,
    shared_lists: int,
    hold: float,
    exclusive_share: float,
    time_limit: float,
    seed: int,
    leftover_share: float = 0.3,
) -> Report:
    report = Report(
        "concurrency",
        isolates=isolates,
        exclusive_lists=exclusive_count,
        shared_lists=shared_lists,
        hold_seconds=hold,
    )
    conf = make_state(
        os.path.join(workdir, "kcm"),
        {
            EXCLUSIVE_POOL: (True, exclusive_lists(exclusive_count, 2)),
            SHARED_POOL: (False, spread_lists(shared_lists, 2 + exclusive_count)),
        },
    )
    records_dir = os.path.join(workdir, "records")
    errors_dir = os.path.join(workdir, "stderr")
    os.mkdir(records_dir)
    os.mkdir(errors_dir)
    recorder = os.path.join(workdir, "record.sh")
    with open(recorder, "w") as f:
        f.write(RECORDER)
    os.chmod(recorder, 0o755)
    rng = random.Random(seed)
    pools = [
        EXCLUSIVE_POOL if rng.random() < exclusive_share else SHARED_POOL for _ in range(isolates)
    ]
    leaves = [rng.choice(LEFTOVERS) if rng.random() < leftover_share else "none" for _ in pools]
    report["left_processes_behind"] = sum(leave != "none" for leave in leaves)
    report.count("exclusive_cpus_shared", 0)
    env = kcm_env(KCM_PROC_FS="/proc")
    sampler = Sampler(conf, report)
    sampler.start()
    deadline = time.monotonic() + time_limit
    procs: list[subprocess.Popen[bytes]] = []
    for i, pool in enumerate(pools):
        with open(os.path.join(errors_dir, str(i)), "wb") as err_file:
            procs.append(
                subprocess.Popen(
                    [
                        KCM,
                        "isolate",
                        f"--conf-dir={conf}",
                        f"--pool={pool}",
                        f"exec {recorder}",
                        "--",
                        records_dir,
                        str(hold),
                        leaves[i],
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err_file,
                )
            )
    report["launch_seconds"] = round(time.monotonic() - report.started, 1)
    counts = {"ran": 0, "refused_exhausted": 0, "lock_timeouts": 0}
    for i, (proc, pool) in enumerate(zip(procs, pools, strict=True)):
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # kcm passes it on and releases its list
            code = proc.wait()
            report.fail(f"isolate {i} still running at the time limit")
        with open(os.path.join(errors_dir, str(i))) as f:
            err = f.read()
        if code == 0:
            counts["ran"] += 1
            if err:
                report.fail(f"isolate {i} ran but wrote to stderr: {err.strip()[:200]!r}")
        elif code == 4 and pool == EXCLUSIVE_POOL:
            counts["refused_exhausted"] += 1
            problem = stderr_problem(err, (REFUSED,))
            if problem:
                report.fail(f"isolate {i} (exit 4): {problem}")
        elif code == 5:
            counts["lock_timeouts"] += 1
            problem = stderr_problem(err, (LOCK_TIMEOUT,))
            if problem:
                report.fail(f"isolate {i} (exit 5): {problem}")
        else:
            report.fail(f"isolate {i} on {pool} exited {code}: {err.strip()[:300]!r}")
    # The last leftovers outlive their commands by up to ``hold``: then one reconcile frees
    # the lists their heirs held (the next isolate would, but none comes).
    time.sleep(hold + 0.5)
    sampler.stop.set()
    sampler.join()
    settled = run_cmd([KCM, "reconcile", f"--conf-dir={conf}"], env)
    if settled.returncode != 0:
        report.fail(f"reconcile at the end exited {settled.returncode}: {settled.stderr[:300]!r}")
    records = read_records(records_dir)
    for key, value in counts.items():
        report[key] = value
    report["records"] = len(records)
    if len(records) != counts["ran"]:
        report.fail(f"{counts['ran']} isolates ran but {len(records)} commands recorded")
    wrong_affinity = [
        r for r in records if set(cpulist.parse(r.affinity)) != pinned_part(r.cpu_list)
    ]
    report["wrong_affinity"] = len(wrong_affinity)
    for r in wrong_affinity[:5]:
        report.fail(f"{r.pool}/{r.cpu_list} ran on CPUs {r.affinity}")
    exclusive_runs = [r for r in records if r.pool == EXCLUSIVE_POOL]
    report["exclusive_runs"] = len(exclusive_runs)
    report["shared_runs"] = len(records) - len(exclusive_runs)
    report["exclusive_lists_used"] = len({r.cpu_list for r in exclusive_runs})
    doubles = double_allocations(records)
    report["double_allocations"] = len(doubles)
    for d in doubles:
        report.fail(d)
    report["samples"] = sampler.samples
    report["process_scans"] = sampler.process_scans
    report["booked_processes_seen"] = sampler.booked_processes_seen
    report["files_parsed_in_samples"] = sampler.files_read
    report["describes_under_load"] = sampler.describes
    report["describe_lock_timeouts"] = sampler.describe_lock_timeouts
    torn = sum(1 for f in report.failures if "torn file" in f)
    report["torn_files"] = torn
    final = scan(conf)
    left = {key: pids for key, pids in final.tasks.items() if pids}
    report["tasks_left"] = sum(len(p) for p in left.values())
    report["hidden_files_left"] = len(final.hidden)
    if left:
        report.fail(f"tasks left at the end: {left}")
    if final.hidden:
        report.fail(f"hidden files left at the end: {final.hidden[:5]}")
    left_cgroups = booking_cgroups(conf)
    report["booking_cgroups_left"] = len(left_cgroups)
    if left_cgroups:
        report.fail(f"booking cgroups left at the end: {left_cgroups[:5]}")
    return report


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--isolates", type=int, default=1000)
    # An exclusive pool's lists may not share a CPU: at most one per online CPU.
    p.add_argument("--exclusive-lists", type=int, default=len(common.online_cpus()))
    p.add_argument("--shared-lists", type=int, default=8)
    p.add_argument("--hold", type=float, default=0.3, help="seconds each command runs")
    p.add_argument("--exclusive-share", type=float, default=0.6)
    p.add_argument(
        "--leftover-share", type=float, default=0.3, help="commands that leave a process behind"
    )
    p.add_argument("--time-limit", type=float, default=600)
    p.add_argument("--seed", type=int, default=20261123)

    def run(a: argparse.Namespace, workdir: str) -> Report:
        return stress(
            workdir, a.isolates, a.exclusive_lists, a.shared_lists, a.hold,
            a.exclusive_share, a.time_limit, a.seed, a.leftover_share,
        )  # fmt: skip

    return common.main(p, argv, "concurrency", run)


if __name__ == "__main__":
    sys.exit(main())
