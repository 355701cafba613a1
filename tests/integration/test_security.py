"""The defences SECURITY.md lists, each against a real state tree and the real kcm command."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.errors import StateError
from kcm.k8s import discover
from tests.conftest import KCM, Result, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.procfs import build_procfs, stat_line
from tests.fixtures.state import snapshot, tree
from tests.fixtures.sysfs import NO_HT_2, build_sysfs

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
OTHER_UID = 4242

# Every command that opens the state: the writers (isolate, reconcile, init keeping a state)
# and the reader (describe). discover's reader is called in-process below.
COMMANDS = {
    "isolate": ("isolate", "--pool=infra", "true"),
    "reconcile": ("reconcile",),
    "init-keep": ("init", "--num-dp-cores=1", "--num-cp-cores=0", "--keep-existing"),
    "describe": ("describe",),
}
WRITERS = ("isolate", "reconcile", "init-keep")


def kcm_on(conf: str, command: str, **extra: str) -> Result:
    name, *rest = COMMANDS[command]
    env = kcm_env(KCM_PROC_FS="/proc", **extra)
    return run_kcm(name, f"--conf-dir={conf}", *rest, env=env)


def walk(root: str) -> list[str]:
    """``root`` and every entry under it."""
    found = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return found


# -- writable by others ------------------------------------------------------------------

# state2: dataplane '1' (exclusive), infra '0'; every command reads the infra pool.
ENTRIES = ["", "lock", "pools", "pools/infra", "pools/infra/exclusive", "pools/infra/0"]
ENTRIES += ["pools/infra/0/tasks"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("bit", "who"), [(0o020, "group"), (0o002, "world")])
def test_an_entry_others_can_write_is_refused_by_every_command(
    state2: str, command: str, entry: str, bit: int, who: str
) -> None:
    path = os.path.join(state2, entry) if entry else state2
    mode = os.stat(path).st_mode & 0o7777 | bit
    os.chmod(path, mode)
    before = snapshot(state2)
    result = kcm_on(state2, command)
    assert_one_error_line(
        result, f"{path} is {who}-writable (mode {mode:04o})", f"chmod go-w {path}"
    )
    assert result.code == 3
    assert snapshot(state2) == before
    assert os.stat(path).st_mode & 0o7777 == mode


def test_discover_refuses_a_group_writable_state(
    state2: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KCM_ALLOW_SHARED_STATE", raising=False)
    assert discover.dataplane_count(state2) == 1
    os.chmod(os.path.join(state2, "pools/dataplane"), 0o775)
    with pytest.raises(StateError, match="pools/dataplane is group-writable"):
        discover.dataplane_count(state2)


def test_kcm_allow_shared_state_accepts_a_group_writable_state(state2: str) -> None:
    for path in walk(state2):
        os.chmod(path, os.stat(path).st_mode | 0o020)
    for command in COMMANDS:
        result = kcm_on(state2, command, KCM_ALLOW_SHARED_STATE="1")
        assert result.code == 0, (command, result.err)
    assert tree(state2)["infra/0"] == []


# -- owned by someone else -----------------------------------------------------------------


@ROOT_ONLY
@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("entry", ["", "lock", "pools/infra", "pools/infra/0/tasks"])
def test_an_entry_another_user_owns_is_refused_by_writers(
    state2: str, command: str, entry: str
) -> None:
    path = os.path.join(state2, entry) if entry else state2
    os.chown(path, OTHER_UID, -1)
    before = snapshot(state2)
    result = kcm_on(state2, command)
    assert_one_error_line(result, f"{path} is owned by uid {OTHER_UID}, not by root")
    assert result.code == 3
    assert snapshot(state2) == before


@ROOT_ONLY
def test_readers_and_the_escape_hatch_accept_another_owner(state2: str) -> None:
    for path in walk(state2):
        os.chown(path, OTHER_UID, OTHER_UID)
    assert kcm_on(state2, "describe").code == 0
    result = kcm_on(state2, "isolate", KCM_ALLOW_SHARED_STATE="1")
    assert result.code == 0, result.err


# -- readers and writers without root -----------------------------------------------------

NOBODY = 65534


@pytest.fixture
def world_readable_state(sys2: str) -> Iterator[str]:
    """A state made by root where user nobody can reach it (pytest's tmp_path is 0700)."""
    parent = tempfile.mkdtemp(prefix="kcm-security-")
    os.chmod(parent, 0o755)
    conf = os.path.join(parent, "kcm")
    result = run_init(conf, sys2, 0o022)
    assert result.returncode == 0, result.stderr
    try:
        yield conf
    finally:
        shutil.rmtree(parent)


def kcm_as_nobody(conf: str, command: str) -> Result:
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    if subprocess.run([*setpriv, KCM, "--version"], capture_output=True).returncode != 0:
        pytest.skip("user nobody cannot run this kcm (its Python lies under a private home)")
    name, *rest = COMMANDS[command]
    proc = subprocess.run(
        [*setpriv, KCM, name, f"--conf-dir={conf}", *rest],
        env=kcm_env(KCM_PROC_FS="/proc"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(proc)


@ROOT_ONLY
def test_a_user_may_read_roots_state_but_not_write_it(world_readable_state: str) -> None:
    conf = world_readable_state
    before = snapshot(conf)
    assert kcm_as_nobody(conf, "describe").out == kcm_on(conf, "describe").out
    result = kcm_as_nobody(conf, "isolate")
    assert_one_error_line(result, f"cannot open {conf}/lock for writing: Permission denied")
    assert result.code == 3
    # A lock only root may open (against a user holding it to stall kcm) stops readers
    # cleanly too.
    os.chmod(os.path.join(conf, "lock"), 0o600)
    result = kcm_as_nobody(conf, "describe")
    assert_one_error_line(result, f"cannot open {conf}/lock: Permission denied")
    assert result.code == 3
    os.chmod(os.path.join(conf, "lock"), 0o644)
    assert snapshot(conf) == before


# -- what init creates ---------------------------------------------------------------------


def run_init(conf: str, sys_root: str, umask: int, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KCM, "init", f"--conf-dir={conf}", "--num-dp-cores=1", "--num-cp-cores=0", *flags],
        env=kcm_env(KCM_SYS_FS=sys_root),
        capture_output=True,
        text=True,
        umask=umask,
        timeout=60,
    )


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o077])
@pytest.mark.parametrize("where", ["beside", "inside"])
def test_init_gives_exact_modes_whatever_the_umask(tmp_path: Path, umask: int, where: str) -> None:
    sys_root = build_sysfs(str(tmp_path / "sys"), NO_HT_2)
    conf = str(tmp_path / "new" / "parents" / "kcm")
    if where == "inside":
        os.makedirs(conf)
    result = run_init(conf, sys_root, umask)
    assert result.returncode == 0, result.stderr
    modes = {os.path.relpath(p, conf): os.lstat(p).st_mode & 0o7777 for p in walk(conf)}
    if where == "inside":
        del modes["."]  # the operator's directory, vetted rather than changed
    assert {p for p, m in modes.items() if m != 0o644} == {
        *({"."} if where == "beside" else set()),
        "pools",
        "pools/controlplane",
        "pools/dataplane",
        "pools/dataplane/1",
        "pools/infra",
        "pools/infra/0",
    }
    assert {m for p, m in modes.items() if m != 0o644} == {0o755}
    assert {p for p, m in modes.items() if m == 0o644} == {
        "lock",
        "pools/controlplane/exclusive",
        "pools/dataplane/exclusive",
        "pools/dataplane/1/tasks",
        "pools/infra/exclusive",
        "pools/infra/0/tasks",
    }
    if where == "beside":  # the parents init made: never writable by others
        for parent in (tmp_path / "new", tmp_path / "new" / "parents"):
            assert not parent.stat().st_mode & 0o022, oct(parent.stat().st_mode)
    # and the state is one every command accepts
    assert kcm_on(conf, "isolate").code == 0


@pytest.mark.parametrize("keep", [(), ("--keep-existing",)])
def test_init_refuses_an_existing_directory_others_can_write(
    tmp_path: Path, sys2: str, keep: tuple[str, ...]
) -> None:
    conf = tmp_path / "kcm"
    conf.mkdir()
    conf.chmod(0o777)
    result = run_init(str(conf), sys2, 0o022, *keep)
    assert result.returncode == 3
    assert result.stderr == (
        f"kcm: error: {conf} is group- and world-writable (mode 0777): whoever can write"
        f" kcm's state steers it; run chmod go-w {conf}, or set KCM_ALLOW_SHARED_STATE=1 to"
        " trust a shared state\n"
    )
    assert os.listdir(conf) == []
    assert conf.stat().st_mode & 0o7777 == 0o777


def test_init_refuses_a_leftover_lock_others_can_write(tmp_path: Path, sys2: str) -> None:
    conf = tmp_path / "kcm"
    conf.mkdir()
    (conf / "lock").touch()  # an empty lock, as a killed init leaves it
    (conf / "lock").chmod(0o666)
    result = run_init(str(conf), sys2, 0o022)
    assert result.returncode == 3
    assert f"{conf}/lock is group- and world-writable" in result.stderr
    assert os.listdir(conf) == ["lock"]


@ROOT_ONLY
def test_init_refuses_an_existing_directory_another_user_owns(tmp_path: Path, sys2: str) -> None:
    conf = tmp_path / "kcm"
    conf.mkdir()
    os.chown(conf, OTHER_UID, -1)
    result = run_init(str(conf), sys2, 0o022)
    assert result.returncode == 3
    assert f"{conf} is owned by uid {OTHER_UID}, not by root" in result.stderr
    assert os.listdir(conf) == []


# -- names never become paths --------------------------------------------------------------


@pytest.mark.parametrize("pool", ["..", "../infra", "a/b", "/etc", ".hidden", "x\ny", "."])
def test_pool_names_are_refused_before_any_path_is_built(tmp_path: Path, pool: str) -> None:
    # No state directory at all: the name is refused before kcm looks for one.
    missing = tmp_path / "no-state"
    result = run_kcm(
        "isolate",
        f"--conf-dir={missing}",
        f"--pool={pool}",
        "true",
        env=kcm_env(KCM_PROC_FS="/proc"),
    )
    assert_one_error_line(result, "invalid pool name")
    assert result.code == 2
    assert not missing.exists()


# -- symlinks --------------------------------------------------------------------------------

# Each entry of state2 replaced by a symlink to a copy of it outside the state.
PLANTED = {
    "pool dir": "pools/infra",
    "list dir": "pools/infra/0",
    "tasks": "pools/infra/0/tasks",
    "exclusive": "pools/infra/exclusive",
    "lock": "lock",
}


@pytest.mark.parametrize("command", ["isolate", "reconcile", "describe"])
@pytest.mark.parametrize("entry", PLANTED.values(), ids=PLANTED.keys())
def test_a_planted_symlink_is_refused_and_not_followed(
    state2: str, tmp_path: Path, command: str, entry: str
) -> None:
    path = os.path.join(state2, entry)
    target = str(tmp_path / "target")
    if os.path.isdir(path):
        shutil.copytree(path, target)
        shutil.rmtree(path)
    else:
        shutil.copy(path, target)
        os.unlink(path)
    os.symlink(target, path)
    before, target_before = snapshot(state2), snapshot(str(tmp_path / "target"))
    result = kcm_on(state2, command)
    assert_one_error_line(result, path, "symlink")
    assert result.code == 3
    assert snapshot(state2) == before
    assert snapshot(str(tmp_path / "target")) == target_before


def test_a_symlinked_owner_record_is_refused_by_reconcile(state2: str, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("1\n")
    record = os.path.join(state2, "pools/infra/0/.owner-1")
    os.symlink(target, record)
    Path(state2, "pools/infra/0/tasks").write_text("1")
    before = snapshot(state2)
    result = kcm_on(state2, "reconcile")
    assert_one_error_line(result, record, "symlink")
    assert snapshot(state2) == before
    assert target.read_text() == "1\n"


def test_the_state_directory_itself_may_be_a_symlink(state2: str, tmp_path: Path) -> None:
    # The path is the operator's choice (say /etc/kcm -> /var/lib/kcm); only what lies
    # inside the state is refused as a symlink.
    link = tmp_path / "link"
    link.symlink_to(state2)
    assert kcm_on(str(link), "isolate").code == 0


def test_a_fifo_as_the_lock_is_refused_without_hanging(state2: str) -> None:
    lock = os.path.join(state2, "lock")
    os.unlink(lock)
    os.mkfifo(lock)
    for command in ("isolate", "describe"):
        started = time.monotonic()
        result = kcm_on(state2, command)
        assert_one_error_line(result, f"{lock} is not a regular file")
        assert time.monotonic() - started < 5


# -- sizes ---------------------------------------------------------------------------------


def test_a_huge_tasks_file_is_refused_unread(state2: str) -> None:
    tasks = os.path.join(state2, "pools/infra/0/tasks")
    os.truncate(tasks, 1 << 34)  # sparse: 16 GiB that kcm must not try to read
    before = snapshot_sizes(state2)
    started = time.monotonic()
    result = kcm_on(state2, "isolate")
    assert_one_error_line(result, f"{tasks} is over the 1048576 byte limit")
    assert time.monotonic() - started < 5
    assert snapshot_sizes(state2) == before


def snapshot_sizes(root: str) -> dict[str, tuple[int, int]]:
    """Mode and size of every entry (``snapshot`` would read the sparse terabyte)."""
    return {p: (os.lstat(p).st_mode, os.lstat(p).st_size) for p in walk(root)}


# -- arguments are never re-parsed by a shell ----------------------------------------------


def test_shell_syntax_in_args_arrives_verbatim_and_never_runs(state2: str, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    args = [
        f"$(touch {mark}1)",
        f"`touch {mark}2`",
        f"; touch {mark}3",
        f"' ; touch {mark}4 ; '",
        f'" ; touch {mark}5 ; "',
        f"\ntouch {mark}6\n",
        f"&& touch {mark}7 | cat > {mark}8",
    ]
    result = run_kcm(
        "isolate",
        f"--conf-dir={state2}",
        "--pool=infra",
        "printf",
        "--",
        "[%s]",
        *args,
        env=kcm_env(KCM_PROC_FS="/proc"),
    )
    assert result.code == 0, result.err
    assert result.out == "".join(f"[{a}]" for a in args)
    assert not [p for p in os.listdir(tmp_path) if p.startswith("ran")]


# -- a procfs of another PID namespace -------------------------------------------------------

NEEDS_UNSHARE = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="unshare -p needs root"
)


def in_pid_namespace(*argv: str, **extra: str) -> Result:
    """``kcm <argv>`` as PID 1 of a new PID namespace with its own /proc, as a container."""
    proc = subprocess.run(
        ["unshare", "--fork", "--pid", "--mount-proc", KCM, *argv],
        env=kcm_env(KCM_PROC_FS="/proc", **extra),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    return Result(proc)


@NEEDS_UNSHARE
def test_isolate_in_a_pid_namespace_is_refused(state2: str, tmp_path: Path) -> None:
    # Found by outside testing: under unshare -fp --mount-proc, isolate recorded PID 1, which
    # on the host is init; another kcm could then not tell the booking's holder.
    ran = tmp_path / "ran"
    before = snapshot(state2)
    result = in_pid_namespace("isolate", f"--conf-dir={state2}", "--pool=dataplane", f"touch {ran}")
    assert_one_error_line(
        result, "the procfs /proc is not the host's PID namespace", "KCM_ALLOW_PID_NAMESPACE=1"
    )
    assert result.code == 6
    assert not ran.exists()
    assert snapshot(state2) == before


@NEEDS_UNSHARE
def test_reconcile_in_a_pid_namespace_is_refused_and_frees_no_live_task(state2: str) -> None:
    # The reverse: the host's live task is invisible in the namespace's /proc, and reconcile
    # there freed its list for a second isolate to book.
    task = subprocess.Popen(["sleep", "60"])
    try:
        Path(state2, "pools/dataplane/1/tasks").write_text(str(task.pid))
        before = snapshot(state2)
        result = in_pid_namespace("reconcile", f"--conf-dir={state2}")
        assert_one_error_line(result, "not the host's PID namespace")
        assert result.code == 6
        assert snapshot(state2) == before
    finally:
        task.kill()
        task.wait()


@NEEDS_UNSHARE
def test_the_opt_out_lets_a_namespace_through(state2: str) -> None:
    # What the check keeps from happening, on request: the namespace's PID 1 is recorded.
    result = in_pid_namespace(
        "isolate",
        f"--conf-dir={state2}",
        "--pool=dataplane",
        f"cat {state2}/pools/dataplane/1/tasks",
        KCM_ALLOW_PID_NAMESPACE="1",
    )
    assert (result.code, result.out, result.err) == (0, "1", "")
    assert tree(state2)["dataplane/1"] == []


@pytest.mark.parametrize(
    ("stats", "allowed"),
    [
        ({}, True),  # the fixture's PID 2 is kthreadd, parent 0: the host
        ({2: None}, False),  # no stat: not the host's
        ({2: stat_line(2, comm="sh", ppid=1)}, False),  # a namespace's second process
        ({2: stat_line(2, comm="bash", ppid=0)}, False),  # entered from outside (nsenter)
    ],
    ids=["kthreadd", "no-stat", "namespace-process", "entered-process"],
)
def test_reconcile_checks_pid_2_of_the_procfs(
    state2: str, tmp_path: Path, stats: dict[int, str | None], allowed: bool
) -> None:
    proc = build_procfs(str(tmp_path / "proc"), {})
    for pid, text in stats.items():
        os.unlink(f"{proc}/{pid}/stat")
        if text is not None:
            Path(proc, str(pid), "stat").write_text(text)
    result = run_kcm("reconcile", f"--conf-dir={state2}", env=kcm_env(KCM_PROC_FS=proc))
    if allowed:
        assert (result.code, result.err) == (0, ""), result.err
    else:
        assert_one_error_line(result, f"the procfs {proc} is not the host's PID namespace")
        assert result.code == 6


def test_a_procfs_without_pid_2_is_refused_unless_allowed(state2: str, tmp_path: Path) -> None:
    proc = build_procfs(str(tmp_path / "proc"), {}, host=False)
    result = run_kcm("reconcile", f"--conf-dir={state2}", env=kcm_env(KCM_PROC_FS=proc))
    assert_one_error_line(result, f"{proc}/2 is not the kernel thread kthreadd: it does not exist")
    allowed = run_kcm(
        "reconcile",
        f"--conf-dir={state2}",
        env=kcm_env(KCM_PROC_FS=proc, KCM_ALLOW_PID_NAMESPACE="1"),
    )
    assert (allowed.code, allowed.err) == (0, "")
