"""Clear tasks whose process is gone (or whose PID now names another process); check affinity.

One pass goes list by list, each one looked at (procfs) and then written, so a pass stopped by
the lock's deadline has finished the lists before it, and the next pass goes on from there.
Each list costs time linear in its tasks and hidden files: sets, one listing per directory,
and owner records read only for PIDs that are alive.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from kcm import cpulist
from kcm.errors import KcmError, LockTimeoutError, StateError
from kcm.host import procfs
from kcm.model import CpuList
from kcm.state import OWNER_PREFIX, TMP_PREFIX, StateDir, lock_timeout

TYPE_CHECKING = False  # mypy treats this name as True
if TYPE_CHECKING:
    from kcm.fence.run import Kept


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


@dataclass
class Report:
    """What one reconcile pass did and found."""

    reclaimed: list[Reclaimed] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    cleaned: int = 0
    fence: Kept | None = None  # while shielded: what the pass fenced again (kcm.fence.run)

    def summary(self) -> str:
        removed = [f"{pid} from {r.pool}/{r.cpu_list}" for r in self.reclaimed for pid in r.pids]
        fence = "" if self.fence is None else f"; fence kept: {len(self.fence.moves)} move(s)"
        return (
            f"removed {len(removed)} dead task(s){': ' + ', '.join(removed) if removed else ''};"
            f" {len(self.mismatches)} affinity mismatch(es){fence}"
        )

    def as_json(self) -> str:
        """CMK's reconcile report: ``json.dumps(..., sort_keys=True, indent=2)`` and a newline."""
        import json

        doc = {
            "mismatchedCpuMasks": [
                {"allowed": m.allowed, "cpus": m.cpu_list, "pid": m.pid} for m in self.mismatches
            ],
            "reclaimedCpuLists": [
                {"cpus": r.cpu_list, "pids": list(r.pids), "pool": r.pool} for r in self.reclaimed
            ],
        }
        if self.fence is not None:  # only while shielded: else the report stays CMK's
            doc["fenceMoves"] = [m.as_json() for m in self.fence.moves]
        return json.dumps(doc, sort_keys=True, indent=2) + "\n"


@dataclass(frozen=True)
class Cleanup:
    """What one list needs: the tasks to keep, the dead to drop, the hidden files to remove."""

    kept: list[int]
    dead: list[int]
    dead_records: list[int]  # the dead whose owner record exists
    junk: list[str]


def _writer_alive(root: str, tmp_name: str) -> bool:
    writer = tmp_name[len(TMP_PREFIX) :].partition("-")[0]
    return writer.isdigit() and writer.isascii() and procfs.liveness(root, int(writer))[0]


def examine(state: StateDir, root: str, pool: str, cl: CpuList) -> Cleanup:
    """Which of the list's tasks are dead, and which of its hidden files are leftovers.

    A PID is dead when procfs says so (no entry, or a zombie), or when it lives with another
    start time than the one ``kcm isolate`` recorded: the kernel gave it to another process.
    """
    names = state.hidden_names(pool, cl.cpus)
    records: set[int] = set()
    junk: list[str] = []
    for name in names:
        if name.startswith(OWNER_PREFIX):
            pid_text = name[len(OWNER_PREFIX) :]
            if pid_text.isdigit() and pid_text.isascii() and len(pid_text) <= 10:
                records.add(int(pid_text))
            else:
                junk.append(name)
        elif not _writer_alive(root, name):
            junk.append(name)
    tasks = set(cl.tasks)
    dead: set[int] = set()
    to_compare: dict[int, procfs.Stat] = {}
    for pid in tasks:
        alive, stat = procfs.liveness(root, pid)
        if not alive:
            dead.add(pid)
        elif stat is not None and pid in records:
            to_compare[pid] = stat
    if to_compare:
        starts = state.read_owner_records(pool, cl.cpus, list(to_compare))
        for pid, stat in to_compare.items():
            start = starts[pid]
            if start is not None and stat.start_time != start:
                dead.add(pid)
    # Owner records of PIDs no longer on the list (a killed isolate between its writes);
    # those of the dead go with them.
    junk += [f"{OWNER_PREFIX}{pid}" for pid in records if pid not in tasks]
    dropped = list(dict.fromkeys(pid for pid in cl.tasks if pid in dead))
    return Cleanup(
        kept=[pid for pid in cl.tasks if pid not in dead],
        dead=dropped,
        dead_records=[pid for pid in dropped if pid in records],
        junk=junk,
    )


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


def reconcile(conf_dir: str, root: str) -> Report:
    """One pass: remove dead PIDs under the lock, then compare live tasks' affinity."""
    report = Report()
    live: list[tuple[str, str, int]] = []
    with StateDir(conf_dir) as state:
        state.lock(lock_timeout())
        lists = [(p.name, cl) for p in state.read_pools().values() for cl in p.cpu_lists.values()]
        progress = _Progress([f"{pool}/{cl.cpus}" for pool, cl in lists])
        for i, (pool, cl) in enumerate(lists):
            writes = state.writes
            try:
                state.check_lock_held()  # past the deadline, looking on is pointless
                cleanup = examine(state, root, pool, cl)
                if cleanup.dead:
                    left = state.set_tasks(pool, cl.cpus, cleanup.kept, cleanup.dead_records)
                    if left:
                        state.check_lock_held()  # raises: owner records were left
                    report.reclaimed.append(Reclaimed(pool, cl.cpus, tuple(cleanup.dead)))
                if cleanup.junk:
                    state.remove_hidden(pool, cl.cpus, cleanup.junk)
                    report.cleaned += len(cleanup.junk)
            except (LockTimeoutError, StateError) as e:
                partly = None
                if state.writes > writes:
                    partly = "its tasks file, not all of its hidden files"
                    if not cleanup.dead:
                        partly = "some of its leftover hidden files, not all"
                raise type(e)(progress.stopped(e, i, partly)) from None
            if state.writes > writes:
                progress.written.append(progress.names[i])
            live.extend((pool, cl.cpus, pid) for pid in cleanup.kept)
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
    report.fence = keep_fence(conf_dir, root)
    return report


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


def print_reclaimed(report: Report) -> None:
    for r in report.reclaimed:
        pids = ", ".join(str(pid) for pid in r.pids)
        plural = "s" if len(r.pids) > 1 else ""
        print(
            f"kcm reconcile: removed dead PID{plural} {pids} from {r.pool}/{r.cpu_list}",
            file=sys.stderr,
        )


def main(conf_dir: str, interval: float | None, *, quiet: bool = False) -> int:
    """``kcm reconcile``: one pass (exit 1 on affinity mismatches), or a pass every interval.

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
        return 1 if report.mismatches else 0
    from kcm.loop import run_every

    def one_pass() -> str:
        report = reconcile(conf_dir, root)
        print_mismatches(report)
        return report.summary()

    return run_every(interval, one_pass, "reconcile")
