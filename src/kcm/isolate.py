"""Run a command on a CPU list of a pool: book the list, hold it, pin, run, forward signals,
release (or hand the booking to what the command left behind).

This is kcm's hot path, so it imports nothing heavy: ``_signal`` instead of ``signal`` (which
pulls in ``enum``), ``os.fork``/``os.execv`` instead of ``subprocess``; what only a full pool
or a command's leftovers need (``kcm.reclaim``, ``kcm.holders``) is imported then.

**The booking's cgroup** (``kcm.host.cgroups``, where the host has a writable cpuset
hierarchy) is made *under the state lock, before the PID is recorded*, and kcm moves itself in
*after the lock is released, before the command is spawned*:

1. lock; choose a list (reclaiming, in a full exclusive pool, lists whose holders are gone);
2. ``create`` the booking ``<pid>-<start>`` (empty; its name says whose it is);
3. record the PID in the list's tasks (no owner record: the booking's name has the start
   time); unlock;
4. ``enter`` (``0`` into ``tasks`` on v1; ``cgroup.procs`` on v2, which may wait ~15 ms for
   an RCU grace period: outside the lock, so other isolates don't wait for it);
5. spawn the command, which starts inside, and every descendant with it.

Why this order holds at every instant, also against ``kill -9`` of kcm and a concurrent
``kcm reconcile`` or reclaiming isolate (both work under the same lock):

- Killed before 2: nothing exists. Between 2 and 3: an empty booking of a dead kcm on no
  list's tasks: reconcile removes it (empty, its kcm gone by PID and start time), and so does
  the next isolate that takes the list (``reclaim``). Nothing was spawned.
- From 3 on, the recorded PID's start time is known from the booking's name, so a reused PID
  never looks like kcm. Between 3 and 5 the booking is empty or holds kcm alone: killed, kcm
  leaves it empty (a zombie is in no cgroup), and the list is free as soon as its PID is dead
  and its booking empty, which reconcile and the next isolate check. While kcm lives, its PID
  is recorded and alive, so nobody reclaims the list or removes its empty booking.
- After 5 every process of the command is in the booking (the kernel makes a child's cgroup
  its parent's at fork). Killed then, kcm leaves them holding it: its PID is dead, but the
  booking is populated, so the list stays booked, and reconcile or the next isolate's
  reclaim hands the tasks entry over to the oldest live process of the booking.
- Making the booking under the lock costs the lock ~0.25 ms (v1) and keeps reconcile's
  pruning of empty levels from ever racing kcm's own creation; entering it outside the lock
  keeps v2's grace period off everyone else's path.

When the command exits kcm moves back where it came from and asks whether the booking is
empty: if so it releases the list, and only then removes the cgroup (so the booking's name
outlives the record it vouches for); if not, it hands the list to the oldest live process of
the booking (tasks names it, its owner record says its start time and the booking), and
exits with the command's status all the same.

**Without a cgroup** (``Unavailable``: not root, a read-only or missing cgroupfs) the booking
is the recorded PID (with its owner record) and the command's process group: if members of
that group outlive the command, the list is handed to the oldest of them (its record names
the group, so reconcile hands it on while the group lives). A process that leaves the group
(``setsid``, a daemon) is not held, nor are the command's processes if kcm is killed; an
exclusive pool says so once on stderr.
"""

from __future__ import annotations

import os

from kcm import cpulist
from kcm.errors import EnvironmentProblem, KcmError, PoolExhaustedError
from kcm.host import cgroups, procfs
from kcm.model import Pool, choose_cpu_list
from kcm.state import OWNER_PREFIX, StateDir, lock_timeout, validate_pool_name

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable

    from kcm.model import CpuList
    from kcm.placement import Placed, Placement

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


class Booked:
    """What ``book`` got: the list, its pool's kind, the booking's cgroup (None without), and
    with a placement option the list's NUMA node for ``KCM_NUMA_NODE`` and what to say."""

    __slots__ = ("booking", "cpus", "exclusive", "notes", "numa_node")

    def __init__(self, cpus: str, exclusive: bool, booking: cgroups.Booking | None) -> None:
        self.cpus = cpus
        self.exclusive = exclusive
        self.booking = booking
        self.numa_node: str | None = None
        self.notes: list[str] = []


def book(
    conf_dir: str,
    pool_name: str,
    me: procfs.Stat,
    backend: cgroups.Backend | None,
    proc_root: str,
    asked: Placement | None = None,
) -> Booked:
    """Record ``me`` on a list of ``pool_name`` under the lock, and make its booking's cgroup
    (with a backend) just before; see the module's docstring for the order. ``asked``: the
    placement options (``kcm.placement``), which alone read the topology."""
    validate_pool_name(pool_name)
    with StateDir(conf_dir) as state:
        state.lock(lock_timeout())
        pool = state.read_pool(pool_name)
        placed = None
        if asked is not None:
            from kcm import placement

            placed = placement.read(pool, asked)
        candidates = pool if placed is None else placed.pool

        def pick(among: Pool) -> CpuList | None:
            return choose_cpu_list(among) if placed is None else placed.choose(among)

        chosen = pick(candidates)
        look = None
        if pool.exclusive and backend is not None:
            # A free list's booking cgroup outlives its tasks only if someone cleared them by
            # hand (or made the state anew under live workloads); the check is one listing.
            held: set[str] = set()
            while chosen is not None and not backend.reclaim(pool_name, chosen.cpus):
                from kcm import reclaim

                look = look or reclaim.Look(proc_root)
                reclaim.settle_free_list(state, look, backend, pool_name, chosen)
                held.add(chosen.cpus)
                rest = {k: v for k, v in candidates.cpu_lists.items() if k not in held}
                chosen = pick(Pool(pool.name, pool.exclusive, rest))
        reclaimed = None
        if chosen is None and pool.exclusive and candidates.cpu_lists:
            from kcm import reclaim

            look = look or reclaim.Look(proc_root)
            by_leftovers = 0
            # --near: the lists on the device's node first, then (unless strict) the rest.
            tiers = [candidates] if placed is None else [placed.near_lists(candidates)]
            if placed is not None and tiers[0] is not candidates:
                rest = {
                    k: v for k, v in candidates.cpu_lists.items() if k not in tiers[0].cpu_lists
                }
                tiers.append(Pool(pool.name, pool.exclusive, rest))
            for tier in tiers:
                reclaimed, held_by = reclaim.reclaim_pool(state, look, backend, tier)
                by_leftovers += held_by
                if reclaimed is not None:
                    break
            if reclaimed is None:
                raise _exhausted(conf_dir, pool, by_leftovers, placed)
            chosen = reclaimed.cpu_list
        if chosen is None:
            raise _exhausted(conf_dir, pool, 0, placed)
        mems = None
        notes: list[str] = []
        if placed is not None:
            note = placed.note(pool_name, chosen)
            if note is not None:
                notes.append(note)
            from kcm import placement

            assert placed.topology is not None
            wanted = placement.mems(chosen, placed.topology)
            if backend is not None and wanted:
                mems = backend.usable_mems(wanted) or None
                if mems is None:
                    notes.append(
                        f"kcm: warning: memory node(s) {wanted} of CPU list {chosen.cpus} are"
                        f" not in {backend.hierarchy}/{backend.ROOT_MEMS}: the booking keeps"
                        " every memory node the host's cpuset has"
                    )
        booking = None
        if backend is not None:
            cpus = backend.usable_cpus(chosen.cpus, pool_name)
            if not cpus:
                raise EnvironmentProblem(
                    f"cannot pin to CPUs {chosen.cpus} of pool {pool_name!r}: the host has none"
                    f" of them ({backend.hierarchy}/{backend.ROOT_CPUS})"
                )
            booking = cgroups.Booking(pool_name, chosen.cpus, me.pid, me.start_time)
        try:
            if booking is not None:
                assert backend is not None
                backend.create(booking, cpus, mems)
            start = None if booking is not None else me.start_time
            if reclaimed is None:
                state.add_task(pool_name, chosen, me.pid, start)
            else:
                owner = {f"{OWNER_PREFIX}{me.pid}": f"{start}\n"} if start is not None else None
                state.set_tasks(pool_name, chosen.cpus, [me.pid], reclaimed.dropped, owner)
        except BaseException:
            if booking is not None:
                assert backend is not None
                _remove_quietly(backend, booking)
            raise
        if reclaimed is not None and backend is not None:
            for name in reclaimed.remove:  # the empty bookings of the gone holders
                ids = cgroups.parse_booking_name(name)
                if ids is not None:
                    _remove_quietly(backend, cgroups.Booking(pool_name, chosen.cpus, *ids))
        booked = Booked(chosen.cpus, pool.exclusive, booking)
        booked.notes = notes
        if placed is not None:
            from kcm import placement

            assert placed.topology is not None
            booked.numa_node = placement.numa_node(chosen, placed.topology)
        return booked


def _exhausted(
    conf_dir: str, pool: Pool, by_leftovers: int, placed: Placed | None = None
) -> PoolExhaustedError:
    if placed is not None:
        from kcm import placement

        assert placed.asked is not None
        strict = placed.asked.near is not None and placed.asked.strict
        return placement.exhausted(conf_dir, pool, placed, strict)
    if not pool.cpu_lists:
        return PoolExhaustedError(f"pool {pool.name!r} in {conf_dir} has no CPU lists")
    left = ""
    if by_leftovers:
        left = (
            f", {by_leftovers} of them by processes that earlier bookings left behind (they"
            " keep their list until they exit)"
        )
    return PoolExhaustedError(
        f"no free CPU list in exclusive pool {pool.name!r} of {conf_dir}: all"
        f" {len(pool.cpu_lists)} are taken{left}"
    )


def _remove_quietly(backend: cgroups.Backend, booking: cgroups.Booking) -> None:
    try:
        backend.remove(booking)
    except KcmError:
        pass  # reconcile removes an empty booking whose kcm is gone


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
        _say_release_failed(e, state, pool_name, cpu_list, pid)


def _say_release_failed(
    e: KcmError, state: StateDir, pool_name: str, cpu_list: str, pid: int
) -> None:
    if state.writes:  # the tasks file was replaced; only making it durable failed
        what = f"the exited PID {pid} was removed from CPU list {cpu_list} of pool"
        what += f" {pool_name!r}, but that may not be on disk"
    else:
        what = f"CPU list {cpu_list} of pool {pool_name!r} stays booked by the exited"
        what += f" PID {pid} until kcm reconcile runs"
    _error(f"{e.message}; {what}")


def _error(message: str) -> None:
    from kcm.cli import one_line  # loaded already: it called us

    os.write(2, f"kcm: error: {one_line(message)}\n".encode(errors="replace"))


def finish(
    conf_dir: str,
    pool_name: str,
    booked: Booked,
    me: procfs.Stat,
    proc_root: str,
    backend: cgroups.Backend | None,
    origin: str | None,
    command_pgid: int,
    ending: bool = False,
) -> None:
    """After the command: leave the booking, then release the list or hand it over to what
    the command left behind. Never raises: the command's status is kcm's in any case.

    ``ending``: kcm passed a signal to the command's group, so its other members got it too
    and may still be on their way out (a shell's child outlives the shell by a moment): they
    are given up to ``ENDING_GRACE`` seconds to go before they count as leftovers."""
    booking = booked.booking
    grace = ENDING_GRACE if ending else 0.0
    try:
        if booking is not None:
            assert backend is not None
            if origin is not None:
                backend.leave(origin)
            path = backend.path(booking)
            if _wait_until(lambda: not backend.populated(path), grace):
                release(conf_dir, pool_name, booked.cpus, me.pid)
                _remove_quietly(backend, booking)  # empty for good: nothing is left to fork
                return
        elif not command_pgid or _wait_until(lambda: not _group_lives(command_pgid), grace):
            release(conf_dir, pool_name, booked.cpus, me.pid)
            return
    except KcmError as e:
        _error(f"{e.message}; CPU list {booked.cpus} of pool {pool_name!r} stays booked")
        return
    from kcm import reclaim  # off the fast path: only a command's leftovers need it

    reclaim.hand_over_at_exit(conf_dir, pool_name, booked, me, proc_root, backend, command_pgid)


# How long the members of a command's group that kcm passed a signal to have to end before
# what is left counts as leftovers that keep the list booked.
ENDING_GRACE = 1.0


def _wait_until(done: Callable[[], bool], seconds: float) -> bool:
    """Whether ``done()`` holds, asked at once and, for up to ``seconds``, every 5 ms."""
    if done():
        return True
    if seconds <= 0:
        return False
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.005)
        if done():
            return True
    return False


def _group_lives(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Forwarder:
    """The handler of SIGTERM/SIGINT/SIGHUP: passed to the command's group while it exists.

    ``finish`` ends the forwarding for good once the command has exited (before it is
    reaped, while its PID, and so its group id, cannot be reused): later signals reach no
    one, since the group id may name an unrelated group by then.
    """

    def __init__(self) -> None:
        self.child_pgid = 0
        self.command_pgid = 0  # kept after ``finish``: the group leftovers may live on in
        self.finished = False
        self.forwarded = False  # a signal reached the command's group: its members are ending
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        if self.finished:
            return
        if self.child_pgid:
            try:
                os.killpg(self.child_pgid, signum)
                self.forwarded = True
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


def run(
    conf_dir: str, pool_name: str, command: str, args: list[str], asked: Placement | None = None
) -> int:
    """``kcm isolate``: the command's exit status (128+N if killed by signal N). ``asked``:
    ``--socket-id``, ``--numa-node``, ``--near`` (``kcm.placement``), None for none."""
    root = procfs.proc_root("kcm isolate")
    procfs.require_host_pid_namespace(root)
    me = procfs.self_stat(root)
    detected = cgroups.detect(conf_dir)
    backend = detected if isinstance(detected, cgroups.Backend) else None
    argv = shell_argv(command, args)
    forwarder = _Forwarder()
    # A signal ignored at start (nohup) stays ignored, for kcm and, through exec, the command.
    previous: Handlers = {
        sig: _signal.signal(sig, forwarder)
        for sig in FORWARDED
        if _signal.getsignal(sig) != _signal.SIG_IGN
    }
    booked = book(conf_dir, pool_name, me, backend, root, asked)
    cpus = booked.cpus
    for note in booked.notes:
        os.write(2, f"{note}\n".encode(errors="replace"))
    if booked.exclusive and isinstance(detected, cgroups.Unavailable):
        os.write(
            2,
            f"kcm: warning: no cgroup holds this booking ({detected.reason}): processes that"
            " leave the command's process group are not held\n".encode(errors="replace"),
        )
    origin = None
    command_pgid = 0
    try:
        if booked.booking is not None:
            assert backend is not None
            origin = backend.enter(booked.booking, root)
        try:
            os.sched_setaffinity(0, cpulist.parse(cpus))
        except OSError as e:
            raise EnvironmentProblem(
                f"cannot pin to CPUs {cpus} of pool {pool_name!r}: {e.strerror}"
            ) from None
        env = dict(os.environ)
        env["KCM_CPUS_ASSIGNED"] = env["CMK_CPUS_ASSIGNED"] = cpus
        env["KCM_POOL"] = pool_name
        if booked.numa_node is not None:  # only a placement option reads the topology
            env["KCM_NUMA_NODE"] = booked.numa_node
        env["CMK_PROC_FS"] = root  # CMK 1.x workloads read the procfs from here
        # From here until the child has its own handlers and group, signals wait in the kernel.
        _signal.pthread_sigmask(_signal.SIG_BLOCK, FORWARDED)
        if forwarder.pending:  # asked to stop while booking: the command never starts
            return 128 + forwarder.pending[0]
        status = _spawn_and_wait(argv, env, forwarder, previous)
        command_pgid = forwarder.command_pgid
    finally:
        finish(
            conf_dir,
            pool_name,
            booked,
            me,
            root,
            backend,
            origin,
            command_pgid,
            forwarder.forwarded,
        )
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
    forwarder.child_pgid = forwarder.command_pgid = pid
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
