"""A cgroup of its own for every booking: the interface, naming, and detection of the backend.

A booking (one ``kcm isolate`` run on one CPU list) is held by a cgroup, not by a PID: cgroup
membership is inherited by every descendant, survives the process that made it, and a cpuset
is enforced by the kernel. This package is that cgroup's whole life, behind one small
interface (``Backend``, after runc's libcontainer ``Manager``) with one module per backend,
chosen once by ``detect()`` from what the cgroup root is:

- ``v1``: the cgroup v1 ``cpuset`` hierarchy (``<root>/cpuset``);
- ``v2``: the unified hierarchy with the ``cpuset`` controller (``<root>``, or ``<root>/unified``
  on a hybrid host whose cpuset is bound to it);
- none (``Unavailable``, which says why): no writable cpuset hierarchy (not root, a read-only
  mount, a container without the host's cgroupfs). Callers then fall back to tracking the
  recorded PID and the command's process group, which holds less (see ``Unavailable``).

Layout, under the hierarchy::

    <parent>/<state id>/<pool>/<cpu list>/<pid>-<start time>

``<parent>`` is ``$KCM_CGROUP_PARENT`` (default ``kcm``), a path below the hierarchy's root; on
a systemd host with cgroup v2, the subtree that ``contrib/systemd/kcm-bookings.service``
delegates to kcm. ``<state id>`` names the state directory, so that several states share a
host: its real path escaped as ``systemd-escape --path`` does (``/etc/kcm`` -> ``etc-kcm``),
shortened with a hash when long. The booking level is named after the ``kcm isolate`` process
that made it (PID and start time from ``/proc/<pid>/stat``), so its creator's liveness can be
told from the name alone. Only booking cgroups ever hold processes; the levels above them are
created on demand (concurrent creators welcome) and are kept between bookings.

The lifecycle this API supports (phase 2 wires it into isolate and reconcile):

1. **Book.** ``kcm isolate`` books a list under the state lock and records its PID (state.py),
   then, outside the lock (the booking's name is its own), ``create(booking)`` makes the
   booking's cgroup (``cpuset.cpus`` = the list, ``cpuset.mems`` = all nodes) and
   ``origin = enter(booking, proc_root)`` moves kcm itself in *before* it spawns the command.
   From then on every descendant of the command, daemonised, ``setsid`` or double-forked, is in
   the booking and cannot run outside its list (the kernel keeps any ``sched_setaffinity``
   within the cpuset, and refuses one wholly outside it with EINVAL). A kill -9 at any
   instant leaves no cgroup, an empty one, or one holding only processes started after
   ``enter``: none outside it, none that ``remove`` can't clean; a level killed half-made is
   completed by the next creator.
2. **Release or hold by leftovers.** When the command exits, kcm ``leave(origin)``s and calls
   ``remove(booking)``, the kernel's own test-and-remove: True, the cgroup was empty and is
   gone, so kcm releases the list. False (the command left processes behind): the booking
   stays held; kcm rewrites the list's tasks to name a live process of ``pids(path)`` in
   place of itself, and exits with the command's status. The same holds when kcm is killed:
   its cgroup outlives it while anything in it does.
3. **Reclaim.** A list is free only when every recorded PID is dead (by start time) *and* no
   booking cgroup under the list holds a process. An isolate that finds an exclusive pool
   full checks exactly that under the lock: for a list whose PIDs are all dead,
   ``reclaim(pool, cpu_list)`` removes its empty bookings and says whether any is left; if
   none is, the isolate clears the list's tasks and takes it, without waiting for reconcile.
   A booking nobody has entered yet is never taken: its creator's PID is recorded and alive.
   (``populated(list_path(pool, cpu_list))`` asks the same without removing anything.)
4. **Remove / reconcile.** ``scan()`` lists every booking cgroup under the state's subtree and
   the ``strays`` kcm did not make. Reconcile removes the empty bookings whose creator is dead,
   reports non-empty ones that no list of the state accounts for, and checks each process of
   ``pids(path)`` against its list; ``booking_of(proc_root, pid)`` tells which booking a
   process belongs to. ``remove`` never removes a non-empty cgroup: the kernel refuses
   (EBUSY), and that is an answer (False), not an error.

This module is on ``kcm isolate``'s start-up path: no imports beyond ``os`` and kcm's core
(``errno`` only where a call failed); plain ``os.open``/``os.write``/``os.mkdir``. Writes use
``O_CREAT | O_TRUNC`` as a shell's ``>`` does, which the kernel's cgroup files accept, so fake
trees of plain files work the same.
"""

from __future__ import annotations

import os

from kcm import cpulist
from kcm.errors import CgroupError, ParseError, UsageError

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Iterator

    from kcm.host.cgroups.survey import Scan

CGROUP_FS_ENV = "KCM_CGROUP_FS"
CGROUP_PARENT_ENV = "KCM_CGROUP_PARENT"
DEFAULT_CGROUP_FS = "/sys/fs/cgroup"
DEFAULT_PARENT = "kcm"
# Longer state ids keep their tail (the most telling part of a path) and gain a hash.
MAX_STATE_ID = 64
# Levels that vanish under a creator (a concurrent prune) are made again this many times.
CREATE_ATTEMPTS = 3

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_ESCAPE_KEEP = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


# -- values ------------------------------------------------------------------------------


class Booking:
    """A booking's identity: pool, list, and the kcm process (PID, start time) that made it."""

    __slots__ = ("cpu_list", "pid", "pool", "start_time")

    def __init__(self, pool: str, cpu_list: str, pid: int, start_time: int) -> None:
        self.pool = pool
        self.cpu_list = cpu_list
        self.pid = pid
        self.start_time = start_time

    @property
    def name(self) -> str:
        """The booking level's directory name, ``<pid>-<start time>``."""
        return f"{self.pid}-{self.start_time}"

    def _key(self) -> tuple[str, str, int, int]:
        return (self.pool, self.cpu_list, self.pid, self.start_time)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Booking) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Booking{self._key()!r}"


class Unavailable:
    """No usable cgroup hierarchy, and why (one line, for ``kcm: warning: ...``).

    Without one, a booking is its recorded PID and the command's process group: processes that
    leave the group (``setsid``, detaching daemons) are not held, so their list may be booked
    again while they run on it, and a workload may widen its own affinity. What still holds:
    the command starts pinned, its children inherit the pinning, signals reach its group.
    """

    kind = "none"
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unavailable({self.reason!r})"


# -- naming (pure) -----------------------------------------------------------------------


def escape_path(path: str) -> str:
    """``path`` escaped as ``systemd-escape --path`` does: ``/etc/kcm`` -> ``etc-kcm``.

    Slashes become ``-``; bytes other than ASCII letters, digits, ``:``, ``_`` and ``.`` (and a
    leading ``.``) become ``\\xNN``, so the result is one path component and never ``.``/``..``.
    """
    trimmed = "/".join(part for part in path.split("/") if part)
    if not trimmed:
        return "-"
    out = []
    for i, ch in enumerate(trimmed):
        if ch == "/":
            out.append("-")
        elif ch in _ESCAPE_KEEP and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{byte:02x}" for byte in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def fnv1a32(data: bytes) -> int:
    """The 32-bit FNV-1a hash: cheap and import-free (zlib alone costs 0.5 ms to import)."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def state_id(real_path: str) -> str:
    """The cgroup name of the state directory at ``real_path`` (already resolved).

    Up to MAX_STATE_ID characters it is the escaped path itself. Longer, it is the escaped
    path's tail, cut at a component boundary where one is near, then ``_`` and the path's hash.
    """
    escaped = escape_path(real_path)
    if len(escaped) <= MAX_STATE_ID:
        return escaped
    digest = f"{fnv1a32(real_path.encode('utf-8', 'surrogateescape')):08x}"
    tail = escaped[-(MAX_STATE_ID - len(digest) - 1) :]
    cut = tail.find("-")
    if 0 <= cut < len(tail) - 1:
        tail = tail[cut + 1 :]
    return f"{tail}_{digest}"


def parse_parent(value: str) -> str:
    """``$KCM_CGROUP_PARENT`` as a relative path (``/kcm/`` -> ``kcm``), or a UsageError."""
    parts = [part for part in value.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts) or "\0" in value:
        raise UsageError(
            f"{CGROUP_PARENT_ENV}={value!r} is not a path below the cgroup root"
            f" (for example {DEFAULT_PARENT}, or system.slice/kcm-bookings.service)"
        )
    return "/".join(parts)


def parse_booking_name(name: str) -> tuple[int, int] | None:
    """``(pid, start time)`` of a booking level's name ``<pid>-<start>``, else None."""
    pid, dash, start = name.partition("-")
    if not dash or not _is_number(pid, 10) or not _is_number(start, 20) or int(pid) == 0:
        return None
    return int(pid), int(start)


def _is_number(text: str, digits: int) -> bool:
    return text.isdigit() and text.isascii() and len(text) <= digits


def parse_proc_cgroup(text: str, kind: str) -> str | None:
    """The path in the ``kind`` hierarchy ("v1": the cpuset line; "v2": ``0::``) of a
    ``/proc/<pid>/cgroup`` text, or None if it has no such line."""
    for line in text.splitlines():
        hierarchy_id, colon, rest = line.partition(":")
        controllers, colon2, path = rest.partition(":")
        if not colon or not colon2:
            continue
        if kind == "v2":
            if hierarchy_id == "0" and not controllers:
                return path
        elif "cpuset" in controllers.split(","):
            return path
    return None


def booking_at(cgroup_path: str, parent: str, state: str) -> Booking | None:
    """The booking of a process in ``cgroup_path`` (relative to the hierarchy, as in
    ``/proc/<pid>/cgroup``), if that is in or below a booking of the state ``state``."""
    prefix = f"/{parent}/{state}/"
    if not cgroup_path.startswith(prefix):
        return None
    parts = cgroup_path[len(prefix) :].split("/")
    if len(parts) < 3 or not _is_pool_name(parts[0]) or not is_list_name(parts[1]):
        return None
    ids = parse_booking_name(parts[2])
    if ids is None:
        return None
    return Booking(parts[0], parts[1], ids[0], ids[1])


def is_list_name(name: str) -> bool:
    """A CPU list's name as the state holds it (``cpulist.parse_name``: strict, any order, as
    CMK wrote ``1,0``): the list level is named exactly as the list's directory."""
    try:
        return bool(cpulist.parse_name(name))
    except ParseError:
        return False


def _is_pool_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and name.isprintable()


# -- file access ---------------------------------------------------------------------------


def write_file(path: str, data: str) -> None:
    """One write of ``data`` to a cgroup file (the kernel takes each write whole)."""
    fd = os.open(path, _WRITE_FLAGS, 0o644)
    try:
        os.write(fd, data.encode("ascii"))
    finally:
        os.close(fd)


def read_file(path: str) -> str:
    """A cgroup file's text (cgroup.procs may be long: read to the end)."""
    fd = os.open(path, _READ_FLAGS)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def read_level_file(level: str, name: str) -> str | None:
    """A level's file, stripped; None if the level itself is gone.

    A kernel gives every cgroup its files; a fake tree's level may lack one, which reads as
    empty (what a kernel shows of a level not initialised yet).
    """
    try:
        return read_file(f"{level}/{name}").strip()
    except FileNotFoundError:
        return "" if os.path.isdir(level) else None
    except OSError as e:
        raise CgroupError(f"cannot read {level}/{name}: {why(e)}") from None


def why(e: OSError) -> str:
    return e.strerror or str(e)


def _child_dirs(path: str) -> Iterator[os.DirEntry[str]]:
    """The sub-cgroups of ``path`` (directories; cgroup files are never directories)."""
    with os.scandir(path) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                yield entry


# -- the interface -------------------------------------------------------------------------


class Backend:
    """One state's subtree in one cgroup hierarchy: everything a booking needs.

    ``create``, ``enter`` and ``populated`` differ between v1 and v2 (the subclasses); the rest
    is the same over both hierarchies' files. Paths are absolute; ``enter``/``leave`` and
    ``/proc/<pid>/cgroup`` use paths relative to the hierarchy (``/kcm/...``).
    """

    kind = ""
    # The file that moves a task: v1 writes "0" into tasks (the calling thread: no RCU wait),
    # v2 into cgroup.procs (the whole process; v2 has no per-thread move between domains).
    MOVE_FILE = ""

    __slots__ = ("hierarchy", "parent", "state_id", "subtree", "unwritable")

    def __init__(self, hierarchy: str, parent: str, state: str) -> None:
        self.hierarchy = hierarchy
        self.parent = parent
        self.state_id = state
        self.subtree = f"{hierarchy}/{parent}/{state}"
        # Why kcm may only read this hierarchy (``detect(..., read_only=True)``), or None.
        self.unwritable: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.subtree!r})"

    # -- naming

    def list_path(self, pool: str, cpu_list: str) -> str:
        """The level above a list's bookings: ``populated`` of it covers them all."""
        return f"{self.subtree}/{pool}/{cpu_list}"

    def path(self, booking: Booking) -> str:
        return f"{self.subtree}/{booking.pool}/{booking.cpu_list}/{booking.name}"

    # -- the lifecycle

    def create(self, booking: Booking, cpus: str | None = None, mems: str | None = None) -> str:
        """Make the booking's cgroup (and any missing level above it); its path.

        ``cpuset.cpus`` is ``cpus`` (default: the list; isolate passes ``usable_cpus``, the
        list's CPUs the hierarchy has), ``cpuset.mems`` is ``mems`` (default: all memory
        nodes; isolate's placement passes the list's nodes, ``usable_mems``). Safe against
        any number of concurrent creators of the same levels; creating an existing booking is
        a no-op.
        """
        if not _is_pool_name(booking.pool) or "/" in booking.pool:
            raise ValueError(f"not a pool name: {booking.pool!r}")
        if not is_list_name(booking.cpu_list):
            raise ValueError(f"not a CPU list name: {booking.cpu_list!r}")
        cpus = booking.cpu_list if cpus is None else cpus
        path = self.path(booking)
        list_path = self.list_path(booking.pool, booking.cpu_list)
        if self._make_booking(path, list_path, cpus, mems, strict=False):
            return path
        for _ in range(CREATE_ATTEMPTS):
            if self._make_levels(booking, cpus) and self._make_booking(
                path, list_path, cpus, mems, strict=True
            ):
                return path
        raise CgroupError(
            f"cannot create {path}: the levels above it keep disappearing"
            " (is something removing cgroups under the same parent?)"
        )

    def _make_booking(
        self, path: str, list_path: str, cpus: str, mems: str | None, *, strict: bool
    ) -> bool:
        """Make the booking level (``mems`` None: all nodes); False if a level above is
        missing or not ready."""
        raise NotImplementedError

    def _make_levels(self, booking: Booking, cpus: str) -> bool:
        """Make and initialise every level down to the list's (whose CPUs are ``cpus``);
        False if one vanished."""
        raise NotImplementedError

    # The hierarchy's own CPUs: what every level below it is bounded by.
    ROOT_CPUS = ""

    ROOT_MEMS = ""

    def usable_mems(self, nodes: str) -> str:
        """The memory nodes of ``nodes`` that the hierarchy has ("" if none)."""
        try:
            text = read_file(f"{self.hierarchy}/{self.ROOT_MEMS}").strip()
            have = cpulist.parse(text) if text else frozenset()
        except OSError as e:
            raise CgroupError(f"cannot read {self.hierarchy}/{self.ROOT_MEMS}: {why(e)}") from None
        except ParseError:
            have = frozenset()
        wanted = cpulist.parse(nodes)
        return cpulist.format(wanted & have) if wanted & have else ""

    def usable_cpus(self, cpu_list: str, pool: str | None = None) -> str:
        """The CPUs of ``cpu_list`` (of ``pool``) that the hierarchy has, in cpu-list form
        ("" if none).

        A list may name CPUs the machine lacks or has taken offline: ``sched_setaffinity``
        ignores those, but a cpuset refuses them (ERANGE, EINVAL), so a booking gets the rest.
        """
        try:
            have = cpulist.parse(read_file(f"{self.hierarchy}/{self.ROOT_CPUS}").strip() or "")
        except OSError as e:
            raise CgroupError(f"cannot read {self.hierarchy}/{self.ROOT_CPUS}: {why(e)}") from None
        except ParseError:
            have = frozenset()
        wanted = cpulist.parse(cpu_list)
        if wanted <= have:
            return cpu_list
        return cpulist.format(wanted & have) if wanted & have else ""

    def enter(self, booking: Booking, proc_root: str) -> str:
        """Move the calling process (v1: thread; kcm isolate has one) into the booking.

        Returns where it was (relative to the hierarchy), for ``leave``. Call it after
        ``create`` and before spawning the command, which then starts inside.
        """
        origin = self.cgroup_of(proc_root, "self") or "/"
        path = self.path(booking)
        try:
            write_file(f"{path}/{self.MOVE_FILE}", "0")
        except OSError as e:
            raise CgroupError(f"cannot move kcm into {path}: {why(e)}") from None
        return origin

    def leave(self, origin: str) -> None:
        """Move the calling process back to ``origin``, the cgroup it came from.

        Back where it was, not to the hierarchy's root: kcm may run confined (a container, a
        systemd unit, another booking), and the root would let it escape that. If ``origin``
        is gone, its nearest remaining ancestor.
        """
        parts = [part for part in origin.split("/") if part and part != ".."]
        while True:
            target = "/".join([self.hierarchy, *parts])
            try:
                write_file(f"{target}/{self.MOVE_FILE}", "0")
                return
            except FileNotFoundError:
                if not parts:
                    raise CgroupError(f"cannot leave a booking: {target} is gone") from None
            except OSError as e:
                import errno

                # v2: an ancestor that has since delegated controllers can't hold processes.
                if not parts or e.errno not in (errno.EBUSY, errno.EOPNOTSUPP):
                    raise CgroupError(f"cannot move kcm back to {target}: {why(e)}") from None
            parts.pop()

    def remove(self, booking: Booking) -> bool:
        """Remove the booking's cgroup if it is empty; whether it is gone.

        Empty sub-cgroups the workload made inside go first, bottom-up. A cgroup that holds a
        process is never removed: the kernel refuses (EBUSY) and the answer is False.
        """
        return self._remove_tree(self.path(booking))

    def reclaim(self, pool: str, cpu_list: str) -> bool:
        """Remove every empty booking cgroup of a list; whether none is left (the list is
        free as far as cgroups go).

        For a list whose recorded PIDs are all dead, under the state lock: no live kcm can be
        between booking the list and entering its cgroup then, so an empty booking here is a
        dead one. A populated one stays, and the answer is False.
        """
        list_path = self.list_path(pool, cpu_list)
        try:
            bookings = [entry.path for entry in _child_dirs(list_path)]
        except FileNotFoundError:
            return True
        return all([self._remove_tree(path) for path in bookings])

    def _remove_tree(self, path: str) -> bool:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            import errno  # a booking still held (or not empty): off the plain release's path

            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise CgroupError(f"cannot remove {path}: {why(e)}") from None
        try:
            children = [entry.path for entry in _child_dirs(path)]
        except FileNotFoundError:
            return True
        if not children:
            return False
        if not all([self._remove_tree(child) for child in children]):
            return False
        return self._remove_tree(path)

    # -- reading

    def pids(self, path: str) -> list[int]:
        """Every process in the cgroup at ``path`` and below it, ascending; [] if it is gone."""
        found: set[int] = set()
        self._collect(path, found)
        return sorted(found)

    def _collect(self, path: str, found: set[int]) -> None:
        text = read_level_file(path, "cgroup.procs")
        if text is None:
            return
        found.update(int(pid) for pid in text.split() if pid.isdigit())
        try:
            children = [entry.path for entry in _child_dirs(path)]
        except FileNotFoundError:
            return
        for child in children:
            self._collect(child, found)

    def populated(self, path: str) -> bool:
        """Whether any process lives in the cgroup at ``path`` or below it."""
        return bool(self.pids(path))

    # -- what reconcile (and describe's readers) need: in ``survey``, loaded on first use

    def scan(self) -> Scan:
        """Every booking cgroup under the state's subtree, and the strays (see ``Scan``)."""
        from kcm.host.cgroups import survey

        return survey.scan(self)

    def prune(self, keep: frozenset[str] = frozenset()) -> int:
        """Remove the empty levels (lists, pools, the state's own) that hold no booking, but
        those in ``keep`` (absolute paths); how many (see ``survey.prune``)."""
        from kcm.host.cgroups import survey

        return survey.prune(self, keep)

    def bookings(self, pool: str, cpu_list: str) -> list[Booking]:
        """The well-named booking cgroups under a list's level (one listing), by name."""
        from kcm.host.cgroups import survey

        return survey.bookings(self, pool, cpu_list)

    def set_cpuset(
        self, booking: Booking, cpus: str | None = None, mems: str | None = None
    ) -> None:
        """Change a booking's CPUs and/or memory nodes (v1: within its list's level)."""
        from kcm.host.cgroups import survey

        survey.set_cpuset(self, booking, cpus, mems)

    def booking_of(self, proc_root: str, pid: int) -> Booking | None:
        """The booking of this state that holds ``pid``, or None."""
        where = self.cgroup_of(proc_root, pid)
        return None if where is None else booking_at(where, self.parent, self.state_id)

    def cgroup_of(self, proc_root: str, pid: int | str) -> str | None:
        """Where ``pid`` (or ``"self"``) is in this hierarchy, from ``<proc_root>/<pid>/cgroup``;
        None if the process is gone or has no line for it."""
        try:
            text = read_file(f"{proc_root}/{pid}/cgroup")
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            return None
        except OSError as e:
            raise CgroupError(f"cannot read {proc_root}/{pid}/cgroup: {why(e)}") from None
        return parse_proc_cgroup(text, self.kind)


def same_cpus(a: str, b: str) -> bool:
    """Whether two cpu-list texts name the same CPUs (the kernel prints ranges its own way)."""
    try:
        return cpulist.parse(a) == cpulist.parse(b)
    except ParseError:
        return False


# -- detection -----------------------------------------------------------------------------


def cgroup_root() -> str:
    value = os.environ.get(CGROUP_FS_ENV) or DEFAULT_CGROUP_FS
    return value.rstrip("/") or "/"


def cgroup_parent() -> str:
    value = os.environ.get(CGROUP_PARENT_ENV)
    return DEFAULT_PARENT if value is None or not value.strip() else parse_parent(value)


def _has_cpuset(controllers_file: str) -> bool:
    try:
        return "cpuset" in read_file(controllers_file).split()
    except OSError:
        return False


def find_hierarchy(root: str) -> tuple[str, str] | None:
    """``(kind, hierarchy path)`` of the cpuset hierarchy under the cgroup root, if any."""
    if os.path.exists(f"{root}/cpuset/cpuset.cpus"):
        return "v1", f"{root}/cpuset"
    if _has_cpuset(f"{root}/cgroup.controllers"):
        return "v2", root
    # A hybrid host whose cpuset is bound to the unified hierarchy (this host's is not).
    if _has_cpuset(f"{root}/unified/cgroup.controllers"):
        return "v2", f"{root}/unified"
    return None


def _unwritable(hierarchy: str, parent: str) -> str | None:
    """Why kcm can't make cgroups at ``<hierarchy>/<parent>``, or None if it can.

    access(W_OK) of the deepest level that exists: one system call when the parent exists. It
    sees read-only mounts and permissions alike; statvfs tells them apart for the message.
    """
    target = f"{hierarchy}/{parent}"
    while not os.access(target, os.W_OK, effective_ids=True):
        if target != hierarchy and not os.path.lexists(target):
            target = os.path.dirname(target)
            continue
        try:
            read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        if read_only:
            return f"{target} is on a read-only mount"
        return f"{target} is not writable by uid {os.geteuid()}"
    return None


def detect(
    conf_dir: str,
    *,
    root: str | None = None,
    parent: str | None = None,
    read_only: bool = False,
) -> Backend | Unavailable:
    """The backend for the state at ``conf_dir``, or Unavailable with the reason.

    ``root`` defaults to ``$KCM_CGROUP_FS`` (``/sys/fs/cgroup``), ``parent`` to
    ``$KCM_CGROUP_PARENT`` (``kcm``). A bad ``$KCM_CGROUP_PARENT`` is a UsageError.
    ``read_only``: a hierarchy kcm may not write is still returned, with the reason in its
    ``unwritable`` (reconcile must see the bookings even where it cannot remove them).
    """
    root = cgroup_root() if root is None else root.rstrip("/") or "/"
    parent = cgroup_parent() if parent is None else parse_parent(parent)
    found = find_hierarchy(root)
    if found is None:
        return Unavailable(
            f"no cgroup cpuset controller under {root} (neither {root}/cpuset nor a cgroup v2"
            " hierarchy with cpuset)"
        )
    kind, hierarchy = found
    problem = _unwritable(hierarchy, parent)
    if problem is not None and not read_only:
        return Unavailable(problem)
    state = state_id(os.path.realpath(conf_dir))
    backend: Backend
    if kind == "v1":
        from kcm.host.cgroups.v1 import CpusetV1

        backend = CpusetV1(hierarchy, parent, state)
    else:
        from kcm.host.cgroups.v2 import Unified

        backend = Unified(hierarchy, parent, state)
    backend.unwritable = problem
    return backend
