"""Spread carving and placement by socket and NUMA node: pure functions over named topologies."""

from __future__ import annotations

import pytest

from kcm import cpulist
from kcm.allocate import (
    PACKED,
    SPREAD,
    carve,
    carving,
    choose_near,
    in_node,
    in_socket,
    list_node,
    list_nodes,
)
from kcm.errors import UsageError
from kcm.model import CpuList, Pool
from kcm.topology import Topology
from tests.fixtures.sysfs import (
    CPULESS_NODE_NUMA,
    DUAL_SOCKET_20_CORE_HT,
    DUAL_SOCKET_NUMA,
    FOUR_NODE_NUMA,
    FOUR_NODE_TWO_SOCKET,
    NO_HT_4,
    NON_CONTIGUOUS,
    SEED_16,
    FakeCpu,
    topology,
)

DUAL = topology(DUAL_SOCKET_20_CORE_HT, numa=DUAL_SOCKET_NUMA)
FOUR_NODE = topology(FOUR_NODE_TWO_SOCKET, numa=FOUR_NODE_NUMA)
CPULESS = topology(DUAL_SOCKET_20_CORE_HT, numa=CPULESS_NODE_NUMA)
# One core on socket 0 (CPU 0), three on socket 1.
LOPSIDED = [
    FakeCpu(0, 0, 0, (0,)),
    FakeCpu(1, 1, 0, (1,)),
    FakeCpu(2, 1, 1, (2,)),
    FakeCpu(3, 1, 2, (3,)),
]


def lists(pools: dict[str, Pool]) -> dict[str, list[str]]:
    return {
        name: sorted(pool.cpu_lists, key=lambda n: min(cpulist.parse(n)))
        for name, pool in pools.items()
    }


# -- the Topology value --------------------------------------------------------------------


def test_each_core_knows_its_socket_and_node() -> None:
    by_cpu = {core.cpus[0]: (core.socket, core.numa_node) for core in FOUR_NODE.cores}
    assert by_cpu[0] == (0, 0) and by_cpu[4] == (0, 1)
    assert by_cpu[8] == (1, 2) and by_cpu[12] == (1, 3)
    assert FOUR_NODE.numa_nodes == (0, 1, 2, 3)
    assert FOUR_NODE.socket_cpus(1) == cpulist.parse("8-15,24-31")
    assert FOUR_NODE.node_cpus(3) == cpulist.parse("12-15,28-31")
    assert (FOUR_NODE.node_of(29), FOUR_NODE.node_of(99)) == (3, None)


def test_a_node_without_cpus_is_still_a_node() -> None:
    assert CPULESS.numa_nodes == (0, 1, 2)
    assert CPULESS.node_cpus(2) == frozenset()


# -- init --exclusive-mode=spread ----------------------------------------------------------


@pytest.mark.parametrize(
    ("topo", "dp", "cp", "expected"),
    [
        pytest.param(
            topology(SEED_16),
            4,
            1,
            {
                "controlplane": ["3,11"],
                "dataplane": ["4,12", "5,13", "6,14", "7,15"],
                "infra": ["0-2,8-10"],
            },
            id="one-socket-seed-box-is-as-packed",
        ),
        pytest.param(
            DUAL,
            4,
            1,
            {
                "controlplane": ["17,37"],
                "dataplane": ["8,28", "9,29", "18,38", "19,39"],
                "infra": ["0-7,10-16,20-27,30-36"],
            },
            id="dual-socket-ht-two-each",
        ),
        pytest.param(
            DUAL,
            3,
            2,
            {
                "controlplane": ["16-17,36-37"],
                "dataplane": ["9,29", "18,38", "19,39"],  # the top socket first
                "infra": ["0-8,10-15,20-28,30-35"],
            },
            id="dual-socket-ht-odd-count",
        ),
        pytest.param(
            FOUR_NODE,
            4,
            1,
            {
                "controlplane": ["13,29"],
                "dataplane": ["6,22", "7,23", "14,30", "15,31"],
                "infra": ["0-5,8-12,16-21,24-28"],
            },
            id="four-nodes-two-sockets",
        ),
        pytest.param(
            topology(LOPSIDED),
            2,
            0,
            {"controlplane": [], "dataplane": ["2", "3"], "infra": ["0-1"]},
            id="a-socket-with-only-cpu-0-deals-nothing",
        ),
        pytest.param(
            topology(DUAL_SOCKET_20_CORE_HT, isolated=cpulist.parse("6-9,18-19,26-29,38-39")),
            4,
            1,
            {
                "controlplane": ["7,27"],  # an isolated core left over
                "dataplane": ["8,28", "9,29", "18,38", "19,39"],
                "infra": ["0-6,10-17,20-26,30-37"],
            },
            id="isolated-cores-dealt-across-sockets",
        ),
        pytest.param(
            topology(DUAL_SOCKET_20_CORE_HT, isolated=cpulist.parse("6-9,26-29")),
            4,
            1,
            {
                "controlplane": ["19,39"],
                "dataplane": ["6,26", "7,27", "8,28", "9,29"],
                "infra": ["0-5,10-18,20-25,30-38"],
            },
            id="a-socket-without-isolated-cores-leaves-its-share",
        ),
    ],
)
def test_spread_deals_dataplane_lists_across_sockets(
    topo: Topology, dp: int, cp: int, expected: dict[str, list[str]]
) -> None:
    pools = carve(topo, dp, cp, exclusive_mode=SPREAD)
    assert lists(pools) == expected
    for name in pools["dataplane"].cpu_lists:  # a list never mixes sockets
        assert len({c.socket for c in topo.cores if set(c.cpus) <= cpulist.parse(name)}) == 1


@pytest.mark.parametrize(
    ("topo", "dp"), [(DUAL, 1), (DUAL, 4), (DUAL, 7), (DUAL, 18), (FOUR_NODE, 5), (FOUR_NODE, 14)]
)
def test_each_socket_gets_its_share(topo: Topology, dp: int) -> None:
    pools = carve(topo, dp, 0, exclusive_mode=SPREAD)
    per_socket = {s: len(in_socket(pools["dataplane"], topo, s).cpu_lists) for s in topo.sockets}
    assert sum(per_socket.values()) == dp
    assert max(per_socket.values()) - min(per_socket.values()) <= 1
    assert per_socket[max(topo.sockets)] >= per_socket[min(topo.sockets)]  # from the top
    assert 0 in cpulist.parse(next(iter(pools["infra"].cpu_lists)))


def test_the_isolated_cores_left_in_infra_are_named_in_spread_too() -> None:
    topo = topology(DUAL_SOCKET_20_CORE_HT, isolated=cpulist.parse("6-9,18-19,26-29,38-39"))
    assert carving(topo, 4, 1, exclusive_mode=SPREAD).warnings == [
        "CPUs 6,26 are isolated at boot but end up in infra, the housekeeping pool; raise"
        " --num-dp-cores or --num-cp-cores to use them (whole cores only), or isolate fewer"
        " CPUs at boot"
    ]


@pytest.mark.parametrize(
    "cpus", [SEED_16, DUAL_SOCKET_20_CORE_HT, FOUR_NODE_TWO_SOCKET, NO_HT_4, NON_CONTIGUOUS]
)
def test_packed_is_the_default_carving(cpus: list[FakeCpu]) -> None:
    topo = topology(cpus)
    assert carve(topo, 2, 1, exclusive_mode=PACKED) == carve(topo, 2, 1)


def test_an_unknown_mode_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--exclusive-mode='tight' is neither packed nor spread"):
        carve(DUAL, 2, 1, exclusive_mode="tight")


# -- choosing lists by socket and node -----------------------------------------------------


def dataplane(*held: str, topo: Topology = DUAL) -> Pool:
    """The spread dataplane of ``topo`` with ``held`` lists taken by a task each."""
    pool = carve(topo, 4, 1, exclusive_mode=SPREAD)["dataplane"]
    for name in held:
        pool.cpu_lists[name].tasks.append(4242)
    return pool


@pytest.mark.parametrize(
    ("topo", "socket", "expected"),
    [
        (DUAL, 0, ["8,28", "9,29"]),
        (DUAL, 1, ["18,38", "19,39"]),
        (DUAL, 2, []),
        (FOUR_NODE, 0, ["6,22", "7,23"]),
        (FOUR_NODE, 1, ["14,30", "15,31"]),
    ],
)
def test_in_socket(topo: Topology, socket: int, expected: list[str]) -> None:
    assert sorted(in_socket(dataplane(topo=topo), topo, socket).cpu_lists) == expected


@pytest.mark.parametrize(
    ("topo", "node", "expected"),
    [
        (DUAL, 0, ["8,28", "9,29"]),
        (DUAL, 1, ["18,38", "19,39"]),
        (FOUR_NODE, 0, []),  # spread took the top of each socket: nodes 1 and 3
        (FOUR_NODE, 1, ["6,22", "7,23"]),
        (FOUR_NODE, 3, ["14,30", "15,31"]),
        (CPULESS, 2, []),  # a node of memory alone holds no list
    ],
)
def test_in_node(topo: Topology, node: int, expected: list[str]) -> None:
    assert sorted(in_node(dataplane(topo=topo), topo, node).cpu_lists) == expected


def test_a_list_spanning_nodes_is_in_none_of_them() -> None:
    infra = carve(DUAL, 4, 1)["infra"]
    (spanning,) = infra.cpu_lists.values()
    assert list_nodes(spanning, DUAL) == {0, 1}
    assert list_node(spanning, DUAL) is None
    assert in_node(infra, DUAL, 0).cpu_lists == {}
    assert in_socket(infra, DUAL, 1).cpu_lists == {}
    assert list_node(CpuList("18,38"), DUAL) == 1
    assert list_nodes(CpuList("18,38"), DUAL) == {1}
    assert list_node(CpuList("3"), topology(NO_HT_4)) is None  # no node known


@pytest.mark.parametrize(
    ("held", "node", "expected", "near"),
    [
        pytest.param([], 1, "18,38", True, id="lowest-free-on-the-node"),
        pytest.param(["18,38"], 1, "19,39", True, id="next-free-on-the-node"),
        pytest.param(["18,38", "19,39"], 1, "8,28", False, id="node-full-takes-another"),
        pytest.param([], None, "8,28", True, id="device-of-no-node-is-near-anywhere"),
        pytest.param(["8,28", "9,29", "18,38", "19,39"], 0, None, False, id="all-taken"),
    ],
)
def test_choose_near(held: list[str], node: int | None, expected: str | None, near: bool) -> None:
    chosen, on_node = choose_near(dataplane(*held), DUAL, node)
    assert (chosen.cpus if chosen else None, on_node) == (expected, near)


def test_choose_near_a_node_without_cpus_takes_another() -> None:
    chosen, on_node = choose_near(dataplane(topo=CPULESS), CPULESS, 2)
    assert (chosen.cpus if chosen else None, on_node) == ("8,28", False)


def test_choose_near_in_a_shared_pool_takes_the_least_loaded_on_the_node() -> None:
    pool = Pool(
        "controlplane",
        False,
        {n: CpuList(n, t) for n, t in [("8,28", []), ("18,38", [1, 2]), ("19,39", [3])]},
    )
    chosen, on_node = choose_near(pool, DUAL, 1)
    assert (chosen.cpus if chosen else None, on_node) == ("19,39", True)
