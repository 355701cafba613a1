"""The cgroup backends' logic over fake cgroup trees of plain files (KCM_CGROUP_FS-style roots).

What a kernel would refuse or enforce is tested for real in test_cgroups_real.py, the order
in which levels are initialised among it (the kernel refuses a level before its parent); here:
which hierarchy is detected, what each level is given, what moves write, what scans and
look-ups report, on layouts this host doesn't have (v2, hybrid, nested systemd parents).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.errors import CgroupError, UsageError
from kcm.host import cgroups
from kcm.host.cgroups.v1 import CpusetV1
from kcm.host.cgroups.v2 import Unified
from tests.fixtures.cgroups import (
    V1_PROC_CGROUP,
    V2_PROC_CGROUP,
    build_hybrid_without_cpuset,
    build_v1,
    build_v2,
    read,
    write,
    write_proc_cgroup,
)

BOOKING = cgroups.Booking("dataplane", "2", 4242, 777)


@pytest.fixture(autouse=True)
def default_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read detect()'s defaults: not the test run's own parent (conftest)."""
    monkeypatch.delenv("KCM_CGROUP_PARENT", raising=False)


@pytest.fixture
def conf(tmp_path: Path) -> str:
    path = tmp_path / "etc" / "kcm"
    path.mkdir(parents=True)
    return str(path)


def v1(tmp_path: Path, conf: str, **kw: str) -> CpusetV1:
    root = build_v1(str(tmp_path / "cg"), **kw)
    backend = cgroups.detect(conf, root=root)
    assert isinstance(backend, CpusetV1), backend
    return backend


def v2(tmp_path: Path, conf: str, parent: str | None = None, **kw: str) -> Unified:
    root = build_v2(str(tmp_path / "cg"), **kw)
    backend = cgroups.detect(conf, root=root, parent=parent)
    assert isinstance(backend, Unified), backend
    return backend


# -- detection -------------------------------------------------------------------------------


def test_a_v1_cpuset_hierarchy_is_v1(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    assert backend.hierarchy == f"{tmp_path}/cg/cpuset"
    state = cgroups.state_id(os.path.realpath(conf))
    assert backend.subtree == f"{tmp_path}/cg/cpuset/kcm/{state}"


def test_a_unified_hierarchy_with_cpuset_is_v2(tmp_path: Path, conf: str) -> None:
    backend = v2(tmp_path, conf)
    assert backend.hierarchy == f"{tmp_path}/cg"


def test_a_unified_hierarchy_without_cpuset_is_none(tmp_path: Path, conf: str) -> None:
    root = build_v2(str(tmp_path / "cg"), controllers="cpu io memory pids")
    found = cgroups.detect(conf, root=root)
    assert isinstance(found, cgroups.Unavailable)
    assert root in found.reason


def test_this_hosts_unified_mount_without_cpuset_is_not_used(tmp_path: Path, conf: str) -> None:
    root = build_hybrid_without_cpuset(str(tmp_path / "cg"))
    found = cgroups.detect(conf, root=root)
    assert isinstance(found, cgroups.Unavailable)
    assert found.kind == "none"


def test_a_hybrid_host_with_cpuset_on_the_unified_mount_is_v2(tmp_path: Path, conf: str) -> None:
    root = build_hybrid_without_cpuset(str(tmp_path / "cg"))
    build_v2(f"{root}/unified")
    backend = cgroups.detect(conf, root=root)
    assert isinstance(backend, Unified)
    assert backend.hierarchy == f"{root}/unified"


def test_v1_cpuset_wins_over_a_unified_mount(tmp_path: Path, conf: str) -> None:
    root = build_v1(str(tmp_path / "cg"))
    build_v2(f"{root}/unified")
    assert isinstance(cgroups.detect(conf, root=root), CpusetV1)


def test_no_cgroup_root_at_all_is_none(tmp_path: Path, conf: str) -> None:
    found = cgroups.detect(conf, root=str(tmp_path / "missing"))
    assert isinstance(found, cgroups.Unavailable)
    assert "no cgroup cpuset controller" in found.reason


def test_the_root_and_parent_come_from_the_environment(
    tmp_path: Path, conf: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = build_v1(str(tmp_path / "cg"))
    monkeypatch.setenv("KCM_CGROUP_FS", root + "/")
    monkeypatch.setenv("KCM_CGROUP_PARENT", "/system.slice/kcm-bookings.service/")
    backend = cgroups.detect(conf)
    assert isinstance(backend, cgroups.Backend)
    assert backend.hierarchy == f"{root}/cpuset"
    assert backend.parent == "system.slice/kcm-bookings.service"


def test_a_bad_parent_in_the_environment_is_a_usage_error(
    tmp_path: Path, conf: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KCM_CGROUP_FS", build_v1(str(tmp_path / "cg")))
    monkeypatch.setenv("KCM_CGROUP_PARENT", "../escape")
    with pytest.raises(UsageError):
        cgroups.detect(conf)


DETECT = (
    "import sys; from kcm.host import cgroups; print(cgroups.detect(sys.argv[1], root=sys.argv[2]))"
)


@pytest.fixture
def world_readable_tmp() -> Iterator[str]:
    """A scratch directory another user can reach (pytest's tmp_path is root's only)."""
    with tempfile.TemporaryDirectory(prefix="kcm-cg-") as d:
        os.chmod(d, 0o755)
        yield d


@pytest.mark.root
def test_a_hierarchy_on_a_read_only_mount_is_none(world_readable_tmp: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    root = build_v1(f"{world_readable_tmp}/cg")
    # The read-only bind mount lives in a private mount namespace that dies with the command.
    script = 'mount --bind -o ro "$1" "$1" && exec "$2" -c "$3" "$4" "$1"'
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", root,
         sys.executable, DETECT, world_readable_tmp],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Unavailable('{root}/cpuset is on a read-only mount')"


@pytest.mark.root
def test_a_hierarchy_we_may_not_write_is_none(world_readable_tmp: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run as another user")
    root = build_v1(f"{world_readable_tmp}/cg")
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", DETECT, world_readable_tmp, root],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Unavailable('{root}/cpuset is not writable by uid 65534')"


@pytest.mark.root
def test_a_parent_delegated_to_us_is_enough(world_readable_tmp: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run as another user")
    root = build_v2(f"{world_readable_tmp}/cg")
    os.makedirs(f"{root}/delegated")
    os.chown(f"{root}/delegated", 65534, 65534)
    code = (
        "import sys; from kcm.host import cgroups;"
        "b = cgroups.detect(sys.argv[1], root=sys.argv[2], parent='delegated'); print(b.kind)"
    )
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", code, world_readable_tmp, root],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.stdout.strip() == "v2", result.stderr


# -- creating: what each level gets ------------------------------------------------------------


def levels(backend: cgroups.Backend, booking: cgroups.Booking) -> list[str]:
    """Every level from the parent down to the booking, top first."""
    names = [*backend.parent.split("/"), backend.state_id, booking.pool, booking.cpu_list]
    paths, here = [], backend.hierarchy
    for name in [*names, booking.name]:
        here = f"{here}/{name}"
        paths.append(here)
    return paths


def test_v1_levels_get_the_roots_cpus_and_nodes_and_the_list_its_own(
    tmp_path: Path, conf: str
) -> None:
    backend = v1(tmp_path, conf, cpus="0-3", mems="0-1")
    path = backend.create(BOOKING)
    assert path == backend.path(BOOKING)
    *above, list_level, booking_level = levels(backend, BOOKING)
    for level in above:
        assert read(f"{level}/cpuset.cpus") == "0-3"
        assert read(f"{level}/cpuset.mems") == "0-1"
    assert read(f"{list_level}/cpuset.cpus") == "2"
    assert read(f"{list_level}/cpuset.mems") == "0-1"
    assert read(f"{booking_level}/cpuset.cpus") == "2"
    assert read(f"{booking_level}/cpuset.mems") == "0-1"
    assert read(f"{backend.hierarchy}/cpuset.cpus") == "0-3\n"  # the root is only read


def test_v1_keeps_what_existing_levels_already_have(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf, cpus="0-3", mems="0-1")
    top = f"{backend.hierarchy}/kcm"
    write(f"{top}/cpuset.cpus", "2-3")  # an operator narrowed kcm's parent
    write(f"{top}/cpuset.mems", "1")
    backend.create(BOOKING)
    assert read(f"{top}/cpuset.cpus") == "2-3"
    assert read(f"{backend.subtree}/cpuset.cpus") == "2-3"  # levels below take their parent's
    assert read(f"{backend.subtree}/cpuset.mems") == "1"
    assert read(f"{backend.path(BOOKING)}/cpuset.mems") == "1"


def test_v1_levels_made_again_set_a_list_level_to_exactly_the_list(
    tmp_path: Path, conf: str
) -> None:
    # What create does after the kernel refused the booking's CPUs (EACCES: not within the
    # list level's): the list level, whatever it had, gets the list.
    backend = v1(tmp_path, conf)
    list_level = backend.list_path(BOOKING.pool, BOOKING.cpu_list)
    write(f"{list_level}/cpuset.cpus", "3")
    write(f"{list_level}/cpuset.mems", "0")
    assert backend._make_levels(BOOKING, BOOKING.cpu_list)
    assert read(f"{list_level}/cpuset.cpus") == "2"
    assert read(f"{list_level}/cpuset.mems") == "0"  # nodes it has are kept


def test_v1_a_second_create_of_the_same_booking_is_harmless(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    assert backend.create(BOOKING) == backend.create(BOOKING)


@pytest.mark.parametrize("pool", ["", ".hidden", "a/b"])
def test_create_refuses_a_pool_that_is_no_name(tmp_path: Path, conf: str, pool: str) -> None:
    backend = v1(tmp_path, conf)
    with pytest.raises(ValueError, match="pool"):
        backend.create(cgroups.Booking(pool, "2", 1, 1))


def test_a_list_named_in_cmks_order_is_a_list_level_of_its_own(tmp_path: Path, conf: str) -> None:
    # CMK wrote "2,1": the state keeps that name, and so does the list's level.
    backend = v1(tmp_path, conf)
    booking = cgroups.Booking("dataplane", "2,1", 1, 1)
    path = backend.create(booking)
    assert path == f"{backend.subtree}/dataplane/2,1/1-1"
    assert backend.scan().bookings == [booking]


@pytest.mark.parametrize("cpu_list", ["", "../x", "2,2", "1-1", "01"])
def test_create_refuses_a_list_that_is_no_list_name(
    tmp_path: Path, conf: str, cpu_list: str
) -> None:
    backend = v1(tmp_path, conf)
    with pytest.raises(ValueError, match="CPU list"):
        backend.create(cgroups.Booking("dataplane", cpu_list, 1, 1))


def test_v2_enables_cpuset_down_to_the_list_and_fences_the_booking(
    tmp_path: Path, conf: str
) -> None:
    backend = v2(tmp_path, conf, mems="0-1")
    backend.create(BOOKING)
    *above, list_level, booking_level = levels(backend, BOOKING)
    for level in [backend.hierarchy, *above, list_level]:
        assert read(f"{level}/cgroup.subtree_control") == "+cpuset", level
    assert not os.path.exists(f"{booking_level}/cgroup.subtree_control")  # a leaf: it holds
    assert read(f"{booking_level}/cpuset.cpus") == "2"
    assert read(f"{booking_level}/cpuset.mems") == "0-1"
    for level in [*above, list_level]:
        assert not os.path.exists(f"{level}/cpuset.cpus")  # empty: inherit, nothing to race


def test_v2_only_reads_levels_that_delegate_cpuset_already(tmp_path: Path, conf: str) -> None:
    parent = "system.slice/kcm-bookings.service"
    root = build_v2(str(tmp_path / "cg"), subtree_control="cpuset cpu io memory pids")
    for level in ("system.slice", parent):
        write(f"{root}/{level}/cgroup.subtree_control", "cpuset\n")
    backend = cgroups.detect(conf, root=root, parent=parent)
    assert isinstance(backend, Unified)
    backend.create(BOOKING)
    assert read(f"{root}/cgroup.subtree_control") == "cpuset cpu io memory pids\n"
    assert read(f"{root}/system.slice/cgroup.subtree_control") == "cpuset\n"
    assert read(f"{root}/{parent}/cgroup.subtree_control") == "cpuset\n"
    assert read(f"{backend.subtree}/cgroup.subtree_control") == "+cpuset"


# -- moving in and out -------------------------------------------------------------------------


def test_v1_enter_moves_the_calling_thread_and_returns_the_origin(
    tmp_path: Path, conf: str
) -> None:
    backend = v1(tmp_path, conf)
    proc = str(tmp_path / "proc")
    write_proc_cgroup(proc, "self", V1_PROC_CGROUP.format(path="/docker/abc"))
    backend.create(BOOKING)
    assert backend.enter(BOOKING, proc) == "/docker/abc"
    assert read(f"{backend.path(BOOKING)}/tasks") == "0"  # "0": the writer's own thread
    assert not os.path.exists(f"{backend.path(BOOKING)}/cgroup.procs")  # not the 10 ms write


def test_v2_enter_moves_the_process(tmp_path: Path, conf: str) -> None:
    backend = v2(tmp_path, conf)
    proc = str(tmp_path / "proc")
    write_proc_cgroup(proc, "self", V2_PROC_CGROUP.format(path="/user.slice/session-1.scope"))
    backend.create(BOOKING)
    assert backend.enter(BOOKING, proc) == "/user.slice/session-1.scope"
    assert read(f"{backend.path(BOOKING)}/cgroup.procs") == "0"


def test_leave_writes_into_the_origin(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    write(f"{backend.hierarchy}/docker/abc/tasks", "")
    backend.leave("/docker/abc")
    assert read(f"{backend.hierarchy}/docker/abc/tasks") == "0"


def test_leave_falls_back_to_the_nearest_remaining_ancestor(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    write(f"{backend.hierarchy}/docker/tasks", "")
    backend.leave("/docker/abc/gone")
    assert read(f"{backend.hierarchy}/docker/tasks") == "0"


def test_enter_into_a_missing_booking_is_an_error_naming_it(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    proc = str(tmp_path / "proc")
    write_proc_cgroup(proc, "self", V1_PROC_CGROUP.format(path="/"))
    with pytest.raises(CgroupError) as caught:
        backend.enter(BOOKING, proc)
    assert backend.path(BOOKING) in caught.value.message


# -- reading -----------------------------------------------------------------------------------


def test_pids_include_every_cgroup_below_the_booking(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    path = backend.create(BOOKING)
    write(f"{path}/cgroup.procs", "300\n100\n")
    write(f"{path}/inner/cgroup.procs", "200\n")
    write(f"{path}/inner/deeper/cgroup.procs", "400\n100\n")
    assert backend.pids(path) == [100, 200, 300, 400]
    assert backend.populated(path)
    list_level = backend.list_path(BOOKING.pool, BOOKING.cpu_list)
    assert backend.pids(list_level) == [100, 200, 300, 400]


def test_v1_a_booking_is_populated_by_processes_of_its_children(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    path = backend.create(BOOKING)
    assert not backend.populated(path)
    write(f"{path}/inner/cgroup.procs", "200\n")
    assert backend.populated(path)


def test_a_missing_cgroup_has_no_pids(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    assert backend.pids(backend.path(BOOKING)) == []
    assert not backend.populated(backend.path(BOOKING))


def test_v2_populated_is_the_kernels_count(tmp_path: Path, conf: str) -> None:
    backend = v2(tmp_path, conf)
    path = backend.create(BOOKING)
    write(f"{path}/cgroup.events", "populated 1\nfrozen 0\n")
    assert backend.populated(path)
    write(f"{path}/cgroup.events", "populated 0\nfrozen 0\n")
    assert not backend.populated(path)


def test_scan_lists_bookings_and_the_strays(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    ours = [
        cgroups.Booking("dataplane", "2", 10, 1),
        cgroups.Booking("dataplane", "3", 11, 2),
        cgroups.Booking("infra", "0-1", 12, 3),
        cgroups.Booking("infra", "0-1", 13, 4),
    ]
    for booking in ours:
        backend.create(booking)
    sub = backend.subtree
    os.makedirs(f"{sub}/dataplane/2/not-a-booking")
    os.makedirs(f"{sub}/dataplane/3,3/1-1")  # no list the state can have (CPU 3 twice)
    os.makedirs(f"{sub}/.hidden/2/1-1")
    write(f"{sub}/infra/0-1/cgroup.procs", "999\n")  # a process on an intermediate level
    write(f"{sub}/dataplane/2/10-1/inner/cgroup.procs", "5\n")  # the workload's own: fine
    found = backend.scan()
    assert sorted(found.bookings, key=lambda b: b.pid) == ours
    assert sorted(found.strays) == [
        ".hidden",
        "dataplane/2/not-a-booking",
        "dataplane/3,3",
        "infra/0-1",
    ]


def test_scan_of_a_state_without_a_subtree_is_empty(tmp_path: Path, conf: str) -> None:
    found = v2(tmp_path, conf).scan()
    assert found.bookings == [] and found.strays == []


def test_booking_of_reads_proc_through_the_given_root(tmp_path: Path, conf: str) -> None:
    backend = v1(tmp_path, conf)
    proc = str(tmp_path / "proc")
    inside = backend.path(BOOKING)[len(backend.hierarchy) :]
    write_proc_cgroup(proc, 100, V1_PROC_CGROUP.format(path=inside))
    write_proc_cgroup(proc, 101, V1_PROC_CGROUP.format(path=f"{inside}/inner"))
    write_proc_cgroup(proc, 102, V1_PROC_CGROUP.format(path="/"))
    other = inside.replace(backend.state_id, "other-state")
    write_proc_cgroup(proc, 103, V1_PROC_CGROUP.format(path=other))
    assert backend.booking_of(proc, 100) == BOOKING
    assert backend.booking_of(proc, 101) == BOOKING
    assert backend.booking_of(proc, 102) is None
    assert backend.booking_of(proc, 103) is None
    assert backend.booking_of(proc, 104) is None  # gone


def test_v2_booking_of_uses_the_unified_line(tmp_path: Path, conf: str) -> None:
    backend = v2(tmp_path, conf)
    proc = str(tmp_path / "proc")
    inside = backend.path(BOOKING)[len(backend.hierarchy) :]
    write_proc_cgroup(proc, 100, f"3:cpuset:/\n0::{inside}\n")
    assert backend.booking_of(proc, 100) == BOOKING


# -- start-up cost ------------------------------------------------------------------------------


def top_level_imports(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_the_backends_add_no_module_to_isolates_imports() -> None:
    before = top_level_imports("import kcm.isolate")
    after = top_level_imports(
        "import kcm.isolate; import kcm.host.cgroups.v1; import kcm.host.cgroups.v2"
    )
    # isolate imports the package (detect); a backend module is imported once detected.
    assert "kcm.host.cgroups" in before
    assert after - before == {"kcm.host.cgroups.v1", "kcm.host.cgroups.v2"}
    # What only a full pool or a command's leftovers need stays off the start-up path.
    assert not before & {"kcm.reclaim", "kcm.holders", "dataclasses", "typing"}


# -- isolate's placement: the booking's CPUs and memory nodes as the host has them --------------


@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
def test_a_placed_booking_gets_the_lists_memory_nodes(tmp_path: Path, conf: str, make) -> None:  # type: ignore[no-untyped-def]
    backend = make(tmp_path, conf, mems="0-1")
    assert backend.usable_mems("1") == "1"
    assert backend.usable_mems("1-3") == "1"
    assert backend.usable_mems("2") == ""  # a node the hierarchy lacks
    booking = cgroups.Booking("dataplane", "2", 1, 1)
    path = backend.create(booking, "2", "1")
    assert read(f"{path}/cpuset.mems") == "1"
    unplaced = cgroups.Booking("dataplane", "3", 2, 2)
    assert read(f"{backend.create(unplaced)}/cpuset.mems") == "0-1"  # every node, as before


@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
def test_a_list_naming_cpus_the_host_lacks_gets_the_ones_it_has(
    tmp_path: Path, conf: str, make
) -> None:  # type: ignore[no-untyped-def]
    backend = make(tmp_path, conf, cpus="0-3")
    assert backend.usable_cpus("2") == "2"
    assert backend.usable_cpus("1,9") == "1"  # sched_setaffinity would ignore 9 too
    assert backend.usable_cpus("63") == ""
