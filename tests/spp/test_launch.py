"""Real launches: tmux windows, a DPDK primary on hugepages with secondaries attached to it,
qemu-img images, --status, the refusal of a second session, and a --down that leaves nothing.

SPP cannot be built against today's DPDK, so spp_primary and spp_nfv are stand-ins that exec
dpdk-testpmd with the EAL options the runner built (see conftest.DPDK_STANDIN).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from spp_runner import procfs

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


def status_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines()[2:]:
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
    err = result.stderr.splitlines()
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
    assert result.stderr.splitlines()[0] == (
        "spp-wakeup: error: step 'primary' failed: not ready after 1.5s: still waiting for the "
        f"primary's DPDK runtime config {run.runtime_dir}/config and packet "
        "memory"
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
