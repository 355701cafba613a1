"""kcm reconcile: dead PIDs go, reused PIDs are caught, live tasks stay, affinity is checked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KCM, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.procfs import build_procfs, stat_line
from tests.fixtures.state import build_state, snapshot, tree
from tests.integration.test_isolate import wait_for

# The keys kcm's report adds beside CMK's two, when there is nothing to say about cgroups.
NO_CGROUP_FINDINGS = {
    "handedOverCpuLists": [],
    "processesOutsideTheirList": [],
    "removedCgroups": [],
    "unaccountedCgroups": [],
}


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


def test_removes_dead_keeps_live_and_reports_it(
    tmp_path: Path, live: list[subprocess.Popen[bytes]]
) -> None:
    live.append(pinned_sleep({1}))
    live.append(pinned_sleep({0}))
    gone, also_gone = dead_pid(), dead_pid()
    conf = build_state(
        str(tmp_path / "kcm"),
        {
            "dataplane": (True, {"1": f"{gone},{live[0].pid}"}),
            "infra": (False, {"0": f"{live[1].pid},{gone},{also_gone}"}),
        },
    )
    result = reconcile(conf)
    assert result.code == 0
    assert tree(conf) == {
        "dataplane": True,
        "dataplane/1": [live[0].pid],
        "infra": False,
        "infra/0": [live[1].pid],
    }
    # CMK's report on stdout, a line per list on stderr.
    assert json.loads(result.out) == {
        **NO_CGROUP_FINDINGS,
        "mismatchedCpuMasks": [],
        "reclaimedCpuLists": [
            {"cpus": "1", "pids": [gone], "pool": "dataplane"},
            {"cpus": "0", "pids": [gone, also_gone], "pool": "infra"},
        ],
    }
    assert result.out == json.dumps(json.loads(result.out), sort_keys=True, indent=2) + "\n"
    assert result.err.splitlines() == [
        f"kcm reconcile: removed dead PID {gone} from dataplane/1",
        f"kcm reconcile: removed dead PIDs {gone}, {also_gone} from infra/0",
    ]


def test_quiet_keeps_the_report_and_drops_the_lines(tmp_path: Path) -> None:
    gone = dead_pid()
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, {"1": str(gone)})})
    result = run_kcm("reconcile", f"--conf-dir={conf}", "--quiet", env=kcm_env(KCM_PROC_FS="/proc"))
    assert (result.code, result.err) == (0, "")
    assert json.loads(result.out)["reclaimedCpuLists"] == [
        {"cpus": "1", "pids": [gone], "pool": "dataplane"}
    ]
    assert tree(conf)["dataplane/1"] == []


def test_the_interval_loop_prints_no_report(tmp_path: Path) -> None:
    gone = dead_pid()
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, {"1": str(gone)})})
    loop = subprocess.Popen(
        [KCM, "reconcile", f"--conf-dir={conf}", "--interval=0.1"],
        env=kcm_env(KCM_PROC_FS="/proc"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: tree(conf)["dataplane/1"] == [])
        time.sleep(0.3)
    finally:
        loop.send_signal(signal.SIGTERM)
        out, err = loop.communicate(timeout=10)
    assert (loop.returncode, out) == (0, "")
    passes = [line for line in err.splitlines() if " pass " in line]
    assert passes[0].endswith(
        f"removed 1 dead task(s): {gone} from dataplane/1; 0 affinity mismatch(es)"
    )
    assert all("kcm reconcile:" in line for line in err.splitlines())


def test_nothing_to_do_changes_nothing(tmp_path: Path, live: list[subprocess.Popen[bytes]]) -> None:
    live.append(pinned_sleep({1}))
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, {"1": str(live[0].pid)})})
    before = snapshot(conf)
    result = reconcile(conf)
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        '{\n  "handedOverCpuLists": [],\n  "mismatchedCpuMasks": [],\n'
        '  "processesOutsideTheirList": [],\n  "reclaimedCpuLists": [],\n'
        '  "removedCgroups": [],\n  "unaccountedCgroups": []\n}\n'
    )
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
    assert json.loads(result.out) == {
        **NO_CGROUP_FINDINGS,
        "mismatchedCpuMasks": [{"allowed": "0-1", "cpus": "1", "pid": live[0].pid}],
        "reclaimedCpuLists": [],
    }
    assert tree(conf)["dataplane/1"] == [live[0].pid]  # reported, never removed


def test_without_a_cgroup_kill_9_of_isolate_frees_the_list_under_its_command(
    state2: str, tmp_path: Path
) -> None:
    # The gap issue 10 closes where the host has a cgroup (tests/integration/
    # test_isolate_cgroups.py): without one, only kcm's PID holds the list, so once kcm is
    # killed, reconcile frees it under the still running command. README says so.
    no_cgroups = tmp_path / "no-cgroupfs"
    no_cgroups.mkdir()
    env = kcm_env(KCM_PROC_FS="/proc", KCM_CGROUP_FS=str(no_cgroups))
    holder = subprocess.Popen(
        [KCM, "isolate", f"--conf-dir={state2}", "--pool=dataplane", "exec sleep 60"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    command = None
    try:
        wait_for(lambda: tree(state2)["dataplane/1"] == [holder.pid])
        wait_for(lambda: children_of(holder.pid) != [])
        command = children_of(holder.pid)[0]
        holder.kill()
        holder.wait()
        assert tree(state2)["dataplane/1"] == [holder.pid]
        result = run_kcm("reconcile", f"--conf-dir={state2}", env=env)
        assert result.code == 0, result.err
        assert tree(state2)["dataplane/1"] == []
        assert [n for n in os.listdir(Path(state2, "pools/dataplane/1")) if n != "tasks"] == []
        assert Path(f"/proc/{command}").exists()  # still running on the list kcm freed
        again = run_kcm("isolate", f"--conf-dir={state2}", "--pool=dataplane", "echo free", env=env)
        assert (again.code, again.out) == (0, "free\n")
    finally:
        if command is not None:
            os.kill(command, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    """The live children of ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(name))
    return found


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


# -- when in doubt, alive --------------------------------------------------------------------


def test_a_pid_whose_procfs_entry_exists_is_alive_even_if_its_stat_cannot_be_read(
    tmp_path: Path,
) -> None:
    # Found by outside testing: a PID whose stat could not be read was removed, freeing the
    # list of a task that may well run. Only a missing entry, or a zombie, is dead.
    proc = build_procfs(
        str(tmp_path / "proc"),
        {
            101: None,  # the directory, no stat file
            102: "garbage\n",  # a stat that does not parse
            103: stat_line(103),  # alive
            104: stat_line(104, state="Z"),  # exited, not reaped
        },
    )
    os.makedirs(f"{proc}/105/stat")  # a stat that cannot be read
    # 106 has no entry at all: gone.
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, {"0": "101,102,103,104,105,106"})})
    result = run_kcm("reconcile", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS=proc))
    assert result.code == 0, result.err
    assert tree(conf)["infra/0"] == [101, 102, 103, 105]
    assert json.loads(result.out)["reclaimedCpuLists"] == [
        {"cpus": "0", "pids": [104, 106], "pool": "infra"}
    ]


# -- the lock's deadline ---------------------------------------------------------------------


def _write_when_read(fifo: str, text: str, delay: float) -> threading.Thread:
    """Answer the first reader of ``fifo`` only ``delay`` seconds after it opened it."""

    def answer() -> None:
        deadline = time.monotonic() + 60
        while True:  # a FIFO opens for writing without blocking only once a reader is there
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)
        time.sleep(delay)
        os.write(fd, text.encode())
        os.close(fd)

    thread = threading.Thread(target=answer)
    thread.start()
    return thread


def test_a_pass_stopped_by_the_lock_deadline_says_exactly_what_it_wrote(tmp_path: Path) -> None:
    # Found by outside testing: a pass that crossed KCM_LOCK_TIMEOUT half-way said "nothing
    # was written" after writing some lists. Here the procfs answers slowly for the second
    # list's task (a FIFO as its stat), so the pass crosses the deadline between two lists.
    timeout = 0.5
    proc = build_procfs(str(tmp_path / "proc"), {2002: None})
    os.mkfifo(f"{proc}/2002/stat")
    conf = build_state(
        str(tmp_path / "kcm"), {"dataplane": (True, {"1": "2001", "2": "2002", "3": "2003"})}
    )
    Path(conf, "pools/dataplane/1/.owner-2001").write_text("77\n")
    slow = _write_when_read(f"{proc}/2002/stat", stat_line(2002, state="Z"), timeout + 0.5)
    result = run_kcm(
        "reconcile",
        f"--conf-dir={conf}",
        env=kcm_env(KCM_PROC_FS=proc, KCM_LOCK_TIMEOUT=str(timeout)),
    )
    slow.join()
    assert result.code == 5
    assert result.err == (
        f"kcm: error: held {conf}/lock past KCM_LOCK_TIMEOUT (0.5s); reconcile stopped at"
        " dataplane/2 (list 2 of 3): it wrote dataplane/1; it left dataplane/2, dataplane/3 as"
        " they were\n"
    )
    assert result.out == ""
    # What the message says is what the files show.
    assert tree(conf) == {
        "dataplane": True,
        "dataplane/1": [],
        "dataplane/2": [2002],
        "dataplane/3": [2003],
    }
    assert os.listdir(Path(conf, "pools/dataplane/1")) == ["tasks"]
    # The next pass, with a procfs that answers at once, goes on from there.
    os.unlink(f"{proc}/2002/stat")
    Path(proc, "2002/stat").write_text(stat_line(2002, state="Z"))
    again = run_kcm("reconcile", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS=proc))
    assert again.code == 0, again.err
    assert tree(conf) == {
        "dataplane": True,
        "dataplane/1": [],
        "dataplane/2": [],
        "dataplane/3": [],
    }


# -- a list of many dead PIDs ----------------------------------------------------------------

# Above PID_MAX_LIMIT (2^22): never the PID of a live process on any Linux.
NEVER_A_PID = 4194305


@pytest.fixture
def memory_dir(tmp_path: Path) -> Iterator[str]:
    """A directory in memory (/dev/shm) when there is one: 60,000 files on a disk that other
    tests keep busy with fsyncs take minutes to create, and the point here is the algorithm."""
    if not os.path.isdir("/dev/shm"):
        yield str(tmp_path)
        return
    where = tempfile.mkdtemp(prefix="kcm-test-", dir="/dev/shm")
    try:
        yield where
    finally:
        shutil.rmtree(where)


def test_a_pass_over_60000_dead_pids_of_one_list_ends_within_the_lock_timeout(
    memory_dir: str,
) -> None:
    # Found by outside testing: a pass was quadratic in one list's dead PIDs (40,000: 9 s),
    # so from about 45,000 on it outlived a 10 s KCM_LOCK_TIMEOUT and never cleaned the list.
    # Linear now (benchmarks/reconcile.py: 100,000 in well under a second).
    pids = range(NEVER_A_PID, NEVER_A_PID + 60_000)
    conf = build_state(f"{memory_dir}/kcm", {"infra": (False, {"0": ",".join(map(str, pids))})})
    list_dir = Path(conf, "pools/infra/0")
    for pid in pids:  # each with the owner record kcm isolate writes
        (list_dir / f".owner-{pid}").write_text("1234\n")
    result = run_kcm(
        "reconcile",
        f"--conf-dir={conf}",
        "--quiet",
        env=kcm_env(KCM_PROC_FS="/proc", KCM_LOCK_TIMEOUT="10"),
    )
    assert result.code == 0, result.err
    assert tree(conf)["infra/0"] == []
    assert os.listdir(list_dir) == ["tasks"]
    assert json.loads(result.out)["reclaimedCpuLists"][0]["pids"] == list(pids)
