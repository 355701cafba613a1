"""What the runner learns about the host: online CPUs and their NUMA nodes, the NUMA node of
each device conf.yml names, the user, kcm's pools, and the free hugepages of each node.

Reading is here; every decision made from these facts is in plan.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kcm import cpulist
from kcm.errors import KcmError, ParseError
from kcm.host.sysfs import device_numa_node, read_numa_nodes, read_online_cpus, sys_root
from spp_runner.errors import ConfigError

DEFAULT_HUGEPAGE_KB = 2048  # x86's default hugepage size, when nothing says otherwise


@dataclass(frozen=True)
class KcmCpuList:
    """One CPU list of a kcm pool and the PIDs kcm has recorded on it."""

    cpus: frozenset[int]
    tasks: tuple[int, ...]


@dataclass(frozen=True)
class KcmPool:
    name: str
    exclusive: bool
    cpu_lists: tuple[KcmCpuList, ...]

    @property
    def cpus(self) -> frozenset[int]:
        return frozenset().union(*(c.cpus for c in self.cpu_lists))

    @property
    def free_lists(self) -> int:
        return sum(1 for c in self.cpu_lists if not c.tasks)


@dataclass(frozen=True)
class Device:
    """A device conf.yml names (``near``) and the NUMA node sysfs puts it on.

    ``node`` is None for a device the platform ties to no node (``numa_node`` is -1);
    ``error`` says why the device could not be looked up (then ``node`` means nothing).
    """

    name: str
    node: int | None
    error: str | None = None


@dataclass(frozen=True)
class Host:
    """The facts a plan depends on; tests build these directly."""

    online_cpus: frozenset[int]
    is_root: bool = True
    xdg_runtime_dir: str | None = None
    kcm_pools: tuple[KcmPool, ...] | None = None  # None: no kcm.conf_dir in conf.yml
    kcm_error: str | None = None  # why kcm's state could not be read
    cpu_nodes: Mapping[int, int] = field(default_factory=dict)  # CPU -> NUMA node; {}: unknown
    devices: tuple[Device, ...] = ()
    sys_root: str = "/sys"  # the sysfs the facts come from; kcm in the windows reads it too

    @property
    def numa_nodes(self) -> frozenset[int]:
        """The NUMA nodes that hold online CPUs (empty when sysfs shows no nodes)."""
        return frozenset(self.cpu_nodes.values())

    def nodes_of(self, cpus: Iterable[int]) -> frozenset[int]:
        """The NUMA nodes of ``cpus``; CPUs of no known node add none."""
        return frozenset(self.cpu_nodes[c] for c in cpus if c in self.cpu_nodes)

    def device(self, name: str) -> Device | None:
        return next((d for d in self.devices if d.name == name), None)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_kcm_pools(conf_dir: str) -> tuple[KcmPool, ...]:
    """kcm's pools as its state directory records them (``pools/<pool>/<cpulist>/tasks``)."""
    pools_dir = os.path.join(conf_dir, "pools")
    if not os.path.isdir(pools_dir):
        raise ConfigError(
            f"kcm.conf_dir: {conf_dir} holds no kcm state ({pools_dir} is missing); "
            f"run 'kcm init --conf-dir={conf_dir}' first or fix the path"
        )
    pools: list[KcmPool] = []
    for name in sorted(os.listdir(pools_dir)):
        pool_dir = os.path.join(pools_dir, name)
        if not os.path.isdir(pool_dir):
            continue
        try:
            exclusive = _read_text(os.path.join(pool_dir, "exclusive")).strip() == "1"
        except OSError as e:
            raise ConfigError(f"kcm.conf_dir: cannot read pool {name!r}: {e}") from None
        lists: list[KcmCpuList] = []
        for entry in sorted(os.listdir(pool_dir)):
            list_dir = os.path.join(pool_dir, entry)
            if not os.path.isdir(list_dir):
                continue
            try:
                cpus = cpulist.parse(entry)
                tasks_text = _read_text(os.path.join(list_dir, "tasks"))
                tasks = tuple(int(t) for t in tasks_text.replace(",", " ").split())
            except (ParseError, ValueError, OSError) as e:
                raise ConfigError(f"kcm.conf_dir: {list_dir} is not a kcm CPU list: {e}") from None
            lists.append(KcmCpuList(cpus, tasks))
        pools.append(KcmPool(name, exclusive, tuple(lists)))
    return tuple(pools)


def read_device(root: str, name: str) -> Device:
    """``name``'s NUMA node as kcm sees it (``kcm isolate --near`` reads the same files)."""
    try:
        return Device(name, device_numa_node(root, name))
    except KcmError as e:
        return Device(name, None, e.message)


def read_host(
    kcm_conf_dir: str | None, sysfs: str | None = None, devices: Iterable[str] = ()
) -> Host:
    """This host's facts; CPUs and devices come from ``$KCM_SYS_FS`` (default /sys) as in kcm."""
    # Absolute: kcm in the windows reads it too, from another directory.
    root = os.path.abspath(sysfs or sys_root())
    online = read_online_cpus(root)
    pools: tuple[KcmPool, ...] | None = None
    error: str | None = None
    if kcm_conf_dir is not None:
        try:
            pools = read_kcm_pools(kcm_conf_dir)
        except ConfigError as e:
            error = e.message
    return Host(
        online_cpus=online,
        is_root=os.geteuid() == 0,
        xdg_runtime_dir=os.environ.get("XDG_RUNTIME_DIR") or None,
        kcm_pools=pools,
        kcm_error=error,
        cpu_nodes={cpu: node for cpu, node in read_numa_nodes(root).items() if cpu in online},
        devices=tuple(read_device(root, name) for name in dict.fromkeys(devices)),
        sys_root=root,
    )


# -- hugepages: what each node has free, for the check before a launch ---------------------


def node_hugepages_dir(root: str, node: int, size_kb: int) -> str:
    return os.path.join(root, f"devices/system/node/node{node}/hugepages/hugepages-{size_kb}kB")


@dataclass(frozen=True)
class NodeHugepages:
    """What sysfs says of one node's hugepages of one size.

    ``free`` is None when it could not be read, and ``problem`` then says why: the node does
    not exist, the kernel offers no pages of that size there, or the file is unreadable.
    """

    node: int
    size_kb: int
    free: int | None
    path: str
    problem: str | None = None


def read_node_hugepages(root: str, node: int, size_kb: int) -> NodeHugepages:
    """``free_hugepages`` of ``node`` for pages of ``size_kb``, under the sysfs ``root``."""
    node_dir = os.path.join(root, f"devices/system/node/node{node}")
    size_dir = node_hugepages_dir(root, node, size_kb)
    path = os.path.join(size_dir, "free_hugepages")
    if not os.path.isdir(node_dir):
        return NodeHugepages(
            node, size_kb, None, path, f"this host has no node {node} ({node_dir} is missing)"
        )
    if not os.path.isdir(size_dir):
        return NodeHugepages(
            node,
            size_kb,
            None,
            path,
            f"the kernel offers no {size_kb} kB pages there ({size_dir} is missing)",
        )
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        return NodeHugepages(node, size_kb, None, path, f"cannot read {path}: {e}")
    if not text.isdigit():
        return NodeHugepages(
            node, size_kb, None, path, f"{path} holds {text!r}, not a number of pages"
        )
    return NodeHugepages(node, size_kb, int(text), path)


def parse_pagesize(option: str) -> int | None:
    """A hugetlbfs ``pagesize=`` value (``2M``, ``1G``, ``2048k``, bytes) in kB."""
    units = {"k": 1, "m": 1024, "g": 1024 * 1024}
    text = option.strip().lower()
    scale = units.get(text[-1:])
    digits = text[:-1] if scale else text
    if not digits.isdigit():
        return None
    return int(digits) * scale if scale else int(digits) // 1024


def hugepage_size_kb(huge_dir: str, mounts_text: str | None, meminfo_text: str | None) -> int:
    """The size of the pages DPDK gets from ``huge_dir``: its hugetlbfs mount's ``pagesize``,
    else the kernel's default size (meminfo's ``Hugepagesize``, which a mount without the
    option gets), else x86's 2 MB."""
    real = os.path.realpath(huge_dir)
    for line in (mounts_text or "").splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "hugetlbfs":
            continue
        if os.path.realpath(fields[1].replace("\\040", " ")) != real:
            continue
        for option in fields[3].split(","):
            if option.startswith("pagesize="):
                size = parse_pagesize(option.removeprefix("pagesize="))
                if size:
                    return size
    for line in (meminfo_text or "").splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if name == "Hugepagesize" and parts and parts[0].isdigit():
            return int(parts[0])
    return DEFAULT_HUGEPAGE_KB
