"""kcm metrics' fence families: the shield record's phase as a state set, and what intrudes on
each dataplane CPU at the scrape's instant, over the audit's fake /proc and cgroup trees (real
files) and over this host's real /proc (read only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kcm.fence import record
from tests.conftest import assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.hostfs import FakeHost
from tests.fixtures.state import build_state, snapshot
from tests.integration.test_audit import (
    INTRUDER,
    booked_daemon_host,
    booking_cgroup,
    fenced_host,
    plant_intruders,
    state_for,
)
from tests.integration.test_metrics import Samples, Server, parse, value

SHIELD_STATES = ("unshielded", "shielding", "shielded", "unshielding")


def scrape_once(conf: str, host: FakeHost, **env: str) -> Samples:
    result = run_kcm("metrics", f"--conf-dir={conf}", env=kcm_env(**host.env(), **env))
    assert (result.code, result.err) == (0, ""), result.err
    return parse(result.out)


def shield_state(samples: Samples) -> str:
    (current,) = [s for s in SHIELD_STATES if value(samples, "kcm_shield_state", state=s) == 1]
    assert sum(value(samples, "kcm_shield_state", state=s) for s in SHIELD_STATES) == 1
    return current


def write_record(conf: str, phase: str) -> None:
    rec = record.Record(phase, "boot", "cgroup-v1", frozenset({3}), frozenset({0, 1, 2}), ())
    Path(conf, record.NAME).write_text(record.to_text(rec))


def audit_json(conf: str, host: FakeHost) -> dict[str, object]:
    result = run_kcm(
        "audit", f"--conf-dir={conf}", "--interval=0.01", "-o", "json", env=kcm_env(**host.env())
    )
    assert result.code in (0, 1), result.err
    doc = json.loads(result.out)
    assert isinstance(doc, dict)
    return doc


def test_a_fenced_host_has_no_intruders_and_each_phase_shows(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    samples = scrape_once(conf, host)
    assert shield_state(samples) == "unshielded"  # no .shield.json
    assert value(samples, "kcm_dataplane_cpu_intruding_threads", cpu="3") == 0
    assert value(samples, "kcm_dataplane_cpu_intruding_irqs", cpu="3") == 0
    assert value(samples, "kcm_dataplane_audit_up") == 1
    assert value(samples, "kcm_dataplane_audit_duration_seconds") > 0
    for phase in record.PHASES:
        write_record(conf, phase)
        assert shield_state(scrape_once(conf, host)) == phase


def test_planted_intruders_are_counted_as_kcm_audit_counts_them(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    plant_intruders(host)  # a pinned process and a kernel thread allowed there, an IRQ there
    conf = state_for(tmp_path)
    write_record(conf, "shielded")
    samples = scrape_once(conf, host)
    assert shield_state(samples) == "shielded"
    # stress-ng (pinned to 3) and kcompactd0 (allowed on 0-3); the booking (100 and its child),
    # ksoftirqd/3 and friends are not counted. IRQ 41 fires on 3; 37 is steered off, moving.
    assert value(samples, "kcm_dataplane_cpu_intruding_threads", cpu="3") == 2
    assert value(samples, "kcm_dataplane_cpu_intruding_irqs", cpu="3") == 1
    # The same judgement as kcm audit's, which samples an interval: on a host that stands
    # still, the instant sees what the interval sees.
    summary = audit_json(conf, host)["summary"]
    assert isinstance(summary, dict)
    assert (summary["intruding_threads"], summary["intruding_irqs"]) == (2, 1)
    # The intruder leaves: the next scrape reads the host afresh.
    del host.threads[INTRUDER]
    host.write()
    again = scrape_once(conf, host)
    assert value(again, "kcm_dataplane_cpu_intruding_threads", cpu="3") == 1


def test_one_label_per_dataplane_cpu(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    host.thread(INTRUDER, "stress-ng", 2, "2-3", ppid=1)
    host.write()
    conf = build_state(
        str(tmp_path / "kcm"),
        {"dataplane": (True, {"2-3": "", "1": ""}), "infra": (False, {"0": ""})},
    )
    samples = scrape_once(conf, host)
    found = {
        k[1][0][1]: v for k, v in samples.items() if k[0] == "kcm_dataplane_cpu_intruding_threads"
    }
    # systemd, sshd's two threads and kthreadd are allowed on 0-2: CPU 1 and 2 have them;
    # PID 100 and its child, booked on list 3 in fenced_host, are no list's booking here.
    assert found == {"1": 4, "2": 5, "3": 3}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_daemon_in_its_bookings_cgroup_is_no_intruder(tmp_path: Path, version: str) -> None:
    conf = state_for(tmp_path)
    host = booked_daemon_host(str(tmp_path), conf, version, booking_cgroup(conf))
    assert value(scrape_once(conf, host), "kcm_dataplane_cpu_intruding_threads", cpu="3") == 0
    outside = booked_daemon_host(str(tmp_path / "other"), conf, version, "/kcm-system")
    assert value(scrape_once(conf, outside), "kcm_dataplane_cpu_intruding_threads", cpu="3") == 1


def test_no_fence_families_without_an_exclusive_dataplane_pool(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    plant_intruders(host)
    none = build_state(str(tmp_path / "none"), {"infra": (False, {"0-3": ""})})
    samples = scrape_once(none, host)
    assert not [k for k in samples if k[0].startswith(("kcm_shield_", "kcm_dataplane_"))]
    shared = build_state(str(tmp_path / "shared"), {"dataplane": (False, {"3": ""})})
    samples = scrape_once(shared, host)
    assert not [k for k in samples if k[0].startswith(("kcm_shield_", "kcm_dataplane_"))]
    # A record without the pool still says the host is (or was being) shielded.
    write_record(shared, "shielding")
    samples = scrape_once(shared, host)
    assert shield_state(samples) == "shielding"
    assert not [k for k in samples if k[0].startswith("kcm_dataplane_")]


def test_a_corrupt_shield_record_is_a_state_error(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    Path(conf, record.NAME).write_text('{"format": "kcm-shield", "version": 1, "phase": "on"}')
    result = run_kcm("metrics", f"--conf-dir={conf}", env=kcm_env(**host.env()))
    assert_one_error_line(result, f"{conf}/.shield.json: invalid shield record: unknown phase")
    assert (result.code, result.out) == (3, "")


def test_a_host_the_audit_cannot_read_once_is_exit_6_serving_is_audit_up_0(
    tmp_path: Path,
) -> None:
    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    stat = Path(host.proc, str(INTRUDER - 850), "task", str(INTRUDER - 850), "stat")
    assert stat.exists()  # sshd's: 50
    stat.write_text("50 (sshd) garbage\n")
    result = run_kcm("metrics", f"--conf-dir={conf}", env=kcm_env(**host.env()))
    assert_one_error_line(result, "/task/50/stat")
    assert (result.code, result.out) == (6, "")
    server = Server(conf, env=kcm_env(**host.env()))
    try:
        samples = server.scrape()
        assert value(samples, "kcm_state_up") == 1  # the state was read: the pools are there
        assert value(samples, "kcm_pool_cpu_lists", pool="dataplane") == 1
        assert value(samples, "kcm_dataplane_audit_up") == 0
        assert not [k for k in samples if k[0].startswith("kcm_dataplane_cpu_")]
        line = server.read_line(5)
        assert line.startswith("kcm metrics: error: dataplane audit: ") and "stat" in line
        host.write()  # mended
        samples = server.scrape()
        assert value(samples, "kcm_dataplane_audit_up") == 1
        assert value(samples, "kcm_dataplane_cpu_intruding_threads", cpu="3") == 0
    finally:
        server.kill()


def test_the_scrape_only_reads(tmp_path: Path) -> None:
    host = fenced_host(str(tmp_path))
    plant_intruders(host)
    conf = state_for(tmp_path)
    write_record(conf, "shielded")
    before = snapshot(str(tmp_path))
    scrape_once(conf, host)
    assert snapshot(str(tmp_path)) == before


def test_this_hosts_real_proc_is_audited_and_this_test_intrudes(tmp_path: Path) -> None:
    """Only reads the host (never shields it): a dataplane list on CPU 1 of this machine,
    booked by nobody; this test's own process may run there, so it is an intruder."""
    if 1 not in os.sched_getaffinity(0):
        pytest.skip("this process may not run on CPU 1 here")
    conf = build_state(
        str(tmp_path / "kcm"), {"dataplane": (True, {"1": ""}), "infra": (False, {"0": ""})}
    )
    result = run_kcm("metrics", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS="/proc"))
    assert (result.code, result.err) == (0, "")
    samples = parse(result.out)
    assert value(samples, "kcm_dataplane_audit_up") == 1
    assert value(samples, "kcm_dataplane_cpu_intruding_threads", cpu="1") >= 1


def test_every_metric_is_in_the_help_and_the_readme(tmp_path: Path) -> None:
    from kcm import totals

    host = fenced_host(str(tmp_path))
    conf = state_for(tmp_path)
    write_record(conf, "shielded")
    ran = totals.Totals(pid=1, started=1.0, interval=60.0).after_pass(2.0, 0.5, ok=True)
    totals.record(conf, ran)
    result = run_kcm("metrics", f"--conf-dir={conf}", env=kcm_env(**host.env()))
    names = {name for name, _ in parse(result.out)}
    names = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n in names}
    assert len(names) == 29  # every family kcm has, in this one scrape
    text = run_kcm("metrics", "--help").out
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert sorted(n for n in names if n not in text.replace("\n", " ")) == []
    assert sorted(n for n in names if f"`{n}`" not in readme) == []
