"""kcm reconcile: dead PIDs go, reused PIDs are caught, live tasks stay, affinity is checked."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KCM, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import build_state, snapshot, tree
from tests.integration.test_isolate import wait_for


def reconcile(conf: str, **extra: str):
    return run_kcm("reconcile", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS="/proc", **extra))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def pinned_sleep(cpus: set[int]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "60"])
    os.sched_setaffinity(proc.pid, cpus)
    return proc


@pytest.fixture
def live() -> list[subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_removes_dead_keeps_live(tmp_path: Path, live: list[subprocess.Popen[bytes]]) -> None:
    live.append(pinned_sleep({1}))
    live.append(pinned_sleep({0}))
    gone = dead_pid()
    conf = build_state(
        str(tmp_path / "kcm"),
        {
            "dataplane": (True, {"1": f"{gone},{live[0].pid}"}),
            "infra": (False, {"0": f"{live[1].pid},{gone}"}),
        },
    )
    result = reconcile(conf)
    assert (result.code, result.err) == (0, "")
    assert tree(conf) == {
        "dataplane": True,
        "dataplane/1": [live[0].pid],
        "infra": False,
        "infra/0": [live[1].pid],
    }


def test_nothing_to_do_changes_nothing(tmp_path: Path, live: list[subprocess.Popen[bytes]]) -> None:
    live.append(pinned_sleep({1}))
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, {"1": str(live[0].pid)})})
    before = snapshot(conf)
    assert reconcile(conf).code == 0
    assert snapshot(conf) == before


def test_zombie_is_dead(tmp_path: Path) -> None:
    zombie = subprocess.Popen(["true"])
    wait_for(
        lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    )
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, {"0": str(zombie.pid)})})
    assert reconcile(conf).code == 0
    zombie.wait()
    assert tree(conf)["infra/0"] == []


def test_affinity_mismatch_is_reported_and_exits_1(
    tmp_path: Path, live: list[subprocess.Popen[bytes]]
) -> None:
    live.append(pinned_sleep({0, 1}))
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, {"1": str(live[0].pid)})})
    result = reconcile(conf)
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines == [
        f"kcm: affinity mismatch: pid {live[0].pid} in dataplane/1 may run on CPUs 0-1, expected 1"
    ]
    assert tree(conf)["dataplane/1"] == [live[0].pid]  # reported, never removed


def test_kill_9_of_isolate_then_reconcile_frees_the_list(state2: str) -> None:
    holder = subprocess.Popen(
        [KCM, "isolate", f"--conf-dir={state2}", "--pool=dataplane", "sleep 60"],
        env=kcm_env(KCM_PROC_FS="/proc"),
    )
    try:
        wait_for(lambda: tree(state2)["dataplane/1"] == [holder.pid])
        holder.kill()
        holder.wait()
        assert tree(state2)["dataplane/1"] == [holder.pid]  # the seed's known gap
        result = reconcile(state2)
        assert result.code == 0, result.err
        assert tree(state2)["dataplane/1"] == []
        assert [n for n in os.listdir(Path(state2, "pools/dataplane/1")) if n != "tasks"] == []
        again = run_kcm(
            "isolate",
            f"--conf-dir={state2}",
            "--pool=dataplane",
            "echo free",
            env=kcm_env(KCM_PROC_FS="/proc"),
        )
        assert (again.code, again.out) == (0, "free\n")
    finally:
        subprocess.run(["pkill", "-f", "^sleep 60$"], check=False)


def test_recorded_start_time_exposes_a_reused_pid(
    state2: str, live: list[subprocess.Popen[bytes]]
) -> None:
    # A live process on the list whose start time is not the one isolate recorded: the PID
    # was reused. (The real reuse, through ns_last_pid, is in the next test.)
    live.append(pinned_sleep({1}))
    pid = live[0].pid
    Path(state2, "pools/dataplane/1/tasks").write_text(str(pid))
    Path(state2, f"pools/dataplane/1/.owner-{pid}").write_text("1\n")
    assert reconcile(state2).code == 0
    assert tree(state2)["dataplane/1"] == []
    assert not Path(state2, f"pools/dataplane/1/.owner-{pid}").exists()


def test_pid_written_by_another_tool_is_judged_by_existence(
    state2: str, live: list[subprocess.Popen[bytes]]
) -> None:
    live.append(pinned_sleep({1}))
    Path(state2, "pools/dataplane/1/tasks").write_text(str(live[0].pid))
    assert reconcile(state2).code == 0
    assert tree(state2)["dataplane/1"] == [live[0].pid]


def _spawn_with_pid(target: int) -> subprocess.Popen[bytes] | None:
    """Start `sleep` as PID ``target`` through ns_last_pid (root only); None if raced."""
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(target - 1))
        proc = subprocess.Popen(["sleep", "60"])
        if proc.pid == target:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="ns_last_pid needs root")
def test_real_pid_reuse_after_kill_9(
    state2: str, tmp_path: Path, live: list[subprocess.Popen[bytes]]
) -> None:
    shell = tmp_path / "shell"
    holder = subprocess.Popen(
        [
            KCM,
            "isolate",
            f"--conf-dir={state2}",
            "--pool=dataplane",
            f"echo $$ > {shell}; exec sleep 60",
        ],
        env=kcm_env(KCM_PROC_FS="/proc"),
    )
    wait_for(lambda: tree(state2)["dataplane/1"] == [holder.pid] and shell.exists())
    wait_for(lambda: shell.read_text().strip().isdigit())
    holder.kill()  # kill -9 of kcm isolate: its PID stays in the tasks file
    holder.wait()
    command_pid = int(shell.read_text())
    os.killpg(command_pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{command_pid}").exists())
    impostor = _spawn_with_pid(holder.pid)
    assert impostor is not None, "could not arrange the PID reuse"
    live.append(impostor)
    os.sched_setaffinity(impostor.pid, {1})  # even with matching affinity it is not ours
    assert tree(state2)["dataplane/1"] == [impostor.pid]
    result = reconcile(state2)
    assert result.code == 0, result.err
    assert tree(state2)["dataplane/1"] == []
    assert impostor.poll() is None  # the unrelated process is left alone


def test_stale_temp_and_owner_files_are_cleaned(state2: str) -> None:
    d = Path(state2, "pools/infra/0")
    (d / ".tmp-999999999-1-tasks").write_text("12")
    (d / ".owner-999999998").write_text("5\n")
    assert reconcile(state2).code == 0
    assert sorted(os.listdir(d)) == ["tasks"]


def test_requires_proc_fs(state2: str) -> None:
    before = snapshot(state2)
    result = run_kcm("reconcile", f"--conf-dir={state2}", env=kcm_env())
    assert_one_error_line(result, "KCM_PROC_FS")
    assert snapshot(state2) == before


def test_corrupt_state_is_not_rewritten(state2: str) -> None:
    Path(state2, "pools/infra/0/tasks").write_text("12,abc")
    before = snapshot(state2)
    result = reconcile(state2)
    assert_one_error_line(result, "pools/infra/0/tasks")
    assert snapshot(state2) == before
