"""What kcm reads from a procfs root: its own PID, whether a PID lives, and a task's affinity.

Parsing takes the file's text; reading takes the root, so tests can point at any tree.
"""

from __future__ import annotations

import os

from kcm.errors import EnvironmentProblem, ParseError

PROC_ENV = ("KCM_PROC_FS", "CMK_PROC_FS")
ALLOW_PID_NAMESPACE = "KCM_ALLOW_PID_NAMESPACE"
# The host's PID 2 is the kernel's thread creator, whose parent is 0. A PID namespace shows no
# kernel threads: its PID 2, if any, is a process of the namespace.
KTHREADD = "kthreadd"


def proc_root(command: str) -> str:
    """``$KCM_PROC_FS`` (or ``$CMK_PROC_FS``), which ``isolate`` and ``reconcile`` require."""
    for name in PROC_ENV:
        value = os.environ.get(name)
        if value:
            return value
    raise EnvironmentProblem(
        f"{command} needs KCM_PROC_FS set to the host's procfs (for example KCM_PROC_FS=/proc)"
    )


def proc_root_or_default() -> str:
    """``$KCM_PROC_FS`` (or ``$CMK_PROC_FS``) if set, else ``/proc``: for commands that only
    read what procfs says of tasks (describe's table, metrics) and work without it too."""
    for name in PROC_ENV:
        value = os.environ.get(name)
        if value:
            return value
    return "/proc"


def parse_uptime(text: str) -> float | None:
    """Seconds since boot, the first field of ``/proc/uptime``; ``None`` if it is not one."""
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    try:
        value = float(first)
    except ValueError:
        return None
    return value if 0 <= value < float("inf") else None


def read_uptime(root: str) -> float | None:
    """``<root>/uptime``'s seconds since boot, or ``None`` if it cannot be read."""
    try:
        with open(f"{root}/uptime", "rb") as f:
            return parse_uptime(f.read(200).decode("ascii", "replace"))
    except OSError:
        return None


def clock_ticks() -> int:
    """Clock ticks per second, the unit of a stat's ``start_time`` (USER_HZ, 100 on Linux)."""
    try:
        return os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 100


def require_host_pid_namespace(root: str) -> None:
    """Refuse a procfs of another PID namespace than the host's, unless allowed.

    The PIDs kcm records are read from ``root``; one of a PID namespace names a process the
    host (and every other kcm) knows by another PID, so a reconcile would free a live task's
    list and another isolate book it again. One small read: ``<root>/2/stat``.
    """
    if os.environ.get(ALLOW_PID_NAMESPACE) == "1":
        return
    path = f"{root}/2/stat"
    try:
        stat: Stat | None = parse_stat(_read_stat_text(path))
    except (OSError, ParseError):
        stat = None
    if stat is not None and stat.comm == KTHREADD and stat.ppid == 0:
        return
    found = "it does not exist" if stat is None else f"it is {stat.comm!r}, parent {stat.ppid}"
    raise EnvironmentProblem(
        f"the procfs {root} is not the host's PID namespace ({root}/2 is not the kernel thread"
        f" {KTHREADD}: {found}), so the PIDs kcm would record there are not the host's: run kcm"
        " in the host's PID namespace or point KCM_PROC_FS at the host's /proc (in a container,"
        f" mount it there), or set {ALLOW_PID_NAMESPACE}=1 if every kcm using this state"
        " runs in this namespace"
    )


def _read_stat_text(path: str) -> str:
    """A ``stat`` file's text (bytes that are not UTF-8 replaced), read to its end.

    Plain ``os.open``/``os.read``: the kernel makes a stat file as one record of a few hundred
    bytes, whole in the first read (as a fake tree's plain file is), so a read shorter than
    asked is its end: one read, where a buffered ``open`` makes two and builds its io objects.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, _STAT_READ)]
        while len(chunks[-1]) == _STAT_READ:
            chunks.append(os.read(fd, _STAT_READ))
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


_STAT_READ = 4096


class Stat:
    """The fields kcm and the SPP runner use from ``/proc/<pid>/stat``.

    With the PID, ``start_time`` (clock ticks after boot) names one process for good.
    """

    __slots__ = ("comm", "pid", "ppid", "start_time", "state")

    def __init__(self, pid: int, comm: str, state: str, ppid: int, start_time: int) -> None:
        self.pid = pid
        self.comm = comm
        self.state = state
        self.ppid = ppid
        self.start_time = start_time

    def _key(self) -> tuple[int, str, str, int, int]:
        return (self.pid, self.comm, self.state, self.ppid, self.start_time)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stat) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Stat{self._key()!r}"

    @property
    def alive(self) -> bool:
        """Whether the process has not exited (a zombie has)."""
        return self.state not in ("Z", "X", "x")


def parse_stat(text: str) -> Stat:
    """Parse ``/proc/<pid>/stat``; the command name may hold spaces and parentheses."""
    head, paren, rest = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = rest.split()
    # After the name: state is field 3 of the file, ppid field 4, starttime field 22.
    if (
        not paren
        or not pid_text.isdigit()
        or len(fields) < 20
        or not fields[1].isdigit()
        or not fields[19].isdigit()
    ):
        raise ParseError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    return Stat(int(pid_text), comm, fields[0], int(fields[1]), int(fields[19]))


def read_stat(root: str, pid: int | str) -> Stat | None:
    """The stat of ``pid`` (or ``"self"``) under ``root``; ``None`` if there is no such process."""
    path = f"{root}/{pid}/stat"
    try:
        text = _read_stat_text(path)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    except OSError as e:
        raise EnvironmentProblem(f"cannot read {path}: {e.strerror}") from None
    try:
        return parse_stat(text)
    except ParseError as e:
        raise EnvironmentProblem(f"{path}: {e}") from None


def self_stat(root: str) -> Stat:
    """This process's stat as ``root`` sees it (the host PID when ``root`` is the host's /proc)."""
    stat = read_stat(root, "self")
    if stat is None:
        raise EnvironmentProblem(f"{root}/self/stat does not exist: is KCM_PROC_FS a procfs?")
    return stat


def is_alive(stat: Stat | None) -> bool:
    """Whether a process exists and has not exited (zombies have exited)."""
    return stat is not None and stat.alive


def liveness(root: str, pid: int) -> tuple[bool, Stat | None]:
    """Whether ``pid`` may be alive, and its stat when it could be read.

    When in doubt, alive: a ``<root>/<pid>`` whose ``stat`` cannot be read or parsed is
    counted as a live process, since freeing a list its task still runs on is the worse
    mistake. Only a missing ``<root>/<pid>``, or a stat saying the process exited, is dead.
    """
    entry = f"{root}/{pid}"
    try:
        os.lstat(entry)  # one system call for a dead PID, the common case of a long list
    except (FileNotFoundError, NotADirectoryError):
        return False, None
    except OSError:
        return True, None
    try:
        with open(f"{entry}/stat", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return os.path.lexists(entry), None  # gone since the lstat, or unreadable
    try:
        stat = parse_stat(text)
    except ParseError:
        return True, None
    return stat.alive, stat


def parse_cpus_allowed_list(status_text: str) -> str | None:
    """The ``Cpus_allowed_list`` value of a ``/proc/<pid>/status`` text, if present."""
    for line in status_text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.partition(":")[2].strip()
    return None


def read_cpus_allowed_list(root: str, pid: int) -> str | None:
    """The affinity of ``pid`` as the kernel prints it, or ``None`` if it cannot be read."""
    try:
        with open(f"{root}/{pid}/status", encoding="utf-8", errors="replace") as f:
            return parse_cpus_allowed_list(f.read())
    except OSError:
        return None  # gone, or unreadable: nothing to compare


def group_members(root: str, pgids: set[int]) -> dict[int, list[Stat]]:
    """The live processes of each process group of ``pgids``, from one walk over ``root``.

    Linear in the processes of the host: only for leftovers of a booking without a cgroup,
    whose group is all kcm knows of them.
    """
    found: dict[int, list[Stat]] = {pgid: [] for pgid in pgids}
    if not pgids:
        return found
    try:
        names = [name for name in os.listdir(root) if name.isdigit()]
    except OSError:
        return found
    for name in names:
        try:
            with open(f"{root}/{name}/stat", "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) not in found:
            continue
        try:
            stat = parse_stat(text)
        except ParseError:
            continue
        if stat.alive:
            found[int(fields[2])].append(stat)
    return found
