"""Full, read-only and forbidden file systems: one line naming the path, a documented exit code,
and a state exactly as it was (or, for a release, the command's own status)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KCM, Result, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import snapshot, tree
from tests.fixtures.sysfs import NO_HT_2, build_sysfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

NOSPACE = os.strerror(errno.ENOSPC)
READ_ONLY = os.strerror(errno.EROFS)
DENIED = os.strerror(errno.EACCES)
NOBODY = 65534


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of its own (1 MiB, 256 inodes), unmounted however the test ends."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    name = f"kcm-test-{uuid.uuid4().hex[:12]}"
    options = "size=1m,nr_inodes=256,mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, name, str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(disk: Path) -> Path:
    """Use up every inode and every block of ``disk``; the directory holding the filler."""
    filler = disk / "filler"
    filler.mkdir()
    n = 0
    while True:
        try:
            os.close(os.open(filler / f"f{n}", os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            break
        n += 1
    fd = os.open(filler / "f0", os.O_WRONLY)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def booked(conf: Path) -> list[int]:
    """The PIDs on the dataplane list ``1``."""
    tasks = tree(str(conf))["dataplane/1"]
    assert isinstance(tasks, list)
    return tasks


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


def init(conf: Path, sys_root: str) -> Result:
    """``kcm init`` for this machine's two CPUs: dataplane 1, infra 0."""
    return run_kcm(
        "init",
        f"--conf-dir={conf}",
        "--num-dp-cores=1",
        "--num-cp-cores=0",
        env=kcm_env(KCM_SYS_FS=sys_root),
    )


def init_on(conf: Path, sys_root: str) -> None:
    result = init(conf, sys_root)
    assert result.code == 0, result.err


def isolate(conf: Path, command: str) -> Result:
    return run_kcm(
        "isolate",
        f"--conf-dir={conf}",
        "--pool=dataplane",
        command,
        env=kcm_env(KCM_PROC_FS="/proc"),
    )


# -- booking -----------------------------------------------------------------------------------


def test_booking_on_a_full_disk_changes_nothing(disk: Path, sys2: str, tmp_path: Path) -> None:
    # Found by outside testing: the write's ENOSPC escaped as a traceback (exit 1).
    conf = disk / "kcm"
    init_on(conf, sys2)
    fill(disk)
    before = snapshot(str(conf))
    ran = tmp_path / "ran"
    result = isolate(conf, f"touch {ran}")
    # The first write: the tasks file (with a booking cgroup) or the owner record (without).
    assert_one_error_line(result, f"cannot write {conf}/pools/dataplane/1/", NOSPACE)
    assert result.code == 3
    assert not ran.exists()
    assert snapshot(str(conf)) == before


def test_booking_on_a_read_only_disk_changes_nothing(disk: Path, sys2: str, tmp_path: Path) -> None:
    conf = disk / "kcm"
    init_on(conf, sys2)
    remount(disk, "ro")
    before = snapshot(str(conf))
    ran = tmp_path / "ran"
    result = isolate(conf, f"touch {ran}")
    assert_one_error_line(result, f"cannot open {conf}/lock for writing: {READ_ONLY}")
    assert result.code == 3
    assert not ran.exists()
    assert snapshot(str(conf)) == before


def as_nobody(*argv: str, env: dict[str, str]) -> Result:
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    if subprocess.run([*setpriv, KCM, "--version"], capture_output=True).returncode != 0:
        pytest.skip("user nobody cannot run this kcm (its Python lies under a private home)")
    proc = subprocess.run(
        [*setpriv, KCM, *argv], env=env, capture_output=True, text=True, timeout=60, cwd="/"
    )
    return Result(proc)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is 0700)."""
    where = Path(tempfile.mkdtemp(prefix="kcm-disk-errors-"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where)


def test_booking_without_write_permission_changes_nothing(open_dir: Path) -> None:
    # A state of user nobody's own, whose list directory nobody may not write.
    sys_root = build_sysfs(str(open_dir / "sys"), NO_HT_2)
    conf = open_dir / "kcm"
    init_on(conf, sys_root)
    for path in [conf, *conf.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    (conf / "pools/dataplane/1").chmod(0o555)
    before = snapshot(str(conf))
    result = as_nobody(
        "isolate",
        f"--conf-dir={conf}",
        "--pool=dataplane",
        "echo ran",
        env=kcm_env(KCM_PROC_FS="/proc"),
    )
    assert_one_error_line(result, f"cannot write {conf}/pools/dataplane/1/.owner-", DENIED)
    assert result.code == 3
    assert result.out == ""
    assert snapshot(str(conf)) == before


# -- release -----------------------------------------------------------------------------------


def test_a_release_on_a_full_disk_keeps_the_commands_status(disk: Path, sys2: str) -> None:
    # The command fills the disk, so kcm cannot write the tasks file without its PID.
    conf = disk / "kcm"
    init_on(conf, sys2)
    filler = disk / "filler"
    filler.mkdir()
    command = (
        f"{{ i=0; while true > {filler}/f$i; do i=$((i+1)); done;"
        f" cat /dev/zero > {filler}/big; }} 2>/dev/null; exit 7"
    )
    proc = subprocess.run(
        [KCM, "isolate", f"--conf-dir={conf}", "--pool=dataplane", command],
        env=kcm_env(KCM_PROC_FS="/proc"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    held = booked(conf)
    assert proc.returncode == 7
    assert proc.stderr == (
        f"kcm: error: cannot write {conf}/pools/dataplane/1/tasks: {NOSPACE}; CPU list 1 of"
        f" pool 'dataplane' stays booked by the exited PID {held[0]} until kcm reconcile runs\n"
    )
    assert len(held) == 1
    shutil.rmtree(filler)
    reconciled = run_kcm("reconcile", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS="/proc"))
    assert reconciled.code == 0, reconciled.err
    assert booked(conf) == []


def test_a_release_on_a_read_only_disk_keeps_the_commands_status(disk: Path, sys2: str) -> None:
    conf = disk / "kcm"
    init_on(conf, sys2)
    result = isolate(conf, f"mount -o remount,ro {disk}; exit 7")
    held = booked(conf)
    assert result.code == 7
    assert result.err == (
        f"kcm: error: cannot open {conf}/lock for writing: {READ_ONLY}; CPU list 1 of pool"
        f" 'dataplane' stays booked by the exited PID {held[0]} until kcm reconcile runs\n"
    )
    remount(disk, "rw")
    reconciled = run_kcm("reconcile", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS="/proc"))
    assert reconciled.code == 0, reconciled.err
    assert booked(conf) == []


# -- reconcile ---------------------------------------------------------------------------------


def test_reconcile_on_a_full_disk_changes_nothing(disk: Path, sys2: str) -> None:
    conf = disk / "kcm"
    init_on(conf, sys2)
    task = subprocess.Popen(["sleep", "60"])
    try:
        os.sched_setaffinity(task.pid, {0})
        (conf / "pools/infra/0/tasks").write_text(f"{task.pid},4194305")  # one live, one dead
        fill(disk)
        before = snapshot(str(conf))
        result = run_kcm("reconcile", f"--conf-dir={conf}", env=kcm_env(KCM_PROC_FS="/proc"))
    finally:
        task.kill()
        task.wait()
    assert_one_error_line(
        result,
        f"cannot write {conf}/pools/infra/0/tasks: {NOSPACE}; reconcile stopped at infra/0"
        " (list 2 of 2): it wrote nothing; it left infra/0 as it was",
    )
    assert result.code == 3
    assert snapshot(str(conf)) == before


# -- init --------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["beside", "inside"])
def test_init_on_a_full_disk_leaves_nothing(disk: Path, sys2: str, where: str) -> None:
    conf = disk / "kcm"
    if where == "inside":
        conf.mkdir()
    filler = fill(disk)
    result = init(conf, sys2)
    assert_one_error_line(
        result, f"cannot create {conf}: {NOSPACE} (at {disk}/", "nothing was left"
    )
    assert result.code == 3
    assert sorted(os.listdir(disk)) == (["filler", "kcm"] if where == "inside" else ["filler"])
    if where == "inside":
        assert os.listdir(conf) == []
    shutil.rmtree(filler)
    again = init(conf, sys2)
    assert again.code == 0, again.err


@pytest.mark.parametrize("where", ["beside", "inside"])
def test_init_on_a_read_only_disk_is_one_line(disk: Path, sys2: str, where: str) -> None:
    conf = disk / "kcm"
    if where == "inside":
        conf.mkdir()
    remount(disk, "ro")
    result = init(conf, sys2)
    assert_one_error_line(result, f"cannot create {conf}: {READ_ONLY}")
    assert result.code == 3
    assert os.listdir(disk) == (["kcm"] if where == "inside" else [])


def test_init_in_a_parent_it_may_not_write_is_one_line(open_dir: Path) -> None:
    sys_root = build_sysfs(str(open_dir / "sys"), NO_HT_2)
    parent = open_dir / "etc"
    parent.mkdir(mode=0o755)
    result = as_nobody(
        "init",
        f"--conf-dir={parent}/kcm",
        "--num-dp-cores=1",
        "--num-cp-cores=0",
        env=kcm_env(KCM_SYS_FS=sys_root),
    )
    assert_one_error_line(result, f"cannot create {parent}/kcm: {DENIED} (at {parent}/.kcm")
    assert result.code == 3
    assert os.listdir(parent) == []
