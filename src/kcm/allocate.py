"""Carving pools from a topology (init) and choosing a CPU list (isolate); pure functions."""

from __future__ import annotations

from kcm import cpulist
from kcm.errors import EnvironmentProblem, UsageError
from kcm.model import CpuList, Pool

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from kcm.topology import Core, Topology

DATAPLANE = "dataplane"
CONTROLPLANE = "controlplane"
INFRA = "infra"


class Carving:
    """What init carves: the pools, and warnings about CPUs isolated at boot it leaves in infra."""

    __slots__ = ("pools", "warnings")

    def __init__(self, pools: dict[str, Pool], warnings: list[str]) -> None:
        self.pools = pools
        self.warnings = warnings


def carve(topology: Topology, num_dp_cores: int, num_cp_cores: int) -> dict[str, Pool]:
    """The seed's three pools (see ``carving``)."""
    return carving(topology, num_dp_cores, num_cp_cores).pools


def carving(topology: Topology, num_dp_cores: int, num_cp_cores: int) -> Carving:
    """The seed's three pools, carved from the highest physical cores downward.

    ``dataplane`` (exclusive) gets one list per core, ``controlplane`` (shared) one list of
    ``num_cp_cores`` cores, ``infra`` (shared) one list of all the rest, so CPU 0 stays in infra.

    With CPUs isolated at boot, as CMK did: the dataplane lists come from the isolated cores
    (a core is isolated when all its online CPUs are), the isolated cores left over go to
    controlplane before any other, and infra gets the rest; isolated CPUs left in infra are
    named in a warning. Without isolated CPUs this is exactly the seed's carving.
    """
    if num_dp_cores < 0 or num_cp_cores < 0:
        raise UsageError("--num-dp-cores and --num-cp-cores must not be negative")
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
    dp_cores = candidates[len(candidates) - num_dp_cores :]
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


def _one_list(cores: list[Core]) -> dict[str, CpuList]:
    """A single CPU list holding every hyperthread of ``cores`` (none for no cores)."""
    if not cores:
        return {}
    name = cpulist.format(cpu for core in cores for cpu in core.cpus)
    return {name: CpuList(name)}


def cpu_order(name: str) -> tuple[int, ...]:
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
