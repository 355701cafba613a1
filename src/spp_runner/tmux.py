"""The runner's one door to tmux (through libtmux): sessions, windows, panes, stored plan.

Callers pass argv lists and names; tmux command strings are built here and nowhere else.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from dataclasses import dataclass

import libtmux
from libtmux import exc

from spp_runner.errors import MissingError, SessionError

PLAN_OPTION = "@spp-runner-plan"
RECORD_OPTION = "@spp-runner-windows"  # what the launch started: see record.py
# A window first runs this, so that remain-on-exit is set before the real command starts
# and a command that dies at once still leaves its output in the window.
_PLACEHOLDER = "exec sleep 2147483647"
_PANE_FORMAT = "\t".join(
    (
        "#{window_id}",
        "#{pane_id}",
        "#{pane_pid}",
        "#{pane_dead}",
        "#{pane_dead_status}",
        "#{pane_dead_signal}",
        "#{window_name}",  # last: a name a user gave may hold tabs
    )
)
# How long panes() waits for tmux to reap a dead pane's process once it has been reminded.
_REAP_WAIT = 0.5


@dataclass(frozen=True)
class Pane:
    """A window's (single) pane as tmux reports it."""

    window_id: str
    window_name: str
    pane_id: str
    pid: int | None
    dead: bool
    dead_status: int | None
    dead_signal: int | None = None

    @property
    def exit_unknown(self) -> bool:
        """Dead, and tmux has neither the exit status nor the signal that ended it."""
        return self.dead and self.dead_status is None and self.dead_signal is None


def shell_command(argv: tuple[str, ...] | list[str]) -> str:
    """The string tmux hands to the shell: the argv, quoted, run in place of the shell."""
    return "exec " + shlex.join(argv)


class Tmux:
    """One tmux server: the user's default one, or the one ``socket_name`` names."""

    def __init__(self, socket_name: str | None = None) -> None:
        self.server = libtmux.Server(socket_name=socket_name)

    def _cmd(self, *args: str) -> list[str]:
        try:
            result = self.server.cmd(*args)
        except exc.TmuxCommandNotFound:
            raise MissingError("tmux not found on PATH; install tmux") from None
        if result.returncode != 0:
            message = " ".join(result.stderr).strip() or f"exit status {result.returncode}"
            raise SessionError(f"tmux {args[0]} failed: {message}")
        return list(result.stdout)

    def has_session(self, name: str) -> bool:
        try:
            return bool(self.server.has_session(name, exact=True))
        except exc.TmuxCommandNotFound:
            raise MissingError("tmux not found on PATH; install tmux") from None
        except exc.LibTmuxException:
            return False

    def new_session(self, name: str, window: str, cwd: str, env: dict[str, str]) -> str:
        """Create a detached session whose first window waits for ``start``; its window id."""
        out = self._cmd(
            "new-session",
            "-d",
            "-P",
            "-F",
            "#{window_id}",
            "-s",
            name,
            "-n",
            window,
            "-x",
            "200",
            "-y",
            "50",
            "-c",
            cwd,
            *_env_args(env),
            _PLACEHOLDER,
        )
        window_id = out[0].strip()
        self._keep_output(window_id)
        return window_id

    def new_window(self, session: str, window: str, cwd: str, env: dict[str, str]) -> str:
        """Add a window that waits for ``start``; its window id."""
        out = self._cmd(
            "new-window",
            "-d",
            "-P",
            "-F",
            "#{window_id}",
            "-t",
            f"={session}:",
            "-n",
            window,
            "-c",
            cwd,
            *_env_args(env),
            _PLACEHOLDER,
        )
        window_id = out[0].strip()
        self._keep_output(window_id)
        return window_id

    def _keep_output(self, window_id: str) -> None:
        """Keep a window, and the last output of its process, after the process ends.

        remain-on-exit keeps the window. The pipe is for the output: tmux 3.3 closes a pane
        whose process it has reaped at once, unread output and all, unless a pipe-pane is
        attached, and then it first reads what the pty still holds (window.c,
        window_pane_destroy_ready). A process that fails at once (a primary without
        hugepages) lost its last lines 13 times in 1,000 without it, 2 in 1,000 with it.
        """
        self._cmd("set-option", "-w", "-t", window_id, "remain-on-exit", "on")
        self._cmd("pipe-pane", "-t", window_id, "exec cat >/dev/null")

    def start(self, window_id: str, argv: tuple[str, ...], cwd: str, env: dict[str, str]) -> None:
        """Replace the window's placeholder with ``argv``."""
        self._cmd(
            "respawn-pane", "-k", "-t", window_id, "-c", cwd, *_env_args(env), shell_command(argv)
        )

    def set_plan(self, session: str, text: str) -> None:
        self._set(session, PLAN_OPTION, text)

    def get_plan(self, session: str) -> str | None:
        return self._get(session, PLAN_OPTION)

    def set_record(self, session: str, text: str) -> None:
        self._set(session, RECORD_OPTION, text)

    def get_record(self, session: str) -> str | None:
        return self._get(session, RECORD_OPTION)

    def forget(self, session: str) -> None:
        """Unset the plan and the record: the session is no longer one spp-wakeup runs."""
        for option in (PLAN_OPTION, RECORD_OPTION):
            self._cmd("set-option", "-u", "-t", f"={session}:", option)

    def _set(self, session: str, option: str, text: str) -> None:
        # One set-option: tmux replaces the value whole, so a reader never sees half of it.
        self._cmd("set-option", "-t", f"={session}:", option, text)

    def _get(self, session: str, option: str) -> str | None:
        out = self._cmd("show-options", "-q", "-v", "-t", f"={session}:", option)
        return out[0] if out else None

    def server_pid(self) -> int | None:
        out = self._cmd("display-message", "-p", "#{pid}")
        return int(out[0]) if out and out[0].isdigit() else None

    def panes(self, session: str) -> list[Pane]:
        """The session's panes, each dead one with how its process ended.

        tmux learns a pane's exit status from SIGCHLD, and tmux 3.3 (built with libutempter,
        as Debian's is) loses that signal when the pane's process exits while utempter's
        helper runs: the helper's fork sets SIGCHLD to SIG_DFL for a moment, and a pane that
        dies in that moment stays an unreaped zombie, read as dead with no status, for good
        (until some other child of the server exits). A second SIGCHLD makes the server's
        handler run its waitpid loop, which reaps the zombie and records the status.
        """
        panes = self._list_panes(session)
        if any(p.exit_unknown for p in panes):
            pid = self.server_pid()
            deadline = time.monotonic() + _REAP_WAIT
            while pid is not None and any(p.exit_unknown for p in panes):
                try:
                    os.kill(pid, signal.SIGCHLD)
                except OSError:
                    break
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
                panes = self._list_panes(session)
        return panes

    def _list_panes(self, session: str) -> list[Pane]:
        panes = []
        for line in self._cmd("list-panes", "-s", "-t", f"={session}", "-F", _PANE_FORMAT):
            fields = line.split("\t", 6)
            if len(fields) != 7 or not fields[0].startswith("@"):
                continue  # the rest of a window name that holds a newline
            window_id, pane_id, pid, dead, status, dead_signal, name = fields
            panes.append(
                Pane(
                    window_id=window_id,
                    window_name=name,
                    pane_id=pane_id,
                    pid=int(pid) if pid.isdigit() else None,
                    dead=dead == "1",
                    dead_status=int(status) if status.lstrip("-").isdigit() else None,
                    dead_signal=int(dead_signal) if dead_signal.isdigit() else None,
                )
            )
        return panes

    def pane(self, session: str, window_id: str) -> Pane | None:
        return next((p for p in self.panes(session) if p.window_id == window_id), None)

    def capture(self, target: str, lines: int = 15) -> list[str]:
        """The last non-empty lines a window shows (for error messages)."""
        try:
            out = self._cmd("capture-pane", "-p", "-J", "-t", target, "-S", f"-{lines * 4}")
        except SessionError:
            return []
        text = [line.rstrip() for line in out if line.strip()]
        return text[-lines:]

    def kill_session(self, session: str) -> None:
        self._cmd("kill-session", "-t", f"={session}")

    def kill_window(self, window_id: str) -> None:
        self._cmd("kill-window", "-t", window_id)

    def attach_argv(self, session: str) -> list[str]:
        """How to show the session: attach from a terminal, switch when already inside tmux."""
        verb = "switch-client" if os.environ.get("TMUX") else "attach-session"
        argv = ["tmux"]
        socket_name = self.server.socket_name
        if socket_name:
            argv += ["-L", socket_name]
        return [*argv, verb, "-t", f"={session}"]


def _env_args(env: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in sorted(env.items()):
        args += ["-e", f"{key}={value}"]
    return args
