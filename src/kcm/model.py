"""The state directory's content as values: pools of CPU lists with their tasks.

Plain ``__slots__`` classes rather than dataclasses: these sit on the ``isolate`` start-up path,
where importing ``dataclasses`` alone would cost more than the whole allocation.
"""

from __future__ import annotations

from kcm import cpulist


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


def cpu_order(name: str) -> tuple[int, ...]:
    """A list's CPUs in ascending order: lists sort by their lowest CPUs first."""
    return tuple(sorted(cpulist.parse(name)))


def choose_cpu_list(pool: Pool) -> CpuList | None:
    """The list ``isolate`` takes: exclusive pools the lowest free list, shared the least loaded.

    Ties go to the lowest-numbered CPUs, so choices are reproducible. ``None`` when an
    exclusive pool has no free list or the pool has no lists.
    """
    candidates = list(pool.cpu_lists.values())
    if pool.exclusive:
        candidates = [cl for cl in candidates if not cl.tasks]
    if not candidates:
        return None
    return min(candidates, key=lambda cl: (len(cl.tasks), cpu_order(cl.cpus)))


# What holds a CPU list, as the table's STATE column and the metrics' ``state`` label name it
# (the table prints ``_`` as a space): nothing; a booking whose kcm isolate runs (or a task
# another tool recorded); or only processes that bookings left behind once their kcm isolate
# was gone (leftovers, named in the tasks file by their heir records, ``kcm.holders``).
FREE = "free"
HELD = "held"
HELD_BY_LEFTOVERS = "held_by_leftovers"
LIST_STATES = (FREE, HELD, HELD_BY_LEFTOVERS)


def list_state(cpu_list: CpuList, by_leftovers: bool = False) -> str:
    """Whether a CPU list is free, held, or held by leftovers (``by_leftovers``: every live
    task of it is a heir, as the reader found)."""
    if not cpu_list.tasks:
        return FREE
    return HELD_BY_LEFTOVERS if by_leftovers else HELD


def held_by_leftovers(tasks: list[int], live: set[int], heirs: set[int]) -> bool:
    """Whether the live tasks of a list are all heirs of gone bookings (and there is one)."""
    alive = [pid for pid in tasks if pid in live]
    return bool(alive) and all(pid in heirs for pid in alive)


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


def _quote(text: str) -> str:
    """``text`` as a JSON string, exactly as ``json.dumps`` writes it (ASCII only)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    import json  # rare: only for names with quotes, escapes or non-ASCII characters

    return json.dumps(text)


def describe_json(path: str, pools: dict[str, Pool]) -> str:
    """``json.dumps(describe(path, pools), sort_keys=True, indent=2) + "\\n"``, written directly.

    The json module's indenting encoder is pure Python; on a state of 10,000 tasks this is
    several times faster, and the output is byte-identical (the tests compare the two).
    """
    out = ["{", f'  "path": {_quote(path)},']
    if not pools:
        out.append('  "pools": {}')
    else:
        out.append('  "pools": {')
        names = sorted(pools)
        for i, name in enumerate(names):
            pool = pools[name]
            out.append(f"    {_quote(name)}: {{")
            if not pool.cpu_lists:
                out.append('      "cpuLists": {},')
            else:
                out.append('      "cpuLists": {')
                keys = sorted(pool.cpu_lists)
                for j, key in enumerate(keys):
                    cl = pool.cpu_lists[key]
                    out.append(f"        {_quote(key)}: {{")
                    out.append(f'          "cpus": {_quote(cl.cpus)},')
                    if cl.tasks:
                        out.append('          "tasks": [')
                        out.append(",\n".join(f"            {pid}" for pid in cl.tasks))
                        out.append("          ]")
                    else:
                        out.append('          "tasks": []')
                    out.append("        }," if j < len(keys) - 1 else "        }")
                out.append("      },")
            out.append(f'      "exclusive": {"true" if pool.exclusive else "false"},')
            out.append(f'      "name": {_quote(pool.name)}')
            out.append("    }," if i < len(names) - 1 else "    }")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"
