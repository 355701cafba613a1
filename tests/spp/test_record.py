"""The record of what a launch started, and how a window found later is judged against it."""

from __future__ import annotations

import pytest

from spp_runner import record
from spp_runner.procfs import ProcStat
from spp_runner.record import Started, Verdict
from spp_runner.tmux import Pane

STARTED = Started("controller", "@3", 4242, 987654)


def pane(pid: int | None = 4242, dead: bool = False, window_id: str = "@3") -> Pane:
    return Pane(window_id, "controller", "%3", pid, dead, 1 if dead else None)


def stat(pid: int = 4242, start_time: int = 987654, state: str = "S") -> ProcStat:
    return ProcStat(pid, "python3", state, 1, start_time)


@pytest.mark.parametrize(
    ("started", "found", "now", "verdict"),
    [
        (STARTED, pane(), stat(), Verdict.OURS),
        (STARTED, None, None, Verdict.GONE),
        (STARTED, pane(pid=5151), stat(pid=5151), Verdict.REPLACED),  # respawned
        (STARTED, pane(), stat(start_time=1_000_000), Verdict.REPLACED),  # PID reused
        (STARTED, pane(dead=True), None, Verdict.OURS),  # it ended: nothing to act on
        (STARTED, pane(dead=True), stat(start_time=5), Verdict.OURS),  # dead, PID since reused
        (STARTED, pane(), None, Verdict.OURS),  # gone before tmux noticed
        (Started("controller", "@3", 4242, None), pane(), stat(), Verdict.REPLACED),
    ],
    ids=[
        "same-process",
        "window-closed",
        "pane-respawned",
        "pid-reused",
        "dead",
        "dead-pid-reused",
        "process-gone",
        "start-time-never-known",
    ],
)
def test_judge(
    started: Started, found: Pane | None, now: ProcStat | None, verdict: Verdict
) -> None:
    assert record.judge(started, found, now) is verdict


def test_running_takes_the_start_time_of_that_pid_only() -> None:
    placeholder = Started("primary", "@4", None, None)
    assert placeholder.running(77, stat(pid=77, start_time=12)) == Started("primary", "@4", 77, 12)
    assert placeholder.running(77, None) == Started("primary", "@4", 77, None)
    assert placeholder.running(77, stat(pid=78)) == Started("primary", "@4", 77, None)


def test_the_record_round_trips() -> None:
    windows = (STARTED, Started("primary", "@4", None, None))
    assert record.from_json(record.to_json(windows)) == windows


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "{}",
        '[{"name": "x"}]',
        '[{"name": "x", "window_id": "3", "pid": 1, "start_time": 2}]',
    ],
)
def test_a_record_that_is_not_one_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="its record of windows"):
        record.from_json(text)
