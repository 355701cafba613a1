"""Fixtures for the Kubernetes path: fake sysfs trees, kcm states, a fake API server, kubeconfig."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CGROUP_PARENT
from tests.k8s.fake_apiserver import TOKEN, FakeApiServer, make_node

BIN = Path(sys.executable).parent
KCM = str(BIN / "kcm")
NODE = "worker-1"


@dataclass
class Run:
    """What a user sees of one command: exit status, stdout, stderr."""

    code: int
    out: str
    err: str


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without kcm's or Kubernetes' settings, with HOME pointing at ``home``."""
    drop = ("KCM_", "CMK_", "KUBERNETES_", "KUBECONFIG", "NODE_NAME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["HOME"] = str(home)
    env["KCM_CGROUP_PARENT"] = CGROUP_PARENT  # isolate's bookings: the test run's own
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str], timeout: float = 60) -> Run:
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def kcm(*args: str, env: dict[str, str], timeout: float = 60) -> Run:
    return run([KCM, *args], env, timeout)


def assert_error(result: Run, code: int, *fragments: str) -> str:
    """One ``kcm: error:`` line with every fragment, the exit code, no traceback."""
    assert result.code == code, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("kcm: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_sysfs(root: Path, cpus: int, *, ht: bool) -> str:
    """One socket of ``cpus`` CPUs; with ``ht``, CPU n and n+cpus/2 are one core's threads."""
    base = root / "devices/system/cpu"
    _write(base / "online", f"0-{cpus - 1}\n")
    half = cpus // 2
    for n in range(cpus):
        topo = base / f"cpu{n}/topology"
        core = n % half if ht else n
        siblings = f"{core},{core + half}" if ht else str(n)
        _write(topo / "physical_package_id", "0\n")
        _write(topo / "core_id", f"{core}\n")
        _write(topo / "thread_siblings_list", f"{siblings}\n")
    return str(root)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def sys16(tmp_path: Path) -> str:
    """16 CPUs, 8 cores with two threads each (siblings n and n+8)."""
    return build_sysfs(tmp_path / "sys16", 16, ht=True)


@pytest.fixture
def sys2(tmp_path: Path) -> str:
    """2 CPUs without hyperthreads: the dataplane CPUs exist on this 2-CPU machine."""
    return build_sysfs(tmp_path / "sys2", 2, ht=False)


@pytest.fixture
def state16(tmp_path: Path, sys16: str, home: Path) -> str:
    """``kcm init`` on the 16-CPU sysfs with the defaults: 4 dataplane lists."""
    conf = str(tmp_path / "kcm")
    result = kcm("init", f"--conf-dir={conf}", env=clean_env(home, KCM_SYS_FS=sys16))
    assert result.code == 0, result.err
    return conf


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer(make_node(NODE)).start()
    try:
        yield server
    finally:
        server.stop()


def write_kubeconfig(path: Path, server: str) -> str:
    """A kubeconfig with one cluster at ``server`` and a bearer-token user (JSON is YAML)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "kcm", "user": {"token": TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "kcm"}}],
        "current-context": "test",
    }
    _write(path, json.dumps(config, indent=2))
    return str(path)


@pytest.fixture
def kubeconfig(tmp_path: Path, apiserver: FakeApiServer) -> str:
    return write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)


@pytest.fixture
def cluster_env(home: Path, kubeconfig: str) -> dict[str, str]:
    """What discover needs to reach the fake API server as node ``worker-1``."""
    return clean_env(home, KUBECONFIG=kubeconfig, NODE_NAME=NODE)
