"""Per-thread facts from a procfs root: ``<pid>/task/<tid>/{stat,status,sched,schedstat,cgroup}``.

Parsing takes each file's text (psutil's shape); reading takes the root and returns ``None`` for
a thread that is gone. Nothing here writes: every file is opened read-only (``sched`` is
writable by root, and a write resets its counters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kcm import cpulist
from kcm.errors import EnvironmentProblem, ParseError

# task->flags bits (include/linux/sched.h), as /proc/<pid>/stat field 9 shows them.
PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_GONE = (FileNotFoundError, ProcessLookupError, NotADirectoryError)


@dataclass(frozen=True, slots=True)
class TaskStat:
    """The fields of ``/proc/<pid>/task/<tid>/stat`` the fence uses.

    ``processor`` is the CPU the thread last ran on (or is queued on); ``utime + stime`` is
    its CPU time in clock ticks; ``start_time`` (ticks after boot) names it for good.
    """

    tid: int
    comm: str
    state: str
    ppid: int
    flags: int
    utime: int
    stime: int
    start_time: int
    processor: int

    @property
    def kernel(self) -> bool:
        """A kernel thread (PF_KTHREAD)."""
        return bool(self.flags & PF_KTHREAD)

    @property
    def no_setaffinity(self) -> bool:
        """The kernel refuses to change this thread's affinity or cpuset (PF_NO_SETAFFINITY)."""
        return bool(self.flags & PF_NO_SETAFFINITY)

    @property
    def ticks(self) -> int:
        return self.utime + self.stime


def _int(text: str, what: str, line: str) -> int:
    if not (text.isdigit() and text.isascii()) or len(text) > 20:
        raise ParseError(f"not a /proc/<pid>/stat line ({what} {text[:20]!r}): {line[:80]!r}")
    return int(text)


def parse_task_stat(text: str) -> TaskStat:
    """Parse a thread's ``stat``; the name may hold spaces and parentheses."""
    head, paren, rest = text.rpartition(")")
    tid_text, _, comm = head.partition(" (")
    fields = rest.split()
    # After the name, field n of the file is fields[n - 3]: state 3, ppid 4, flags 9,
    # utime 14, stime 15, starttime 22, processor 39.
    if not paren or len(fields) < 37:
        raise ParseError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    return TaskStat(
        tid=_int(tid_text, "pid", text),
        comm=comm,
        state=fields[0],
        ppid=_int(fields[1], "ppid", text),
        flags=_int(fields[6], "flags", text),
        utime=_int(fields[11], "utime", text),
        stime=_int(fields[12], "stime", text),
        start_time=_int(fields[19], "starttime", text),
        processor=_int(fields[36], "processor", text),
    )


def parse_status_allowed(text: str) -> frozenset[int] | None:
    """The CPUs of ``Cpus_allowed_list`` in a ``status`` text; ``None`` if it has none."""
    key = "Cpus_allowed_list:"
    at = text.find(key)
    if at < 0:
        return None
    end = text.find("\n", at)
    return cpulist.parse(text[at + len(key) : end if end >= 0 else len(text)])


@dataclass(frozen=True, slots=True)
class SchedCounters:
    """A thread's CPU time in nanoseconds and, where the kernel says, how often it migrated."""

    runtime_ns: int
    migrations: int | None


def _ms_to_ns(text: str) -> int:
    """``175.184343`` (ms, as ``sched`` prints ``se.sum_exec_runtime``) in nanoseconds."""
    whole, dot, frac = text.partition(".")
    if not (whole.isdigit() and whole.isascii()) or (dot and not (frac.isdigit() and frac)):
        raise ParseError(f"not a time in ms: {text[:40]!r}")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6] or "0")


def parse_sched(text: str) -> SchedCounters:
    """``se.sum_exec_runtime`` and ``se.nr_migrations`` of a ``sched`` text (CONFIG_SCHED_DEBUG)."""
    runtime: int | None = None
    migrations: int | None = None
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key = key.strip()
        if key == "se.sum_exec_runtime":
            runtime = _ms_to_ns(value.strip())
        elif key == "se.nr_migrations":
            value = value.strip()
            if not (value.isdigit() and value.isascii()):
                raise ParseError(f"se.nr_migrations is not a count: {value[:40]!r}")
            migrations = int(value)
    if runtime is None:
        raise ParseError("no se.sum_exec_runtime in sched")
    return SchedCounters(runtime, migrations)


def parse_schedstat(text: str) -> SchedCounters:
    """The run time of a ``schedstat`` text: ``<ns on CPU> <ns waiting> <timeslices>``."""
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    if not (first.isdigit() and first.isascii()):
        raise ParseError(f"not a schedstat line: {text[:80]!r}")
    return SchedCounters(int(first), None)


def parse_cgroup(text: str) -> str:
    """The thread's cgroup in the hierarchy that holds cpuset, from its ``cgroup`` text.

    cgroup v1 lines read ``<id>:<controllers>:<path>``; the v2 line is ``0::<path>``. The
    cpuset hierarchy's path wins; else the v2 path (cpuset may be enabled there); else ``""``.
    """
    unified = ""
    for line in text.splitlines():
        _, colon, rest = line.partition(":")
        controllers, colon2, path = rest.partition(":")
        if not (colon and colon2):
            continue
        if "cpuset" in controllers.split(","):
            return path
        if not controllers:
            unified = path
    return unified


def read_text(path: str) -> str | None:
    """The text of a small kernel file; ``None`` if it (or its thread) is gone. Any other
    failure is an EnvironmentProblem naming the file: an audit that cannot read a thread
    must not call the host clean.

    One open, one read, one close: the audit reads tens of thousands of these.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except _GONE:
        return None
    except OSError as e:
        raise EnvironmentProblem(f"cannot read {path}: {e.strerror}") from None
    try:
        chunks = []
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
            if len(data) < 65536:
                break
    except _GONE:
        return None
    except OSError as e:
        if e.errno == 3:  # ESRCH: the thread exited between open and read
            return None
        raise EnvironmentProblem(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def list_pids(root: str) -> list[int]:
    """The PIDs (thread-group ids) under a procfs root."""
    with os.scandir(root) as it:
        return [int(e.name) for e in it if e.name.isdigit() and e.name.isascii()]


def list_tids(root: str, pid: int) -> list[int]:
    """The thread ids of process ``pid``; empty if it is gone."""
    try:
        with os.scandir(f"{root}/{pid}/task") as it:
            return [int(e.name) for e in it if e.name.isdigit() and e.name.isascii()]
    except _GONE:
        return []
    except OSError as e:
        raise EnvironmentProblem(f"cannot list {root}/{pid}/task: {e.strerror}") from None


def task_path(root: str, pid: int, tid: int, name: str) -> str:
    return f"{root}/{pid}/task/{tid}/{name}"
