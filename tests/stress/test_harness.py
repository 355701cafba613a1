"""The stress scripts at small scale: the invariants hold, and the checks can fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm import cpulist
from stress import common, concurrency, crash, isolation, pid_reuse
from stress.common import (
    Report,
    exclusive_lists,
    make_state,
    scan,
    spread_lists,
    stderr_problem,
)
from stress.concurrency import Record, double_allocations


@pytest.fixture(autouse=True)
def remove_the_runs_cgroups() -> Iterator[None]:
    """The scripts' bookings go under a parent of the run's own (stress.common); the scripts'
    main removes it, and so does this for the parts the tests call directly."""
    yield
    common.remove_cgroup_parent()


def figures(report: Report) -> dict[str, object]:
    assert report.failures == [], report.failures[:5]
    return report.figures


def test_concurrency_small(tmp_path: Path) -> None:
    report = concurrency.stress(
        str(tmp_path),
        isolates=60,
        exclusive_count=len(os.sched_getaffinity(0)),
        shared_lists=2,
        hold=0.2,
        exclusive_share=0.6,
        time_limit=120,
        seed=1,
    )
    got = figures(report)
    assert got["ran"] == got["records"]
    assert got["ran"] + got["refused_exhausted"] + got["lock_timeouts"] == 60
    assert got["exclusive_runs"] > 0 and got["shared_runs"] > 0
    assert got["double_allocations"] == 0
    assert got["torn_files"] == 0
    assert got["tasks_left"] == 0 and got["hidden_files_left"] == 0
    assert got["samples"] > 0


def test_overlapping_holds_of_an_exclusive_list_are_reported() -> None:
    records = [
        Record("dataplane", "0,2", "0", 10.0, 11.0),
        Record("dataplane", "0,2", "0", 11.0, 12.0),  # back to back: fine
        Record("dataplane", "1,3", "1", 10.0, 13.0),
        Record("dataplane", "1,3", "1", 12.5, 14.0),  # overlaps the one before
        Record("infra", "0,4", "0", 10.0, 14.0),
        Record("infra", "0,4", "0", 10.0, 14.0),  # a shared list may be held at once
    ]
    found = double_allocations(records)
    assert len(found) == 1
    assert found[0].startswith("dataplane/1,3 held at once")


def test_scan_reports_a_torn_tasks_file(tmp_path: Path) -> None:
    conf = make_state(str(tmp_path / "kcm"), {"dataplane": (True, ["0", "1"])})
    Path(conf, "pools/dataplane/1/tasks").write_text("12,1")
    Path(conf, "pools/dataplane/0/tasks").write_text("12,")  # what a torn write would leave
    Path(conf, "pools/dataplane/0/.owner-12").write_text("")
    found = scan(conf)
    assert found.tasks == {"dataplane/1": [12, 1]}
    assert [t.split(":")[0] for t in found.torn] == [
        f"{conf}/pools/dataplane/0/tasks",
        f"{conf}/pools/dataplane/0/.owner-12",
    ]


def test_spread_lists_pin_to_online_cpus() -> None:
    lists = spread_lists(5, 10)
    assert len(set(lists)) == 5
    online = sorted(os.sched_getaffinity(0))
    assert lists[0] == f"{online[0]},10"


def test_stderr_problem() -> None:
    ok = "kcm: error: no free CPU list in exclusive pool 'x'\n"
    assert stderr_problem(ok, ("kcm: error: no free",)) is None
    assert "2 stderr lines" in str(stderr_problem(ok + ok, ("kcm: error:",)))
    assert "traceback" in str(stderr_problem("Traceback (most recent call last):\nX", ("k",)))
    assert "unexpected" in str(stderr_problem("kcm: error: other\n", ("kcm: error: no",)))


def test_crash_small(tmp_path: Path) -> None:
    got = figures(crash.stress(str(tmp_path), trials=45, time_limit=300, seed=3))
    assert got["trials"] == 45
    assert got["isolate_trials"] == got["reconcile_trials"] == got["init_trials"] == 15
    assert got["torn_files"] == 0
    assert got["live_tasks_removed"] == 0
    assert got["dead_held_after_reconcile"] == 0
    assert got["init_leftovers_at_end"] == 0
    assert got.get("init_partial", 0) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="ns_last_pid needs root")
def test_pid_reuse_small(tmp_path: Path) -> None:
    got = figures(pid_reuse.stress(str(tmp_path), trials=6, time_limit=300))
    assert got["trials"] == 6
    assert got["reuses_arranged"] == got["lists_freed"]
    assert int(str(got["reuses_arranged"])) >= 4
    assert got["lists_not_freed"] == 0 and got["impostors_harmed"] == 0
    assert got.get("impostor_kcm_isolate", 0) and got.get("impostor_pinned_sleep", 0)


def test_isolation_small_pins_spin_task_and_hogs(tmp_path: Path) -> None:
    # Timing ratios are for the full-scale run on a quiet machine; here the mechanism: every
    # run produced a rate, and the spin task and hogs ran where kcm put them (the script
    # fails the report otherwise).
    got = figures(isolation.stress(str(tmp_path), rounds=1, seconds=0.3))
    for scenario in isolation.SCENARIOS:
        assert int(str(got[f"{scenario}_rate_median"])) > 0
    assert got["dataplane_cpus"] != got["infra_cpus"]
    for how in isolation.HOWS:
        assert isinstance(got[f"{how}_loaded_over_idle"], float)
    assert isinstance(got["kcm_ratio_over_taskset_ratio"], float)


def test_exclusive_lists_are_disjoint_and_at_most_one_per_cpu() -> None:
    online = sorted(os.sched_getaffinity(0))
    lists = exclusive_lists(len(online), 10)
    cpus = [cpulist.parse(name) for name in lists]
    assert all(not (a & b) for i, a in enumerate(cpus) for b in cpus[i + 1 :])
    assert [min(c) for c in cpus] == online
    with pytest.raises(ValueError, match="need"):
        exclusive_lists(len(online) + 1, 10)
