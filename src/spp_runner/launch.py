"""Run a plan: check the host, start each window in order and wait until it is ready;
report a running session's state; and tear it down leaving nothing behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from spp_runner import eal, images, procfs, record, telemetry
from spp_runner.errors import LaunchError, MissingError, SessionError
from spp_runner.escape import shown
from spp_runner.host import NodeHugepages, hugepage_size_kb, read_node_hugepages
from spp_runner.plan import NodeMemory, Plan, Role, Window, from_json, to_json
from spp_runner.progress import Progress
from spp_runner.record import Started
from spp_runner.tmux import Pane, Tmux

DEFAULT_TIMEOUT = 30.0
DEFAULT_GRACE = 5.0
POLL = 0.1
SETTLE = 1.0  # how long a VM or unobservable secondary must stay up to count as started

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------- host checks


def _program_problem(program: str, window: Window) -> str | None:
    if "/" in program:
        if not os.path.isfile(program):
            return f"{program} does not exist (needed by window '{window.name}')"
        if (
            program != window.argv[-1]
            and not os.access(program, os.X_OK)
            and not (window.role is Role.CONTROLLER and program.endswith(".py"))
        ):
            return f"{program} is not executable (needed by window '{window.name}')"
        return None
    if shutil.which(program) is None:
        hint = ""
        if window.role.is_vm:
            hint = "; install QEMU (Debian: qemu-system-x86) or set paths.qemu"
        elif program == "kcm" or window.auto_cores:
            hint = "; install kcm or set kcm.program"
        return f"{program} not found on PATH (needed by window '{window.name}'){hint}"
    return None


def is_hugetlbfs(path: str, proc_root: str = "/proc") -> bool:
    """Whether ``path`` is a hugetlbfs mount point, as ``<proc_root>/mounts`` says."""
    try:
        with open(os.path.join(proc_root, "mounts"), encoding="utf-8") as f:
            mounts = f.read()
    except OSError:
        return False
    real = os.path.realpath(path)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "hugetlbfs":
            mount_point = fields[1].replace("\\040", " ")
            if os.path.realpath(mount_point) == real:
                return True
    return False


def accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def config_locked(path: str) -> bool | None:
    """Whether a live DPDK primary holds ``path`` (its runtime config) locked.

    EAL keeps a write lock on the config while the primary lives. None when it cannot be told
    (no such file, or no permission to open it).
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return True
        return None
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_optional(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def hugepage_problems(asks: tuple[NodeMemory, ...], found: list[NodeHugepages]) -> list[str]:
    """One line for each node that has fewer free hugepages than the session asks of it,
    naming the node, the page size, the pages needed and the pages free."""
    problems = []
    for ask, node in zip(asks, found, strict=True):
        pages = -(-ask.mb * 1024 // node.size_kb)
        need = (
            f"hugepages: node {ask.node} must give {pages} pages of {node.size_kb} kB "
            f"({ask.mb} MB, eal.socket_mem)"
        )
        if node.free is None:
            fix = ""
            if node.problem and node.problem.startswith("this host has no node"):
                fix = f"; give node {ask.node} no memory in eal.socket_mem"
            problems.append(f"{need} but {node.problem}{fix}")
        elif node.free < pages:
            short = pages - node.free
            problems.append(
                f"{need} but has {node.free} free; reserve {short} more (raise "
                f"{os.path.join(os.path.dirname(node.path), 'nr_hugepages')} by {short}) or "
                "lower eal.socket_mem"
            )
    return problems


def kcm_knows_near(program: str) -> bool | None:
    """Whether ``kcm isolate`` takes ``--near`` (from its help); None if kcm does not run."""
    try:
        done = subprocess.run(
            [program, "isolate", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return "--near" in done.stdout


def preflight(plan: Plan, proc_root: str = "/proc") -> list[str]:
    """What stops a real launch of ``plan`` on this host; a dry run shows these as warnings."""
    problems: list[str] = []
    seen: set[str] = set()
    for window in plan.windows:
        for program in window.programs:
            if program in seen:
                continue
            seen.add(program)
            problem = _program_problem(program, window)
            if problem:
                problems.append(problem)
        if not window.role.is_vm and window.cwd not in seen:
            seen.add(window.cwd)
            if not os.path.isdir(window.cwd):
                problems.append(
                    f"directory {window.cwd} does not exist (window '{window.name}' starts there)"
                )
    if plan.uses_sudo and shutil.which("sudo") is None:
        problems.append("sudo not found on PATH; run spp-wakeup as root or set 'sudo: never'")
    problems += images.missing(plan)
    if not os.path.isdir(plan.huge_dir):
        problems.append(
            f"eal.huge_dir: {plan.huge_dir} does not exist; mount hugetlbfs there "
            f"(mount -t hugetlbfs nodev {plan.huge_dir}) or set eal.huge_dir"
        )
    elif not is_hugetlbfs(plan.huge_dir, proc_root):
        problems.append(
            f"eal.huge_dir: {plan.huge_dir} is not a hugetlbfs mount; mount one there "
            f"(mount -t hugetlbfs nodev {plan.huge_dir}) and reserve pages "
            "(sysctl vm.nr_hugepages=N)"
        )
    if plan.hugepages:
        size_kb = hugepage_size_kb(
            plan.huge_dir,
            _read_optional(os.path.join(proc_root, "mounts")),
            _read_optional(os.path.join(proc_root, "meminfo")),
        )
        found = [read_node_hugepages(plan.sys_root, m.node, size_kb) for m in plan.hugepages]
        problems += hugepage_problems(plan.hugepages, found)
    near = [w for w in plan.windows if w.near is not None]
    if near and plan.kcm_program and kcm_knows_near(plan.kcm_program) is False:
        names = ", ".join(f"'{w.name}'" for w in near)
        problems.append(
            f"kcm ({plan.kcm_program}) has no 'isolate --near', which the window(s) {names} "
            "need; install a kcm that has it, or remove 'near' from conf.yml"
        )
    sock_dirs = {os.path.dirname(s) for s in plan.vhost_sockets}
    for sock_dir in sorted(sock_dirs):
        if not os.path.isdir(sock_dir):
            problems.append(f"paths.sock_dir: {sock_dir} does not exist")
    for path in plan.vhost_sockets:
        if os.path.lexists(path):
            problems.append(
                f"vhost socket {path} already exists; another SPP may be using it: run "
                "'spp-wakeup --down' for that session, or remove the file"
            )
    for port in plan.controller_ports:
        if accepts(plan.controller_host, port):
            problems.append(
                f"{plan.controller_host}:{port} already accepts connections; is another SPP "
                "controller running? Stop it or change controller ports"
            )
    if config_locked(eal.runtime_config(plan.runtime_dir)):
        problems.append(
            f"a DPDK primary with file prefix '{plan.file_prefix}' is already running "
            f"({eal.runtime_config(plan.runtime_dir)} is locked); stop it or set "
            "eal.file_prefix"
        )
    return problems


# ----------------------------------------------------------------------------- launch

# A readiness check: None once the step is ready, else what has not been seen yet, phrased
# for the timeout message ("<what> never appeared").
Missing = Callable[[], "str | None"]


@dataclass
class _Step:
    plan: Plan
    window: Window
    window_id: str
    tmux: Tmux
    proc_root: str
    started: float
    progress: Progress

    def pane(self) -> Pane | None:
        return self.tmux.pane(self.plan.session, self.window_id)

    def main(self) -> procfs.ProcStat | None:
        pane = self.pane()
        if pane is None or pane.pid is None or pane.dead:
            return None
        return procfs.main_process(procfs.all_stats(self.proc_root), pane.pid)

    def failed(self, why: str) -> LaunchError:
        lines = [f"step '{self.window.name}' failed: {why}"]
        output = self.tmux.capture(self.window_id)
        # The last bytes a process wrote can reach tmux after its exit does; give them a moment.
        deadline = time.monotonic() + 1.0
        while not any(not line.startswith("Pane is dead") for line in output):
            if time.monotonic() >= deadline:
                break
            time.sleep(2 * POLL)
            output = self.tmux.capture(self.window_id)
        if output:
            lines.append(f"last output of window '{self.window.name}':")
            lines += [f"  | {line}" for line in output]
        lines.append(
            f"the session '{self.plan.session}' is left as it is for a look "
            f"(tmux attach -t {self.plan.session}); 'spp-wakeup --down --session "
            f"{self.plan.session}' stops it"
        )
        return LaunchError(*lines)


def _wait(step: _Step, what: str, missing: Missing, timeout: float) -> None:
    """Poll ``missing`` until nothing is; fail at once if the window's process ends."""
    deadline = time.monotonic() + timeout
    while True:
        step.progress.tick()
        pane = step.pane()
        if pane is None:
            step.progress.failed("its window closed")
            raise step.failed(f"its window closed while waiting for {what}")
        if pane.dead:
            # tmux may see the pty close a moment before it has reaped the process.
            settle = time.monotonic() + 1.0
            while pane is not None and pane.exit_unknown and time.monotonic() < settle:
                time.sleep(POLL)
                pane = step.pane()
            step.progress.failed(f"the process {_ending(pane)}")
            raise step.failed(f"the process {_ending(pane)} while waiting for {what}")
        not_seen = missing()
        if not_seen is None:
            return
        if time.monotonic() >= deadline:
            hint = ""
            if step.plan.uses_sudo and step.window.argv[:1] == ("sudo",):
                hint = " (if sudo asks for a password, type it in that window)"
            step.progress.timed_out(timeout, not_seen)
            raise step.failed(f"timed out after {timeout:g} s: {not_seen}{hint}")
        time.sleep(POLL)


def _ending(pane: Pane | None) -> str:
    """How a dead pane's process ended, as the end of "the process ..."."""
    if pane is not None and pane.dead_status is not None:
        return f"exited with status {pane.dead_status}"
    if pane is not None and pane.dead_signal is not None:
        return f"was killed by signal {pane.dead_signal}"
    return "exited"


def _primary_missing(step: _Step, since: float) -> str | None:
    """What of a ready primary is not there yet: its EAL is up (it holds its runtime config)
    and so is its packet memory.

    EAL takes the config lock early; secondaries need the mempool the primary creates after
    it, or they fail to find it. DPDK's telemetry socket says when a mempool exists; where
    there is no telemetry (older DPDK, or another user's files) the primary must hold the
    config, serve its vhost sockets, and stay up a moment.
    """
    runtime_dir = step.plan.runtime_dir
    config = eal.runtime_config(runtime_dir)
    if step.main() is None:
        return "the primary's process never started"
    locked = config_locked(config)
    if locked is None:
        # Not readable by us (sudo): a config written since this launch began.
        try:
            if os.stat(config).st_mtime < step.started - 1:
                return f"{config} was never written by this primary (it is older)"
        except OSError:
            return f"{config} never appeared"
    elif not locked:
        return f"{config} was never locked by a live primary"
    answer = telemetry.mempools(runtime_dir) if telemetry.has_socket(runtime_dir) else None
    if answer is None:
        absent = [p for p in step.window.vhost_sockets if not os.path.exists(p)]
        if absent:
            return f"{absent[0]} never appeared"
        return _stayed_up(step, since, "the primary")
    pid, pools = answer
    pane = step.pane()
    if pid is not None and pane is not None and pane.pid is not None:
        ours = {s.pid for s in procfs.descendants(procfs.all_stats(step.proc_root), pane.pid)}
        if pid not in ours:
            return (
                f"DPDK telemetry in {runtime_dir} never answered for this primary (only an "
                f"earlier one's stale socket, pid {pid})"
            )
    if not pools:
        return "the primary's mempool never appeared in DPDK telemetry"
    return None


def _secondary_missing(step: _Step, since: float) -> str | None:
    """Whether the secondary has attached: its multi-process socket is in the runtime dir.

    Where the runtime dir cannot be listed (another user's), it must stay up a moment.
    """
    main = step.main()
    if main is None:
        return "the secondary's process never started"
    stats = procfs.all_stats(step.proc_root)
    pane = step.pane()
    pids = {s.pid for s in procfs.descendants(stats, pane.pid)} if pane and pane.pid else set()
    runtime_dir = step.plan.runtime_dir
    try:
        names = os.listdir(runtime_dir)
    except PermissionError:
        return _stayed_up(step, since, "the secondary")
    except OSError:
        names = []
    patterns = [eal.secondary_socket_pattern(pid) for pid in pids]
    if any(p.match(name) for p in patterns for name in names):
        return None
    return f"{runtime_dir}/mp_socket_{main.pid}_* never appeared"


def _stayed_up(step: _Step, since: float, who: str) -> str | None:
    if step.main() is None:
        return f"{who} never started"
    if time.monotonic() - since < SETTLE:
        return f"{who} was not up for {SETTLE:g} s"
    return None


def _controller_missing(plan: Plan) -> str | None:
    for port in plan.controller_ports:
        if not accepts(plan.controller_host, port):
            return f"{plan.controller_host}:{port} never accepted a connection"
    return None


def _sockets_missing(paths: tuple[str, ...]) -> str | None:
    absent = [p for p in paths if not os.path.exists(p)]
    return f"{absent[0]} never appeared" if absent else None


def _ready_when(plan: Plan, w: Window) -> str | None:
    """What the window's process must show to be ready (None: nothing, it just runs)."""
    if w.role is Role.CONTROLLER:
        ports = " and ".join(f"{plan.controller_host}:{p}" for p in plan.controller_ports)
        return f"{ports} to accept connections"
    if w.role is Role.PRIMARY:
        return (
            f"the primary's DPDK runtime config {eal.runtime_config(plan.runtime_dir)} and "
            "packet memory"
        )
    if w.role is Role.SECONDARY:
        return f"the secondary to attach to the primary (in {plan.runtime_dir})"
    if w.role.is_vm:
        return "QEMU to stay up"
    return None


def _sockets_wanted(w: Window) -> str:
    return f"vhost sockets {', '.join(w.vhost_sockets)} (served by the primary)"


def _waits_for(plan: Plan, w: Window) -> str | None:
    """What the step of ``w`` waits for, as its progress line names it (None: nothing)."""
    if w.role is Role.VHOST_VM and w.vhost_sockets:
        return f"{_sockets_wanted(w)}, then QEMU"
    return _ready_when(plan, w)


def _ready(step: _Step, timeout: float) -> None:
    w = step.window
    plan = step.plan
    what = _ready_when(plan, w)
    if what is None:
        return
    since = time.monotonic()
    missing: Missing
    if w.role is Role.CONTROLLER:
        missing = partial(_controller_missing, plan)
    elif w.role is Role.PRIMARY:
        missing = partial(_primary_missing, step, since)
    elif w.role is Role.SECONDARY:
        missing = partial(_secondary_missing, step, since)
    else:
        missing = partial(_stayed_up, step, since, "QEMU")
    _wait(step, what, missing, timeout)


def _record_window(
    tmux: Tmux, plan: Plan, proc_root: str, started: list[Started], entry: Started
) -> Started:
    """``entry`` with the process its window runs now, stored in the session's record."""
    pane = tmux.pane(plan.session, entry.window_id)
    pid = pane.pid if pane is not None else None
    entry = entry.running(pid, procfs.read_stat(proc_root, pid) if pid is not None else None)
    for i, known in enumerate(started):
        if known.window_id == entry.window_id:
            started[i] = entry
            break
    else:
        started.append(entry)
    tmux.set_record(plan.session, record.to_json(tuple(started)))
    return entry


def launch(
    plan: Plan,
    tmux: Tmux,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    proc_root: str = "/proc",
    log: Log = _quiet,
    progress: Progress | None = None,
) -> None:
    """Start ``plan``'s windows in order, each once the one before it is ready.

    Every window is recorded in the session as it is created and again once its command
    runs (see record.py), so that --status and --down know exactly what this launch made,
    even when it stops half-way.
    """
    progress = progress or Progress(None)
    if tmux.has_session(plan.session):
        raise SessionError(
            f"a tmux session named '{plan.session}' already exists; stop it with "
            f"'spp-wakeup --down --session {plan.session}' or choose another --session"
        )
    problems = preflight(plan, proc_root)
    if problems:
        raise MissingError(*problems)
    for path in images.ensure(plan.images):
        log(f"created image {path}")
    # A dead primary's runtime files would look like a live one's; preflight made sure
    # no primary holds them, so they are stale.
    stale = eal.runtime_config(plan.runtime_dir)
    if config_locked(stale) is False:
        shutil.rmtree(plan.runtime_dir, ignore_errors=True)

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if os.environ.get("XDG_RUNTIME_DIR"):
        env["XDG_RUNTIME_DIR"] = os.environ["XDG_RUNTIME_DIR"]
    started = time.time()
    made: list[Started] = []
    try:
        for index, window in enumerate(plan.windows):
            if index == 0:
                window_id = tmux.new_session(plan.session, window.name, window.cwd, env)
                tmux.set_plan(plan.session, to_json(plan))
            else:
                window_id = tmux.new_window(plan.session, window.name, window.cwd, env)
            entry = _record_window(
                tmux, plan, proc_root, made, Started(window.name, window_id, None, None)
            )
            step = _Step(plan, window, window_id, tmux, proc_root, started, progress)
            waits_for = _waits_for(plan, window)
            if waits_for is not None:
                progress.begin(window.name, waits_for)
            if window.role is Role.VHOST_VM and window.vhost_sockets:
                _wait(
                    step,
                    _sockets_wanted(window),
                    partial(_sockets_missing, window.vhost_sockets),
                    timeout,
                )
            tmux.start(window_id, window.argv, window.cwd, env)
            _record_window(tmux, plan, proc_root, made, entry)
            _ready(step, timeout)
            if waits_for is not None:
                progress.ready()
            log(f"started {window.name}")
    finally:
        progress.end()


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class WindowStatus:
    name: str
    state: str  # alive, dead (exit N), dead (signal N), dead, gone, replaced, not started
    pid: int | None
    cpus: frozenset[int] | None
    planned: str
    command: str
    window_id: str | None = None

    @property
    def alive(self) -> bool:
        return self.state == "alive"


@dataclass(frozen=True)
class ForeignWindow:
    """A window of the session that this launch did not create (a user's, say)."""

    name: str
    window_id: str


@dataclass(frozen=True)
class SessionStatus:
    windows: list[WindowStatus]
    foreign: list[ForeignWindow]

    @property
    def all_alive(self) -> bool:
        return all(w.alive for w in self.windows)


def stored_plan(tmux: Tmux, session: str) -> Plan:
    """The plan a running session was launched with."""
    if not tmux.has_session(session):
        raise SessionError(f"no tmux session named '{session}'; start one with spp-wakeup")
    text = tmux.get_plan(session)
    if not text:
        raise SessionError(
            f"tmux session '{session}' was not started by spp-wakeup (it has no stored plan)"
        )
    try:
        return from_json(text)
    except ValueError as e:
        raise SessionError(f"tmux session '{session}': {e}") from None


def stored_record(tmux: Tmux, session: str) -> dict[str, Started]:
    """Planned window name -> the window the launch created for it."""
    text = tmux.get_record(session)
    if not text:
        raise SessionError(
            f"tmux session '{session}' has no record of the windows spp-wakeup started in it "
            f"(an older spp-wakeup started it); stop it with 'tmux kill-session -t {session}'"
        )
    try:
        return {w.name: w for w in record.from_json(text)}
    except ValueError as e:
        raise SessionError(f"tmux session '{session}': {e}") from None


@dataclass(frozen=True)
class _Judged:
    """A planned window, the window the launch recorded for it, and what became of it."""

    window: Window
    entry: Started | None  # None: the launch stopped before it created this window
    pane: Pane | None
    verdict: record.Verdict | None


def _judged(
    tmux: Tmux, session: str, proc_root: str
) -> tuple[Plan, list[_Judged], list[ForeignWindow], dict[int, procfs.ProcStat]]:
    """The plan; each planned window judged against the record; the windows of the session
    that the launch did not create; every process now."""
    plan = stored_plan(tmux, session)
    made = stored_record(tmux, session)
    panes = {p.window_id: p for p in tmux.panes(session)}
    stats = procfs.all_stats(proc_root)
    judged = []
    for w in plan.windows:
        entry = made.get(w.name)
        pane = panes.get(entry.window_id) if entry is not None else None
        verdict = None
        if entry is not None:
            stat = stats.get(pane.pid) if pane is not None and pane.pid is not None else None
            verdict = record.judge(entry, pane, stat)
        judged.append(_Judged(w, entry, pane, verdict))
    ours = {entry.window_id for entry in made.values()}
    foreign = [
        ForeignWindow(p.window_name, p.window_id) for p in panes.values() if p.window_id not in ours
    ]
    return plan, judged, foreign, stats


def status(tmux: Tmux, session: str, proc_root: str = "/proc") -> SessionStatus:
    """Each planned window: its process, whether it lives, and the CPUs it may run on.

    Only the windows the launch recorded count; any other window, whatever its name, is
    listed apart as not ours.
    """
    _, judged, foreign, stats = _judged(tmux, session, proc_root)
    rows = []
    for j in judged:
        w, pane = j.window, j.pane
        main = None
        ours = j.verdict is record.Verdict.OURS
        if ours and pane is not None and pane.pid is not None and not pane.dead:
            # A working window's process is its shell, whatever the user runs in it.
            main = (
                stats.get(pane.pid)
                if w.role is Role.WORKING
                else procfs.main_process(stats, pane.pid)
            )
        if j.entry is None:
            state = "not started"
        elif j.verdict is record.Verdict.GONE:
            state = "gone"
        elif j.verdict is record.Verdict.REPLACED:
            state = "replaced"
        elif main is None:
            state = "dead" if pane is None else _dead_state(pane)
        else:
            state = "alive"
        cpus = procfs.read_cpus_allowed(proc_root, main.pid) if main else None
        rows.append(
            WindowStatus(
                w.name,
                state,
                main.pid if main else None,
                cpus,
                w.cores_text,
                w.command,
                j.entry.window_id if j.entry else None,
            )
        )
    return SessionStatus(rows, foreign)


def _dead_state(pane: Pane) -> str:
    if pane.dead_status is not None:
        return f"dead (exit {pane.dead_status})"
    if pane.dead_signal is not None:
        return f"dead (signal {pane.dead_signal})"
    return "dead"


# ----------------------------------------------------------------------------- down


def _stage_order(role: Role) -> int:
    # Reverse of the start order: guests first, then what they depend on.
    order = [
        Role.TEMPLATE_VM,
        Role.VHOST_VM,
        Role.RING_VM,
        Role.SECONDARY,
        Role.PRIMARY,
        Role.CONTROLLER,
    ]
    return order.index(role) if role in order else len(order)


def _alive(proc_root: str, who: procfs.ProcStat) -> bool:
    now = procfs.read_stat(proc_root, who.pid)
    return now is not None and now.start_time == who.start_time and now.alive


def _signal(pids: list[int], sig: signal.Signals, uses_sudo: bool) -> None:
    denied = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            denied.append(pid)
    if denied and uses_sudo:
        subprocess.run(
            ["sudo", "kill", "-s", sig.name.removeprefix("SIG"), *map(str, denied)],
            check=False,
            capture_output=True,
        )


def _remove(path: str, uses_sudo: bool, kind: int) -> bool:
    """Remove ``path`` if it is of ``kind`` (a ``stat.S_IF*`` type); whether it was removed.

    Only what DPDK makes is removed: a socket at a vhost path, a regular hugepage file, the
    runtime directory. Anything else found there (a directory at a socket's path, a symlink)
    is someone else's and stays.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_IFMT(mode) != kind:
        return False
    try:
        if kind == stat.S_IFDIR:
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except PermissionError:
        if not uses_sudo:
            raise
        flag = ["-r"] if kind == stat.S_IFDIR else []
        subprocess.run(["sudo", "rm", "-f", *flag, "--", path], check=False, capture_output=True)
    return True


def down(
    tmux: Tmux,
    session: str,
    *,
    grace: float = DEFAULT_GRACE,
    proc_root: str = "/proc",
    log: Log = _quiet,
) -> None:
    """Stop every process the launch started, close its windows, and remove what DPDK left.

    Only the windows the launch recorded, still running the process it started, are
    stopped and closed; any other window (a user's, whatever its name, or a pane someone
    respawned) is left running, and then so is the session that holds it.
    """
    plan, judged, foreign, stats = _judged(tmux, session, proc_root)
    everything: list[procfs.ProcStat] = []
    stages: dict[int, list[tuple[Window, procfs.ProcStat, list[procfs.ProcStat]]]] = {}
    ours: list[str] = []
    left_alone: list[str] = []  # what is said of each, once ours are stopped
    for j in judged:
        if j.verdict is record.Verdict.REPLACED and j.entry is not None:
            left_alone.append(
                f"left window '{j.window.name}' ({j.entry.window_id}): it no longer runs the "
                "process spp-wakeup started"
            )
            continue
        if j.verdict is not record.Verdict.OURS or j.pane is None or j.entry is None:
            continue
        ours.append(j.entry.window_id)
        if j.pane.pid is None or j.pane.dead:
            continue
        tree = procfs.descendants(stats, j.pane.pid)
        everything += tree
        main = procfs.main_process(stats, j.pane.pid)
        if main is None or j.window.role is Role.WORKING:
            continue  # shells go with their window
        stages.setdefault(_stage_order(j.window.role), []).append((j.window, main, tree))
    left_alone += [
        f"left window {shown(w.name)} ({w.window_id}): spp-wakeup did not start it" for w in foreign
    ]

    for order in sorted(stages):
        stage = stages[order]
        for _, main, _ in stage:
            _signal([main.pid], signal.SIGINT, plan.uses_sudo)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            _alive(proc_root, p) for _, _, tree in stage for p in tree
        ):
            time.sleep(POLL)
        for w, main, tree in stage:
            left = [p for p in reversed(tree) if _alive(proc_root, p)]
            if left:
                _signal([p.pid for p in left], signal.SIGKILL, plan.uses_sudo)
                log(f"killed {w.name} (pid {main.pid}): still running {grace:g}s after SIGINT")
            else:
                log(f"stopped {w.name} (pid {main.pid})")

    for line in left_alone:
        log(line)
    if left_alone:
        for window_id in ours:
            tmux.kill_window(window_id)
        tmux.forget(session)
        log(
            f"left session '{session}' open for the {len(left_alone)} window(s) spp-wakeup "
            "did not start or no longer runs; it is no longer an SPP session"
        )
    else:
        tmux.kill_session(session)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(proc_root, p) for p in everything):
        time.sleep(POLL)
    left = [p for p in everything if _alive(proc_root, p)]
    if left:
        _signal([p.pid for p in left], signal.SIGKILL, plan.uses_sudo)
        time.sleep(POLL)

    for path in plan.vhost_sockets:
        if _remove(path, plan.uses_sudo, stat.S_IFSOCK):
            log(f"removed {path}")
        elif os.path.lexists(path):
            log(f"left {path}: not a socket, so not DPDK's")
    if _remove(plan.runtime_dir, plan.uses_sudo, stat.S_IFDIR):
        log(f"removed {plan.runtime_dir}")
    pattern = eal.hugepage_file_pattern(plan.file_prefix)
    try:
        names = [n for n in os.listdir(plan.huge_dir) if pattern.match(n)]
    except OSError:
        names = []
    for name in names:
        _remove(os.path.join(plan.huge_dir, name), plan.uses_sudo, stat.S_IFREG)
    if names:
        log(
            f"removed {len(names)} hugepage files of prefix '{plan.file_prefix}' from "
            f"{plan.huge_dir}"
        )
    still = [p.pid for p in everything if _alive(proc_root, p)]
    if still:
        raise LaunchError(
            f"session '{session}' is down but processes {', '.join(map(str, still))} "
            "survived SIGKILL"
        )
    log(f"session '{session}' is down")
