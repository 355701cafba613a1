"""What the audit reads from the host, under the roots it is given; it has no method that
writes, and every file it opens, it opens read-only.

Per thread, at the start of the interval: ``stat`` (last CPU, flags, CPU time in ticks) and
``status`` (``Cpus_allowed_list``); for the threads that matter to a dataplane CPU (allowed on
one, or last seen on one) also ``sched`` (``se.sum_exec_runtime`` in ns and
``se.nr_migrations``; ``schedstat``'s run time where the kernel has no ``sched``) and
``cgroup``. At the end only ``stat``, and ``sched`` of those threads (new threads are read in
full). Allowed CPUs are therefore as read at the start (at the end for threads that appeared),
but for a thread last seen on a dataplane CPU it was not allowed on (moved off while it
slept): its ``status`` is read again, since only an affinity that excluded the CPU at both
samples shows it did not go back there.
"""

from __future__ import annotations

from collections.abc import Callable

from kcm.errors import EnvironmentProblem, ParseError
from kcm.fence.audit import Sample, ThreadSample
from kcm.host import cpusets, interrupts, isolation, threads
from kcm.host.threads import read_text, task_path

# The text of a process's /proc/<pid>/cgroup to the (pool, cpu list) of the booking whose
# cgroup holds it, or None (kcm.fence.command.cgroup_bookings builds it from kcm.host.cgroups).
# A process there belongs to its booking however it left the booking's process tree (setsid,
# a daemon's double fork).
BookingOf = Callable[[str], tuple[str, str] | None]


class HostReader:
    """Reads ``proc_root``, ``sys_root`` and ``cgroup_root``; holds nothing that can write."""

    def __init__(self, proc_root: str, sys_root: str, cgroup_root: str) -> None:
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.cgroup_root = cgroup_root

    def _text(self, path: str) -> str:
        text = read_text(path)
        if text is None:
            raise EnvironmentProblem(f"cannot read {path}: it does not exist")
        return text

    def isolation(self) -> isolation.Isolation:
        try:
            return isolation.read_isolation(self.proc_root, self.sys_root)
        except ParseError as e:
            raise EnvironmentProblem(f"kernel isolation settings: {e}") from None

    def cpusets(self) -> cpusets.CpusetTree | None:
        try:
            return cpusets.read_tree(self.cgroup_root)
        except ParseError as e:
            raise EnvironmentProblem(f"cpusets under {self.cgroup_root}: {e}") from None

    def irqs(self) -> tuple[interrupts.IrqAffinity, ...]:
        out = []
        for irq in interrupts.list_irqs(self.proc_root):
            try:
                found = interrupts.read_irq(self.proc_root, irq)
            except ParseError as e:
                raise EnvironmentProblem(f"{self.proc_root}/irq/{irq}: {e}") from None
            if found is not None:
                out.append(found)
        return tuple(out)

    def sample(
        self,
        dataplane: frozenset[int],
        at: Callable[[], float],
        previous: Sample | None = None,
        booking_of: BookingOf | None = None,
        *,
        sched: bool = True,
    ) -> tuple[Sample, dict[int, tuple[str, str]]]:
        """Every thread and the per-CPU counters now; and the cgroup bookings of the threads
        that matter (``booking_of``), by PID. Without ``sched`` no thread's ``sched`` is read
        (an instant's judgement needs no run time: ``kcm metrics``): one file of four fewer
        for each thread that matters."""
        root = self.proc_root
        try:
            pids = threads.list_pids(root)
        except OSError as e:
            raise EnvironmentProblem(f"cannot list {root}: {e.strerror}") from None
        found: dict[int, ThreadSample] = {}
        booked: dict[int, tuple[str, str]] = {}
        prev_threads = previous.threads if previous is not None else {}
        stamp = at()
        for pid in pids:
            for tid in threads.list_tids(root, pid):
                sample = self._thread(
                    pid, tid, dataplane, prev_threads.get(tid), booking_of, sched=sched
                )
                if sample is None:
                    continue
                thread, booking = sample
                found[tid] = thread
                if booking is not None:
                    booked[pid] = booking
        try:
            counters = (
                interrupts.parse_interrupts(self._text(f"{root}/interrupts")),
                interrupts.parse_softirqs(self._text(f"{root}/softirqs")),
                interrupts.parse_stat_cpus(self._text(f"{root}/stat")),
            )
        except ParseError as e:
            raise EnvironmentProblem(f"{root}: {e}") from None
        return Sample(stamp, found, *counters), booked

    def _thread(
        self,
        pid: int,
        tid: int,
        dataplane: frozenset[int],
        prev: ThreadSample | None,
        booking_of: BookingOf | None,
        *,
        sched: bool = True,
    ) -> tuple[ThreadSample, tuple[str, str] | None] | None:
        root = self.proc_root
        stat_text = read_text(task_path(root, pid, tid, "stat"))
        if stat_text is None:
            return None  # exited meanwhile
        try:
            st = threads.parse_task_stat(stat_text)
        except ParseError as e:
            raise EnvironmentProblem(f"{task_path(root, pid, tid, 'stat')}: {e}") from None
        if prev is not None and prev.start_time != st.start_time:
            prev = None  # the tid was reused by another thread
        if prev is not None and not _left_asleep(prev, dataplane):
            allowed = prev.allowed
        else:
            status = read_text(task_path(root, pid, tid, "status"))
            if status is None:
                return None
            try:
                allowed = threads.parse_status_allowed(status)
            except ParseError as e:
                raise EnvironmentProblem(f"{task_path(root, pid, tid, 'status')}: {e}") from None
        matters = (
            st.processor in dataplane
            or (allowed is not None and not allowed.isdisjoint(dataplane))
            or (prev is not None and prev.runtime_ns is not None)
        )
        runtime = migrations = None
        cgroup = prev.cgroup if prev is not None else None
        booking = None
        if matters:
            counters = self._sched(pid, tid) if sched else None
            if counters is not None:
                runtime, migrations = counters.runtime_ns, counters.migrations
            if prev is None or prev.cgroup is None or booking_of is not None:
                text = read_text(task_path(root, pid, tid, "cgroup"))
                if text is not None:
                    cgroup = threads.parse_cgroup(text)
                    if booking_of is not None:
                        booking = booking_of(text)
        thread = ThreadSample(
            pid=pid,
            tid=tid,
            comm=st.comm,
            ppid=st.ppid,
            kernel=st.kernel,
            no_setaffinity=st.no_setaffinity,
            processor=st.processor,
            start_time=st.start_time,
            ticks=st.ticks,
            runtime_ns=runtime,
            migrations=migrations,
            allowed=allowed,
            cgroup=cgroup,
        )
        return thread, booking

    def _sched(self, pid: int, tid: int) -> threads.SchedCounters | None:
        root = self.proc_root
        path = task_path(root, pid, tid, "sched")
        text = read_text(path)
        parse = threads.parse_sched
        if text is None:  # no CONFIG_SCHED_DEBUG (or the thread is gone): try schedstat
            path = task_path(root, pid, tid, "schedstat")
            text = read_text(path)
            parse = threads.parse_schedstat
            if text is None:
                return None
        try:
            return parse(text)
        except ParseError as e:
            raise EnvironmentProblem(f"{path}: {e}") from None


def _left_asleep(prev: ThreadSample, dataplane: frozenset[int]) -> bool:
    """Last seen on a dataplane CPU its allowed CPUs exclude: the kernel narrowed its affinity
    while it slept, and leaves its last CPU as it was until it wakes."""
    return (
        prev.processor in dataplane
        and prev.allowed is not None
        and prev.processor not in prev.allowed
    )
