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


def carve(topology: Topology, num_dp_cores: int, num_cp_cores: int) -> dict[str, Pool]:
    """The seed's three pools, carved from the highest physical cores downward.

    ``dataplane`` (exclusive) gets one list per core, ``controlplane`` (shared) one list of
    ``num_cp_cores`` cores, ``infra`` (shared) one list of all the rest, so CPU 0 stays in infra.
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
    split_dp = len(cores) - num_dp_cores
    split_cp = split_dp - num_cp_cores
    dp_cores = cores[split_dp:]
    cp_cores = cores[split_cp:split_dp]
    infra_cores = cores[:split_cp]

    dataplane: dict[str, CpuList] = {}
    for core in dp_cores:
        dataplane.update(_one_list([core]))
    return {
        CONTROLPLANE: Pool(CONTROLPLANE, False, _one_list(cp_cores)),
        DATAPLANE: Pool(DATAPLANE, True, dataplane),
        INFRA: Pool(INFRA, False, _one_list(infra_cores)),
    }


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
