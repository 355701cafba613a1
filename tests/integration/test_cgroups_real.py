"""Booking cgroups on a real kernel: pinned, inherited, inescapable, removed only when empty.

v1 runs on this host (root, cgroup v1 cpuset at /sys/fs/cgroup/cpuset); v2 runs inside the
project's guest kernel (tests/guest), and skips wherever no writable v2 cpuset hierarchy is
mounted. Every test works under a parent unique to the run and removes all of it, processes
first, also when it fails; it only ever moves processes it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kcm.errors import CgroupError
from kcm.host import cgroups
from tests.fixtures.cgroups import RealSubtree, cpus_allowed, online_cpus, read, real_subtree

subtree = contextmanager(real_subtree)

pytestmark = pytest.mark.root


@pytest.fixture(params=["v1", pytest.param("v2", marks=pytest.mark.guest("v2"))])
def real(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RealSubtree]:
    yield from real_subtree(request.param, str(tmp_path))


def last_cpu() -> str:
    return str(max(online_cpus()))


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def pids_of(command_line: str) -> list[int]:
    """Live processes whose command line is exactly ``command_line`` (words joined by spaces)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            continue
        if b" ".join(w for w in words if w).decode(errors="replace") == command_line:
            found.append(int(name))
    return found


def test_a_process_in_a_booking_runs_only_on_the_list(real: RealSubtree) -> None:
    cpu = last_cpu()
    booking = real.booking("dataplane", cpu)
    path = real.backend.create(booking)
    assert read(f"{path}/cpuset.cpus").strip() == cpu
    proc, origin = real.spawn_in(booking, "sleep", "300")
    assert origin == "/" or not origin.startswith(f"/{real.backend.parent}/")
    assert cpus_allowed(proc.pid) == cpu
    assert real.backend.booking_of("/proc", proc.pid) == booking
    assert real.backend.pids(path) == [proc.pid]
    assert real.backend.populated(path)


def test_every_level_is_initialised_top_down(real: RealSubtree) -> None:
    # The kernel is the judge of the order: v1 refuses CPUs or nodes on a level before its
    # parent has them (EACCES), v2 has no cpuset files below a level that doesn't enable it.
    cpu = last_cpu()
    parent = f"{real.backend.parent}/a/b"  # a nested parent: more levels, all new
    backend = cgroups.detect(real.conf, root=real.root, parent=parent)
    assert isinstance(backend, cgroups.Backend)
    booking = real.booking("dataplane", cpu)
    path = backend.create(booking)
    levels = levels_down_to(backend, path)
    hierarchy = backend.hierarchy
    if backend.kind == "v1":
        for level in levels[:-2]:
            assert read(f"{level}/cpuset.cpus") == read(f"{hierarchy}/cpuset.cpus"), level
            assert read(f"{level}/cpuset.mems") == read(f"{hierarchy}/cpuset.mems"), level
        for level in levels[-2:]:
            assert read(f"{level}/cpuset.cpus").strip() == cpu, level
    else:
        for level in [hierarchy, *levels[:-1]]:
            assert "cpuset" in read(f"{level}/cgroup.subtree_control").split(), level
        assert read(f"{path}/cpuset.cpus").strip() == cpu
    proc, _ = real.spawn_in(booking, "sleep", "300", parent=parent)
    assert cpus_allowed(proc.pid) == cpu


def test_widening_the_affinity_inside_a_booking_fails(real: RealSubtree) -> None:
    if len(online_cpus()) < 2:
        pytest.skip("needs a CPU outside the booking")
    cpu = last_cpu()
    booking = real.booking("dataplane", cpu)
    real.backend.create(booking)
    proc, _ = real.spawn_in(booking, "sh", "-c", 'taskset -pc 0 $$; echo "status $?"; sleep 300')
    assert proc.stdout is not None
    status = proc.stdout.readline().strip()
    assert status != "status 0", "taskset widened a booked process's affinity"
    assert cpus_allowed(proc.pid) == cpu


def test_children_and_daemons_stay_in_the_booking_after_the_command_exits(
    real: RealSubtree,
) -> None:
    cpu = last_cpu()
    booking = real.booking("dataplane", cpu)
    path = real.backend.create(booking)
    marker = f"{os.getpid()}{time.monotonic_ns() % 10_000}"
    script = f"sleep 30{marker}1 & setsid sleep 30{marker}2 & (sleep 30{marker}3 &) ; exit 0"
    proc, _ = real.spawn_in(booking, "sh", "-c", script)
    assert proc.wait(10) == 0
    # A plain child, a setsid daemon, a double fork; setsid may fork before it execs sleep.
    wait_for(lambda: all(len(pids_of(f"sleep 30{marker}{n}")) == 1 for n in (1, 2, 3)))
    leftovers = {n: pids_of(f"sleep 30{marker}{n}") for n in (1, 2, 3)}
    in_booking = real.backend.pids(path)
    for n, (pid,) in leftovers.items():
        assert pid in in_booking, f"leftover {n} escaped its booking"
        assert real.backend.booking_of("/proc", pid) == booking
        assert cpus_allowed(pid) == cpu
    assert real.backend.populated(path)
    assert real.backend.remove(booking) is False
    assert os.path.isdir(path)
    for (pid,) in leftovers.values():
        os.kill(pid, 9)
    wait_for(lambda: not real.backend.populated(path))
    assert real.backend.remove(booking) is True
    assert not os.path.exists(path)


def test_remove_refuses_a_populated_booking_and_takes_an_empty_one(real: RealSubtree) -> None:
    booking = real.booking("infra", last_cpu())
    path = real.backend.create(booking)
    proc, _ = real.spawn_in(booking, "sleep", "300")
    assert real.backend.remove(booking) is False
    assert real.backend.pids(path) == [proc.pid]
    proc.kill()
    proc.wait(10)
    wait_for(lambda: not real.backend.populated(path))
    assert real.backend.remove(booking) is True
    assert real.backend.remove(booking) is True  # already gone is gone
    assert real.backend.scan().bookings == []


def test_reclaim_frees_a_list_only_once_no_booking_of_it_holds_a_process(
    real: RealSubtree,
) -> None:
    cpu = last_cpu()
    dead = real.booking("dataplane", cpu, 1)  # its kcm died before it entered
    held = real.booking("dataplane", cpu, 2)  # its kcm died, its command's daemon lives
    for booking in (dead, held):
        real.backend.create(booking)
    proc, _ = real.spawn_in(held, "sleep", "300")
    assert real.backend.reclaim("dataplane", cpu) is False
    assert not os.path.exists(real.backend.path(dead))
    assert real.backend.pids(real.backend.path(held)) == [proc.pid]
    assert real.backend.populated(real.backend.list_path("dataplane", cpu))
    proc.kill()
    proc.wait(10)
    wait_for(lambda: not real.backend.populated(real.backend.path(held)))
    assert real.backend.reclaim("dataplane", cpu) is True
    assert real.backend.scan().bookings == []
    assert real.backend.reclaim("infra", cpu) is True  # a list without bookings is free


def test_remove_takes_empty_cgroups_the_workload_made_inside(real: RealSubtree) -> None:
    booking = real.booking("infra", last_cpu())
    path = real.backend.create(booking)
    os.makedirs(f"{path}/inner/deeper")
    assert real.backend.remove(booking) is True
    assert not os.path.exists(path)


def test_leave_returns_the_process_where_it_was(real: RealSubtree) -> None:
    booking = real.booking("infra", last_cpu())
    real.backend.create(booking)
    code = (
        "import os, sys; from kcm.host import cgroups;"
        "b = cgroups.detect(sys.argv[1], root=sys.argv[2], parent=sys.argv[3]);"
        "k = cgroups.Booking(sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]));"
        "before = b.cgroup_of('/proc', 'self'); origin = b.enter(k, '/proc');"
        "inside = b.cgroup_of('/proc', 'self'); b.leave(origin);"
        "print(before, origin, inside, b.cgroup_of('/proc', 'self'))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            real.conf,
            real.root,
            real.backend.parent,
            booking.pool,
            booking.cpu_list,
            str(booking.pid),
            str(booking.start_time),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    before, origin, inside, after = out
    assert origin == before
    assert inside == real.backend.path(booking)[len(real.backend.hierarchy) :]
    assert after == before


def test_leave_goes_to_the_nearest_ancestor_when_the_origin_is_gone(real: RealSubtree) -> None:
    booking = real.booking("infra", last_cpu())
    real.backend.create(booking)
    origin_dir = f"{real.top}/origin"
    os.mkdir(origin_dir)
    if real.backend.kind == "v1":
        for name in ("cpuset.cpus", "cpuset.mems"):
            with (
                open(f"{real.backend.hierarchy}/{name}") as f,
                open(f"{origin_dir}/{name}", "w") as g,
            ):
                g.write(f.read())
    move = real.backend.MOVE_FILE
    code = (
        "import os, sys; from kcm.host import cgroups;"
        "b = cgroups.detect(sys.argv[1], root=sys.argv[2], parent=sys.argv[3]);"
        "k = cgroups.Booking(sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]));"
        f"open(sys.argv[8] + '/{move}', 'w').write('0');"
        "origin = b.enter(k, '/proc'); os.rmdir(sys.argv[8]); b.leave(origin);"
        "print(origin, b.cgroup_of('/proc', 'self'))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            real.conf,
            real.root,
            real.backend.parent,
            booking.pool,
            booking.cpu_list,
            str(booking.pid),
            str(booking.start_time),
            origin_dir,
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    origin, after = out.stdout.split()
    assert origin == f"/{real.backend.parent}/origin"
    # v1: the parent takes it; v2: the parent delegates cpuset and may hold no process, so
    # the next ancestor that may (the root) does.
    assert after == (f"/{real.backend.parent}" if real.backend.kind == "v1" else "/")


HALF_MADE = [
    ("v1", "mkdir"),
    ("v1", "cpus"),  # v1 only: a v2 level has one step (+cpuset), no half of it
    pytest.param("v2", "mkdir", marks=pytest.mark.guest("v2")),
]


@pytest.mark.parametrize(("kind", "killed_after"), HALF_MADE)
def test_a_level_another_creator_left_half_made_is_completed(
    kind: str, killed_after: str, tmp_path: Path
) -> None:
    with subtree(kind, str(tmp_path)) as real:
        cpu = last_cpu()
        booking = real.booking("dataplane", cpu)
        list_path = real.backend.list_path(booking.pool, booking.cpu_list)
        os.makedirs(list_path)  # mkdir'ed by "another kcm", killed before it wrote anything
        if kind == "v1":
            assert read(f"{list_path}/cpuset.cpus").strip() == ""
        if killed_after == "cpus":  # ... or killed between its two writes of every level
            for level in levels_down_to(real.backend, list_path):
                source = os.path.dirname(level)
                with open(f"{level}/cpuset.cpus", "w") as f:
                    f.write(read(f"{source}/cpuset.cpus") if level != list_path else cpu)
        path = real.backend.create(booking)
        if kind == "v1":
            assert read(f"{list_path}/cpuset.cpus").strip() == cpu
            assert read(f"{real.backend.subtree}/cpuset.cpus") == read(
                f"{real.backend.hierarchy}/cpuset.cpus"
            )
        else:
            assert "cpuset" in read(f"{list_path}/cgroup.subtree_control").split()
        proc, _ = real.spawn_in(booking, "sleep", "300")
        assert cpus_allowed(proc.pid) == cpu
        assert real.backend.pids(path) == [proc.pid]


def levels_down_to(backend: cgroups.Backend, path: str) -> list[str]:
    """The levels from the hierarchy's first one down to ``path``, top first."""
    parts = path[len(backend.hierarchy) + 1 :].split("/")
    return [f"{backend.hierarchy}/{'/'.join(parts[: i + 1])}" for i in range(len(parts))]


CREATOR = """
import os, sys
from kcm.host import cgroups
root, parent, conf, pool, cpu_list = sys.argv[1:6]
backend = cgroups.detect(conf, root=root, parent=parent)
booking = cgroups.Booking(pool, cpu_list, os.getpid(), 7)
print("ready", flush=True)
sys.stdin.read(1)  # the barrier: every creator is loaded and waiting
path = backend.create(booking)
backend.enter(booking, "/proc")
with open("/proc/self/status") as f:
    allowed = [l.split()[1] for l in f if l.startswith("Cpus_allowed_list:")][0]
print(path, allowed, flush=True)
sys.stdin.read(1)  # stay inside until the test has looked
"""


def test_concurrent_creators_of_the_same_levels_all_succeed(real: RealSubtree) -> None:
    cpus = sorted(online_cpus())
    lists = [str(cpus[-1]), str(cpus[0])]
    for round_no in range(8):
        parent = f"{real.backend.parent}/r{round_no}"  # every level new in every round
        creators = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CREATOR,
                    real.root,
                    parent,
                    real.conf,
                    f"pool{i % 2}",
                    lists[(i // 2) % 2],
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(8)
        ]
        real.children.extend(creators)
        for proc in creators:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in creators:
            assert proc.stdin is not None
            proc.stdin.write("g")
            proc.stdin.flush()
        for i, proc in enumerate(creators):
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            assert len(line) == 2, proc.stderr.read() if proc.stderr else ""
            path, allowed = line
            want = lists[(i // 2) % 2]
            assert allowed == want
            assert path.endswith(f"/pool{i % 2}/{want}/{proc.pid}-7")
            assert read(f"{path}/cpuset.cpus").strip() == want
        for proc in creators:
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(10) == 0


def test_scan_finds_bookings_and_strays_and_prune_keeps_bookings(real: RealSubtree) -> None:
    cpu = last_cpu()
    a = real.booking("dataplane", cpu, 1)
    b = real.booking("infra", cpu, 2)
    for booking in (a, b):
        real.backend.create(booking)
    stray = f"{real.backend.list_path('infra', cpu)}/not-a-booking"
    os.mkdir(stray)
    found = real.backend.scan()
    assert sorted(found.bookings, key=lambda k: k.pool) == [a, b]
    assert found.strays == [f"infra/{cpu}/not-a-booking"]
    assert real.backend.prune() == 0  # every level still holds a booking or a stray
    assert real.backend.remove(a) is True
    assert real.backend.prune() == 2  # dataplane/<cpu>, then dataplane
    assert os.path.isdir(real.backend.path(b))
    os.rmdir(stray)
    assert real.backend.remove(b) is True
    assert real.backend.prune() == 3  # infra/<cpu>, infra, the state's own level
    assert not os.path.exists(real.backend.subtree)


def test_prune_leaves_the_levels_it_is_told_to_keep(real: RealSubtree) -> None:
    cpu = last_cpu()
    booking = real.booking("dataplane", cpu, 1)
    real.backend.create(booking)
    assert real.backend.remove(booking) is True
    kept = real.backend.list_path("dataplane", cpu)
    assert real.backend.prune(frozenset({kept})) == 0  # the list's level, so every one above
    assert os.path.isdir(kept)
    assert real.backend.prune(frozenset({f"{real.backend.subtree}/dataplane"})) == 1
    assert not os.path.exists(kept)
    assert real.backend.prune() == 2  # dataplane, then the state's own level
    assert not os.path.exists(real.backend.subtree)


def test_set_cpuset_narrows_a_booking(real: RealSubtree) -> None:
    cpus = sorted(online_cpus())
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    from kcm import cpulist

    both = cpulist.format(cpus[-2:])
    booking = real.booking("controlplane", both)
    real.backend.create(booking)
    proc, _ = real.spawn_in(booking, "sleep", "300")
    assert cpus_allowed(proc.pid) == both
    real.backend.set_cpuset(booking, cpus=str(cpus[-1]))
    assert cpus_allowed(proc.pid) == str(cpus[-1])


def test_v1_set_cpuset_outside_the_list_is_an_error_naming_the_file(tmp_path: Path) -> None:
    # v2 takes any CPUs and intersects them with the parent's: v1 only.
    with subtree("v1", str(tmp_path)) as real:
        cpus = sorted(online_cpus())
        if len(cpus) < 2:
            pytest.skip("needs two CPUs")
        booking = real.booking("dataplane", str(cpus[-1]))
        path = real.backend.create(booking)
        with pytest.raises(CgroupError) as caught:
            real.backend.set_cpuset(booking, cpus=str(cpus[0]))
        assert f"{path}/cpuset.cpus" in caught.value.message
        assert "\n" not in caught.value.message


def test_detect_on_this_host_finds_its_hierarchy(tmp_path: Path) -> None:
    for kind in ("v1", "v2"):
        found = cgroups.find_hierarchy(cgroups.DEFAULT_CGROUP_FS)
        if found is not None and found[0] == kind and os.geteuid() == 0:
            backend = cgroups.detect(str(tmp_path), root=cgroups.DEFAULT_CGROUP_FS)
            assert isinstance(backend, cgroups.Backend)
            assert backend.kind == kind
            assert backend.hierarchy == found[1]
            return
    pytest.skip("no cpuset hierarchy on this kernel")
