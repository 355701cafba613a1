"""Carving pools from a topology (init) and choosing a CPU list by placement; pure functions."""

from __future__ import annotations

from kcm import cpulist
from kcm.errors import EnvironmentProblem, UsageError
from kcm.model import CpuList, Pool

# isolate's choice lives with the values (kcm.model), so that isolate's start-up need not load
# the carving below; its names stay importable from here.
from kcm.model import choose_cpu_list as choose_cpu_list
from kcm.model import cpu_order as cpu_order

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from kcm.topology import Core, Topology

DATAPLANE = "dataplane"
CONTROLPLANE = "controlplane"
INFRA = "infra"

# init --exclusive-mode: how the dataplane lists are taken from the sockets.
PACKED = "packed"  # from the top of the host, as the seed carves
SPREAD = "spread"  # dealt across the sockets from the top, so each socket gets its share
EXCLUSIVE_MODES = (PACKED, SPREAD)


class Carving:
    """What init carves: the pools, and warnings about CPUs isolated at boot it leaves in infra."""

    __slots__ = ("pools", "warnings")

    def __init__(self, pools: dict[str, Pool], warnings: list[str]) -> None:
        self.pools = pools
        self.warnings = warnings


def carve(
    topology: Topology, num_dp_cores: int, num_cp_cores: int, *, exclusive_mode: str = PACKED
) -> dict[str, Pool]:
    """The seed's three pools (see ``carving``)."""
    return carving(topology, num_dp_cores, num_cp_cores, exclusive_mode=exclusive_mode).pools


def carving(
    topology: Topology, num_dp_cores: int, num_cp_cores: int, *, exclusive_mode: str = PACKED
) -> Carving:
    """The seed's three pools, carved from the highest physical cores downward.

    ``dataplane`` (exclusive) gets one list per core, ``controlplane`` (shared) one list of
    ``num_cp_cores`` cores, ``infra`` (shared) one list of all the rest, so CPU 0 stays in infra.

    ``exclusive_mode`` chooses the dataplane cores: PACKED takes the top ones of the host (the
    seed's carving), SPREAD deals them across the sockets from the top, one core from each
    socket in turn (highest socket first), so each socket gets its share; a socket that runs
    out leaves the rest to the others, and CPU 0's core is never dealt. Either way a list is
    one core, so it never mixes sockets; controlplane then takes the top cores left over.

    With CPUs isolated at boot, as CMK did: the dataplane lists come from the isolated cores
    (a core is isolated when all its online CPUs are), the isolated cores left over go to
    controlplane before any other, and infra gets the rest; isolated CPUs left in infra are
    named in a warning. Without isolated CPUs this is exactly the seed's carving.
    """
    if num_dp_cores < 0 or num_cp_cores < 0:
        raise UsageError("--num-dp-cores and --num-cp-cores must not be negative")
    check_exclusive_mode(exclusive_mode)
    cores = list(topology.cores)
    needed = num_dp_cores + num_cp_cores + 1
    if len(cores) < needed:
        raise EnvironmentProblem(
            f"not enough physical cores: {num_dp_cores} dataplane + {num_cp_cores} controlplane"
            f" + at least 1 infra = {needed} needed, but the host has {len(cores)}"
            f" (online CPUs {cpulist.format(topology.cpus)})"
        )
    isolated = topology.isolated_at_boot
    # Without boot isolation every core qualifies, which is the seed's carving.
    candidates = [c for c in cores if isolated.issuperset(c.cpus)] if isolated else cores
    if len(candidates) < num_dp_cores:
        raise EnvironmentProblem(
            f"--num-dp-cores={num_dp_cores} needs {num_dp_cores} core(s) isolated at boot, but"
            f" the host has {len(candidates)} (isolated CPUs {cpulist.format(isolated)}; a core"
            " counts when all its CPUs are): isolate more at boot or lower --num-dp-cores"
        )
    if exclusive_mode == PACKED:
        dp_cores = candidates[len(candidates) - num_dp_cores :]
    else:
        # CPU 0's core stays with infra, as in the seed's carving, unless isolated at boot.
        first = min(cores, key=lambda c: c.cpus[0])
        dealt = candidates if isolated else [c for c in candidates if c != first]
        dp_cores = _deal(dealt, num_dp_cores)
    taken = set(dp_cores)
    # Controlplane from the top of what is left, the isolated cores first.
    qualified = set(candidates)
    rest = [c for c in cores if c not in taken and c not in qualified]
    rest += [c for c in candidates if c not in taken]
    cp_cores = rest[len(rest) - num_cp_cores :] if num_cp_cores else []
    taken.update(cp_cores)
    infra_cores = [c for c in cores if c not in taken]

    position = {core: i for i, core in enumerate(cores)}
    dataplane: dict[str, CpuList] = {}
    for core in sorted(dp_cores, key=position.__getitem__):
        dataplane.update(_one_list([core]))
    pools = {
        CONTROLPLANE: Pool(
            CONTROLPLANE, False, _one_list(sorted(cp_cores, key=position.__getitem__))
        ),
        DATAPLANE: Pool(DATAPLANE, True, dataplane),
        INFRA: Pool(INFRA, False, _one_list(infra_cores)),
    }
    warnings = []
    stranded = isolated & {cpu for core in infra_cores for cpu in core.cpus}
    if stranded:
        warnings.append(
            f"CPUs {cpulist.format(stranded)} are isolated at boot but end up in infra, the"
            " housekeeping pool; raise --num-dp-cores or --num-cp-cores to use them (whole"
            " cores only), or isolate fewer CPUs at boot"
        )
    return Carving(pools, warnings)


def check_exclusive_mode(mode: str) -> None:
    if mode not in EXCLUSIVE_MODES:
        raise UsageError(f"--exclusive-mode={mode!r} is neither packed nor spread")


def _deal(cores: list[Core], count: int) -> list[Core]:
    """``count`` of ``cores``, one from each socket in turn, each socket's from its top."""
    by_socket: dict[int, list[Core]] = {}
    for core in cores:
        by_socket.setdefault(core.socket, []).append(core)
    stacks = [by_socket[s] for s in sorted(by_socket, reverse=True)]  # top at each list's end
    dealt: list[Core] = []
    while len(dealt) < count and any(stacks):
        for stack in stacks:
            if stack and len(dealt) < count:
                dealt.append(stack.pop())
    return dealt


def _one_list(cores: list[Core]) -> dict[str, CpuList]:
    """A single CPU list holding every hyperthread of ``cores`` (none for no cores)."""
    if not cores:
        return {}
    name = cpulist.format(cpu for core in cores for cpu in core.cpus)
    return {name: CpuList(name)}


# -- placement: lists by socket and NUMA node (isolate --socket-id, --numa-node, --near) ------


def lists_within(pool: Pool, cpus: frozenset[int]) -> Pool:
    """``pool`` with only the lists whose CPUs all lie in ``cpus`` (the same CpuList values)."""
    kept = {name: cl for name, cl in pool.cpu_lists.items() if cpulist.parse(cl.cpus) <= cpus}
    return Pool(pool.name, pool.exclusive, kept)


def in_socket(pool: Pool, topology: Topology, socket: int) -> Pool:
    """The lists of ``pool`` whose CPUs all lie in ``socket`` (``--socket-id``)."""
    return lists_within(pool, topology.socket_cpus(socket))


def in_node(pool: Pool, topology: Topology, node: int) -> Pool:
    """The lists of ``pool`` whose CPUs all lie in NUMA ``node`` (``--numa-node``); none for a
    node without CPUs."""
    return lists_within(pool, topology.node_cpus(node))


def list_nodes(cpu_list: CpuList, topology: Topology) -> frozenset[int]:
    """The NUMA nodes of a list's CPUs (a booking's ``cpuset.mems``); CPUs of no known node add
    none."""
    nodes = (topology.node_of(cpu) for cpu in cpulist.parse(cpu_list.cpus))
    return frozenset(node for node in nodes if node is not None)


def list_node(cpu_list: CpuList, topology: Topology) -> int | None:
    """The one NUMA node a list lies in (``KCM_NUMA_NODE``), or None when it spans nodes or a
    CPU's node is unknown."""
    cpus = cpulist.parse(cpu_list.cpus)
    nodes = list_nodes(cpu_list, topology)
    if len(nodes) != 1:
        return None
    (node,) = nodes
    return node if cpus <= topology.node_cpus(node) else None


def choose_near(pool: Pool, topology: Topology, node: int | None) -> tuple[CpuList | None, bool]:
    """The list ``isolate --near`` takes, and whether it lies on ``node``, the device's node.

    The usual choice (``choose_cpu_list``) among the lists on ``node`` first; when none of them
    qualifies, among the others, and False says the choice is not near (the caller says so, or
    refuses with ``--near-strict``). A device of no node (None) makes every list near.
    """
    if node is None:
        return choose_cpu_list(pool), True
    near = choose_cpu_list(in_node(pool, topology, node))
    if near is not None:
        return near, True
    node_cpus = topology.node_cpus(node)
    others = {n: cl for n, cl in pool.cpu_lists.items() if not cpulist.parse(cl.cpus) <= node_cpus}
    return choose_cpu_list(Pool(pool.name, pool.exclusive, others)), False
