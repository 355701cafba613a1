"""What pinning buys: a spin task alone and beside saturated infra CPUs, with and without kcm.

The state is made by ``kcm init`` from this machine's own topology (one dataplane core, the rest
infra). Each round measures four runs of a spin task that counts loop iterations per second:

- ``kcm_idle``: the spin task under ``kcm isolate --pool=dataplane``, nothing else running;
- ``kcm_loaded``: the same while CPU hogs (two per infra CPU) run under
  ``kcm isolate --pool=infra``;
- ``unpinned_idle`` and ``unpinned_loaded``: the same spin task and hogs without kcm.

The figures are medians over rounds, run in alternating order. On a VM whose vCPUs share a host
core a pinned task still loses to a busy neighbour vCPU; that loss is no scheduling of ours.

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
SCENARIOS = ("kcm_idle", "kcm_loaded", "unpinned_idle", "unpinned_loaded")


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

    def start_hogs(self, pinned: bool) -> list[subprocess.Popen[bytes]]:
        python = sys.executable
        if pinned:
            argv = [KCM, "isolate", f"--conf-dir={self.conf}", "--pool=infra", f"exec {python}"]
            argv += ["--", "-c", HOG]
        else:
            argv = [python, "-c", HOG]
        return [subprocess.Popen(argv, env=self.env) for _ in range(self.hogs)]

    def stop_hogs(self, hogs: list[subprocess.Popen[bytes]]) -> None:
        for hog in hogs:
            hog.send_signal(signal.SIGTERM)  # kcm passes it on to its command, then releases
        for hog in hogs:
            hog.wait(timeout=30)

    def check_hogs(self, hogs: list[subprocess.Popen[bytes]]) -> None:
        """Under kcm every hog's command really runs on the infra CPUs only."""
        time.sleep(0.3)
        for hog in hogs:
            with open(f"/proc/{hog.pid}/task/{hog.pid}/children") as f:
                kids = [int(p) for p in f.read().split()]
            if len(kids) != 1 or allowed_cpus(kids[0]) != self.infra:
                self.report.fail(f"hog {hog.pid} is not pinned to the infra CPUs")

    def spin(self, pinned: bool) -> float:
        python = sys.executable
        if pinned:
            argv = [KCM, "isolate", f"--conf-dir={self.conf}", "--pool=dataplane"]
            argv += [f"exec {python}", "--", "-c", SPIN, str(self.seconds)]
        else:
            argv = [python, "-c", SPIN, str(self.seconds)]
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            self.report.fail(f"spin task failed: {out.stderr.strip()}")
            return 0.0
        result = json.loads(out.stdout)
        expected = self.dataplane if pinned else set(os.sched_getaffinity(0))
        if set(result["cpus"]) != expected:
            self.report.fail(f"spin task ran on {result['cpus']}, expected {sorted(expected)}")
        return float(result["rate"])

    def measure(self, scenario: str) -> float:
        pinned = scenario.startswith("kcm")
        hogs = self.start_hogs(pinned) if scenario.endswith("loaded") else []
        try:
            if hogs and pinned:
                self.check_hogs(hogs)
            elif hogs:
                time.sleep(0.3)
            return self.spin(pinned)
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
    if all(medians.values()):
        kcm_ratios = [a / b for a, b in zip(rates["kcm_loaded"], rates["kcm_idle"], strict=True)]
        unpinned_ratios = [
            a / b for a, b in zip(rates["unpinned_loaded"], rates["unpinned_idle"], strict=True)
        ]
        report["kcm_loaded_over_idle"] = round(statistics.median(kcm_ratios), 3)
        report["kcm_ratio_range"] = f"{min(kcm_ratios):.3f}-{max(kcm_ratios):.3f}"
        report["unpinned_loaded_over_idle"] = round(statistics.median(unpinned_ratios), 3)
        report["unpinned_ratio_range"] = f"{min(unpinned_ratios):.3f}-{max(unpinned_ratios):.3f}"
        report["kcm_idle_over_unpinned_idle"] = round(
            medians["kcm_idle"] / medians["unpinned_idle"], 3
        )
        report["goal_95_percent_met"] = statistics.median(kcm_ratios) >= 0.95
    return report


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each spin run")
    return common.main(p, argv, "isolation", lambda a, d: stress(d, a.rounds, a.seconds))


if __name__ == "__main__":
    sys.exit(main())
