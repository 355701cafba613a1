"""procfs parsing and the process-tree walk; EAL names and paths; against real processes too."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from spp_runner import eal, procfs
from spp_runner.procfs import ProcStat

from .conftest import wait_for


def stat_line(pid: int, comm: str, state: str, ppid: int, start: int) -> str:
    rest = " ".join(["0"] * 17)  # fields 5-21; starttime is field 22
    return f"{pid} ({comm}) {state} {ppid} {rest} {start} 0 0\n"


def test_parse_stat_with_spaces_and_parentheses_in_the_name() -> None:
    stat = procfs.parse_stat(stat_line(42, "spp nfv) (x", "S", 7, 123456))
    assert stat == ProcStat(42, "spp nfv) (x", "S", 7, 123456)
    assert stat.alive
    assert not procfs.parse_stat(stat_line(43, "dead", "Z", 7, 1)).alive


def test_parse_stat_refuses_what_is_not_a_stat_line() -> None:
    with pytest.raises(ValueError, match="not a /proc/<pid>/stat line"):
        procfs.parse_stat("hello")


def test_parse_cpus_allowed() -> None:
    text = "Name:\tdpdk-testpmd\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1,4\n"
    assert procfs.parse_cpus_allowed(text) == frozenset({0, 1, 4})
    assert procfs.parse_cpus_allowed("Name:\tx\n") is None


# tmux pane -> sudo -> kcm -> spp_nfv, with a sibling chain elsewhere.
TREE = {
    s.pid: s
    for s in (
        ProcStat(10, "bash", "S", 1, 1),
        ProcStat(11, "sudo", "S", 10, 2),
        ProcStat(12, "kcm", "S", 11, 3),
        ProcStat(13, "spp_nfv", "R", 12, 4),
        ProcStat(20, "qemu", "S", 1, 5),
        ProcStat(21, "helper", "S", 20, 6),
        ProcStat(22, "helper", "S", 20, 7),
        ProcStat(30, "gone", "Z", 12, 8),
    )
}


def test_main_process_follows_single_live_children() -> None:
    main = procfs.main_process(TREE, 11)
    assert main is not None and main.comm == "spp_nfv"


def test_main_process_stops_where_the_tree_forks() -> None:
    main = procfs.main_process(TREE, 20)
    assert main is not None and main.pid == 20
    assert procfs.main_process(TREE, 99) is None


def test_descendants_parents_first() -> None:
    assert [s.pid for s in procfs.descendants(TREE, 10)] == [10, 11, 12, 13, 30]


def test_real_process_tree_and_affinity() -> None:
    child = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.run(['sleep', '30'])",
        ],
    )
    try:

        def leaf() -> ProcStat | None:
            return procfs.main_process(procfs.all_stats("/proc"), child.pid)

        assert wait_for(lambda: (m := leaf()) is not None and m.comm == "sleep")
        main = leaf()
        assert main is not None
        assert procfs.read_cmdline("/proc", main.pid) == ("sleep", "30")
        assert procfs.read_cpus_allowed("/proc", main.pid) == frozenset({0})
        assert procfs.read_stat("/proc", main.pid) is not None
    finally:
        child.kill()
        child.wait()
    time.sleep(0.05)
    assert procfs.read_stat("/proc", child.pid) is None
    assert procfs.read_cpus_allowed("/proc", child.pid) is None


def test_eal_argv_of_a_primary_and_of_a_secondary_whose_cores_come_later() -> None:
    primary = eal.EalArgs(
        "0-1",
        4,
        "/dev/hugepages",
        "spp",
        eal.ProcType.PRIMARY,
        "512,512",
        (eal.vhost_vdev("/tmp", 0),),
    )
    assert eal.eal_argv(primary) == [
        "-l",
        "0-1",
        "-n",
        "4",
        "--socket-mem",
        "512,512",
        "--huge-dir",
        "/dev/hugepages",
        "--file-prefix",
        "spp",
        "--proc-type=primary",
        "--vdev",
        "eth_vhost0,iface=/tmp/sock0",
    ]
    secondary = eal.EalArgs(None, 4, "/dev/hugepages", "spp", eal.ProcType.SECONDARY)
    assert eal.eal_argv(secondary) == [
        "-n",
        "4",
        "--huge-dir",
        "/dev/hugepages",
        "--file-prefix",
        "spp",
        "--proc-type=secondary",
    ]


def test_runtime_dir_follows_dpdks_rules() -> None:
    assert eal.runtime_dir("spp", as_root=True, xdg_runtime_dir="/run/user/1") == (
        "/var/run/dpdk/spp"
    )
    assert eal.runtime_dir("spp", as_root=False, xdg_runtime_dir="/run/user/1") == (
        "/run/user/1/dpdk/spp"
    )
    assert eal.runtime_dir("spp", as_root=False, xdg_runtime_dir=None) == "/tmp/dpdk/spp"


def test_hugepage_and_secondary_file_names() -> None:
    pattern = eal.hugepage_file_pattern("spp")
    assert [
        n
        for n in ("sppmap_0", "sppmap_31", "spp2map_0", "xsppmap_1", "sppmap_")
        if pattern.match(n)
    ] == ["sppmap_0", "sppmap_31"]
    sec = eal.secondary_socket_pattern(4242)
    assert sec.match("mp_socket_4242_50863f2403a")
    assert not sec.match("mp_socket_42424_50863f2403a")
    assert not sec.match("mp_socket")


def test_vhost_socket_index_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        eal.vhost_socket("/tmp", -1)
