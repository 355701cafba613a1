"""The errors a user can cause, each with the message and exit code the CLI reports."""

from __future__ import annotations


class KcmError(Exception):
    """Base of every error kcm reports as ``kcm: error: <message>``."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(KcmError):
    """The command line is wrong."""

    exit_code = 2


class StateError(KcmError):
    """The state directory is missing, malformed or cannot be changed as asked."""

    exit_code = 3


class PoolExhaustedError(KcmError):
    """An exclusive pool has no free CPU list."""

    exit_code = 4


class LockTimeoutError(KcmError):
    """The state directory's lock could not be taken or held within KCM_LOCK_TIMEOUT."""

    exit_code = 5


class EnvironmentProblem(KcmError):
    """The host does not give what the command needs (procfs, sysfs, enough cores, a program)."""

    exit_code = 6


class CgroupError(EnvironmentProblem):
    """A cgroup hierarchy kcm detected as usable refused a change (the message names the file)."""


class ClusterError(KcmError):
    """The Kubernetes API refused or could not be reached."""

    exit_code = 7


class ParseError(ValueError):
    """Text that does not follow its format; the caller adds where it came from."""
