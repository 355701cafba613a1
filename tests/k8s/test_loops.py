"""kcm reconcile --interval and kcm discover --interval: a pass per period until SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.k8s.conftest import KCM, NODE, clean_env, kcm
from tests.k8s.fake_apiserver import FakeApiServer

PASS = re.compile(r"^kcm (\w+): \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} pass (\d+): (.*)$")


class Loop:
    """A running ``kcm ... --interval`` whose stderr lines are collected as they come."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def passes(self) -> list[str]:
        """The message of each pass line, in order."""
        found = []
        for line in list(self.lines):
            m = PASS.match(line)
            if m:
                found.append(m.group(3))
        return found

    def wait_until(self, done: Callable[[list[str]], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.passes()):
            assert self.proc.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, "\n".join(self.lines)
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=15)
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def loops() -> Iterator[list[Loop]]:
    started: list[Loop] = []
    yield started
    for loop in started:
        loop.kill()


@pytest.fixture
def state2(tmp_path: Path, sys2: str, home: Path) -> str:
    conf = str(tmp_path / "kcm")
    env = clean_env(home, KCM_SYS_FS=sys2)
    result = kcm("init", f"--conf-dir={conf}", "--num-dp-cores=1", "--num-cp-cores=0", env=env)
    assert result.code == 0, result.err
    return conf


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_reconcile_loop_passes_every_interval_and_stops_cleanly(
    state2: str, home: Path, loops: list[Loop], sig: int
) -> None:
    env = clean_env(home, KCM_PROC_FS="/proc")
    # A dead task left behind: the first pass removes it, later passes find nothing to do.
    tasks = next(Path(state2, "pools", "dataplane").glob("*/tasks"))
    tasks.write_text("2147483646")  # above pid_max: no such process
    loop = Loop([KCM, "reconcile", f"--conf-dir={state2}", "--interval=0.2"], env)
    loops.append(loop)
    started = time.monotonic()
    loop.wait_until(lambda passes: len(passes) >= 4)
    elapsed = time.monotonic() - started
    assert loop.stop(sig) == 0
    passes = loop.passes()
    assert passes[0] == (
        f"removed 1 dead task(s): 2147483646 from dataplane/{tasks.parent.name};"
        " 0 affinity mismatch(es)"
    )
    assert set(passes[1:]) == {"removed 0 dead task(s); 0 affinity mismatch(es)"}
    assert elapsed >= 0.2 * 3 * 0.9  # four passes take three periods at least
    assert loop.lines[-1] == f"kcm reconcile: stopping after {len(passes)} pass(es)"
    assert tasks.read_text() == ""


def test_discover_loop_advertises_then_repairs_what_the_kubelet_reset(
    state2: str,
    cluster_env: dict[str, str],
    apiserver: FakeApiServer,
    loops: list[Loop],
) -> None:
    loop = Loop([KCM, "discover", f"--conf-dir={state2}", "--interval=0.2"], cluster_env)
    loops.append(loop)
    loop.wait_until(lambda passes: len(passes) >= 3)
    first, *rest = loop.passes()
    assert first == f"node {NODE}: capacity kcm.io/dataplane unset -> 1, label kcm.io/node=true set"
    assert set(rest) == {f"node {NODE}: no change (kcm.io/dataplane=1)"}

    # A kubelet restart drops the extended resource; the next pass puts it back.
    with apiserver.lock:
        del apiserver.node["status"]["capacity"]["kcm.io/dataplane"]
    seen = len(loop.passes())
    loop.wait_until(lambda passes: len(passes) > seen + 1)
    assert f"node {NODE}: capacity kcm.io/dataplane unset -> 1" in loop.passes()[seen:]

    # A pass that fails is logged and the loop goes on.
    with apiserver.lock:
        apiserver.forbidden.add(("get", "nodes"))
    seen = len(loop.passes())
    loop.wait_until(lambda passes: len(passes) > seen + 1)
    assert any(
        p.startswith("error: permission denied: kcm needs permission to get nodes")
        for p in loop.passes()[seen:]
    )
    with apiserver.lock:
        apiserver.forbidden.clear()
    seen = len(loop.passes())
    loop.wait_until(lambda passes: len(passes) > seen + 1)
    assert loop.passes()[-1] == f"node {NODE}: no change (kcm.io/dataplane=1)"

    assert loop.stop() == 0
    assert loop.lines[-1] == f"kcm discover: stopping after {len(loop.passes())} pass(es)"
    assert all(PASS.match(line) for line in loop.lines[:-1]), loop.lines


def test_discover_loop_refuses_to_start_without_credentials(state2: str, home: Path) -> None:
    """Set-up errors are not retried forever: the loop never starts."""
    result = kcm(
        "discover",
        f"--conf-dir={state2}",
        "--interval=0.2",
        env=clean_env(home, NODE_NAME=NODE),
        timeout=20,
    )
    assert result.code == 7
    assert result.err.startswith("kcm: error: no Kubernetes credentials")


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_bad_interval(state2: str, home: Path, value: str) -> None:
    result = kcm("discover", f"--conf-dir={state2}", f"--interval={value}", env=clean_env(home))
    assert result.code == 2
    assert result.err == (
        f"kcm: error: --interval={value!r} is not a positive number of seconds (see kcm --help)\n"
    )
