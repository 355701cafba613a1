"""The fence, for real, inside the project's guest kernel (never on a development host).

Two parts, each a function the guest tests call at small scale:

- ``kill_trials``: ``kcm shield`` and ``kcm unshield`` killed with SIGKILL at random instants,
  each followed by a rerun; after every rerun of shield the host must be exactly what one clean
  shield makes of it (every cpuset file, IRQ affinity and workqueue mask byte for byte, and no
  task outside a booking left on a dataplane CPU), and after every rerun of unshield exactly
  the host from before (the same files, byte for byte).
- ``measure``: a spin task booked by ``kcm isolate --pool=dataplane`` on the last CPU, beside
  CPU hogs started without kcm (one per vCPU) and an interrupt source (9p reads, whose
  ``virtio0-requests`` IRQ is steered onto the dataplane CPU while unfenced, as an
  unconfigured host may have it), measured in three cases interleaved over many rounds after a
  warm-up: ``idle`` (the spin task alone, no fence), ``unfenced`` (hogs and IRQs, no fence)
  and ``fenced`` (the same after ``kcm shield``). Per case: threads other than the booking's
  that ran on the dataplane CPU (``kcm audit``'s ``ran`` yes/maybe, and a scan of
  ``/proc/*/task/*/stat`` and ``sched``), the spin task's involuntary context switches per
  second (``/proc/<pid>/status``), its loop rate against idle, and interrupts per second on the
  CPU (``/proc/interrupts``).

From the host, through the guest harness (4 vCPUs)::

    .venv/bin/python -m tests.guest.harness --cgroup v1 --timeout 1800 \\
        .venv/bin/python -m stress.fence --trials 40 --rounds 12 --seconds 5
    .venv/bin/python -m tests.guest.harness --cgroup v2 --timeout 1800 \\
        .venv/bin/python -m stress.fence --trials 40 --rounds 12 --seconds 5

It refuses to run anywhere but the guest: it moves every process and IRQ of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kcm import cpulist
from kcm.host import cgroups, threads

BIN = os.path.dirname(sys.executable)
KCM = os.path.join(BIN, "kcm")
CGROUP_FS = "/sys/fs/cgroup"
# Counters and lists the kernel changes by itself: not what the shield sets or restores.
VOLATILE = frozenset({"cpuset.memory_pressure", "cgroup.procs", "tasks", "cgroup.threads"})
# The 9p device's request queue: it fires on every read of the share (docs/guest.md).
IRQ_SOURCE_NAME = "virtio0-requests"


def require_guest() -> str:
    """The guest's mode (``v1``/``v2``); anywhere else, exit: this moves every process."""
    from tests.guest.marker import guest_mode

    mode = guest_mode()
    if mode is None:
        sys.exit("stress.fence: only inside the project's guest (see tests/guest/harness.py)")
    return mode


def kcm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KCM_", "CMK_"))}
    env["KCM_PROC_FS"] = "/proc"
    done = subprocess.run(
        [KCM, *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kcm {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done


def kcm_popen(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KCM_", "CMK_"))}
    env["KCM_PROC_FS"] = "/proc"
    return subprocess.Popen(
        [KCM, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


_T0 = time.monotonic()


def progress(message: str) -> None:
    """A line on stderr with the seconds since start: long runs in the guest say where they are."""
    sys.stderr.write(f"[{time.monotonic() - _T0:7.1f} s] {message}\n")
    sys.stderr.flush()


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None


# -- what the shield sets and unshield restores ----------------------------------------------


def fence_files() -> dict[str, str]:
    """Every file the shield may set: each cpuset's files (and v2 ``cgroup.subtree_control``),
    every IRQ's ``smp_affinity`` and ``smp_affinity_list``, ``default_smp_affinity`` and the
    workqueue cpumasks. ``effective_affinity`` is the kernel's pick within them, not a setting."""
    out: dict[str, str] = {}
    found = cgroups.find_hierarchy(CGROUP_FS)
    assert found is not None, "no cpuset hierarchy in the guest"
    for dirpath, _, filenames in os.walk(found[1]):
        for name in sorted(filenames):
            if name in VOLATILE:
                continue
            if name.startswith("cpuset.") or name == "cgroup.subtree_control":
                text = read(f"{dirpath}/{name}")
                if text is not None:
                    out[f"{dirpath}/{name}"] = text
    for entry in sorted(e for e in os.listdir("/proc/irq") if e.isdigit()):
        for name in ("smp_affinity", "smp_affinity_list"):
            text = read(f"/proc/irq/{entry}/{name}")
            if text is not None:
                out[f"/proc/irq/{entry}/{name}"] = text
    for path in (
        "/proc/irq/default_smp_affinity",
        "/sys/devices/virtual/workqueue/cpumask",
        "/sys/devices/virtual/workqueue/cpumask_requested",
    ):
        text = read(path)
        if text is not None:
            out[path] = text
    return out


def differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [
        f"{path}: {a.get(path)!r} != {b.get(path)!r}"
        for path in sorted(set(a) | set(b))
        if a.get(path) != b.get(path)
    ]


@dataclass(frozen=True)
class Task:
    pid: int
    tid: int
    ppid: int
    comm: str
    kernel: bool
    no_setaffinity: bool
    allowed: frozenset[int]
    processor: int
    runtime_ns: int
    cgroup: str


def tasks() -> dict[int, Task]:
    """Every thread now, by tid."""
    found = cgroups.find_hierarchy(CGROUP_FS)
    kind = found[0] if found else "v2"
    out = {}
    for pid in threads.list_pids("/proc"):
        for tid in threads.list_tids("/proc", pid):
            base = f"/proc/{pid}/task/{tid}"
            stat, status = read(f"{base}/stat"), read(f"{base}/status")
            sched, cg = read(f"{base}/sched"), read(f"{base}/cgroup")
            if stat is None or status is None or sched is None or cg is None:
                continue
            st = threads.parse_task_stat(stat)
            allowed = threads.parse_status_allowed(status) or frozenset()
            out[tid] = Task(
                pid,
                tid,
                st.ppid,
                st.comm,
                st.kernel,
                st.no_setaffinity,
                allowed,
                st.processor,
                threads.parse_sched(sched).runtime_ns,
                cgroups.parse_proc_cgroup(cg, kind) or "/",
            )
    return out


def booked(all_tasks: dict[int, Task], roots: set[int]) -> set[int]:
    """PIDs of the bookings: ``roots`` (the tasks files' PIDs) and their descendants, and what
    runs in a booking cgroup of kcm's subtree."""
    parents = {t.pid: t.ppid for t in all_tasks.values() if t.pid == t.tid}
    out = set(roots)
    for pid in parents:
        chain, cur = [], pid
        while cur > 0 and cur not in out and cur not in chain:
            chain.append(cur)
            cur = parents.get(cur, 0)
        if cur in out:
            out.update(chain)
    out.update(t.pid for t in all_tasks.values() if t.cgroup.startswith("/kcm/"))
    return out


def unfenced(dataplane: frozenset[int], roots: set[int]) -> list[str]:
    """Threads outside the bookings that may still run on a dataplane CPU and could be moved:
    user threads, and kernel threads the kernel lets move (not kthreadd's children born since,
    which reconcile moves). Empty on a shielded host."""
    now = tasks()
    bookings = booked(now, roots)
    bad = []
    for t in now.values():
        if t.pid in bookings or t.allowed.isdisjoint(dataplane):
            continue
        if t.kernel and (t.no_setaffinity or len(t.allowed) == 1):
            continue  # the kernel keeps these where they are; the shield reports them
        bad.append(f"{t.comm} ({t.pid}/{t.tid}) allowed {cpulist.format(t.allowed)} in {t.cgroup}")
    return bad


# -- a state and its booking -------------------------------------------------------------------


@dataclass
class Fixture:
    conf: str
    dataplane: frozenset[int]
    booking: subprocess.Popen[str] | None = None
    roots: set[int] = field(default_factory=set)

    def tasks_file(self) -> str:
        return f"{self.conf}/pools/dataplane/{cpulist.format(self.dataplane)}/tasks"


def make_state(conf: str) -> Fixture:
    """``kcm init`` of the guest: one dataplane core (the last CPU), one controlplane core."""
    kcm("init", f"--conf-dir={conf}", "--num-dp-cores=1", "--num-cp-cores=1", "--quiet")
    names = os.listdir(f"{conf}/pools/dataplane")
    (name,) = [n for n in names if n != "exclusive"]
    return Fixture(conf, cpulist.parse(name))


def book(fx: Fixture, command: str) -> None:
    """``kcm isolate --pool=dataplane <command>``, until its PID is in the tasks file."""
    fx.booking = kcm_popen("isolate", f"--conf-dir={fx.conf}", "--pool=dataplane", command)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = (read(fx.tasks_file()) or "").strip()
        if text:
            fx.roots = {int(p) for p in text.split(",")}
            return
        if fx.booking.poll() is not None:
            raise AssertionError(f"kcm isolate exited {fx.booking.returncode}")
        time.sleep(0.05)
    raise AssertionError("kcm isolate never booked its list")


def release(fx: Fixture) -> None:
    if fx.booking is not None and fx.booking.poll() is None:
        fx.booking.send_signal(signal.SIGTERM)
        try:
            fx.booking.wait(30)
        except subprocess.TimeoutExpired:
            fx.booking.kill()
            fx.booking.wait()


@contextmanager
def state(conf: str, command: str = "sleep 3600") -> Iterator[Fixture]:
    """A state with its dataplane list booked by ``command``; unshielded and released after,
    also when the caller fails."""
    fx = make_state(conf)
    try:
        book(fx, command)
        yield fx
    finally:
        kcm("unshield", f"--conf-dir={conf}", "--quiet", check=False)
        release(fx)


# -- kill -9 at random instants --------------------------------------------------------------


@dataclass
class Trials:
    """Per command (``shield``, ``unshield``): runs killed before their first save of the
    record, killed after it (mid-way: steps done, others not), and runs that finished first."""

    killed_before_save: dict[str, int] = field(default_factory=lambda: {"shield": 0, "unshield": 0})
    killed_after_save: dict[str, int] = field(default_factory=lambda: {"shield": 0, "unshield": 0})
    finished_first: dict[str, int] = field(default_factory=lambda: {"shield": 0, "unshield": 0})
    spans: dict[str, float] = field(default_factory=dict)  # a clean run, and its first save
    failures: list[str] = field(default_factory=list)


def killed_run(args: list[str], delay: float, saved: tuple[str, str] | None = None) -> int | None:
    """Start ``kcm <args>`` and SIGKILL it ``delay`` seconds later: after its start, or, with
    ``saved`` (the state directory, a phase), after the record first says that phase. Its
    exit status if it ended first, else None. Under TCG the interpreter's start-up varies by
    seconds from run to run, so a kill timed from the start rarely lands in the short span
    between the save and the end."""
    proc = kcm_popen(*args)
    try:
        if saved is not None:
            conf, marker = saved
            while proc.poll() is None and record_phase(conf) != marker:
                time.sleep(0.002)
        proc.wait(delay)
        return proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def record_phase(conf: str) -> str | None:
    text = read(f"{conf}/.shield.json")
    return None if text is None else str(json.loads(text)["phase"])


def timed_run(args: list[str], conf: str, saved: str) -> tuple[float, float]:
    """A clean ``kcm <args>``: how long it took, and when the record first said ``saved``
    (the first save, before any change), polled every 5 ms."""
    started = time.monotonic()
    proc = kcm_popen(*args)
    first = None
    while proc.poll() is None:
        if first is None and record_phase(conf) == saved:
            first = time.monotonic() - started
        time.sleep(0.005)
    span = time.monotonic() - started
    if proc.returncode != 0:
        raise AssertionError(f"kcm {' '.join(args)}: exit {proc.returncode}")
    return span, span if first is None else first


def kill_trials(fx: Fixture, trials: int, seed: int) -> Trials:
    """``trials`` times: shield killed at a random instant, shield again, compare with a clean
    shield; unshield killed at a random instant, unshield again, compare with the start.

    Most of a run under TCG is the interpreter starting: a fifth of the kills land anywhere
    before the record's first save, the rest between it and the end, where steps are done,
    timed from the save itself (``killed_run``'s ``saved``)."""
    rng = random.Random(seed)
    conf = f"--conf-dir={fx.conf}"
    original = fence_files()
    out = Trials()
    windows = {}
    windows["shield"] = timed_run(["shield", conf, "--quiet"], fx.conf, "shielding")
    shielded = fence_files()
    windows["unshield"] = timed_run(["unshield", conf, "--quiet"], fx.conf, "unshielding")
    out.spans = {
        f"{command}_{what}": round(value, 2)
        for command, (span, first) in windows.items()
        for what, value in (("seconds", span), ("first_save", first))
    }
    if differences(fence_files(), original):
        out.failures.append("a clean unshield: " + "; ".join(differences(fence_files(), original)))
        return out
    for trial in range(trials):
        progress(f"kill trial {trial + 1}/{trials}")
        for command, target in (("shield", shielded), ("unshield", original)):
            span, first = windows[command]
            marker = "shielding" if command == "shield" else "unshielding"
            if rng.random() < 0.2:
                delay = rng.uniform(0, first)
                code = killed_run([command, conf, "--quiet"], delay)
            else:
                delay = rng.uniform(0, max(span - first, 0.05))
                code = killed_run([command, conf, "--quiet"], delay, (fx.conf, marker))
            phase = record_phase(fx.conf)
            if code is not None:
                out.finished_first[command] += 1
            elif phase == marker:
                out.killed_after_save[command] += 1
            else:
                out.killed_before_save[command] += 1
            kcm(command, conf, "--quiet")
            again = differences(fence_files(), target)
            if again:
                out.failures.append(f"trial {trial}, {command} killed at {delay:.2f} s: {again}")
            if command == "shield":
                left = unfenced(fx.dataplane, fx.roots)
                if left:
                    out.failures.append(f"trial {trial}: after shield, still unfenced: {left}")
                if record_phase(fx.conf) != "shielded":
                    out.failures.append(f"trial {trial}: record {record_phase(fx.conf)}")
            elif record_phase(fx.conf) is not None:
                out.failures.append(f"trial {trial}: a record after unshield")
    return out


# -- the measurement ---------------------------------------------------------------------------

SPIN = """
import os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, struct.pack("qq", os.getpid(), 0), 0)
n = 0
while True:
    for _ in range(10000):
        n += 1
    os.pwrite(fd, struct.pack("q", n), 8)
"""


def spin_state(path: str) -> tuple[int, int]:
    """(pid, iterations) the spin task last wrote."""
    with open(path, "rb") as f:
        data = f.read(16)
    pid, count = struct.unpack("qq", data) if len(data) == 16 else (0, 0)
    return pid, count


def involuntary(pid: int) -> int:
    for line in (read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split(":")[1])
    raise AssertionError(f"no such process {pid}")


def cpu_interrupts(cpu: int, irq: int | None) -> tuple[int, int, int]:
    """Interrupts on ``cpu`` so far: all of them, IRQ ``irq``'s, and the local timer's."""
    from kcm.host.interrupts import parse_interrupts

    table = parse_interrupts(read("/proc/interrupts") or "")
    source = table.count(str(irq), cpu) if irq is not None else None
    return table.total(cpu), source or 0, table.count("LOC", cpu) or 0


def irq_by_name(name: str) -> int | None:
    for entry in os.listdir("/proc/irq"):
        if entry.isdigit() and os.path.isdir(f"/proc/irq/{entry}/{name}"):
            return int(entry)
    return None


@dataclass
class Round:
    case: str
    rate: float
    involuntary_per_s: float
    interrupts_per_s: float
    source_irq_per_s: float  # the 9p request IRQ's, on the dataplane CPU
    timer_per_s: float  # the local timer's (LOC), on the dataplane CPU
    intruders_audit: int  # threads the audit says ran there (yes/maybe), the booking's aside
    intruders_scan: int  # threads seen on the CPU at either sample that ran meanwhile
    audit_clean: bool
    intruders: list[str]


@dataclass(frozen=True)
class Seen:
    """A thread at one sample: where it last ran and its CPU time so far."""

    pid: int
    comm: str
    processor: int
    runtime_ns: int
    bound_to: int | None  # the one CPU of a kernel thread bound there by the kernel


_BOUND: dict[tuple[int, int], int | None] = {}


def seen() -> dict[int, Seen]:
    """Every thread's last CPU and CPU time: ``stat`` and ``sched`` (and, once per kernel
    thread the kernel will not move, ``status``), the least a sample needs under TCG."""
    out = {}
    for pid in threads.list_pids("/proc"):
        for tid in threads.list_tids("/proc", pid):
            base = f"/proc/{pid}/task/{tid}"
            stat, sched = read(f"{base}/stat"), read(f"{base}/sched")
            if stat is None or sched is None:
                continue
            st = threads.parse_task_stat(stat)
            bound = None
            if st.kernel and st.no_setaffinity:
                key = (tid, st.start_time)
                if key not in _BOUND:
                    allowed = threads.parse_status_allowed(read(f"{base}/status") or "")
                    _BOUND[key] = min(allowed) if allowed and len(allowed) == 1 else None
                bound = _BOUND[key]
            out[tid] = Seen(
                pid, st.comm, st.processor, threads.parse_sched(sched).runtime_ns, bound
            )
    return out


def ran_there(
    before: dict[int, Seen], after: dict[int, Seen], cpu: int, skip: set[int]
) -> list[str]:
    """Threads outside ``skip`` (PIDs) that were on ``cpu`` at either sample and ran between
    them; kernel threads the kernel binds to it aside."""
    out = []
    for tid, t in after.items():
        b = before.get(tid)
        if t.pid in skip or t.bound_to == cpu:
            continue
        grew = b is None or t.runtime_ns > b.runtime_ns
        if not grew:
            continue
        if t.processor != cpu:
            if b is None or b.processor != cpu:
                continue
            # Last on the CPU at the first sample only: moved off while asleep (the kernel
            # leaves its last CPU as it was) and woken elsewhere, it could not have run here
            # if its affinity, narrowed before the round, still excludes the CPU.
            allowed = threads.parse_status_allowed(read(f"/proc/{t.pid}/task/{tid}/status") or "")
            if allowed is not None and cpu not in allowed:
                continue
        out.append(f"{t.comm} ({t.pid}/{tid})")
    return out


def one_round(fx: Fixture, counter: str, case: str, seconds: float) -> Round:
    cpu = min(fx.dataplane)
    spin_pid, count0 = spin_state(counter)
    irq = irq_by_name(IRQ_SOURCE_NAME)
    inv0, irq0 = involuntary(spin_pid), cpu_interrupts(cpu, irq)
    before = seen()
    t0 = time.monotonic()
    audit = kcm(
        "audit", f"--conf-dir={fx.conf}", f"--interval={seconds}", "-o", "json", check=False
    )
    t1 = time.monotonic()
    after = seen()
    _, count1 = spin_state(counter)
    inv1, irq1 = involuntary(spin_pid), cpu_interrupts(cpu, irq)
    elapsed = t1 - t0
    doc = json.loads(audit.stdout)
    (report,) = doc["cpus"]
    ran = [t for t in report["threads"] if t["ran"] in ("yes", "maybe")]
    skip = booked(tasks(), fx.roots) | {os.getpid()}
    scan = ran_there(before, after, cpu, skip)
    return Round(
        case=case,
        rate=(count1 - count0) / elapsed,
        involuntary_per_s=(inv1 - inv0) / elapsed,
        interrupts_per_s=(irq1[0] - irq0[0]) / elapsed,
        source_irq_per_s=(irq1[1] - irq0[1]) / elapsed,
        timer_per_s=(irq1[2] - irq0[2]) / elapsed,
        intruders_audit=len(ran),
        intruders_scan=len(scan),
        audit_clean=bool(doc["clean"]),
        intruders=sorted({f"{t['command']} ({t['pid']})" for t in ran} | set(scan))[:10],
    )


# "apart" is the control: the same load kept off the dataplane CPU by hand (taskset and
# smp_affinity_list, no kcm). Where "fenced" reads like it, what it loses against idle is
# lost to the host (vCPUs that share host CPUs), not to the fence.
CASES = ("idle", "unfenced", "fenced", "apart")


@dataclass(frozen=True)
class Load:
    """What competes with the spin task: ``hogs`` unpinned CPU hogs (``while :; do :; done``,
    started without kcm), ``pinned`` more pinned onto the dataplane CPU with ``taskset`` (an
    unmanaged process someone pinned there), all at ``nice``, and a loop of 9p reads."""

    hogs: int = 4
    pinned: int = 0
    nice: int = 0


def measure(
    fx: Fixture, counter: str, rounds: int, seconds: float, warmup: float, load_spec: Load
) -> list[Round]:
    """The three cases in a rotating order, ``rounds`` times, after ``warmup`` seconds of the
    spin task alone (TCG translates code the first time it runs: early rounds read low)."""
    conf = f"--conf-dir={fx.conf}"
    irq = irq_by_name(IRQ_SOURCE_NAME)
    hogs: list[subprocess.Popen[bytes]] = []
    reader: subprocess.Popen[bytes] | None = None
    out: list[Round] = []
    share = str(Path(__file__).resolve().parent.parent / "README.md")
    niced = ["nice", "-n", str(load_spec.nice)]
    spin = ["sh", "-c", "while :; do :; done"]

    def load(on: bool) -> None:
        nonlocal reader
        if on and not hogs:
            cpu = str(min(fx.dataplane))
            hogs.extend(subprocess.Popen([*niced, *spin]) for _ in range(load_spec.hogs))
            hogs.extend(
                subprocess.Popen([*niced, "taskset", "-c", cpu, *spin])
                for _ in range(load_spec.pinned)
            )
            # Reads of the 9p share: the virtio request IRQ fires on each.
            loop = f"while :; do cat {share} > /dev/null; done"
            reader = subprocess.Popen([*niced, "sh", "-c", loop])
        if not on:
            for p in [*hogs, *([reader] if reader else [])]:
                p.kill()
                p.wait()
            hogs.clear()
            reader = None

    online = frozenset(range(os.cpu_count() or 1))
    others = online - fx.dataplane
    time.sleep(warmup)
    try:
        for r in range(rounds):
            order = CASES[r % len(CASES) :] + CASES[: r % len(CASES)]
            for case in order:
                load(case != "idle")
                steer = str(min(fx.dataplane))
                if case == "fenced":
                    kcm("shield", conf, "--quiet")
                elif case == "apart":
                    steer = cpulist.format(others)
                    for p in [*hogs, *([reader] if reader else [])]:
                        os.sched_setaffinity(p.pid, others)
                if irq is not None and case != "fenced":
                    # Unfenced, the interrupt source fires on the dataplane CPU, as it may on a
                    # host nobody steered; apart, off it by hand.
                    Path(f"/proc/irq/{irq}/smp_affinity_list").write_text(steer)
                progress(f"round {r + 1}/{rounds}: {case}")
                out.append(one_round(fx, counter, case, seconds))
                if case == "fenced":
                    kcm("unshield", conf, "--quiet")
                elif case == "apart":
                    for p in [*hogs, *([reader] if reader else [])]:
                        os.sched_setaffinity(p.pid, online)
    finally:
        load(False)
    return out


QUANTITIES = (
    "rate",
    "involuntary_per_s",
    "interrupts_per_s",
    "source_irq_per_s",
    "timer_per_s",
    "intruders_audit",
    "intruders_scan",
)


def ranges(rounds: list[Round]) -> dict[str, dict[str, list[float]]]:
    """Per case, each measured quantity's smallest and largest round (and the loop rate's
    against the idle rounds' median)."""
    out: dict[str, dict[str, list[float]]] = {}
    idle = [r.rate for r in rounds if r.case == "idle"]
    idle_median = statistics.median(idle) if idle else None
    for case in CASES:
        these = [r for r in rounds if r.case == case]
        if not these:
            continue
        out[case] = {
            name: [min(getattr(r, name) for r in these), max(getattr(r, name) for r in these)]
            for name in QUANTITIES
        }
        if idle_median:
            out[case]["rate_vs_idle"] = [
                min(r.rate for r in these) / idle_median,
                max(r.rate for r in these) / idle_median,
            ]
    return out


def summary(rounds: list[Round], skip_first: int = 0) -> dict[str, dict[str, float]]:
    """Medians per case (and the worst intruder count), the first ``skip_first`` of each case
    left out."""
    out: dict[str, dict[str, float]] = {}
    for case in CASES:
        these = [r for r in rounds if r.case == case][skip_first:]
        if not these:
            continue
        out[case] = {
            "rounds": len(these),
            "rate": statistics.median(r.rate for r in these),
            "involuntary_per_s": statistics.median(r.involuntary_per_s for r in these),
            "involuntary_per_s_max": max(r.involuntary_per_s for r in these),
            "interrupts_per_s": statistics.median(r.interrupts_per_s for r in these),
            "source_irq_per_s": statistics.median(r.source_irq_per_s for r in these),
            "timer_per_s": statistics.median(r.timer_per_s for r in these),
            "intruders_audit_max": max(r.intruders_audit for r in these),
            "intruders_scan_max": max(r.intruders_scan for r in these),
            "audit_clean_rounds": sum(r.audit_clean for r in these),
        }
    idle = out.get("idle", {}).get("rate")
    for case in out:
        if idle:
            out[case]["rate_vs_idle"] = out[case]["rate"] / idle
    return out


def run_measurement(
    conf: str, rounds: int, seconds: float, warmup: float, load: Load = Load()
) -> dict[str, object]:
    counter = f"{os.path.dirname(conf)}/spin-counter"
    spin = f"{sys.executable} -c '{SPIN}' {counter}"
    progress("booking the spin task")
    with state(conf, spin) as fx:
        progress("waiting for the spin task")
        deadline = time.monotonic() + 60
        while not (os.path.exists(counter) and spin_state(counter)[0]):
            if time.monotonic() > deadline:
                raise AssertionError("the spin task never started")
            time.sleep(0.1)
        raw = measure(fx, counter, rounds, seconds, warmup, load)
        progress("done; unshielding and releasing")
    return {
        "load": load.__dict__,
        "rounds_per_case": rounds,
        "seconds": seconds,
        "summary": summary(raw),
        "ranges": ranges(raw),
        "rounds": [r.__dict__ for r in raw],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="kill -9 trials per command")
    parser.add_argument("--rounds", type=int, default=8, help="measurement rounds")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per case")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before round one")
    parser.add_argument("--hogs", type=int, default=4, help="unpinned CPU hogs")
    parser.add_argument("--pinned", type=int, default=0, help="hogs pinned to the dataplane CPU")
    parser.add_argument("--nice", type=int, default=0, help="the load's nice value")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    mode = require_guest()
    import tempfile

    report: dict[str, object] = {
        "mode": mode,
        "kernel": os.uname().release,
        # Boot-time isolation the guest was given (tests.guest.harness --kernel-arg), if any.
        "nohz_full": (read("/sys/devices/system/cpu/nohz_full") or "").strip(),
        "isolated": (read("/sys/devices/system/cpu/isolated") or "").strip(),
    }
    with tempfile.TemporaryDirectory(prefix="kcm-fence-") as tmp:
        if args.trials:
            started = time.monotonic()
            with state(f"{tmp}/trials") as fx:
                trials = kill_trials(fx, args.trials, args.seed)
            report["trials"] = {**trials.__dict__, "seconds": round(time.monotonic() - started)}
        if args.rounds:
            load = Load(args.hogs, args.pinned, args.nice)
            report["measure"] = run_measurement(
                f"{tmp}/measure/kcm", args.rounds, args.seconds, args.warmup, load
            )
    print(json.dumps(report, indent=1, default=str))
    trials_ok = not report.get("trials") or not trials.failures
    return 0 if trials_ok else 1


if __name__ == "__main__":
    sys.exit(main())
