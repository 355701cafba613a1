"""Where ``kcm isolate`` takes its list: ``--socket-id``, ``--numa-node``, ``--near``.

Only a placement option brings this module in, and with it the topology (sysfs, ``dataclasses``):
the plain ``kcm isolate`` path reads none of it. The choice itself is ``kcm.allocate``'s
(``in_socket``, ``in_node``, ``choose_near``); this module reads what it needs, narrows the pool,
and says what the command and its booking get: ``KCM_NUMA_NODE`` and the memory nodes.
"""

from __future__ import annotations

from kcm import allocate, cpulist
from kcm.errors import PoolExhaustedError, UsageError
from kcm.model import CpuList, Pool

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from kcm.topology import Topology


class Placement:
    """What isolate was asked for: a socket, a NUMA node, a device to be near (and whether a
    list elsewhere is refused rather than taken)."""

    __slots__ = ("near", "node", "socket", "strict")

    def __init__(
        self,
        socket: int | None = None,
        node: int | None = None,
        near: str | None = None,
        strict: bool = False,
    ) -> None:
        self.socket = socket
        self.node = node
        self.near = near
        self.strict = strict

    def __repr__(self) -> str:
        return f"Placement({self.socket!r}, {self.node!r}, {self.near!r}, {self.strict!r})"


def number(option: str, text: str) -> int:
    """A socket's or node's number as given to ``option``; a UsageError otherwise."""
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise UsageError(f"{option}={text!r} is not a non-negative whole number")
    return int(text)


def placement(
    socket: str | None, node: str | None, near: str | None, strict: bool
) -> Placement | None:
    """The placement options of a command line, checked; None when none is given."""
    if near is None and strict:
        raise UsageError("--near-strict goes with --near=<device>")
    if near is not None and (socket is not None or node is not None):
        raise UsageError("--near chooses the node itself: give it without --socket-id/--numa-node")
    if socket is None and node is None and near is None:
        return None
    return Placement(
        None if socket is None else number("--socket-id", socket),
        None if node is None else number("--numa-node", node),
        near,
        strict,
    )


class Placed:
    """A placement worked out for one pool: the pool narrowed to the lists that qualify, the
    topology, the device's node for ``--near`` (None: on no node), and how to say where."""

    __slots__ = ("asked", "device_node", "pool", "topology", "where")

    def __init__(
        self,
        pool: Pool,
        where: str,
        device_node: int | None,
        topology: Topology | None = None,
        asked: Placement | None = None,
    ) -> None:
        self.pool = pool
        self.where = where  # "on socket 1", "on NUMA node 0", "near ens1f0 (NUMA node 1)"
        self.device_node = device_node
        self.topology = topology
        self.asked = asked

    def near_lists(self, pool: Pool) -> Pool:
        """The lists of ``pool`` on the device's node (all of them for a device of none)."""
        if self.device_node is None or self.topology is None:
            return pool
        return allocate.in_node(pool, self.topology, self.device_node)

    def choose(self, pool: Pool) -> CpuList | None:
        """The list to take among ``pool``'s (a part of ``self.pool``)."""
        if self.asked is None or self.asked.near is None or self.topology is None:
            return allocate.choose_cpu_list(pool)
        return allocate.choose_near(pool, self.topology, self.device_node)[0]

    def note(self, pool_name: str, cl: CpuList) -> str | None:
        """What to say when ``--near``'s node had no free list and ``cl`` lies elsewhere."""
        if self.asked is None or self.asked.near is None or self.topology is None:
            return None
        if self.near_lists(Pool(pool_name, False, {cl.cpus: cl})).cpu_lists:
            return None
        nodes = allocate.list_nodes(cl, self.topology)
        on = f"NUMA node {cpulist.format(nodes)}" if nodes else "no known NUMA node"
        return (
            f"kcm: warning: no free CPU list of pool {pool_name!r} {self.where}: took"
            f" {cl.cpus}, on {on}"
        )


def read(pool: Pool, asked: Placement) -> Placed:
    """The topology and the device's node from ``$KCM_SYS_FS``, and ``pool`` narrowed."""
    from kcm.host import sysfs

    root = sysfs.sys_root()
    topology = sysfs.read_topology(root)
    device_node = None if asked.near is None else sysfs.device_numa_node(root, asked.near)
    placed = narrow(pool, topology, asked, device_node)
    if asked.near is not None and asked.strict:
        placed.pool = placed.near_lists(pool)
    placed.topology = topology
    placed.asked = asked
    return placed


def narrow(pool: Pool, topology: Topology, asked: Placement, device_node: int | None) -> Placed:
    """The lists of ``pool`` that ``asked`` lets isolate take (for ``--near``: all of them; the
    choice prefers the device's node, see ``choose``)."""
    if asked.near is not None:
        near = f"near {asked.near}"
        near += f" (NUMA node {device_node})" if device_node is not None else " (no NUMA node)"
        return Placed(pool, near, device_node, topology, asked)
    narrowed = pool
    where: list[str] = []
    if asked.socket is not None:
        if asked.socket not in topology.sockets:
            known = ", ".join(map(str, topology.sockets)) or "none"
            raise UsageError(f"--socket-id={asked.socket}: this host has no such socket ({known})")
        narrowed = allocate.in_socket(narrowed, topology, asked.socket)
        where.append(f"on socket {asked.socket}")
    if asked.node is not None:
        if asked.node not in topology.numa_nodes:
            known = ", ".join(map(str, topology.numa_nodes)) or "none"
            raise UsageError(f"--numa-node={asked.node}: this host has no such node ({known})")
        narrowed = allocate.in_node(narrowed, topology, asked.node)
        where.append(f"on NUMA node {asked.node}")
    return Placed(narrowed, " and ".join(where), None, topology, asked)


def choose(placed: Placed, topology: Topology, asked: Placement) -> tuple[CpuList | None, bool]:
    """The list to take and whether it is where it was asked to be (``--near``'s node)."""
    if asked.near is None:
        return allocate.choose_cpu_list(placed.pool), True
    return allocate.choose_near(placed.pool, topology, placed.device_node)


def exhausted(conf_dir: str, pool: Pool, placed: Placed, strict: bool) -> PoolExhaustedError:
    """Exit 4 naming where: no list there at all, or none of them free."""
    if strict:
        return PoolExhaustedError(
            f"no free CPU list of pool {pool.name!r} in {conf_dir} {placed.where}, and"
            " --near-strict refuses the others"
        )
    if not placed.pool.cpu_lists:
        return PoolExhaustedError(
            f"pool {pool.name!r} of {conf_dir} has no CPU list {placed.where}"
        )
    return PoolExhaustedError(
        f"no free CPU list in exclusive pool {pool.name!r} of {conf_dir} {placed.where}: all"
        f" {len(placed.pool.cpu_lists)} there are taken"
    )


def numa_node(cl: CpuList, topology: Topology) -> str:
    """``KCM_NUMA_NODE``: the one node the list lies in, or empty when it spans nodes."""
    node = allocate.list_node(cl, topology)
    return "" if node is None else str(node)


def mems(cl: CpuList, topology: Topology) -> str:
    """The booking's ``cpuset.mems``: the nodes of the list's CPUs ("" if none is known)."""
    nodes = allocate.list_nodes(cl, topology)
    return cpulist.format(nodes) if nodes else ""
