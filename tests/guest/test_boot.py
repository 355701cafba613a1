"""From the host: the guest boots, runs a job as asked, dies on time, and passes its tests.

One boot per cgroup mode runs every test in the tree marked ``@pytest.mark.guest`` for that
mode inside the guest; this test fails, with the guest's output, unless all of them passed
and at least one ran. Without QEMU or the kernels they skip (in CI as root they fail).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.guest.harness import (
    BOOT_ATTEMPTS,
    KERNEL_FOR,
    MODES,
    TCG_FAULT,
    GuestError,
    boot_until_started,
    guest_test_files,
    qemu_argv,
    require_guest,
    retry_reason,
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


def test_a_guest_that_panics_before_its_job_is_booted_again_up_to_a_limit(
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
    run, retried = boot_until_started(argv, tmp_path, 120)
    why = "VFS: Unable to mount root fs on unknown-block(0,0)"
    assert (run.boot, run.timed_out, run.status) == (None, False, ())
    last = retry_reason(run.status, run.console, run.timed_out)
    # Each guest died of that panic, or before it of TCG's own fault (one did in CI), and
    # after the last one the harness gave up.
    assert len(retried) == BOOT_ATTEMPTS - 1
    for reason in [*retried, last]:
        assert reason == why or (reason or "").startswith(TCG_FAULT), (reason, run.console)
    out, err = capfd.readouterr()
    said = [f"guest: the kernel died while booting ({r}); booting a new guest" for r in retried]
    assert (out, err.splitlines()) == ("", said)
    assert qemu_children() == []


# Run in the guest: init and audit on the real sysfs of a kernel booted with CPU 3 isolated.
BOOT_ISOLATION_JOB = r"""
import json, subprocess, sys
def run(*argv):
    done = subprocess.run(["kcm", *argv], capture_output=True, text=True)
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr}
conf = "/tmp/kcm-boot-isolation"
print(json.dumps({
    "init": run("init", f"--conf-dir={conf}", "--num-dp-cores=1", "--num-cp-cores=1"),
    "describe": run("describe", f"--conf-dir={conf}"),
    "audit": run("audit", f"--conf-dir={conf}", "--output=json", "--interval=0.5"),
}))
"""


def test_init_and_audit_read_a_real_kernel_s_boot_isolation() -> None:
    # 4 vCPUs, one thread per core: the isolated core is the dataplane's, the others are not.
    got = run_in_guest(
        [sys.executable, "-c", BOOT_ISOLATION_JOB],
        cgroup="v2",
        timeout=300,
        kernel_args=["isolcpus=managed_irq,domain,3", "nohz_full=3", "rcu_nocbs=3"],
    )
    assert got.exit_code == 0, got.output
    runs = json.loads(got.output)
    assert runs["init"]["code"] == 0, runs["init"]
    assert runs["init"]["err"] == (
        "kcm: created /tmp/kcm-boot-isolation from the topology in /sys (4 cores, 4 CPUs);"
        " isolated at boot: CPUs 3\n"
        "kcm:   dataplane (exclusive): 3\n"
        "kcm:   controlplane (shared): 2\n"
        "kcm:   infra (shared): 0-1\n"
    )
    pools = {p["name"]: p for p in json.loads(runs["describe"]["out"])["pools"].values()}
    assert [cl["cpus"] for cl in pools["dataplane"]["cpuLists"].values()] == ["3"]
    assert "3" not in ",".join(pools["infra"]["cpuLists"])
    audit = json.loads(runs["audit"]["out"])
    assert audit["boot"]["isolated"] == "3" and audit["boot"]["nohz_full"] == "3"
    cmdline = audit["boot"]["cmdline"]
    assert cmdline["nohz_full"] == cmdline["rcu_nocbs"] == {"cpus": "3", "flags": [], "raw": "3"}
    assert cmdline["isolcpus"] == {
        "cpus": "3",
        "flags": ["managed_irq", "domain"],
        "raw": "managed_irq,domain,3",
    }
    (cpu,) = audit["cpus"]
    assert (cpu["cpu"], cpu["isolated_at_boot"], cpu["nohz_full_at_boot"]) == (3, True, True)
    assert cpu["load_balancing"] == {"off": True, "why": "isolated at boot (isolcpus)"}
