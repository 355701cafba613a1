"""kcm describe --output=table: the human view of the state, against real files and processes."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KCM, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.procfs import SEED_TASKS, SEED_UPTIME, build_aged_procfs
from tests.fixtures.state import SEED_STATE, build_state, snapshot, tree
from tests.fixtures.sysfs import SEED_16, build_sysfs, ht_box

GOLDEN = (Path(__file__).parent.parent / "fixtures" / "seed_describe_table.txt").read_text()
SEED_JSON = (Path(__file__).parent.parent / "fixtures" / "seed_describe.json").read_text()


@pytest.fixture
def seed_host(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The seeds' example state, its 16-CPU machine (one NUMA node) and what runs on it."""
    conf = build_state(str(tmp_path / "kcm"), SEED_STATE)
    sys_root = build_sysfs(str(tmp_path / "sys"), SEED_16, numa={0: list(range(16))})
    proc_root = build_aged_procfs(str(tmp_path / "proc"), SEED_UPTIME, SEED_TASKS)
    return conf, kcm_env(KCM_SYS_FS=sys_root, KCM_PROC_FS=proc_root)


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def columns(header: str) -> list[int]:
    """Where each column of the header starts."""
    return [m.start() for m in re.finditer(r"\S+", header)]


def test_seed_example_matches_the_golden_file(seed_host: tuple[str, dict[str, str]]) -> None:
    conf, env = seed_host
    before = snapshot(conf)
    result = run_kcm("describe", "--output=table", f"--conf-dir={conf}", env=env)
    assert (result.code, result.err) == (0, "")
    assert result.out == GOLDEN
    assert snapshot(conf) == before  # a read, nothing more


@pytest.mark.parametrize(
    "flags", [["-o", "table"], ["-otable"], ["-o=table"], ["--output", "table"]]
)
def test_every_spelling_of_the_option(
    seed_host: tuple[str, dict[str, str]], flags: list[str]
) -> None:
    conf, env = seed_host
    result = run_kcm("describe", *flags, f"--conf-dir={conf}", env=env)
    assert (result.code, result.out) == (0, GOLDEN)


def test_json_stays_the_default_and_the_seeds_bytes(seed_host: tuple[str, dict[str, str]]) -> None:
    conf, env = seed_host
    expected = SEED_JSON.replace('"/etc/kcm"', f'"{conf}"')
    assert run_kcm("describe", f"--conf-dir={conf}", env=env).out == expected
    assert run_kcm("describe", "-o", "json", f"--conf-dir={conf}", env=env).out == expected


def test_live_tasks_show_their_command_and_age_from_the_real_proc(
    tmp_path: Path, sys2: str, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    a, b = sleepers
    conf = build_state(
        str(tmp_path / "kcm"),
        {
            "dataplane": (True, {"1": str(a.pid), "2": ""}),
            "infra": (False, {"0": f"{b.pid},{dead_pid()}"}),
        },
    )
    # No KCM_PROC_FS: the table reads /proc. A sysfs without NUMA nodes: "-".
    result = run_kcm("describe", "-o", "table", f"--conf-dir={conf}", env=kcm_env(KCM_SYS_FS=sys2))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    cells = [line.split() for line in lines]
    assert cells[0] == ["POOL", "EXCLUSIVE", "CPUS", "NUMA", "STATE", "PID", "COMMAND", "AGE"]
    assert cells[1][:7] == ["dataplane", "yes", "1", "-", "held", str(a.pid), "sleep"]
    assert re.fullmatch(r"\d+s", cells[1][7])
    assert cells[2] == ["dataplane", "yes", "2", "-", "free"]
    assert cells[3][:7] == ["infra", "no", "0", "-", "held", str(b.pid), "sleep"]
    assert cells[4][1:] == ["?", "?"]  # the dead PID, on the list's second row


def test_a_real_isolate_booking_shows_up_as_held(state2: str, sys2: str) -> None:
    """kcm isolate records its own PID; the table names that process and the free list."""
    holder = subprocess.Popen(
        [KCM, "isolate", f"--conf-dir={state2}", "--pool=dataplane", "sleep 60"],
        env=kcm_env(KCM_PROC_FS="/proc"),
    )
    try:
        deadline = time.monotonic() + 10
        while tree(state2)["dataplane/1"] != [holder.pid]:
            assert time.monotonic() < deadline, "isolate never booked the list"
            time.sleep(0.02)
        env = kcm_env(KCM_SYS_FS=sys2)
        result = run_kcm("describe", "-o", "table", f"--conf-dir={state2}", env=env)
        rows = [line.split() for line in result.out.splitlines()[1:]]
        assert rows[0][:7] == ["dataplane", "yes", "1", "-", "held", str(holder.pid), "kcm"]
        assert rows[1] == ["infra", "no", "0", "-", "free"]
    finally:
        holder.terminate()
        holder.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_numa_nodes_come_from_kcm_sys_fs_and_are_a_dash_without_it(tmp_path: Path) -> None:
    conf = build_state(
        str(tmp_path / "kcm"),
        {"dataplane": (True, {"9,29": "", "19,39": ""}), "infra": (False, {"0-8,20-28": ""})},
    )
    # Two sockets of 10 cores, a NUMA node each: siblings n and n+20.
    socket0 = [*range(10), *range(20, 30)]
    socket1 = [*range(10, 20), *range(30, 40)]
    sys_root = build_sysfs(str(tmp_path / "sys"), ht_box(2, 10), numa={0: socket0, 1: socket1})
    out = run_kcm("describe", "-o", "table", f"--conf-dir={conf}", env=kcm_env(KCM_SYS_FS=sys_root))
    numa = {line.split()[2]: line.split()[3] for line in out.out.splitlines()[1:]}
    assert numa == {"9,29": "0", "19,39": "1", "0-8,20-28": "0"}
    missing = run_kcm(
        "describe", "-o", "table", f"--conf-dir={conf}", env=kcm_env(KCM_SYS_FS=str(tmp_path))
    )
    assert missing.code == 0, missing.err
    assert {line.split()[3] for line in missing.out.splitlines()[1:]} == {"-"}


def test_a_shared_list_of_many_tasks_shows_three_and_counts_the_rest(tmp_path: Path) -> None:
    pids = ",".join(str(p) for p in range(5000, 5040))
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, {"0-1": pids})})
    out = run_kcm("describe", "-o", "table", f"--conf-dir={conf}", env=kcm_env()).out
    lines = out.splitlines()
    assert len(lines) == 5
    assert [line.split()[0] for line in lines[2:4]] == ["5001", "5002"]
    assert lines[4].split() == ["(+37", "more)"]
    assert lines[4].index("(") == columns(lines[0])[6]  # under COMMAND


def test_1024_cpus_stay_aligned(tmp_path: Path) -> None:
    """512 lists of two hyperthreads: every row's cells start where the header's columns do."""
    lists = {f"{i},{i + 512}": str(100000 + i) for i in range(4, 512)}
    conf = build_state(
        str(tmp_path / "kcm"),
        {"dataplane": (True, lists), "infra": (False, {"0-3,512-515": ""})},
    )
    out = run_kcm("describe", "-o", "table", f"--conf-dir={conf}", env=kcm_env()).out
    lines = out.splitlines()
    assert len(lines) == 1 + 509
    starts = columns(lines[0])
    for line in lines[1:]:
        assert columns(line) == starts[: len(line.split())], line
    # Pools by name, lists by their lowest CPU (not as strings: 100,612 after 99,611).
    assert [line.split()[2] for line in lines[1:3]] == ["4,516", "5,517"]
    assert [line.split()[2] for line in lines[96:98]] == ["99,611", "100,612"]
    assert [line.split()[2] for line in lines[-2:]] == ["511,1023", "0-3,512-515"]
    assert max(len(line) for line in lines) < 100


def run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run kcm with its stdout on a pseudo-terminal; its status and what the terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([KCM, *args], stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode().replace("\r\n", "\n")


def test_colour_only_on_a_terminal_and_never_with_no_color(
    seed_host: tuple[str, dict[str, str]],
) -> None:
    conf, env = seed_host
    args = ["describe", "-o", "table", f"--conf-dir={conf}"]
    code, shown = run_on_terminal(args, {**env, "TERM": "xterm"})
    assert code == 0
    assert "\x1b[1mPOOL" in shown
    assert re.sub(r"\x1b\[[0-9;]*m", "", shown) == GOLDEN
    for quiet in ({"NO_COLOR": "1"}, {"TERM": "dumb"}):
        code, shown = run_on_terminal(args, {**env, "TERM": "xterm", **quiet})
        assert (code, shown) == (0, GOLDEN)
    assert "\x1b" not in run_kcm(*args, env=env).out  # a pipe


def test_unknown_format_is_a_usage_error(seed_host: tuple[str, dict[str, str]]) -> None:
    conf, env = seed_host
    result = run_kcm("describe", "-o", "yaml", f"--conf-dir={conf}", env=env)
    assert_one_error_line(result, "--output='yaml' is not a format: json or table")
    assert (result.code, result.out) == (2, "")
    result = run_kcm("describe", "-o", env=env)
    assert_one_error_line(result, "--output needs a value")


def test_a_corrupt_state_is_the_same_error_as_for_json(
    seed_host: tuple[str, dict[str, str]],
) -> None:
    conf, env = seed_host
    Path(conf, "pools/dataplane/4,12/tasks").write_text("12,abc")
    before = snapshot(conf)
    result = run_kcm("describe", "-o", "table", f"--conf-dir={conf}", env=env)
    assert_one_error_line(result, "pools/dataplane/4,12/tasks: invalid tasks file")
    assert (result.code, result.out) == (3, "")
    assert snapshot(conf) == before


def test_a_procfs_without_the_tasks_shows_them_as_gone(
    seed_host: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    conf, env = seed_host
    empty = tmp_path / "empty-proc"
    empty.mkdir()
    out = run_kcm(
        "describe", "-o", "table", f"--conf-dir={conf}", env={**env, "KCM_PROC_FS": str(empty)}
    )
    assert out.code == 0, out.err
    assert {tuple(line.split()[-2:]) for line in out.out.splitlines()[1:]} == {("?", "?")}


def test_past_64_tasks_one_listing_of_proc_finds_the_live_ones(
    tmp_path: Path, sys2: str, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """Over 64 PIDs to show, the table lists /proc once instead of a lookup per PID."""
    a, b = sleepers
    gone = dead_pid()
    lists = {str(cpu): str(gone) for cpu in range(2, 70)}
    lists["0"] = str(a.pid)
    lists["1"] = str(b.pid)
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, lists)})
    out = run_kcm("describe", "-o", "table", f"--conf-dir={conf}", env=kcm_env(KCM_SYS_FS=sys2))
    assert out.code == 0, out.err
    commands = {line.split()[2]: line.split()[6] for line in out.out.splitlines()[1:]}
    assert len(commands) == 70
    assert (commands["0"], commands["1"]) == ("sleep", "sleep")
    assert {commands[str(cpu)] for cpu in range(2, 70)} == {"?"}
