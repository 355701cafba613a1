"""kcm isolate --socket-id, --numa-node, --near on this machine through a fake sysfs (issue 12).

The sysfs puts this machine's CPU 0 and CPU 1 on different NUMA nodes (and sockets) and fake NICs
on them; the state has an exclusive list on each CPU and a shared one over both. The commands
run for real, pinned, in their booking cgroup (as root on this host: cgroup v1, one memory
node, ``cpuset.mems`` 0), under a cgroup parent of the test's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.host import cgroups
from tests.conftest import assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.cgroups import real_cpuset, remove_parent, unique_parent
from tests.fixtures.state import build_state, snapshot, tree
from tests.fixtures.sysfs import FakeCpu, build_devices, build_sysfs

# CPU 0 on socket 0 / node 0, CPU 1 on socket 1 / node 1.
TWO_NODES = [FakeCpu(0, 0, 0, (0,)), FakeCpu(1, 1, 0, (1,))]
NICS = {"0000:3b:00.0": 0, "0000:af:00.0": 1, "0000:00:1f.6": -1}
INTERFACES = {"ens1f0": "0000:af:00.0", "eno1": "0000:3b:00.0", "eno2": "0000:00:1f.6"}
PROBE = (
    'echo "cpus=$KCM_CPUS_ASSIGNED node=${KCM_NUMA_NODE-unset}";'
    " grep -E '^(Cpus|Mems)_allowed_list' /proc/self/status"
)


class Box:
    def __init__(self, tmp: Path, numa: dict[int, list[int]]) -> None:
        self.sys = build_sysfs(str(tmp / "sys"), TWO_NODES, numa=numa)
        build_devices(self.sys, NICS, INTERFACES)
        self.conf = build_state(
            str(tmp / "kcm"),
            {"dataplane": (True, {"0": "", "1": ""}), "infra": (False, {"0-1": ""})},
        )
        self.parent = unique_parent()
        self.env = kcm_env(KCM_PROC_FS="/proc", KCM_SYS_FS=self.sys, KCM_CGROUP_PARENT=self.parent)

    def isolate(self, *options: str, command: str = PROBE, pool: str = "dataplane", **extra: str):  # type: ignore[no-untyped-def]
        return run_kcm(
            "isolate",
            f"--conf-dir={self.conf}",
            f"--pool={pool}",
            *options,
            command,
            env={**self.env, **extra},
        )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    made = Box(tmp_path, {0: [0], 1: [1]})
    yield made
    remove_parent(made.parent)


def lines(out: str) -> list[str]:
    return [" ".join(line.split()) for line in out.splitlines()]


def booking_mems_probe(box: Box) -> str:
    """A command that prints its own booking cgroup's cpuset.mems (cgroup v1 here)."""
    found = cgroups.find_hierarchy(cgroups.DEFAULT_CGROUP_FS)
    assert found is not None
    return f'cat "{found[1]}$(sed -n "s/^[0-9]*:cpuset://p" /proc/self/cgroup)/cpuset.mems"'


def test_near_a_nic_on_node_1_gets_cpu_1_and_is_told_its_node(box: Box) -> None:
    result = box.isolate("--near=ens1f0")
    assert result.code == 0, result.err
    assert lines(result.out) == [
        "cpus=1 node=1",
        "Cpus_allowed_list: 1",
        "Mems_allowed_list: 0",
    ]
    if real_cpuset("v1") is not None:
        # This host has one memory node, 0: node 1 is not in the cpuset hierarchy's mems, so
        # the booking keeps every node it has, and says so.
        assert result.err.splitlines() == [
            "kcm: warning: memory node(s) 1 of CPU list 1 are not in"
            " /sys/fs/cgroup/cpuset/cpuset.mems: the booking keeps every memory node the"
            " host's cpuset has"
        ]
        mems = box.isolate("--near=ens1f0", command=booking_mems_probe(box))
        assert mems.out.strip() == "0"
    assert tree(box.conf)["dataplane/1"] == []


def test_a_node_the_host_has_binds_the_bookings_memory_to_it(tmp_path: Path) -> None:
    # The allowed case: the NIC and CPU 1 on node 0, the node this host's memory is on.
    made = Box(tmp_path, {0: [1], 1: [0]})
    try:
        if real_cpuset("v1") is None:
            pytest.skip("needs this host's cgroup v1 cpuset (root)")
        result = made.isolate("--near=eno1", command=f"{PROBE}; {booking_mems_probe(made)}")
        assert (result.code, result.err) == (0, "")
        assert lines(result.out) == [
            "cpus=1 node=0",
            "Cpus_allowed_list: 1",
            "Mems_allowed_list: 0",
            "0",
        ]
    finally:
        remove_parent(made.parent)


def test_near_a_full_node_takes_another_and_says_so_or_refuses_when_strict(box: Box) -> None:
    holder = box.isolate("--near=ens1f0", command="sleep 300 >/dev/null 2>&1 &")
    assert holder.code == 0
    (heir,) = tree(box.conf)["dataplane/1"]  # type: ignore[misc]
    try:
        elsewhere = box.isolate("--near=ens1f0")
        assert elsewhere.code == 0, elsewhere.err
        assert lines(elsewhere.out)[0] == "cpus=0 node=0"
        assert elsewhere.err.splitlines() == [
            "kcm: warning: no free CPU list of pool 'dataplane' near ens1f0 (NUMA node 1):"
            " took 0, on NUMA node 0"
        ]
        before = snapshot(box.conf)
        strict = box.isolate("--near=ens1f0", "--near-strict", command="echo ran")
        assert_one_error_line(
            strict,
            f"no free CPU list of pool 'dataplane' in {box.conf} near ens1f0 (NUMA node 1),"
            " and --near-strict refuses the others",
        )
        assert (strict.code, strict.out) == (4, "")
        assert snapshot(box.conf) == before
    finally:
        os.kill(heir, 9)


def test_a_nic_of_no_node_is_near_any_list(box: Box) -> None:
    result = box.isolate("--near=eno2")
    assert (result.code, lines(result.out)[0]) == (0, "cpus=0 node=0")
    assert "no free CPU list" not in result.err


@pytest.mark.parametrize(
    ("option", "cpus"),
    [("--numa-node=1", "1"), ("--numa-node=0", "0"), ("--socket-id=1", "1")],
)
def test_socket_and_node_take_a_list_that_lies_there(box: Box, option: str, cpus: str) -> None:
    result = box.isolate(option)
    assert result.code == 0, result.err
    assert lines(result.out)[0] == f"cpus={cpus} node={cpus}"


def test_a_shared_list_spanning_nodes_has_no_node(box: Box) -> None:
    result = box.isolate("--socket-id=0", pool="infra")
    # infra's only list (0-1) spans both sockets: none lies on socket 0 alone.
    assert_one_error_line(result, f"pool 'infra' of {box.conf} has no CPU list on socket 0")
    assert result.code == 4
    near = box.isolate("--near=eno1", pool="infra")
    assert near.code == 0, near.err
    assert lines(near.out)[0] == "cpus=0-1 node="  # KCM_NUMA_NODE is set, and empty


def test_none_free_on_the_node_is_exit_4_naming_it(box: Box) -> None:
    holder = box.isolate("--numa-node=1", command="sleep 300 >/dev/null 2>&1 &")
    (heir,) = tree(box.conf)["dataplane/1"]  # type: ignore[misc]
    try:
        assert holder.code == 0
        refused = box.isolate("--numa-node=1", command="echo ran")
        assert_one_error_line(
            refused,
            f"no free CPU list in exclusive pool 'dataplane' of {box.conf} on NUMA node 1:"
            " all 1 there are taken",
        )
        assert refused.code == 4
    finally:
        os.kill(heir, 9)


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        (("--socket-id=x",), 2, "--socket-id='x' is not a non-negative whole number"),
        (("--numa-node=7",), 2, "--numa-node=7: this host has no such node (0, 1)"),
        (("--near-strict",), 2, "--near-strict goes with --near=<device>"),
        (("--near=ens9", "--numa-node=0"), 2, "--near chooses the node itself"),
        (("--near=ens9",), 6, "no device 'ens9' on this host"),
        (("--near=../x",), 2, "invalid device '../x'"),
    ],
)
def test_bad_placement_is_one_line_and_changes_nothing(
    box: Box, options: tuple[str, ...], code: int, message: str
) -> None:
    before = snapshot(box.conf)
    result = box.isolate(*options, command="echo ran")
    assert_one_error_line(result, message)
    assert (result.code, result.out) == (code, "")
    assert snapshot(box.conf) == before


def test_the_plain_path_reads_no_topology(box: Box, tmp_path: Path) -> None:
    # With a sysfs that is not there, a plain isolate runs (it reads none), and the command
    # gets no KCM_NUMA_NODE; a placement option needs the sysfs.
    missing = str(tmp_path / "no-sysfs")
    plain = box.isolate(command=PROBE, KCM_SYS_FS=missing)
    assert plain.code == 0, plain.err
    assert lines(plain.out)[0] == "cpus=0 node=unset"
    placed = box.isolate("--numa-node=0", KCM_SYS_FS=missing)
    assert placed.code == 6
    assert_one_error_line(placed, missing)


def loaded_modules(box: Box, *options: str) -> set[str]:
    """The modules a real ``kcm isolate`` run imports (``python -X importtime``)."""
    import subprocess
    import sys

    from tests.conftest import KCM

    done = subprocess.run(
        [sys.executable, "-X", "importtime", KCM, "isolate", f"--conf-dir={box.conf}",
         "--pool=dataplane", *options, "true"],
        env=box.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line}


def test_only_a_placement_option_loads_the_topology(box: Box) -> None:
    topology = {"kcm.placement", "kcm.topology", "kcm.host.sysfs", "dataclasses"}
    assert not loaded_modules(box) & topology
    assert loaded_modules(box, "--numa-node=0") >= topology


@pytest.mark.guest("v2")
def test_on_a_kernel_of_two_nodes_the_booking_binds_its_memory_to_the_lists_node(
    tmp_path: Path,
) -> None:
    # The allowed case on real memory nodes: the v2 guest of tests/guest/test_boot.py has two
    # (vCPUs 0-1 on node 0, 2-3 on node 1). No fake sysfs: the guest's own /sys.
    nodes = sorted(p.name for p in Path("/sys/devices/system/node").glob("node[0-9]*"))
    assert nodes == ["node0", "node1"], "boot the guest with two NUMA nodes (--numa 2)"
    conf = str(tmp_path / "kcm")
    init = run_kcm("init", f"--conf-dir={conf}", "--num-dp-cores=2", "--num-cp-cores=0")
    assert init.code == 0, init.err
    assert tree(conf)["dataplane/2"] == [] and tree(conf)["dataplane/3"] == []
    parent = unique_parent()
    env = kcm_env(KCM_PROC_FS="/proc", KCM_CGROUP_PARENT=parent)
    probe = f'{PROBE}; cat "/sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup)/cpuset.mems"'
    try:
        for option, pool, expected in (
            ("--numa-node=1", "dataplane", ["cpus=2 node=1", "Cpus_allowed_list: 2",
                                            "Mems_allowed_list: 1", "1"]),
            ("--numa-node=0", "infra", ["cpus=0-1 node=0", "Cpus_allowed_list: 0-1",
                                        "Mems_allowed_list: 0", "0"]),
        ):  # fmt: skip
            result = run_kcm(
                "isolate", f"--conf-dir={conf}", f"--pool={pool}", option, probe, env=env
            )
            assert (result.code, result.err) == (0, ""), result.err
            assert lines(result.out) == expected
    finally:
        remove_parent(parent)
