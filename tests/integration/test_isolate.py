"""kcm isolate with real processes on this machine's CPUs: pinning, bookkeeping, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kcm.host import cgroups
from tests.conftest import CGROUP_PARENT, KCM, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import snapshot, tree

PY = sys.executable


def env(**extra: str) -> dict[str, str]:
    return kcm_env(KCM_PROC_FS="/proc", **extra)


def isolate(conf: str, pool: str, command: str, *args: str, **extra: str):
    return run_kcm(
        "isolate", f"--conf-dir={conf}", f"--pool={pool}", command, "--", *args, env=env(**extra)
    )


def start(conf: str, pool: str, command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [KCM, "isolate", f"--conf-dir={conf}", f"--pool={pool}", command],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def booking_cgroup(conf: str, pool: str, cpu_list: str, pid: int) -> Path | None:
    """The booking cgroup kcm isolate ``pid`` made for ``pool``/``cpu_list``, if any."""
    backend = cgroups.detect(conf, parent=CGROUP_PARENT)
    if not isinstance(backend, cgroups.Backend):
        return None
    found = [b for b in backend.bookings(pool, cpu_list) if b.pid == pid]
    return Path(backend.path(found[0])) if found else None


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_args_reach_the_command_verbatim(state2: str) -> None:
    result = isolate(state2, "infra", "printf", "%s|", "a;b", "$HOME")
    assert result.code == 0, result.err
    assert result.out == "a;b|$HOME|"


def test_args_with_spaces_quotes_and_dashes(state2: str) -> None:
    result = isolate(state2, "infra", "printf", "[%s]", "two words", "it's", '"q"', "--", "-n", "")
    assert result.out == '[two words][it\'s]["q"][--][-n][]'


def test_shell_syntax_in_command(state2: str) -> None:
    result = isolate(state2, "infra", "echo one; echo two | tr a-z A-Z")
    assert result.out == "one\nTWO\n"


def test_child_is_pinned_and_told_its_cpus(state2: str) -> None:
    probe = (
        "import os; print(sorted(os.sched_getaffinity(0)), os.environ['KCM_CPUS_ASSIGNED'],"
        " os.environ['KCM_POOL'])"
    )
    result = isolate(state2, "dataplane", f'exec {PY} -c "{probe}"')
    assert result.code == 0, result.err
    assert result.out == "[1] 1 dataplane\n"
    result = isolate(state2, "infra", f'exec {PY} -c "{probe}"')
    assert result.out == "[0] 0 infra\n"


def test_cmk_proc_fs_alias(state2: str) -> None:
    result = run_kcm(
        "isolate",
        f"--conf-dir={state2}",
        "--pool=infra",
        "echo ok",
        env=kcm_env(CMK_PROC_FS="/proc"),
    )
    assert (result.code, result.out) == (0, "ok\n")


def test_exit_status_is_the_commands(state2: str) -> None:
    assert isolate(state2, "infra", "exit 7").code == 7
    assert isolate(state2, "infra", "kill -9 $$").code == 128 + 9
    missing = isolate(state2, "infra", "no-such-command-kcm")
    assert missing.code == 127
    assert tree(state2)["infra/0"] == []


def test_stdin_and_sigpipe_behave_like_a_shell(state2: str) -> None:
    proc = subprocess.run(
        [KCM, "isolate", f"--conf-dir={state2}", "--pool=infra", "cat"],
        input="piped\n",
        capture_output=True,
        text=True,
        env=env(),
        timeout=30,
    )
    assert proc.stdout == "piped\n"
    # Python ignores SIGPIPE; the command must get the default back or `yes` never ends.
    result = run_kcm(
        "isolate", f"--conf-dir={state2}", "--pool=infra", "yes | head -n 2", env=env(), timeout=20
    )
    assert (result.code, result.out) == (0, "y\ny\n")


def test_pid_is_booked_while_running_and_exclusive_pool_refuses(
    state2: str, tmp_path: Path
) -> None:
    holder = start(state2, "dataplane", "sleep 30")
    try:
        wait_for(lambda: tree(state2)["dataplane/1"] == [holder.pid])
        # Its start time is on record, so a reused PID can be told from it: in the name of
        # its booking's cgroup where there is one, else in an owner record.
        began = Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        booking = booking_cgroup(state2, "dataplane", "1", holder.pid)
        if booking is not None:
            assert booking.name == f"{holder.pid}-{began}"
            assert not Path(state2, f"pools/dataplane/1/.owner-{holder.pid}").exists()
        else:
            owner = Path(state2, f"pools/dataplane/1/.owner-{holder.pid}")
            assert owner.read_text().strip() == began
        marker = tmp_path / "ran"
        before = snapshot(state2)
        refused = isolate(state2, "dataplane", f"touch {marker}")
        assert_one_error_line(refused, "no free CPU list in exclusive pool 'dataplane'")
        assert refused.code == 4
        assert not marker.exists()
        assert snapshot(state2) == before
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(10)
    assert holder.returncode == 128 + signal.SIGTERM
    assert tree(state2)["dataplane/1"] == []
    assert not any(n.startswith(".") for n in os.listdir(Path(state2, "pools/dataplane/1")))


def test_shared_pool_takes_many_tasks(state2: str) -> None:
    a = start(state2, "infra", "sleep 30")
    b = start(state2, "infra", "sleep 30")
    try:
        wait_for(lambda: sorted(tree(state2)["infra/0"]) == sorted([a.pid, b.pid]))
    finally:
        for p in (a, b):
            p.terminate()
            p.wait(10)
    assert tree(state2)["infra/0"] == []


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_reach_the_whole_command_group(state2: str, tmp_path: Path, sig: int) -> None:
    pids = tmp_path / "pids"
    # The sub-shell waits on a grandchild: the signal must reach both, not only the shell.
    holder = start(state2, "infra", f"echo $$ > {pids}; sleep 60; echo survived")
    try:
        wait_for(lambda: pids.exists() and pids.read_text().strip().isdigit())
        shell_pid = int(pids.read_text())
        wait_for(lambda: len(_group_members(shell_pid)) == 2)  # the shell and its sleep
        holder.send_signal(sig)
        out, _ = holder.communicate(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 128 + sig
    assert "survived" not in out
    wait_for(lambda: _group_members(shell_pid) == [])
    assert tree(state2)["infra/0"] == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_command_that_ignores_sigterm_keeps_its_list_until_it_exits(
    state2: str, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    holder = start(state2, "dataplane", f"trap '' TERM; touch {ready}; sleep 1")
    wait_for(ready.exists)
    holder.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert tree(state2)["dataplane/1"] == [holder.pid]
    holder.wait(10)
    assert holder.returncode == 0
    assert tree(state2)["dataplane/1"] == []


def test_requires_proc_fs(state2: str) -> None:
    before = snapshot(state2)
    result = run_kcm("isolate", f"--conf-dir={state2}", "--pool=infra", "true", env=kcm_env())
    assert_one_error_line(result, "KCM_PROC_FS")
    assert result.code == 6
    assert snapshot(state2) == before


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ("nosuch", "no pool 'nosuch'"),
        ("../infra", "invalid pool name"),
        ("a/b", "invalid pool"),
        ("", "invalid pool name"),
    ],
)
def test_bad_pool(state2: str, pool: str, message: str) -> None:
    before = snapshot(state2)
    result = isolate(state2, pool, "true")
    assert_one_error_line(result, message)
    assert snapshot(state2) == before


def test_list_on_cpus_the_host_lacks(tmp_path: Path, state2: str) -> None:
    os.rename(Path(state2, "pools/dataplane/1"), Path(state2, "pools/dataplane/63"))
    before = snapshot(state2)
    result = isolate(state2, "dataplane", "true")
    assert_one_error_line(result, "cannot pin to CPUs 63")
    assert result.code == 6
    assert snapshot(state2) == before


def test_lock_timeout(state2: str, tmp_path: Path) -> None:
    import fcntl

    fd = os.open(Path(state2, "lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        before = snapshot(state2)
        started = time.monotonic()
        result = isolate(state2, "infra", "true", KCM_LOCK_TIMEOUT="0.3")
        elapsed = time.monotonic() - started
    finally:
        os.close(fd)
    assert_one_error_line(result, "could not lock", "0.3s")
    assert result.code == 5
    assert 0.3 <= elapsed < 5
    assert snapshot(state2) == before


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf"])
def test_bad_lock_timeout(state2: str, value: str) -> None:
    result = isolate(state2, "infra", "true", KCM_LOCK_TIMEOUT=value)
    assert_one_error_line(result, "KCM_LOCK_TIMEOUT")
    assert result.code == 2


def test_debug_shows_traceback(state2: str) -> None:
    result = run_kcm(
        "isolate", f"--conf-dir={state2}", "--pool=nosuch", "true", env=env(KCM_DEBUG="1")
    )
    assert result.code != 0
    assert "Traceback" in result.err


def test_interactive_command_gets_the_terminal(state2: str) -> None:
    import pty
    import select

    pid, master = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        os.environ.update(KCM_PROC_FS="/proc")
        os.execv(
            KCM,
            [
                KCM,
                "isolate",
                f"--conf-dir={state2}",
                "--pool=infra",
                "read line; echo got:$line; tty -s && echo on-tty",
            ],
        )
    output = b""
    os.write(master, b"hello\n")
    deadline = time.monotonic() + 15
    while b"on-tty" not in output and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                output += os.read(master, 1024)
            except OSError:
                break
    _, status = os.waitpid(pid, 0)
    assert b"got:hello" in output, output
    assert b"on-tty" in output
    assert os.waitstatus_to_exitcode(status) == 0
    assert tree(state2)["infra/0"] == []


def test_nohup_keeps_sighup_ignored(state2: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            "nohup",
            KCM,
            "isolate",
            f"--conf-dir={state2}",
            "--pool=infra",
            f"touch {ready}; sleep 0.5; echo lived",
        ],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    wait_for(ready.exists)
    holder.send_signal(signal.SIGHUP)
    out, _ = holder.communicate(timeout=10)
    assert (holder.returncode, out) == (0, "lived\n")


def test_a_release_that_cannot_lock_says_the_list_stays_booked(state2: str, tmp_path: Path) -> None:
    # A release that fails costs a line on stderr, never the command's status (issue 9).
    import fcntl

    started = tmp_path / "started"
    command = f"touch {started}; sleep 0.3; exit 4"
    proc = subprocess.Popen(
        [KCM, "isolate", f"--conf-dir={state2}", "--pool=dataplane", command],
        env=env(KCM_LOCK_TIMEOUT="0.1"),  # a release waits 10 times as long: 1 s
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    fd = os.open(Path(state2, "lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held while the command ends and kcm tries to release
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        os.close(fd)
    assert proc.returncode == 4
    assert len(err.splitlines()) == 1, err
    assert err.startswith("kcm: error: could not lock"), err
    assert "within 1s" in err
    assert f"CPU list 1 of pool 'dataplane' stays booked by the exited PID {proc.pid}" in err
    assert tree(state2)["dataplane/1"] == [proc.pid]
    assert run_kcm("reconcile", f"--conf-dir={state2}", env=env()).code == 0
    assert tree(state2)["dataplane/1"] == []


# -- compound commands -----------------------------------------------------------------------

COMPOUND = {
    "for": ("for i in a b; do echo $i; done", 0, "a\nb\n"),
    "if": ("if true; then echo yes; fi", 0, "yes\n"),
    "while": ("i=0; while [ $i -lt 2 ]; do echo $i; i=$((i+1)); done", 0, "0\n1\n"),
    "until": ("i=0; until [ $i -ge 1 ]; do echo $i; i=1; done", 0, "0\n"),
    "case": ("case x in x) echo matched;; esac", 0, "matched\n"),
    "group": ("{ echo a; echo b; } | tr a-z A-Z", 0, "A\nB\n"),
    "subshell": ("(echo sub; exit 3)", 3, "sub\n"),
    "pipeline": ("echo one | tr o 0", 0, "0ne\n"),
    "and-or": ("false && echo no || echo yes", 0, "yes\n"),
    "function": ("f() { echo fn $1; }; f x", 0, "fn x\n"),
    "lines": ("echo a\necho b", 0, "a\nb\n"),
    "background": ("echo bg &", 0, "bg\n"),
    "comment": ("echo kept # and a comment", 0, "kept\n"),
    "negation": ("! false", 0, ""),
}


@pytest.mark.parametrize(("command", "code", "out"), COMPOUND.values(), ids=COMPOUND.keys())
def test_every_shell_construct_works_in_the_command(
    state2: str, command: str, code: int, out: str
) -> None:
    # Found by outside testing: 'for ...; done' and 'if ...; fi' were syntax errors (exit 2),
    # since the sub-shell was given '<command> "$@"'. Without <args> it runs sh -c '<command>'.
    result = run_kcm(
        "isolate", f"--conf-dir={state2}", "--pool=infra", command, env=env(), timeout=20
    )
    assert (result.code, result.out, result.err) == (code, out, "")
    # 'echo bg &' may outlive its shell by a moment: then kcm hands the list over to it, and
    # the list is free once it has exited (a zombie runs nowhere), which the next isolate or
    # reconcile sees. No live process may hold it.
    from kcm.host import procfs

    held = tree(state2)["infra/0"]
    assert [pid for pid in held if procfs.liveness("/proc", pid)[0]] == []
    assert held == [] or command.endswith("&")


def test_args_are_words_after_the_command_never_parsed(state2: str) -> None:
    args = ["it's", '"q"', "$HOME", "a;b", "`x`", "\\n", "*"]
    result = isolate(state2, "infra", "set -f; printf '[%s]'", *args)
    assert (result.code, result.out) == (0, "".join(f"[{a}]" for a in args))


def test_args_after_a_compound_command_are_a_syntax_error(state2: str) -> None:
    # As in CMK, which appended the args to the command's text: words after 'done' are not
    # shell. README says so beside isolate.
    result = isolate(state2, "infra", "for i in a; do echo $i; done", "extra")
    assert result.code == 2
    assert result.out == ""
    assert "syntax error" in result.err or "unexpected" in result.err, result.err
    assert tree(state2)["infra/0"] == []


# -- CMK 1.x workloads -------------------------------------------------------------------------

CMK_WORKLOAD = """\
#!/bin/sh
# A CMK 1.x workload: its CPUs from CMK_CPUS_ASSIGNED, the procfs from CMK_PROC_FS.
set -eu
echo "cpus: $CMK_CPUS_ASSIGNED"
grep '^Cpus_allowed_list:' "$CMK_PROC_FS/self/status"
"""


def test_a_cmk_1_workload_reads_its_cpus_and_procfs_unchanged(state2: str, tmp_path: Path) -> None:
    script = tmp_path / "workload.sh"
    script.write_text(CMK_WORKLOAD)
    script.chmod(0o755)
    result = isolate(state2, "dataplane", str(script))
    assert (result.code, result.err) == (0, "")
    assert result.out == "cpus: 1\nCpus_allowed_list:\t1\n"


def test_cmk_proc_fs_is_the_procfs_kcm_uses(state2: str) -> None:
    result = run_kcm(
        "isolate",
        f"--conf-dir={state2}",
        "--pool=infra",
        'echo "$KCM_CPUS_ASSIGNED $CMK_CPUS_ASSIGNED $CMK_PROC_FS"',
        env=kcm_env(KCM_PROC_FS="/proc/", CMK_PROC_FS="/elsewhere"),
    )
    assert (result.code, result.out) == (0, "0 0 /proc/\n")


# -- signals after the command exited ---------------------------------------------------------


def _spawn_in_group_of(pid: int) -> subprocess.Popen[bytes] | None:
    """Start ``sleep`` as PID ``pid``, leading its own group, so group ``pid`` exists again
    (through ns_last_pid, root only); None if other forks kept taking the PID."""
    for _ in range(100):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="ns_last_pid needs root")
def test_a_signal_after_the_command_exited_reaches_no_one(state2: str, tmp_path: Path) -> None:
    # Found by outside testing: after reaping its command kcm kept forwarding to the command's
    # group id while it waited (up to 10 x KCM_LOCK_TIMEOUT) to release the list; once the
    # kernel reused that id, a SIGTERM to kcm killed an unrelated group. Here the id is
    # reused on purpose while the release waits for a lock the test holds.
    import fcntl

    shell_pid_file, go = tmp_path / "pid", tmp_path / "go"
    os.mkfifo(go)
    holder = subprocess.Popen(
        [
            KCM,
            "isolate",
            f"--conf-dir={state2}",
            "--pool=dataplane",
            f"echo $$ > {shell_pid_file}; read line < {go}; exit 3",  # builtins: no children
        ],
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    impostor: subprocess.Popen[bytes] | None = None
    lock = os.open(Path(state2, "lock"), os.O_RDWR)
    try:
        wait_for(lambda: shell_pid_file.exists() and shell_pid_file.read_text().endswith("\n"))
        shell_pid = int(shell_pid_file.read_text())
        assert tree(state2)["dataplane/1"] == [holder.pid]
        fcntl.flock(lock, fcntl.LOCK_EX)  # the release will wait for it
        with open(go, "w") as f:
            f.write("\n")
        wait_for(lambda: not Path(f"/proc/{shell_pid}").exists())  # exited and reaped
        impostor = _spawn_in_group_of(shell_pid)
        assert impostor is not None, "could not arrange the reuse of the group id"
        assert os.getpgid(impostor.pid) == shell_pid
        holder.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # kcm's handler runs at once: the flock wait is interrupted
        assert impostor.poll() is None, "kcm signalled a group that is no longer its command's"
        assert holder.poll() is None  # still waiting to release
    finally:
        os.close(lock)
        if impostor is not None:
            impostor.kill()
            impostor.wait()
    _, err = holder.communicate(timeout=30)
    assert (holder.returncode, err) == (3, "")  # the command's status, not 128+15
    assert tree(state2)["dataplane/1"] == []
