"""Real launches: tmux windows, a DPDK primary on hugepages with secondaries attached to it,
qemu-img images, --status, the refusal of a second session, and a --down that leaves nothing.

SPP cannot be built against today's DPDK, so spp_primary and spp_nfv are stand-ins that exec
dpdk-testpmd with the EAL options the runner built (see conftest.DPDK_STANDIN).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import pty
import re
import shlex
import signal
import socket
import stat
import struct
import subprocess
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from spp_runner import launch, procfs
from spp_runner.tmux import Tmux
from tests.fixtures.sysfs import build_devices, build_hugepages

from .conftest import (
    SPP_WAKEUP,
    TESTPMD,
    VENV_BIN,
    free_ports,
    make_sysfs,
    run_cli,
    tmux,
    wait_for,
    write_exec,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (hugepages, /var/run/dpdk)"),
    pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd not installed (Debian dpdk)"),
]

_counter = itertools.count()


@dataclass
class Run:
    """One runner directory: conf.yml, stand-in SPP tree, template image, environment."""

    dir: Path
    conf: Path
    env: dict[str, str]
    prefix: str
    huge: Path
    sock_dir: Path
    log: Path
    ports: tuple[int, int]

    @property
    def runtime_dir(self) -> Path:
        return Path("/var/run/dpdk") / self.prefix

    def wakeup(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return run_cli(SPP_WAKEUP, "--config", str(self.conf), *args, env=self.env, timeout=timeout)

    def write_conf(self, **sections: object) -> None:
        data = yaml.safe_load(self.conf.read_text())
        data.update(sections)
        self.conf.write_text(yaml.safe_dump(data, sort_keys=False))

    def recorded(self, program: str) -> dict[int, list[str]]:
        """PID -> argv of each stand-in run of ``program``."""
        found = {}
        for path in self.log.glob(f"{program}.*"):
            found[int(path.suffix[1:])] = path.read_text().split("\0")
        return found

    def hugepage_files(self) -> list[str]:
        return sorted(n for n in os.listdir(self.huge) if n.startswith(f"{self.prefix}map_"))


@pytest.fixture
def run(tmp_path: Path, hugetlbfs: Path, tmux_env: dict[str, str], spp_tree: Path) -> Iterator[Run]:
    prefix = f"spptest{os.getpid()}x{next(_counter)}"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "template.qcow2"), "16M"],
        check=True,
    )
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    ports = free_ports()
    conf = tmp_path / "conf.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "controller": {"host": "127.0.0.1", "pri_port": ports[0], "sec_port": ports[1]},
                "primary": {"coremask": 0x1},
                "secondaries": [{"id": 1, "coremask": "0x2"}],
                "vms_ring": [{"id": 6}],
                "vms_vhost": [{"id": 11}],
                "paths": {
                    "spp_dir": "spp",
                    "qemu": "bin/qemu-system-x86_64",
                    "hda": "template.qcow2",
                    "img_dir": "img",
                    "sock_dir": str(sock_dir),
                },
                "eal": {"socket_mem": 64, "huge_dir": str(hugetlbfs), "file_prefix": prefix},
            },
            sort_keys=False,
        )
    )
    sysfs = make_sysfs(tmp_path / "sys", "0-1", 2, ht=False)
    env = {
        **tmux_env,
        "KCM_SYS_FS": str(sysfs),
        "SPP_STANDIN_LOG": str(tmp_path / "standin-log"),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    r = Run(tmp_path, conf, env, prefix, hugetlbfs, sock_dir, tmp_path / "standin-log", ports)
    try:
        yield r
    finally:
        # Whatever a failing test left behind (tmux_env then stops every pane).
        if has_session(env):
            run_cli(SPP_WAKEUP, "--down", "--grace", "1", env=env)
        for pid in [*r.recorded("spp_primary"), *r.recorded("spp_nfv"), *r.recorded("qemu")]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(r.runtime_dir)], check=False)
        for name in os.listdir(hugetlbfs):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(hugetlbfs / name)


def split_progress(stderr: str) -> tuple[list[str], list[str]]:
    """The progress lines (elapsed times as ``<t>``), then the rest of what stderr showed."""
    lines = stderr.splitlines()
    first_error = next(
        (i for i, line in enumerate(lines) if line.startswith("spp-wakeup: ")), len(lines)
    )
    progress = [
        re.sub(r"(ready|failed) after \d+\.\d s", r"\1 after <t> s", line)
        for line in lines[:first_error]
    ]
    return progress, lines[first_error:]


def has_session(env: dict[str, str]) -> bool:
    done = subprocess.run(
        ["tmux", "has-session", "-t", "=spp"], env=env, check=False, capture_output=True
    )
    return done.returncode == 0


def planned_commands(stdout: str) -> dict[str, list[str]]:
    """Window name -> argv, from what --dry-run printed."""
    lines = stdout.splitlines()
    commands = {}
    for i, line in enumerate(lines):
        if "cores:" in line and line.strip().startswith("["):
            commands[line.split()[1]] = shlex.split(lines[i + 1])
    return commands


def window_ids_and_pids(env: dict[str, str]) -> dict[str, tuple[str, int]]:
    """Window name -> (window id, pane PID), for windows whose names are unique."""
    found = {}
    for line in tmux(
        env, "list-panes", "-s", "-t", "=spp", "-F", "#{window_name} #{window_id} #{pane_pid}"
    ):
        name, window_id, pid = line.split()
        assert name not in found, f"two windows named {name}"
        found[name] = (window_id, int(pid))
    return found


def recorded_windows(env: dict[str, str]) -> dict[str, tuple[str, int, int]]:
    (text,) = tmux(env, "show-options", "-v", "-t", "=spp:", "@spp-runner-windows")
    return {w["name"]: (w["window_id"], w["pid"], w["start_time"]) for w in json.loads(text)}


def start_time(pid: int) -> int:
    stat_ = procfs.read_stat("/proc", pid)
    assert stat_ is not None
    return stat_.start_time


def status_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines()[2:]:
        if line.startswith("not ours: "):
            continue
        cells = line.split(maxsplit=5)
        rows[cells[0]] = cells
    return rows


def cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":")[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def alive(pid: int) -> bool:
    stat_ = procfs.read_stat("/proc", pid)
    return stat_ is not None and stat_.alive


def window_pids(env: dict[str, str]) -> dict[str, int]:
    return {
        name: int(pid)
        for name, pid in (
            line.split()
            for line in tmux(
                env, "list-panes", "-s", "-t", "=spp", "-F", "#{window_name} #{pane_pid}"
            )
        )
    }


def test_launch_status_refusal_and_down(run: Run) -> None:
    dry = run.wakeup("--dry-run", "-ns", "1", "-nv", "1")
    assert dry.returncode == 0, dry.stderr
    planned = planned_commands(dry.stdout)

    up = run.wakeup("-ns", "1", "-nv", "1", "--no-attach")
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines() == [
        f"created image {run.dir}/img/template-vhost.qcow2",
        f"created image {run.dir}/img/vhost11.qcow2",
        "started controller",
        "started primary",
        "started sec1",
        "started vhost11",
        "started work1",
        "session 'spp' is up; attach with: tmux attach-session -t =spp",
    ]
    # Not a terminal: each step that waits is a start line and a result line on stderr.
    assert split_progress(up.stderr) == (
        [
            f"controller: waiting for 127.0.0.1:{run.ports[0]} and 127.0.0.1:{run.ports[1]} "
            "to accept connections",
            "controller: ready after <t> s",
            f"primary: waiting for the primary's DPDK runtime config {run.runtime_dir}/config "
            "and packet memory",
            "primary: ready after <t> s",
            f"sec1: waiting for the secondary to attach to the primary (in {run.runtime_dir})",
            "sec1: ready after <t> s",
            f"vhost11: waiting for vhost sockets {run.sock_dir}/sock0 (served by the primary), "
            "then QEMU",
            "vhost11: ready after <t> s",
        ],
        [],
    )

    # Windows in the seed's order, each running exactly its planned command line.
    assert tmux(run.env, "list-windows", "-t", "=spp", "-F", "#{window_name}") == [
        "controller",
        "primary",
        "sec1",
        "vhost11",
        "work1",
    ]
    panes = window_pids(run.env)
    assert procfs.read_cmdline("/proc", panes["controller"]) == tuple(planned["controller"])
    # The session records each window it created by id, with the process it started there.
    assert recorded_windows(run.env) == {
        name: (window_id, pid, start_time(pid))
        for name, (window_id, pid) in window_ids_and_pids(run.env).items()
    }
    ((primary_pid, primary_argv),) = run.recorded("spp_primary").items()
    ((sec_pid, sec_argv),) = run.recorded("spp_nfv").items()
    ((qemu_pid, qemu_argv),) = run.recorded("qemu").items()
    assert primary_argv == planned["primary"][1:]
    assert sec_argv == planned["sec1"][1:]
    assert qemu_argv == planned["vhost11"][1:]
    assert (panes["primary"], panes["sec1"], panes["vhost11"]) == (primary_pid, sec_pid, qemu_pid)

    # Each DPDK process runs on exactly its cores.
    assert cpus_allowed(primary_pid) == "0"
    assert cpus_allowed(sec_pid) == "1"

    # The primary is up on hugepages; the secondary really attached to it.
    runtime = set(os.listdir(run.runtime_dir))
    assert "config" in runtime
    assert any(n.startswith(f"mp_socket_{sec_pid}_") for n in runtime), runtime
    assert any(n.endswith(f"_{sec_pid}") and n.startswith("fbarray_memseg") for n in runtime)
    assert len(run.hugepage_files()) >= 1
    proc_info = subprocess.run(
        ["dpdk-proc-info", "--file-prefix", run.prefix, "--no-pci", "--", "--stats"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc_info.returncode == 0, proc_info.stderr
    assert "NIC statistics for port 0" in proc_info.stdout  # the vhost port the primary serves

    # The vhost-user socket existed (served by the primary) before QEMU started.
    sock0 = run.sock_dir / "sock0"
    assert stat.S_ISSOCK(sock0.stat().st_mode)
    assert f"path={sock0}" in " ".join(qemu_argv)
    assert (run.dir / "img/vhost11.qcow2").exists()

    status = run.wakeup("--status")
    assert status.returncode == 0, status.stderr
    rows = status_rows(status.stdout)
    assert status.stdout.splitlines()[:2] == ["session 'spp':", status.stdout.splitlines()[1]]
    assert status.stdout.splitlines()[1].split() == [
        "WINDOW",
        "STATE",
        "PID",
        "CPUS",
        "PLANNED",
        "COMMAND",
    ]
    assert {name: cells[1:5] for name, cells in rows.items()} == {
        "controller": ["alive", str(panes["controller"]), "0-1", "-"],
        "primary": ["alive", str(primary_pid), "0", "0"],
        "sec1": ["alive", str(sec_pid), "1", "1"],
        "vhost11": ["alive", str(qemu_pid), "0-1", "-"],
        "work1": ["alive", str(panes["work1"]), "0-1", "-"],
    }
    assert rows["primary"][5] == shlex.join(planned["primary"])

    # A second launch with the same session name is refused and changes nothing.
    again = run.wakeup("-ns", "1", "-nv", "1", "--no-attach")
    assert again.returncode == 6
    assert again.stderr == (
        "spp-wakeup: error: a tmux session named 'spp' already exists; stop it with "
        "'spp-wakeup --down --session spp' or choose another --session\n"
    )
    assert window_pids(run.env) == panes

    everything = list(panes.values())
    down = run.wakeup("--down")
    assert down.returncode == 0, down.stderr
    out = down.stdout.splitlines()
    assert out[:4] == [
        f"stopped vhost11 (pid {qemu_pid})",
        f"stopped sec1 (pid {sec_pid})",
        f"stopped primary (pid {primary_pid})",
        f"stopped controller (pid {panes['controller']})",
    ]
    assert f"removed {run.runtime_dir}" in out
    assert out[-1] == "session 'spp' is down"

    assert not has_session(run.env)
    assert [pid for pid in everything if alive(pid)] == []
    assert not os.path.lexists(sock0)
    assert not run.runtime_dir.exists()
    assert run.hugepage_files() == []


def test_a_dead_primary_fails_its_step_with_its_output(run: Run) -> None:
    write_exec(
        run.dir / "spp/src/primary/x86_64-native-linuxapp-gcc/spp_primary",
        """
        #!/bin/sh
        echo "EAL: Cannot get hugepage information."
        exit 1
    """,
    )
    result = run.wakeup("-ns", "0", "-nv", "0", "--no-attach")
    assert result.returncode == 5
    progress, err = split_progress(result.stderr)
    assert progress == [
        f"controller: waiting for 127.0.0.1:{run.ports[0]} and 127.0.0.1:{run.ports[1]} to "
        "accept connections",
        "controller: ready after <t> s",
        f"primary: waiting for the primary's DPDK runtime config {run.runtime_dir}/config and "
        "packet memory",
        "primary: failed after <t> s: the process exited with status 1",
    ]
    assert err[0] == (
        "spp-wakeup: error: step 'primary' failed: the process exited with status 1 while "
        f"waiting for the primary's DPDK runtime config {run.runtime_dir}/config and packet "
        "memory"
    )
    assert "  | EAL: Cannot get hugepage information." in err, result.stderr
    assert err[-1] == (
        "spp-wakeup: error: the session 'spp' is left as it is for a look (tmux attach -t "
        "spp); 'spp-wakeup --down --session spp' stops it"
    )
    assert "Traceback" not in result.stderr

    status = run.wakeup("--status")
    assert status.returncode == 1
    rows = status_rows(status.stdout)
    assert rows["primary"][1:4] == ["dead", "(exit", "1)"]
    assert rows["controller"][1] == "alive"

    down = run.wakeup("--down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines()[0].startswith("stopped controller (pid ")


def test_a_primary_that_never_gets_ready_times_out_naming_the_step(run: Run) -> None:
    write_exec(
        run.dir / "spp/src/primary/x86_64-native-linuxapp-gcc/spp_primary",
        """
        #!/bin/sh
        exec sleep 300
    """,
    )
    result = run.wakeup("-ns", "0", "-nv", "0", "--no-attach", "--timeout", "1.5")
    assert result.returncode == 5
    progress, err = split_progress(result.stderr)
    assert progress[2:] == [
        f"primary: waiting for the primary's DPDK runtime config {run.runtime_dir}/config and "
        "packet memory",
        f"primary: timed out after 1.5 s: {run.runtime_dir}/config never appeared",
    ]
    assert err[0] == (
        "spp-wakeup: error: step 'primary' failed: timed out after 1.5 s: "
        f"{run.runtime_dir}/config never appeared"
    )
    sleeper = window_pids(run.env)["primary"]
    down = run.wakeup("--down")
    assert down.returncode == 0, down.stderr
    assert f"stopped primary (pid {sleeper})" in down.stdout.splitlines()
    assert not alive(sleeper)


def test_down_kills_what_ignores_sigint_and_removes_a_killed_primarys_files(run: Run) -> None:
    (run.dir / "bin/IGNORE_INT").touch()
    up = run.wakeup("-ns", "1", "-nr", "1", "-nv", "0", "--no-attach")
    assert up.returncode == 0, up.stderr
    ((primary_pid, _),) = run.recorded("spp_primary").items()
    ((qemu_pid, _),) = run.recorded("qemu").items()

    # A primary killed outright leaves its hugepage files and runtime dir behind.
    os.kill(primary_pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(primary_pid))
    left = run.hugepage_files()
    assert left
    assert (run.runtime_dir / "config").exists()
    foreign = run.huge / "otherprefixmap_0"
    foreign.touch()

    status = run.wakeup("--status")
    assert status.returncode == 1
    assert status_rows(status.stdout)["primary"][1] == "dead"

    down = run.wakeup("--down", "--grace", "1")
    assert down.returncode == 0, down.stderr
    out = down.stdout.splitlines()
    assert out[0] == f"killed ring6 (pid {qemu_pid}): still running 1s after SIGINT"
    assert f"removed {len(left)} hugepage files of prefix '{run.prefix}' from {run.huge}" in out
    assert not alive(qemu_pid)
    assert run.hugepage_files() == []
    assert not run.runtime_dir.exists()
    assert foreign.exists()  # another prefix's files are not ours to remove
    foreign.unlink()


def test_launch_refuses_a_busy_port_and_a_stale_vhost_socket(run: Run) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", run.ports[1]))
    listener.listen(1)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run.sock_dir / "sock0"))
    try:
        result = run.wakeup("-ns", "1", "-nv", "1", "--no-attach")
    finally:
        listener.close()
        stale.close()
    assert result.returncode == 4
    assert result.stderr.splitlines() == [
        f"spp-wakeup: error: vhost socket {run.sock_dir}/sock0 already exists; another SPP may "
        "be using it: run 'spp-wakeup --down' for that session, or remove the file",
        f"spp-wakeup: error: 127.0.0.1:{run.ports[1]} already accepts connections; is another "
        "SPP controller running? Stop it or change controller ports",
    ]
    assert not has_session(run.env)
    assert run.recorded("spp_primary") == {}


@pytest.fixture
def kcm_state(run: Run) -> Path:
    """kcm's state for this 2-CPU machine: dataplane list '1' (exclusive), infra '0'."""
    state = run.dir / "kcm"
    result = run_cli(
        str(VENV_BIN / "kcm"),
        "init",
        f"--conf-dir={state}",
        "--num-dp-cores=1",
        "--num-cp-cores=0",
        env=run.env,
    )
    assert result.returncode == 0, result.stderr
    return state


def dataplane_tasks(run: Run, state: Path) -> dict[str, list[int]]:
    described = run_cli(str(VENV_BIN / "kcm"), "describe", f"--conf-dir={state}", env=run.env)
    assert described.returncode == 0, described.stderr
    lists = json.loads(described.stdout)["pools"]["dataplane"]["cpuLists"]
    return {name: entry["tasks"] for name, entry in lists.items()}


def test_auto_coremask_books_cores_from_kcm(run: Run, kcm_state: Path) -> None:
    run.write_conf(secondaries=[{"id": 1, "coremask": "auto"}], kcm={"conf_dir": str(kcm_state)})
    up = run.wakeup("-ns", "1", "-nv", "0", "--no-attach")
    assert up.returncode == 0, up.stderr
    ((sec_pid, sec_argv),) = run.recorded("spp_nfv").items()
    # kcm chose the dataplane list, pinned the process and handed the list to its EAL.
    assert sec_argv[:2] == ["-l", "1"]
    assert cpus_allowed(sec_pid) == "1"
    booked = dataplane_tasks(run, kcm_state)
    assert list(booked) == ["1"] and len(booked["1"]) == 1
    assert any(n.startswith(f"mp_socket_{sec_pid}_") for n in os.listdir(run.runtime_dir))

    status = run.wakeup("--status")
    assert status.returncode == 0, status.stderr
    assert status_rows(status.stdout)["sec1"][1:5] == ["alive", str(sec_pid), "1", "auto"]

    down = run.wakeup("--down")
    assert down.returncode == 0, down.stderr
    assert f"stopped sec1 (pid {sec_pid})" in down.stdout.splitlines()
    assert not alive(sec_pid)
    # kcm isolate saw its command end and gave the list back.
    assert dataplane_tasks(run, kcm_state) == {"1": []}


# ----------------------------------------------------------------------------- NUMA

NIC_ON_NODE_1 = "ens2f0"


def split_nodes(run: Run, free_pages: int = 64) -> Path:
    """Put this machine's CPU 0 and CPU 1 on NUMA nodes 0 and 1 in the run's fake sysfs, each
    node with ``free_pages`` free 2 MB pages, and a NIC (ens2f0) on node 1."""
    sysfs = Path(run.env["KCM_SYS_FS"])
    for node in (0, 1):
        (sysfs / f"devices/system/node/node{node}").mkdir(parents=True)
        (sysfs / f"devices/system/node/node{node}/cpulist").write_text(f"{node}\n")
    build_hugepages(str(sysfs), {0: free_pages, 1: free_pages})
    build_devices(str(sysfs), {"0000:af:00.0": 1}, {NIC_ON_NODE_1: "0000:af:00.0"})
    return sysfs


def test_socket_mem_follows_each_process_node_into_real_dpdk(run: Run) -> None:
    """The primary on CPU 0 (node 0) and the secondary on CPU 1 (node 1): DPDK takes the
    per-node --socket-mem of each and the secondary attaches."""
    split_nodes(run)
    up = run.wakeup("-ns", "1", "-nv", "0", "--no-attach")
    assert up.returncode == 0, up.stderr
    ((primary_pid, primary_argv),) = run.recorded("spp_primary").items()
    ((sec_pid, sec_argv),) = run.recorded("spp_nfv").items()
    assert primary_argv[primary_argv.index("--socket-mem") + 1] == "64"
    assert sec_argv[sec_argv.index("--socket-mem") + 1] == "0,64"
    assert any(n.startswith(f"mp_socket_{sec_pid}_") for n in os.listdir(run.runtime_dir))
    assert run.wakeup("--down").returncode == 0
    assert not alive(primary_pid) and not alive(sec_pid)


def test_a_node_short_of_hugepages_stops_the_launch_before_any_window(run: Run) -> None:
    split_nodes(run, free_pages=31)  # socket_mem 64 MB is 32 pages of 2 MB
    up = run.wakeup("-ns", "1", "-nv", "0", "--no-attach")
    assert up.returncode == 4, up.stderr
    sysfs = run.env["KCM_SYS_FS"]
    assert up.stderr.splitlines() == [
        f"spp-wakeup: error: hugepages: node {node} must give 32 pages of 2048 kB (64 MB, "
        f"eal.socket_mem) but has 31 free; reserve 1 more (raise {sysfs}/devices/system/node/"
        f"node{node}/hugepages/hugepages-2048kB/nr_hugepages by 1) or lower eal.socket_mem"
        for node in (0, 1)
    ]
    assert not has_session(run.env)
    assert run.recorded("spp_primary") == {}


def kcm_knows_near() -> bool:
    return launch.kcm_knows_near(str(VENV_BIN / "kcm")) is True


@pytest.mark.skipif(
    not kcm_knows_near(),
    reason="this kcm has no 'isolate --near' yet (it comes with issue 12's kcm side); the test "
    "runs by itself once 'kcm isolate --help' lists --near",
)
def test_auto_near_a_nic_on_node_1_gets_cpu_1_and_its_node_memory(
    run: Run, kcm_state: Path
) -> None:
    split_nodes(run)
    run.write_conf(
        secondaries=[{"id": 1, "coremask": "auto", "near": NIC_ON_NODE_1}],
        kcm={"conf_dir": str(kcm_state)},
    )
    dry = run.wakeup("--dry-run", "-ns", "1", "-nv", "0")
    assert dry.returncode == 0, dry.stderr
    assert f"--near={NIC_ON_NODE_1}" in planned_commands(dry.stdout)["sec1"]
    up = run.wakeup("-ns", "1", "-nv", "0", "--no-attach")
    assert up.returncode == 0, up.stderr
    ((sec_pid, sec_argv),) = run.recorded("spp_nfv").items()
    # kcm booked the list on the NIC's node and said so through KCM_NUMA_NODE, from which the
    # window's shell built spp_nfv's --socket-mem.
    assert sec_argv[:4] == ["-l", "1", "--socket-mem", "0,64"]
    assert cpus_allowed(sec_pid) == "1"
    assert (Path(f"/proc/{sec_pid}/environ").read_bytes().split(b"\0")).count(
        b"KCM_NUMA_NODE=1"
    ) == 1
    assert run.wakeup("--down").returncode == 0
    assert dataplane_tasks(run, kcm_state) == {"1": []}


def test_auto_without_near_on_two_nodes_launches_with_whatever_node_kcm_says(
    run: Run, kcm_state: Path
) -> None:
    """With today's kcm (no KCM_NUMA_NODE) the window's shell gives no --socket-mem; with a
    kcm that exports it, the secondary gets its node's."""
    split_nodes(run)
    run.write_conf(secondaries=[{"id": 1, "coremask": "auto"}], kcm={"conf_dir": str(kcm_state)})
    up = run.wakeup("-ns", "1", "-nv", "0", "--no-attach")
    assert up.returncode == 0, up.stderr
    ((sec_pid, sec_argv),) = run.recorded("spp_nfv").items()
    environ = Path(f"/proc/{sec_pid}/environ").read_bytes().split(b"\0")
    node = next((e.split(b"=", 1)[1] for e in environ if e.startswith(b"KCM_NUMA_NODE=")), b"")
    expected = ["--socket-mem", "0,64"] if node == b"1" else []
    assert node in (b"", b"1")  # CPU 1 is on node 1 in this sysfs
    assert sec_argv[: 2 + len(expected)] == ["-l", "1", *expected]
    assert "--socket-mem" not in sec_argv[2 + len(expected) :]
    assert run.wakeup("--down").returncode == 0


def test_down_leaves_what_is_not_dpdks_at_a_socket_path(run: Run) -> None:
    up = run.wakeup("-ns", "1", "-nr", "1", "-nv", "1", "--no-attach")
    assert up.returncode == 0, up.stderr
    sock = run.sock_dir / "sock0"
    assert sock.is_socket()
    sock.unlink()  # someone else's directory now sits where the socket was
    sock.mkdir()
    (sock / "keep").write_text("not DPDK's")
    down = run.wakeup("--down", "--grace", "1")
    assert down.returncode == 0, down.stderr
    assert f"left {sock}: not a socket, so not DPDK's" in down.stdout.splitlines()
    assert (sock / "keep").read_text() == "not DPDK's"


def panes_named(env: dict[str, str], name: str) -> list[tuple[str, int]]:
    """(window id, pane PID) of every window called ``name``, in window order."""
    found = []
    for line in tmux(
        env, "list-panes", "-s", "-t", "=spp", "-F", "#{window_name} #{window_id} #{pane_pid}"
    ):
        window_name, window_id, pid = line.split()
        if window_name == name:
            found.append((window_id, int(pid)))
    return found


def test_status_and_down_act_only_on_the_windows_the_launch_started(run: Run) -> None:
    up = run.wakeup("-ns", "0", "-nv", "0", "--no-attach")
    assert up.returncode == 0, up.stderr
    ((real_id, real_pid),) = panes_named(run.env, "controller")
    # A user opens a window with the controller's name; name lookups found it instead.
    tmux(run.env, "new-window", "-d", "-t", "=spp:", "-n", "controller", "exec sleep 600")
    ((_, _), (impostor_id, impostor_pid)) = panes_named(run.env, "controller")
    assert impostor_id != real_id

    status = run.wakeup("--status")
    assert status.returncode == 0, status.stdout
    assert status_rows(status.stdout)["controller"][1:3] == ["alive", str(real_pid)]
    assert status.stdout.splitlines()[-1] == (
        f"not ours: window 'controller' ({impostor_id}) was not started by spp-wakeup (it has "
        "the name of a planned window); --status and --down leave it alone"
    )

    down = run.wakeup("--down", "--grace", "2")
    assert down.returncode == 0, down.stderr
    out = down.stdout.splitlines()
    assert f"stopped controller (pid {real_pid})" in out
    assert f"left window 'controller' ({impostor_id}): spp-wakeup did not start it" in out
    assert not any(str(impostor_pid) in line for line in out)
    assert wait_for(lambda: not alive(real_pid))
    assert alive(impostor_pid)
    # The session stays for the user's window alone, and is no longer an SPP session.
    assert tmux(run.env, "list-windows", "-t", "=spp", "-F", "#{window_id}") == [impostor_id]
    again = run.wakeup("--status")
    assert again.returncode == 6
    assert "was not started by spp-wakeup" in again.stderr
    assert not run.runtime_dir.exists()


def test_a_window_whose_pane_was_respawned_is_not_ours(run: Run) -> None:
    up = run.wakeup("-ns", "0", "-nv", "0", "--no-attach")
    assert up.returncode == 0, up.stderr
    ((controller_id, controller_pid),) = panes_named(run.env, "controller")
    tmux(run.env, "respawn-pane", "-k", "-t", controller_id, "exec sleep 600")
    assert wait_for(lambda: panes_named(run.env, "controller")[0][1] != controller_pid)
    ((_, respawned_pid),) = panes_named(run.env, "controller")

    status = run.wakeup("--status")
    assert status.returncode == 1
    assert status_rows(status.stdout)["controller"][1:3] == ["replaced", "-"]

    down = run.wakeup("--down", "--grace", "2")
    assert down.returncode == 0, down.stderr
    out = down.stdout.splitlines()
    assert (
        f"left window 'controller' ({controller_id}): it no longer runs the process "
        "spp-wakeup started"
    ) in out
    assert out[0].startswith("stopped primary (pid ")
    assert alive(respawned_pid)


def test_a_window_whose_pid_now_names_another_process_is_not_ours(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = run.wakeup("-ns", "0", "-nv", "0", "--no-attach")
    assert up.returncode == 0, up.stderr
    ((_, controller_pid),) = panes_named(run.env, "controller")
    # The world after a PID reuse: the controller's PID belongs to a process that started
    # later. The procfs is a copy of the session's processes with that one start time moved.
    fake_proc = tmp_path / "proc"
    for _, pid in window_ids_and_pids(run.env).values():
        for process in procfs.descendants(procfs.all_stats("/proc"), pid):
            (fake_proc / str(process.pid)).mkdir(parents=True, exist_ok=True)
            for name in ("stat", "status"):
                try:
                    text = Path(f"/proc/{process.pid}/{name}").read_text()
                except FileNotFoundError:  # a short-lived child (a shell's), gone since
                    continue
                if name == "stat" and process.pid == controller_pid:
                    head, tail = text.rsplit(")", 1)
                    fields = tail.split()
                    fields[19] = str(int(fields[19]) + 100)  # field 22: starttime
                    text = head + ") " + " ".join(fields) + "\n"
                (fake_proc / str(process.pid) / name).write_text(text)
    monkeypatch.setenv("TMUX_TMPDIR", run.env["TMUX_TMPDIR"])
    monkeypatch.delenv("TMUX", raising=False)

    rows = {r.name: r for r in launch.status(Tmux(), "spp", proc_root=str(fake_proc)).windows}
    assert (rows["controller"].state, rows["controller"].pid) == ("replaced", None)
    assert rows["primary"].state == "alive"
    # The real world is unchanged: with the real procfs the controller is ours.
    assert launch.status(Tmux(), "spp").windows[0].state == "alive"


def test_progress_on_a_terminal_is_one_line_redrawn_in_place(run: Run) -> None:
    write_exec(
        run.dir / "spp/src/primary/x86_64-native-linuxapp-gcc/spp_primary",
        """
        #!/bin/sh
        exec sleep 300
    """,
    )
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    options = ("-ns", "0", "-nv", "0", "--no-attach", "--timeout", "2.5")
    wakeup = subprocess.Popen(
        [SPP_WAKEUP, "--config", str(run.conf), *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=run.env,
    )
    os.close(slave)
    shown = b""
    while True:  # until the last writer of the terminal is gone (EIO)
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert wakeup.wait(timeout=60) == 5
    assert wakeup.stdout is not None
    assert wakeup.stdout.read() == b"started controller\n"
    text = shown.decode()
    waiting = (
        f"primary: waiting for the primary's DPDK runtime config {run.runtime_dir}/config and "
        "packet memory"
    )
    # The controller's line, redrawn until ready; then the primary's, once a second.
    controller, rest = text.split("\r\n", 1)
    assert controller.startswith("\rcontroller: waiting for 127.0.0.1:")
    assert re.fullmatch(r".*\rcontroller: ready after \d+\.\d s *", controller)
    primary, errors = rest.split("\r\n", 1)
    *redraws, last = primary.split("\r")[1:]
    # Redrawn once per second waited, from 0 (a second can be skipped on a loaded machine,
    # never shown twice); then the result overwrites the line, spaces covering the rest.
    seconds = [int(re.fullmatch(re.escape(waiting) + r" \((\d+) s\)", r)[1]) for r in redraws]
    assert seconds[0] == 0 and seconds[-1] == 2, seconds
    assert seconds == sorted(set(seconds)), seconds
    result = f"primary: timed out after 2.5 s: {run.runtime_dir}/config never appeared"
    assert last == result + " " * (len(redraws[-1]) - len(result))
    assert errors.startswith(
        "spp-wakeup: error: step 'primary' failed: timed out after 2.5 s: "
        f"{run.runtime_dir}/config never appeared\r\n"
    )
    down = run.wakeup("--down")
    assert down.returncode == 0, down.stderr
