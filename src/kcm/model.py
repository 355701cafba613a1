"""The state directory's content as values: pools of CPU lists with their tasks.

Plain ``__slots__`` classes rather than dataclasses: these sit on the ``isolate`` start-up path,
where importing ``dataclasses`` alone would cost more than the whole allocation.
"""

from __future__ import annotations


class CpuList:
    """One CPU list of a pool: its name in cpu-list format and the PIDs that hold it."""

    __slots__ = ("cpus", "tasks")

    def __init__(self, cpus: str, tasks: list[int] | None = None) -> None:
        self.cpus = cpus
        self.tasks: list[int] = [] if tasks is None else tasks

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CpuList) and self.cpus == other.cpus and self.tasks == other.tasks

    def __repr__(self) -> str:
        return f"CpuList({self.cpus!r}, {self.tasks!r})"


class Pool:
    """A named pool: exclusive or shared, and its CPU lists by name."""

    __slots__ = ("cpu_lists", "exclusive", "name")

    def __init__(self, name: str, exclusive: bool, cpu_lists: dict[str, CpuList]) -> None:
        self.name = name
        self.exclusive = exclusive
        self.cpu_lists = cpu_lists

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Pool)
            and self.name == other.name
            and self.exclusive == other.exclusive
            and self.cpu_lists == other.cpu_lists
        )

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, {self.exclusive!r}, {self.cpu_lists!r})"


def describe(path: str, pools: dict[str, Pool]) -> dict[str, object]:
    """The JSON document ``kcm describe`` prints (field names as in the seed)."""
    return {
        "path": path,
        "pools": {
            pool.name: {
                "cpuLists": {
                    name: {"cpus": cl.cpus, "tasks": list(cl.tasks)}
                    for name, cl in pool.cpu_lists.items()
                },
                "exclusive": pool.exclusive,
                "name": pool.name,
            }
            for pool in pools.values()
        },
    }
