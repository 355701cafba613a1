"""In the guest, the cgroup v1 cpuset on 6.1: a cpuset holds what starts in it, and fences it.

These run only inside the guest (tests/guest/test_boot.py boots it); they are also the
example to copy for a test that needs the v1 cpuset hierarchy.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.kernel import guest_cpus, remove_cgroup, status_field

pytestmark = pytest.mark.guest("v1")

ROOT = Path("/sys/fs/cgroup/cpuset")


@pytest.fixture
def cpuset_of_cpu_1() -> Iterator[Path]:
    """A cpuset of CPU 1 and memory node 0, named for this test run; removed after."""
    path = ROOT / f"kcm-guest-{os.getpid()}"
    path.mkdir()
    try:
        (path / "cpuset.cpus").write_text("1")
        (path / "cpuset.mems").write_text("0")
        yield path
    finally:
        remove_cgroup(path)


def test_the_hierarchy_is_the_v1_cpuset() -> None:
    assert (ROOT / "cpuset.cpus").read_text().strip() == f"0-{guest_cpus() - 1}"
    assert (ROOT / "tasks").exists()
    assert not Path("/sys/fs/cgroup/cgroup.controllers").exists()


def test_a_cpuset_holds_a_process_and_its_children(cpuset_of_cpu_1: Path) -> None:
    # The shell moves itself in; cat is its child, started inside the cpuset.
    done = subprocess.run(
        ["sh", "-c", f"echo $$ > {cpuset_of_cpu_1 / 'tasks'} && cat /proc/self/status"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert status_field(done.stdout, "Cpus_allowed_list") == "1"
    assert status_field(done.stdout, "Mems_allowed_list") == "0"


def test_taskset_cannot_move_a_process_out_of_its_cpuset(cpuset_of_cpu_1: Path) -> None:
    done = subprocess.run(
        ["sh", "-c", f"echo $$ > {cpuset_of_cpu_1 / 'tasks'} && exec taskset -pc 0 $$"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "Invalid argument" in done.stderr, done.stderr
    assert (cpuset_of_cpu_1 / "tasks").read_text() == ""  # it exited, nothing left behind
