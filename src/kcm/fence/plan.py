"""The shield's plan: from what was read (a ``HostView``) and the dataplane CPUs, every change
``kcm shield`` makes, each with the exact prior value; and the steps that apply or undo a
record. Pure functions over values; nothing here reads or writes the host.

A rerun never re-reads a prior that kcm may already have changed: ``original_view`` puts the
record's priors back into what was read, and the plan is computed from that. So a shield
interrupted at any point, run again, plans exactly what it planned the first time (plus what
appeared since), and the undo restores what was there before the first run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kcm import cpulist
from kcm.errors import StateError
from kcm.fence.changes import (
    Affinity,
    Change,
    Compare,
    MakeCgroup,
    MoveTasks,
    Pin,
    Root,
    UnitProperty,
    Write,
)
from kcm.fence.record import SHIELDING, Record
from kcm.host.cpusets import Cpuset

SYSTEM_SUFFIX = "-system"
WORKQUEUE_CPUMASK = "devices/virtual/workqueue/cpumask"
DEFAULT_SMP_AFFINITY = "irq/default_smp_affinity"
ALLOWED_CPUS = "AllowedCPUs"


@dataclass(frozen=True, slots=True)
class TaskView:
    """One thread as read: ``allowed`` is ``Cpus_allowed_list`` as the kernel printed it;
    ``cgroup`` its path in the cpuset hierarchy (``/`` for the root)."""

    pid: int
    tid: int
    comm: str
    kernel: bool
    no_setaffinity: bool
    allowed: str
    start_time: int
    cgroup: str = "/"

    @property
    def kthreadd(self) -> bool:
        # PID 2 on every Linux; the kernel refuses to move it to another cgroup.
        return self.kernel and self.pid == 2 and self.comm == "kthreadd"


@dataclass(frozen=True, slots=True)
class IrqView:
    """One IRQ: ``allowed`` is ``smp_affinity_list`` as printed; ``settable`` false where the
    kernel made it read-only (managed and per-CPU IRQs)."""

    irq: int
    allowed: str
    settable: bool
    name: str


@dataclass(frozen=True, slots=True)
class IrqBalanceView:
    """irqbalance, running as ``pid``; ``banned`` its IRQBALANCE_BANNED_CPULIST (or the CPUs of
    IRQBALANCE_BANNED_CPUS) from ``config``, ``None`` if neither is set."""

    pid: int
    banned: frozenset[int] | None
    config: str | None


@dataclass(frozen=True, slots=True)
class CgroupView:
    """The cpuset hierarchy. ``hierarchy`` is its directory relative to the cgroup root
    (``cpuset`` on v1, ``""`` on v2). ``kcm_subtree`` is kcm's own (``/kcm``), never narrowed;
    ``list_cgroups`` maps each dataplane list to its cgroup there. On a systemd-owned v2 tree,
    ``systemd_units`` holds each unit (its cgroup path without the leading ``/``, whose last
    component is the unit's name) and its ``AllowedCPUs``: the top-level ones, and below each
    unit that holds kcm's subtree (``system.slice`` holding ``kcm-bookings.service``), its
    children, down to kcm's own."""

    version: str
    hierarchy: str
    cpusets: tuple[Cpuset, ...]
    kcm_subtree: str
    list_cgroups: tuple[tuple[str, str], ...] = ()
    subtree_control: str | None = None
    exclusive_supported: bool = False
    systemd_units: tuple[tuple[str, str], ...] | None = None

    def find(self, path: str) -> Cpuset | None:
        for cs in self.cpusets:
            if cs.path == path:
                return cs
        return None


@dataclass(frozen=True, slots=True)
class HostView:
    """Everything the shield's plan is computed from, as read."""

    boot_id: str
    online: frozenset[int]
    cgroup: CgroupView | None
    tasks: tuple[TaskView, ...]
    irqs: tuple[IrqView, ...]
    default_smp_affinity: str | None
    workqueue_cpumask: str | None
    irqbalance: IrqBalanceView | None = None
    isolated: frozenset[int] = frozenset()
    nohz_full: frozenset[int] = frozenset()
    bookings: frozenset[int] = frozenset()  # PIDs of dataplane bookings (they stay put)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Something the fence cannot do, and why; ``blocking`` stops the shield before it starts."""

    what: str
    why: str
    blocking: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    backend: str
    dataplane: frozenset[int]
    housekeeping: frozenset[int]
    changes: tuple[Change, ...]
    refusals: tuple[Refusal, ...] = field(default=())
    notices: tuple[str, ...] = field(default=())


# -- paths -------------------------------------------------------------------------------


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def cgroup_file(view: CgroupView, path: str, name: str) -> str:
    """A file of cpuset ``path`` relative to the cgroup root."""
    return _join(view.hierarchy, path, name)


def cgroup_dir(view: CgroupView, path: str) -> str:
    return _join(view.hierarchy, path)


def _parent(path: str) -> str:
    head = path.rstrip("/").rpartition("/")[0]
    return head or "/"


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def system_cgroup(view: CgroupView) -> str:
    """The cgroup that holds everything else: ``/kcm-system`` beside ``/kcm``, as cset's
    ``/system`` beside its shield."""
    top = "/" + view.kcm_subtree.strip("/").split("/")[0]
    return top + SYSTEM_SUFFIX


def _requested(view: CgroupView, path: str, online: frozenset[int]) -> frozenset[int]:
    """The CPUs a cgroup asks for in writing: its ``cpuset.cpus``, or (v2, empty) its
    parent's; the root asks for every online CPU. Never the effective CPUs, which the
    shield's own partitions change."""
    cs = view.find(path)
    if path == "/" or cs is None:
        return online
    if cs.cpus.strip():
        return cpulist.parse(cs.cpus)
    return _requested(view, _parent(path), online)


def _parse_cpus(text: str) -> frozenset[int]:
    try:
        return cpulist.parse(text)
    except ValueError:
        return frozenset()


# -- the plan ------------------------------------------------------------------------------


def plan_shield(view: HostView, lists: Mapping[str, frozenset[int]]) -> Plan:
    """Every change that fences ``lists`` (dataplane list name -> CPUs) on the host ``view``.

    ``view`` must be the host as it was before any shield: pass ``original_view(read, rec)``
    when a record exists.
    """
    dataplane = frozenset().union(*lists.values()) if lists else frozenset()
    if not dataplane:
        raise StateError("the dataplane pool has no CPU lists: there is nothing to shield")
    outside = dataplane - view.online
    if outside:
        raise StateError(
            f"dataplane CPUs {cpulist.format(outside)} are not online"
            f" (online: {cpulist.format(view.online)})"
        )
    housekeeping = view.online - dataplane
    if not housekeeping:
        raise StateError(
            f"the dataplane pool holds every online CPU ({cpulist.format(view.online)}):"
            " nothing would be left for the rest of the host"
        )
    b = _Builder(view, lists, dataplane, housekeeping)
    cg = view.cgroup
    if cg is None:
        backend = "affinity"
        b.refuse(
            "cpusets",
            "no cgroup hierarchy holds cpuset: threads are fenced by affinity alone, and"
            " processes started later by unfenced parents may run on the dataplane CPUs",
        )
        b.affinities(lambda t: True)
    elif cg.version == "v1":
        backend = "cgroup-v1"
        b.v1(cg)
    elif cg.systemd_units is not None:
        backend = "systemd"
        b.v2(cg, systemd=True)
    else:
        backend = "cgroup-v2"
        b.v2(cg, systemd=False)
    b.interrupts()
    b.boot_notices()
    return Plan(
        backend,
        dataplane,
        housekeeping,
        (*b.pins, *b.changes, *b.affinity, *b.repins, *b.irq_changes),
        tuple(b.refusals),
        tuple(b.notices),
    )


class _Builder:
    """Collects a plan's changes in the order shield applies them."""

    def __init__(
        self,
        view: HostView,
        lists: Mapping[str, frozenset[int]],
        dataplane: frozenset[int],
        housekeeping: frozenset[int],
    ) -> None:
        self.view = view
        self.lists = lists
        self.dataplane = dataplane
        self.housekeeping = housekeeping
        self.changes: list[Change] = []
        self.refusals: list[Refusal] = []
        self.notices: list[str] = []
        self.own_list = {cpu: cpus for cpus in lists.values() for cpu in cpus}
        self.reported: set[int] = set()  # tids of threads already refused
        self.affined: set[int] = set()  # tids of threads that get Affinity changes
        # Sections of the plan, in the order shield applies them. Pins come first, so that
        # unshield, undoing last first, sets them after every cpuset change that resets them.
        self.pins: list[Change] = []
        self.affinity: list[Change] = []
        self.irq_changes: list[Change] = []
        # After the moves: the pinned threads' own affinities, within the fence.
        self.repins: list[Change] = []

    def refuse(self, what: str, why: str, *, blocking: bool = False) -> None:
        self.refusals.append(Refusal(what, why, blocking))

    def _fenced(self, cpus: frozenset[int]) -> frozenset[int]:
        """``cpus`` without the dataplane CPUs, or the housekeeping CPUs if none are left."""
        return (cpus - self.dataplane) or self.housekeeping

    def _booked(self, task: TaskView) -> bool:
        return task.pid in self.view.bookings

    def _kernel_refuses(self, task: TaskView, *, report: bool = True, moving: bool = True) -> bool:
        """Whether the kernel refuses to move ``task`` to another cgroup (``moving``) or to
        change its affinity; reports those that span a dataplane CPU."""
        if not (task.no_setaffinity or (moving and task.kthreadd)):
            return False
        allowed = _parse_cpus(task.allowed)
        if task.kernel and len(allowed) == 1:
            return True  # a per-CPU kernel thread, bound there by design: not an intrusion
        if report and not allowed.isdisjoint(self.dataplane) and task.tid not in self.reported:
            self.reported.add(task.tid)
            why = (
                "the kernel refuses to move kthreadd out of the root cgroup; the kernel threads"
                " it starts later begin there, and reconcile moves them while shielded"
                if task.kthreadd
                else "PF_NO_SETAFFINITY: the kernel refuses to move it; unbound workqueue"
                " workers follow the workqueue cpumask"
            )
            self.refuse(f"kernel thread {task.comm} ({task.tid})", why)
        return True

    # -- threads --------------------------------------------------------------------------

    def affinities(self, which: object) -> None:
        """Affinity changes for movable threads allowed on a dataplane CPU; ``which`` picks."""
        assert callable(which)
        for task in self.view.tasks:
            if self._booked(task) or not which(task) or self._kernel_refuses(task, moving=False):
                continue
            allowed = _parse_cpus(task.allowed)
            if allowed.isdisjoint(self.dataplane):
                continue
            self.affined.add(task.tid)
            self.affinity.append(
                Affinity(
                    task.pid,
                    task.tid,
                    task.start_time,
                    task.allowed,
                    cpulist.format(self._fenced(allowed)),
                    f"{'kernel thread' if task.kernel else 'thread'} {task.comm} ({task.tid})",
                )
            )

    def _narrow(self, cg: CgroupView, cs: Cpuset, requested: frozenset[int]) -> bool:
        narrowed = requested - self.dataplane
        if not narrowed:
            self.refuse(
                f"cpuset {cs.path}",
                f"it holds only dataplane CPUs ({cpulist.format(requested)}): its tasks keep"
                " running there; run them through kcm isolate, or remove it",
            )
            return False
        self.changes.append(
            Write(
                Root.CGROUP,
                cgroup_file(cg, cs.path, "cpuset.cpus"),
                Compare.CPUS,
                cs.cpus,
                cpulist.format(narrowed),
                f"cpuset {cs.path}",
            )
        )
        return True

    def _pins(
        self, cg: CgroupView, *, moved_from: set[str], narrowed: set[str], everywhere: bool
    ) -> None:
        """Pin records for the threads whose affinity a cpuset change resets (a kernel before
        6.2 sets it to the cpuset's CPUs, forgetting the thread's own) and whose own affinity
        was narrower than their cgroup's: those moved, those in or below a narrowed cgroup,
        and with partitions (``everywhere``) all outside kcm's subtree."""
        for task in self.view.tasks:
            if self._booked(task) or _under(task.cgroup, cg.kcm_subtree):
                continue
            if not (
                everywhere
                or task.cgroup in moved_from
                or any(_under(task.cgroup, path) for path in narrowed)
            ):
                continue
            if self._kernel_refuses(task, report=False) or task.tid in self.affined:
                continue
            allowed = _parse_cpus(task.allowed)
            if allowed == _requested(cg, task.cgroup, self.view.online):
                continue
            self.pins.append(Pin(task.pid, task.tid, task.start_time, task.allowed))
            # Its own choice, within the fence: set again after the moves, so a task pinned to
            # housekeeping CPUs keeps them whatever the kernel did on the move.
            after = self._fenced(
                self.housekeeping
                if task.cgroup in moved_from
                else _requested(cg, task.cgroup, self.view.online)
            )
            own = allowed - self.dataplane
            if own and own != after:
                self.repins.append(
                    Affinity(
                        task.pid,
                        task.tid,
                        task.start_time,
                        cpulist.format(after),
                        cpulist.format(own),
                        f"thread {task.comm} ({task.tid})",
                    )
                )

    def _foreign(self, cg: CgroupView, path: str, system: str) -> bool:
        """A cgroup that is neither kcm's subtree, a level above it (``/kcm`` above
        ``/kcm/<state id>``: narrowing it would narrow the bookings), the system cgroup nor
        the root."""
        return not (
            path == "/"
            or _under(path, cg.kcm_subtree)
            or _under(cg.kcm_subtree, path)
            or _under(path, system)
        )

    def v1(self, cg: CgroupView) -> None:
        online = self.view.online
        system = system_cgroup(cg)
        root = cg.find("/")
        if cg.find(system) is not None:
            self.refuse(
                f"cpuset {system}",
                "it exists and no shield record names it: remove it, or find who made it",
                blocking=True,
            )
            return
        for cs in cg.cpusets:
            top = _parent(cs.path) == "/" and cs.path != "/"
            if top and cs.cpu_exclusive and not _parse_cpus(cs.cpus).isdisjoint(self.housekeeping):
                self.refuse(
                    f"cpuset {cs.path}",
                    "it is cpu_exclusive and shares CPUs with the system cpuset kcm"
                    f" needs ({cpulist.format(self.housekeeping)})",
                    blocking=True,
                )
        mems = root.mems if root is not None and root.mems else "0"
        self.changes.append(
            MakeCgroup(
                cgroup_dir(cg, system),
                (
                    ("cpuset.cpus", cpulist.format(self.housekeeping)),
                    ("cpuset.mems", mems),
                ),
                evacuate=True,
            )
        )
        # Narrow every other cpuset that spans a dataplane CPU, children first: v1 wants a
        # child's CPUs within its parent's.
        narrowed: dict[str, frozenset[int]] = {}
        requested = {cs.path: _requested(cg, cs.path, online) for cs in cg.cpusets}
        foreign = [cs for cs in cg.cpusets if self._foreign(cg, cs.path, system)]
        stuck: set[str] = set()  # cpusets that keep dataplane CPUs, and so their parents
        for cs in sorted(foreign, key=lambda c: (-_depth(c.path), c.path)):
            cpus = requested[cs.path]
            if cpus.isdisjoint(self.dataplane):
                continue
            held = sorted(p for p in stuck if _parent(p) == cs.path)
            if held:
                self.refuse(
                    f"cpuset {cs.path}",
                    f"its child {held[0]} keeps dataplane CPUs, and cgroup v1 wants a child's"
                    " CPUs within its parent's",
                )
                stuck.add(cs.path)
            elif self._narrow(cg, cs, cpus):
                narrowed[cs.path] = cpus - self.dataplane
            else:
                stuck.add(cs.path)
        moved = [t for t in self.view.tasks if t.cgroup == "/"]
        for task in moved:
            if not self._booked(task):
                self._kernel_refuses(task)  # reports the kernel threads that stay
        self._pins(cg, moved_from={"/"}, narrowed=set(narrowed), everywhere=False)
        keep = tuple(sorted({t.pid for t in moved if self._booked(t)}))
        self.changes.append(
            MoveTasks(cgroup_dir(cg, "/"), cgroup_dir(cg, system), "tasks", True, keep)
        )
        # kthreadd stays in the root cpuset, but takes an affinity like any kernel thread.
        self.affinities(lambda t: t.cgroup == "/" and t.kthreadd)
        # Load balancing: off in every cpuset that spans a dataplane CPU and a CPU outside
        # its list, the root included; the system cpuset balances the rest.
        after = {**requested, **narrowed}
        for cs in cg.cpusets:
            if not cs.load_balance or _under(cs.path, system):
                continue
            cpus = after.get(cs.path, frozenset())
            if any(cpus - self.own_list[cpu] - self.view.isolated for cpu in cpus & self.dataplane):
                self.changes.append(
                    Write(
                        Root.CGROUP,
                        cgroup_file(cg, cs.path, "cpuset.sched_load_balance"),
                        Compare.TEXT,
                        "1",
                        "0",
                        f"cpuset {cs.path}",
                    )
                )

    def v2(self, cg: CgroupView, *, systemd: bool) -> None:
        online = self.view.online
        system = system_cgroup(cg)
        kcm_top = "/" + cg.kcm_subtree.strip("/").split("/")[0]
        narrowed: set[str] = set()
        if systemd:
            # systemd owns the tree: ask it, through each unit's AllowedCPUs. A unit that holds
            # kcm's subtree is left as it is (narrowing it would narrow the bookings), and its
            # other children are narrowed instead.
            units = [("/" + p.strip("/"), allowed) for p, allowed in cg.systemd_units or ()]
            for cgroup, allowed in units:
                if _under(cg.kcm_subtree, cgroup):
                    continue
                requested = _parse_cpus(allowed) if allowed.strip() else online
                if requested.isdisjoint(self.dataplane):
                    continue
                unit = cgroup.rpartition("/")[2]
                if not requested - self.dataplane:
                    self.refuse(
                        f"unit {unit}", f"its AllowedCPUs ({allowed}) are all dataplane CPUs"
                    )
                    continue
                narrowed.add(cgroup)
                self.changes.append(
                    UnitProperty(
                        unit, ALLOWED_CPUS, allowed, cpulist.format(requested - self.dataplane)
                    )
                )
            if any(_under(c, kcm_top) and not _under(cg.kcm_subtree, c) for c, _ in units):
                self.notices.append(
                    f"kcm's cgroups ({cg.kcm_subtree}) lie inside {kcm_top.lstrip('/')}, which"
                    " kcm therefore leaves unfenced: its other units are fenced one by one, and"
                    " one started in it later runs on the dataplane CPUs until the next kcm"
                    " reconcile pass fences it; give kcm-bookings.service a slice of its own"
                    " (Slice=kcm.slice) to fence them at once"
                )
        else:
            if cg.find(system) is not None:
                self.refuse(
                    f"cgroup {system}",
                    "it exists and no shield record names it: remove it, or find who made it",
                    blocking=True,
                )
                return
            control = cg.subtree_control or ""
            if "cpuset" not in control.split():
                self.changes.append(
                    Write(
                        Root.CGROUP,
                        cgroup_file(cg, "/", "cgroup.subtree_control"),
                        Compare.CONTROLLERS,
                        control,
                        (control + " cpuset").strip(),
                        "the root cgroup's controllers",
                    )
                )
            self.changes.append(
                MakeCgroup(
                    cgroup_dir(cg, system),
                    (("cpuset.cpus", cpulist.format(self.housekeeping)),),
                    evacuate=True,
                )
            )
            # A v2 child never has CPUs its parent lacks: narrowing the top level fences all.
            for cs in cg.cpusets:
                if _parent(cs.path) != "/" or not self._foreign(cg, cs.path, system):
                    continue
                cpus = _requested(cg, cs.path, online)
                if not cpus.isdisjoint(self.dataplane) and self._narrow(cg, cs, cpus):
                    narrowed.add(cs.path)
            keep = tuple(
                sorted({t.pid for t in self.view.tasks if t.cgroup == "/" and self._booked(t)})
            )
            self.changes.append(
                MoveTasks(cgroup_dir(cg, "/"), cgroup_dir(cg, system), "cgroup.procs", False, keep)
            )
        partitions = self._partitions(cg)
        # What stays in the root: kernel threads (cgroup v2 keeps them there), and on a
        # systemd host anything outside its units. Their affinity is set directly.
        self.affinities(lambda t: t.cgroup == "/" and (t.kernel or systemd))
        moved_from = set() if systemd else {"/"}
        self._pins(cg, moved_from=moved_from, narrowed=narrowed, everywhere=partitions)

    def _partitions(self, cg: CgroupView) -> bool:
        """An isolated partition per dataplane list, where the kernel can make one below
        kcm's subtree (cpuset.cpus.exclusive on every ancestor, Linux 6.7 and later);
        whether any is planned."""
        cpus = cpulist.format(self.dataplane)
        if not cg.exclusive_supported:
            self.refuse(
                "scheduler load balancing",
                "this kernel has no cpuset.cpus.exclusive (Linux 6.7): no isolated partition"
                f" can be made below kcm's subtree, so load balancing stays on for CPUs {cpus};"
                f" boot with isolcpus=domain,{cpus} to turn it off",
            )
            return False
        held = sorted(
            {
                t.pid
                for t in self.view.tasks
                if self._booked(t) and not _under(t.cgroup, cg.kcm_subtree)
            }
        )
        if held:
            self.refuse(
                "scheduler load balancing",
                f"dataplane bookings held by PID alone, outside kcm's cgroups (PIDs"
                f" {', '.join(map(str, held[:5]))}{' ...' if len(held) > 5 else ''}): an isolated"
                " partition would take their CPUs from them, so load balancing stays on for CPUs"
                f" {cpus} until they run in booking cgroups",
            )
            return False
        paths = dict(cg.list_cgroups)
        missing = [name for name in self.lists if name not in paths or cg.find(paths[name]) is None]
        if missing:
            self.refuse(
                "scheduler load balancing",
                f"the cgroups of dataplane lists {', '.join(sorted(missing))} do not exist yet:"
                " their partitions are made by the shield that follows their creation",
            )
        ancestors: set[str] = set()
        for name, path in paths.items():
            if name in missing:
                continue
            cur = _parent(path)
            while cur != "/":
                ancestors.add(cur)
                cur = _parent(cur)
        for path in sorted(ancestors, key=lambda p: (_depth(p), p)):
            cs = cg.find(path)
            if cs is None or cs.exclusive is None:
                continue
            wanted = _parse_cpus(cs.exclusive) | self.dataplane
            if _parse_cpus(cs.exclusive) != wanted:
                self.changes.append(
                    Write(
                        Root.CGROUP,
                        cgroup_file(cg, path, "cpuset.cpus.exclusive"),
                        Compare.CPUS,
                        cs.exclusive,
                        cpulist.format(wanted),
                        f"cgroup {path}",
                    )
                )
        for name in sorted(self.lists, key=lambda n: min(self.lists[n])):
            if name in missing:
                continue
            cs = cg.find(paths[name])
            assert cs is not None
            if cs.exclusive is not None and _parse_cpus(cs.exclusive) != self.lists[name]:
                self.changes.append(
                    Write(
                        Root.CGROUP,
                        cgroup_file(cg, cs.path, "cpuset.cpus.exclusive"),
                        Compare.CPUS,
                        cs.exclusive,
                        cpulist.format(self.lists[name]),
                        f"cgroup {cs.path}",
                    )
                )
            if cs.partition != "isolated":
                self.changes.append(
                    Write(
                        Root.CGROUP,
                        cgroup_file(cg, cs.path, "cpuset.cpus.partition"),
                        Compare.TEXT,
                        cs.partition or "member",
                        "isolated",
                        f"cgroup {cs.path}",
                    )
                )
        return len(missing) < len(self.lists)

    # -- interrupts and workqueues ---------------------------------------------------------

    def interrupts(self) -> None:
        view = self.view
        for irq in view.irqs:
            allowed = _parse_cpus(irq.allowed)
            if allowed.isdisjoint(self.dataplane):
                continue
            what = f"IRQ {irq.irq} ({irq.name or 'unnamed'})"
            if not irq.settable:
                self.refuse(
                    what,
                    "the kernel refuses to move it (a managed or per-CPU IRQ); for managed IRQs"
                    f" boot with isolcpus=managed_irq,domain,{cpulist.format(self.dataplane)}",
                )
                continue
            self.irq_changes.append(
                Write(
                    Root.PROC,
                    f"irq/{irq.irq}/smp_affinity_list",
                    Compare.CPUS,
                    irq.allowed,
                    cpulist.format(self._fenced(allowed)),
                    what,
                    identity=irq.name,
                )
            )
        for root, path, text, what in (
            (Root.PROC, DEFAULT_SMP_AFFINITY, view.default_smp_affinity, "new IRQs' affinity"),
            (Root.SYS, WORKQUEUE_CPUMASK, view.workqueue_cpumask, "unbound workqueues"),
        ):
            if text is None:
                continue
            cpus = cpulist.parse_mask(text)
            if cpus.isdisjoint(self.dataplane):
                continue
            self.irq_changes.append(
                Write(root, path, Compare.MASK, text, cpulist.format_mask(self._fenced(cpus)), what)
            )
        balance = view.irqbalance
        if balance is not None:
            banned = balance.banned
            if banned is None:
                # Unconfigured, irqbalance leaves isolcpus and nohz_full CPUs alone by itself.
                banned = view.isolated | view.nohz_full
            if not self.dataplane <= banned:
                wanted = cpulist.format(self.dataplane | (balance.banned or frozenset()))
                where = (
                    balance.config
                    or "/etc/default/irqbalance (Debian) or /etc/sysconfig/irqbalance"
                )
                self.notices.append(
                    f"irqbalance (pid {balance.pid}) moves IRQs back onto dataplane CPUs"
                    f" {cpulist.format(self.dataplane - banned)}: set"
                    f" IRQBALANCE_BANNED_CPULIST={wanted} in {where} and restart it"
                    " (systemctl restart irqbalance); until then each kcm reconcile pass"
                    " moves them off again"
                )

    def boot_notices(self) -> None:
        missing = []
        if not self.dataplane <= self.view.isolated:
            missing.append(f"isolcpus=managed_irq,domain,{cpulist.format(self.dataplane)}")
        if not self.dataplane <= self.view.nohz_full:
            cpus = cpulist.format(self.dataplane)
            missing += [f"nohz_full={cpus}", f"rcu_nocbs={cpus}"]
        if missing:
            self.notices.append(
                "boot-only, and not set by kcm: for the rest of the isolation (the scheduler"
                " tick, RCU callbacks, managed IRQs) boot with " + " ".join(missing)
            )


# -- what the host was before the shield --------------------------------------------------


def original_view(view: HostView, record: Record | None) -> HostView:
    """``view`` with every target the record names put back to its recorded prior: the host as
    it was before the first shield, as far as kcm's own changes go.

    Threads whose affinity a recorded cpuset change resets (moved, in or below a narrowed
    cgroup, or anywhere outside kcm's subtree once partitions are recorded) get back their
    pinned affinity where the record has one, else their cgroup's CPUs: any narrower
    affinity they had was pinned.
    """
    if record is None:
        return view
    changes = (*record.changes, *record.stale)
    cg = view.cgroup
    cpusets = {cs.path: cs for cs in cg.cpusets} if cg is not None else {}
    subtree_control = cg.subtree_control if cg is not None else None
    units = (
        {p.strip("/"): a for p, a in cg.systemd_units}
        if cg is not None and cg.systemd_units is not None
        else None
    )
    irqs = {irq.irq: irq for irq in view.irqs}
    default, workqueue = view.default_smp_affinity, view.workqueue_cpumask
    removed: set[str] = set()
    moved: dict[str, str] = {}  # target cgroup -> source cgroup (hierarchy paths)
    narrowed: set[str] = set()
    partitions = False
    pins: dict[tuple[int, int], str] = {}
    affinities: dict[tuple[int, int], str] = {}
    for change in changes:
        if isinstance(change, Write):
            if change.root is Root.PROC and change.path == DEFAULT_SMP_AFFINITY:
                default = change.prior
            elif change.root is Root.SYS and change.path == WORKQUEUE_CPUMASK:
                workqueue = change.prior
            elif change.root is Root.PROC and change.path.startswith("irq/"):
                number = int(change.path.split("/")[1])
                irq = irqs.get(number)
                if irq is not None and irq.name == change.identity:
                    irqs[number] = replace(irq, allowed=change.prior)
            elif change.root is Root.CGROUP and cg is not None:
                path, name = _split_cgroup_file(cg, change.path)
                if name == "cgroup.subtree_control" and path == "/":
                    subtree_control = change.prior
                cs = cpusets.get(path)
                if cs is None:
                    continue
                if name == "cpuset.cpus":
                    cpusets[path] = replace(cs, cpus=change.prior)
                    narrowed.add(path)
                elif name == "cpuset.sched_load_balance":
                    cpusets[path] = replace(cs, load_balance=change.prior.strip() == "1")
                elif name == "cpuset.cpus.partition":
                    cpusets[path] = replace(cs, partition=change.prior)
                    partitions = True
                elif name == "cpuset.cpus.exclusive":
                    cpusets[path] = replace(cs, exclusive=change.prior)
        elif isinstance(change, MakeCgroup) and cg is not None:
            removed.add(_hierarchy_path(cg, change.path))
        elif isinstance(change, MoveTasks) and cg is not None:
            moved[_hierarchy_path(cg, change.target)] = _hierarchy_path(cg, change.source)
        elif isinstance(change, Pin):
            pins[(change.tid, change.start_time)] = change.prior
        elif isinstance(change, Affinity):
            affinities[(change.tid, change.start_time)] = change.prior
        elif isinstance(change, UnitProperty) and units is not None:
            for path in [p for p in units if p.rpartition("/")[2] == change.unit]:
                units[path] = change.prior
                narrowed.add("/" + path)
                cs = cpusets.get("/" + path)
                if cs is not None:
                    cpusets["/" + path] = replace(cs, cpus=change.prior)
    new_cg = None
    if cg is not None:
        new_cg = replace(
            cg,
            cpusets=tuple(cs for path, cs in cpusets.items() if path not in removed),
            subtree_control=subtree_control,
            systemd_units=None if units is None else tuple(units.items()),
        )
    tasks = []
    for task in view.tasks:
        key = (task.tid, task.start_time)
        affected = False
        if new_cg is not None and task.pid not in view.bookings:
            if task.cgroup in moved:
                task = replace(task, cgroup=moved[task.cgroup])
                affected = True
            elif not _under(task.cgroup, new_cg.kcm_subtree):
                affected = partitions or any(_under(task.cgroup, p) for p in narrowed)
        if key in pins:  # the first value: a pinned thread may have a repin's Affinity too
            task = replace(task, allowed=pins[key])
        elif key in affinities:
            task = replace(task, allowed=affinities[key])
        elif affected and new_cg is not None and not (task.no_setaffinity or task.kthreadd):
            cpus = _requested(new_cg, task.cgroup, view.online)
            task = replace(task, allowed=cpulist.format(cpus))
        tasks.append(task)
    return replace(
        view,
        cgroup=new_cg,
        tasks=tuple(tasks),
        irqs=tuple(irqs[n] for n in sorted(irqs)),
        default_smp_affinity=default,
        workqueue_cpumask=workqueue,
    )


def _hierarchy_path(cg: CgroupView, path: str) -> str:
    """A cgroup directory relative to the cgroup root, as a path in the hierarchy."""
    base = cg.hierarchy.strip("/")
    rel = path.strip("/")
    if base and (rel == base or rel.startswith(base + "/")):
        rel = rel[len(base) :]
    return "/" + rel.strip("/")


def _split_cgroup_file(cg: CgroupView, path: str) -> tuple[str, str]:
    """(cgroup path in the hierarchy, file name) of a cgroup file relative to the root."""
    directory, _, name = path.rpartition("/")
    return _hierarchy_path(cg, directory), name


# -- from a plan to a record, and the steps that apply or undo it -------------------------


def next_record(plan: Plan, previous: Record | None, boot_id: str) -> Record:
    """The record to write before applying ``plan``: its changes, and the previous record's
    changes that the plan no longer makes (stale: to restore), all in phase shielding.

    ``plan`` must come from ``original_view``, so a change it shares with ``previous`` carries
    the same prior.
    """
    planned = {c.key for c in plan.changes}
    stale: list[Change] = []
    if previous is not None:
        for change in (*previous.changes, *previous.stale):
            if change.key not in planned and change.key not in {c.key for c in stale}:
                stale.append(change)
    return Record(
        phase=SHIELDING,
        boot_id=boot_id,
        backend=plan.backend,
        dataplane=plan.dataplane,
        housekeeping=plan.housekeeping,
        changes=plan.changes,
        stale=tuple(stale),
    )


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the applier does: make ``change`` hold (``ensure``) or undo it (``restore``)."""

    action: str  # "ensure" | "restore"
    change: Change


def apply_steps(record: Record) -> tuple[Step, ...]:
    """What ``shield`` does with a record: undo its stale changes (last first), then make
    every change hold, in order. Every step is idempotent."""
    return (
        *(Step("restore", c) for c in reversed(record.stale)),
        *(Step("ensure", c) for c in record.changes),
    )


def undo_steps(record: Record) -> tuple[Step, ...]:
    """What ``unshield`` does, from the record alone: undo every change, last first."""
    return tuple(Step("restore", c) for c in reversed((*record.stale, *record.changes)))
