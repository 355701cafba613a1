"""The audit's judgement: from two samples of the host and its settings, who intrudes on each
dataplane CPU. A pure function over values; ``kcm.fence.reader`` reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from kcm.host.cpusets import CpusetTree
from kcm.host.interrupts import CounterTable, CpuTimes, IrqAffinity
from kcm.host.isolation import Isolation

# /proc reports utime and stime in USER_HZ, which is 100 on every Linux architecture.
NS_PER_TICK = 10_000_000


@dataclass(frozen=True, slots=True)
class ThreadSample:
    """One thread at one instant. ``runtime_ns`` and ``migrations`` come from ``sched``
    (or ``schedstat``, runtime only) and are ``None`` where they were not read;
    ``allowed`` is ``None`` where ``status`` was not read."""

    pid: int
    tid: int
    comm: str
    ppid: int
    kernel: bool
    no_setaffinity: bool
    processor: int
    start_time: int
    ticks: int
    runtime_ns: int | None = None
    migrations: int | None = None
    allowed: frozenset[int] | None = None
    cgroup: str | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """The host at one instant: its threads by tid and its per-CPU counters."""

    at: float
    threads: Mapping[int, ThreadSample]
    interrupts: CounterTable
    softirqs: CounterTable
    cpu_times: Mapping[int, CpuTimes]


@dataclass(frozen=True, slots=True)
class DataplaneList:
    """One CPU list of the exclusive dataplane pool and the PIDs its tasks file names."""

    name: str
    cpus: frozenset[int]
    tasks: tuple[int, ...]
    nodes: str = "-"  # the NUMA node(s) of its CPUs, in cpu-list form; "-" when unknown


@dataclass(frozen=True, slots=True)
class AuditInput:
    """Everything the audit judges. ``bookings`` maps a PID to the dataplane list whose
    booking it belongs to; ``shield`` is the shield record's phase, ``None`` without one."""

    conf_dir: str
    lists: tuple[DataplaneList, ...]
    bookings: Mapping[int, str]
    start: Sample
    end: Sample
    irqs: tuple[IrqAffinity, ...]
    isolation: Isolation
    cpusets: CpusetTree | None
    shield: str | None = None


class Ran(StrEnum):
    """Whether a thread ran on the audited CPU during the interval, as far as two samples
    tell: ``yes``; ``maybe`` (it was there at the start, and ran, but not there at the end);
    ``not-seen`` (it ran, but was not seen there; a visit between the samples is possible);
    ``no`` (it did not run at all, or stayed on another CPU throughout)."""

    YES = "yes"
    MAYBE = "maybe"
    NOT_SEEN = "not-seen"
    NO = "no"


RAN_ORDER = {Ran.YES: 0, Ran.MAYBE: 1, Ran.NOT_SEEN: 2, Ran.NO: 3}


@dataclass(frozen=True, slots=True)
class ThreadFinding:
    pid: int
    tid: int
    command: str
    kernel: bool
    movable: bool
    cgroup: str | None
    allowed: frozenset[int] | None
    ran: Ran
    last_cpu: int
    cpu_time_ns: int


@dataclass(frozen=True, slots=True)
class PerCpuThread:
    pid: int
    tid: int
    command: str


@dataclass(frozen=True, slots=True)
class UnmovableThread:
    """A kernel thread allowed on the CPU that the kernel will not move (PF_NO_SETAFFINITY:
    the rescuers of per-CPU workqueues, an idle unbound worker of an old pool) and that was
    not seen running there: no fence can move it at run time, and it intrudes once it runs."""

    pid: int
    tid: int
    command: str
    allowed: frozenset[int] | None


@dataclass(frozen=True, slots=True)
class IrqFinding:
    irq: int
    name: str
    affinity: frozenset[int]
    effective: bool  # affinity is effective_affinity_list (else smp_affinity_list)
    settable: bool
    count: int


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    """Whether the scheduler balances load onto the CPU; ``why`` says what decides it."""

    off: bool
    why: str


@dataclass(frozen=True, slots=True)
class CpuAudit:
    cpu: int
    cpu_list: str
    booking: tuple[int, ...]
    nodes: str  # the list's NUMA node(s) (DataplaneList.nodes)
    threads: tuple[ThreadFinding, ...]
    per_cpu_threads: tuple[PerCpuThread, ...]
    irqs: tuple[IrqFinding, ...]
    unmovable_threads: tuple[UnmovableThread, ...]
    moving_irqs: tuple[IrqFinding, ...]  # steered off, not yet moved: see audit()
    interrupts_per_s: float
    softirqs_per_s: float
    softirqs: tuple[tuple[str, float], ...]
    irq_time_pct: float | None
    softirq_time_pct: float | None
    load_balancing: LoadBalancing
    isolated_at_boot: bool | None
    nohz_full_at_boot: bool | None
    cmdline: tuple[tuple[str, bool], ...]
    workqueue: bool | None
    default_irq_affinity: bool | None

    @property
    def clean(self) -> bool:
        return not self.threads and not self.irqs


@dataclass(frozen=True, slots=True)
class AuditReport:
    conf_dir: str
    interval_s: float
    cgroup_version: str | None
    cgroup_mount: str | None
    isolation: Isolation
    shield: str | None
    cpus: tuple[CpuAudit, ...]

    @property
    def clean(self) -> bool:
        return all(cpu.clean for cpu in self.cpus)


def bookings_by_tree(
    lists: tuple[DataplaneList, ...], parents: Mapping[int, int]
) -> dict[int, str]:
    """PID -> list name for every process whose ancestry reaches a PID of a list's tasks.

    This is the seed's booking (the root PIDs in tasks, and what they started); where
    bookings are held by cgroups, the caller adds what the cgroups say.
    """
    roots = {pid: cl.name for cl in lists for pid in cl.tasks}
    out: dict[int, str] = {}
    for pid in parents:
        seen: list[int] = []
        cur: int | None = pid
        owner: str | None = None
        while cur is not None and cur > 0 and cur not in seen:
            if cur in out:
                owner = out[cur]
                break
            seen.append(cur)
            if cur in roots:
                owner = roots[cur]
                break
            cur = parents.get(cur)
        if owner is not None:
            for p in seen:
                out[p] = owner
    return out


def _runtime_delta(start: ThreadSample | None, end: ThreadSample) -> int:
    """Nanoseconds of CPU time between the samples (from the thread's birth if it is new)."""
    if start is not None and start.runtime_ns is not None and end.runtime_ns is not None:
        return max(0, end.runtime_ns - start.runtime_ns)
    if start is None and end.runtime_ns is not None:
        return end.runtime_ns
    base = start.ticks if start is not None else 0
    return max(0, end.ticks - base) * NS_PER_TICK


def ran_on(cpu: int, start: ThreadSample | None, end: ThreadSample | None) -> tuple[Ran, int]:
    """Whether a thread ran on ``cpu`` between its samples, and its CPU time meanwhile.

    ``processor`` is where a thread last ran or is queued; ``se.nr_migrations`` unchanged
    means it never left that CPU.
    """
    if end is None:  # exited during the interval: it ran to exit, somewhere
        assert start is not None
        return (Ran.MAYBE if start.processor == cpu else Ran.NOT_SEEN), 0
    delta = _runtime_delta(start, end)
    # A thread whose last CPU changed was scheduled meanwhile, even if its CPU time (in
    # ticks, when only those were sampled at the start) did not show it.
    moved = start is not None and start.processor != end.processor
    if delta == 0 and not moved:
        return Ran.NO, 0
    allowed = end.allowed if end.allowed is not None else (start.allowed if start else None)
    if allowed == frozenset({cpu}):
        return Ran.YES, delta
    start_migrations = 0 if start is None else start.migrations
    if start_migrations is not None and end.migrations == start_migrations:
        return (Ran.YES if end.processor == cpu else Ran.NO), delta
    if end.processor == cpu:
        return Ran.YES, delta
    if start is not None and start.processor == cpu:
        return Ran.MAYBE, delta
    return Ran.NOT_SEEN, delta


def _excluded_throughout(start: ThreadSample | None, end: ThreadSample | None, cpu: int) -> bool:
    """Whether the thread's allowed CPUs, read at both samples, excluded ``cpu``."""
    return all(
        x is not None and x.allowed is not None and cpu not in x.allowed for x in (start, end)
    )


def _rate(start: CounterTable, end: CounterTable, cpu: int, elapsed: float) -> float:
    total = 0
    for source in end.rows:
        before = start.count(source, cpu)
        after = end.count(source, cpu)
        if before is not None and after is not None and after > before:
            total += after - before
    return total / elapsed if elapsed > 0 else 0.0


def _softirq_rates(
    start: CounterTable, end: CounterTable, cpu: int, elapsed: float
) -> tuple[tuple[str, float], ...]:
    out = []
    for source in end.rows:
        before = start.count(source, cpu)
        after = end.count(source, cpu)
        if before is None or after is None or elapsed <= 0:
            continue
        out.append((source, max(0, after - before) / elapsed))
    return tuple(out)


def _time_pct(
    start: Mapping[int, CpuTimes], end: Mapping[int, CpuTimes], cpu: int
) -> tuple[float | None, float | None]:
    a, b = start.get(cpu), end.get(cpu)
    if a is None or b is None or b.total <= a.total:
        return None, None
    span = b.total - a.total
    return 100.0 * (b.irq - a.irq) / span, 100.0 * (b.softirq - a.softirq) / span


def load_balancing(
    cpu: int, own_list: frozenset[int], tree: CpusetTree | None, isolated: frozenset[int] | None
) -> LoadBalancing:
    """Whether the scheduler may pull other work onto ``cpu`` or push it away.

    Boot isolation (``isolcpus=domain``) takes a CPU out of every scheduling domain. On cgroup
    v1 a cpuset with ``sched_load_balance=1`` makes one domain of its CPUs, so ``cpu`` is
    balanced while any such cpuset covers it and a CPU outside its own list (a booking's own
    cpuset, holding only its list, balances nothing but the booking). On v2 an isolated
    partition (listed by the root's ``cpuset.cpus.isolated`` where the kernel has it) does it.
    """
    boot = isolated or frozenset()
    if cpu in boot:
        return LoadBalancing(True, "isolated at boot (isolcpus)")
    if tree is None:
        return LoadBalancing(False, "no cpuset hierarchy, and not isolated at boot")
    if tree.version == "v1":
        balancing = [
            cs for cs in tree.covering(cpu) if cs.load_balance and (cs.effective - own_list - boot)
        ]
        if not balancing:
            return LoadBalancing(True, "sched_load_balance is 0 in every cpuset spanning it")
        names = ", ".join(cs.path for cs in balancing[:3])
        more = f" and {len(balancing) - 3} more" if len(balancing) > 3 else ""
        return LoadBalancing(False, f"sched_load_balance=1 in {names}{more}")
    if tree.isolated is not None and cpu in tree.isolated:
        return LoadBalancing(True, "in an isolated partition (cpuset.cpus.isolated)")
    for cs in tree.cpusets:
        if cs.isolated_partition and cpu in cs.effective:
            return LoadBalancing(True, f"in the isolated partition {cs.path}")
    return LoadBalancing(False, "no isolated cpuset partition holds it")


def _member(cpus: frozenset[int] | None, cpu: int) -> bool | None:
    return None if cpus is None else cpu in cpus


def _cmdline_flags(isolation: Isolation, cpu: int) -> tuple[tuple[str, bool], ...]:
    """Which boot parameters name ``cpu``: always the same five keys."""

    def covers(name: str) -> bool:
        param = isolation.cmdline.get(name)
        return param is not None and (param.all or (param.cpus is not None and cpu in param.cpus))

    isolcpus = isolation.cmdline.get("isolcpus")
    return (
        ("irqaffinity", covers("irqaffinity")),
        ("isolcpus", covers("isolcpus")),
        (
            "isolcpus_managed_irq",
            covers("isolcpus") and isolcpus is not None and "managed_irq" in isolcpus.flags,
        ),
        ("nohz_full", covers("nohz_full")),
        ("rcu_nocbs", covers("rcu_nocbs")),
    )


def audit(inp: AuditInput) -> AuditReport:
    """Judge every dataplane CPU: its intruding threads and IRQs, and its settings."""
    elapsed = inp.end.at - inp.start.at
    cpus: list[CpuAudit] = []
    seen = []  # (start, end, either, allowed anywhere in the interval)
    for tid in sorted(set(inp.start.threads) | set(inp.end.threads)):
        s = inp.start.threads.get(tid)
        e = inp.end.threads.get(tid)
        if s is not None and e is not None and s.start_time != e.start_time:
            s = None  # the tid was reused: the thread at the end is another one, born since
        t = e if e is not None else s
        assert t is not None
        allowed_sets = [x.allowed for x in (s, e) if x is not None and x.allowed is not None]
        allowed = frozenset().union(*allowed_sets) if allowed_sets else None
        seen.append((s, e, t, allowed))
    for cl in sorted(inp.lists, key=lambda c: min(c.cpus)):
        for cpu in sorted(cl.cpus):
            threads: list[ThreadFinding] = []
            per_cpu: list[PerCpuThread] = []
            unmovable: list[UnmovableThread] = []
            for s, e, t, allowed in seen:
                here = any(x is not None and x.processor == cpu for x in (s, e))
                if not (here or (allowed is not None and cpu in allowed)):
                    continue
                if inp.bookings.get(t.pid) == cl.name:
                    continue
                if t.kernel and t.no_setaffinity and allowed == frozenset({cpu}):
                    per_cpu.append(PerCpuThread(t.pid, t.tid, t.comm))
                    continue
                ran, cpu_time = ran_on(cpu, s, e)
                if ran is Ran.NO and allowed is not None and cpu not in allowed:
                    # Its last CPU, from before its affinity was narrowed while it slept: it
                    # can no longer run here, and did not.
                    continue
                if ran is Ran.MAYBE and _excluded_throughout(s, e, cpu):
                    # The same, woken meanwhile: placed within its affinity, elsewhere. Its
                    # affinity excluded the CPU at both samples, so it ran here only if the
                    # affinity was widened and narrowed again between them.
                    continue
                if t.kernel and t.no_setaffinity and ran in (Ran.NO, Ran.NOT_SEEN):
                    unmovable.append(UnmovableThread(t.pid, t.tid, t.comm, allowed))
                    continue
                threads.append(
                    ThreadFinding(
                        pid=t.pid,
                        tid=t.tid,
                        command=t.comm,
                        kernel=t.kernel,
                        movable=not t.no_setaffinity,
                        cgroup=t.cgroup,
                        allowed=allowed,
                        ran=ran,
                        last_cpu=t.processor,
                        cpu_time_ns=cpu_time,
                    )
                )
            threads.sort(key=lambda f: (RAN_ORDER[f.ran], f.pid, f.tid))
            irqs = []
            moving = []
            for irq in inp.irqs:
                label = str(irq.irq)
                before = inp.start.interrupts.count(label, cpu)
                after = inp.end.interrupts.count(label, cpu)
                count = max(0, after - before) if before is not None and after is not None else 0
                if cpu in irq.fires_on or count:
                    name = irq.name or inp.end.interrupts.names.get(label, "")
                    finding = IrqFinding(
                        irq.irq,
                        name,
                        irq.fires_on,
                        irq.effective is not None,
                        irq.settable,
                        count,
                    )
                    # On x86 an IRQ steered away moves when it next fires: until then its
                    # effective affinity still names the CPU. Quiet meanwhile, it is moving,
                    # not intruding; one that fired here intrudes.
                    if not count and cpu not in irq.allowed:
                        moving.append(finding)
                    else:
                        irqs.append(finding)
            irq_pct, softirq_pct = _time_pct(inp.start.cpu_times, inp.end.cpu_times, cpu)
            cpus.append(
                CpuAudit(
                    cpu=cpu,
                    cpu_list=cl.name,
                    booking=cl.tasks,
                    nodes=cl.nodes,
                    threads=tuple(threads),
                    per_cpu_threads=tuple(per_cpu),
                    irqs=tuple(irqs),
                    unmovable_threads=tuple(unmovable),
                    moving_irqs=tuple(moving),
                    interrupts_per_s=_rate(inp.start.interrupts, inp.end.interrupts, cpu, elapsed),
                    softirqs_per_s=_rate(inp.start.softirqs, inp.end.softirqs, cpu, elapsed),
                    softirqs=_softirq_rates(inp.start.softirqs, inp.end.softirqs, cpu, elapsed),
                    irq_time_pct=irq_pct,
                    softirq_time_pct=softirq_pct,
                    load_balancing=load_balancing(
                        cpu, cl.cpus, inp.cpusets, inp.isolation.isolated
                    ),
                    isolated_at_boot=_member(inp.isolation.isolated, cpu),
                    nohz_full_at_boot=_member(inp.isolation.nohz_full, cpu),
                    cmdline=_cmdline_flags(inp.isolation, cpu),
                    workqueue=_member(inp.isolation.workqueue_cpumask, cpu),
                    default_irq_affinity=_member(inp.isolation.default_smp_affinity, cpu),
                )
            )
    return AuditReport(
        conf_dir=inp.conf_dir,
        interval_s=elapsed,
        cgroup_version=inp.cpusets.version if inp.cpusets else None,
        cgroup_mount=inp.cpusets.mount if inp.cpusets else None,
        isolation=inp.isolation,
        shield=inp.shield,
        cpus=tuple(cpus),
    )
