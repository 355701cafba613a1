"""What a launch started, kept with its session: each window's tmux id and the process it ran.

``--status`` and ``--down`` act on these windows only. A window is found by its id (``@N``,
which tmux never gives twice while the server runs), never by its name, which anyone may
give a window; and its process must still be the one the launch started (same PID, same
start time), so that a respawned pane or a reused PID is never taken for ours.

The record is a user option of the session (``@spp-runner-windows``), beside the plan:
tmux replaces an option's value in one command, so a reader sees the old record or the new
one and never half of one; it lives exactly as long as the session (nothing to go stale
after a kill-session or a reboot, nothing to clean up); and only whoever can reach the tmux
server, that is the user, can read or change it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace

from spp_runner.procfs import ProcStat
from spp_runner.tmux import Pane


@dataclass(frozen=True)
class Started:
    """One window a launch created and the process it last started in it."""

    name: str
    window_id: str
    pid: int | None
    start_time: int | None  # /proc/<pid>/stat's starttime; None when it was gone at once

    def running(self, pid: int | None, stat: ProcStat | None) -> Started:
        """This window once ``pid`` runs in it (``stat``: its stat then, if it had one)."""
        start = stat.start_time if stat is not None and stat.pid == pid else None
        return replace(self, pid=pid, start_time=start)


class Verdict(enum.Enum):
    """What became of a window the launch recorded."""

    OURS = "ours"  # the window, with the process the launch started (alive or dead)
    GONE = "gone"  # the window was closed
    REPLACED = "replaced"  # the window runs another process: respawned, or its PID reused


def judge(started: Started, pane: Pane | None, stat: ProcStat | None) -> Verdict:
    """Whether ``pane`` (the window now) still runs what ``started`` recorded.

    ``stat`` is what the procfs says of the pane's PID now (None: no such process).
    """
    if pane is None:
        return Verdict.GONE
    if pane.pid != started.pid:
        return Verdict.REPLACED
    if pane.dead or stat is None:
        return Verdict.OURS  # it ended; there is nothing left of it to act on
    if started.start_time is None or stat.start_time != started.start_time:
        # A PID that now belongs to a process started at another time is another process;
        # one whose start time was never known cannot be told apart, so it is not ours.
        return Verdict.REPLACED
    return Verdict.OURS


def to_json(windows: tuple[Started, ...]) -> str:
    return json.dumps(
        [
            {"name": w.name, "window_id": w.window_id, "pid": w.pid, "start_time": w.start_time}
            for w in windows
        ]
    )


def from_json(text: str) -> tuple[Started, ...]:
    """The windows ``to_json`` wrote; ValueError if ``text`` is not such a record."""
    try:
        data = json.loads(text)
        if not isinstance(data, list):
            raise TypeError("not a list")
        windows = tuple(
            Started(
                name=str(w["name"]),
                window_id=str(w["window_id"]),
                pid=None if w["pid"] is None else int(w["pid"]),
                start_time=None if w["start_time"] is None else int(w["start_time"]),
            )
            for w in data
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"its record of windows is not readable ({e})") from None
    if any(not w.window_id.startswith("@") for w in windows):
        raise ValueError("its record of windows names something that is not a window id")
    return windows
