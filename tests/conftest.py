"""Shared fixtures: the installed kcm command, sysfs and state trees in temp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.cgroups import remove_parent, unique_parent
from tests.fixtures.sysfs import NO_HT_2, build_sysfs
from tests.guest import marker as guest_marker

# kcm refuses state that group or others can write; under a umask such as 002 the trees the
# tests build with plain mkdir/write would be refused. Tests of the umask set their own.
os.umask(0o022)

BIN = Path(sys.executable).parent
KCM = str(BIN / "kcm")

# Every kcm isolate a test runs books a cgroup (as root, where the host has a cpuset
# hierarchy): under a parent of this run's own, removed at the end with anything left in it.
# Tests of the cgroups themselves give each test a parent of its own (tests/fixtures/cgroups.py).
CGROUP_PARENT = unique_parent()
# Also for what runs kcm with an environment of its own making (a pty's child, tmux); tests
# that build one from scratch add it themselves (conftest.CGROUP_PARENT).
os.environ["KCM_CGROUP_PARENT"] = CGROUP_PARENT


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    remove_parent(CGROUP_PARENT)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked @pytest.mark.guest(...) run only inside the guest kernel (tests/guest).
    guest_marker.select(config, items, guest_marker.guest_mode())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    guest_marker.report_counts(terminalreporter.stats)


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr


def kcm_env(**extra: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KCM_", "CMK_"))}
    env["KCM_CGROUP_PARENT"] = CGROUP_PARENT
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_kcm(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    proc = subprocess.run(
        [KCM, *args],
        capture_output=True,
        text=True,
        env=env if env is not None else kcm_env(),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    return Result(proc)


@pytest.fixture
def kcm() -> Callable[..., Result]:
    return run_kcm


@pytest.fixture
def sys2(tmp_path: Path) -> str:
    """A sysfs like this machine's: 2 CPUs, no hyperthreads."""
    return build_sysfs(str(tmp_path / "sys"), NO_HT_2)


@pytest.fixture
def state2(tmp_path: Path, sys2: str) -> str:
    """A state made by kcm init on 2 CPUs: dataplane '1' (exclusive), infra '0'."""
    conf = str(tmp_path / "kcm")
    result = run_kcm(
        "init",
        f"--conf-dir={conf}",
        "--num-dp-cores=1",
        "--num-cp-cores=0",
        env=kcm_env(KCM_SYS_FS=sys2),
    )
    assert result.code == 0, result.err
    return conf


def assert_one_error_line(result: Result, *fragments: str) -> None:
    """A clean failure: non-zero exit, one 'kcm: error:' line, no traceback."""
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("kcm: error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
