"""The errors a user of spp-wakeup or sppsh can cause, each with its message and exit code."""

from __future__ import annotations


class SppError(Exception):
    """Base of every error the runner reports as ``<program>: error: <line>``.

    ``lines`` holds one or more messages; the CLI prints each on its own line.
    """

    exit_code = 1

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines

    @property
    def message(self) -> str:
        return "\n".join(self.lines)


class UsageError(SppError):
    """The command line is wrong."""

    exit_code = 2


class ConfigError(SppError):
    """conf.yml is unreadable, malformed, or asks for something this host cannot give."""

    exit_code = 3


class MissingError(SppError):
    """A program, image, directory or mount that a real launch needs is not there."""

    exit_code = 4


class LaunchError(SppError):
    """A step of the launch did not become ready in time, or the host refused it."""

    exit_code = 5


class SessionError(SppError):
    """The tmux session is missing (status, down) or already exists (launch)."""

    exit_code = 6


class LeaseError(SppError):
    """sppsh: the lease file is unreadable, or no VM matches what was asked."""

    exit_code = 1
