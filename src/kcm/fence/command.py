"""``kcm audit``: read the state and the host (read only), judge, print; exit 1 on intrusions."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping

from kcm import cpulist
from kcm.errors import StateError, UsageError
from kcm.fence.audit import (
    AuditInput,
    AuditReport,
    DataplaneList,
    Sample,
    audit,
    bookings_by_tree,
)
from kcm.fence.reader import BookingOf, HostReader
from kcm.fence.render import to_json, to_table
from kcm.host.cgroups import cgroup_root
from kcm.host.isolation import Isolation
from kcm.state import StateReader, lock_timeout

DATAPLANE = "dataplane"
OUTPUTS = ("table", "json")
DEFAULT_INTERVAL = 1.0
SHIELD_RECORD = ".shield.json"


def proc_root() -> str:
    """The procfs the audit reads: ``$KCM_PROC_FS`` (or ``$CMK_PROC_FS``), else ``/proc``."""
    return os.environ.get("KCM_PROC_FS") or os.environ.get("CMK_PROC_FS") or "/proc"


def sys_root() -> str:
    return os.environ.get("KCM_SYS_FS") or "/sys"


def read_dataplane(
    conf_dir: str, sys_root: str | None = None
) -> tuple[tuple[DataplaneList, ...], str | None]:
    """The exclusive dataplane pool's lists, and the shield record's phase (None without one).
    With ``sys_root``, each list's NUMA node(s) from that sysfs."""
    from kcm.fence import record
    from kcm.host import sysfs
    from kcm.table import numa_cell

    with StateReader(conf_dir) as state:
        state.lock(lock_timeout())
        if DATAPLANE not in state.pool_names():
            raise StateError(f"{conf_dir}/pools has no {DATAPLANE} pool: there is nothing to audit")
        pool = state.read_pool(DATAPLANE)
        text = state.read_hidden(SHIELD_RECORD)
    if not pool.exclusive:
        raise StateError(
            f"{conf_dir}/pools/{DATAPLANE}/exclusive is 0: the audit judges an exclusive pool"
        )
    numa_of = {} if sys_root is None else sysfs.read_numa_nodes(sys_root)
    lists = tuple(
        DataplaneList(cl.cpus, cpulist.parse(cl.cpus), tuple(cl.tasks), numa_cell(cl.cpus, numa_of))
        for cl in pool.cpu_lists.values()
    )
    phase = None if text is None else record.phase_of(text, f"{conf_dir}/{SHIELD_RECORD}")
    return lists, phase


def run_audit(
    conf_dir: str,
    reader: HostReader,
    interval: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    booking_of: BookingOf | None = None,
) -> AuditReport:
    """Sample the host, wait ``interval`` seconds, sample again, and judge."""
    lists, phase = read_dataplane(conf_dir, reader.sys_root)
    dataplane = frozenset().union(*(cl.cpus for cl in lists))
    iso = reader.isolation()
    tree = reader.cpusets()
    irqs = reader.irqs()
    start, booked_start = reader.sample(dataplane, clock, booking_of=booking_of)
    sleep(interval)
    end, booked_end = reader.sample(dataplane, clock, start, booking_of)
    bookings = _bookings(lists, (start, end), {**booked_start, **booked_end})
    return audit(
        AuditInput(
            conf_dir=os.path.normpath(conf_dir),
            lists=lists,
            bookings=bookings,
            start=start,
            end=end,
            irqs=irqs,
            isolation=iso,
            cpusets=tree,
            shield=phase,
        )
    )


def _bookings(
    lists: tuple[DataplaneList, ...],
    samples: tuple[Sample, ...],
    booked: Mapping[int, tuple[str, str]],
) -> dict[int, str]:
    """PID -> dataplane list of its booking: by the process tree of the samples from the
    tasks files' PIDs, and by booking cgroup (``booked``: PID -> pool, list)."""
    parents = {
        t.pid: t.ppid for sample in samples for t in sample.threads.values() if t.tid == t.pid
    }
    bookings = bookings_by_tree(lists, parents)
    for pid, (pool, name) in booked.items():
        if pool == DATAPLANE:
            bookings[pid] = name
    return bookings


def audit_now(
    conf_dir: str,
    lists: tuple[DataplaneList, ...],
    reader: HostReader,
    *,
    booking_of: BookingOf | None = None,
) -> AuditReport:
    """The audit's judgement of one instant, for ``kcm metrics``: the threads allowed on each
    dataplane CPU outside its booking, and the IRQs whose affinity is there (nothing can be
    seen running in no time, so ``ran`` is ``no`` throughout). One sample judged as both ends,
    without ``sched`` reads, boot settings or cpusets (they judge nothing): one file fewer for
    each thread that matters than a sample of ``run_audit`` (BENCHMARKS.md)."""
    dataplane = frozenset().union(*(cl.cpus for cl in lists))
    irqs = reader.irqs()
    now, booked = reader.sample(dataplane, time.monotonic, booking_of=booking_of, sched=False)
    bookings = _bookings(lists, (now,), booked)
    return audit(
        AuditInput(
            conf_dir=os.path.normpath(conf_dir),
            lists=lists,
            bookings=bookings,
            start=now,
            end=now,
            irqs=irqs,
            isolation=Isolation({}, None, None, None, None),
            cpusets=None,
        )
    )


def cgroup_bookings(conf_dir: str, root: str) -> BookingOf | None:
    """What tells a process's booking from its ``/proc/<pid>/cgroup``: the booking cgroups of
    ``kcm.host.cgroups`` for the state ``conf_dir`` (``<parent>/<state id>/<pool>/<list>/...``,
    ``$KCM_CGROUP_PARENT``), in the hierarchy that holds cpuset under ``root``; ``None``
    without one. Only reads: no writable hierarchy is needed to know who is booked."""
    from kcm.host import cgroups

    found = cgroups.find_hierarchy(root)
    if found is None:
        return None
    kind = found[0]
    parent = cgroups.cgroup_parent()
    state = cgroups.state_id(os.path.realpath(conf_dir))

    def booking_of(text: str) -> tuple[str, str] | None:
        path = cgroups.parse_proc_cgroup(text, kind)
        booking = None if path is None else cgroups.booking_at(path, parent, state)
        return None if booking is None else (booking.pool, booking.cpu_list)

    return booking_of


def main(conf_dir: str, interval: float | None, output: str) -> int:
    """``kcm audit``: 0 when no thread or IRQ intrudes on a dataplane CPU, 1 when one does."""
    if output not in OUTPUTS:
        raise UsageError(f"--output={output!r}: choose table or json")
    root = cgroup_root()
    reader = HostReader(proc_root(), sys_root(), root)
    report = run_audit(
        conf_dir,
        reader,
        DEFAULT_INTERVAL if interval is None else interval,
        booking_of=cgroup_bookings(conf_dir, root),
    )
    sys.stdout.write(to_json(report) if output == "json" else to_table(report))
    return 0 if report.clean else 1
