"""Clear tasks whose process is gone, hand bookings over to their leftovers, remove the empty
cgroups of dead bookings, and check that every process of a booking runs on its list.

One pass goes list by list, each one looked at (procfs, its booking cgroups) and then written,
so a pass stopped by the lock's deadline has finished the lists before it, and the next pass
goes on from there. Each list costs time linear in its tasks, hidden files, bookings and their
processes: sets, one listing per directory, owner records read only for PIDs that have one.
Cgroups are removed after the lock is released: only bookings that are empty and whose kcm is
gone (by PID and start time), which nothing can enter again, and empty levels, which a
creating isolate makes again (``kcm.host.cgroups``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from kcm import cpulist, holders
from kcm.errors import KcmError, LockTimeoutError, StateError
from kcm.host import cgroups, procfs
from kcm.reclaim import Look, see, write
from kcm.state import HEIR_PREFIX, OWNER_PREFIX, TMP_PREFIX, StateDir, lock_timeout

TYPE_CHECKING = False  # mypy treats this name as True
if TYPE_CHECKING:
    from kcm.fence.run import Kept
    from kcm.totals import Totals


@dataclass(frozen=True)
class Mismatch:
    """A live task running on other CPUs than its list's."""

    pid: int
    pool: str
    cpu_list: str
    allowed: str


@dataclass(frozen=True)
class Reclaimed:
    """The dead PIDs one pass removed from one CPU list."""

    pool: str
    cpu_list: str
    pids: tuple[int, ...]


@dataclass(frozen=True)
class HandedOver:
    """A list whose booking's kcm is gone, given to a live process the booking left behind."""

    pool: str
    cpu_list: str
    pid: int
    booking: str | None


@dataclass(frozen=True)
class Outside:
    """A process of a booking that may run on CPUs outside its list."""

    pid: int
    pool: str
    cpu_list: str
    booking: str
    allowed: str


@dataclass(frozen=True)
class Unaccounted:
    """A cgroup under the state's subtree that no list of the state accounts for."""

    path: str
    why: str
    pids: tuple[int, ...]


@dataclass
class Report:
    """What one reconcile pass did and found."""

    reclaimed: list[Reclaimed] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    handed_over: list[HandedOver] = field(default_factory=list)
    outside: list[Outside] = field(default_factory=list)
    unaccounted: list[Unaccounted] = field(default_factory=list)
    removed_cgroups: list[str] = field(default_factory=list)
    cannot_remove: str | None = None  # why cgroups to remove were left (a read-only cgroupfs)
    cleaned: int = 0
    fence: Kept | None = None  # while shielded: what the pass fenced again (kcm.fence.run)

    @property
    def problems(self) -> bool:
        """Whether the pass found what exit 1 reports."""
        return bool(self.mismatches or self.outside or self.unaccounted)

    def summary(self) -> str:
        removed = [f"{pid} from {r.pool}/{r.cpu_list}" for r in self.reclaimed for pid in r.pids]
        fence = "" if self.fence is None else f"; fence kept: {len(self.fence.moves)} move(s)"
        text = (
            f"removed {len(removed)} dead task(s){': ' + ', '.join(removed) if removed else ''};"
            f" {len(self.mismatches)} affinity mismatch(es){fence}"
        )
        if self.handed_over or self.removed_cgroups or self.outside or self.unaccounted:
            text += (
                f"; {len(self.handed_over)} list(s) handed over to leftovers,"
                f" {len(self.removed_cgroups)} empty booking cgroup(s) removed,"
                f" {len(self.outside)} process(es) outside their list,"
                f" {len(self.unaccounted)} unaccounted cgroup(s)"
            )
        return text

    def as_json(self) -> str:
        """CMK's reconcile report (``mismatchedCpuMasks``, ``reclaimedCpuLists``) and kcm's
        cgroup keys beside them: ``json.dumps(..., sort_keys=True, indent=2)`` and a newline."""
        import json

        doc = {
            "mismatchedCpuMasks": [
                {"allowed": m.allowed, "cpus": m.cpu_list, "pid": m.pid} for m in self.mismatches
            ],
            "reclaimedCpuLists": [
                {"cpus": r.cpu_list, "pids": list(r.pids), "pool": r.pool} for r in self.reclaimed
            ],
            "handedOverCpuLists": [
                {"booking": h.booking, "cpus": h.cpu_list, "pid": h.pid, "pool": h.pool}
                for h in self.handed_over
            ],
            "processesOutsideTheirList": [
                {
                    "allowed": o.allowed,
                    "booking": o.booking,
                    "cpus": o.cpu_list,
                    "pid": o.pid,
                    "pool": o.pool,
                }
                for o in self.outside
            ],
            "removedCgroups": list(self.removed_cgroups),
            "unaccountedCgroups": [
                {"path": u.path, "pids": list(u.pids), "why": u.why} for u in self.unaccounted
            ],
        }
        if self.fence is not None:  # only while shielded: else the report stays CMK's
            doc["fenceMoves"] = [m.as_json() for m in self.fence.moves]
        return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def _writer_alive(root: str, tmp_name: str) -> bool:
    writer = tmp_name[len(TMP_PREFIX) :].partition("-")[0]
    return writer.isdigit() and writer.isascii() and procfs.liveness(root, int(writer))[0]


def junk(root: str, names: list[str], tasks: list[int]) -> list[str]:
    """A list's hidden files that are leftovers: malformed record names, records of PIDs no
    longer on the list (a killed writer between its writes), temp files of writers that are
    gone."""
    found: list[str] = []
    on_list = set(tasks)
    for name in names:
        prefix = next((p for p in (OWNER_PREFIX, HEIR_PREFIX) if name.startswith(p)), None)
        if prefix is not None:
            pid_text = name[len(prefix) :]
            valid = pid_text.isdigit() and pid_text.isascii() and len(pid_text) <= 10
            if not valid or int(pid_text) not in on_list:
                found.append(name)
        elif not _writer_alive(root, name):
            found.append(name)
    return found


class _Progress:
    """The lists of one pass in order, and which of them were written: for the message of a
    pass that is stopped, which says exactly what was written and what was not."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.written: list[str] = []

    def stopped(self, e: KcmError, at: int, partly: str | None) -> str:
        """``partly``: what was written of the list it stopped at, if anything."""
        name = self.names[at]
        wrote = ", ".join(self.written) if self.written else ""
        if partly:
            part = f"part of {name} ({partly})"
            wrote = f"{wrote} and {part}" if wrote else part
        left = self.names[at + 1 :] if partly else self.names[at:]
        message = (
            f"{e.message}; reconcile stopped at {name} (list {at + 1} of {len(self.names)}):"
            f" it wrote {wrote or 'nothing'}"
        )
        if left:
            message += (
                f"; it left {', '.join(left)} as {'they were' if len(left) > 1 else 'it was'}"
            )
        return message


def _partly(writes: int, records: int, plan: holders.Plan) -> str:
    """What a list's write that was stopped had written (``writes`` of its files)."""
    if writes <= records and records:
        return "owner records of the processes it hands the list to, not its tasks file"
    if plan.changes:
        return "its tasks file, not all of its hidden files"
    return "some of its leftover hidden files, not all"


def reconcile(conf_dir: str, root: str) -> Report:
    """One pass: see module docstring. Writes under the lock; removes cgroups after it."""
    report = Report()
    detected = cgroups.detect(conf_dir, read_only=True)
    backend = detected if isinstance(detected, cgroups.Backend) else None
    look = Look(root)
    live: list[tuple[str, str, int]] = []
    members: list[tuple[str, str, str, int]] = []  # pool, list, booking, pid
    to_remove: list[cgroups.Booking] = []
    with StateDir(conf_dir) as state:
        state.lock(lock_timeout())
        pools = state.read_pools()
        lists = [(p.name, cl) for p in pools.values() for cl in p.cpu_lists.values()]
        by_list: dict[tuple[str, str], list[cgroups.Booking]] = {}
        strays: list[str] = []
        if backend is not None:
            scan = backend.scan()
            strays = scan.strays
            for booking in scan.bookings:
                by_list.setdefault((booking.pool, booking.cpu_list), []).append(booking)
        progress = _Progress([f"{pool}/{cl.cpus}" for pool, cl in lists])
        for i, (pool, cl) in enumerate(lists):
            writes = state.writes
            plan = None
            records = 0
            try:
                state.check_lock_held()  # past the deadline, looking on is pointless
                names = state.hidden_names(pool, cl.cpus)
                bookings = by_list.pop((pool, cl.cpus), [])
                seen = see(state, look, backend, pool, cl, names=names, bookings=bookings)
                plan = holders.plan(seen)
                leftover = junk(root, names, cl.tasks)
                if plan.changes:
                    records = len(plan.hand_overs)
                    left = write(state, pool, cl.cpus, plan, names)
                    if left:
                        state.check_lock_held()  # raises: owner records were left
                    if plan.dead:
                        report.reclaimed.append(Reclaimed(pool, cl.cpus, tuple(plan.dead)))
                    for h in plan.hand_overs:
                        report.handed_over.append(
                            HandedOver(pool, cl.cpus, h.pid, h.record.booking)
                        )
                if leftover:
                    state.remove_hidden(pool, cl.cpus, leftover)
                    report.cleaned += len(leftover)
            except (LockTimeoutError, StateError) as e:
                partly = None
                if state.writes > writes:
                    assert plan is not None
                    partly = _partly(state.writes - writes, records, plan)
                raise type(e)(progress.stopped(e, i, partly)) from None
            if state.writes > writes:
                progress.written.append(progress.names[i])
            live.extend((pool, cl.cpus, pid) for pid in plan.kept)
            for name in plan.held_bookings:
                members.extend((pool, cl.cpus, name, pid) for pid in seen.bookings[name])
                if pools[pool].exclusive and name != plan.held_bookings[0]:
                    report.unaccounted.append(
                        Unaccounted(
                            f"{backend.subtree if backend else ''}/{pool}/{cl.cpus}/{name}",
                            "a second booking with processes on a list of an exclusive pool",
                            tuple(seen.bookings[name]),
                        )
                    )
            to_remove.extend(
                cgroups.Booking(pool, cl.cpus, *ids)
                for ids in map(holders.booking_ids, plan.remove)
                if ids is not None
            )
    if backend is not None:
        _unlisted(backend, look, by_list, strays, report, to_remove)
        _remove(backend, to_remove, report, fenced_cgroups(conf_dir))
    for pool_name, cl_name, pid in live:
        allowed = procfs.read_cpus_allowed_list(root, pid)
        if allowed is None:
            continue  # exited since the pass, or unreadable; the next pass looks again
        try:
            same = cpulist.parse(allowed) == cpulist.parse(cl_name)
        except ValueError:
            same = False
        if not same:
            report.mismatches.append(Mismatch(pid, pool_name, cl_name, allowed))
    for pool_name, cl_name, name, pid in members:
        allowed = procfs.read_cpus_allowed_list(root, pid)
        if allowed is None:
            continue
        try:
            within = cpulist.parse(allowed) <= cpulist.parse(cl_name)
        except ValueError:
            within = False
        if not within:
            report.outside.append(Outside(pid, pool_name, cl_name, name, allowed))
    report.fence = keep_fence(conf_dir, root)
    return report


def _unlisted(
    backend: cgroups.Backend,
    look: Look,
    by_list: dict[tuple[str, str], list[cgroups.Booking]],
    strays: list[str],
    report: Report,
    to_remove: list[cgroups.Booking],
) -> None:
    """Bookings of lists the state does not have, and cgroups kcm did not make."""
    for bookings in by_list.values():
        for booking in bookings:
            path = backend.path(booking)
            pids = backend.pids(path)
            if pids:
                why = "a booking of a CPU list the state does not have"
                report.unaccounted.append(Unaccounted(path, why, tuple(pids)))
                continue
            creator = look(booking.pid)
            if not (creator.alive and creator.start in (None, booking.start_time)):
                to_remove.append(booking)
    for stray in strays:
        path = backend.subtree if stray == "." else f"{backend.subtree}/{stray}"
        why = "not a cgroup kcm makes (kcm never removes it)"
        report.unaccounted.append(Unaccounted(path, why, tuple(backend.pids(path))))


def _remove(
    backend: cgroups.Backend,
    bookings: list[cgroups.Booking],
    report: Report,
    keep: frozenset[str],
) -> None:
    """Remove the gone bookings' cgroups, then the empty levels but those in ``keep``."""
    if backend.unwritable is not None:
        if bookings:
            report.cannot_remove = backend.unwritable
        return
    for booking in bookings:
        if backend.remove(booking):
            report.removed_cgroups.append(backend.path(booking))
    backend.prune(keep)


def fenced_cgroups(conf_dir: str) -> frozenset[str]:
    """The cgroups the shield record names (a dataplane list's cgroup holds its isolated
    partition): reconcile's pruning leaves them while the host is shielded."""
    import os

    if not os.path.exists(f"{conf_dir}/.shield.json"):
        return frozenset()
    from kcm.fence import run

    return run.recorded_cgroups(conf_dir, cgroups.cgroup_root())


def keep_fence(conf_dir: str, root: str) -> Kept | None:
    """The fence's part of the pass (``kcm.fence.run.keep_fence``): one read of the hidden
    shield record when there is none, imported only when there is one."""
    import os

    if not os.path.exists(f"{conf_dir}/.shield.json"):
        return None
    from kcm.fence import run

    return run.keep_fence(conf_dir, make_host=run.host_on(root))


def print_mismatches(report: Report) -> None:
    if report.fence is not None:
        for move in report.fence.moves:
            print(move.line(), file=sys.stderr)
        for failure in report.fence.failed:
            print(f"kcm reconcile: fence: not done: {failure}", file=sys.stderr)
    for m in report.mismatches:
        print(
            f"kcm: affinity mismatch: pid {m.pid} in {m.pool}/{m.cpu_list}"
            f" may run on CPUs {m.allowed}, expected {m.cpu_list}",
            file=sys.stderr,
        )
    for o in report.outside:
        print(
            f"kcm: outside its list: pid {o.pid} of booking {o.pool}/{o.cpu_list}/{o.booking}"
            f" may run on CPUs {o.allowed}, outside {o.cpu_list}",
            file=sys.stderr,
        )
    for u in report.unaccounted:
        pids = ", ".join(str(pid) for pid in u.pids) or "no process"
        print(f"kcm: unaccounted cgroup: {u.path} ({u.why}) holds {pids}", file=sys.stderr)
    if report.cannot_remove is not None:
        print(
            f"kcm reconcile: empty booking cgroups are left in place: {report.cannot_remove}",
            file=sys.stderr,
        )


def print_reclaimed(report: Report) -> None:
    for r in report.reclaimed:
        pids = ", ".join(str(pid) for pid in r.pids)
        plural = "s" if len(r.pids) > 1 else ""
        print(
            f"kcm reconcile: removed dead PID{plural} {pids} from {r.pool}/{r.cpu_list}",
            file=sys.stderr,
        )
    for h in report.handed_over:
        print(
            f"kcm reconcile: handed {h.pool}/{h.cpu_list} over to PID {h.pid}, left behind by"
            f" booking {h.booking}",
            file=sys.stderr,
        )
    for path in report.removed_cgroups:
        print(f"kcm reconcile: removed the empty booking cgroup {path}", file=sys.stderr)


def main(conf_dir: str, interval: float | None, *, quiet: bool = False) -> int:
    """``kcm reconcile``: one pass (exit 1 on affinity mismatches, processes of a booking
    outside its list, cgroups no list accounts for), or a pass every interval.

    One pass prints CMK's JSON report on stdout and, unless ``quiet``, a line per list it
    freed on stderr. The loop logs one line per pass instead.
    """
    root = procfs.proc_root("kcm reconcile")
    procfs.require_host_pid_namespace(root)
    if interval is None:
        report = reconcile(conf_dir, root)
        if not quiet:
            print_reclaimed(report)
        print_mismatches(report)
        sys.stdout.write(report.as_json())
        return 1 if report.problems else 0
    import os
    import time

    from kcm import totals
    from kcm.loop import run_every

    # The loop's totals, recorded in the state after every pass for kcm metrics (kcm.totals).
    counted = totals.Totals(pid=os.getpid(), started=time.time(), interval=interval)

    def one_pass() -> str:
        nonlocal counted
        started = time.monotonic()
        try:
            report = reconcile(conf_dir, root)
        except KcmError:
            counted = counted.after_pass(time.time(), time.monotonic() - started, ok=False)
            _record(conf_dir, counted)
            raise
        counted = counted.after_pass(
            time.time(),
            time.monotonic() - started,
            ok=True,
            pids_freed=sum(len(r.pids) for r in report.reclaimed),
            lists_handed_over=len(report.handed_over),
            cgroups_removed=len(report.removed_cgroups),
        )
        _record(conf_dir, counted)
        print_mismatches(report)
        return report.summary()

    return run_every(interval, one_pass, "reconcile")


def _record(conf_dir: str, counted: Totals) -> None:
    from kcm import totals

    why = totals.try_record(conf_dir, counted)
    if why is not None:
        print(f"kcm reconcile: totals not recorded (the next pass will): {why}", file=sys.stderr)
