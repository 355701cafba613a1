"""``kill -9`` of ``isolate``, ``reconcile`` and ``init`` at random instants, trial after trial.

After every trial: every file of the state parses; the long-lived tasks are all still listed;
every live process a killed isolate's command left is in a booking cgroup of the state, and no
CPU of an exclusive list runs processes of two bookings (every process's cgroup and
``Cpus_allowed_list``, read from /proc); after those processes end and one ``kcm reconcile``,
each list holds exactly its live tasks (no dead PID, no stray temp or owner file) and the only
booking cgroups left are the live tasks' own. A killed ``init`` leaves a complete state or none,
and the next ``init`` succeeds where it was killed. The isolates' commands leave processes
behind (``sleep &``, ``setsid sleep &``) or outlive a killed kcm (``exec sleep``).

    .venv/bin/python -m stress.crash --trials 1000
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

from stress import common
from stress.common import (
    KCM,
    Report,
    booked_by,
    booking_cgroups,
    kcm_env,
    make_state,
    marked,
    placed,
    scan,
    shared_cpus,
)
from stress.common import run as run_cmd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSFS = os.path.join(REPO, "examples", "sysfs", "seed-16cpu")
KINDS = ("isolate", "reconcile", "init")
# Lists over this machine's CPUs 0 and 1, so reconcile's affinity check holds for live tasks.
POOLS = {"dataplane": (True, ["0", "1"]), "controlplane": (False, ["0"]), "infra": (False, ["0-1"])}
LIVE = ("dataplane", "controlplane", "infra", "infra")  # long-lived tasks; dataplane/1 stays free
EXCLUSIVE = {name for name, (exclusive, _) in POOLS.items() if exclusive}
# What a killed isolate runs: nothing left behind, a background job, a daemon, a long command.
COMMANDS = ("true", "sleep 0.2 &", "setsid sleep 0.2 &", "exec sleep 0.3")
MARK = "KCM_STRESS_MARK"  # in the environment of every process one trial starts


class Crasher:
    def __init__(self, workdir: str, report: Report, rng: random.Random) -> None:
        self.workdir = workdir
        self.report = report
        self.rng = rng
        self.conf = make_state(os.path.join(workdir, "kcm"), POOLS)
        self.env = kcm_env(KCM_PROC_FS="/proc", KCM_SYS_FS=SYSFS)
        self.live: dict[int, subprocess.Popen[bytes]] = {}
        self.init_parent = os.path.join(workdir, "init")
        os.mkdir(self.init_parent)
        self.init_target = os.path.join(self.init_parent, "kcm")
        self.reference = ""
        self.durations: dict[str, float] = {}
        self.last_pid = 0  # the kcm the last trial killed
        self.transient: list[str] = []  # what was outside a booking at first look, then gone

    # -- helpers ------------------------------------------------------------------------

    def isolate(self, pool: str, command: str, mark: str = "") -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [KCM, "isolate", f"--conf-dir={self.conf}", f"--pool={pool}", command],
            env={**self.env, MARK: mark} if mark else self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_listed(self, pid: int, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(pid in pids for pids in scan(self.conf).tasks.values()):
                return True
            time.sleep(0.005)
        return False

    def timed(self, argv: list[str], runs: int = 7) -> float:
        times = []
        for _ in range(runs):
            start = time.monotonic()
            run_cmd(argv, self.env)
            times.append(time.monotonic() - start)
        return statistics.median(times)

    def kill_at_random(self, argv: list[str], kind: str, mark: str = "") -> bool:
        """Start ``argv`` and SIGKILL it at a random instant; whether it was still running."""
        proc = subprocess.Popen(
            argv, env={**self.env, MARK: mark} if mark else self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # Half the instants anywhere in the run, half past the interpreter's start-up, where
        # the writes are: both random, the second kind lands in the windows that matter more.
        d = self.durations[kind]
        low, high = (0.0, 1.25 * d) if self.rng.random() < 0.5 else (0.5 * d, 1.1 * d)
        time.sleep(self.rng.uniform(low, high))
        running = proc.poll() is None
        proc.kill()
        proc.wait()
        self.last_pid = proc.pid
        return running

    # -- set-up -------------------------------------------------------------------------

    def start(self) -> None:
        for pool in LIVE:
            proc = self.isolate(pool, "exec sleep 3600")
            if not self.wait_listed(proc.pid):
                raise SystemExit(f"stress: a long-lived isolate on {pool} was never listed")
            self.live[proc.pid] = proc
        self.expected = scan(self.conf).tasks
        # With a cgroup hierarchy (root), each live task holds a booking cgroup of its own.
        self.live_bookings = booking_cgroups(self.conf)
        self.cgroups = bool(self.live_bookings)
        self.report["booking_cgroups"] = "yes" if self.cgroups else "no (no writable cpuset)"
        self.durations["isolate"] = self.timed(
            [KCM, "isolate", f"--conf-dir={self.conf}", "--pool=dataplane", "true"]
        )
        self.durations["reconcile"] = self.timed([KCM, "reconcile", f"--conf-dir={self.conf}"])
        init = [KCM, "init", f"--conf-dir={self.init_target}"]
        times = []
        for _ in range(5):
            start = time.monotonic()
            result = run_cmd(init, self.env)
            times.append(time.monotonic() - start)
            if result.returncode != 0:
                raise SystemExit(f"stress: kcm init failed: {result.stderr.strip()}")
            self.reference = self.describe(self.init_target)
            shutil.rmtree(self.init_target)
        self.durations["init"] = statistics.median(times)
        for kind, seconds in self.durations.items():
            self.report[f"{kind}_median_ms"] = round(seconds * 1000, 1)

    def stop(self) -> None:
        for proc in self.live.values():
            proc.send_signal(signal.SIGTERM)  # kcm passes it on, then releases its list
        for proc in self.live.values():
            proc.wait(timeout=30)
        final = scan(self.conf)
        if any(final.tasks.values()) or final.hidden:
            self.report.fail(f"after stopping the live tasks: {final.tasks} {final.hidden}")
        if booking_cgroups(self.conf):
            self.report.fail(f"booking cgroups left at the end: {booking_cgroups(self.conf)}")

    def describe(self, conf_dir: str) -> str:
        result = run_cmd([KCM, "describe", f"--conf-dir={conf_dir}"], self.env)
        if result.returncode != 0:
            return f"describe failed: {result.stderr.strip()}"
        doc = json.loads(result.stdout)
        doc["path"] = "<path>"
        return json.dumps(doc, sort_keys=True)

    # -- trials -------------------------------------------------------------------------

    def trial_isolate(self, trial: int) -> bool:
        pool = self.rng.choice(list(POOLS))
        command = COMMANDS[trial // len(KINDS) % len(COMMANDS)]
        self.report.count(f"isolate_command_{command.split()[0]}")
        argv = [KCM, "isolate", f"--conf-dir={self.conf}", f"--pool={pool}", command]
        running = self.kill_at_random(argv, "isolate", mark=self.mark(trial))
        return running

    def mark(self, trial: int) -> str:
        return f"{os.getpid()}-{trial}"

    def trial_reconcile(self, trial: int) -> bool:
        # Leave two dead tasks behind (kcm and its command killed after booking) to clean up.
        for pool in ("infra", "dataplane"):
            mark = f"{self.mark(trial)}-{pool}"
            proc = self.isolate(pool, "exec sleep 3600", mark)
            if self.wait_listed(proc.pid):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            else:
                proc.kill()
                proc.wait()
            self.kill_marked(mark, proc.pid)
        return self.kill_at_random([KCM, "reconcile", f"--conf-dir={self.conf}"], "reconcile")

    def kill_marked(self, mark: str, kcm: int | None = None) -> None:
        """End what one trial started and wait for it: the processes its mark is on, and those
        in the booking cgroups the trial's kcm (``kcm``) made, which hold every process of its
        command (a child caught between vfork and exec may not show its environment yet)."""
        deadline = time.monotonic() + 10
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:
            left = set(marked(MARK, mark))
            if kcm is not None:
                left |= set(booked_by(self.conf, kcm))
            quiet = 0 if left else quiet + 1
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def trial_init(self, trial: int) -> bool:
        if trial % 2:
            os.mkdir(self.init_target)  # init into an existing empty directory (a mount point)
        running = self.kill_at_random([KCM, "init", f"--conf-dir={self.init_target}"], "init")
        outcome = self.init_outcome()
        self.report.count(f"init_{outcome}")
        if outcome == "partial":
            self.report.fail(f"trial {trial}: init left {sorted(os.listdir(self.init_target))}")
        if outcome != "complete":  # where init was killed, the next init must succeed
            again = run_cmd([KCM, "init", f"--conf-dir={self.init_target}"], self.env)
            if again.returncode != 0:
                self.report.fail(f"trial {trial}: init after a killed init: {again.stderr}")
            elif self.describe(self.init_target) != self.reference:
                self.report.fail(f"trial {trial}: init after a killed init made another state")
        shutil.rmtree(self.init_target, ignore_errors=True)
        return running

    def init_outcome(self) -> str:
        """complete, nothing (no pools: at most an empty lock and hidden leftovers), or partial."""
        target = self.init_target
        beside = [n for n in os.listdir(self.init_parent) if n.startswith(".")]
        inside = os.path.isdir(target) and any(n.startswith(".") for n in os.listdir(target))
        if beside or inside:
            self.report.count("init_killed_mid_build")
        if not os.path.lexists(target):
            return "nothing"
        names = [n for n in os.listdir(target) if not n.startswith(".")]
        if "pools" not in names:
            empty_lock = names == ["lock"] and os.path.getsize(f"{target}/lock") == 0
            return "nothing" if not names or empty_lock else "partial"
        return "complete" if self.describe(target) == self.reference else "partial"

    def check_cgroups(self, trial: int, kind: str) -> None:
        """Every process the trial left runs in a booking of the state, and no CPU of an
        exclusive list runs processes of two bookings; then the trial's processes end."""
        mark = self.mark(trial)
        left = marked(MARK, mark)
        if left:
            self.report.count(f"{kind}_left_processes_running")
        where = {p.pid: p for p in placed(self.conf)}
        outside = [pid for pid in left if pid not in where]
        if outside:
            # A process that is exiting has left its cgroup before it shows as a zombie:
            # look again a moment later, at the ones still alive.
            seen = [f"{pid}: {describe(pid)}" for pid in outside]
            time.sleep(0.1)
            where = {p.pid: p for p in placed(self.conf)}
            still = set(marked(MARK, mark))
            transient = [pid for pid in outside if pid not in still or pid in where]
            outside = [pid for pid in outside if pid in still and pid not in where]
            if transient:
                self.report.count("outside_at_first_look_then_gone", len(transient))
                self.transient.extend(f"trial {trial}: {line}" for line in seen)
        for pid in outside:
            self.report.count("processes_outside_their_booking")
            self.report.fail(
                f"trial {trial} ({kind}): PID {pid} runs outside any booking: {describe(pid)}"
            )
        for overlap in shared_cpus(list(where.values()), EXCLUSIVE):
            self.report.count("exclusive_cpus_shared")
            self.report.fail(f"trial {trial} ({kind}): {overlap}")
        self.kill_marked(mark, self.last_pid)

    def check(self, trial: int, kind: str) -> None:
        """The invariants after a killed command, then after one full reconcile."""
        if kind == "isolate":
            self.check_cgroups(trial, kind)
        found = scan(self.conf)
        live = {pid for pids in self.expected.values() for pid in pids}
        dead = sum(1 for pids in found.tasks.values() for pid in pids if pid not in live)
        if kind == "isolate" and dead:
            self.report.count("isolate_killed_holding_a_list")
        if kind == "reconcile" and dead == 1:  # of the two it was given
            self.report.count("reconcile_killed_half_way")
        if any(".tmp-" in name for name in found.hidden):
            self.report.count(f"{kind}_killed_mid_write")
        for torn in found.torn:
            self.report.fail(f"trial {trial} ({kind}): torn file {torn}")
        self.report.count("torn_files", len(found.torn))
        for key, pids in self.expected.items():
            lost = set(pids) - set(found.tasks.get(key, []))
            if lost:
                self.report.count("live_tasks_removed", len(lost))
                self.report.fail(f"trial {trial} ({kind}): live task(s) {lost} gone from {key}")
        result = run_cmd([KCM, "reconcile", f"--conf-dir={self.conf}"], self.env)
        if result.returncode != 0:
            self.report.fail(
                f"trial {trial}: reconcile exited {result.returncode}: {result.stderr}"
            )
        after = scan(self.conf)
        held = {key: pids for key, pids in after.tasks.items() if pids}
        if held != {k: v for k, v in self.expected.items() if v}:
            self.report.count("dead_held_after_reconcile")
            self.report.fail(f"trial {trial} ({kind}): after reconcile {held} != {self.expected}")
        owners = {f"{key}/.owner-{pid}" for key, pids in self.expected.items() for pid in pids}
        stray = set(after.hidden) - owners
        if stray:
            self.report.fail(f"trial {trial} ({kind}): stray files after reconcile {sorted(stray)}")
        left = booking_cgroups(self.conf)
        if self.cgroups and left != self.live_bookings:
            self.report.count("cgroups_reconcile_left")
            self.report.fail(f"trial {trial} ({kind}): booking cgroups {left} after reconcile")

    def run(self, trials: int, time_limit: float) -> None:
        deadline = time.monotonic() + time_limit
        for name in (
            "torn_files",
            "live_tasks_removed",
            "dead_held_after_reconcile",
            "processes_outside_their_booking",
            "exclusive_cpus_shared",
            "cgroups_reconcile_left",
        ):
            self.report.count(name, 0)
        done = dict.fromkeys(KINDS, 0)
        killed_running = dict.fromkeys(KINDS, 0)
        for trial in range(trials):
            if time.monotonic() > deadline:
                self.report.fail(f"time limit reached after {trial} trials")
                break
            kind = KINDS[trial % len(KINDS)]
            if kind == "isolate":
                running = self.trial_isolate(trial)
            elif kind == "reconcile":
                running = self.trial_reconcile(trial)
            else:
                running = self.trial_init(trial)
            done[kind] += 1
            killed_running[kind] += running
            self.check(trial, kind)
        self.report["trials"] = sum(done.values())
        for kind in KINDS:
            self.report[f"{kind}_trials"] = done[kind]
            self.report[f"{kind}_killed_while_running"] = killed_running[kind]
        for line in self.transient[:10]:
            print(f"outside at first look: {line}", file=sys.stderr)
        leftovers = [n for n in os.listdir(self.init_parent) if n.startswith(".")]
        self.report["init_leftovers_at_end"] = len(leftovers)
        if leftovers:
            self.report.fail(f"init left {leftovers} beside its target")


def describe(pid: int) -> str:
    """A process as /proc shows it: command line, state and cgroups (for a failure)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        with open(f"/proc/{pid}/cgroup") as f:
            where = ";".join(line for line in f.read().splitlines() if "cpuset" in line)
    except OSError as e:
        return f"gone ({e.strerror})"
    return f"{argv!r} state {state} {where}"


def stress(workdir: str, trials: int, time_limit: float, seed: int) -> Report:
    report = Report("crash", requested_trials=trials, seed=seed)
    crasher = Crasher(workdir, report, random.Random(seed))
    crasher.start()
    try:
        crasher.run(trials, time_limit)
    finally:
        crasher.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--time-limit", type=float, default=1200)
    p.add_argument("--seed", type=int, default=20261123)
    return common.main(p, argv, "crash", lambda a, d: stress(d, a.trials, a.time_limit, a.seed))


if __name__ == "__main__":
    sys.exit(main())
