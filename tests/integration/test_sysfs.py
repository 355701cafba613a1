"""kcm.host.sysfs against this machine's /sys and against fake trees of named topologies."""

from __future__ import annotations

import os
from pathlib import Path

from kcm import cpulist
from kcm.host import sysfs
from tests.fixtures.sysfs import SEED_16, build_sysfs


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
