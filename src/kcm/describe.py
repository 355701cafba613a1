"""``kcm describe``: the state directory as JSON in the seed's exact layout, or as a table.

Every read-only view (describe's JSON and table, ``kcm metrics``) reads the state through
``read_state``: the shared lock, then the pools.
"""

from __future__ import annotations

import os
import time

from kcm.model import Pool, describe_json, held_by_leftovers
from kcm.state import StateReader, lock_timeout

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable

    from kcm.table import TaskInfo

OUTPUTS = ("json", "table")
# Past this many PIDs to look up, one listing of procfs is cheaper than a failed lookup for
# each PID that is gone (about 3 us each).
_LIST_PROC_ABOVE = 64


class StateRead:
    """The pools of a state directory, how long the shared lock took to get (seconds), and the
    texts of the hidden top-level files asked for (``None`` for one that is missing)."""

    __slots__ = ("hidden", "lock_wait", "pools")

    def __init__(
        self, pools: dict[str, Pool], lock_wait: float, hidden: dict[str, str | None] | None = None
    ) -> None:
        self.pools = pools
        self.lock_wait = lock_wait
        self.hidden = {} if hidden is None else hidden


def read_state(conf_dir: str, hidden: tuple[str, ...] = ()) -> StateRead:
    """The state under the shared lock, which only waits for writers; and, under the same
    hold, the hidden top-level files ``hidden`` (``.shield.json``, say).

    The one place the read-only views open the state, through a reader that cannot write.
    """
    with StateReader(conf_dir) as state:
        started = time.monotonic()
        state.lock(lock_timeout())
        waited = time.monotonic() - started
        pools = state.read_pools()
        texts = {name: state.read_hidden(name) for name in hidden}
    return StateRead(pools, waited, texts)


def describe(conf_dir: str) -> str:
    return describe_json(os.path.normpath(conf_dir), read_state(conf_dir).pools)


def read_tasks(proc_root: str, pids: list[int]) -> dict[int, TaskInfo]:
    """Command name and age of each live PID of ``pids``, read from ``proc_root``.

    A PID that is gone, a zombie, or whose stat cannot be read or parsed is left out: the
    table shows ``?`` for it. Read after the lock is released; a task that exits meanwhile
    simply shows as gone.
    """
    from kcm.errors import EnvironmentProblem
    from kcm.host import procfs
    from kcm.table import TaskInfo

    present: set[int] | None = None
    if len(pids) > _LIST_PROC_ABOVE:
        try:
            present = {int(name) for name in os.listdir(proc_root) if name.isdigit()}
        except OSError:
            present = None
    uptime = procfs.read_uptime(proc_root)
    ticks = procfs.clock_ticks()
    found: dict[int, TaskInfo] = {}
    for pid in pids:
        if present is not None and pid not in present:
            continue
        try:
            stat = procfs.read_stat(proc_root, pid)
        except EnvironmentProblem:
            continue
        if stat is None or not stat.alive:
            continue
        age = None if uptime is None else uptime - stat.start_time / ticks
        found[pid] = TaskInfo(stat.comm, age)
    return found


def describe_table(conf_dir: str, *, colour: bool) -> str:
    """The state as ``kcm describe --output=table`` prints it (see ``kcm.table``).

    NUMA nodes come from the sysfs at ``$KCM_SYS_FS`` (default ``/sys``), commands and ages
    from the procfs at ``$KCM_PROC_FS`` (default ``/proc``); both are optional.
    """
    from kcm import table
    from kcm.host import procfs, sysfs

    pools = read_state(conf_dir).pools
    numa_of = sysfs.read_numa_nodes(sysfs.sys_root())
    tasks = read_tasks(procfs.proc_root_or_default(), table.shown_pids(pools))
    leftovers = lists_held_by_leftovers(conf_dir, pools, set(tasks), table.shown_tasks)
    return table.render(table.rows(pools, numa_of, tasks, leftovers), colour=colour)


def heirs_among(conf_dir: str, pools: dict[str, Pool], live: set[int]) -> dict[str, set[int]]:
    """Which live tasks of each list (``pool/cpus``) are heirs: processes that took a booking
    over from the kcm isolate that made it (their ``.heir-<pid>`` record, read under the
    shared lock). One failed open per live task; none for the gone ones."""
    found: dict[str, set[int]] = {}
    wanted = {
        (pool.name, cl.cpus): [pid for pid in cl.tasks if pid in live]
        for pool in pools.values()
        for cl in pool.cpu_lists.values()
    }
    if not any(wanted.values()):
        return found
    with StateReader(conf_dir) as state:
        state.lock(lock_timeout())
        for (pool_name, cpus), pids in wanted.items():
            if pids:
                found[f"{pool_name}/{cpus}"] = set(state.heir_texts(pool_name, cpus, pids))
    return found


def lists_held_by_leftovers(
    conf_dir: str,
    pools: dict[str, Pool],
    live: set[int],
    shown: Callable[[list[int]], tuple[list[int], int]] | None = None,
) -> set[str]:
    """The lists (``pool/cpus``) that only leftovers hold. ``shown`` narrows a list's tasks to
    those the reader looked up (the table: its first few)."""
    heirs = heirs_among(conf_dir, pools, live)
    held: set[str] = set()
    for pool in pools.values():
        for cl in pool.cpu_lists.values():
            key = f"{pool.name}/{cl.cpus}"
            tasks = cl.tasks if shown is None else shown(cl.tasks)[0]
            if held_by_leftovers(tasks, live, heirs.get(key, set())):
                held.add(key)
    return held
