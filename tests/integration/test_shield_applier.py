"""kcm shield and unshield over fake /proc, /sys and cgroup trees (real files): the applier's
writes land in the fake files, and unshield puts every one back byte for byte.

No test here touches this host: thread affinities go to a setter that rewrites the fake
``status`` files, systemctl is a script that keeps unit properties in files, and the real
setter and systemctl refuse a procfs that is not this process's own. A fake tree does not move
tasks as a kernel does (a write into ``tasks`` only appends to the file): what moving really
does is shown in the guest (``tests/guest/test_fence.py``).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import pytest

from kcm import cpulist
from kcm.errors import EnvironmentProblem, LockTimeoutError, StateError
from kcm.fence import record as rec
from kcm.fence import run
from kcm.fence.applier import KernelHost
from kcm.fence.protocol import Host, ShieldRefused
from kcm.host import cgroups
from kcm.state import StateDir
from tests.conftest import assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.hostfs import PER_CPU_KTHREAD, UNBOUND_KTHREAD, FakeHost
from tests.fixtures.state import build_state, snapshot

BOOKING = 100


def plain_host(root: str, version: str = "v1") -> FakeHost:
    """4 CPUs, nothing fenced: init and sshd in the root, a docker cpuset, kcm's subtree with
    a booking of list 3 (PID 100), kernel threads of each kind, three IRQs."""
    host = FakeHost(root, cpus=4)
    host.cgroup_version = version
    host.cpuset("/docker", "0-3")
    host.thread(1, "init", 0, "0-3", ppid=0)
    host.thread(2, "kthreadd", 1, "0-3", flags=UNBOUND_KTHREAD, ppid=0)
    host.thread(22, "ksoftirqd/3", 3, "3", flags=PER_CPU_KTHREAD, ppid=2)
    host.thread(40, "kworker/u8:0", 0, "0-3", flags=PER_CPU_KTHREAD, ppid=2)
    host.thread(60, "kcompactd0", 2, "0-3", flags=UNBOUND_KTHREAD, ppid=2)
    host.thread(50, "sshd", 1, "0-3")
    host.thread(50, "sshd", 3, "0-3", tid=51)
    host.thread(70, "pinned", 3, "3", ppid=50)
    host.thread(300, "dockerd", 2, "0-3", cgroup="/docker")
    host.irq(0, "timer", "0-3", "0")
    host.irq(36, "eth0-rx-0", "0-3", "3", counts={3: 10})
    host.irq(37, "nvme0q3", "3", "3", settable=False)
    return host


def with_booking(host: FakeHost, conf: str) -> FakeHost:
    state = cgroups.state_id(os.path.realpath(conf))
    top = f"/kcm/{state}"
    for path, cpus in (("/kcm", "0-3"), (top, "0-3"), (f"{top}/dataplane", "0-3")):
        host.cpuset(path, cpus)
    host.cpuset(f"{top}/dataplane/3", "3")
    host.cpuset(f"{top}/dataplane/3/{BOOKING}-4242", "3")
    host.thread(BOOKING, "l2fwd", 3, "3", cgroup=f"{top}/dataplane/3/{BOOKING}-4242", ppid=50)
    host.write()
    return host


def state_for(tmp_path: Path) -> str:
    return build_state(
        str(tmp_path / "kcm"),
        {"dataplane": (True, {"3": str(BOOKING)}), "infra": (False, {"0-2": ""})},
    )


class FakeAffinity:
    """sched_setaffinity for a fake tree: rewrites the thread's Cpus_allowed_list."""

    def __init__(self, proc: str) -> None:
        self.proc = proc
        self.calls: list[tuple[int, str]] = []

    def __call__(self, tid: int, cpus: frozenset[int]) -> None:
        self.calls.append((tid, cpulist.format(cpus)))
        for pid in os.listdir(self.proc):
            path = f"{self.proc}/{pid}/task/{tid}/status"
            if pid.isdigit() and os.path.exists(path):
                lines = Path(path).read_text().splitlines(keepends=True)
                out = []
                for line in lines:
                    if line.startswith("Cpus_allowed_list:"):
                        line = f"Cpus_allowed_list:\t{cpulist.format(cpus)}\n"
                    elif line.startswith("Cpus_allowed:"):
                        line = f"Cpus_allowed:\t{cpulist.format_mask(cpus)}\n"
                    out.append(line)
                Path(path).write_text("".join(out))
                return
        raise ProcessLookupError(tid)


FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl show --property=NAME --value -- UNIT | set-property --runtime -- UNIT NAME=VALUE
dir={units}
case "$1" in
show) name=${{2#--property=}}; unit=$5; cat "$dir/$unit.$name" 2>/dev/null || echo ;;
set-property) unit=$4; kv=$5; echo "${{kv#*=}}" > "$dir/$unit.${{kv%%=*}}";
  echo "$*" >> "$dir/log" ;;
*) exit 1 ;;
esac
"""


def fake_systemctl(tmp_path: Path) -> str:
    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    script = tmp_path / "systemctl"
    script.write_text(FAKE_SYSTEMCTL.format(units=units))
    script.chmod(0o755)
    return str(script)


def factory(
    host: FakeHost, tmp_path: Path, affinity: FakeAffinity | None = None
) -> run.HostFactory:
    setter = affinity or FakeAffinity(host.proc)
    systemctl = fake_systemctl(tmp_path)

    def make(conf: str, lists: Iterable[str], roots: Iterable[int]) -> Host:
        return KernelHost(
            conf,
            proc_root=host.proc,
            sys_root=host.sys,
            cgroup_root=host.cgroup,
            parent="kcm",
            lists=lists,
            booking_roots=roots,
            set_affinity=setter,
            systemctl=systemctl,
        )

    return make


def read(path: str) -> str:
    return Path(path).read_text()


def fixed_files(host: FakeHost) -> dict[str, tuple[int, bytes | str]]:
    """Every fake file but the task lists (which a fake kernel does not move tasks out of)."""
    out = {}
    for root in (host.proc, host.sys, host.cgroup):
        for rel, value in snapshot(root).items():
            if rel.rpartition("/")[2] not in ("tasks", "cgroup.procs"):
                out[f"{root}/{rel}"] = value
    return out


def test_shield_writes_the_plan_into_the_files_and_unshield_puts_them_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    before = fixed_files(host)
    affinity = FakeAffinity(host.proc)
    make = factory(host, tmp_path, affinity)
    assert run.shield_main(conf, quiet=False, make_host=make) == 0
    cg = f"{host.cgroup}/cpuset"
    assert read(f"{cg}/kcm-system/cpuset.cpus") == "0-2\n"
    assert read(f"{cg}/kcm-system/cpuset.mems") == "0\n"
    assert read(f"{cg}/docker/cpuset.cpus") == "0-2\n"
    assert read(f"{cg}/cpuset.sched_load_balance") == "0\n"
    assert read(f"{cg}/kcm/cpuset.sched_load_balance") == "0\n"
    # every root task the kernel lets move, but the booking's: kthreadd and the per-CPU and
    # PF_NO_SETAFFINITY kernel threads stay
    moved = [int(t) for t in read(f"{cg}/kcm-system/tasks").split()]
    assert sorted(moved) == [1, 50, 51, 60, 70]
    assert affinity.calls == [(2, "0-2")]  # kthreadd, which stays in the root
    assert read(f"{host.proc}/irq/36/smp_affinity_list") == "0-2\n"
    assert read(f"{host.proc}/irq/0/smp_affinity_list") == "0-2\n"
    assert read(f"{host.proc}/irq/37/smp_affinity_list") == "3\n"  # managed: refused
    assert read(f"{host.proc}/irq/default_smp_affinity") == "7\n"
    assert read(f"{host.sys}/devices/virtual/workqueue/cpumask") == "7\n"
    record = rec.parse(read(f"{conf}/.shield.json"))
    assert (record.phase, record.backend, cpulist.format(record.dataplane)) == (
        rec.SHIELDED,
        "cgroup-v1",
        "3",
    )
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == (
        "kcm shield: dataplane CPUs 3 (1 list(s)) fenced off from the rest of the host (0-2)"
        " through a cgroup v1 cpuset"
    )
    assert "kcm shield: tasks: cpuset to cpuset/kcm-system: 5 moved" in lines
    assert "kcm shield: IRQs: 2 changed (IRQ 0 (timer), IRQ 36 (eth0-rx-0))" in lines
    assert "kcm: warning: IRQ 37 (nvme0q3): the kernel refuses to move it" in err
    assert "kcm: warning: kernel thread kthreadd (2):" in err

    assert run.unshield_main(conf, quiet=False, make_host=make) == 0
    assert not os.path.exists(f"{conf}/.shield.json")
    assert not os.path.exists(f"{cg}/kcm-system")
    # kthreadd's affinity back; the pinned thread 70 would get its own back last, had the
    # move reset it (a kernel before 6.2 does, a fake tree does not: it is already as it was)
    assert affinity.calls[1:] == [(2, "0-3")]
    after = fixed_files(host)
    assert after == before
    assert "kcm unshield: the host is as it was before kcm shield; record removed" in (
        capsys.readouterr().err
    )


def test_the_workqueue_mask_asked_for_is_what_is_set_and_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A kernel with cpumask_requested whose isolated partition (of an earlier run) already
    # keeps CPU 3 out of the mask it uses: the mask asked for still has it, and is the one
    # the shield must set, or a partition going away would hand CPU 3 back to the workqueues.
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    host.workqueue = "7"
    host.write()
    wq = f"{host.sys}/devices/virtual/workqueue/cpumask"
    Path(f"{wq}_requested").write_text("f\n")
    make = factory(host, tmp_path)
    assert run.shield_main(conf, quiet=True, make_host=make) == 0
    record = json.loads(read(f"{conf}/.shield.json"))
    steps = [c for c in record["changes"] if c.get("path") == "devices/virtual/workqueue/cpumask"]
    assert [(c["prior"], c["new"]) for c in steps] == [("f", "7")], record["changes"]
    assert read(wq) == "7\n"
    # The kernel's side, which a fake tree lacks: the write sets the mask asked for.
    Path(f"{wq}_requested").write_text("7\n")
    assert run.unshield_main(conf, quiet=True, make_host=make) == 0
    assert read(wq) == "f\n"  # what was asked for before the shield, put back
    capsys.readouterr()


def test_a_second_shield_changes_nothing_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    make = factory(host, tmp_path)
    run.shield_main(conf, quiet=True, make_host=make)
    assert capsys.readouterr().err.startswith("kcm: warning:")  # quiet: warnings only
    once = fixed_files(host)
    record = read(f"{conf}/.shield.json")
    run.shield_main(conf, quiet=False, make_host=make)
    assert fixed_files(host) == once
    assert read(f"{conf}/.shield.json") == record
    err = capsys.readouterr().err
    assert "kcm shield: IRQs: 2 already so" in err
    assert "kcm shield: load balancing: 4 already so" in err


def test_unshield_leaves_what_others_changed_since_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    make = factory(host, tmp_path)
    run.shield_main(conf, quiet=True, make_host=make)
    Path(f"{host.proc}/irq/36/smp_affinity_list").write_text("1\n")  # an operator's choice
    capsys.readouterr()
    assert run.unshield_main(conf, quiet=False, make_host=make) == 0
    assert read(f"{host.proc}/irq/36/smp_affinity_list") == "1\n"
    assert read(f"{host.proc}/irq/0/smp_affinity_list") == "0-3\n"
    err = capsys.readouterr().err
    assert "kcm unshield: IRQs: 1 restored (IRQ 0 (timer)), 1 left as others set them since" in err
    assert "kcm: warning: IRQ 36 (eth0-rx-0): " in err and "holds '1'" in err
    assert not os.path.exists(f"{conf}/.shield.json")


def test_an_irq_now_held_by_another_device_is_not_restored(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    make = factory(host, tmp_path)
    run.shield_main(conf, quiet=True, make_host=make)
    os.rename(f"{host.proc}/irq/36/eth0-rx-0", f"{host.proc}/irq/36/virtio3-input")
    run.unshield_main(conf, quiet=True, make_host=make)
    assert read(f"{host.proc}/irq/36/smp_affinity_list") == "0-2\n"


def test_a_v2_host_gets_cpuset_in_the_root_and_a_system_cgroup(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    host = plain_host(str(tmp_path), "v2")
    host.write()
    Path(f"{host.cgroup}/cgroup.subtree_control").write_text("memory\n")
    before = fixed_files(host)
    make = factory(host, tmp_path)
    run.shield_main(conf, quiet=True, make_host=make)
    assert read(f"{host.cgroup}/cgroup.subtree_control") == "+cpuset\n"
    assert read(f"{host.cgroup}/kcm-system/cpuset.cpus") == "0-2\n"
    # the root's processes, kernel threads aside (v2 keeps them in the root: their affinity is
    # set instead); dockerd's cgroup is narrowed, not emptied
    procs = read(f"{host.cgroup}/kcm-system/cgroup.procs").split()
    assert sorted(int(p) for p in procs) == [1, 50, 70]
    assert read(f"{host.cgroup}/docker/cpuset.cpus") == "0-2\n"
    run.unshield_main(conf, quiet=True, make_host=make)
    after = fixed_files(host)
    # "-cpuset" went into subtree_control: the fake file keeps the last write
    assert read(f"{host.cgroup}/cgroup.subtree_control") == "-cpuset\n"
    del (
        before[f"{host.cgroup}/cgroup.subtree_control"],
        after[f"{host.cgroup}/cgroup.subtree_control"],
    )
    assert after == before


def test_a_systemd_host_is_fenced_through_allowed_cpus(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    host = plain_host(str(tmp_path), "v2")
    for unit in ("init.scope", "system.slice", "user.slice"):
        host.cpuset(f"/{unit}", "")
    host.threads[1].cgroup = "/init.scope"
    host.write()
    Path(f"{host.proc}/1/comm").write_text("systemd\n")
    make = factory(host, tmp_path)
    run.shield_main(conf, quiet=True, make_host=make)
    units = tmp_path / "units"
    assert (units / "init.scope.AllowedCPUs").read_text() == "0-2\n"
    assert (units / "system.slice.AllowedCPUs").read_text() == "0-2\n"
    assert "set-property --runtime -- user.slice AllowedCPUs=0-2" in (units / "log").read_text()
    assert not os.path.exists(f"{host.cgroup}/kcm-system")  # systemd's tree: no cgroup of ours
    run.unshield_main(conf, quiet=True, make_host=make)
    assert (units / "init.scope.AllowedCPUs").read_text() == "\n"  # reset to every CPU


def test_a_leftover_system_cpuset_refuses_the_shield_and_changes_nothing(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    host = plain_host(str(tmp_path))
    host.cpuset("/kcm-system", "0-1")
    host.write()
    before = fixed_files(host), snapshot(conf)
    with pytest.raises(ShieldRefused) as raised:
        run.shield_main(conf, quiet=True, make_host=factory(host, tmp_path))
    assert raised.value.exit_code == 8
    assert raised.value.message.startswith("kcm shield cannot start: cpuset /kcm-system: it exists")
    after_state = snapshot(conf)
    del after_state[".shield.lock"]
    assert (fixed_files(host), after_state) == before


def test_a_shield_waits_for_another_and_gives_up_at_the_lock_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    monkeypatch.setenv("KCM_LOCK_TIMEOUT", "0.2")
    with StateDir(conf, writer=True) as state:
        held = state.hold_run_lock(run.RUN_LOCK, None)
        assert held is not None
        try:
            with pytest.raises(LockTimeoutError, match="another kcm shield or unshield"):
                run.shield_main(conf, quiet=True, make_host=factory(host, tmp_path))
            with pytest.raises(LockTimeoutError):
                run.unshield_main(conf, quiet=True, make_host=factory(host, tmp_path))
        finally:
            os.close(held)
    assert not os.path.exists(f"{conf}/.shield.json")


def test_the_real_setter_refuses_a_procfs_that_is_not_ours(tmp_path: Path) -> None:
    host = plain_host(str(tmp_path))
    host.write()
    with pytest.raises(EnvironmentProblem, match="is not this process's procfs"):
        KernelHost(
            str(tmp_path),
            proc_root=host.proc,
            sys_root=host.sys,
            cgroup_root=host.cgroup,
            parent="kcm",
            lists=(),
            booking_roots=(),
        )


def test_cli_on_a_fake_procfs_is_refused_before_anything_changes(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    before = fixed_files(host)
    for command in ("shield", "unshield"):
        result = run_kcm(command, f"--conf-dir={conf}", env=kcm_env(**host.env()))
        assert result.code == 6
        assert_one_error_line(result, f"KCM_PROC_FS={host.proc} is not this process's procfs")
    assert fixed_files(host) == before
    assert not os.path.exists(f"{conf}/.shield.json")


@pytest.mark.parametrize(
    ("pools", "code", "fragment"),
    [
        ({"infra": (False, {"0-3": ""})}, 3, "has no dataplane pool: there is nothing to fence"),
        ({"dataplane": (False, {"3": ""})}, 3, "exclusive is 0: the shield fences an exclusive"),
    ],
)
def test_cli_state_errors(
    tmp_path: Path, pools: dict[str, tuple[bool, dict[str, str]]], code: int, fragment: str
) -> None:
    conf = build_state(str(tmp_path / "kcm"), pools)
    result = run_kcm("shield", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS="/proc"))
    assert result.code == code
    assert_one_error_line(result, fragment)
    assert not os.path.exists(f"{conf}/.shield.json")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("shield", "--interval=1"), "kcm shield has no option '--interval=1'"),
        (("unshield", "--pool=x"), "kcm unshield has no option '--pool=x'"),
        (("shield", "extra"), "unexpected argument 'extra'"),
    ],
)
def test_cli_usage_errors(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    result = run_kcm(*args, env=kcm_env())
    assert result.code == 2
    assert_one_error_line(result, fragment)


def test_a_corrupt_record_is_an_error_naming_it_and_never_acted_on(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    Path(f"{conf}/.shield.json").write_text(json.dumps({"format": "kcm-shield", "version": 1}))
    os.chmod(f"{conf}/.shield.json", stat.S_IRUSR | stat.S_IWUSR)
    before = fixed_files(host)
    for main in (run.shield_main, run.unshield_main):
        with pytest.raises(StateError, match=r"\.shield\.json: invalid shield record"):
            main(conf, quiet=True, make_host=factory(host, tmp_path))
    assert fixed_files(host) == before


def test_keep_fence_moves_an_irq_steered_back_and_says_so(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    make = factory(host, tmp_path)
    assert run.keep_fence(conf, make_host=make) is None  # not shielded: nothing to keep
    run.shield_main(conf, quiet=True, make_host=make)
    record = read(f"{conf}/.shield.json")
    Path(f"{host.proc}/irq/36/smp_affinity_list").write_text("3\n")
    kept = run.keep_fence(conf, make_host=make)
    assert kept is not None and kept.failed == ()
    irq_moves = [m for m in kept.moves if m.kind == "IRQs"]
    assert [m.line() for m in irq_moves] == ["kcm reconcile: fence: IRQs: IRQ 36 (eth0-rx-0)"]
    assert read(f"{host.proc}/irq/36/smp_affinity_list") == "0-2\n"
    assert read(f"{conf}/.shield.json") == record  # the same plan: nothing new to record
    # a shield or unshield under way holds .shield.lock: the pass leaves the fence to it
    with StateDir(conf, writer=True) as state:
        held = state.hold_run_lock(run.RUN_LOCK, None)
        try:
            Path(f"{host.proc}/irq/36/smp_affinity_list").write_text("3\n")
            assert run.keep_fence(conf, make_host=make) is None
            assert read(f"{host.proc}/irq/36/smp_affinity_list") == "3\n"
        finally:
            assert held is not None
            os.close(held)
    run.unshield_main(conf, quiet=True, make_host=make)
    assert run.keep_fence(conf, make_host=make) is None


def test_a_record_others_may_write_is_refused_unread(tmp_path: Path) -> None:
    # Whoever may write the record may make root write what it says: it is held to the
    # state's rules, never read when group or others may write it.
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    make = factory(host, tmp_path)
    run.shield_main(conf, quiet=True, make_host=make)
    os.chmod(f"{conf}/.shield.json", 0o664)
    before = fixed_files(host)
    for main in (run.shield_main, run.unshield_main):
        with pytest.raises(StateError, match=r"\.shield\.json is group-writable"):
            main(conf, quiet=True, make_host=make)
    with pytest.raises(StateError, match=r"\.shield\.json is group-writable"):
        run.keep_fence(conf, make_host=make)
    assert fixed_files(host) == before


def test_the_cgroups_the_record_names_are_what_reconcile_must_not_prune(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    assert run.recorded_cgroups(conf, host.cgroup) == frozenset()
    run.shield_main(conf, quiet=True, make_host=factory(host, tmp_path))
    state = cgroups.state_id(os.path.realpath(conf))
    cg = f"{host.cgroup}/cpuset"
    assert run.recorded_cgroups(conf, host.cgroup) == {
        cg,  # the root's load balancing
        f"{cg}/kcm-system",
        f"{cg}/docker",
        f"{cg}/kcm",
        f"{cg}/kcm/{state}",
        f"{cg}/kcm/{state}/dataplane",
    }


def test_irqbalance_is_told_the_exact_line_from_its_own_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = state_for(tmp_path)
    host = with_booking(plain_host(str(tmp_path)), conf)
    host.thread(90, "irqbalance", 0, "0-3")
    host.write()
    environ = b"PATH=/usr/bin\0IRQBALANCE_BANNED_CPULIST=2\0IRQBALANCE_ARGS=--foreground\0"
    Path(f"{host.proc}/90/environ").write_bytes(environ)
    run.shield_main(conf, quiet=False, make_host=factory(host, tmp_path))
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "irqbalance (pid" in x]
    assert line == (
        "kcm shield: note: irqbalance (pid 90) moves IRQs back onto dataplane CPUs 3: set"
        " IRQBALANCE_BANNED_CPULIST=2-3 in /etc/default/irqbalance (Debian) or"
        " /etc/sysconfig/irqbalance and restart it (systemctl restart irqbalance); until then"
        " each kcm reconcile pass moves them off again"
    )
