"""NUMA placement in the plan: each window's node, --socket-mem by node, 'auto' secondaries near
a NIC, the warning for a mask that spans nodes, and the hugepage check of each node.

Pure tables over the named topologies of tests/fixtures/sysfs.py first, then spp-wakeup itself
over the same topologies written as real sysfs trees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kcm import allocate, cpulist
from kcm.isolate import shell_argv
from spp_runner import config, plan
from spp_runner.errors import ConfigError
from spp_runner.host import Device, Host, KcmCpuList, KcmPool, NodeHugepages, hugepage_size_kb
from spp_runner.launch import hugepage_problems
from spp_runner.plan import NodeMemory, Options
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
    build_hugepages,
    build_sysfs,
    topology,
)

from .conftest import FIXTURES, SPP_WAKEUP, VENV_BIN, run_cli, tmux

CONF_PATH = "/home/u/spp-runner/conf.yml"
NFV = "/home/u/spp/src/nfv/x86_64-native-linuxapp-gcc/spp_nfv"
SEED_5 = Options(nof_sec=5, nof_vhost=0)
# A NIC on each node of the dual-socket box, one of no node, and a bridge (no device at all).
DEVICES = (Device("ens1f0", 0), Device("ens2f0", 1), Device("eno1", None))


def numa_host(
    cpus: list[FakeCpu],
    numa: dict[int, list[int]] | None,
    *,
    pools: tuple[KcmPool, ...] | None = None,
    devices: tuple[Device, ...] = DEVICES,
) -> Host:
    """The Host that read_host gives for ``build_sysfs(cpus, numa=numa)`` (and devices)."""
    topo = topology(cpus, numa=numa)
    cpu_nodes = {cpu: node for node, node_cpus in (numa or {}).items() for cpu in node_cpus}
    return Host(topo.cpus, kcm_pools=pools, cpu_nodes=cpu_nodes, devices=devices)


def seed() -> config.Config:
    return config.read(str(FIXTURES / "seed_conf.yml"))


def conf(data: dict[str, object]) -> config.Config:
    return config.parse(data, CONF_PATH)


def socket_mem(argv: tuple[str, ...]) -> str | None:
    """The --socket-mem value among a DPDK command's EAL options (None: not given)."""
    eal_part = argv[: argv.index("--")]
    if "--socket-mem" not in eal_part:
        return None
    return eal_part[eal_part.index("--socket-mem") + 1]


def kcm_pools(
    cpus: list[FakeCpu], numa: dict[int, list[int]], dp_cores: int
) -> tuple[KcmPool, ...]:
    """The pools the real ``kcm init`` carves on this topology (packed), none booked."""
    pools = allocate.carve(topology(cpus, numa=numa), dp_cores, 1)
    return tuple(
        KcmPool(
            pool.name,
            pool.exclusive,
            tuple(KcmCpuList(cpulist.parse(cl.cpus), ()) for cl in pool.cpu_lists.values()),
        )
        for pool in pools.values()
    )


# ----------------------------------------------------------------------------- --socket-mem

ONE_NODE_16 = {0: list(range(16))}

# The seed's conf.yml with -ns 5: the primary on CPUs 0-1, secondaries on 2-3 ... 10-11.
SOCKET_MEM_TABLE = [
    pytest.param(
        SEED_16,
        None,
        {"primary": "1024", **{f"sec{i}": None for i in range(1, 6)}},
        (),
        id="seed-16-no-numa-info",
    ),
    pytest.param(
        SEED_16,
        ONE_NODE_16,
        {"primary": "1024", **{f"sec{i}": None for i in range(1, 6)}},
        (NodeMemory(0, 1024),),
        id="seed-16-one-node",
    ),
    pytest.param(
        DUAL_SOCKET_20_CORE_HT,
        DUAL_SOCKET_NUMA,
        {"primary": "1024", **{f"sec{i}": "1024" for i in range(1, 5)}, "sec5": "0,1024"},
        (NodeMemory(0, 1024), NodeMemory(1, 1024)),
        id="dual-socket-20-core-ht",
    ),
    pytest.param(
        DUAL_SOCKET_20_CORE_HT,
        CPULESS_NODE_NUMA,
        {"primary": "1024", **{f"sec{i}": "1024" for i in range(1, 5)}, "sec5": "0,1024"},
        (NodeMemory(0, 1024), NodeMemory(1, 1024)),
        id="dual-socket-and-a-node-without-cpus",
    ),
    pytest.param(
        FOUR_NODE_TWO_SOCKET,
        FOUR_NODE_NUMA,
        {
            "primary": "1024",
            "sec1": "1024",
            "sec2": "0,1024",
            "sec3": "0,1024",
            "sec4": "0,0,1024",
            "sec5": "0,0,1024",
        },
        (NodeMemory(0, 1024), NodeMemory(1, 1024), NodeMemory(2, 1024)),
        id="four-nodes-two-sockets",
    ),
]


@pytest.mark.parametrize(("cpus", "numa", "expected", "hugepages"), SOCKET_MEM_TABLE)
def test_socket_mem_follows_the_nodes_of_each_process(
    cpus: list[FakeCpu],
    numa: dict[int, list[int]] | None,
    expected: dict[str, str | None],
    hugepages: tuple[NodeMemory, ...],
) -> None:
    p = plan.build(seed(), SEED_5, numa_host(cpus, numa))
    assert {w.name: socket_mem(w.argv) for w in p.windows if w.name in expected} == expected
    assert p.hugepages == hugepages
    assert p.warnings == ()


def test_each_window_knows_its_nodes_on_the_four_node_box() -> None:
    p = plan.build(seed(), SEED_5, numa_host(FOUR_NODE_TWO_SOCKET, FOUR_NODE_NUMA))
    assert p.numa_nodes == (0, 1, 2, 3) and p.multi_node
    assert {w.name: w.nodes for w in p.windows} == {
        "controller": (),
        "primary": (0,),
        "sec1": (0,),
        "sec2": (1,),
        "sec3": (1,),
        "sec4": (2,),
        "sec5": (2,),
        "work1": (),
    }


def test_one_node_host_plans_exactly_as_without_numa_info() -> None:
    options = Options(nof_sec=5, nof_vhost=3)
    with_node = plan.build(seed(), options, numa_host(SEED_16, ONE_NODE_16))
    without = plan.build(seed(), options, numa_host(SEED_16, None))
    assert [w.argv for w in with_node.windows] == [w.argv for w in without.windows]
    assert not with_node.multi_node


def test_the_amount_per_node_comes_from_eal_socket_mem() -> None:
    data: dict[str, object] = {
        "primary": {"coremask": "0xC00"},  # CPUs 10-11: node 1
        "secondaries": [{"id": 1, "coremask": "0x3000000000"}],  # CPUs 36-37: node 1
        "eal": {"socket_mem": 256},
    }
    p = plan.build(
        conf(data),
        Options(nof_sec=1, nof_vhost=0),
        numa_host(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA),
    )
    assert socket_mem(p.window("primary").argv) == "0,256"
    assert socket_mem(p.window("sec1").argv) == "0,256"
    assert p.hugepages == (NodeMemory(1, 256),)


# ----------------------------------------------------------------------------- spanning masks

SPANNING = [
    pytest.param(
        {"primary": {"coremask": "0xC03"}},
        DUAL_SOCKET_20_CORE_HT,
        DUAL_SOCKET_NUMA,
        "primary",
        "1024,1024",
        [
            "primary.coremask: 0xC03 spans NUMA nodes 0 (CPUs 0-1) and 1 (CPUs 10-11); its "
            "memory and packets cross between the nodes, so choose CPUs of one node"
        ],
        id="primary-over-two-sockets",
    ),
    pytest.param(
        {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": "0x3C"}]},
        FOUR_NODE_TWO_SOCKET,
        FOUR_NODE_NUMA,
        "sec1",
        "1024,1024",
        [
            "secondaries[0].coremask: 0x3C spans NUMA nodes 0 (CPUs 2-3) and 1 (CPUs 4-5); its "
            "memory and packets cross between the nodes, so choose CPUs of one node"
        ],
        id="secondary-over-two-nodes-of-one-socket",
    ),
    pytest.param(
        {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": 0x1FF0}]},
        FOUR_NODE_TWO_SOCKET,
        FOUR_NODE_NUMA,
        "sec1",
        "0,1024,1024,1024",
        [
            "secondaries[0].coremask: 0x1ff0 spans NUMA nodes 1 (CPUs 4-7), 2 (CPUs 8-11) and 3 "
            "(CPUs 12); its memory and packets cross between the nodes, so choose CPUs of one node"
        ],
        id="secondary-over-three-nodes",
    ),
]


@pytest.mark.parametrize(("data", "cpus", "numa", "window", "memory", "warnings"), SPANNING)
def test_a_mask_that_spans_nodes_is_a_warning_naming_them(
    data: dict[str, object],
    cpus: list[FakeCpu],
    numa: dict[int, list[int]],
    window: str,
    memory: str,
    warnings: list[str],
) -> None:
    options = Options(nof_sec=len(data.get("secondaries", [])), nof_vhost=0)  # type: ignore[arg-type]
    p = plan.build(conf(data), options, numa_host(cpus, numa))
    assert list(p.warnings) == warnings
    assert socket_mem(p.window(window).argv) == memory  # memory on each of its nodes


def test_a_mask_within_one_node_is_no_warning() -> None:
    data: dict[str, object] = {
        "primary": {"coremask": 3},
        "secondaries": [{"id": 1, "coremask": 0x300003 << 2}],
    }
    p = plan.build(
        conf(data),
        Options(nof_sec=1, nof_vhost=0),
        numa_host(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA),
    )
    assert p.window("sec1").cores == frozenset({2, 3, 22, 23})  # a core and its siblings
    assert p.warnings == ()


# ----------------------------------------------------------------------------- a listed socket_mem


def test_a_listed_socket_mem_is_passed_as_written_and_each_entry_checked() -> None:
    p = plan.build(
        config.parse({**seed_data(), "eal": {"socket_mem": "512,256"}}, CONF_PATH),
        SEED_5,
        numa_host(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA),
    )
    assert {socket_mem(w.argv) for w in p.windows if w.cores} == {"512,256"}
    assert p.hugepages == (NodeMemory(0, 512), NodeMemory(1, 256))
    assert p.warnings == ()


def test_a_listed_socket_mem_that_leaves_a_process_node_out_is_a_warning() -> None:
    p = plan.build(
        config.parse({**seed_data(), "eal": {"socket_mem": "1024,0"}}, CONF_PATH),
        SEED_5,
        numa_host(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA),
    )
    assert p.warnings == (
        "eal.socket_mem: '1024,0' gives node 1 no memory, but secondaries[4].coremask has CPUs "
        "10-11 there; give node 1 memory, or write one number to give each process that much on "
        "its own nodes",
    )
    assert p.hugepages == (NodeMemory(0, 1024),)


def seed_data() -> dict[str, object]:
    return {
        "primary": {"coremask": 0x03},
        "secondaries": [{"id": i, "coremask": 0x3 << (2 * i)} for i in range(1, 6)],
    }


# ----------------------------------------------------------------------------- auto near a NIC

KCM = {"conf_dir": "/etc/kcm"}
# kcm init's default carving on the dual-socket box: 4 dataplane lists, all on socket 1's top
# cores (CPUs 16,36 17,37 18,38 19,39), so node 1.
DUAL_POOLS = kcm_pools(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA, 4)
NEAR_DATA: dict[str, object] = {
    "primary": {"coremask": 3},
    "secondaries": [
        {"id": 1, "coremask": "auto", "near": "ens2f0"},
        {"id": 2, "coremask": "auto", "near": "ens1f0"},
        {"id": 3, "coremask": "auto", "near": "eno1"},
        {"id": 4, "coremask": "auto"},
    ],
    "kcm": KCM,
}


def near_plan(
    cpus: list[FakeCpu] = DUAL_SOCKET_20_CORE_HT,
    numa: dict[int, list[int]] | None = DUAL_SOCKET_NUMA,
    pools: tuple[KcmPool, ...] = DUAL_POOLS,
) -> plan.Plan:
    return plan.build(
        conf(NEAR_DATA), Options(nof_sec=4, nof_vhost=0), numa_host(cpus, numa, pools=pools)
    )


def test_auto_near_a_nic_runs_kcm_isolate_near_it_and_builds_socket_mem_from_its_node() -> None:
    sec = near_plan().window("sec1")
    assert sec.argv == (
        "env",
        "KCM_PROC_FS=/proc",
        "kcm",
        "isolate",
        "--conf-dir=/etc/kcm",
        "--pool=dataplane",
        "--near=ens2f0",
        'mem=; node=${KCM_NUMA_NODE:-}; case $node in ""|*[!0-9]*|????*) ;; *) mem=1024; '
        'while [ "$node" -gt 0 ]; do mem=0,$mem; node=$((node - 1)); done;; esac; '
        f'exec {NFV} -l "$KCM_CPUS_ASSIGNED" ${{mem:+--socket-mem "$mem"}}',
        "--",
        "-n",
        "4",
        "--huge-dir",
        "/dev/hugepages",
        "--file-prefix",
        "spp",
        "--proc-type=secondary",
        "--",
        "-n",
        "1",
        "-s",
        "127.0.0.1:6666",
    )
    assert (sec.near, sec.near_node, sec.node_memory, sec.nodes) == ("ens2f0", 1, 1024, ())


@pytest.mark.parametrize(
    ("numa_node", "expected"),
    [
        pytest.param("0", ["--socket-mem", "1024"], id="node-0"),
        pytest.param("1", ["--socket-mem", "0,1024"], id="node-1"),
        pytest.param("3", ["--socket-mem", "0,0,0,1024"], id="node-3"),
        pytest.param("", [], id="list-spans-nodes"),
        pytest.param(None, [], id="kcm-without-numa-node"),
    ],
)
def test_the_window_shell_turns_kcm_numa_node_into_socket_mem(
    tmp_path: Path, numa_node: str | None, expected: list[str]
) -> None:
    """The command kcm isolate runs, run by the real sh the way kcm runs it, with spp_nfv
    replaced by a program that prints the argv it gets."""
    printer = tmp_path / "spp_nfv"
    printer.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    printer.chmod(0o755)
    data = {**NEAR_DATA, "paths": {"nfv": str(printer)}}
    argv = (
        plan.build(
            conf(data),
            Options(nof_sec=4, nof_vhost=0),
            numa_host(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA, pools=DUAL_POOLS),
        )
        .window("sec1")
        .argv
    )
    command = argv[argv.index("--near=ens2f0") + 1]
    args = list(argv[argv.index("--near=ens2f0") + 3 :])
    env = {"PATH": "/usr/bin:/bin", "KCM_CPUS_ASSIGNED": "16,36"}
    if numa_node is not None:
        env["KCM_NUMA_NODE"] = numa_node
    done = subprocess.run(
        shell_argv(command, args), env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == ["-l", "16,36", *expected, *args]


def test_auto_secondaries_near_nics_in_the_plan_and_the_warnings() -> None:
    p = near_plan()
    windows = {w.name: (w.near, w.near_node) for w in p.windows if w.auto_cores}
    assert windows == {
        "sec1": ("ens2f0", 1),
        "sec2": ("ens1f0", 0),
        "sec3": ("eno1", None),  # numa_node -1: any list is near
        "sec4": (None, None),
    }
    assert "--near=eno1" in p.window("sec3").argv
    assert not any(a.startswith("--near") for a in p.window("sec4").argv)
    # Every list of the pool is on node 1, so sec2 near node 0's NIC will get another node's.
    assert p.warnings == (
        "secondaries[1]: placed near a device on node 0, where kcm pool 'dataplane' has 0 free "
        "CPU lists for 1 'auto' secondary; kcm will give 1 a list of another node and say so in "
        "its window",
    )
    # The node of each NIC must have the hugepages, as must the primary's.
    assert p.hugepages == (NodeMemory(0, 1024), NodeMemory(1, 1024))


def test_more_auto_secondaries_near_a_node_than_it_has_free_lists_is_a_warning() -> None:
    # Two lists on node 0, one on node 1: enough for two secondaries, but not both near node 1.
    lists = [frozenset(cpus) for cpus in ({8, 28}, {9, 29}, {19, 39})]
    pools = (
        KcmPool("dataplane", True, tuple(KcmCpuList(cpus, ()) for cpus in lists)),
        KcmPool("infra", False, (KcmCpuList(frozenset(range(40)).difference(*lists), ()),)),
    )
    data = {
        **NEAR_DATA,
        "secondaries": [{"id": i, "coremask": "auto", "near": "ens2f0"} for i in (1, 2)],
    }
    host = numa_host(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA, pools=pools)
    p = plan.build(conf(data), Options(nof_sec=2, nof_vhost=0), host)
    assert p.warnings == (
        "secondaries[0] and secondaries[1]: placed near a device on node 1, where kcm pool "
        "'dataplane' has 1 free CPU list for 2 'auto' secondaries; kcm will give 1 a list of "
        "another node and say so in its window",
    )


def test_on_a_one_node_host_auto_near_keeps_the_plain_command() -> None:
    devices = (Device("ens1f0", 0), Device("ens2f0", 0), Device("eno1", None))
    p = plan.build(
        conf(NEAR_DATA),
        Options(nof_sec=4, nof_vhost=0),
        numa_host(SEED_16, ONE_NODE_16, pools=kcm_pools(SEED_16, ONE_NODE_16, 4), devices=devices),
    )
    sec = p.window("sec1")
    assert sec.argv[6:8] == ("--near=ens2f0", f'exec {NFV} -l "$KCM_CPUS_ASSIGNED"')
    assert sec.node_memory is None and socket_mem(sec.argv[8:]) is None
    assert p.warnings == ()


def test_kcm_in_the_window_reads_the_sysfs_the_plan_was_made_for() -> None:
    host = numa_host(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA, pools=DUAL_POOLS)
    other = Host(**{**host.__dict__, "sys_root": "/srv/hosts/dual/sys"})
    argv = plan.build(conf(NEAR_DATA), Options(nof_sec=4, nof_vhost=0), other).window("sec1").argv
    assert argv[:4] == ("env", "KCM_PROC_FS=/proc", "KCM_SYS_FS=/srv/hosts/dual/sys", "kcm")


def test_a_device_the_host_cannot_place_is_a_problem_naming_the_key() -> None:
    devices = (
        Device(
            "br0",
            None,
            "network interface br0 has no device (/sys/class/net/br0/device is "
            "missing: a virtual interface), so it lies on no NUMA node; name the NIC it runs over",
        ),
        Device(
            "ens9",
            None,
            "no device 'ens9' on this host: neither a PCI device in "
            "/sys/bus/pci/devices nor a network interface in /sys/class/net",
        ),
    )
    data = {
        **NEAR_DATA,
        "secondaries": [
            {"id": 1, "coremask": "auto", "near": "br0"},
            {"id": 2, "coremask": "auto", "near": "ens9"},
        ],
    }
    host = numa_host(DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA, pools=DUAL_POOLS, devices=devices)
    with pytest.raises(ConfigError) as err:
        plan.build(conf(data), Options(nof_sec=2, nof_vhost=0), host)
    assert err.value.lines == (
        f"{CONF_PATH}: secondaries[0].near: network interface br0 has no device "
        "(/sys/class/net/br0/device is missing: a virtual interface), so it lies on no NUMA "
        "node; name the NIC it runs over",
        f"{CONF_PATH}: secondaries[1].near: no device 'ens9' on this host: neither a PCI device "
        "in /sys/bus/pci/devices nor a network interface in /sys/class/net; name a device of "
        "this host or remove 'near'",
    )


def test_the_plan_with_nodes_survives_its_stored_form() -> None:
    p = near_plan()
    assert plan.from_json(plan.to_json(p)) == p


def test_a_plan_stored_by_an_older_runner_still_reads() -> None:
    import json

    stored = json.loads(plan.to_json(near_plan()))
    for key in ("numa_nodes", "hugepages", "sys_root", "kcm_program"):
        del stored[key]
    for w in stored["windows"]:
        for key in ("nodes", "near", "near_node", "node_memory"):
            del w[key]
    old = plan.from_json(json.dumps(stored))
    assert old.hugepages == () and old.sys_root == "/sys"
    assert [w.argv for w in old.windows] == [w.argv for w in near_plan().windows]


# ----------------------------------------------------------------------------- hugepage check


def test_each_node_short_of_hugepages_is_one_line_naming_size_needed_and_free() -> None:
    asks = (NodeMemory(0, 1024), NodeMemory(1, 1024), NodeMemory(2, 512), NodeMemory(3, 1024))
    base = "/sys/devices/system/node/node{}/hugepages/hugepages-2048kB"
    found = [
        NodeHugepages(0, 2048, 512, f"{base.format(0)}/free_hugepages"),  # just enough
        NodeHugepages(1, 2048, 100, f"{base.format(1)}/free_hugepages"),
        NodeHugepages(
            2,
            2048,
            None,
            f"{base.format(2)}/free_hugepages",
            "this host has no node 2 (/sys/devices/system/node/node2 is missing)",
        ),
        NodeHugepages(
            3,
            2048,
            None,
            f"{base.format(3)}/free_hugepages",
            f"the kernel offers no 2048 kB pages there ({base.format(3)} is missing)",
        ),
    ]
    assert hugepage_problems(asks, found) == [
        "hugepages: node 1 must give 512 pages of 2048 kB (1024 MB, eal.socket_mem) but has 100 "
        f"free; reserve 412 more (raise {base.format(1)}/nr_hugepages by 412) or lower "
        "eal.socket_mem",
        "hugepages: node 2 must give 256 pages of 2048 kB (512 MB, eal.socket_mem) but this host "
        "has no node 2 (/sys/devices/system/node/node2 is missing); give node 2 no memory in "
        "eal.socket_mem",
        "hugepages: node 3 must give 512 pages of 2048 kB (1024 MB, eal.socket_mem) but the "
        f"kernel offers no 2048 kB pages there ({base.format(3)} is missing)",
    ]


def test_gigabyte_pages_are_counted_whole() -> None:
    found = [NodeHugepages(0, 1048576, 0, "/sys/x/free_hugepages")]
    (line,) = hugepage_problems((NodeMemory(0, 1536),), found)
    assert line.startswith("hugepages: node 0 must give 2 pages of 1048576 kB (1536 MB, ")


@pytest.mark.parametrize(
    ("mounts", "meminfo", "size"),
    [
        pytest.param(
            "nodev /mnt/huge hugetlbfs rw,relatime,pagesize=1G 0 0\n", None, 1048576, id="mount-1G"
        ),
        pytest.param(
            "nodev /mnt/huge hugetlbfs rw,relatime,pagesize=2M 0 0\n",
            "Hugepagesize:    1048576 kB\n",
            2048,
            id="mount-2M-over-default",
        ),
        pytest.param(
            "nodev /mnt/other hugetlbfs rw,pagesize=1G 0 0\n",
            "Hugepagesize:       2048 kB\n",
            2048,
            id="another-mount",
        ),
        pytest.param(
            None, "MemTotal: 1 kB\nHugepagesize:    1048576 kB\n", 1048576, id="kernel-default"
        ),
        pytest.param(None, None, 2048, id="nothing-known"),
    ],
)
def test_the_page_size_is_that_of_the_huge_dir_mount(
    mounts: str | None, meminfo: str | None, size: int
) -> None:
    assert hugepage_size_kb("/mnt/huge", mounts, meminfo) == size


# ----------------------------------------------------------------------------- spp-wakeup


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


# The fake trees hold 2 MB pages; the runner takes the size from the mount at eal.huge_dir
# (/dev/hugepages, the default), else the kernel's default size, so this host must agree.
two_mb_pages = pytest.mark.skipif(
    hugepage_size_kb("/dev/hugepages", _read("/proc/mounts"), _read("/proc/meminfo")) != 2048,
    reason="this host's hugepages at /dev/hugepages (or by default) are not 2 MB",
)


def sysfs_tree(
    root: Path,
    cpus: list[FakeCpu],
    numa: dict[int, list[int]],
    free: dict[int, int],
    pci: dict[str, int] = NICS_PCI,
    net: dict[str, str | None] = NICS_NET,
) -> Path:
    """A host's sysfs as real files: CPUs, nodes, NICs and each node's free 2 MB pages."""
    build_sysfs(str(root), cpus, numa=numa)
    build_devices(str(root), pci, net)
    build_hugepages(str(root), free)
    return root


def seed_run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "spp-runner"
    run_dir.mkdir()
    shutil.copyfile(FIXTURES / "seed_conf.yml", run_dir / "conf.yml")
    return run_dir


def env_with(sysfs: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "KCM_SYS_FS": str(sysfs), "PATH": f"{VENV_BIN}:/usr/bin:/bin", **extra}


@two_mb_pages
def test_dry_run_of_the_seed_on_the_dual_socket_box_shows_every_window_s_node(
    tmp_path: Path,
) -> None:
    sysfs = sysfs_tree(
        tmp_path / "sys", DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA, free={0: 1024, 1: 100}
    )
    result = run_cli(
        SPP_WAKEUP, "--dry-run", "-ns", "5", cwd=seed_run_dir(tmp_path), env=env_with(sysfs)
    )
    assert result.returncode == 0, result.stderr
    spp = f"{tmp_path}/spp"
    img = f"{tmp_path}/qemu-hda/img"
    nfv = f"{spp}/src/nfv/x86_64-native-linuxapp-gcc/spp_nfv"
    attach = "      ready when it has attached to the primary (mp_socket in /var/run/dpdk/spp)\n"

    def sec(i: int, cores: str, node: int, memory: str) -> str:
        return (
            f"  [{i + 1}] sec{i}        cores: {cores:<6} node: {node}\n"
            f"      {nfv} -l {cores} -n 4 --socket-mem {memory} --huge-dir /dev/hugepages "
            f"--file-prefix spp --proc-type=secondary -- -n {i} -s 127.0.0.1:6666\n{attach}"
        )

    assert result.stdout == (
        "session 'spp' from conf.yml: 9 windows\n"
        "  [0] controller  cores: -      node: -\n"
        f"      python3 {spp}/src/spp.py -p 5555 -s 6666\n"
        "      ready when 127.0.0.1:5555 and 127.0.0.1:6666 accept connections\n"
        "  [1] primary     cores: 0-1    node: 0\n"
        f"      {spp}/src/primary/x86_64-native-linuxapp-gcc/spp_primary -l 0-1 -n 4 "
        "--socket-mem 1024 --huge-dir /dev/hugepages --file-prefix spp --proc-type=primary "
        "--vdev eth_vhost0,iface=/tmp/sock0 -- -p 0x1 -n 8 -s 127.0.0.1:5555\n"
        "      ready when /var/run/dpdk/spp/config is held by the live primary and its mempool "
        "exists\n"
        + sec(1, "2-3", 0, "1024")
        + sec(2, "4-5", 0, "1024")
        + sec(3, "6-7", 0, "1024")
        + sec(4, "8-9", 0, "1024")
        + sec(5, "10-11", 1, "0,1024")
        + "  [7] vhost11     cores: -      node: -\n"
        "      qemu-system-x86_64 -name spp-vm11 -enable-kvm -cpu host -smp 2 -m 2048 -nographic "
        f"-drive file={img}/vhost11.qcow2,if=virtio,format=qcow2 -netdev bridge,id=mgmt,"
        "br=virbr0 -device virtio-net-pci,netdev=mgmt,mac=52:54:00:00:00:0b -object "
        "memory-backend-file,id=mem,size=2048M,mem-path=/dev/hugepages,share=on -numa "
        "node,memdev=mem -mem-prealloc -chardev socket,id=chr0,path=/tmp/sock0 -netdev "
        "vhost-user,id=vhost0,chardev=chr0,vhostforce=on -device virtio-net-pci,netdev=vhost0,"
        "mac=52:54:00:12:00:00\n"
        "      starts once /tmp/sock0 exists\n"
        "  [8] work1       cores: -      node: -\n"
        "      bash -l\n"
        "hugepages each node must have free (checked before a launch): node 0 1024 MB, node 1 "
        "1024 MB\n"
        "images (qcow2 overlays, created on first use):\n"
        f"  {img}/template-vhost.qcow2  <- {img}/template.qcow2\n"
        f"  {img}/vhost11.qcow2  <- {img}/template-vhost.qcow2\n"
        "--down removes:\n"
        "  /tmp/sock0\n"
        "  /var/run/dpdk/spp\n"
        "  /dev/hugepages/sppmap_*\n"
    )
    # Node 1 has 100 free pages of the 512 the session asks: a warning, as the run is dry.
    pages = f"{sysfs}/devices/system/node/node1/hugepages/hugepages-2048kB"
    huge = [line for line in result.stderr.splitlines() if "hugepages:" in line]
    assert huge == [
        "spp-wakeup: warning: a real launch would stop here: hugepages: node 1 must give 512 "
        "pages of 2048 kB (1024 MB, eal.socket_mem) but has 100 free; reserve 412 more (raise "
        f"{pages}/nr_hugepages by 412) or lower eal.socket_mem"
    ]


@pytest.fixture
def four_node_kcm(tmp_path: Path) -> tuple[Path, Path]:
    """The 4-node box with a NIC on nodes 0, 1 and 3 and one of no node, and the state the
    real kcm init makes there: its 4 dataplane lists lie on node 3 (socket 1's top cores)."""
    sysfs = sysfs_tree(
        tmp_path / "sys",
        FOUR_NODE_TWO_SOCKET,
        FOUR_NODE_NUMA,
        free=dict.fromkeys(range(4), 1024),
        pci={"0000:3b:00.0": 0, "0000:5e:00.0": 1, "0000:d8:00.0": 3, "0000:00:1f.6": -1},
        net={"ens1f0": "0000:3b:00.0", "ens4f0": "0000:d8:00.0", "eno1": "0000:00:1f.6"},
    )
    state = tmp_path / "kcm"
    init = run_cli(str(VENV_BIN / "kcm"), "init", f"--conf-dir={state}", env=env_with(sysfs))
    assert init.returncode == 0, init.stderr
    return sysfs, state


def test_dry_run_of_auto_secondaries_near_nics_on_the_four_node_box(
    tmp_path: Path, four_node_kcm: tuple[Path, Path]
) -> None:
    sysfs, state = four_node_kcm
    conf = tmp_path / "conf.yml"
    conf.write_text(
        "primary: {coremask: 0x03}\n"
        "secondaries:\n"
        "  - {id: 1, coremask: auto, near: ens4f0}\n"
        '  - {id: 2, coremask: auto, near: "0000:5e:00.0"}\n'
        "  - {id: 3, coremask: auto, near: eno1}\n"
        "  - {id: 4, coremask: auto}\n"
        f"kcm: {{conf_dir: {state}}}\n"
    )
    result = run_cli(
        SPP_WAKEUP, "--config", str(conf), "--dry-run", "-ns", "4", "-nv", "0", env=env_with(sysfs)
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if "cores:" in line] == [
        "  [0] controller  cores: -     node: -",
        "  [1] primary     cores: 0-1   node: 0",
        "  [2] sec1        cores: auto  node: 3 if kcm has a free list there (near ens4f0)",
        "  [3] sec2        cores: auto  node: 1 if kcm has a free list there (near 0000:5e:00.0)",
        "  [4] sec3        cores: auto  node: kcm's (near eno1, which is on no node)",
        "  [5] sec4        cores: auto  node: kcm's ($KCM_NUMA_NODE)",
        "  [6] work1       cores: -     node: -",
    ]
    sec1 = lines[
        lines.index(
            "  [2] sec1        cores: auto  node: 3 if kcm has a free list there (near ens4f0)"
        )
        + 1
    ]
    assert sec1.startswith(
        f"      env KCM_PROC_FS=/proc KCM_SYS_FS={sysfs} kcm isolate --conf-dir={state} "
        "--pool=dataplane --near=ens4f0 'mem=; node=${KCM_NUMA_NODE:-}; case $node in "
        '""|*[!0-9]*|????*) ;; *) mem=1024; '
    )
    assert (
        "      near ens4f0: kcm prefers a list on node 3, else takes another node's and says so"
        in lines
    )
    assert "      near eno1: kcm prefers a list on any node, as the device is on none" in lines
    assert (
        lines.count(
            "      --socket-mem from $KCM_NUMA_NODE, in the window's shell: 1024 MB on kcm's node "
            "(node 1 gives 0,1024); none when the list spans nodes"
        )
        == 4
    )
    assert (
        "hugepages each node must have free (checked before a launch): node 0 1024 MB, node 1 "
        "1024 MB, node 3 1024 MB" in lines
    )
    # kcm's lists are all on node 3, so the secondary near node 1's NIC will get one of those.
    assert (
        "spp-wakeup: warning: secondaries[1]: placed near a device on node 1, where kcm pool "
        "'dataplane' has 0 free CPU lists for 1 'auto' secondary; kcm will give 1 a list of "
        "another node and say so in its window"
    ) in result.stderr.splitlines()


def test_near_a_device_the_host_lacks_or_cannot_place_is_an_error(
    tmp_path: Path, four_node_kcm: tuple[Path, Path]
) -> None:
    sysfs, state = four_node_kcm
    build_devices(str(sysfs), {}, {"br0": None})
    conf = tmp_path / "conf.yml"
    conf.write_text(
        "primary: {coremask: 0x03}\n"
        "secondaries:\n"
        "  - {id: 1, coremask: auto, near: ens9f0}\n"
        "  - {id: 2, coremask: auto, near: br0}\n"
        '  - {id: 3, coremask: auto, near: "0000:99:00.0"}\n'
        f"kcm: {{conf_dir: {state}}}\n"
    )
    result = run_cli(
        SPP_WAKEUP, "--config", str(conf), "--dry-run", "-ns", "3", "-nv", "0", env=env_with(sysfs)
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"spp-wakeup: error: {conf}: secondaries[0].near: no device 'ens9f0' on this host: "
        f"neither a PCI device in {sysfs}/bus/pci/devices nor a network interface in "
        f"{sysfs}/class/net; name a device of this host or remove 'near'",
        f"spp-wakeup: error: {conf}: secondaries[1].near: network interface br0 has no device "
        f"({sysfs}/class/net/br0/device is missing: a virtual interface), so it lies on no NUMA "
        "node; name the NIC it runs over",
        f"spp-wakeup: error: {conf}: secondaries[2].near: no device '0000:99:00.0' on this "
        f"host: neither a PCI device in {sysfs}/bus/pci/devices nor a network interface in "
        f"{sysfs}/class/net; name a device of this host or remove 'near'",
    ]


def test_a_spanning_mask_warns_naming_its_nodes_and_cpus(tmp_path: Path) -> None:
    sysfs = sysfs_tree(
        tmp_path / "sys", FOUR_NODE_TWO_SOCKET, FOUR_NODE_NUMA, free=dict.fromkeys(range(4), 1024)
    )
    conf = tmp_path / "conf.yml"
    conf.write_text("primary: {coremask: 0x03}\nsecondaries: [{id: 1, coremask: '0x3C'}]\n")
    result = run_cli(
        SPP_WAKEUP, "--config", str(conf), "--dry-run", "-ns", "1", "-nv", "0", env=env_with(sysfs)
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        "spp-wakeup: warning: secondaries[0].coremask: 0x3C spans NUMA nodes 0 (CPUs 2-3) and 1 "
        "(CPUs 4-5); its memory and packets cross between the nodes, so choose CPUs of one node"
    )
    assert "  [2] sec1        cores: 2-5  node: 0,1" in result.stdout.splitlines()
    assert " --socket-mem 1024,1024 " in result.stdout


@two_mb_pages
def test_a_launch_short_of_hugepages_refuses_before_any_window(
    tmp_path: Path, spp_tree: Path, tmux_env: dict[str, str]
) -> None:
    sysfs = sysfs_tree(
        tmp_path / "sys", DUAL_SOCKET_20_CORE_HT, DUAL_SOCKET_NUMA, free={0: 511, 1: 0}
    )
    conf = tmp_path / "conf.yml"
    conf.write_text(
        "primary: {coremask: 0x03}\n"
        "secondaries: [{id: 1, coremask: '0xC00'}]\n"  # CPUs 10-11: node 1
        "paths: {spp_dir: spp}\n"
    )
    env = {
        **tmux_env,
        "KCM_SYS_FS": str(sysfs),
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "SPP_STANDIN_LOG": str(tmp_path / "standin-log"),
    }
    result = run_cli(
        SPP_WAKEUP, "--config", str(conf), "-ns", "1", "-nv", "0", "--no-attach", env=env
    )
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    node = f"{sysfs}/devices/system/node/node{{}}/hugepages/hugepages-2048kB/nr_hugepages"
    huge = [line for line in result.stderr.splitlines() if "hugepages:" in line]
    assert huge == [
        "spp-wakeup: error: hugepages: node 0 must give 512 pages of 2048 kB (1024 MB, "
        f"eal.socket_mem) but has 511 free; reserve 1 more (raise {node.format(0)} by 1) or "
        "lower eal.socket_mem",
        "spp-wakeup: error: hugepages: node 1 must give 512 pages of 2048 kB (1024 MB, "
        f"eal.socket_mem) but has 0 free; reserve 512 more (raise {node.format(1)} by 512) or "
        "lower eal.socket_mem",
    ]
    assert tmux(env, "list-sessions") == []
    assert not list((tmp_path / "standin-log").iterdir())  # no DPDK process started


@two_mb_pages
def test_a_listed_socket_mem_for_a_node_the_host_lacks(tmp_path: Path) -> None:
    sysfs = sysfs_tree(tmp_path / "sys", SEED_16, ONE_NODE_16, free={0: 1024})
    conf = tmp_path / "conf.yml"
    conf.write_text("primary: {coremask: 0x03}\neal: {socket_mem: '512,512'}\n")
    result = run_cli(
        SPP_WAKEUP, "--config", str(conf), "--dry-run", "-ns", "0", "-nv", "0", env=env_with(sysfs)
    )
    assert result.returncode == 0, result.stderr
    assert (
        "spp-wakeup: warning: a real launch would stop here: hugepages: node 1 must give 256 "
        "pages of 2048 kB (512 MB, eal.socket_mem) but this host has no node 1 "
        f"({sysfs}/devices/system/node/node1 is missing); give node 1 no memory in eal.socket_mem"
    ) in result.stderr.splitlines()


@pytest.mark.parametrize("knows_near", [False, True])
def test_a_kcm_without_isolate_near_is_named_before_a_launch(
    tmp_path: Path, four_node_kcm: tuple[Path, Path], knows_near: bool
) -> None:
    sysfs, state = four_node_kcm
    kcm = tmp_path / "bin/kcm"
    kcm.parent.mkdir()
    option = "  --near=DEVICE  prefer lists on DEVICE's NUMA node\n" if knows_near else ""
    kcm.write_text(f"#!/bin/sh\ncat <<'EOF'\nusage: kcm isolate [--pool=POOL]\n{option}EOF\n")
    kcm.chmod(0o755)
    conf = tmp_path / "conf.yml"
    conf.write_text(
        "primary: {coremask: 0x03}\n"
        "secondaries: [{id: 1, coremask: auto, near: ens4f0}, {id: 2, coremask: auto}]\n"
        f"kcm: {{conf_dir: {state}, program: {kcm}}}\n"
    )
    result = run_cli(
        SPP_WAKEUP, "--config", str(conf), "--dry-run", "-ns", "2", "-nv", "0", env=env_with(sysfs)
    )
    assert result.returncode == 0, result.stderr
    warning = (
        f"spp-wakeup: warning: a real launch would stop here: kcm ({kcm}) has no 'isolate "
        "--near', which the window(s) 'sec1' need; install a kcm that has it, or remove 'near' "
        "from conf.yml"
    )
    assert (warning in result.stderr.splitlines()) is not knows_near
