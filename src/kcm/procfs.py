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


class Stat:
    """The fields kcm uses from ``/proc/<pid>/stat``."""

    __slots__ = ("pid", "start_time", "state")

    def __init__(self, pid: int, state: str, start_time: int) -> None:
        self.pid = pid
        self.state = state
        self.start_time = start_time


def parse_stat(text: str) -> Stat:
    """Parse ``/proc/<pid>/stat``; the command name may hold spaces and parentheses."""
    head, paren, rest = text.rpartition(")")
    pid_text = head.partition(" (")[0]
    fields = rest.split()
    # After the name: state is field 3 of the file, starttime field 22.
    if not paren or not pid_text.isdigit() or len(fields) < 20 or not fields[19].isdigit():
        raise ParseError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    return Stat(int(pid_text), fields[0], int(fields[19]))


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
    return stat is not None and stat.state not in ("Z", "X", "x")


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
