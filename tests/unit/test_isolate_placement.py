"""isolate's placement options over named topologies: which list, where, and what it is told."""

from __future__ import annotations

import pytest

from kcm import placement
from kcm.errors import UsageError
from kcm.model import CpuList, Pool
from kcm.placement import Placement
from kcm.topology import Topology
from tests.fixtures.sysfs import (
    CPULESS_NODE_NUMA,
    DUAL_SOCKET_20_CORE_HT,
    DUAL_SOCKET_NUMA,
    FOUR_NODE_NUMA,
    FOUR_NODE_TWO_SOCKET,
    topology,
)

DUAL = topology(DUAL_SOCKET_20_CORE_HT, numa=DUAL_SOCKET_NUMA)
FOUR_NODE = topology(FOUR_NODE_TWO_SOCKET, numa=FOUR_NODE_NUMA)
CPULESS = topology(DUAL_SOCKET_20_CORE_HT, numa=CPULESS_NODE_NUMA)


def exclusive(*names: str, taken: tuple[str, ...] = ()) -> Pool:
    return Pool("dataplane", True, {n: CpuList(n, [1000] if n in taken else []) for n in names})


# One list per core at the top of each node of the box, as init carves them.
DUAL_POOL = ("8,28", "9,29", "18,38", "19,39")
FOUR_POOL = ("3,19", "7,23", "11,27", "15,31")  # one on each node


def take(topo: Topology, pool: Pool, asked: Placement, device_node: int | None = None):  # type: ignore[no-untyped-def]
    placed = placement.narrow(pool, topo, asked, device_node)
    chosen, near = placement.choose(placed, topo, asked)
    return (None if chosen is None else chosen.cpus), near, placed.where


@pytest.mark.parametrize(
    ("topo", "pool", "asked", "device_node", "expected"),
    [
        pytest.param(DUAL, exclusive(*DUAL_POOL), Placement(socket=1), None,
                     ("18,38", True, "on socket 1"), id="dual-socket-1"),
        pytest.param(DUAL, exclusive(*DUAL_POOL, taken=("18,38",)), Placement(socket=1), None,
                     ("19,39", True, "on socket 1"), id="dual-socket-1-next-free"),
        pytest.param(DUAL, exclusive(*DUAL_POOL, taken=("18,38", "19,39")), Placement(socket=1),
                     None, (None, True, "on socket 1"), id="dual-socket-1-full"),
        pytest.param(DUAL, exclusive(*DUAL_POOL), Placement(node=0), None,
                     ("8,28", True, "on NUMA node 0"), id="dual-node-0"),
        pytest.param(FOUR_NODE, exclusive(*FOUR_POOL), Placement(node=3), None,
                     ("15,31", True, "on NUMA node 3"), id="four-node-3"),
        pytest.param(FOUR_NODE, exclusive(*FOUR_POOL), Placement(socket=1, node=2), None,
                     ("11,27", True, "on socket 1 and on NUMA node 2"), id="four-socket-and-node"),
        pytest.param(FOUR_NODE, exclusive(*FOUR_POOL), Placement(socket=0, node=2), None,
                     (None, True, "on socket 0 and on NUMA node 2"), id="four-node-off-socket"),
        pytest.param(CPULESS, exclusive(*DUAL_POOL), Placement(node=2), None,
                     (None, True, "on NUMA node 2"), id="a-node-without-cpus-has-no-list"),
        pytest.param(DUAL, exclusive(*DUAL_POOL), Placement(near="0000:af:00.0"), 1,
                     ("18,38", True, "near 0000:af:00.0 (NUMA node 1)"), id="near-a-nic-on-node-1"),
        pytest.param(DUAL, exclusive(*DUAL_POOL, taken=("18,38", "19,39")),
                     Placement(near="ens1f1"), 1,
                     ("8,28", False, "near ens1f1 (NUMA node 1)"),
                     id="near-a-full-node-takes-another"),
        pytest.param(DUAL, exclusive(*DUAL_POOL), Placement(near="0000:00:1f.6"), None,
                     ("8,28", True, "near 0000:00:1f.6 (no NUMA node)"),
                     id="a-nic-of-no-node-is-near-any"),
    ],
)  # fmt: skip
def test_the_list_isolate_takes(
    topo: Topology,
    pool: Pool,
    asked: Placement,
    device_node: int | None,
    expected: tuple[str | None, bool, str],
) -> None:
    assert take(topo, pool, asked, device_node) == expected


@pytest.mark.parametrize(
    ("topo", "cpus", "node", "mems"),
    [
        (DUAL, "18,38", "1", "1"),
        (FOUR_NODE, "3,19", "0", "0"),
        (FOUR_NODE, "3,7", "", "0-1"),  # a list spanning nodes: no node, their union
        (DUAL, "9,10", "", "0-1"),
        (DUAL, "99", "", ""),  # a CPU of no known node
    ],
)
def test_what_the_command_and_its_booking_are_told(
    topo: Topology, cpus: str, node: str, mems: str
) -> None:
    assert placement.numa_node(CpuList(cpus), topo) == node
    assert placement.mems(CpuList(cpus), topo) == mems


def test_none_free_names_where() -> None:
    pool = exclusive(*DUAL_POOL, taken=DUAL_POOL)
    placed = placement.narrow(pool, DUAL, Placement(socket=1), None)
    error = placement.exhausted("/etc/kcm", pool, placed, strict=False)
    assert error.exit_code == 4
    assert error.message == (
        "no free CPU list in exclusive pool 'dataplane' of /etc/kcm on socket 1: all 2 there"
        " are taken"
    )
    near = placement.narrow(pool, DUAL, Placement(near="ens1f1", strict=True), 1)
    assert placement.exhausted("/etc/kcm", pool, near, strict=True).message == (
        "no free CPU list of pool 'dataplane' in /etc/kcm near ens1f1 (NUMA node 1), and"
        " --near-strict refuses the others"
    )
    empty = placement.narrow(pool, CPULESS, Placement(node=2), None)
    assert placement.exhausted("/etc/kcm", pool, empty, strict=False).message == (
        "pool 'dataplane' of /etc/kcm has no CPU list on NUMA node 2"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x", None, None, False), "--socket-id='x' is not a non-negative whole number"),
        ((None, "-1", None, False), "--numa-node='-1' is not a non-negative whole number"),
        ((None, None, None, True), "--near-strict goes with --near=<device>"),
        (("0", None, "ens1f0", False), "--near chooses the node itself"),
    ],
)
def test_bad_placement_options_are_usage_errors(
    args: tuple[str | None, str | None, str | None, bool], message: str
) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        placement.placement(*args)


def test_no_option_is_no_placement_and_a_socket_or_node_the_host_lacks_is_refused() -> None:
    assert placement.placement(None, None, None, False) is None
    with pytest.raises(UsageError, match="no such socket"):
        placement.narrow(exclusive(*DUAL_POOL), DUAL, Placement(socket=5), None)
    with pytest.raises(UsageError, match=r"no such node \(0, 1, 2, 3\)"):
        placement.narrow(exclusive(*FOUR_POOL), FOUR_NODE, Placement(node=4), None)
