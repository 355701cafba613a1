"""What pinning buys: a spin task alone and beside saturated infra CPUs, with and without kcm.

The state is made by ``kcm init`` from this machine's own topology (one dataplane core, the rest
infra). Each round measures a spin task that counts loop iterations per second, alone
(``*_idle``) and while CPU hogs, two per infra CPU, keep the infra CPUs busy (``*_loaded``),
three ways:

- ``kcm``: the spin task under ``kcm isolate --pool=dataplane``, the hogs under
  ``kcm isolate --pool=infra``;
- ``taskset``: the same CPUs pinned with ``taskset -c``, the peer kcm is compared with;
- ``unpinned``: neither pinned.

The figures are medians over rounds, run in alternating order. On a VM whose vCPUs share a host
core a pinned task still loses to a busy neighbour vCPU; taskset shows how much of the loss
that is, since no pinning tool can win it back.

    .venv/bin/python -m stress.isolation --rounds 5 --seconds 5
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time

from kcm import cpulist
from stress import common
from stress.common import KCM, Report, kcm_env

SPIN = """
import json, os, sys, time
seconds = float(sys.argv[1])
count = 0
start = time.perf_counter()
end = start + seconds
while True:
    for _ in range(20000):
        count += 1
    now = time.perf_counter()
    if now >= end:
        break
print(json.dumps({"rate": count / (now - start), "cpus": sorted(os.sched_getaffinity(0))}))
"""
HOG = "while True: pass"
HOWS = ("kcm", "taskset", "unpinned")
SCENARIOS = tuple(f"{how}_{load}" for how in HOWS for load in ("idle", "loaded"))


def allowed_cpus(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return set(cpulist.parse(line.split(":", 1)[1].strip()))
    return set()


class Bench:
    def __init__(self, workdir: str, report: Report, seconds: float) -> None:
        self.report = report
        self.seconds = seconds
        self.conf = os.path.join(workdir, "kcm")
        self.env = kcm_env(KCM_PROC_FS="/proc", KCM_SYS_FS="/sys")
        ncpus = len(os.sched_getaffinity(0))
        init = subprocess.run(
            [KCM, "init", f"--conf-dir={self.conf}", "--num-dp-cores=1", "--num-cp-cores=0"],
            env=self.env, capture_output=True, text=True,
        )  # fmt: skip
        if init.returncode != 0:
            raise SystemExit(f"stress: kcm init on this machine failed: {init.stderr.strip()}")
        doc = json.loads(
            subprocess.run(
                [KCM, "describe", f"--conf-dir={self.conf}"],
                env=self.env, capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        self.dataplane = set(cpulist.parse(next(iter(doc["pools"]["dataplane"]["cpuLists"]))))
        self.infra = set(cpulist.parse(next(iter(doc["pools"]["infra"]["cpuLists"]))))
        self.hogs = 2 * len(self.infra)
        report["cpus"] = ncpus
        report["dataplane_cpus"] = cpulist.format(sorted(self.dataplane))
        report["infra_cpus"] = cpulist.format(sorted(self.infra))
        report["hogs"] = self.hogs

    def start_hogs(self, how: str) -> list[subprocess.Popen[bytes]]:
        argv = self.argv(how, self.infra, "infra", ["-c", HOG])
        return [subprocess.Popen(argv, env=self.env) for _ in range(self.hogs)]

    def argv(self, how: str, cpus: set[int], pool: str, args: list[str]) -> list[str]:
        """The Python command ``args`` run ``how``: under kcm isolate, taskset, or neither."""
        python = sys.executable
        if how == "kcm":
            kcm = [KCM, "isolate", f"--conf-dir={self.conf}", f"--pool={pool}"]
            return [*kcm, f"exec {python}", "--", *args]
        if how == "taskset":
            return ["taskset", "-c", cpulist.format(sorted(cpus)), python, *args]
        return [python, *args]

    def stop_hogs(self, hogs: list[subprocess.Popen[bytes]]) -> None:
        for hog in hogs:
            hog.send_signal(signal.SIGTERM)  # kcm passes it on to its command, then releases
        for hog in hogs:
            hog.wait(timeout=30)

    def check_hogs(self, hogs: list[subprocess.Popen[bytes]], how: str) -> None:
        """Every pinned hog really runs on the infra CPUs only (under kcm: kcm's command)."""
        time.sleep(0.3)
        for hog in hogs:
            pid = hog.pid
            if how == "kcm":
                # On a loaded machine kcm may not have spawned its command yet: wait for it.
                deadline = time.monotonic() + 10
                while True:
                    with open(f"/proc/{pid}/task/{pid}/children") as f:
                        kids = [int(p) for p in f.read().split()]
                    if kids or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                pid = kids[0] if len(kids) == 1 else -1
            if pid < 0 or allowed_cpus(pid) != self.infra:
                self.report.fail(f"{how} hog {hog.pid} is not pinned to the infra CPUs")

    def spin(self, how: str) -> float:
        argv = self.argv(how, self.dataplane, "dataplane", ["-c", SPIN, str(self.seconds)])
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            self.report.fail(f"{how} spin task failed: {out.stderr.strip()}")
            return 0.0
        result = json.loads(out.stdout)
        expected = set(os.sched_getaffinity(0)) if how == "unpinned" else self.dataplane
        if set(result["cpus"]) != expected:
            self.report.fail(f"{how} spin task ran on {result['cpus']}, not {sorted(expected)}")
        return float(result["rate"])

    def measure(self, scenario: str) -> float:
        how, _, load = scenario.partition("_")
        hogs = self.start_hogs(how) if load == "loaded" else []
        try:
            if hogs and how != "unpinned":
                self.check_hogs(hogs, how)
            elif hogs:
                time.sleep(0.3)
            return self.spin(how)
        finally:
            self.stop_hogs(hogs)


def stress(workdir: str, rounds: int, seconds: float) -> Report:
    report = Report("isolation", rounds=rounds, seconds_per_run=seconds)
    bench = Bench(workdir, report, seconds)
    rates: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    for r in range(rounds):
        order = SCENARIOS if r % 2 == 0 else tuple(reversed(SCENARIOS))
        for scenario in order:
            rates[scenario].append(bench.measure(scenario))
    medians = {s: statistics.median(v) for s, v in rates.items()}
    for s in SCENARIOS:
        report[f"{s}_rate_median"] = round(medians[s])
    if not all(medians.values()):
        return report
    ratio: dict[str, float] = {}
    for how in HOWS:
        per_round = [
            a / b for a, b in zip(rates[f"{how}_loaded"], rates[f"{how}_idle"], strict=True)
        ]
        ratio[how] = statistics.median(per_round)
        report[f"{how}_loaded_over_idle"] = round(ratio[how], 3)
        report[f"{how}_ratio_range"] = f"{min(per_round):.3f}-{max(per_round):.3f}"
    report["kcm_idle_over_taskset_idle"] = round(medians["kcm_idle"] / medians["taskset_idle"], 3)
    report["kcm_ratio_over_taskset_ratio"] = round(ratio["kcm"] / ratio["taskset"], 3)
    report["goal_95_percent_met"] = ratio["kcm"] >= 0.95
    return report


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each spin run")
    return common.main(p, argv, "isolation", lambda a, d: stress(d, a.rounds, a.seconds))


if __name__ == "__main__":
    sys.exit(main())
