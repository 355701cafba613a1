"""The tmux adapter on a real tmux server of the test's own (``-L`` with a unique name)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from spp_runner.tmux import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    socket = f"spp-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield Tmux(socket_name=socket)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)


def test_every_dead_pane_has_the_exit_status_of_its_process(tmux: Tmux) -> None:
    # A process that exits at once, as a primary that cannot get hugepages does, started the
    # way a launch starts each window. tmux 3.3 lost the SIGCHLD of about one in five of
    # these: the pane read dead with no status for good, and --status said "dead" without
    # "(exit N)" (issue 9 item 11). Each pane must have its status within a second of dying.
    env = {"PATH": os.environ["PATH"]}
    tmux.new_session("s", "w0", "/", env)
    for i in range(30):
        window_id = tmux.new_window("s", f"w{i}", "/", env)
        time.sleep(0.05)
        tmux.start(window_id, ("sh", "-c", f"echo step {i}; exit {i % 7 + 1}"), "/", env)
        deadline = time.monotonic() + 10
        while not (pane := tmux.pane("s", window_id)) or not pane.dead:
            assert time.monotonic() < deadline, "the pane never died"
            time.sleep(0.02)
        deadline = time.monotonic() + 1
        while pane.dead_status is None and time.monotonic() < deadline:
            time.sleep(0.05)
            pane = tmux.pane("s", window_id) or pane
        assert (i, pane.dead_status, pane.dead_signal) == (i, i % 7 + 1, None)


def test_a_pane_killed_by_a_signal_says_which(tmux: Tmux) -> None:
    env = {"PATH": os.environ["PATH"]}
    window_id = tmux.new_session("s", "w0", "/", env)
    tmux.start(window_id, ("sh", "-c", "kill -TERM $$"), "/", env)
    deadline = time.monotonic() + 10
    while not (pane := tmux.pane("s", window_id)) or not pane.dead:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (pane.dead_status, pane.dead_signal) == (None, 15)
