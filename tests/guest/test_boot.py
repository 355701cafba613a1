"""From the host: the guest boots, runs a job as asked, dies on time, and passes its tests.

One boot per cgroup mode runs every test in the tree marked ``@pytest.mark.guest`` for that
mode inside the guest; this test fails, with the guest's output, unless all of them passed
and at least one ran. Without QEMU or the kernels they skip (in CI as root they fail).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.guest.harness import (
    BOOT_ATTEMPTS,
    KERNEL_FOR,
    MODES,
    GuestError,
    boot_until_started,
    guest_test_files,
    qemu_argv,
    require_guest,
    run_in_guest,
    run_pytest_in_guest,
)


def qemu_children() -> list[int]:
    """PIDs of QEMU processes whose parent is this test process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and name.startswith("qemu-system"):
            found.append(int(entry.name))
    return found


NUMA_NODES = {"v1": 1, "v2": 2}


@pytest.mark.parametrize("cgroup", MODES)
def test_every_guest_test_passes_inside_the_guest(cgroup: str) -> None:
    require_guest(KERNEL_FOR[cgroup])
    files = guest_test_files(["tests"])
    assert files, "no test in tests/ is marked @pytest.mark.guest"
    # The v2 guest has two NUMA nodes (2 vCPUs and 512 MiB each), so that a booking's memory
    # can be bound to a node other than 0 (tests/integration/test_isolate_placement.py).
    run = run_pytest_in_guest(files, cgroup=cgroup, numa_nodes=NUMA_NODES[cgroup])
    report = (
        f"{run.result.kernel} ({cgroup}): {run.counts}; boot {run.result.boot_seconds:.1f} s, "
        f"{run.result.seconds:.1f} s in all\n{run.result.output}"
    )
    assert run.counts is not None, report
    assert run.counts.all_passed, report
    assert run.result.exit_code == 0, report


def test_a_job_gets_its_argv_environment_and_exit_status_back() -> None:
    require_guest(KERNEL_FOR["v2"])
    # 64 KiB of output, and a process left behind holding the output port: every byte
    # arrives, and the run ends without waiting for the straggler. The extra boot parameter
    # reaches the kernel (the tickless CPU it names).
    script = (
        'printf "%s|" "$@"; echo "$KCM_IN_GUEST $EXTRA $(pwd)"; echo to-stderr >&2; '
        "cat /sys/devices/system/cpu/nohz_full; "
        "head -c 65536 /dev/zero | tr '\\0' x; sleep 600 & exit 7"
    )
    got = run_in_guest(
        ["sh", "-c", script, "sh", "two words", "it's", "$HOME"],
        cgroup="v2",
        env={"EXTRA": "given"},
        cwd=Path("/usr"),
        timeout=120,
        kernel_args=["nohz_full=3"],
    )
    assert got.exit_code == 7, got
    assert got.output == "two words|it's|$HOME|v2 given /usr\nto-stderr\n3\n" + "x" * 65536
    assert 0 < got.boot_seconds < got.seconds
    assert qemu_children() == []


def test_a_guest_that_overruns_its_timeout_is_killed() -> None:
    require_guest(KERNEL_FOR["v2"])
    with pytest.raises(GuestError, match="timed out after 2 s"):
        run_in_guest(["sleep", "600"], cgroup="v2", timeout=2)
    assert qemu_children() == []


def test_a_kernel_that_panics_before_the_job_is_booted_again_up_to_a_limit(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A real panic before any job: the kernel finds no init and no root file system.
    argv = qemu_argv(
        require_guest(KERNEL_FOR["v2"]),
        cgroup="v2",
        job=tmp_path / "job.sh",
        ports=tmp_path,
        smp=2,
        memory_mb=256,
    )
    argv[argv.index("-append") + 1] += " rdinit=/no-such-init"
    run, panics = boot_until_started(argv, tmp_path, 120)
    why = "VFS: Unable to mount root fs on unknown-block(0,0)"
    assert (run.boot, run.timed_out, run.status) == (None, False, ())
    assert "Kernel panic - not syncing: " + why in run.console
    assert panics == [why] * (BOOT_ATTEMPTS - 1)
    out, err = capfd.readouterr()
    again = f"guest: the kernel panicked while booting ({why}); booting again\n"
    assert (out, err) == ("", again * (BOOT_ATTEMPTS - 1))
    assert qemu_children() == []
