"""kcm.host.sysfs against this machine's /sys and against fake trees of named topologies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kcm import cpulist
from kcm.errors import EnvironmentProblem, UsageError
from kcm.host import sysfs
from tests.fixtures.sysfs import (
    CPULESS_NODE_NUMA,
    DUAL_SOCKET_20_CORE_HT,
    DUAL_SOCKET_NUMA,
    FOUR_NODE_NUMA,
    FOUR_NODE_TWO_SOCKET,
    NICS_NET,
    NICS_PCI,
    SEED_16,
    FakeCpu,
    build_devices,
    build_sysfs,
    topology,
)


def test_boot_isolation_is_what_this_machine_says() -> None:
    isolated, nohz_full = sysfs.read_boot_isolation("/sys")
    assert isolated == cpulist.parse(Path("/sys/devices/system/cpu/isolated").read_text())
    nohz = Path("/sys/devices/system/cpu/nohz_full")
    text = nohz.read_text() if nohz.exists() else ""
    assert nohz_full == (frozenset() if text.strip() == "(null)" else cpulist.parse(text))


def test_missing_isolation_files_are_no_isolation(tmp_path: Path) -> None:
    root = build_sysfs(str(tmp_path), SEED_16)
    assert not os.path.exists(f"{root}/devices/system/cpu/isolated")
    assert sysfs.read_boot_isolation(root) == (frozenset(), frozenset())
    topo = sysfs.read_topology(root)
    assert (topo.isolated, topo.nohz_full, topo.isolated_at_boot) == (frozenset(),) * 3


def test_the_one_reader_tells_a_missing_file_from_an_empty_one(tmp_path: Path) -> None:
    # init treats both as no CPUs; the audit says which ("none" or "no such file").
    root = build_sysfs(str(tmp_path), SEED_16)
    assert sysfs.read_boot_cpus(root) == (None, None)
    Path(f"{root}/devices/system/cpu/isolated").write_text("\n")
    Path(f"{root}/devices/system/cpu/nohz_full").write_text("(null)\n")
    assert sysfs.read_boot_cpus(root) == (frozenset(), frozenset())
    Path(f"{root}/devices/system/cpu/isolated").write_text("6-7\n")
    assert sysfs.read_boot_cpus(root) == (frozenset({6, 7}), frozenset())
    assert sysfs.read_boot_isolation(root) == (frozenset({6, 7}), frozenset())


def test_the_topology_carries_both_sets(tmp_path: Path) -> None:
    root = build_sysfs(
        str(tmp_path),
        SEED_16,
        isolated=cpulist.parse("6-7,14-15"),
        nohz_full=cpulist.parse("4-7,12-15"),
    )
    topo = sysfs.read_topology(root)
    assert topo.isolated == cpulist.parse("6-7,14-15")
    assert topo.nohz_full == cpulist.parse("4-7,12-15")
    assert topo.isolated_at_boot == cpulist.parse("4-7,12-15")


# -- NUMA nodes and sockets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpus", "numa"),
    [
        pytest.param(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA, id="dual-socket"),
        pytest.param(FOUR_NODE_TWO_SOCKET, FOUR_NODE_NUMA, id="four-nodes"),
        pytest.param(DUAL_SOCKET_20_CORE_HT, CPULESS_NODE_NUMA, id="cpuless-node"),
    ],
)
def test_the_topology_read_is_the_topology_built(
    tmp_path: Path, cpus: list[FakeCpu], numa: dict[int, list[int]]
) -> None:
    root = build_sysfs(str(tmp_path), cpus, numa=numa)
    assert sysfs.read_topology(root) == topology(cpus, numa=numa)


def test_four_nodes_two_per_socket_from_files(tmp_path: Path) -> None:
    root = build_sysfs(str(tmp_path), FOUR_NODE_TWO_SOCKET, numa=FOUR_NODE_NUMA)
    topo = sysfs.read_topology(root)
    assert topo.numa_nodes == (0, 1, 2, 3)
    assert {(c.cpus, c.socket, c.numa_node) for c in topo.cores if c.cpus[0] in (3, 4, 11, 12)} == {
        ((3, 19), 0, 0),
        ((4, 20), 0, 1),
        ((11, 27), 1, 2),
        ((12, 28), 1, 3),
    }


def test_a_node_without_cpus_from_files(tmp_path: Path) -> None:
    root = build_sysfs(str(tmp_path), DUAL_SOCKET_20_CORE_HT, numa=CPULESS_NODE_NUMA)
    assert Path(root, "devices/system/node/node2/cpulist").read_text() == "\n"
    topo = sysfs.read_topology(root)
    assert topo.numa_nodes == (0, 1, 2)
    assert topo.node_cpus(2) == frozenset()


# -- the NUMA node of a device -------------------------------------------------------------


@pytest.fixture
def nics(tmp_path: Path) -> str:
    """The dual-socket box with a NIC on each node, one of no node, a virtio NIC and a bridge."""
    root = build_sysfs(str(tmp_path), DUAL_SOCKET_20_CORE_HT, numa=DUAL_SOCKET_NUMA)
    return build_devices(
        root,
        {**NICS_PCI, "0000:00:03.0": 1},
        {**NICS_NET, "eth0": "0000:00:03.0"},
        virtio=frozenset({"eth0"}),
    )


@pytest.mark.parametrize(
    ("device", "node"),
    [
        ("0000:3b:00.0", 0),
        ("0000:af:00.0", 1),
        ("0000:AF:00.0", 1),  # as some tools print it
        ("3b:00.0", 0),  # lspci's short form: domain 0000
        ("0000:00:1f.6", None),  # numa_node -1: the platform ties it to no node
        ("ens1f0", 0),
        ("ens2f0", 1),
        ("eno1", None),
        ("eth0", 1),  # a virtio NIC: the node of the PCI function above it
    ],
)
def test_a_device_resolves_to_its_node(nics: str, device: str, node: int | None) -> None:
    assert sysfs.device_numa_node(nics, device) == node


@pytest.mark.parametrize(
    ("device", "error", "message"),
    [
        (
            "ens9f9",
            EnvironmentProblem,
            "no device 'ens9f9' on this host: neither a PCI device in {root}/bus/pci/devices"
            " nor a network interface in {root}/class/net",
        ),
        ("0000:5e:00.0", EnvironmentProblem, "no device '0000:5e:00.0' on this host"),
        (
            "br0",
            EnvironmentProblem,
            "network interface br0 has no device ({root}/class/net/br0/device is missing: a"
            " virtual interface), so it lies on no NUMA node; name the NIC it runs over",
        ),
        ("../../etc", UsageError, "invalid device '../../etc': a device is a PCI address"),
        ("", UsageError, "invalid device ''"),
        ("eth\n0", UsageError, "invalid device 'eth\\n0'"),
    ],
)
def test_an_unknown_device_is_one_clear_error(
    nics: str, device: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        sysfs.device_numa_node(nics, device)
    assert message.format(root=nics) in str(raised.value)


def test_a_garbled_numa_node_file_is_an_error_naming_it(nics: str) -> None:
    path = Path(nics, "devices/pci0000:00/0000:3b:00.0/numa_node")
    path.write_text("zero\n")
    with pytest.raises(EnvironmentProblem, match=f"{path}: expected a NUMA node number"):
        sysfs.device_numa_node(nics, "ens1f0")


def test_this_machines_interfaces_resolve_as_sysfs_says() -> None:
    for name in os.listdir("/sys/class/net"):
        link = Path("/sys/class/net", name, "device")
        if not link.exists():
            with pytest.raises(EnvironmentProblem, match="has no device"):
                sysfs.device_numa_node("/sys", name)
            continue
        at = link.resolve()
        while not (at / "numa_node").exists():
            at = at.parent
        expected = int((at / "numa_node").read_text())
        assert sysfs.device_numa_node("/sys", name) == (None if expected == -1 else expected)
