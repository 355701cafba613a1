"""kcm audit over fake /proc, /sys and cgroup trees (real files): named hosts, golden outputs,
exit codes, and that it writes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kcm.fence.audit import Ran
from kcm.fence.command import run_audit
from kcm.fence.reader import HostReader
from kcm.fence.render import to_json, to_table
from tests.conftest import assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.hostfs import PER_CPU_KTHREAD, UNBOUND_KTHREAD, FakeHost
from tests.fixtures.state import build_state, snapshot

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "audit"
BOOKING, CHILD, INTRUDER = 100, 101, 900


def fenced_host(root: str) -> FakeHost:
    """4 CPUs; dataplane list 3 booked by PID 100 (and its child 101); fenced as kcm shield
    leaves it on cgroup v1: everything else in /kcm-system on CPUs 0-2, IRQs, the workqueue
    cpumask and the default IRQ affinity off CPU 3, load balancing off; CPU 3 isolated and
    nohz_full at boot."""
    host = FakeHost(root, cpus=4)
    host.numa_nodes = {0: "0-1", 1: "2-3"}
    host.cmdline = "BOOT_IMAGE=/vmlinuz isolcpus=managed_irq,domain,3 nohz_full=3 rcu_nocbs=3"
    host.isolated = "3"
    host.nohz_full = "3"
    host.workqueue = "7"
    host.default_smp_affinity = "7"
    host.cpusets["/"].load_balance = False
    host.cpuset("/kcm", "0-3", load_balance=False)
    host.cpuset("/kcm/s", "0-3", load_balance=False)
    host.cpuset("/kcm/s/dataplane", "3", load_balance=False)
    host.cpuset("/kcm/s/dataplane/3", "3")
    host.cpuset("/kcm/s/dataplane/3/b1", "3")
    host.cpuset("/kcm-system", "0-2")
    host.thread(1, "systemd", 0, "0-2", cgroup="/kcm-system", ppid=0, runtime_ns=9_000_000)
    host.thread(2, "kthreadd", 1, "0-2", flags=UNBOUND_KTHREAD, ppid=0)
    host.thread(22, "ksoftirqd/3", 3, "3", flags=PER_CPU_KTHREAD, ppid=2)
    host.thread(23, "migration/3", 3, "3", flags=PER_CPU_KTHREAD, ppid=2)
    host.thread(24, "kworker/3:1", 3, "3", flags=PER_CPU_KTHREAD, ppid=2)
    host.thread(40, "kworker/u8:0", 0, "0-2", flags=PER_CPU_KTHREAD, ppid=2)
    host.thread(50, "sshd", 1, "0-2", cgroup="/kcm-system", runtime_ns=2_000_000)
    host.thread(50, "sshd", 2, "0-2", cgroup="/kcm-system", tid=51)
    host.thread(
        BOOKING, "kcm", 3, "3", cgroup="/kcm/s/dataplane/3/b1", ppid=50, runtime_ns=1_000_000
    )
    host.thread(CHILD, "l2fwd", 3, "3", cgroup="/kcm/s/dataplane/3/b1", ppid=BOOKING)
    host.irq(36, "eth0-rx-0", "0-2", "1", counts={1: 5000})
    host.irq(37, "nvme0q1", "3", "3", settable=False)  # managed: a kernel queue per CPU...
    host.irqs[37].smp = "0-2"  # ...here steered off by isolcpus=managed_irq
    host.irqs[37].effective = "0"
    host.write()
    return host


def state_for(tmp_path: Path) -> str:
    return build_state(
        str(tmp_path / "kcm"),
        {"dataplane": (True, {"3": str(BOOKING)}), "infra": (False, {"0-2": ""})},
    )


def audit_in_process(
    host: FakeHost, conf: str, between: Callable[[], None] = lambda: None
) -> object:
    """Run the audit in this process, with ``between`` changing the host during the interval
    and a clock that says exactly 2 seconds passed."""
    ticks = iter([100.0, 102.0])

    def sleep(seconds: float) -> None:
        assert seconds == 2.0
        between()
        host.write()

    reader = HostReader(host.proc, host.sys, host.cgroup)
    return run_audit(conf, reader, 2.0, sleep=sleep, clock=lambda: next(ticks))


def plant_intruders(host: FakeHost) -> None:
    """A process pinned onto CPU 3 with taskset, an unbound kernel thread allowed there, and an
    IRQ steered there: all busy during the interval."""
    host.thread(INTRUDER, "stress-ng", 3, "3", cgroup="/kcm-system", ppid=50, runtime_ns=10**6)
    host.thread(60, "kcompactd0", 0, "0-3", flags=UNBOUND_KTHREAD, ppid=2)
    host.irq(41, "eth1-tx-0", "3", "3", counts={3: 100})
    host.write()


def busy_interval(host: FakeHost) -> None:
    host.threads[INTRUDER].runtime_ns += 1_500_000_000
    host.threads[1].runtime_ns += 1_000_000
    host.threads[BOOKING].runtime_ns += 2_000_000
    host.irqs[41].counts[3] += 400
    host.irqs[36].counts[1] += 100
    host.local["LOC"][3] += 500
    host.local["RES"][3] += 100
    host.softirqs["TIMER"][3] += 200
    host.softirqs["RCU"][3] += 60
    busy, idle, irq, softirq = host.cpu_ticks[3]
    host.cpu_ticks[3] = (busy + 180, idle + 20, irq + 4, softirq + 2)


def golden(name: str, text: str, tmp_path: Path) -> None:
    """``text`` is the golden file ``name``: byte for byte for tables; for JSON, one line
    holding exactly the golden document (kept indented in the file, for people)."""
    text = text.replace(str(tmp_path), "<tmp>")
    path = GOLDEN / name
    if name.endswith(".json"):
        assert text.endswith("\n") and text.count("\n") == 1
        if os.environ.get("KCM_REGEN_GOLDEN") == "1":
            path.write_text(json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n")
        assert json.loads(text) == json.loads(path.read_text()), name
        return
    if os.environ.get("KCM_REGEN_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; KCM_REGEN_GOLDEN=1 rewrites it"


# -- named hosts, golden outputs -------------------------------------------------------------


def test_a_fenced_host_is_clean(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    report = audit_in_process(host, conf)
    assert report.clean  # type: ignore[attr-defined]
    golden("clean.table", to_table(report), tmp_path)  # type: ignore[arg-type]
    golden("clean.json", to_json(report), tmp_path)  # type: ignore[arg-type]


def test_planted_intruders_are_found(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    plant_intruders(host)
    conf = state_for(tmp_path)
    report = audit_in_process(host, conf, lambda: busy_interval(host))
    (cpu,) = report.cpus  # type: ignore[attr-defined]
    assert [(t.pid, t.ran, t.allowed) for t in cpu.threads] == [
        (INTRUDER, Ran.YES, frozenset({3})),
        (60, Ran.NO, frozenset({0, 1, 2, 3})),
    ]
    assert [(i.irq, i.count) for i in cpu.irqs] == [(41, 400)]
    assert {t.command for t in cpu.per_cpu_threads} == {"ksoftirqd/3", "migration/3", "kworker/3:1"}
    assert cpu.interrupts_per_s == 500.0  # (400 + 500 + 100) / 2 s
    assert cpu.softirqs_per_s == 130.0
    golden("intruded.table", to_table(report), tmp_path)  # type: ignore[arg-type]
    golden("intruded.json", to_json(report), tmp_path)  # type: ignore[arg-type]


def test_a_thread_born_during_the_interval_is_seen(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)

    def spawn() -> None:
        host.thread(950, "newcomer", 3, "0-3", ppid=1, runtime_ns=3_000_000, start_time=900)

    (cpu,) = audit_in_process(host, conf, spawn).cpus  # type: ignore[attr-defined]
    assert [(t.pid, t.ran, t.cpu_time_ns) for t in cpu.threads] == [(950, Ran.YES, 3_000_000)]


def test_a_reused_tid_is_a_new_thread(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    host.thread(950, "old", 1, "0-2", runtime_ns=10**9)
    host.write()
    conf = state_for(tmp_path)

    def reuse() -> None:
        host.thread(950, "new", 3, "0-3", runtime_ns=10**6, start_time=999)

    (cpu,) = audit_in_process(host, conf, reuse).cpus  # type: ignore[attr-defined]
    assert [(t.command, t.ran, t.cpu_time_ns) for t in cpu.threads] == [("new", Ran.YES, 10**6)]


def test_without_sched_the_run_time_comes_from_schedstat(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    host.schedstat_only = True
    plant_intruders(host)
    conf = state_for(tmp_path)
    (cpu,) = audit_in_process(host, conf, lambda: busy_interval(host)).cpus  # type: ignore[attr-defined]
    assert (cpu.threads[0].pid, cpu.threads[0].ran) == (INTRUDER, Ran.YES)
    assert cpu.threads[0].cpu_time_ns == 1_500_000_000


def test_v2_host_load_balancing_from_isolated_partitions(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    host.isolated = ""  # not isolated at boot: the partition alone turns balancing off
    host.cgroup_version = "v2"
    host.cpusets = {
        "/": host.cpusets["/"],
        "/kcm-system": host.cpusets["/kcm-system"],
    }
    host.cpuset("/kcm", "0-3")
    host.cpuset("/kcm/s/dataplane/3", "3", partition="isolated", exclusive="3")
    host.write()
    conf = state_for(tmp_path)
    (cpu,) = audit_in_process(host, conf).cpus  # type: ignore[attr-defined]
    assert (cpu.load_balancing.off, cpu.load_balancing.why) == (
        True,
        "in the isolated partition /kcm/s/dataplane/3",
    )
    assert cpu.threads == ()


def test_unfenced_v1_host_reports_every_setting(tmp_path: Path) -> None:
    host = FakeHost(str(tmp_path), cpus=4)
    host.thread(1, "init", 3, "0-3", ppid=0, runtime_ns=1)
    host.write()
    conf = state_for(tmp_path)
    report = audit_in_process(host, conf)
    doc = json.loads(to_json(report))  # type: ignore[arg-type]
    (cpu,) = doc["cpus"]
    assert cpu["load_balancing"] == {"off": False, "why": "sched_load_balance=1 in /"}
    assert (cpu["isolated_at_boot"], cpu["nohz_full_at_boot"]) == (False, False)
    assert (cpu["workqueue"], cpu["default_irq_affinity"]) == (True, True)
    assert cpu["cmdline"] == dict.fromkeys(
        ("irqaffinity", "isolcpus", "isolcpus_managed_irq", "nohz_full", "rcu_nocbs"), False
    )
    assert doc["boot"]["cmdline"] == dict.fromkeys(
        ("isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity")
    )
    assert [t["pid"] for t in cpu["threads"]] == [1]


def test_a_kernel_without_nohz_full_or_a_workqueue_mask_says_unknown(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    host.nohz_full = None
    host.workqueue = None
    host.cgroup_version = None
    host.write()
    conf = state_for(tmp_path)
    doc = json.loads(to_json(audit_in_process(host, conf)))  # type: ignore[arg-type]
    cpu = doc["cpus"][0]
    assert (cpu["nohz_full_at_boot"], cpu["workqueue"]) == (None, None)
    assert doc["cgroup"] == {"version": None, "mount": None}
    assert doc["workqueue_cpumask"] is None
    assert cpu["load_balancing"]["off"] is True  # isolcpus=domain at boot


# -- the command: exit codes, stable JSON, nothing written -----------------------------------


def run_audit_cli(host: FakeHost, *args: str) -> tuple[int, str, str]:
    result = run_kcm("audit", *args, env=kcm_env(**host.env()))
    return result.code, result.out, result.err


def test_cli_exits_0_when_clean_and_1_when_intruded(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    code, out, err = run_audit_cli(host, f"--conf-dir={conf}", "--interval=0.05")
    assert (code, err) == (0, "")
    assert out.startswith(f"kcm audit of {conf}: dataplane CPUs 3, over ")
    plant_intruders(host)
    code, out, err = run_audit_cli(host, f"--conf-dir={conf}", "--interval=0.05", "--output=json")
    assert (code, err) == (1, "")
    doc = json.loads(out)
    assert doc["clean"] is False
    assert doc["summary"] == {"dataplane_cpus": "3", "intruding_threads": 2, "intruding_irqs": 1}
    # neither ran (the fake host stood still), so they are listed by PID
    assert [(t["pid"], t["ran"]) for t in doc["cpus"][0]["threads"]] == [
        (60, "no"),
        (INTRUDER, "no"),
    ]


DAEMON = 700


def booked_daemon_host(root: str, conf: str, version: str, cgroup: str) -> FakeHost:
    """The fenced host with a daemon that left its booking's process tree (``setsid``: its
    parent is PID 1, not the booking's 100), running on CPU 3 in the cgroup ``cgroup``."""
    host = fenced_host(root)
    host.cgroup_version = version
    host.thread(DAEMON, "my-daemon", 3, "3", cgroup=cgroup, ppid=1, runtime_ns=10**6)
    host.write()
    return host


def booking_cgroup(conf: str, parent: str | None = None) -> str:
    """Where kcm.host.cgroups puts a booking of list 3 of the state ``conf`` (under
    ``$KCM_CGROUP_PARENT``, which the suite sets to a parent of its run, unless ``parent``)."""
    from kcm.host import cgroups

    if parent is None:
        parent = cgroups.cgroup_parent()
    return f"/{parent}/{cgroups.state_id(os.path.realpath(conf))}/dataplane/3/{BOOKING}-4242"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_setsid_daemon_in_its_bookings_cgroup_is_no_intruder(
    tmp_path: Path, version: str
) -> None:
    conf = state_for(tmp_path)
    host = booked_daemon_host(str(tmp_path), conf, version, booking_cgroup(conf))
    code, out, err = run_audit_cli(host, f"--conf-dir={conf}", "--interval=0.05", "-o", "json")
    assert (code, err) == (0, ""), out
    assert json.loads(out)["cpus"][0]["threads"] == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_same_daemon_outside_any_booking_is_an_intruder(tmp_path: Path, version: str) -> None:
    conf = state_for(tmp_path)
    host = booked_daemon_host(str(tmp_path), conf, version, "/kcm-system")
    code, out, err = run_audit_cli(host, f"--conf-dir={conf}", "--interval=0.05", "-o", "json")
    assert (code, err) == (1, "")
    threads = json.loads(out)["cpus"][0]["threads"]
    assert [(t["pid"], t["command"], t["cgroup"]) for t in threads] == [
        (DAEMON, "my-daemon", "/kcm-system")
    ]


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("another_state", "a booking of another state directory is not this state's"),
        ("another_pool", "a booking of the infra pool holds no dataplane CPU"),
        ("another_parent", "KCM_CGROUP_PARENT names where this state's bookings are"),
    ],
)
def test_only_this_states_dataplane_bookings_count(tmp_path: Path, where: str, why: str) -> None:
    conf = state_for(tmp_path)
    cgroup = {
        "another_state": booking_cgroup(str(tmp_path / "other")),
        "another_pool": booking_cgroup(conf).replace("/dataplane/3/", "/infra/0-2/"),
        "another_parent": booking_cgroup(conf, parent="elsewhere"),
    }[where]
    host = booked_daemon_host(str(tmp_path), conf, "v1", cgroup)
    code, out, _ = run_audit_cli(host, f"--conf-dir={conf}", "--interval=0.05", "-o", "json")
    assert code == 1, why
    assert [t["pid"] for t in json.loads(out)["cpus"][0]["threads"]] == [DAEMON], why


def test_the_booking_parent_comes_from_kcm_cgroup_parent(tmp_path: Path) -> None:
    conf = state_for(tmp_path)
    parent = "system.slice/kcm-bookings.service"
    host = booked_daemon_host(str(tmp_path), conf, "v2", booking_cgroup(conf, parent=parent))
    env = kcm_env(**host.env(), KCM_CGROUP_PARENT=parent)
    result = run_kcm("audit", f"--conf-dir={conf}", "--interval=0.05", env=env)
    assert (result.code, result.err) == (0, "")
    result = run_kcm("audit", f"--conf-dir={conf}", "--interval=0.05", env=kcm_env(**host.env()))
    assert result.code == 1


def test_cli_reads_and_never_writes(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    plant_intruders(host)
    conf = state_for(tmp_path)
    before = {root: snapshot(root) for root in (host.proc, host.sys, host.cgroup, conf)}
    code, _, _ = run_audit_cli(host, f"--conf-dir={conf}", "--interval=0.05")
    assert code == 1
    assert {root: snapshot(root) for root in before} == before


def test_cli_on_a_read_only_state(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    for dirpath, _, filenames in os.walk(conf):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
    code, _, err = run_audit_cli(host, f"--conf-dir={conf}", "--interval=0.05")
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("--output=yaml",), 2, "--output='yaml': choose table or json"),
        (("--interval=0",), 2, "--interval='0' is not a positive number of seconds"),
        (("--interval=soon",), 2, "not a positive number"),
        (("--pool=dataplane",), 2, "kcm audit has no option '--pool=dataplane'"),
    ],
)
def test_cli_usage_errors(tmp_path: Path, args: tuple[str, ...], code: int, fragment: str) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    result = run_kcm("audit", f"--conf-dir={conf}", *args, env=kcm_env(**host.env()))
    assert_one_error_line(result, fragment)
    assert result.code == code


def test_cli_state_errors_exit_3(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    missing = run_kcm("audit", f"--conf-dir={tmp_path}/none", env=kcm_env(**host.env()))
    assert_one_error_line(missing, "does not exist")
    assert missing.code == 3
    shared = build_state(str(tmp_path / "shared"), {"dataplane": (False, {"3": ""})})
    result = run_kcm("audit", f"--conf-dir={shared}", env=kcm_env(**host.env()))
    assert_one_error_line(result, "exclusive is 0: the audit judges an exclusive pool")
    assert result.code == 3
    none = build_state(str(tmp_path / "nodp"), {"infra": (False, {"0-3": ""})})
    result = run_kcm("audit", f"--conf-dir={none}", env=kcm_env(**host.env()))
    assert_one_error_line(result, "has no dataplane pool")
    assert result.code == 3
    conf = state_for(tmp_path)
    Path(conf, ".shield.json").write_text("{not json")
    result = run_kcm("audit", f"--conf-dir={conf}", env=kcm_env(**host.env()))
    assert_one_error_line(result, ".shield.json: invalid shield record")
    assert result.code == 3


def test_cli_host_errors_exit_6(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    env = kcm_env(**{**host.env(), "KCM_PROC_FS": str(tmp_path / "noproc")})
    result = run_kcm("audit", f"--conf-dir={conf}", "--interval=0.01", env=env)
    assert_one_error_line(result, "noproc")
    assert result.code == 6
    Path(host.proc, "50/task/51/stat").write_text("garbage\n")
    result = run_kcm("audit", f"--conf-dir={conf}", "--interval=0.01", env=kcm_env(**host.env()))
    assert_one_error_line(result, "50/task/51/stat: not a /proc/<pid>/stat line")
    assert result.code == 6


def test_shield_phase_is_reported(tmp_path: Path) -> None:
    from kcm.fence import record

    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    rec = record.Record("shielded", "b", "cgroup-v1", frozenset({3}), frozenset({0, 1, 2}), ())
    Path(conf, record.NAME).write_text(record.to_text(rec))
    code, out, _ = run_audit_cli(host, f"--conf-dir={conf}", "--interval=0.01", "--output=json")
    assert (code, json.loads(out)["shield"]) == (0, "shielded")


def test_cli_an_unreadable_thread_is_an_error_not_a_clean_host(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    status = Path(host.proc, "50/task/51/status")
    status.unlink()
    status.mkdir()  # reading a directory fails with EISDIR, as an unreadable file would
    result = run_kcm("audit", f"--conf-dir={conf}", "--interval=0.01", env=kcm_env(**host.env()))
    assert_one_error_line(result, "cannot read", "50/task/51/status")
    assert result.code == 6


def test_a_thread_that_moves_onto_the_cpu_during_the_interval_is_read_in_full(
    tmp_path: Path,
) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)

    def wander() -> None:  # sshd's second thread, allowed 0-2, is seen on CPU 3 at the end
        host.threads[51].processor = 3
        host.threads[51].runtime_ns += 10**6
        host.threads[51].migrations += 1

    (cpu,) = audit_in_process(host, conf, wander).cpus  # type: ignore[attr-defined]
    assert [(t.tid, t.ran, t.cgroup) for t in cpu.threads] == [(51, Ran.YES, "/kcm-system")]
