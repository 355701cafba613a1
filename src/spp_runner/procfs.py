"""What the runner reads from a procfs root: process tree, liveness, identity and affinity.

Parsers take a file's text; readers take the root, so tests and containers can point anywhere.
"""

from __future__ import annotations

import os

from kcm import cpulist
from kcm.errors import ParseError
from kcm.host.procfs import Stat as ProcStat
from kcm.host.procfs import parse_cpus_allowed_list, parse_stat

__all__ = ["ProcStat", "parse_stat"]


def parse_cpus_allowed(status_text: str) -> frozenset[int] | None:
    """The ``Cpus_allowed_list`` of a ``/proc/<pid>/status`` text, as CPUs."""
    text = parse_cpus_allowed_list(status_text)
    if text is None:
        return None
    try:
        return cpulist.parse(text)
    except ParseError:
        return None


def read_stat(root: str, pid: int) -> ProcStat | None:
    """The stat of ``pid``, or None when there is no such process."""
    try:
        with open(os.path.join(root, str(pid), "stat"), "rb") as f:
            return parse_stat(f.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def read_cpus_allowed(root: str, pid: int) -> frozenset[int] | None:
    """The CPUs ``pid`` may run on, or None when it is gone."""
    try:
        with open(os.path.join(root, str(pid), "status"), encoding="utf-8", errors="replace") as f:
            return parse_cpus_allowed(f.read())
    except OSError:
        return None


def read_cmdline(root: str, pid: int) -> tuple[str, ...]:
    """The argv of ``pid`` (empty when gone or a kernel thread)."""
    try:
        with open(os.path.join(root, str(pid), "cmdline"), "rb") as f:
            raw = f.read()
    except OSError:
        return ()
    return tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1])


def all_stats(root: str) -> dict[int, ProcStat]:
    """Every process under ``root``."""
    stats: dict[int, ProcStat] = {}
    for name in os.listdir(root):
        if name.isdigit():
            stat = read_stat(root, int(name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def descendants(stats: dict[int, ProcStat], pid: int) -> list[ProcStat]:
    """``pid`` and every process below it, parents before children."""
    children: dict[int, list[ProcStat]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat)
    found: list[ProcStat] = []
    todo = [stats[pid]] if pid in stats else []
    while todo:
        stat = todo.pop(0)
        found.append(stat)
        todo += sorted(children.get(stat.pid, []), key=lambda s: s.pid)
    return found


def main_process(stats: dict[int, ProcStat], pid: int) -> ProcStat | None:
    """The process a window is really about: follow single children down from ``pid``.

    A window runs its program directly, or through ``sudo`` or ``kcm isolate``, each of which
    keeps one child; the end of that chain is the DPDK process or VM.
    """
    children: dict[int, list[ProcStat]] = {}
    for stat in stats.values():
        if stat.alive:
            children.setdefault(stat.ppid, []).append(stat)
    current = stats.get(pid)
    while current is not None:
        below = children.get(current.pid, [])
        if len(below) != 1:
            break
        current = below[0]
    return current
