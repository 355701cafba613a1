"""scripts/demo.sh as a new user runs it: it succeeds, its commands paste back, and it leaves
nothing running."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CGROUP_PARENT

REPO = Path(__file__).resolve().parents[2]


def processes_with(marker: bytes) -> list[str]:
    """``pid comm`` of every process whose environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue  # gone, or not ours to read
        if marker in environ.split(b"\0"):
            found.append(f"{entry} {comm}")
    return found


class DemoRun:
    def __init__(
        self, proc: subprocess.CompletedProcess[str], marker: bytes, bystander: int | None
    ):
        self.proc = proc
        self.marker = marker
        self.bystander_status = bystander


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoRun]:
    """One run of the demo, every process it starts marked by a variable of this run, beside
    someone else's ``sleep 30`` that the demo must leave alone."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the demo's pinning part needs 2 CPUs")
    name = "KCM_DEMO_TEST_MARK"
    value = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KCM_", "CMK_"))}
    env["KCM_CGROUP_PARENT"] = CGROUP_PARENT  # the demo's bookings: the test run's own
    env[name] = value
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        proc = subprocess.run(
            ["bash", "scripts/demo.sh"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        yield DemoRun(proc, f"{name}={value}".encode(), bystander.poll())
    finally:
        bystander.kill()
        bystander.wait()


def test_the_demo_succeeds_and_shows_each_step(
    demo: DemoRun,
) -> None:
    proc = demo.proc
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert '"4,12": {' in out  # describe of the seed's example tree
    assert re.search(r"runs on CPUs 1 of pool dataplane: Cpus_allowed_list:\s+1\n", out)
    assert "a;b|$HOME|" in out
    assert "(exit status 4)" in out  # the exclusive list is held
    assert "  <- the dead PID" in out
    assert "the list is free again: CPUs 1\n" in out
    assert "Traceback" not in proc.stderr


def test_the_demo_prints_no_job_notices(
    demo: DemoRun,
) -> None:
    proc = demo.proc
    for notice in ("Terminated", "Killed"):
        assert notice not in proc.stdout + proc.stderr


def test_the_demo_leaves_no_process_it_started(
    demo: DemoRun,
) -> None:
    assert processes_with(demo.marker) == []


def test_the_demo_leaves_others_processes_alone(demo: DemoRun) -> None:
    assert demo.bystander_status is None  # still running: the demo stops only its own


def test_the_echoed_commands_paste_back_as_they_ran(
    demo: DemoRun,
) -> None:
    proc = demo.proc
    commands = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line[:2] == "$ "]
    work = next(c for c in commands if c[1:3] == ["kcm", "init"])[3].split("=", 1)[1]
    work = os.path.dirname(work)
    assert [
        "KCM_PROC_FS=/proc",
        "kcm",
        "isolate",
        f"--conf-dir={work}/host",
        "--pool=infra",
        "printf",
        "--",
        "%s|",
        "a;b",
        "$HOME",
    ] in commands
    assert [
        "KCM_PROC_FS=/proc",
        "kcm",
        "isolate",
        f"--conf-dir={work}/host",
        "--pool=dataplane",
        'echo "pid $$ runs on CPUs $KCM_CPUS_ASSIGNED of pool $KCM_POOL:"'
        " $(grep Cpus_allowed_list /proc/self/status)",
    ] in commands
    assert ["KCM_PROC_FS=/proc", "kcm", "reconcile", f"--conf-dir={work}/host"] in commands


def test_the_demo_runs_what_pip_install_gives_without_the_test_tools(demo: DemoRun) -> None:
    assert demo.proc.returncode == 0, demo.proc.stderr
    python = REPO / ".venv-demo" / "bin" / "python"
    check = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    wanted = ["kcm", "spp_runner", "yaml", "libtmux", "kubernetes"]
    test_tools = ["pytest", "hypothesis", "mypy", "ruff", "kubernetes_validate"]
    found = subprocess.run(
        [str(python), "-c", check, *wanted, *test_tools], capture_output=True, text=True
    )
    assert found.stdout == f"{wanted}\n", found.stderr
    # The venv's kcm is a regular install, not a link back to this checkout.
    where = subprocess.run(
        [str(python), "-c", "import kcm; print(kcm.__file__)"], capture_output=True, text=True
    )
    assert where.stdout.startswith(str(REPO / ".venv-demo" / "lib")), where.stdout
