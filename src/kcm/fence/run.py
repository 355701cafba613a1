"""``kcm shield`` and ``kcm unshield``: read the dataplane pool, hold the shield's own lock for
the whole run, drive ``kcm.fence.protocol`` over the real host, and say what changed.

A shield moves every task of the host and may take longer than KCM_LOCK_TIMEOUT allows the
state lock to be held, so a run holds ``<state>/.shield.lock`` instead (exclusive, waited for
up to KCM_LOCK_TIMEOUT), and the state lock only for each save of the record. Two shields, or
a shield and an unshield, never run at once; ``isolate`` and ``describe`` go on meanwhile.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kcm import cpulist
from kcm.errors import EnvironmentProblem, StateError
from kcm.fence import record as rec
from kcm.fence.changes import Affinity, MakeCgroup, MoveTasks, Pin, Root, UnitProperty, Write
from kcm.fence.plan import DEFAULT_SMP_AFFINITY, WORKQUEUE_CPUMASK
from kcm.fence.protocol import Host, Outcome, Report, StepResult, keep, shield, unshield
from kcm.fence.store import StateRecordStore
from kcm.state import StateDir, StateReader, lock_timeout

RUN_LOCK = ".shield.lock"
DATAPLANE = "dataplane"

# What makes the host: (state dir, dataplane list names, the PIDs their tasks files name).
HostFactory = Callable[[str, Iterable[str], Iterable[int]], Host]


def read_dataplane(conf_dir: str) -> tuple[dict[str, frozenset[int]], frozenset[int]]:
    """The exclusive dataplane pool's lists (name -> CPUs) and the PIDs its tasks name."""
    with StateReader(conf_dir) as state:
        state.lock(lock_timeout())
        if DATAPLANE not in state.pool_names():
            raise StateError(f"{conf_dir}/pools has no {DATAPLANE} pool: there is nothing to fence")
        pool = state.read_pool(DATAPLANE)
    if not pool.exclusive:
        raise StateError(
            f"{conf_dir}/pools/{DATAPLANE}/exclusive is 0: the shield fences an exclusive pool"
        )
    lists = {cl.cpus: cpulist.parse(cl.cpus) for cl in pool.cpu_lists.values()}
    roots = frozenset(pid for cl in pool.cpu_lists.values() for pid in cl.tasks)
    return lists, roots


def real_host(
    conf_dir: str, lists: Iterable[str], booking_roots: Iterable[int], proc_root: str = ""
) -> Host:
    """The host kcm runs on, under ``$KCM_PROC_FS`` (or ``proc_root``), ``$KCM_SYS_FS`` and
    ``$KCM_CGROUP_FS``."""
    from kcm.fence.applier import KernelHost
    from kcm.host import cgroups, procfs, sysfs

    return KernelHost(
        conf_dir,
        proc_root=proc_root or procfs.proc_root_or_default(),
        sys_root=sysfs.sys_root(),
        cgroup_root=cgroups.cgroup_root(),
        parent=cgroups.cgroup_parent(),
        lists=lists,
        booking_roots=booking_roots,
    )


def host_on(proc_root: str) -> HostFactory:
    """``real_host`` with the procfs reconcile was given."""

    def make(conf_dir: str, lists: Iterable[str], booking_roots: Iterable[int]) -> Host:
        return real_host(conf_dir, lists, booking_roots, proc_root)

    return make


def shield_main(conf_dir: str, *, quiet: bool, make_host: HostFactory = real_host) -> int:
    """``kcm shield``: fence the dataplane CPUs; 0 once every step is done (what the kernel
    refuses is said, not a failure), 8 if the host stops the shield before it starts."""
    with StateDir(conf_dir, writer=True) as state:
        run_lock = state.hold_run_lock(RUN_LOCK, lock_timeout())
        try:
            lists, roots = read_dataplane(conf_dir)
            host = make_host(conf_dir, sorted(lists), roots)
            report = shield(StateRecordStore(conf_dir), host, lists)
        finally:
            if run_lock is not None:
                os.close(run_lock)
    say(shield_lines(report, lists), quiet)
    for refusal in report.refusals:
        sys.stderr.write(f"kcm: warning: {refusal.what}: {refusal.why}\n")
    finish(report, "shield")
    return 0


def unshield_main(conf_dir: str, *, quiet: bool, make_host: HostFactory = real_host) -> int:
    """``kcm unshield``: undo what the record says shield changed; 0 once all of it is."""
    with StateDir(conf_dir, writer=True) as state:
        run_lock = state.hold_run_lock(RUN_LOCK, lock_timeout())
        try:
            host = make_host(conf_dir, (), ())
            report = unshield(StateRecordStore(conf_dir), host)
        finally:
            if run_lock is not None:
                os.close(run_lock)
    say(unshield_lines(report), quiet)
    for result in report.results:
        if result.outcome is Outcome.CONFLICT:
            sys.stderr.write(f"kcm: warning: {result.detail}\n")
    finish(report, "unshield")
    return 0


@dataclass(frozen=True, slots=True)
class Move:
    """One thing a reconcile pass fenced again: its kind (as shield's lines say it), what, and
    how much (``3 moved`` for tasks)."""

    kind: str
    what: str
    detail: str

    def line(self) -> str:
        return f"kcm reconcile: fence: {self.kind}: {self.what}" + (
            f": {self.detail}" if self.detail else ""
        )

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "what": self.what, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Kept:
    """What one reconcile pass did to keep the fence: the moves, and the steps that failed."""

    moves: tuple[Move, ...]
    failed: tuple[str, ...]


def keep_fence(conf_dir: str, *, make_host: HostFactory = real_host) -> Kept | None:
    """The fence's part of a reconcile pass: while the record says shielded, fence what
    appeared since (``kcm.fence.protocol.keep``). ``None`` when there is no shield to keep:
    no record, one of another phase or boot, or a shield or unshield holding .shield.lock (it
    is doing the job). One read of the record when there is none: reconcile's cost."""
    with StateReader(conf_dir) as state:
        state.lock(lock_timeout())
        text = state.read_hidden(rec.NAME)
    if text is None:
        return None
    try:
        if rec.parse(text).phase != rec.SHIELDED:
            return None
    except ValueError as e:
        raise StateError(f"{conf_dir}/{rec.NAME}: invalid shield record: {e}") from None
    with StateDir(conf_dir, writer=True) as state:
        run_lock = state.hold_run_lock(RUN_LOCK, None)
        if run_lock is None:
            return None
        try:
            lists, roots = read_dataplane(conf_dir)
            report = keep(
                StateRecordStore(conf_dir), make_host(conf_dir, sorted(lists), roots), lists
            )
        finally:
            os.close(run_lock)
    if report is None:
        return None
    moves = tuple(
        Move(kind_of(r), what_of(r), r.detail)
        for r in report.results
        if r.outcome is Outcome.DONE and r.step.action == "ensure"
    )
    failed = tuple(r.detail for r in report.results if r.outcome is Outcome.FAILED)
    return Kept(moves, failed)


def recorded_cgroups(conf_dir: str, cgroup_root: str) -> frozenset[str]:
    """The cgroup directories the shield record names (absolute, under ``cgroup_root``):
    those it made and those whose files it set, a dataplane list's cgroup with its isolated
    partition among them. Reconcile's pruning of empty levels must leave these: removing a
    list's cgroup would drop its partition while the host is shielded."""
    with StateReader(conf_dir) as state:
        state.lock(lock_timeout())
        text = state.read_hidden(rec.NAME)
    if text is None:
        return frozenset()
    try:
        record = rec.parse(text)
    except ValueError as e:
        raise StateError(f"{conf_dir}/{rec.NAME}: invalid shield record: {e}") from None
    root = cgroup_root.rstrip("/")
    out = set()
    for change in (*record.changes, *record.stale):
        if isinstance(change, Write) and change.root is Root.CGROUP:
            out.add(f"{root}/{change.path.rpartition('/')[0]}".rstrip("/"))
        elif isinstance(change, MakeCgroup):
            out.add(f"{root}/{change.path}")
    return frozenset(out)


def say(lines: list[str], quiet: bool) -> None:
    if not quiet:
        sys.stderr.write("".join(line + "\n" for line in lines))


def finish(report: Report, command: str) -> None:
    failed = report.failed
    if failed:
        raise EnvironmentProblem(
            f"{command} incomplete: {len(failed)} step(s) failed, the first: {failed[0].detail};"
            f" the record keeps them: run kcm {command} again"
        )


# -- what changed, one line per kind ------------------------------------------------------

KINDS = (
    "cpusets",
    "load balancing",
    "partitions",
    "systemd units",
    "tasks",
    "thread affinity",
    "IRQs",
    "new IRQs",
    "workqueues",
)


def kind_of(result: StepResult) -> str:
    change = result.step.change
    if isinstance(change, MakeCgroup | MoveTasks):
        return "cpusets" if isinstance(change, MakeCgroup) else "tasks"
    if isinstance(change, Pin | Affinity):
        return "thread affinity"
    if isinstance(change, UnitProperty):
        return "systemd units"
    assert isinstance(change, Write)
    if change.root is Root.PROC:
        return "new IRQs" if change.path == DEFAULT_SMP_AFFINITY else "IRQs"
    if change.root is Root.SYS and change.path == WORKQUEUE_CPUMASK:
        return "workqueues"
    name = change.path.rpartition("/")[2]
    if name == "cpuset.sched_load_balance":
        return "load balancing"
    if name in ("cpuset.cpus.partition", "cpuset.cpus.exclusive"):
        return "partitions"
    return "cpusets"


def what_of(result: StepResult) -> str:
    change = result.step.change
    if isinstance(change, Write):
        return change.what
    if isinstance(change, MakeCgroup):
        return f"cgroup {change.path}"
    if isinstance(change, MoveTasks):
        if result.step.action == "restore":
            return f"{change.target} back to {change.source or '/'}"
        return f"{change.source or '/'} to {change.target}"
    if isinstance(change, Affinity):
        return change.what
    if isinstance(change, Pin):
        return f"thread {change.tid}"
    return f"{change.unit} {change.name}"


def _names(results: list[StepResult], limit: int = 3) -> str:
    names = [what_of(r) for r in results[:limit]]
    more = f" and {len(results) - limit} more" if len(results) > limit else ""
    return ", ".join(names) + more


WORDS = {
    "ensure": {
        Outcome.DONE: "changed",
        Outcome.ALREADY: "already so",
        Outcome.REFUSED: "refused by the kernel",
        Outcome.GONE: "gone",
        Outcome.CONFLICT: "left as others set them",
        Outcome.FAILED: "failed",
    },
    "restore": {
        Outcome.DONE: "restored",
        Outcome.ALREADY: "already as before",
        Outcome.REFUSED: "refused by the kernel",
        Outcome.GONE: "gone",
        Outcome.CONFLICT: "left as others set them since",
        Outcome.FAILED: "failed",
    },
}


def kind_lines(command: str, results: tuple[StepResult, ...]) -> list[str]:
    by_kind: dict[str, list[StepResult]] = {}
    for result in results:
        if isinstance(result.step.change, Pin) and result.step.action == "ensure":
            continue  # a pin is a restore only: nothing to say when shielding
        by_kind.setdefault(kind_of(result), []).append(result)
    lines = []
    for kind in KINDS:
        these = by_kind.get(kind)
        if not these:
            continue
        parts = []
        for outcome in Outcome:
            hits = [r for r in these if r.outcome is outcome]
            if not hits:
                continue
            word = WORDS[hits[0].step.action][outcome]
            if kind == "tasks" and outcome in (Outcome.DONE, Outcome.ALREADY):
                parts.append("; ".join(f"{what_of(r)}: {r.detail or 'none moved'}" for r in hits))
                continue
            shown = ""
            if outcome is not Outcome.ALREADY:
                details = [r.detail for r in hits if r.detail and outcome is not Outcome.DONE]
                shown = f" ({_names(hits)})" if not details else f" ({'; '.join(details[:3])})"
            parts.append(f"{len(hits)} {word}{shown}")
        lines.append(f"kcm {command}: {kind}: " + ", ".join(parts))
    return lines


def shield_lines(report: Report, lists: Mapping[str, frozenset[int]]) -> list[str]:
    plan = report.plan
    lines = []
    if report.dropped_stale_record:
        lines.append("kcm shield: dropped a record from an earlier boot (nothing of it lasts one)")
    if plan is not None:
        backend = {
            "cgroup-v1": "a cgroup v1 cpuset",
            "cgroup-v2": "a cgroup v2 cpuset",
            "systemd": "systemd's AllowedCPUs",
            "affinity": "thread affinities alone",
        }[plan.backend]
        lines.append(
            f"kcm shield: dataplane CPUs {cpulist.format(plan.dataplane)}"
            f" ({len(lists)} list(s)) fenced off from the rest of the host"
            f" ({cpulist.format(plan.housekeeping)}) through {backend}"
        )
    lines += kind_lines("shield", report.results)
    lines += [f"kcm shield: note: {notice}" for notice in report.notices]
    return lines


def unshield_lines(report: Report) -> list[str]:
    if not report.results:
        if report.dropped_stale_record:
            return ["kcm unshield: dropped a record from an earlier boot; nothing to undo"]
        return ["kcm unshield: no shield record: nothing to undo"]
    lines = kind_lines("unshield", report.results)
    if report.record_removed:
        lines.append("kcm unshield: the host is as it was before kcm shield; record removed")
    return lines
