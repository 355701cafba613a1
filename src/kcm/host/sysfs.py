"""What kcm reads from a sysfs root: online CPUs, their cores and sockets, NUMA nodes, and the
CPUs isolated at boot."""

from __future__ import annotations

import os

from kcm import cpulist
from kcm.errors import EnvironmentProblem, ParseError
from kcm.topology import Core, Topology


def sys_root() -> str:
    """The sysfs root kcm reads: ``$KCM_SYS_FS``, else ``/sys``."""
    return os.environ.get("KCM_SYS_FS") or "/sys"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except FileNotFoundError:
        raise EnvironmentProblem(f"cannot read CPU topology: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EnvironmentProblem(f"cannot read CPU topology from {path}: {e}") from None


def _read_cpus(path: str) -> frozenset[int]:
    return _read_cpus_text(_read(path), path)


def _read_int(path: str) -> int:
    text = _read(path).strip()
    try:
        return int(text)
    except ValueError:
        raise EnvironmentProblem(f"{path}: expected an integer, found {text!r}") from None


def read_online_cpus(root: str) -> frozenset[int]:
    """The online CPUs named by ``<root>/devices/system/cpu/online``."""
    cpus = _read_cpus(os.path.join(root, "devices/system/cpu/online"))
    if not cpus:
        raise EnvironmentProblem(f"{root}/devices/system/cpu/online lists no CPUs")
    return cpus


def read_boot_isolation(root: str) -> tuple[frozenset[int], frozenset[int]]:
    """The CPUs of ``devices/system/cpu/isolated`` and ``nohz_full``; a missing file is none.

    A kernel without ``nohz_full`` support lacks that file; some print ``(null)`` in it when
    the boot line has no ``nohz_full=``.
    """
    found: list[frozenset[int]] = []
    for name in ("isolated", "nohz_full"):
        path = os.path.join(root, "devices/system/cpu", name)
        if not os.path.exists(path):
            found.append(frozenset())
            continue
        text = _read(path)
        found.append(frozenset() if text.strip() == "(null)" else _read_cpus_text(text, path))
    return found[0], found[1]


def _read_cpus_text(text: str, path: str) -> frozenset[int]:
    try:
        return cpulist.parse(text)
    except ParseError as e:
        raise EnvironmentProblem(f"{path}: {e}") from None


def _numa_nodes(root: str) -> dict[int, int]:
    """CPU -> NUMA node, from ``devices/system/node/node*/cpulist`` where present."""
    node_dir = os.path.join(root, "devices/system/node")
    try:
        names = os.listdir(node_dir)
    except OSError:
        return {}
    nodes: dict[int, int] = {}
    for name in names:
        if not (name.startswith("node") and name[4:].isdigit()):
            continue
        path = os.path.join(node_dir, name, "cpulist")
        if os.path.exists(path):
            for cpu in _read_cpus(path):
                nodes[cpu] = int(name[4:])
    return nodes


def read_topology(root: str) -> Topology:
    """The topology of the host whose sysfs is mounted at ``root`` (what lscpu reads)."""
    online = read_online_cpus(root)
    numa = _numa_nodes(root)
    seen: set[int] = set()
    cores: list[Core] = []
    for cpu in sorted(online):
        if cpu in seen:
            continue
        topo = os.path.join(root, f"devices/system/cpu/cpu{cpu}/topology")
        socket = _read_int(os.path.join(topo, "physical_package_id"))
        core_id = _read_int(os.path.join(topo, "core_id"))
        siblings_path = os.path.join(topo, "thread_siblings_list")
        siblings = (_read_cpus(siblings_path) if os.path.exists(siblings_path) else {cpu}) & online
        if cpu not in siblings:
            raise EnvironmentProblem(f"{siblings_path} does not list CPU {cpu} itself")
        overlap = siblings & seen
        if overlap:
            raise EnvironmentProblem(
                f"{siblings_path}: CPU {cpu} shares a core with CPUs {cpulist.format(overlap)} "
                "that belong to another core"
            )
        seen |= siblings
        cores.append(Core(socket, core_id, tuple(sorted(siblings)), numa.get(cpu)))
    isolated, nohz_full = read_boot_isolation(root)
    return Topology.from_cores(cores, isolated=isolated, nohz_full=nohz_full)
