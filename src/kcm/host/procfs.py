"""What kcm reads from a procfs root: its own PID, whether a PID lives, and a task's affinity.

Parsing takes the file's text; reading takes the root, so tests can point at any tree.
"""

from __future__ import annotations

import os

from kcm.errors import EnvironmentProblem, ParseError

PROC_ENV = ("KCM_PROC_FS", "CMK_PROC_FS")


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
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
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


def parse_cpus_allowed_list(status_text: str) -> str | None:
    """The ``Cpus_allowed_list`` value of a ``/proc/<pid>/status`` text, if present."""
    for line in status_text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.partition(":")[2].strip()
    return None


def read_cpus_allowed_list(root: str, pid: int) -> str | None:
    """The affinity of ``pid`` as the kernel prints it, or ``None`` if the process is gone."""
    try:
        with open(f"{root}/{pid}/status", encoding="utf-8", errors="replace") as f:
            return parse_cpus_allowed_list(f.read())
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
