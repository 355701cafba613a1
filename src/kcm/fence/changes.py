"""The changes ``kcm shield`` makes to a host, each with the exact prior value to restore.

Plain values: the plan (``kcm.fence.plan``) makes them, the record (``kcm.fence.record``)
stores them, the applier (phase 2, in the guest) carries them out. Paths are relative to the
root named by ``root`` (``cgroup``: ``$KCM_CGROUP_FS``, ``proc``: ``$KCM_PROC_FS``, ``sys``:
``$KCM_SYS_FS``), so a record stays true whatever the roots are called.

What each change means, applied (``ensure``) and undone (``restore``):

- ``Write``: a kernel file. Ensure: write ``new`` unless it already holds it. Restore: write
  ``prior`` if the file still holds ``new``; if it holds something else, someone changed it
  after the shield, and it is left as it is and reported. ``compare`` says how values are
  compared (CPU lists and masks by their CPUs, ``controllers`` by the presence of cpuset).
- ``MakeCgroup``: a cgroup kcm creates, with its files. Ensure: create it if missing and write
  its files. Restore: with ``evacuate``, move what it holds to its parent first; then remove it.
- ``MoveTasks``: every task of ``source`` (but ``keep`` and what the kernel refuses to move)
  into ``target``; restore moves every task of ``target`` back into ``source``. Tasks started
  inside ``target`` meanwhile go back too: without the shield they would have been in
  ``source``.
- ``Pin``: restore only. A thread that was moved by a cpuset change had its own, narrower
  affinity (``prior``); a kernel before 6.2 forgets it on the move, so restore sets it again
  if the thread (by tid and start time) still lives.
- ``Affinity``: a thread's affinity set directly (kernel threads on cgroup v2, hosts without
  cpusets). Ensure: set ``new`` if the thread lives. Restore: set ``prior`` if it still has
  ``new``.
- ``UnitProperty``: a systemd unit's property, set with ``systemctl set-property --runtime``
  (nothing persists past a reboot). Restore as for ``Write``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kcm import cpulist
from kcm.errors import ParseError


class Root(StrEnum):
    CGROUP = "cgroup"
    PROC = "proc"
    SYS = "sys"


class Compare(StrEnum):
    CPUS = "cpus"  # a CPU list: equal when the CPUs are (an empty list is its own value)
    MASK = "mask"  # a hex CPU mask
    TEXT = "text"  # the text, stripped
    CONTROLLERS = "controllers"  # cgroup.subtree_control: whether cpuset is in it


def same(compare: Compare, a: str, b: str) -> bool:
    """Whether two values of a file compare equal the way the kernel means them."""
    try:
        if compare is Compare.CPUS:
            return cpulist.parse(a) == cpulist.parse(b)
        if compare is Compare.MASK:
            return cpulist.parse_mask(a) == cpulist.parse_mask(b)
    except ParseError:
        return a.strip() == b.strip()
    if compare is Compare.CONTROLLERS:
        return _has_cpuset(a) == _has_cpuset(b)
    return a.strip() == b.strip()


def _has_cpuset(controllers: str) -> bool:
    # A kernel lists controllers; a fake tree's file keeps the "+cpuset" written into it.
    return "cpuset" in {word.removeprefix("+") for word in controllers.split()}


@dataclass(frozen=True, slots=True)
class Write:
    root: Root
    path: str
    compare: Compare
    prior: str
    new: str
    what: str  # for people: "IRQ 36 (virtio1-req.0)", "cpuset /docker"
    identity: str = ""  # what must still be there for the record to apply (an IRQ's name)

    @property
    def key(self) -> tuple[str, ...]:
        return ("write", self.root, self.path)


@dataclass(frozen=True, slots=True)
class MakeCgroup:
    path: str  # relative to the cgroup root: "cpuset/kcm-system"
    files: tuple[tuple[str, str], ...]
    evacuate: bool

    @property
    def key(self) -> tuple[str, ...]:
        return ("mkdir", self.path)


@dataclass(frozen=True, slots=True)
class MoveTasks:
    source: str  # cgroup directories relative to the cgroup root ("cpuset" is v1's root)
    target: str
    file: str  # "tasks" (v1: every thread) or "cgroup.procs" (v2: whole processes)
    kernel_threads: bool  # move kernel threads too (v1, as cset --kthread=on does)
    keep: tuple[int, ...]  # PIDs that stay (a booking's, when it is held by PID only)

    @property
    def key(self) -> tuple[str, ...]:
        return ("move-tasks", self.source, self.target)


@dataclass(frozen=True, slots=True)
class Pin:
    pid: int
    tid: int
    start_time: int
    prior: str

    @property
    def key(self) -> tuple[str, ...]:
        return ("pin", str(self.tid), str(self.start_time))


@dataclass(frozen=True, slots=True)
class Affinity:
    pid: int
    tid: int
    start_time: int
    prior: str
    new: str
    what: str

    @property
    def key(self) -> tuple[str, ...]:
        return ("affinity", str(self.tid), str(self.start_time))


@dataclass(frozen=True, slots=True)
class UnitProperty:
    unit: str
    name: str
    prior: str
    new: str

    @property
    def key(self) -> tuple[str, ...]:
        return ("systemd", self.unit, self.name)


Change = Write | MakeCgroup | MoveTasks | Pin | Affinity | UnitProperty


def to_json(change: Change) -> dict[str, object]:
    """A change as the record stores it: ``op`` and the fields, nothing else."""
    if isinstance(change, Write):
        doc: dict[str, object] = {
            "op": "write",
            "root": str(change.root),
            "path": change.path,
            "compare": str(change.compare),
            "prior": change.prior,
            "new": change.new,
            "what": change.what,
        }
        if change.identity:
            doc["identity"] = change.identity
        return doc
    if isinstance(change, MakeCgroup):
        return {
            "op": "mkdir",
            "path": change.path,
            "files": [list(f) for f in change.files],
            "evacuate": change.evacuate,
        }
    if isinstance(change, MoveTasks):
        return {
            "op": "move-tasks",
            "source": change.source,
            "target": change.target,
            "file": change.file,
            "kernel_threads": change.kernel_threads,
            "keep": list(change.keep),
        }
    if isinstance(change, Pin):
        return {
            "op": "pin",
            "pid": change.pid,
            "tid": change.tid,
            "start_time": change.start_time,
            "prior": change.prior,
        }
    if isinstance(change, Affinity):
        return {
            "op": "affinity",
            "pid": change.pid,
            "tid": change.tid,
            "start_time": change.start_time,
            "prior": change.prior,
            "new": change.new,
            "what": change.what,
        }
    return {
        "op": "systemd",
        "unit": change.unit,
        "property": change.name,
        "prior": change.prior,
        "new": change.new,
    }


def _str(doc: dict[str, object], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ParseError(f"{doc.get('op')!r} change: {key!r} is not a string")
    return value


def _int(doc: dict[str, object], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ParseError(f"{doc.get('op')!r} change: {key!r} is not a count")
    return value


def _bool(doc: dict[str, object], key: str) -> bool:
    value = doc.get(key)
    if not isinstance(value, bool):
        raise ParseError(f"{doc.get('op')!r} change: {key!r} is not true or false")
    return value


def _relative(path: str) -> str:
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or "\0" in path:
        raise ParseError(f"path {path[:80]!r} is not relative to its root")
    return path


# What a shield may write, and nothing else: a record that names another file is refused
# whole, so a record someone could write is no way to make root write anywhere else.
CGROUP_FILES = frozenset(
    {
        "cpuset.cpus",
        "cpuset.mems",
        "cpuset.sched_load_balance",
        "cpuset.cpus.partition",
        "cpuset.cpus.exclusive",
        "cgroup.subtree_control",
    }
)
SYS_FILES = frozenset({"devices/virtual/workqueue/cpumask"})
UNIT_PROPERTIES = frozenset({"AllowedCPUs"})
_UNIT_SUFFIXES = (".slice", ".scope", ".service")


def _writable(root: Root, path: str) -> str:
    """``path`` if a shield may write it under ``root``; else a ParseError."""
    parts = path.split("/")
    if root is Root.CGROUP:
        ok = parts[-1] in CGROUP_FILES
    elif root is Root.SYS:
        ok = path in SYS_FILES
    else:
        ok = path == "irq/default_smp_affinity" or (
            len(parts) == 3
            and parts[0] == "irq"
            and parts[1].isdigit()
            and parts[2] == "smp_affinity_list"
        )
    if not ok:
        raise ParseError(f"'write' change: a shield never writes {root}/{path[:80]}")
    return path


def _unit(name: str) -> str:
    if not name.endswith(_UNIT_SUFFIXES) or "/" in name or name.startswith(("-", ".")):
        raise ParseError(f"'systemd' change: {name[:80]!r} is not a slice, scope or service")
    return name


_FIELDS = {
    "write": {"op", "root", "path", "compare", "prior", "new", "what", "identity"},
    "mkdir": {"op", "path", "files", "evacuate"},
    "move-tasks": {"op", "source", "target", "file", "kernel_threads", "keep"},
    "pin": {"op", "pid", "tid", "start_time", "prior"},
    "affinity": {"op", "pid", "tid", "start_time", "prior", "new", "what"},
    "systemd": {"op", "unit", "property", "prior", "new"},
}


def from_json(doc: object) -> Change:
    """A change read back from the record; anything malformed is a ParseError."""
    if not isinstance(doc, dict):
        raise ParseError("a change is not an object")
    op = doc.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        raise ParseError(f"unknown change {op!r}")
    unknown = set(doc) - _FIELDS[op]
    if unknown:
        raise ParseError(f"{op!r} change: unknown fields {sorted(unknown)}")
    if op == "write":
        try:
            root, compare = Root(_str(doc, "root")), Compare(_str(doc, "compare"))
        except ValueError as e:
            raise ParseError(f"'write' change: {e}") from None
        return Write(
            root,
            _writable(root, _relative(_str(doc, "path"))),
            compare,
            _str(doc, "prior"),
            _str(doc, "new"),
            _str(doc, "what"),
            _str(doc, "identity") if "identity" in doc else "",
        )
    if op == "mkdir":
        files = doc.get("files")
        if not isinstance(files, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f)
            for f in files
        ):
            raise ParseError("'mkdir' change: 'files' is not a list of [name, value]")
        if not all(f[0] in ("cpuset.cpus", "cpuset.mems") for f in files):
            raise ParseError("'mkdir' change: a shield writes only cpuset.cpus and cpuset.mems")
        return MakeCgroup(
            _relative(_str(doc, "path")),
            tuple((f[0], f[1]) for f in files),
            _bool(doc, "evacuate"),
        )
    if op == "move-tasks":
        keep = doc.get("keep")
        if not isinstance(keep, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in keep
        ):
            raise ParseError("'move-tasks' change: 'keep' is not a list of PIDs")
        file = _str(doc, "file")
        if file not in ("tasks", "cgroup.procs"):
            raise ParseError(f"'move-tasks' change: unknown file {file!r}")
        return MoveTasks(
            _relative(_str(doc, "source")),
            _relative(_str(doc, "target")),
            file,
            _bool(doc, "kernel_threads"),
            tuple(keep),
        )
    if op == "pin":
        return Pin(_int(doc, "pid"), _int(doc, "tid"), _int(doc, "start_time"), _str(doc, "prior"))
    if op == "affinity":
        return Affinity(
            _int(doc, "pid"),
            _int(doc, "tid"),
            _int(doc, "start_time"),
            _str(doc, "prior"),
            _str(doc, "new"),
            _str(doc, "what"),
        )
    name = _str(doc, "property")
    if name not in UNIT_PROPERTIES:
        raise ParseError(f"'systemd' change: a shield never sets {name[:40]!r}")
    return UnitProperty(_unit(_str(doc, "unit")), name, _str(doc, "prior"), _str(doc, "new"))
