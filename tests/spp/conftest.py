"""Fixtures for the SPP runner: fake sysfs trees, conf.yml writers, an isolated tmux server,
a real hugetlbfs mount, and stand-in SPP programs that run DPDK's testpmd."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).parent / "fixtures"
VENV_BIN = Path(sys.executable).parent
SPP_WAKEUP = str(VENV_BIN / "spp-wakeup")
SPPSH = str(VENV_BIN / "sppsh")
TESTPMD = shutil.which("dpdk-testpmd")


# ----------------------------------------------------------------------------- sysfs


def make_sysfs(root: Path, online: str, cpus: int | None = None, ht: bool = True) -> Path:
    """A sysfs tree as kcm reads it: ``devices/system/cpu/online`` and each CPU's topology.

    With ``ht``, hyperthreads n and n + cpus/2 share a core, as on the seeds' 16-CPU example
    host; without, every CPU is a core of its own (like this 2-CPU test machine).
    """
    cpu_dir = root / "devices/system/cpu"
    cpu_dir.mkdir(parents=True, exist_ok=True)
    (cpu_dir / "online").write_text(online + "\n")
    if cpus:
        half = cpus // 2
        for cpu in range(cpus):
            topo = cpu_dir / f"cpu{cpu}/topology"
            topo.mkdir(parents=True, exist_ok=True)
            core = cpu % half if ht else cpu
            siblings = f"{core},{core + half}" if ht else f"{cpu}"
            (topo / "physical_package_id").write_text("0\n")
            (topo / "core_id").write_text(f"{core}\n")
            (topo / "thread_siblings_list").write_text(f"{siblings}\n")
    return root


@pytest.fixture
def sysfs16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 16-CPU host (8 cores, siblings n and n+8), made current through KCM_SYS_FS."""
    root = make_sysfs(tmp_path / "sys16", "0-15", 16)
    monkeypatch.setenv("KCM_SYS_FS", str(root))
    return root


# ----------------------------------------------------------------------------- conf.yml


@pytest.fixture
def write_conf(tmp_path: Path) -> Callable[..., Path]:
    """Write a conf.yml from a dict (or verbatim text) and return its path."""

    def write(data: dict[str, object] | str, name: str = "conf.yml") -> Path:
        path = tmp_path / name
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    return write


def run_cli(
    program: str,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run an installed console script as a user would, capturing what they would see."""
    return subprocess.run(
        [program, *args],
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ),
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# ----------------------------------------------------------------------------- root setup


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (hugepages, DPDK runtime dir /var/run/dpdk)")


def _need(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} not installed (Debian package {package})")
    return found


@pytest.fixture(scope="session")
def hugetlbfs() -> Iterator[Path]:
    """A private hugetlbfs mount with enough free 2 MB pages for a small primary."""
    _need_root()
    nr_path = Path("/proc/sys/vm/nr_hugepages")
    meminfo = Path("/proc/meminfo").read_text()
    free = int(
        next(line.split()[1] for line in meminfo.splitlines() if line.startswith("HugePages_Free:"))
    )
    before = int(nr_path.read_text())
    raised = None
    if free < 64:
        raised = before + (64 - free)
        nr_path.write_text(f"{raised}\n")
    mount_point = Path(tempfile.mkdtemp(prefix="spp-huge-"))
    done = subprocess.run(
        ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "nodev", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        mount_point.rmdir()
        pytest.fail(f"cannot mount hugetlbfs: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        with contextlib.suppress(OSError):
            mount_point.rmdir()
        if raised is not None and int(nr_path.read_text()) == raised:
            nr_path.write_text(f"{before}\n")


# ----------------------------------------------------------------------------- tmux


@pytest.fixture
def tmux_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose tmux server is private to the test, killed afterwards."""
    _need("tmux", "tmux")
    tmux_dir = Path(tempfile.mkdtemp(prefix="spp-tmux-"))
    env = dict(os.environ)
    env.pop("TMUX", None)
    env["TMUX_TMPDIR"] = str(tmux_dir)
    try:
        yield env
    finally:
        # Whatever a test left: stop the processes of every pane, then the server.
        panes = subprocess.run(
            ["tmux", "list-panes", "-a", "-F", "#{pane_pid}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for pid in panes:
            with contextlib.suppress(OSError, ValueError):
                os.killpg(int(pid), signal.SIGKILL)
        subprocess.run(["tmux", "kill-server"], env=env, capture_output=True, check=False)
        shutil.rmtree(tmux_dir, ignore_errors=True)


def tmux(env: dict[str, str], *args: str) -> list[str]:
    done = subprocess.run(["tmux", *args], env=env, capture_output=True, text=True, check=False)
    return done.stdout.splitlines()


# ----------------------------------------------------------------------------- ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports() -> tuple[int, int]:
    a = free_port()
    b = free_port()
    while b == a:
        b = free_port()
    return a, b


# ----------------------------------------------------------------------------- stand-ins


def _write_exec(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# spp_primary / spp_nfv stand-in: record the argv the runner gave, then exec dpdk-testpmd
# with the same EAL options. testpmd needs a forwarding lcore besides the main one, so the
# runner's "-l CPUS" becomes two lcores that both run on exactly CPUS; SPP's own options
# after "--" are dropped for testpmd's.
DPDK_STANDIN = """
    #!/usr/bin/env python3
    import os, sys
    args = sys.argv[1:]
    log = os.environ.get("SPP_STANDIN_LOG")
    if log:
        with open(os.path.join(log, f"{os.path.basename(sys.argv[0])}.{os.getpid()}"), "w") as f:
            f.write("\\0".join(args))
    eal = args[: args.index("--")] if "--" in args else args
    out = []
    i = 0
    while i < len(eal):
        if eal[i] == "-l":
            out += ["--lcores", f"(0-1)@({eal[i + 1]})"]
            i += 2
            continue
        out.append(eal[i])
        i += 1
    os.execvp("dpdk-testpmd", ["dpdk-testpmd", *out, "--no-pci", "--",
              "-i", "--total-num-mbufs=2048"])
"""

# The controller stand-in: SPP's spp.py listens on -p (primary) and -s (secondary) ports.
CONTROLLER_STANDIN = """
    import argparse, os, signal, socket, sys
    p = argparse.ArgumentParser()
    p.add_argument("-p", type=int)
    p.add_argument("-s", type=int)
    a = p.parse_args()
    socks = []
    for port in (a.p, a.s):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
        socks.append(s)
    print("controller listening on", a.p, a.s, flush=True)
    signal.pause()
"""

# QEMU stand-in: refuses to start unless every vhost-user socket it is given exists (as
# QEMU itself would fail to connect), records its argv, then waits. "IGNORE_INT" in the
# environment makes it ignore SIGINT, to exercise --down's SIGKILL.
QEMU_STANDIN = """
    #!/usr/bin/env python3
    import os, signal, stat, sys, time
    args = sys.argv[1:]
    log = os.environ.get("SPP_STANDIN_LOG")
    if log:
        with open(os.path.join(log, f"qemu.{os.getpid()}"), "w") as f:
            f.write("\\0".join(args))
    for flag, value in zip(args, args[1:]):
        if flag == "-chardev":
            path = [p for p in value.split(",") if p.startswith("path=")][0][5:]
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                sys.exit(f"qemu: {path} is not a socket")
            print("qemu: connected", path, flush=True)
    if os.path.exists(os.path.join(os.path.dirname(sys.argv[0]), "IGNORE_INT")):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        time.sleep(3600)
"""


@pytest.fixture
def spp_tree(tmp_path: Path) -> Path:
    """An SPP tree at the default program paths, whose programs are stand-ins."""
    spp = tmp_path / "spp"
    _write_exec(spp / "src/primary/x86_64-native-linuxapp-gcc/spp_primary", DPDK_STANDIN)
    _write_exec(spp / "src/nfv/x86_64-native-linuxapp-gcc/spp_nfv", DPDK_STANDIN)
    (spp / "src/spp.py").write_text(textwrap.dedent(CONTROLLER_STANDIN).lstrip())
    _write_exec(tmp_path / "bin/qemu-system-x86_64", QEMU_STANDIN)
    (tmp_path / "standin-log").mkdir()
    return spp


def write_exec(path: Path, text: str) -> Path:
    return _write_exec(path, text)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
