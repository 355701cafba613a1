"""The real host under ``kcm shield``: read a ``HostView`` from the procfs, sysfs and cgroup
roots, and carry out one step of a record at a time (``kcm.fence.protocol.Host``).

Each step is idempotent and needs nothing but the step itself and the host as it is now:
``ensure`` makes a target hold its new value, ``restore`` puts the prior back where the target
still holds the new value, and a target someone else changed since is left as it is
(``CONFLICT``). What the kernel refuses (a managed IRQ, a thread it will not move) is
``REFUSED``; what is gone (a freed IRQ, an exited thread) is ``GONE``; anything else that
fails is ``FAILED``, and the protocol keeps the record so that a rerun tries again.

How each kind of change reaches the kernel:

- kernel files (``Write``): one ``write(2)`` of the value and a newline, through
  ``O_WRONLY | O_TRUNC`` (cgroup files also ``O_CREAT``, as a shell's ``>`` does, so fake
  trees of plain files take them); ``cgroup.subtree_control`` gets ``+cpuset`` or
  ``-cpuset``; an IRQ is first checked to still be the device the record names;
- task moves (``MoveTasks``): each thread's id into the target's ``tasks`` (v1) or each
  process's into ``cgroup.procs`` (v2), pass after pass until a pass finds nothing left to
  move (processes fork meanwhile); the booking's processes (``keep`` and their descendants),
  kthreadd and ``PF_NO_SETAFFINITY`` threads stay;
- thread affinities (``Affinity``, ``Pin``): ``sched_setaffinity(tid)``, after checking by
  start time that the thread is the one recorded;
- systemd units (``UnitProperty``): ``systemctl set-property --runtime`` (``kcm.host.systemd``).

Affinities are set by thread id, which only the calling process's own PID namespace names: the
real setter refuses a procfs root whose ``self`` is not this process (a fake tree, another
namespace's procfs). Tests pass their own setter and ``systemctl``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kcm import cpulist
from kcm.errors import EnvironmentProblem, ParseError
from kcm.fence.changes import (
    Affinity,
    Compare,
    MakeCgroup,
    MoveTasks,
    Pin,
    Root,
    UnitProperty,
    Write,
    same,
)
from kcm.fence.plan import (
    DEFAULT_SMP_AFFINITY,
    WORKQUEUE_CPUMASK,
    CgroupView,
    HostView,
    IrqBalanceView,
    IrqView,
    Step,
    TaskView,
)
from kcm.fence.protocol import Outcome, StepResult
from kcm.host import cgroups, cpusets, interrupts, sysfs, systemd, threads
from kcm.host.threads import read_text

BOOT_ID = "sys/kernel/random/boot_id"
# A move pass finds what forked during the last one; a host that forks faster than kcm moves
# gets the rest at the next pass of reconcile.
MOVE_PASSES = 8
# Files a cgroup directory holds: a directory holding only such plain files is a fake tree's
# cgroup (a kernel's rmdir never says ENOTEMPTY), which rmdir empties first.
_CGROUP_FILE_PREFIXES = ("cgroup.", "cpuset.", "cpu.", "memory.", "io.", "pids.")
_CGROUP_FILES = ("tasks", "notify_on_release", "release_agent")
_IRQ_REFUSALS = (errno.EIO, errno.EINVAL, errno.EPERM, errno.ENOSPC)
_DATAPLANE = "dataplane"

SetAffinity = Callable[[int, frozenset[int]], None]


@dataclass(frozen=True, slots=True)
class Thread:
    """What a move needs of one thread: its process, parent, flags and identity."""

    tid: int
    pid: int
    ppid: int
    comm: str
    kernel: bool
    no_setaffinity: bool
    start_time: int

    @property
    def kthreadd(self) -> bool:
        return self.kernel and self.pid == 2 and self.comm == "kthreadd"


def own_procfs(proc_root: str) -> bool:
    """Whether ``proc_root`` is a procfs of this process's PID namespace (its ``self`` is us)."""
    try:
        return os.readlink(f"{proc_root}/self") == str(os.getpid())
    except OSError:
        return False


class KernelHost:
    """The host whose procfs, sysfs and cgroup tree are at the given roots.

    ``conf_dir`` names the state (its booking cgroups' ``<state id>``), ``parent`` is
    ``$KCM_CGROUP_PARENT``, ``lists`` the dataplane lists and ``booking_roots`` the PIDs their
    tasks files name (they and their descendants stay where they are).
    """

    def __init__(
        self,
        conf_dir: str,
        *,
        proc_root: str,
        sys_root: str,
        cgroup_root: str,
        parent: str,
        lists: Iterable[str],
        booking_roots: Iterable[int],
        set_affinity: SetAffinity | None = None,
        systemctl: str | None = None,
    ) -> None:
        # The real setter and systemctl act on this host: only with its own procfs.
        if (set_affinity is None or systemctl is None) and not own_procfs(proc_root):
            raise EnvironmentProblem(
                f"KCM_PROC_FS={proc_root} is not this process's procfs (its self is not PID"
                f" {os.getpid()}): the shield changes threads by their IDs, which only that"
                " procfs names"
            )
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.cgroup_root = cgroup_root.rstrip("/") or "/"
        self.parent = parent
        self.state_id = cgroups.state_id(os.path.realpath(conf_dir))
        self.lists = tuple(lists)
        self.booking_roots = frozenset(booking_roots)
        self.set_affinity: SetAffinity = set_affinity or os.sched_setaffinity
        self.systemctl = systemctl or systemd.SYSTEMCTL
        self._roots = {Root.CGROUP: self.cgroup_root, Root.PROC: proc_root, Root.SYS: sys_root}
        self._ppids: dict[int, int] = {}  # tid -> parent PID, as the last read() saw them

    # -- reading ------------------------------------------------------------------------

    def boot_id(self) -> str:
        path = f"{self.proc_root}/{BOOT_ID}"
        text = read_text(path)
        if text is None or not text.strip():
            raise EnvironmentProblem(f"cannot read {path}: the shield record names its boot")
        return text.strip()

    def read(self) -> HostView:
        online = sysfs.read_online_cpus(self.sys_root)
        found = cgroups.find_hierarchy(self.cgroup_root)
        kind = found[0] if found is not None else None
        tasks = self._tasks(kind)
        leaders = {t.pid: t for t in tasks if t.pid == t.tid}
        bookings = _descendants(self.booking_roots, {p: self._ppids.get(p, 0) for p in leaders})
        isolated, nohz_full = sysfs.read_boot_cpus(self.sys_root)
        return HostView(
            boot_id=self.boot_id(),
            online=online,
            cgroup=None if found is None else self._cgroup_view(*found),
            tasks=tasks,
            irqs=self._irqs(),
            default_smp_affinity=_stripped(read_text(self._path(Root.PROC, DEFAULT_SMP_AFFINITY))),
            workqueue_cpumask=self._value(self._path(Root.SYS, WORKQUEUE_CPUMASK)),
            irqbalance=self._irqbalance(leaders),
            isolated=isolated or frozenset(),
            nohz_full=nohz_full or frozenset(),
            bookings=frozenset(bookings),
        )

    def _tasks(self, kind: str | None) -> tuple[TaskView, ...]:
        root = self.proc_root
        out = []
        self._ppids = {}
        for pid in threads.list_pids(root):
            for tid in threads.list_tids(root, pid):
                stat_text = read_text(threads.task_path(root, pid, tid, "stat"))
                status = read_text(threads.task_path(root, pid, tid, "status"))
                cgroup = read_text(threads.task_path(root, pid, tid, "cgroup"))
                if stat_text is None or status is None or cgroup is None:
                    continue  # exited meanwhile
                try:
                    st = threads.parse_task_stat(stat_text)
                    allowed = threads.parse_status_allowed(status)
                except ParseError as e:
                    raise EnvironmentProblem(f"{root}/{pid}/task/{tid}: {e}") from None
                where = "/" if kind is None else cgroups.parse_proc_cgroup(cgroup, kind) or "/"
                out.append(
                    TaskView(
                        pid=pid,
                        tid=tid,
                        comm=st.comm,
                        kernel=st.kernel,
                        no_setaffinity=st.no_setaffinity,
                        allowed="" if allowed is None else cpulist.format(allowed),
                        start_time=st.start_time,
                        cgroup=where,
                    )
                )
                self._ppids[tid] = st.ppid
        return tuple(out)

    def _cgroup_view(self, kind: str, mount: str) -> CgroupView:
        try:
            tree = cpusets.read_tree(self.cgroup_root)
        except ParseError as e:
            raise EnvironmentProblem(f"cpusets under {self.cgroup_root}: {e}") from None
        assert tree is not None
        rel = os.path.relpath(mount, self.cgroup_root)
        hierarchy = "" if rel == "." else rel
        subtree = f"/{self.parent}/{self.state_id}"
        backend = cgroups.Backend(mount, self.parent, self.state_id)
        list_cgroups = tuple(
            (name, "/" + os.path.relpath(backend.list_path(_DATAPLANE, name), mount))
            for name in self.lists
        )
        control = None
        exclusive = False
        units = None
        if kind == "v2":
            control = _stripped(read_text(f"{mount}/cgroup.subtree_control")) or ""
            exclusive = any(cs.exclusive is not None for cs in tree.cpusets) or os.path.exists(
                f"{mount}/cpuset.cpus.isolated"
            )
            if self._systemd_owns(mount):
                units = self._units(mount, subtree)
        return CgroupView(
            version=kind,
            hierarchy=hierarchy,
            cpusets=tree.cpusets,
            kcm_subtree=subtree,
            list_cgroups=list_cgroups,
            subtree_control=control,
            exclusive_supported=exclusive,
            systemd_units=units,
        )

    def _systemd_owns(self, mount: str) -> bool:
        comm = read_text(f"{self.proc_root}/1/comm")
        return (
            comm is not None and comm.strip() == "systemd" and os.path.isdir(f"{mount}/init.scope")
        )

    def _units(self, mount: str, subtree: str) -> tuple[tuple[str, str], ...]:
        """systemd's units at the top of the tree, and below each one that holds kcm's
        subtree its children, down to kcm's own; each with its AllowedCPUs."""
        found: list[str] = []
        level = ""
        path_parts = [p for p in subtree.split("/") if p]
        for depth in range(len(path_parts)):
            base = f"{mount}/{level}" if level else mount
            try:
                names = sorted(e.name for e in os.scandir(base) if e.is_dir() and _is_unit(e.name))
            except FileNotFoundError:
                break
            found += [f"{level}/{n}".strip("/") for n in names]
            level = "/".join(path_parts[: depth + 1])
            if not _is_unit(path_parts[depth]):
                break
        out = []
        for path in found:
            unit = path.rpartition("/")[2]
            argv = systemd.show_property_argv(unit, "AllowedCPUs", self.systemctl)
            out.append((path, systemd.run(argv)))
        return tuple(out)

    def _irqs(self) -> tuple[IrqView, ...]:
        out = []
        for number in interrupts.list_irqs(self.proc_root):
            try:
                irq = interrupts.read_irq(self.proc_root, number)
            except ParseError as e:
                raise EnvironmentProblem(f"{self.proc_root}/irq/{number}: {e}") from None
            if irq is not None:
                out.append(IrqView(irq.irq, cpulist.format(irq.allowed), irq.settable, irq.name))
        return tuple(out)

    def _irqbalance(self, leaders: Mapping[int, TaskView]) -> IrqBalanceView | None:
        """irqbalance, if it runs, and the banned CPUs its environment gives it (the
        EnvironmentFile its unit reads: /etc/default/irqbalance or /etc/sysconfig/irqbalance)."""
        for pid, task in sorted(leaders.items()):
            if task.comm != "irqbalance" or task.kernel:
                continue
            try:
                with open(f"{self.proc_root}/{pid}/environ", "rb") as f:
                    environ = f.read(1 << 20).split(b"\0")
            except OSError:
                environ = []
            env = dict(
                item.decode("utf-8", "replace").partition("=")[::2] for item in environ if item
            )
            banned: frozenset[int] | None = None
            try:
                if env.get("IRQBALANCE_BANNED_CPULIST", "").strip():
                    banned = cpulist.parse(env["IRQBALANCE_BANNED_CPULIST"])
                elif env.get("IRQBALANCE_BANNED_CPUS", "").strip():
                    banned = cpulist.parse_mask(env["IRQBALANCE_BANNED_CPUS"])
            except ParseError:
                banned = None
            return IrqBalanceView(pid, banned, None)
        return None

    # -- doing --------------------------------------------------------------------------

    def run(self, step: Step) -> StepResult:
        change = step.change
        ensure = step.action == "ensure"
        try:
            if isinstance(change, Write):
                outcome, detail = self._write_change(change, ensure)
            elif isinstance(change, MakeCgroup):
                outcome, detail = self._cgroup_dir(change, ensure)
            elif isinstance(change, MoveTasks):
                outcome, detail = self._move_tasks(change, ensure)
            elif isinstance(change, Pin):
                outcome, detail = (
                    (Outcome.ALREADY, "")
                    if ensure
                    else self._affinity(
                        change.pid, change.tid, change.start_time, None, change.prior
                    )
                )
            elif isinstance(change, Affinity):
                if ensure:
                    outcome, detail = self._affinity(
                        change.pid, change.tid, change.start_time, None, change.new
                    )
                else:
                    outcome, detail = self._affinity(
                        change.pid, change.tid, change.start_time, change.new, change.prior
                    )
            else:
                outcome, detail = self._unit(change, ensure)
        except EnvironmentProblem as e:
            outcome, detail = Outcome.FAILED, e.message
        return StepResult(step, outcome, detail)

    def _path(self, root: Root, path: str) -> str:
        return f"{self._roots[root]}/{path}"

    # kernel files

    def _value(self, path: str) -> str | None:
        if path.endswith(f"/{WORKQUEUE_CPUMASK}"):
            # The shield sets and restores the mask asked for, which a kernel with
            # ``cpumask_requested`` (6.12 here; 6.1 has none) keeps apart from the one it
            # uses: that one also leaves out isolated partitions' CPUs, which come and go with
            # the partitions. Read as the shield's own, it made the shield skip its write when
            # a partition was there first, so whether the mask was set depended on timing.
            requested = read_text(f"{path}_requested")
            if requested is not None:
                return requested.strip()
        text = read_text(path)
        if text is None:
            return None
        value = text.strip()
        if path.endswith("/cpuset.cpus.partition"):
            # "isolated invalid (why)" is still what was written; the rest is the kernel's
            # verdict, which the shield reports.
            return value.split(maxsplit=1)[0] if value else value
        return value

    def _write_change(self, change: Write, ensure: bool) -> tuple[Outcome, str]:
        path = self._path(change.root, change.path)
        if change.identity and self._irq_name(path) != change.identity:
            return Outcome.GONE, f"{change.what}: the IRQ is gone or another device's now"
        current = self._value(path)
        if current is None:
            return Outcome.GONE, f"{change.what}: {path} is gone"
        if ensure:
            if same(change.compare, current, change.new):
                return Outcome.ALREADY, ""
            value = "+cpuset" if change.compare is Compare.CONTROLLERS else change.new
        else:
            if same(change.compare, current, change.prior):
                return Outcome.ALREADY, ""
            if not same(change.compare, current, change.new):
                return (
                    Outcome.CONFLICT,
                    f"{change.what}: {path} holds {current!r}, set since the shield; left",
                )
            value = "-cpuset" if change.compare is Compare.CONTROLLERS else change.prior
        try:
            _write(path, value, create=change.root is Root.CGROUP)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return Outcome.GONE, f"{change.what}: {path} is gone"
            irq = change.root is Root.PROC and change.path.startswith("irq/")
            if ensure and irq and e.errno in _IRQ_REFUSALS:
                return Outcome.REFUSED, f"{change.what}: the kernel refuses ({_code(e)})"
            if not ensure and change.compare is Compare.CONTROLLERS and e.errno == errno.EBUSY:
                return Outcome.CONFLICT, f"{change.what}: cpuset is in use below the root; left"
            return Outcome.FAILED, f"cannot write {value!r} to {path}: {_why(e)}"
        if ensure and path.endswith("/cpuset.cpus.partition"):
            verdict = _stripped(read_text(path)) or ""
            if "invalid" in verdict:
                return Outcome.REFUSED, f"{change.what}: the kernel made it {verdict!r}"
        return Outcome.DONE, ""

    def _irq_name(self, path: str) -> str:
        base = path.rpartition("/")[0]
        try:
            with os.scandir(base) as it:
                return ", ".join(sorted(e.name for e in it if e.is_dir(follow_symlinks=False)))
        except OSError:
            return ""

    # cgroups

    def _cgroup_dir(self, change: MakeCgroup, ensure: bool) -> tuple[Outcome, str]:
        path = self._path(Root.CGROUP, change.path)
        if ensure:
            made = False
            try:
                os.mkdir(path, 0o755)
                made = True
            except FileExistsError:
                pass
            except OSError as e:
                return Outcome.FAILED, f"cannot create {path}: {_why(e)}"
            wrote = False
            for name, value in change.files:
                current = self._value(f"{path}/{name}")
                if current is not None and same(Compare.CPUS, current, value):
                    continue
                try:
                    _write(f"{path}/{name}", value, create=True)
                    wrote = True
                except OSError as e:
                    return Outcome.FAILED, f"cannot write {value!r} to {path}/{name}: {_why(e)}"
            return (Outcome.DONE if made or wrote else Outcome.ALREADY), ""
        if not os.path.isdir(path):
            return Outcome.ALREADY, ""
        detail = ""
        if change.evacuate:
            parent = path.rpartition("/")[0]
            outcome, detail = self._move(path, parent, self._move_file(), True, ())
            if outcome is Outcome.FAILED:
                return outcome, detail
        try:
            _rmdir(path)
        except OSError as e:
            return Outcome.FAILED, f"cannot remove {path}: {_why(e)}"
        return Outcome.DONE, detail

    def _move_file(self) -> str:
        found = cgroups.find_hierarchy(self.cgroup_root)
        return "tasks" if found is not None and found[0] == "v1" else "cgroup.procs"

    def _move_tasks(self, change: MoveTasks, ensure: bool) -> tuple[Outcome, str]:
        source = self._path(Root.CGROUP, change.source).rstrip("/")
        target = self._path(Root.CGROUP, change.target).rstrip("/")
        if ensure:
            return self._move(source, target, change.file, change.kernel_threads, change.keep)
        if not os.path.isdir(target):
            return Outcome.ALREADY, ""
        return self._move(target, source, change.file, change.kernel_threads, ())

    def _move(
        self,
        source: str,
        target: str,
        file: str,
        kernel_threads: bool,
        keep: tuple[int, ...],
    ) -> tuple[Outcome, str]:
        """Move every task of ``source`` into ``target`` (ids into ``target/file``) but the
        kept ones, until a pass finds nothing more to move."""
        moved: set[int] = set()  # written once; a kernel takes them out of the source
        refused: set[int] = set()
        for _ in range(MOVE_PASSES):
            ids = _ids(read_text(f"{source}/{file}"))
            if ids is None:
                return Outcome.GONE, f"{source} is gone"
            known = self._threads()
            by_pid = {t.pid: t.ppid for t in known.values() if t.tid == t.pid}
            kept = _descendants(keep, by_pid) if keep else set()
            progress = 0
            for task_id in ids:
                if task_id in refused or task_id in moved:
                    continue
                thread = known.get(task_id)
                if thread is None:
                    continue  # exited, or not in this namespace's procfs
                if thread.pid in kept:
                    continue
                if thread.kernel and not kernel_threads:
                    continue
                if thread.no_setaffinity or thread.kthreadd:
                    continue  # the kernel refuses to move them (EINVAL); the plan says so
                try:
                    _write(f"{target}/{file}", str(task_id), create=True, append=True)
                except OSError as e:
                    if e.errno == errno.ESRCH:
                        continue
                    if e.errno in (errno.EINVAL, errno.EPERM):
                        refused.add(task_id)
                        continue
                    return Outcome.FAILED, f"cannot move {task_id} into {target}: {_why(e)}"
                progress += 1
                moved.add(task_id)
            if not progress:
                break
        detail = f"{len(moved)} moved" + (
            f", {len(refused)} refused by the kernel" if refused else ""
        )
        return (Outcome.DONE if moved else Outcome.ALREADY), detail

    def _threads(self) -> dict[int, Thread]:
        """Every thread of the procfs, by id."""
        root = self.proc_root
        out: dict[int, Thread] = {}
        for pid in threads.list_pids(root):
            for tid in threads.list_tids(root, pid):
                text = read_text(threads.task_path(root, pid, tid, "stat"))
                if text is None:
                    continue
                try:
                    st = threads.parse_task_stat(text)
                except ParseError as e:
                    raise EnvironmentProblem(f"{root}/{pid}/task/{tid}/stat: {e}") from None
                out[tid] = Thread(
                    tid, pid, st.ppid, st.comm, st.kernel, st.no_setaffinity, st.start_time
                )
        return out

    # thread affinity

    def _affinity(
        self, pid: int, tid: int, start_time: int, expect: str | None, value: str
    ) -> tuple[Outcome, str]:
        root = self.proc_root
        stat = read_text(threads.task_path(root, pid, tid, "stat"))
        status = read_text(threads.task_path(root, pid, tid, "status"))
        if stat is None or status is None:
            return Outcome.GONE, ""
        try:
            if threads.parse_task_stat(stat).start_time != start_time:
                return Outcome.GONE, ""  # the tid names another thread now
            current = threads.parse_status_allowed(status)
        except ParseError as e:
            raise EnvironmentProblem(f"{root}/{pid}/task/{tid}: {e}") from None
        wanted = cpulist.parse(value)
        if current == wanted:
            return Outcome.ALREADY, ""
        if expect is not None and current != cpulist.parse(expect):
            return Outcome.CONFLICT, f"thread {tid}: its affinity was set since the shield; left"
        try:
            self.set_affinity(tid, wanted)
        except OSError as e:
            if e.errno == errno.ESRCH:
                return Outcome.GONE, ""
            if e.errno == errno.EINVAL:
                # Outside its cpuset now (or a thread the kernel keeps where it is).
                outcome = Outcome.REFUSED if expect is None else Outcome.CONFLICT
                return outcome, f"thread {tid}: the kernel refuses {value} ({_code(e)})"
            return Outcome.FAILED, f"cannot set thread {tid}'s affinity to {value}: {_why(e)}"
        return Outcome.DONE, ""

    # systemd

    def _unit(self, change: UnitProperty, ensure: bool) -> tuple[Outcome, str]:
        show = systemd.show_property_argv(change.unit, change.name, self.systemctl)
        current = systemd.run(show)
        if ensure:
            if same(Compare.CPUS, current, change.new):
                return Outcome.ALREADY, ""
            value = change.new
        else:
            if same(Compare.CPUS, current, change.prior):
                return Outcome.ALREADY, ""
            if not same(Compare.CPUS, current, change.new):
                return Outcome.CONFLICT, f"unit {change.unit}: {change.name}={current} since; left"
            value = change.prior
        systemd.run(systemd.set_property_argv(change.unit, change.name, value, self.systemctl))
        return Outcome.DONE, ""


def _descendants(roots: Iterable[int], parents: Mapping[int, int]) -> set[int]:
    """``roots`` and every process whose ancestry reaches one of them."""
    roots = set(roots)
    out = set(roots)
    for pid in parents:
        chain: list[int] = []
        cur = pid
        while cur > 0 and cur not in out and cur not in chain and len(chain) < 4096:
            chain.append(cur)
            cur = parents.get(cur, 0)
        if cur in out:
            out.update(chain)
    return out


def _is_unit(name: str) -> bool:
    return name.endswith((".slice", ".scope", ".service"))


def _ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    return [int(word) for word in text.split() if word.isdigit()]


def _stripped(text: str | None) -> str | None:
    return None if text is None else text.strip()


def _write(path: str, value: str, *, create: bool, append: bool = False) -> None:
    """One write of ``value`` and a newline, as the kernel takes a line."""
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    if create:
        flags |= os.O_CREAT
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, (value + "\n").encode("ascii"))
    finally:
        os.close(fd)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
        # Not a kernel's cgroup (whose rmdir says EBUSY when it is in use): a fake tree's,
        # if it holds nothing but plain files named like a cgroup's.
        with os.scandir(path) as it:
            entries = list(it)
        if not all(
            e.is_file(follow_symlinks=False)
            and (e.name.startswith(_CGROUP_FILE_PREFIXES) or e.name in _CGROUP_FILES)
            for e in entries
        ):
            raise
        for entry in entries:
            os.unlink(entry.path)
        os.rmdir(path)


def _code(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _why(e: OSError) -> str:
    return f"{e.strerror or e} ({_code(e)})"
