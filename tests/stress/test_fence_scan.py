"""stress.fence's own scan of who ran on a dataplane CPU, on real threads of this host (read
only): a thread last on the CPU at the first sample only, whose affinity excludes it, did not
run there (moved off while asleep, woken elsewhere); every other one that ran is counted."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.host.threads import parse_status_allowed
from stress.fence import Seen, ran_there


@pytest.fixture
def pinned_to_0() -> Iterator[int]:
    proc = subprocess.Popen(["taskset", "-c", "0", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10  # until taskset has pinned itself and exec'ed sleep
        while time.monotonic() < deadline:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            if "Name:\tsleep" in status and parse_status_allowed(status) == {0}:
                break
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def seen(pid: int, processor: int, runtime_ns: int) -> dict[int, Seen]:
    return {pid: Seen(pid, "sleep", processor, runtime_ns, None)}


def test_a_thread_that_left_the_cpu_asleep_and_may_not_go_back_did_not_run_there(
    pinned_to_0: int,
) -> None:
    pid = pinned_to_0
    assert ran_there(seen(pid, 1, 100), seen(pid, 0, 200), 1, set()) == []


def test_a_thread_on_the_cpu_at_the_end_or_allowed_there_ran_there(pinned_to_0: int) -> None:
    pid = pinned_to_0
    assert ran_there(seen(pid, 0, 100), seen(pid, 0, 200), 0, set()) == [f"sleep ({pid}/{pid})"]
    # last on CPU 0 at the first sample, elsewhere at the end, still allowed on 0: counted
    assert ran_there(seen(pid, 0, 100), seen(pid, 1, 200), 0, set()) == [f"sleep ({pid}/{pid})"]
    assert ran_there(seen(pid, 0, 100), seen(pid, 0, 100), 0, set()) == []  # it did not run
    assert ran_there(seen(pid, 0, 100), seen(pid, 0, 200), 0, {pid}) == []  # booked
