"""What holds a CPU list, read from the state, procfs and cgroups; and ``kcm.holders``' plans
written back. Callers hold the state lock.

Used by ``kcm isolate`` off its fast path (a full exclusive pool it reclaims lists in, a free
list whose booking cgroup lives on, a command that left processes behind) and by ``kcm
reconcile`` on every list.
"""

from __future__ import annotations

from kcm.errors import KcmError
from kcm.holders import Plan, Proc, Record, Seen, parse_record, plan
from kcm.host import procfs
from kcm.model import CpuList, Pool
from kcm.state import HEIR_PREFIX, OWNER_PREFIX, StateDir, parse_owner

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from kcm.host.cgroups import Backend, Booking
    from kcm.isolate import Booked


def record_pids(names: list[str], prefix: str) -> set[int]:
    """The PIDs that have a record of ``prefix`` (``.owner-``, ``.heir-``) among a list's
    hidden names."""
    found = set()
    for name in names:
        if name.startswith(prefix):
            text = name[len(prefix) :]
            if text.isdigit() and text.isascii() and len(text) <= 10:
                found.add(int(text))
    return found


def dropped_records(names: list[str], dead: list[int]) -> list[str]:
    """The names of the records of ``dead`` PIDs among a list's hidden ``names``."""
    have = set(names)
    gone = [f"{prefix}{pid}" for pid in dead for prefix in (OWNER_PREFIX, HEIR_PREFIX)]
    return [name for name in gone if name in have]


class Look:
    """Reads PIDs' liveness from a procfs root once each, for every list of a pass."""

    def __init__(self, proc_root: str) -> None:
        self.root = proc_root
        self.procs: dict[int, Proc] = {}

    def __call__(self, pid: int) -> Proc:
        proc = self.procs.get(pid)
        if proc is None:
            alive, stat = procfs.liveness(self.root, pid)
            proc = Proc(pid, alive, None if stat is None else stat.start_time)
            self.procs[pid] = proc
        return proc


def see(
    state: StateDir,
    look: Look,
    backend: Backend | None,
    pool: str,
    cl: CpuList,
    *,
    names: list[str] | None = None,
    bookings: list[Booking] | None = None,
    tasks: list[int] | None = None,
) -> Seen:
    """One list as ``holders.plan`` needs it: ``tasks`` (default: the list's), their owner
    records, procfs of every PID involved, the booking cgroups (default: every one under the
    list's level) with their processes, and the live members of the process groups that the
    records of dead tasks name."""
    tasks = cl.tasks if tasks is None else tasks
    names = state.hidden_names(pool, cl.cpus) if names is None else names
    on_list = set(tasks)
    procs: dict[int, Proc] = {pid: look(pid) for pid in tasks}
    # Heir records are few (one per hand-over) and say whose booking a PID holds: all read.
    # Owner records only matter for PIDs that live (is it still that process?): 100,000
    # dead PIDs of killed isolates cost a lookup each, not a read as well.
    heirs = record_pids(names, HEIR_PREFIX) & on_list
    owners = [
        pid
        for pid in sorted(record_pids(names, OWNER_PREFIX) & on_list)
        if pid not in heirs and procs[pid].alive and procs[pid].start is not None
    ]
    wanted = [f"{HEIR_PREFIX}{pid}" for pid in sorted(heirs)]
    wanted += [f"{OWNER_PREFIX}{pid}" for pid in owners]
    records: dict[int, Record] = {}
    for name, text in state.read_records(pool, cl.cpus, wanted).items():
        pid = int(name.rpartition("-")[2])
        if name.startswith(HEIR_PREFIX):
            record = parse_record(text)
        else:
            start = parse_owner(text)
            record = None if start is None else Record(start)
        if record is not None:
            records[pid] = record
    seen_bookings: dict[str, list[int]] = {}
    if backend is not None:
        for booking in backend.bookings(pool, cl.cpus) if bookings is None else bookings:
            members = backend.pids(backend.path(booking))
            seen_bookings[booking.name] = members
            procs[booking.pid] = look(booking.pid)
            for pid in members:
                procs[pid] = look(pid)
    pgids = {
        record.pgid
        for pid, record in records.items()
        if record.pgid is not None
        and not (procs[pid].alive and procs[pid].start in (None, record.start))
    }
    groups: dict[int, list[int]] = {}
    if pgids:
        for pgid, stats in procfs.group_members(look.root, pgids).items():
            groups[pgid] = [stat.pid for stat in stats]
            for stat in stats:
                procs[stat.pid] = Proc(stat.pid, True, stat.start_time)
    return Seen(list(tasks), records, procs, seen_bookings, groups)


def write(state: StateDir, pool: str, cpu_list: str, plan: Plan, names: list[str]) -> int:
    """The list's tasks as ``plan`` has them, the hand-overs' heir records first; records of
    the dropped go. The count of records left past the lock's deadline (see ``set_tasks``)."""
    heirs = {f"{HEIR_PREFIX}{h.pid}": h.record.text() for h in plan.hand_overs}
    dropped = [name for name in dropped_records(names, plan.dead) if name not in heirs]
    return state.set_tasks(pool, cpu_list, plan.tasks, dropped, heirs)


def settle_free_list(state: StateDir, look: Look, backend: Backend, pool: str, cl: CpuList) -> None:
    """A list with no tasks whose booking cgroup holds processes (its tasks were cleared by
    hand, or the state made anew under live workloads): hand it to them, so it shows taken."""
    names = state.hidden_names(pool, cl.cpus)
    found = plan(see(state, look, backend, pool, cl, names=names))
    if found.hand_overs:
        write(state, pool, cl.cpus, found, names)
        cl.tasks[:] = found.tasks


class Reclaimed:
    """A list of a full exclusive pool whose holders are all gone: the dead tasks and their
    records to drop, and the empty bookings to remove once the new booking is written."""

    __slots__ = ("cpu_list", "dropped", "remove")

    def __init__(self, cpu_list: CpuList, dropped: list[str], remove: list[str]) -> None:
        self.cpu_list = cpu_list
        self.dropped = dropped
        self.remove = remove


def reclaim_pool(
    state: StateDir, look: Look, backend: Backend | None, pool: Pool
) -> tuple[Reclaimed | None, int]:
    """The first list of a full exclusive pool that nothing holds any more, if any, and how
    many lists leftovers hold.

    Lists whose tasks are dead but whose bookings (or process groups) live on are handed
    over to those leftovers on the way, so the tasks file names a live process of each.
    """
    from kcm.allocate import cpu_order

    by_leftovers = 0
    for cl in sorted(pool.cpu_lists.values(), key=lambda c: cpu_order(c.cpus)):
        if not cl.tasks:
            continue  # free, but held by leftovers: settle_free_list has handed it over
        names = state.hidden_names(pool.name, cl.cpus)
        seen = see(state, look, backend, pool.name, cl, names=names)
        found = plan(seen)
        if found.free:
            return Reclaimed(cl, dropped_records(names, found.dead), found.remove), by_leftovers
        if not any(handed_over(seen, pid) is None for pid in found.kept):
            by_leftovers += 1
        if found.changes:
            write(state, pool.name, cl.cpus, found, names)
    return None, by_leftovers


def handed_over(seen: Seen, pid: int) -> str | None:
    """The booking a task took over from the kcm isolate that made it, or None."""
    record = seen.records.get(pid)
    return None if record is None else record.booking


def hand_over_at_exit(
    conf_dir: str,
    pool_name: str,
    booked: Booked,
    me: procfs.Stat,
    proc_root: str,
    backend: Backend | None,
    command_pgid: int,
) -> None:
    """kcm isolate's command left processes behind: the oldest of them takes the booking
    over (kcm's PID leaves the list for its, with a heir record); a failure is said on stderr
    as a failed release is."""
    from kcm import holders
    from kcm.isolate import RELEASE_PATIENCE, _remove_quietly, _say_release_failed
    from kcm.state import lock_timeout

    state = StateDir(conf_dir)
    try:
        with state:
            state.lock(RELEASE_PATIENCE * lock_timeout())
            cl = state.read_pool(pool_name).cpu_lists.get(booked.cpus)
            if cl is None or me.pid not in cl.tasks:
                return  # someone else changed the list meanwhile; reconcile sees to it
            look = Look(proc_root)
            bookings = [] if booked.booking is None else [booked.booking]
            seen = see(state, look, backend, pool_name, cl, bookings=bookings, tasks=[me.pid])
            seen.procs[me.pid] = holders.Proc(me.pid, False, me.start_time)  # kcm is leaving
            if booked.booking is None:
                name = holders.booking_name(me.pid, me.start_time)
                seen.records[me.pid] = holders.Record(me.start_time, name, command_pgid)
                members = procfs.group_members(proc_root, {command_pgid})[command_pgid]
                seen.groups[command_pgid] = [stat.pid for stat in members]
                for stat in members:
                    seen.procs[stat.pid] = holders.Proc(stat.pid, True, stat.start_time)
            plan = holders.plan(seen)
            others = [pid for pid in cl.tasks if pid != me.pid]
            plan.kept = [pid for pid in others if pid not in {h.pid for h in plan.hand_overs}]
            names = state.hidden_names(pool_name, cl.cpus)
            write(state, pool_name, cl.cpus, plan, names)
        if not plan.hand_overs and booked.booking is not None:
            assert backend is not None
            _remove_quietly(backend, booked.booking)  # they all exited meanwhile
    except KcmError as e:
        _say_release_failed(e, state, pool_name, booked.cpus, me.pid)
