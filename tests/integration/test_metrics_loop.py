"""The reconcile loop's totals: a real ``kcm reconcile --interval`` process frees planted dead
PIDs, records its totals in ``.reconcile.json``, and a real ``kcm metrics`` serves them over
HTTP as counters; ``kill -9`` at any moment leaves a file that parses."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm import totals
from kcm.errors import ParseError
from kcm.state import TMP_PREFIX
from tests.conftest import KCM, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import build_state, snapshot, tree
from tests.integration.test_metrics import Server, parse, value

NAME = ".reconcile.json"


def dead_pids(n: int) -> list[int]:
    """PIDs of processes that ran and were reaped: gone, and not soon reused."""
    found = []
    for _ in range(n):
        proc = subprocess.Popen(["true"])
        proc.wait()
        found.append(proc.pid)
    return found


class Loop:
    """A real ``kcm reconcile --interval`` process over ``conf``."""

    def __init__(self, conf: str, interval: str, **env: str) -> None:
        self.conf = conf
        self.started = time.time()
        self.proc = subprocess.Popen(
            [KCM, "reconcile", f"--conf-dir={conf}", f"--interval={interval}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=kcm_env(KCM_PROC_FS="/proc", **env),
        )

    def recorded(self, *, hand_edited: bool = False) -> totals.Totals | None:
        """The file's totals; ``hand_edited``: ``None`` while it holds what a test wrote."""
        try:
            text = Path(self.conf, NAME).read_text()
        except FileNotFoundError:
            return None
        try:
            return totals.parse(text)
        except ParseError:
            if hand_edited:
                return None
            raise

    def wait_for_passes(
        self, n: int, timeout: float = 60, *, hand_edited: bool = False
    ) -> totals.Totals:
        deadline = time.monotonic() + timeout
        while True:
            found = self.recorded(hand_edited=hand_edited)
            if found is not None and found.passes >= n:
                return found
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"fewer than {n} passes recorded: {found}"
            time.sleep(0.02)

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err.decode()


@pytest.fixture
def loops() -> Iterator[list[Loop]]:
    started: list[Loop] = []
    yield started
    for loop in started:
        if loop.proc.poll() is None:
            loop.proc.kill()
        loop.proc.communicate()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def write_tasks_locked(conf: str, pool: str, cpus: str, pids: list[int]) -> None:
    """Plant tasks the way a writer must: under the exclusive lock, atomically."""
    fd = os.open(os.path.join(conf, "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = Path(conf, "pools", pool, cpus, "tasks")
        tmp = path.with_name(".tmp-test-tasks")
        tmp.write_text(",".join(map(str, pids)))
        os.rename(tmp, path)
    finally:
        os.close(fd)


def test_a_real_loop_frees_planted_dead_pids_and_metrics_serve_its_totals(
    tmp_path: Path, loops: list[Loop], servers: list[Server]
) -> None:
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead = dead_pids(5)
        conf = build_state(
            str(tmp_path / "kcm"),
            {
                "dataplane": (True, {"1": str(dead[0]), "2": f"{dead[1]}"}),
                "infra": (False, {"0": f"{dead[2]},{live.pid},{dead[3]},{dead[4]}"}),
            },
        )
        server = Server(conf)
        servers.append(server)
        # No loop ever ran: no reconcile family at all (not zeros, which would claim one).
        before = server.scrape()
        assert not [k for k in before if k[0].startswith("kcm_reconcile_")]
        loop = Loop(conf, "0.1")
        loops.append(loop)
        loop.wait_for_passes(3)
        samples = server.scrape()
        assert value(samples, "kcm_state_up") == 1
        assert value(samples, "kcm_reconcile_passes_total") >= 3
        assert value(samples, "kcm_reconcile_pids_freed_total") == 5
        assert value(samples, "kcm_reconcile_pass_failures_total") == 0
        assert value(samples, "kcm_reconcile_lists_handed_over_total") == 0
        assert value(samples, "kcm_reconcile_cgroups_removed_total") == 0
        assert value(samples, "kcm_reconcile_interval_seconds") == 0.1
        assert value(samples, "kcm_reconcile_last_pass_success") == 1
        start = value(samples, "kcm_reconcile_loop_start_time_seconds")
        assert loop.started - 1 <= start <= time.time()
        last = value(samples, "kcm_reconcile_last_pass_timestamp_seconds")
        assert start <= last <= time.time()
        assert 0 < value(samples, "kcm_reconcile_last_pass_duration_seconds") < 60
        assert tree(conf)["infra/0"] == [live.pid]  # what the counters say is what it did
        # Two more dead PIDs: the counter goes on from 5, passes only grow.
        more = dead_pids(2)
        write_tasks_locked(conf, "dataplane", "1", more)
        passes = loop.wait_for_passes(int(value(samples, "kcm_reconcile_passes_total")) + 2)
        assert passes.pids_freed == 7
        again = server.scrape()
        assert value(again, "kcm_reconcile_pids_freed_total") == 7
        assert value(again, "kcm_reconcile_passes_total") > value(
            samples, "kcm_reconcile_passes_total"
        )
        assert value(again, "kcm_reconcile_last_pass_timestamp_seconds") > last
        code, err = loop.stop()
        assert code == 0, err
        assert "totals not recorded" not in err
        # The loop's log counts the passes the file counts.
        final = loop.recorded()
        assert final is not None
        assert f"stopping after {final.passes} pass(es)" in err
    finally:
        live.kill()
        live.wait()


def test_failed_passes_are_counted_and_the_loop_goes_on(
    tmp_path: Path, loops: list[Loop], servers: list[Server]
) -> None:
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, {"1": ""})})
    loop = Loop(conf, "0.05", KCM_LOCK_TIMEOUT="0.2")
    loops.append(loop)
    first = loop.wait_for_passes(1)
    # Another writer holds the lock for a second: the passes meanwhile time out, and so does
    # recording them; the first pass after it records every failure, cumulative.
    fd = os.open(os.path.join(conf, "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        time.sleep(1.0)
    finally:
        os.close(fd)
    deadline = time.monotonic() + 60
    while (found := loop.recorded()) is None or found.failed_passes < 1:
        assert time.monotonic() < deadline, found
        time.sleep(0.02)
    assert found.passes >= first.passes + found.failed_passes
    server = Server(conf)
    servers.append(server)
    samples = server.scrape()
    failures = value(samples, "kcm_reconcile_pass_failures_total")
    assert failures >= found.failed_passes >= 1
    assert value(samples, "kcm_reconcile_passes_total") >= found.passes
    # A hand-edited tasks file: the passes fail on it (kcm metrics cannot read the state
    # either), and are counted once it is mended.
    tasks = Path(conf, "pools/dataplane/1/tasks")
    tasks.write_text("12,abc")
    deadline = time.monotonic() + 60
    while (bad := loop.recorded()) is None or bad.failed_passes < failures + 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert bad.last_pass_ok is False
    assert value(server.scrape(), "kcm_state_up") == 0
    tasks.write_text("")
    # The loop passes again (with KCM_LOCK_TIMEOUT=0.2 a pass on a loaded machine may still
    # time out now and then: the loop goes on, and a later one succeeds).
    deadline = time.monotonic() + 60
    while (mended := loop.recorded()) is None or not mended.last_pass_ok:
        assert time.monotonic() < deadline, mended
        time.sleep(0.02)
    assert mended.passes > bad.passes
    samples = server.scrape()
    assert value(samples, "kcm_reconcile_pass_failures_total") >= failures + 2
    assert value(samples, "kcm_reconcile_passes_total") >= mended.passes
    code, err = loop.stop()
    assert code == 0
    assert "totals not recorded (the next pass will): could not lock" in err
    assert "invalid tasks file" in err


def test_one_shot_reconcile_leaves_no_totals_and_keeps_a_loops(tmp_path: Path) -> None:
    """Only the loop records: a one-shot run (by hand, from cron) has no loop start to count
    from, and would fight a running loop over the file."""
    (dead,) = dead_pids(1)
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, {"1": str(dead)})})
    result = run_kcm("reconcile", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS="/proc"))
    assert result.code == 0, result.err
    assert not Path(conf, NAME).exists()
    recorded = totals.Totals(pid=1, started=1.0, interval=60.0).after_pass(2.0, 0.5, ok=True)
    Path(conf, NAME).write_text(totals.to_text(recorded))
    write_tasks_locked(conf, "dataplane", "1", dead_pids(1))
    before = snapshot(conf)[NAME]
    result = run_kcm("reconcile", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS="/proc"))
    assert result.code == 0, result.err
    assert snapshot(conf)[NAME] == before
    assert tree(conf)["dataplane/1"] == []


def test_a_hand_edited_totals_file_is_a_state_error_then_the_loop_mends_it(
    tmp_path: Path, loops: list[Loop], servers: list[Server]
) -> None:
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, {"0": ""})})
    Path(conf, NAME).write_text('{"format": "kcm-reconcile-totals", "version": 1, "passes": -1')
    once = run_kcm("metrics", f"--conf-dir={conf}")
    assert_one_error_line(once, f"{conf}/{NAME}: invalid reconcile totals: not JSON")
    assert (once.code, once.out) == (3, "")
    server = Server(conf)
    servers.append(server)
    samples = server.scrape()
    assert value(samples, "kcm_state_up") == 0
    line = server.read_line(5)
    assert line.startswith("kcm metrics: error: ") and "invalid reconcile totals" in line
    loop = Loop(conf, "0.05")  # the loop never reads the file: its first pass replaces it
    loops.append(loop)
    loop.wait_for_passes(1, hand_edited=True)
    samples = server.scrape()
    assert value(samples, "kcm_state_up") == 1
    assert value(samples, "kcm_reconcile_passes_total") >= 1


def test_kill_9_at_any_moment_leaves_totals_that_parse(tmp_path: Path) -> None:
    """A loop passing as fast as it can, killed at random moments, 40 times: each time the
    file is the old one or the new one, whole; temp files of killed writers are cleaned by the
    next loop's write, and kcm metrics reads it every time."""
    lists = {str(cpu): "" for cpu in range(64)}
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, lists)})
    rng = random.Random(1311)
    seen_passes = set()
    for _ in range(40):
        write_tasks_locked(conf, "infra", str(rng.randrange(64)), dead_pids(1))
        loop = Loop(conf, "0.001")
        try:
            deadline = time.monotonic() + 30
            while (now := loop.recorded()) is None or now.pid != loop.proc.pid:
                assert time.monotonic() < deadline
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
        finally:
            loop.proc.kill()
            loop.proc.communicate()
        found = totals.parse(Path(conf, NAME).read_text())
        assert found.passes >= 1
        assert found.pid == loop.proc.pid
        seen_passes.add(found.passes)
        tmps = [n for n in os.listdir(conf) if n.startswith(TMP_PREFIX)]
        assert len(tmps) <= 1, tmps  # the one this kill left, if any: the next write cleans
    assert len(seen_passes) > 1  # killed at different moments
    result = run_kcm("metrics", f"--conf-dir={conf}")
    assert result.code == 0, result.err
    assert value(parse(result.out), "kcm_reconcile_passes_total") >= 1
