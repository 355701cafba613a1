"""The state directory adapter itself: the lock's time bound, atomic writes, refusals."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from kcm.errors import LockTimeoutError, StateError
from kcm.model import CpuList
from kcm.state import StateDir, atomic_write
from tests.fixtures.state import build_state, snapshot


@pytest.fixture
def conf(tmp_path: Path) -> str:
    return build_state(str(tmp_path / "kcm"), {"infra": (False, {"0": "7"})})


def test_a_lock_held_past_the_timeout_writes_nothing(conf: str) -> None:
    before = snapshot(conf)
    with StateDir(conf) as state:
        state.lock(0.05)
        pool = state.read_pool("infra")
        time.sleep(0.1)  # as if the process had been stopped while holding the lock
        with pytest.raises(LockTimeoutError, match="past KCM_LOCK_TIMEOUT"):
            state.add_task("infra", pool.cpu_lists["0"], 8, 123)
    assert snapshot(conf) == before


def test_add_and_remove_task(conf: str) -> None:
    with StateDir(conf) as state:
        state.lock(5)
        state.add_task("infra", CpuList("0", [7]), 8, 4242)
        assert Path(conf, "pools/infra/0/tasks").read_text() == "7,8"
        assert Path(conf, "pools/infra/0/.owner-8").read_text() == "4242\n"
        assert state.remove_task("infra", "0", 8)
        assert not state.remove_task("infra", "0", 8)
    assert Path(conf, "pools/infra/0/tasks").read_text() == "7"
    assert sorted(os.listdir(Path(conf, "pools/infra/0"))) == ["tasks"]


def test_atomic_write_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()  # renaming a file over a directory fails
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(IsADirectoryError):
            atomic_write(fd, "target", "data")
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["target"]


def test_symlinked_pool_directory_is_refused(conf: str, tmp_path: Path) -> None:
    elsewhere = build_state(str(tmp_path / "other"), {"infra": (False, {"1": ""})})
    os.symlink(Path(elsewhere, "pools/infra"), Path(conf, "pools/evil"))
    with StateDir(conf) as state, pytest.raises(StateError, match="evil is not a pool directory"):
        state.read_pools()
    with StateDir(conf) as state, pytest.raises(StateError, match="symlink"):
        state.read_pool("evil")


def test_fifo_in_place_of_tasks_is_refused_without_hanging(conf: str) -> None:
    tasks = Path(conf, "pools/infra/0/tasks")
    tasks.unlink()
    os.mkfifo(tasks)
    started = time.monotonic()
    with StateDir(conf) as state, pytest.raises(StateError, match="tasks is not a regular file"):
        state.read_pool("infra")
    assert time.monotonic() - started < 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_describe_works_on_a_read_only_mount(conf: str, tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import run_kcm

    expected = run_kcm("describe", f"--conf-dir={conf}").out
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", conf, str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        result = run_kcm("describe", f"--conf-dir={ro}")
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert result.code == 0, result.err
    assert result.out == expected.replace(conf, str(ro))


def _hold_lock_for(conf: str, seconds: float) -> threading.Thread:
    """Another holder of the lock (its own descriptor) that lets go after ``seconds``."""
    fd = os.open(Path(conf, "lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    holder = threading.Thread(target=lambda: (time.sleep(seconds), os.close(fd)))
    holder.start()
    return holder


def test_a_waiter_gets_the_lock_when_the_holder_lets_go(conf: str) -> None:
    holder = _hold_lock_for(conf, 0.2)
    with StateDir(conf) as state:
        state.lock(30)  # blocks in the kernel until the close above
        assert state.read_pool("infra").cpu_lists["0"].tasks == [7]
    holder.join()
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL  # the timer's handler is gone
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_waiter_off_the_main_thread_polls_and_times_out(conf: str) -> None:
    holder = _hold_lock_for(conf, 0.5)
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            with StateDir(conf) as state:
                state.lock(0.1)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join()
    holder.join()
    assert isinstance(outcome[0], LockTimeoutError)
    with StateDir(conf) as state:
        state.lock(0.1)  # free again


def test_a_reader_cannot_write(conf: str) -> None:
    # describe and discover (and views to come) open a StateReader: "it only reads" holds by
    # construction, since the type has no method that writes and takes only a shared lock.
    from kcm import describe
    from kcm.k8s import discover
    from kcm.state import StateReader

    writes = {"add_task", "set_tasks", "remove_task", "remove_hidden", "check_lock_held"}
    assert not writes & set(dir(StateReader))
    assert writes <= set(dir(StateDir))
    assert "StateReader" in describe.__dict__ and "StateDir" not in describe.__dict__
    assert "StateReader" in discover.__dict__ and "StateDir" not in discover.__dict__
    fd = os.open(Path(conf, "lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)  # another reader
    try:
        with StateReader(conf) as reader:
            reader.lock(0.2)  # shared: taken beside the other reader at once
            assert reader.read_pool("infra").cpu_lists["0"].tasks == [7]
    finally:
        os.close(fd)
