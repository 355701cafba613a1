"""What kcm reads from a sysfs root: online CPUs, their cores and sockets, NUMA nodes, and the
CPUs isolated at boot."""

from __future__ import annotations

import os

from kcm import cpulist
from kcm.errors import EnvironmentProblem, ParseError, UsageError

TYPE_CHECKING = False  # mypy treats this name as True
if TYPE_CHECKING:
    from kcm.topology import Topology


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


def parse_boot_cpus(text: str, path: str = "") -> frozenset[int]:
    """A boot isolation list (``isolated``, ``nohz_full``); empty and ``(null)``, which some
    kernels print for a mask the boot line never set, are no CPUs."""
    text = text.strip()
    return frozenset() if text in ("", "(null)") else _read_cpus_text(text, path)


def read_boot_cpus(root: str) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """The CPUs of ``devices/system/cpu/isolated`` and ``nohz_full``, each ``None`` where the
    kernel has no such file (a kernel without ``nohz_full`` support lacks it): absent is not
    empty, and the audit says which. The one reader of these files: init and the fence use it.
    """
    found: list[frozenset[int] | None] = []
    for name in ("isolated", "nohz_full"):
        path = os.path.join(root, "devices/system/cpu", name)
        if not os.path.exists(path):
            found.append(None)
            continue
        found.append(parse_boot_cpus(_read(path), path))
    return found[0], found[1]


def read_boot_isolation(root: str) -> tuple[frozenset[int], frozenset[int]]:
    """``read_boot_cpus`` for init, which treats a missing file as no CPUs."""
    isolated, nohz_full = read_boot_cpus(root)
    return isolated or frozenset(), nohz_full or frozenset()


def _read_cpus_text(text: str, path: str) -> frozenset[int]:
    try:
        return cpulist.parse(text)
    except ParseError as e:
        raise EnvironmentProblem(f"{path}: {e}") from None


def _numa_nodes(root: str) -> tuple[dict[int, int], tuple[int, ...]]:
    """CPU -> NUMA node from ``devices/system/node/node*/cpulist``, and every node there
    (a node of memory alone has an empty cpulist)."""
    node_dir = os.path.join(root, "devices/system/node")
    try:
        names = os.listdir(node_dir)
    except OSError:
        return {}, ()
    cpu_nodes: dict[int, int] = {}
    nodes = []
    for name in names:
        if not (name.startswith("node") and name[4:].isdigit()):
            continue
        path = os.path.join(node_dir, name, "cpulist")
        if os.path.exists(path):
            node = int(name[4:])
            nodes.append(node)
            cpu_nodes.update(dict.fromkeys(_read_cpus(path), node))
    return cpu_nodes, tuple(sorted(nodes))


def read_numa_nodes(root: str) -> dict[int, int]:
    """CPU -> NUMA node, from ``<root>/devices/system/node``; empty where sysfs shows no nodes
    or cannot be read, which read-only views show as an unknown node rather than fail on."""
    try:
        return _numa_nodes(root)[0]
    except EnvironmentProblem:
        return {}


def read_topology(root: str) -> Topology:
    """The topology of the host whose sysfs is mounted at ``root`` (what lscpu reads)."""
    # Imported here: the topology's dataclasses cost ~10 ms that read_numa_nodes' callers
    # (describe's table) do not need.
    from kcm.topology import Core, Topology

    online = read_online_cpus(root)
    numa, nodes = _numa_nodes(root)
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
    return Topology.from_cores(
        cores, isolated=isolated, nohz_full=nohz_full, numa_nodes=nodes or None
    )


# -- devices: which NUMA node a PCI device or network interface sits on ---------------------


def _pci_address(device: str) -> str | None:
    """``device`` as a full PCI address (``0000:3b:00.0``; ``3b:00.0`` gets domain 0000), or
    None if it is not one."""
    parts = device.lower().split(":")
    if len(parts) == 2:
        parts.insert(0, "0000")
    if len(parts) != 3:
        return None
    domain, bus, slot_function = parts
    slot, dot, function = slot_function.partition(".")
    hexdigits = "0123456789abcdef"
    fields = ((domain, 4), (bus, 2), (slot, 2), (function, 1))
    if not dot or any(len(f) != n or f.strip(hexdigits) for f, n in fields):
        return None
    return f"{domain}:{bus}:{slot}.{function}"


def _read_node(path: str) -> int | None:
    text = _read(path).strip()
    try:
        node = int(text)
    except ValueError:
        raise EnvironmentProblem(f"{path}: expected a NUMA node number, found {text!r}") from None
    if node < -1:
        raise EnvironmentProblem(f"{path}: expected a NUMA node number, found {text!r}")
    return None if node == -1 else node  # -1: the platform ties the device to no node


def device_numa_node(root: str, device: str) -> int | None:
    """The NUMA node of ``device``: a PCI address (``0000:3b:00.0``) or a network interface
    (``ens1f0``); None when the device belongs to no node (``numa_node`` is -1).

    An interface's ``device`` link leads to its PCI function, or to a device under it (a
    virtio NIC is ``<pci>/virtio<N>``), so the nearest ``numa_node`` on the way up counts.
    """
    if (
        not device
        or "/" in device
        or "\0" in device
        or device in (".", "..")
        or not device.isprintable()
    ):
        raise UsageError(
            f"invalid device {device!r}: a device is a PCI address (0000:3b:00.0) or a"
            " network interface name (ens1f0)"
        )
    address = _pci_address(device)
    if address is not None:
        pci = os.path.join(root, "bus/pci/devices", address)
        if os.path.isdir(pci):
            return _read_node(os.path.join(pci, "numa_node"))
    net = os.path.join(root, "class/net", device)
    if not os.path.isdir(net):
        raise EnvironmentProblem(
            f"no device {device!r} on this host: neither a PCI device in"
            f" {root}/bus/pci/devices nor a network interface in {root}/class/net"
        )
    link = os.path.join(net, "device")
    if not os.path.exists(link):
        raise EnvironmentProblem(
            f"network interface {device} has no device ({link} is missing: a virtual"
            " interface), so it lies on no NUMA node; name the NIC it runs over"
        )
    devices = os.path.realpath(os.path.join(root, "devices"))
    at = os.path.realpath(link)
    while at.startswith(devices + os.sep):
        path = os.path.join(at, "numa_node")
        if os.path.exists(path):
            return _read_node(path)
        at = os.path.dirname(at)
    return None  # no bus on the way up knows of NUMA: the device belongs to no node
