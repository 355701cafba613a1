"""In the guest, cgroup v2 on 6.12: the cpuset controller, a cpuset that pins, isolated partitions.

These run only inside the guest (tests/guest/test_boot.py boots it); they are also the
example to copy for a test that needs the unified hierarchy.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.kernel import remove_cgroup, status_field

pytestmark = pytest.mark.guest("v2")

ROOT = Path("/sys/fs/cgroup")


@pytest.fixture
def cpuset_in_root() -> Iterator[None]:
    """The root hands the cpuset controller to its children for the test, as before after it."""
    control = ROOT / "cgroup.subtree_control"
    had = "cpuset" in control.read_text().split()
    if not had:
        control.write_text("+cpuset")
    yield
    if not had:
        control.write_text("-cpuset")


@pytest.fixture
def kcm_cgroup(cpuset_in_root: None) -> Iterator[Path]:
    """A cgroup under the root named for this test run; it and all below it removed after."""
    base = ROOT / f"kcm-guest-{os.getpid()}"
    base.mkdir()
    yield base
    for path in sorted(
        (p for p in [base, *base.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)
    ):
        partition = path / "cpuset.cpus.partition"
        if partition.exists() and partition.read_text().split()[0] != "member":
            partition.write_text("member")
        remove_cgroup(path)


def test_the_root_offers_the_cpuset_controller() -> None:
    assert "cpuset" in (ROOT / "cgroup.controllers").read_text().split()


def test_a_cpuset_of_cpu_3_pins_every_process_started_in_it(kcm_cgroup: Path) -> None:
    (kcm_cgroup / "cgroup.subtree_control").write_text("+cpuset")
    assert (kcm_cgroup / "cgroup.subtree_control").read_text().split() == ["cpuset"]
    booking = kcm_cgroup / "booking"
    booking.mkdir()
    (booking / "cpuset.cpus").write_text("3")
    (booking / "cpuset.mems").write_text("0")
    assert (booking / "cpuset.cpus.effective").read_text().strip() == "3"

    # The shell moves itself in; cat is its child, started inside the cgroup.
    procs = booking / "cgroup.procs"
    done = subprocess.run(
        ["sh", "-c", f"echo $$ > {procs} && cat /proc/self/status /proc/self/cgroup"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert status_field(done.stdout, "Cpus_allowed_list") == "3"
    assert done.stdout.rstrip().endswith(f"0::/{booking.relative_to(ROOT)}")


def test_a_process_in_the_cpuset_cannot_take_a_cpu_outside_it(kcm_cgroup: Path) -> None:
    (kcm_cgroup / "cgroup.subtree_control").write_text("+cpuset")
    booking = kcm_cgroup / "booking"
    booking.mkdir()
    (booking / "cpuset.cpus").write_text("3")
    (booking / "cpuset.mems").write_text("0")

    done = subprocess.run(
        ["sh", "-c", f"echo $$ > {booking / 'cgroup.procs'} && exec taskset -pc 0 $$"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "Invalid argument" in done.stderr


def test_an_isolated_partition_shows_in_the_roots_cpuset_cpus_isolated(kcm_cgroup: Path) -> None:
    isolated = ROOT / "cpuset.cpus.isolated"
    workqueues = Path("/sys/devices/virtual/workqueue/cpumask")
    assert isolated.read_text().strip() == ""
    unbound_before = workqueues.read_text().strip()

    dataplane = kcm_cgroup
    (dataplane / "cpuset.cpus").write_text("3")
    (dataplane / "cpuset.cpus.exclusive").write_text("3")
    (dataplane / "cpuset.cpus.partition").write_text("isolated")

    assert (dataplane / "cpuset.cpus.partition").read_text().strip() == "isolated"
    assert isolated.read_text().strip() == "3"
    # The kernel takes an isolated partition's CPUs out of the unbound workqueues' mask too.
    assert int(workqueues.read_text(), 16) & (1 << 3) == 0

    (dataplane / "cpuset.cpus.partition").write_text("member")
    assert isolated.read_text().strip() == ""
    assert workqueues.read_text().strip() == unbound_before
