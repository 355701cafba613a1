"""kcm shield, audit and unshield on real kernels, in the guest: cgroup v1 on 6.1, v2 on 6.12,
4 vCPUs, the dataplane list on the last CPU and booked by a real ``kcm isolate``.

Each test leaves the guest as it found it (unshield and release in a ``finally``): the other
guest tests of the boot share it. The kill trials and the measurement are ``stress/fence.py``
at small scale; RELIABILITY.md has its full-scale runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stress import fence
from stress.fence import Fixture, differences, fence_files, kcm, unfenced
from tests.guest.kernel import remove_cgroup, status_field

pytestmark = pytest.mark.guest("v1", "v2")


@pytest.fixture
def booked(tmp_path: Path) -> Iterator[Fixture]:
    with fence.state(str(tmp_path / "kcm")) as fx:
        yield fx


def audit(fx: Fixture, *args: str) -> subprocess.CompletedProcess[str]:
    return kcm("audit", f"--conf-dir={fx.conf}", "--interval=0.5", *args, check=False)


def cgroup_of(pid: int | str) -> str:
    text = Path(f"/proc/{pid}/cgroup").read_text()
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(",") or controllers == "":
            return path
    raise AssertionError(text)


def test_shield_makes_the_audit_clean_and_unshield_restores_every_byte(booked: Fixture) -> None:
    conf = f"--conf-dir={booked.conf}"
    before = fence_files()
    assert audit(booked).returncode == 1  # this very test runs on every CPU
    assert unfenced(booked.dataplane, booked.roots)
    shield = kcm("shield", conf)
    assert shield.stderr.startswith("kcm shield: dataplane CPUs 3 (1 list(s)) fenced off"), (
        shield.stderr
    )
    shielded = fence_files()
    assert unfenced(booked.dataplane, booked.roots) == []
    result = audit(booked)
    assert result.returncode == 0, result.stdout
    # a process started later inherits the fence, and cannot leave it for a dataplane CPU
    later = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True)
    assert status_field(later.stdout, "Cpus_allowed_list") == "0-2"
    assert cgroup_of("self") == "/kcm-system"
    escape = subprocess.run(["taskset", "-c", "3", "true"], capture_output=True, text=True)
    assert escape.returncode != 0 and "Invalid argument" in escape.stderr, escape.stderr
    # the booking stays where kcm put it
    for pid in booked.roots:
        assert status_field(Path(f"/proc/{pid}/status").read_text(), "Cpus_allowed_list") == "3"
    # idempotent: a second shield changes nothing
    again = kcm("shield", conf)
    assert "changed" not in again.stderr.replace("0 changed", ""), again.stderr
    assert differences(fence_files(), shielded) == []
    kcm("unshield", conf)
    assert differences(fence_files(), before) == []
    assert not os.path.exists(f"{booked.conf}/.shield.json")
    assert kcm("unshield", conf).stderr == "kcm unshield: no shield record: nothing to undo\n"
    assert differences(fence_files(), before) == []


def test_the_audit_finds_what_root_plants_on_a_shielded_cpu(booked: Fixture) -> None:
    from kcm.fence import run

    conf = f"--conf-dir={booked.conf}"
    kcm("shield", conf, "--quiet")
    mode = os.environ["KCM_IN_GUEST"]
    # Inside the system set, taskset cannot reach the dataplane CPU. On v1 a process root
    # moves out of it on purpose, into the root cpuset, can. On v2 the list's level is an
    # isolated partition that holds CPU 3 alone, so not even the root cgroup has it: root
    # plants the process in a cgroup of its own inside the partition, beside the booking.
    root = "/sys/fs/cgroup/cpuset/tasks" if mode == "v1" else "/sys/fs/cgroup/cgroup.procs"
    planted = None
    if mode == "v2":
        escape = subprocess.run(
            ["sh", "-c", f"echo $$ > {root} && exec taskset -c 3 true"],
            capture_output=True,
            text=True,
        )
        assert escape.returncode != 0 and "Invalid argument" in escape.stderr, escape.stderr
        (partition,) = [
            p
            for p in run.recorded_cgroups(booked.conf, fence.CGROUP_FS)
            if Path(p, "cpuset.cpus.partition").read_text().strip() == "isolated"
        ]
        assert Path(partition, "cpuset.cpus.effective").read_text().strip() == "3"
        planted = Path(partition, f"kcm-guest-rogue-{os.getpid()}")
        planted.mkdir()
        root = str(planted / "cgroup.procs")
    # The path as an argument: a state id's escapes (``\x2d``) are not the shell's to read.
    rogue = subprocess.Popen(
        ["sh", "-c", 'echo $$ > "$1" && exec taskset -c 3 sh -c "while :; do :; done"', "sh", root]
    )
    irq = fence.irq_by_name(fence.IRQ_SOURCE_NAME)
    assert irq is not None
    steered = Path(f"/proc/irq/{irq}/smp_affinity_list")
    fenced_value = steered.read_text()
    try:
        steered.write_text("3")
        Path("/work").stat()  # a 9p request: the IRQ fires, and moves there
        os.listdir(Path(fence.__file__).parent)
        result = audit(booked, "-o", "json")
        assert result.returncode == 1
        (cpu,) = json.loads(result.stdout)["cpus"]
        pids = {t["pid"] for t in cpu["threads"] if t["ran"] in ("yes", "maybe")}
        assert rogue.pid in pids, cpu["threads"]
        assert irq in {i["irq"] for i in cpu["irqs"]}, cpu["irqs"]
    finally:
        rogue.kill()
        rogue.wait()
        steered.write_text(fenced_value.strip())
        if planted is not None:
            remove_cgroup(planted)
    assert audit(booked).returncode == 0


def test_kill_9_at_random_instants_converges(booked: Fixture) -> None:
    trials = fence.kill_trials(booked, trials=3, seed=int.from_bytes(os.urandom(2), "big"))
    assert trials.failures == []
    runs = [*trials.killed_before_save.values(), *trials.killed_after_save.values()]
    assert sum(runs) + sum(trials.finished_first.values()) == 6


def test_the_fence_keeps_hogs_and_irqs_off_the_dataplane_cpu(tmp_path: Path) -> None:
    # One hog, pinned onto the dataplane CPU with taskset: the least load that competes with
    # the spin task for sure, so kcm's own commands are not starved under software emulation.
    load = fence.Load(hogs=0, pinned=1)
    got = fence.run_measurement(str(tmp_path / "kcm"), rounds=1, seconds=2.0, warmup=1.0, load=load)
    summary = got["summary"]
    assert isinstance(summary, dict)
    fenced, unfenced_case = summary["fenced"], summary["unfenced"]
    assert fenced["intruders_audit_max"] == 0, got["rounds"]
    assert fenced["intruders_scan_max"] == 0, got["rounds"]
    assert unfenced_case["intruders_scan_max"] > 0, got["rounds"]  # the hogs ran there
    assert fenced["involuntary_per_s"] < unfenced_case["involuntary_per_s"], got["rounds"]


def test_reconcile_keeps_the_fence(booked: Fixture) -> None:
    conf = f"--conf-dir={booked.conf}"
    mode = os.environ["KCM_IN_GUEST"]
    quiet = kcm("reconcile", conf)  # not shielded: CMK's report, no fence key
    assert "fenceMoves" not in json.loads(quiet.stdout)
    kcm("shield", conf, "--quiet")
    later = subprocess.Popen(["sleep", "600"])  # started after the shield: in the system set
    root = "/sys/fs/cgroup/cpuset/tasks" if mode == "v1" else "/sys/fs/cgroup/cgroup.procs"
    escaped = subprocess.Popen(["sleep", "600"])
    irq = fence.irq_by_name(fence.IRQ_SOURCE_NAME)
    assert irq is not None
    steered = Path(f"/proc/irq/{irq}/smp_affinity_list")
    fenced_value = steered.read_text().strip()
    try:
        assert cgroup_of(later.pid) == "/kcm-system"
        Path(root).write_text(str(escaped.pid))  # root moves one out of the fence on purpose
        assert cgroup_of(escaped.pid) == "/"
        steered.write_text("3")  # and an IRQ back onto the dataplane CPU
        result = kcm("reconcile", conf)
        moves = json.loads(result.stdout)["fenceMoves"]
        kinds = {m["kind"] for m in moves}
        assert {"tasks", "IRQs"} <= kinds, moves
        assert f"kcm reconcile: fence: IRQs: IRQ {irq} (" in result.stderr, result.stderr
        assert cgroup_of(escaped.pid) == "/kcm-system"
        assert steered.read_text().strip() == fenced_value
        assert status_field(
            Path(f"/proc/{escaped.pid}/status").read_text(), "Cpus_allowed_list"
        ) == ("0-2")
        again = kcm("reconcile", conf)  # nothing new: nothing moves
        assert json.loads(again.stdout)["fenceMoves"] == []
        assert audit(booked).returncode == 0
    finally:
        for p in (later, escaped):
            p.kill()
            p.wait()


def test_reconcile_after_a_release_keeps_every_cgroup_the_shield_set(booked: Fixture) -> None:
    # A released booking leaves its list's level empty; reconcile prunes empty levels, but not
    # one the shield record names (on v2 the list's level holds its isolated partition).
    from kcm.fence import run

    conf = f"--conf-dir={booked.conf}"
    kcm("shield", conf, "--quiet")
    recorded = run.recorded_cgroups(booked.conf, fence.CGROUP_FS)
    assert recorded, "the shield recorded no cgroup"
    shielded = {p: v for p, v in fence_files().items() if p.rpartition("/")[0] in recorded}
    fence.release(booked)
    kcm("reconcile", conf)
    assert [p for p in sorted(recorded) if not os.path.isdir(p)] == []
    after = {p: v for p, v in fence_files().items() if p.rpartition("/")[0] in recorded}
    assert differences(after, shielded) == []
    fence.book(booked, "sleep 3600")  # booked again, on the fenced list
    assert audit(booked).returncode == 0
