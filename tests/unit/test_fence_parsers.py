"""The audit's parsers: each takes a kernel file's text, as the kernel prints it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcm import cpulist
from kcm.errors import ParseError
from kcm.host.interrupts import parse_interrupts, parse_softirqs, parse_stat_cpus
from kcm.host.isolation import parse_cmdline
from kcm.host.sysfs import parse_boot_cpus
from kcm.host.threads import (
    parse_cgroup,
    parse_sched,
    parse_schedstat,
    parse_status_allowed,
    parse_task_stat,
)

# Copied from this development machine (Linux 6.18, 2 vCPUs).
INIT_STAT = (
    "1 (process_api) S 0 0 0 0 -1 4194560 562 6511470 0 933 1 15 9691 2989 10 -10 13 0 24"
    " 51785728 4783 18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 1 0 0 0 0 0 0 0 0 0"
    " 0 0 0 0\n"
)
KSOFTIRQD_STAT = (
    "22 (ksoftirqd/1) S 2 0 0 0 -1 69238848 0 0 0 0 0 13 0 0 20 0 1 0 3 0 0"
    " 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
)
# The kernel pads the header line with trailing blanks.
INTERRUPTS = (
    "           CPU0       CPU1       \n"
    + """\
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 36:          0     100342 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 39:       6985          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
NMI:          0          0   Non-maskable interrupts
LOC:      41951      52523   Local timer interrupts
RES:       8948       6656   Rescheduling interrupts
ERR:          0
MIS:          0
"""
)
SOFTIRQS = (
    "                    CPU0       CPU1       \n"
    + """\
          HI:          0          0
       TIMER:      12916      15239
      NET_RX:       7370      10202
       SCHED:      24279      23287
         RCU:      27258      36565
"""
)
SCHED = """\
process_api (1, #threads: 13)
-------------------------------------------------------------------
se.exec_start                                :        593345.347068
se.vruntime                                  :         66421.675418
se.sum_exec_runtime                          :           175.184343
se.nr_migrations                             :                   46
nr_switches                                  :                  392
"""


def test_task_stat_fields_of_a_user_process() -> None:
    st = parse_task_stat(INIT_STAT)
    assert (st.tid, st.comm, st.state, st.ppid) == (1, "process_api", "S", 0)
    assert (st.utime, st.stime, st.ticks, st.start_time, st.processor) == (1, 15, 16, 24, 1)
    assert not st.kernel and not st.no_setaffinity


def test_task_stat_of_a_per_cpu_kernel_thread() -> None:
    st = parse_task_stat(KSOFTIRQD_STAT)
    assert (st.comm, st.processor, st.kernel, st.no_setaffinity) == ("ksoftirqd/1", 1, True, True)


def test_task_stat_name_with_spaces_and_parentheses() -> None:
    text = INIT_STAT.replace("(process_api)", "(a) (b c))")
    assert parse_task_stat(text).comm == "a) (b c)"


@pytest.mark.parametrize("text", ["", "1 (x) S 0", "x (y) " + "0 " * 40, INIT_STAT[:60]])
def test_task_stat_garbage_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_task_stat(text)


def test_status_allowed_list() -> None:
    text = "Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1,4\nMems_allowed_list:\t0\n"
    assert parse_status_allowed(text) == frozenset({0, 1, 4})
    assert parse_status_allowed("Name:\tx\n") is None


def test_sched_runtime_in_nanoseconds_and_migrations() -> None:
    counters = parse_sched(SCHED)
    assert (counters.runtime_ns, counters.migrations) == (175_184_343, 46)


def test_sched_without_runtime_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_sched("se.nr_migrations : 4\n")


def test_schedstat_runtime() -> None:
    counters = parse_schedstat("175184343 7757002 392\n")
    assert (counters.runtime_ns, counters.migrations) == (175_184_343, None)


def test_cgroup_prefers_the_cpuset_hierarchy() -> None:
    v1 = "9:name=systemd:/\n4:memory:/a/b\n3:cpuset:/kcm/s/dataplane/1/b1\n0::/\n"
    assert parse_cgroup(v1) == "/kcm/s/dataplane/1/b1"
    assert parse_cgroup("0::/system.slice/sshd.service\n") == "/system.slice/sshd.service"
    assert parse_cgroup("3:cpu,cpuset:/x\n") == "/x"
    assert parse_cgroup("") == ""


def test_interrupts_rows_names_and_totals() -> None:
    table = parse_interrupts(INTERRUPTS)
    assert table.cpus == (0, 1)
    assert table.count("36", 1) == 100342
    assert table.names["36"] == "PCI-MSIX-0000:00:02.0 1-edge virtio1-req.0"
    assert "ERR" not in table.rows and "MIS" not in table.rows  # not per CPU
    assert table.total(1) == 0 + 100342 + 0 + 0 + 52523 + 6656
    assert table.count("36", 7) is None and table.total(7) == 0


def test_interrupts_of_a_host_with_offline_cpus() -> None:
    text = "           CPU0       CPU2\n 24:          1          5  IO-APIC   5-edge  x\n"
    table = parse_interrupts(text)
    assert table.cpus == (0, 2) and table.count("24", 2) == 5


def test_softirqs() -> None:
    table = parse_softirqs(SOFTIRQS)
    assert table.count("RCU", 1) == 36565 and table.total(0) == 12916 + 7370 + 24279 + 27258


def test_counter_table_without_cpu_columns_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_interrupts("hello\n 1: 2\n")


def test_stat_cpu_times() -> None:
    text = "cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 5347 0 1796 53418 36 10 17 25 0 0\nintr 1 2\n"
    times = parse_stat_cpus(text)
    assert list(times) == [0]
    assert (times[0].irq, times[0].softirq) == (10, 17)
    assert times[0].busy == 5347 + 1796 + 10 + 17 + 25
    assert times[0].total == times[0].busy + 53418 + 36


def test_cmdline_isolation_parameters() -> None:
    params = parse_cmdline(
        "BOOT_IMAGE=/vmlinuz isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=all"
        " quiet -- isolcpus=0\n"
    )
    iso = params["isolcpus"]
    assert (iso.flags, iso.cpus, iso.raw) == (
        ("managed_irq", "domain"),
        frozenset({2, 3}),
        "managed_irq,domain,2-3",
    )
    assert params["nohz_full"].cpus == frozenset({2, 3})
    assert params["rcu_nocbs"].all and params["rcu_nocbs"].cpus is None
    assert "irqaffinity" not in params


def test_cmdline_with_a_bad_cpu_list_keeps_the_raw_value() -> None:
    param = parse_cmdline("nohz_full=2-x")["nohz_full"]
    assert (param.raw, param.cpus) == ("2-x", None)


def test_sysfs_null_mask_is_empty() -> None:
    assert parse_boot_cpus("(null)\n") == frozenset()
    assert parse_boot_cpus("\n") == frozenset()
    assert parse_boot_cpus("2-3\n") == frozenset({2, 3})


def test_hex_masks_as_the_kernel_prints_them() -> None:
    assert cpulist.parse_mask("3\n") == frozenset({0, 1})
    assert cpulist.parse_mask("00000001,00000003") == frozenset({0, 1, 32})
    assert cpulist.format_mask({0, 1}) == "3"
    assert cpulist.format_mask({0, 32}) == "1,00000001"
    assert cpulist.format_mask(set()) == "0"
    for cpus in ({0}, {5, 63, 64}, set(range(100))):
        assert cpulist.parse_mask(cpulist.format_mask(cpus)) == cpus
    with pytest.raises(ParseError):
        cpulist.parse_mask("xyz")
    with pytest.raises(ParseError):
        cpulist.parse_mask("")


def test_the_cpuset_tree_is_found_where_the_bookings_find_it(tmp_path: Path) -> None:
    # One detection (kcm.host.cgroups.find_hierarchy) for the bookings and the fence.
    from kcm.host.cpusets import read_tree

    v1 = tmp_path / "v1"
    (v1 / "cpuset").mkdir(parents=True)
    (v1 / "cpuset/cpuset.cpus").write_text("0-3\n")
    (v1 / "cpuset/cpuset.sched_load_balance").write_text("1\n")
    (v1 / "unified").mkdir()
    (v1 / "unified/cgroup.controllers").write_text("memory pids\n")
    tree = read_tree(str(v1))
    assert tree is not None and (tree.version, tree.mount) == ("v1", f"{v1}/cpuset")
    assert [(cs.path, cs.cpus, cs.load_balance) for cs in tree.cpusets] == [("/", "0-3", True)]
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    (v2 / "cpuset.cpus.effective").write_text("0-3\n")
    tree = read_tree(str(v2))
    assert tree is not None and (tree.version, tree.mount) == ("v2", str(v2))
    hybrid = tmp_path / "hybrid"
    (hybrid / "unified").mkdir(parents=True)
    (hybrid / "unified/cgroup.controllers").write_text("cpuset memory\n")
    tree = read_tree(str(hybrid))
    assert tree is not None and (tree.version, tree.mount) == ("v2", f"{hybrid}/unified")
    none = tmp_path / "none"
    none.mkdir()
    (none / "cgroup.controllers").write_text("memory pids\n")
    assert read_tree(str(none)) is None
