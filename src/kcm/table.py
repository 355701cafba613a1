"""``kcm describe --output=table``: the state as aligned rows for people; pure.

One row per CPU list (POOL, EXCLUSIVE, CPUS, NUMA, STATE) carrying its first task (PID, COMMAND,
AGE); a list's further tasks follow on rows of their own with the list's columns left blank. A list
of more than ``TASKS_SHOWN + 1`` tasks shows its first ``TASKS_SHOWN`` (in booking order) and one
``(+N more)`` row, so a shared list of thousands of tasks stays a few lines; ``kcm describe`` (JSON)
has every PID. Reading the state, sysfs and procfs is ``kcm.describe``'s job.
"""

from __future__ import annotations

from itertools import starmap

from kcm import cpulist
from kcm.model import FREE, HELD, HELD_BY_LEFTOVERS, Pool, list_state

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Iterable

TASKS_SHOWN = 3
HEADER = ("POOL", "EXCLUSIVE", "CPUS", "NUMA", "STATE", "PID", "COMMAND", "AGE")
GONE = "?"  # the command and age of a PID that no process holds any more
UNKNOWN_NUMA = "-"

_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"
# Green, yellow, magenta; others stay plain.
_STATE_COLOURS = {
    FREE: "\x1b[32m",
    HELD: "\x1b[33m",
    HELD_BY_LEFTOVERS.replace("_", " "): "\x1b[35m",
}


class TaskInfo:
    """What procfs says of a live task: its command name and how long it has run (seconds)."""

    __slots__ = ("age", "command")

    def __init__(self, command: str, age: float | None) -> None:
        self.command = command
        self.age = age

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TaskInfo) and self.command == other.command and self.age == other.age
        )

    def __repr__(self) -> str:
        return f"TaskInfo({self.command!r}, {self.age!r})"


def shown_tasks(tasks: list[int]) -> tuple[list[int], int]:
    """The PIDs a list's rows show, and how many more it has that one ``(+N more)`` row counts."""
    if len(tasks) <= TASKS_SHOWN + 1:
        return tasks, 0
    return tasks[:TASKS_SHOWN], len(tasks) - TASKS_SHOWN


def shown_pids(pools: dict[str, Pool]) -> list[int]:
    """Every PID the table shows: the ones whose command and age the reader looks up."""
    return [
        pid
        for pool in pools.values()
        for cl in pool.cpu_lists.values()
        for pid in shown_tasks(cl.tasks)[0]
    ]


def human_age(seconds: float | None) -> str:
    """A duration the way ``kubectl get`` prints ages: ``45s``, ``3m20s``, ``5h12m``, ``4d``."""
    if seconds is None or seconds < 0 or seconds != seconds:
        return GONE
    s = int(seconds)
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    y = d // 365
    if y < 8:
        return f"{y}y{d % 365}d" if d % 365 else f"{y}y"
    return f"{y}y"


def numa_cell(cpus: str, numa_of: dict[int, int]) -> str:
    """The NUMA node(s) of a list's CPUs in cpu-list form (``0``, ``0-1``); ``-`` if unknown."""
    if not numa_of:
        return UNKNOWN_NUMA
    # The state reader has checked the name parses; int() is all that is left to do.
    if "-" in cpus:
        nodes: set[int] = set()
        for part in cpus.split(","):
            first, _, last = part.partition("-")
            nodes.update(numa_of.get(cpu, -1) for cpu in range(int(first), int(last or first) + 1))
    else:  # a list of single CPUs, as every list of one core is
        nodes = {numa_of.get(int(cpu), -1) for cpu in cpus.split(",")}
    nodes.discard(-1)
    if len(nodes) == 1:  # the usual case, without format's sorting
        return str(nodes.pop())
    return cpulist.format(nodes) if nodes else UNKNOWN_NUMA


def printable(text: str) -> str:
    """``text`` with control characters escaped: a process names itself, and an escape
    sequence in a command name must not reach the operator's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _first_cpu(name: str) -> int:
    """A list's lowest CPU, the order rows take (``8,24`` before ``16,32``); names are canonical
    or at least start with a number (the state reader checked they parse)."""
    head = name.partition(",")[0].partition("-")[0].strip()
    return int(head) if head.isdigit() else 0


def rows(
    pools: dict[str, Pool],
    numa_of: dict[int, int],
    tasks: dict[int, TaskInfo],
    leftovers: set[str] | frozenset[str] = frozenset(),
) -> list[tuple[str, ...]]:
    """The table's cells, header first: pools by name, lists by their lowest CPU.

    ``tasks`` holds what procfs said of each live PID of ``shown_pids``; a PID missing from it
    is gone (its command and age print as ``?``). ``leftovers``: the lists (``pool/cpus``)
    only processes of gone bookings hold (``held by leftovers``).
    """
    out: list[tuple[str, ...]] = [HEADER]
    for name in sorted(pools):
        pool = pools[name]
        exclusive = "yes" if pool.exclusive else "no"
        for key in sorted(pool.cpu_lists, key=_first_cpu):
            cl = pool.cpu_lists[key]
            state = list_state(cl, f"{pool.name}/{cl.cpus}" in leftovers).replace("_", " ")
            head = (pool.name, exclusive, cl.cpus, numa_cell(cl.cpus, numa_of), state)
            shown, more = shown_tasks(cl.tasks)
            if not shown:
                out.append((*head, "", "", ""))
                continue
            for i, pid in enumerate(shown):
                info = tasks.get(pid)
                cells = (
                    (str(pid), GONE, GONE)
                    if info is None
                    else (str(pid), printable(info.command), human_age(info.age))
                )
                out.append((*head, *cells) if i == 0 else ("", "", "", "", "", *cells))
            if more:
                out.append(("", "", "", "", "", "", f"(+{more} more)", ""))
    return out


def render(table: Iterable[tuple[str, ...]], *, colour: bool = False) -> str:
    """Cells as aligned columns, two spaces apart, no trailing blanks.

    With ``colour`` the header is bold, the STATE column coloured (free green, held yellow,
    held by leftovers magenta) and a gone task's ``?`` dimmed; the padding is computed on the
    plain text, so the columns line up either way.
    """
    table = list(table)
    if not table:
        return ""
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    if not colour:
        # Every cell padded, then the blanks after a row's last cell stripped: no cell ends
        # in a blank where it matters (AGE never does, and it ends every row with a task).
        padded = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join([line.rstrip() for line in starmap(padded.format, table)]) + "\n"
    lines = []
    for n, row in enumerate(table):
        end = len(row)
        while end and not row[end - 1]:
            end -= 1
        cells = []
        for i in range(end):
            cell = row[i]
            text = cell if i == end - 1 else cell.ljust(widths[i])
            if cell:
                if n == 0:
                    text = f"{_BOLD}{text}{_RESET}"
                elif i == 4 and cell in _STATE_COLOURS:
                    text = f"{_STATE_COLOURS[cell]}{text}{_RESET}"
                elif i in (6, 7) and cell == GONE:
                    text = f"{_DIM}{text}{_RESET}"
            cells.append(text)
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"
