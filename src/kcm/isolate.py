"""Run a command on a CPU list of a pool: book the list, pin, run, forward signals, release.

This is kcm's hot path, so it imports nothing heavy: ``_signal`` instead of ``signal`` (which
pulls in ``enum``), ``os.fork``/``os.execv`` instead of ``subprocess``.
"""

from __future__ import annotations

import os

from kcm import cpulist
from kcm.allocate import choose_cpu_list
from kcm.errors import EnvironmentProblem, KcmError, PoolExhaustedError
from kcm.host import procfs
from kcm.state import StateDir, lock_timeout, validate_pool_name

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    import signal as _signal

    Handlers = dict[int, _signal._HANDLER]
else:
    import _signal

SHELL = "/bin/sh"
FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)
RESTORED = (_signal.SIGPIPE, _signal.SIGXFSZ)


def shell_argv(command: str, args: list[str]) -> list[str]:
    """The sub-shell argv: shell syntax in ``command`` works, ``args`` arrive verbatim.

    Without args the command is the whole script, so every construct (``for``, ``if``, a
    trailing ``&``, a comment) means what it means to sh. Args are appended as ``"$@"``:
    words after the command, passed as they are and never parsed by the shell.
    """
    if not args:
        return [SHELL, "-c", command]
    return [SHELL, "-c", f'{command} "$@"', "sh", *args]


def exit_status(wait_status: int) -> int:
    """The status a shell would report: the exit code, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def book(conf_dir: str, pool_name: str, pid: int, start_time: int) -> str:
    """Record ``pid`` on a list of ``pool_name`` under the lock; the list's name."""
    validate_pool_name(pool_name)
    with StateDir(conf_dir) as state:
        state.lock(lock_timeout())
        pool = state.read_pool(pool_name)
        chosen = choose_cpu_list(pool)
        if chosen is None:
            if not pool.cpu_lists:
                raise PoolExhaustedError(f"pool {pool_name!r} in {conf_dir} has no CPU lists")
            raise PoolExhaustedError(
                f"no free CPU list in exclusive pool {pool_name!r} of {conf_dir}: all"
                f" {len(pool.cpu_lists)} are taken (kcm reconcile frees lists of dead tasks)"
            )
        state.add_task(pool_name, chosen, pid, start_time)
        return chosen.cpus


# Giving up a booking refuses one command cleanly, but giving up a release leaves the list
# booked by a dead PID until the next reconcile: a release waits this many times longer.
RELEASE_PATIENCE = 10


def release(conf_dir: str, pool_name: str, cpu_list: str, pid: int) -> None:
    """Remove ``pid`` from its list; a failure is said on stderr, and the list stays booked.

    The command has run by now, so its status is what kcm reports in any case: a release
    that fails (lock timeout, full or read-only disk) costs a line, not the status.
    """
    state = StateDir(conf_dir)
    try:
        with state:
            state.lock(RELEASE_PATIENCE * lock_timeout())
            state.remove_task(pool_name, cpu_list, pid)
    except KcmError as e:
        if state.writes:  # the tasks file was replaced; only making it durable failed
            what = f"the exited PID {pid} was removed from CPU list {cpu_list} of pool"
            what += f" {pool_name!r}, but that may not be on disk"
        else:
            what = f"CPU list {cpu_list} of pool {pool_name!r} stays booked by the exited"
            what += f" PID {pid} until kcm reconcile runs"
        from kcm.cli import one_line  # loaded already: it called us

        os.write(2, f"kcm: error: {one_line(f'{e.message}; {what}')}\n".encode(errors="replace"))


class _Forwarder:
    """The handler of SIGTERM/SIGINT/SIGHUP: passed to the command's group while it exists.

    ``finish`` ends the forwarding for good once the command has exited (before it is
    reaped, while its PID, and so its group id, cannot be reused): later signals reach no
    one, since the group id may name an unrelated group by then.
    """

    def __init__(self) -> None:
        self.child_pgid = 0
        self.finished = False
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        if self.finished:
            return
        if self.child_pgid:
            try:
                os.killpg(self.child_pgid, signum)
            except ProcessLookupError:
                pass
        else:
            self.pending.append(signum)

    def finish(self) -> None:
        self.finished = True
        self.child_pgid = 0


def _tty_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def run(conf_dir: str, pool_name: str, command: str, args: list[str]) -> int:
    """``kcm isolate``: the command's exit status (128+N if killed by signal N)."""
    root = procfs.proc_root("kcm isolate")
    procfs.require_host_pid_namespace(root)
    me = procfs.self_stat(root)
    argv = shell_argv(command, args)
    forwarder = _Forwarder()
    # A signal ignored at start (nohup) stays ignored, for kcm and, through exec, the command.
    previous: Handlers = {
        sig: _signal.signal(sig, forwarder)
        for sig in FORWARDED
        if _signal.getsignal(sig) != _signal.SIG_IGN
    }
    cpus = book(conf_dir, pool_name, me.pid, me.start_time)
    try:
        try:
            os.sched_setaffinity(0, cpulist.parse(cpus))
        except OSError as e:
            raise EnvironmentProblem(
                f"cannot pin to CPUs {cpus} of pool {pool_name!r}: {e.strerror}"
            ) from None
        env = dict(os.environ)
        env["KCM_CPUS_ASSIGNED"] = env["CMK_CPUS_ASSIGNED"] = cpus
        env["KCM_POOL"] = pool_name
        env["CMK_PROC_FS"] = root  # CMK 1.x workloads read the procfs from here
        # From here until the child has its own handlers and group, signals wait in the kernel.
        _signal.pthread_sigmask(_signal.SIG_BLOCK, FORWARDED)
        if forwarder.pending:  # asked to stop while booking: the command never starts
            return 128 + forwarder.pending[0]
        status = _spawn_and_wait(argv, env, forwarder, previous)
    finally:
        release(conf_dir, pool_name, cpus, me.pid)
    return exit_status(status)


def _spawn_and_wait(
    argv: list[str], env: dict[str, str], forwarder: _Forwarder, previous: Handlers
) -> int:
    """Start the sub-shell (signals blocked on entry) and wait; the wait status."""
    hand_tty = _tty_foreground()
    if hand_tty:
        pid = _fork_with_terminal(argv, env, previous)
    else:
        # posix_spawn (vfork underneath) costs a fraction of forking this interpreter.
        try:
            pid = os.posix_spawn(
                argv[0], argv, env, setpgroup=0, setsigdef=[*previous, *RESTORED], setsigmask=()
            )
        except OSError as e:
            raise EnvironmentProblem(f"cannot run {argv[0]}: {e.strerror}") from None
    forwarder.child_pgid = pid
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORWARDED)
    try:
        # Wait without reaping: until waitpid below, the exited child holds its PID, so
        # nothing can take its group id while the forwarder may still signal it.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        forwarder.finish()
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        forwarder.finish()
        status = 127 << 8
    if hand_tty:
        old = _signal.signal(_signal.SIGTTOU, _signal.SIG_IGN)
        try:
            os.tcsetpgrp(0, os.getpgrp())
        except OSError:
            pass
        _signal.signal(_signal.SIGTTOU, old)
    return status


def _fork_with_terminal(argv: list[str], env: dict[str, str], previous: Handlers) -> int:
    """Fork a child that takes the terminal's foreground before it execs, as a shell does.

    The hand-over has to happen in the child before exec, or a command that reads the
    terminal at once would be stopped by SIGTTIN.
    """
    pid = os.fork()
    if pid == 0:
        try:
            for sig, handler in previous.items():
                _signal.signal(sig, handler)
            for sig in RESTORED:  # Python ignores these; a command expects the defaults
                _signal.signal(sig, _signal.SIG_DFL)
            os.setpgid(0, 0)
            _signal.signal(_signal.SIGTTOU, _signal.SIG_IGN)
            os.tcsetpgrp(0, os.getpgrp())
            _signal.signal(_signal.SIGTTOU, _signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORWARDED)
            os.execve(argv[0], argv, env)
        except OSError as e:
            os.write(2, f"kcm: error: cannot run {argv[0]}: {e.strerror}\n".encode())
        os._exit(127)
    try:
        os.setpgid(pid, pid)  # also here, so the group exists before we signal it
    except OSError:
        pass  # the child already exec'd (it set its own group) or exited
    return pid
