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

from spp_runner import eal, images, procfs, telemetry
from spp_runner.errors import LaunchError, MissingError, SessionError
from spp_runner.plan import Plan, Role, Window, from_json, to_json
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


@dataclass
class _Step:
    plan: Plan
    window: Window
    window_id: str
    tmux: Tmux
    proc_root: str
    started: float

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


def _wait(step: _Step, what: str, ready: Callable[[], bool], timeout: float) -> None:
    """Poll ``ready`` until it holds; fail at once if the window's process ends."""
    deadline = time.monotonic() + timeout
    while True:
        pane = step.pane()
        if pane is None:
            raise step.failed(f"its window closed while waiting for {what}")
        if pane.dead:
            # tmux may see the pty close a moment before it has reaped the process.
            settle = time.monotonic() + 1.0
            while pane is not None and pane.exit_unknown and time.monotonic() < settle:
                time.sleep(POLL)
                pane = step.pane()
            raise step.failed(f"the process {_ending(pane)} while waiting for {what}")
        if ready():
            return
        if time.monotonic() >= deadline:
            hint = ""
            if step.plan.uses_sudo and step.window.argv[:1] == ("sudo",):
                hint = " (if sudo asks for a password, type it in that window)"
            raise step.failed(f"not ready after {timeout:g}s: still waiting for {what}{hint}")
        time.sleep(POLL)


def _ending(pane: Pane | None) -> str:
    """How a dead pane's process ended, as the end of "the process ..."."""
    if pane is not None and pane.dead_status is not None:
        return f"exited with status {pane.dead_status}"
    if pane is not None and pane.dead_signal is not None:
        return f"was killed by signal {pane.dead_signal}"
    return "exited"


def _primary_ready(step: _Step, since: float) -> bool:
    """The primary's EAL is up (it holds its runtime config) and so is its packet memory.

    EAL takes the config lock early; secondaries need the mempool the primary creates after
    it, or they fail to find it. DPDK's telemetry socket says when a mempool exists; where
    there is no telemetry (older DPDK, or another user's files) the primary must hold the
    config, serve its vhost sockets, and stay up a moment.
    """
    config = eal.runtime_config(step.plan.runtime_dir)
    locked = config_locked(config)
    if locked is None:
        # Not readable by us (sudo): a config written since this launch began.
        try:
            locked = os.stat(config).st_mtime >= step.started - 1
        except OSError:
            locked = False
    if not locked:
        return False
    if not telemetry.has_socket(step.plan.runtime_dir):
        return _sockets_exist(step.window.vhost_sockets) and _stays_up(step, since)
    answer = telemetry.mempools(step.plan.runtime_dir)
    if answer is None:
        return _sockets_exist(step.window.vhost_sockets) and _stays_up(step, since)
    pid, pools = answer
    pane = step.pane()
    if pid is not None and pane is not None and pane.pid is not None:
        ours = {s.pid for s in procfs.descendants(procfs.all_stats(step.proc_root), pane.pid)}
        if pid not in ours:
            return False  # a stale socket of an earlier primary
    return bool(pools)


def _secondary_ready(step: _Step) -> bool | None:
    """Whether the secondary has attached (its multi-process socket is in the runtime dir).

    None when the runtime dir cannot be listed (another user's), so it cannot be told.
    """
    main = step.main()
    if main is None:
        return False
    stats = procfs.all_stats(step.proc_root)
    pane = step.pane()
    pids = {s.pid for s in procfs.descendants(stats, pane.pid)} if pane and pane.pid else set()
    try:
        names = os.listdir(step.plan.runtime_dir)
    except PermissionError:
        return None
    except OSError:
        return False
    patterns = [eal.secondary_socket_pattern(pid) for pid in pids]
    return any(p.match(name) for p in patterns for name in names)


def _stays_up(step: _Step, since: float) -> bool:
    return step.main() is not None and time.monotonic() - since >= SETTLE


def _ready(step: _Step, timeout: float) -> None:
    w = step.window
    plan = step.plan
    if w.role is Role.CONTROLLER:
        for port in plan.controller_ports:
            _wait(
                step,
                f"{plan.controller_host}:{port} to accept connections",
                lambda port=port: accepts(plan.controller_host, port),  # type: ignore[misc]
                timeout,
            )
    elif w.role is Role.PRIMARY:
        since = time.monotonic()
        _wait(
            step,
            f"the primary's DPDK runtime config {eal.runtime_config(plan.runtime_dir)} and "
            "packet memory",
            lambda: step.main() is not None and _primary_ready(step, since),
            timeout,
        )
    elif w.role is Role.SECONDARY:
        since = time.monotonic()

        def attached() -> bool:
            result = _secondary_ready(step)
            return _stays_up(step, since) if result is None else result

        _wait(
            step,
            f"the secondary to attach to the primary (in {plan.runtime_dir})",
            attached,
            timeout,
        )
    elif w.role.is_vm:
        since = time.monotonic()
        _wait(step, "QEMU to stay up", lambda: _stays_up(step, since), timeout)


def _sockets_exist(paths: tuple[str, ...]) -> bool:
    return all(os.path.exists(p) for p in paths)


def launch(
    plan: Plan,
    tmux: Tmux,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    proc_root: str = "/proc",
    log: Log = _quiet,
) -> None:
    """Start ``plan``'s windows in order, each once the one before it is ready."""
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
    for index, window in enumerate(plan.windows):
        if index == 0:
            window_id = tmux.new_session(plan.session, window.name, window.cwd, env)
            tmux.set_plan(plan.session, to_json(plan))
        else:
            window_id = tmux.new_window(plan.session, window.name, window.cwd, env)
        step = _Step(plan, window, window_id, tmux, proc_root, started)
        if window.role is Role.VHOST_VM and window.vhost_sockets:
            _wait(
                step,
                f"vhost sockets {', '.join(window.vhost_sockets)} (served by the primary)",
                lambda w=window: _sockets_exist(w.vhost_sockets),  # type: ignore[misc]
                timeout,
            )
        tmux.start(window_id, window.argv, window.cwd, env)
        _ready(step, timeout)
        log(f"started {window.name}")


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class WindowStatus:
    name: str
    state: str  # alive, dead (exit N), gone
    pid: int | None
    cpus: frozenset[int] | None
    planned: str
    command: str

    @property
    def alive(self) -> bool:
        return self.state == "alive"


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


def status(tmux: Tmux, session: str, proc_root: str = "/proc") -> list[WindowStatus]:
    """Each planned window: its process, whether it lives, and the CPUs it may run on."""
    plan = stored_plan(tmux, session)
    panes = {p.window_name: p for p in tmux.panes(session)}
    stats = procfs.all_stats(proc_root)
    result = []
    for w in plan.windows:
        pane = panes.get(w.name)
        main = None
        if pane is not None and pane.pid is not None and not pane.dead:
            # A working window's process is its shell, whatever the user runs in it.
            main = (
                stats.get(pane.pid)
                if w.role is Role.WORKING
                else procfs.main_process(stats, pane.pid)
            )
        if pane is None:
            state = "gone"
        elif main is None:
            if pane.dead_status is not None:
                state = f"dead (exit {pane.dead_status})"
            elif pane.dead_signal is not None:
                state = f"dead (signal {pane.dead_signal})"
            else:
                state = "dead"
        else:
            state = "alive"
        cpus = procfs.read_cpus_allowed(proc_root, main.pid) if main else None
        result.append(
            WindowStatus(w.name, state, main.pid if main else None, cpus, w.cores_text, w.command)
        )
    return result


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
    """Stop every process the session runs, kill it, and remove what DPDK left behind."""
    plan = stored_plan(tmux, session)
    panes = {p.window_name: p for p in tmux.panes(session)}
    stats = procfs.all_stats(proc_root)
    everything: list[procfs.ProcStat] = []
    stages: dict[int, list[tuple[Window, procfs.ProcStat, list[procfs.ProcStat]]]] = {}
    for w in plan.windows:
        pane = panes.get(w.name)
        if pane is None or pane.pid is None or pane.dead:
            continue
        tree = procfs.descendants(stats, pane.pid)
        everything += tree
        main = procfs.main_process(stats, pane.pid)
        if main is None or w.role is Role.WORKING:
            continue  # shells go with the session
        stages.setdefault(_stage_order(w.role), []).append((w, main, tree))

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
