"""contrib/systemd/kcm-bookings.service: the unit that delegates a cgroup v2 subtree to kcm.

systemd itself can't run here; systemd-analyze checks the unit, and the guest (v2) runs the
unit's holder command by hand to show the subtree it leaves behind takes bookings.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.errors import CgroupError
from kcm.host import cgroups
from tests.fixtures.cgroups import RealSubtree, cpus_allowed, online_cpus, read, real_subtree

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib/systemd/kcm-bookings.service"
SYSTEM_UNITS = ("/usr/lib/systemd/system", "/lib/systemd/system")


@pytest.fixture(autouse=True)
def default_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read detect()'s defaults: not the test run's own parent (conftest)."""
    monkeypatch.delenv("KCM_CGROUP_PARENT", raising=False)


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def holder_script() -> str:
    """The shell script of the unit's ExecStart, with systemd's ``$$`` escapes undone."""
    (exec_start,) = settings(UNIT.read_text())["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/bin/sh", "-c"]
    return argv[2].replace("$$", "$")


def test_the_unit_delegates_cpuset_and_keeps_workloads_on_stop() -> None:
    unit = settings(UNIT.read_text())
    assert unit["Delegate"] == ["cpuset"]
    assert unit["KillMode"] == ["process"]  # a restart must not kill the booked workloads
    assert "ProtectControlGroups" not in unit  # the holder writes its own cgroup
    assert unit["WantedBy"] == ["multi-user.target"]


@pytest.fixture
def systemd_root(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    system = next((d for d in SYSTEM_UNITS if os.path.isdir(d)), None)
    if system is None:
        pytest.skip("no systemd unit directory on this machine")
    root = tmp_path / "root"
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system")
    shell = root / "bin/sh"
    shell.parent.mkdir(parents=True)
    shell.write_text("#!/bin/sh\n")
    shell.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verify_accepts_the_unit(systemd_root: Path) -> None:
    result = verify(systemd_root)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_broken_unit(systemd_root: Path) -> None:
    unit = systemd_root / "etc/systemd/system" / UNIT.name
    unit.write_text(unit.read_text().replace("Delegate=", "Delgate="))
    assert "Delgate" in verify(systemd_root).stderr


# -- in the guest: the holder, run by hand where systemd would run it --------------------------


@pytest.fixture
def v2(tmp_path: Path) -> Iterator[RealSubtree]:
    yield from real_subtree("v2", str(tmp_path))


def start_in(cgroup_dir: str, real: RealSubtree, *argv: str) -> subprocess.Popen[str]:
    """Start ``argv`` inside ``cgroup_dir`` (as systemd starts a unit's process in its cgroup)."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", 'echo 0 >"$0/cgroup.procs" && exec "$@"', cgroup_dir, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    real.children.append(proc)
    return proc


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def unit_backend(real: RealSubtree) -> tuple[cgroups.Backend, str]:
    """A backend whose parent is a unit-like cgroup below the test's own parent."""
    unit = f"{real.backend.parent}/kcm-bookings.service"
    os.makedirs(f"{real.backend.hierarchy}/{unit}")
    backend = cgroups.detect(real.conf, root=real.root, parent=unit)
    assert isinstance(backend, cgroups.Backend)
    return backend, f"{real.backend.hierarchy}/{unit}"


@pytest.mark.guest("v2")
def test_a_unit_cgroup_holding_its_process_cannot_delegate(v2: RealSubtree) -> None:
    backend, unit_dir = unit_backend(v2)
    start_in(unit_dir, v2, "sleep", "300")
    wait_for(lambda: read(f"{unit_dir}/cgroup.procs").split() != [])
    booking = cgroups.Booking("dataplane", str(max(online_cpus())), os.getpid(), 1)
    with pytest.raises(CgroupError) as caught:
        backend.create(booking)
    assert unit_dir in caught.value.message
    assert "holds processes" in caught.value.message


@pytest.mark.guest("v2")
def test_the_units_holder_leaves_the_subtree_free_for_bookings(v2: RealSubtree) -> None:
    if cgroups.find_hierarchy("/sys/fs/cgroup") != ("v2", "/sys/fs/cgroup"):
        pytest.skip("the unit's holder expects the unified hierarchy at /sys/fs/cgroup")
    backend, unit_dir = unit_backend(v2)
    holder = start_in(unit_dir, v2, "/bin/sh", "-c", holder_script())
    wait_for(lambda: os.path.exists(f"{unit_dir}/holder/cgroup.procs"))
    wait_for(lambda: read(f"{unit_dir}/holder/cgroup.procs").split() == [str(holder.pid)])
    assert read(f"{unit_dir}/cgroup.procs").split() == []
    cpu = str(max(online_cpus()))
    booking = cgroups.Booking("dataplane", cpu, os.getpid(), 2)
    path = backend.create(booking)
    proc, _ = v2.spawn_in(booking, "sleep", "300", parent=backend.parent)
    assert cpus_allowed(proc.pid) == cpu
    assert backend.pids(path) == [proc.pid]
    assert holder.poll() is None  # the holder still sleeps, in its leaf
