"""kcm isolate and reconcile holding each booking in a cgroup of its own, on real kernels.

cgroup v1 runs on this host (root, the v1 cpuset at /sys/fs/cgroup/cpuset); cgroup v2 runs the
same tests inside the project's guest kernel (tests/guest, ``@pytest.mark.guest("v2")``). Each
test books under a ``KCM_CGROUP_PARENT`` of its own, and its finalizer kills what the test left
there (only the test's own processes can be in it) and removes every level, also on failure.
The fallback without a cgroup (``KCM_CGROUP_FS`` at an empty directory) runs here too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.host import cgroups
from tests.conftest import KCM, Result, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.cgroups import read, real_cpuset, remove_parent, unique_parent
from tests.fixtures.state import tree
from tests.fixtures.sysfs import NO_HT_2, build_sysfs

pytestmark = pytest.mark.root


class Host:
    """A state of two lists (dataplane ``1`` exclusive, infra ``0`` shared) and the cgroup
    backend its bookings go to, under a parent of the test's own."""

    def __init__(self, tmp: Path, parent: str, cgroup_fs: str | None = None) -> None:
        sys_root = build_sysfs(str(tmp / "sys"), NO_HT_2)
        self.conf = str(tmp / "kcm")
        init = run_kcm(
            "init",
            f"--conf-dir={self.conf}",
            "--num-dp-cores=1",
            "--num-cp-cores=0",
            env=kcm_env(KCM_SYS_FS=sys_root),
        )
        assert init.code == 0, init.err
        self.parent = parent
        extra = {} if cgroup_fs is None else {"KCM_CGROUP_FS": cgroup_fs}
        self.env = kcm_env(KCM_PROC_FS="/proc", KCM_CGROUP_PARENT=parent, **extra)
        detected = cgroups.detect(self.conf, parent=parent, root=cgroup_fs)
        self.backend = detected if isinstance(detected, cgroups.Backend) else None
        self.procs: list[subprocess.Popen[str]] = []
        self.outputs: dict[int, str] = {}

    def kcm(self, *args: str) -> Result:
        return run_kcm(*args, f"--conf-dir={self.conf}", env=self.env)

    def isolate(self, pool: str, command: str, **extra: str) -> Result:
        """Run kcm isolate to its end; its output through files, which leftovers of the
        command may keep open without holding the wait up (as on a terminal)."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(
                [KCM, "isolate", f"--conf-dir={self.conf}", f"--pool={pool}", command],
                env={**self.env, **extra},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
                timeout=60,
            )
            out.seek(0)
            err.seek(0)
            return Result(
                subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
            )

    def start(self, pool: str, command: str) -> subprocess.Popen[str]:
        """Start kcm isolate; its output goes to a file beside the state (see ``output``)."""
        with tempfile.NamedTemporaryFile("w", prefix=f"{self.conf}.", delete=False) as out:
            proc = subprocess.Popen(
                [KCM, "isolate", f"--conf-dir={self.conf}", f"--pool={pool}", command],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.procs.append(proc)
        self.outputs[proc.pid] = out.name
        return proc

    def output(self, proc: subprocess.Popen[str]) -> str:
        """What a started isolate (and its command) wrote, once it has exited."""
        proc.wait(30)
        return Path(self.outputs[proc.pid]).read_text()

    def reconcile(self) -> tuple[Result, dict[str, object]]:
        result = self.kcm("reconcile")
        return result, json.loads(result.out) if result.out else {}

    def bookings(self, pool: str, cpu_list: str) -> list[cgroups.Booking]:
        assert self.backend is not None
        return self.backend.bookings(pool, cpu_list)

    def path(self, booking: cgroups.Booking) -> str:
        assert self.backend is not None
        return self.backend.path(booking)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(params=["v1", pytest.param("v2", marks=pytest.mark.guest("v2"))])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    if real_cpuset(request.param) is None:
        pytest.skip(f"no writable cgroup {request.param} cpuset hierarchy here (root needed)")
    parent = unique_parent()
    made = Host(tmp_path, parent)
    try:
        yield made
    finally:
        made.close()
        remove_parent(parent)


def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or gone while it was read
        return False
    return state != "Z"


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # reaped since it was found
        return
    wait_for(lambda: not alive(pid))


def cgroup_line(text: str, kind: str) -> str:
    path = cgroups.parse_proc_cgroup(text, kind)
    assert path is not None, text
    return path


LEFTOVERS = {"background": "sleep 300 &", "setsid": "setsid sleep 300 &"}


def test_the_command_and_its_children_run_in_a_booking_of_their_own(host: Host) -> None:
    assert host.backend is not None
    probe = (
        "cat /proc/self/cgroup; (grep Cpus_allowed_list /proc/self/status; cat /proc/self/cgroup)"
    )
    proc = host.start("dataplane", f"echo $PPID; {probe}")
    out = host.output(proc)
    assert proc.returncode == 0, out
    kcm_pid = proc.pid
    lines = out.splitlines()
    assert int(lines[0]) == kcm_pid  # the sub-shell's parent is kcm
    booking = cgroups.Booking("dataplane", "1", kcm_pid, 0)
    want = f"/{host.parent}/{host.backend.state_id}/dataplane/1/{kcm_pid}-"
    shell_cgroup = cgroup_line("\n".join(lines[1:]), host.backend.kind)
    assert shell_cgroup.startswith(want), shell_cgroup
    child = "\n".join(lines[1:])
    assert "Cpus_allowed_list:\t1" in child
    # The subshell's own cgroup line is the same booking: children inherit it.
    assert child.count(shell_cgroup) == 2
    # Released and removed: the tasks file is empty, no record, no booking cgroup left.
    assert tree(host.conf)["dataplane/1"] == []
    assert os.listdir(Path(host.conf, "pools/dataplane/1")) == ["tasks"]
    assert host.bookings("dataplane", "1") == []
    del booking


def test_each_booking_of_a_shared_pool_gets_a_cgroup_of_its_own(host: Host, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = host.start("infra", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    b = host.start("infra", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    wait_for(lambda: sorted(tree(host.conf)["infra/0"]) == sorted([a.pid, b.pid]))
    wait_for(lambda: len(host.bookings("infra", "0")) == 2)
    assert sorted(bk.pid for bk in host.bookings("infra", "0")) == sorted([a.pid, b.pid])
    for bk in host.bookings("infra", "0"):
        assert host.backend is not None
        wait_for(lambda bk=bk: host.backend.pids(host.path(bk)) != [])  # type: ignore[union-attr]
        assert read(f"{host.path(bk)}/cpuset.cpus").strip() == "0"
    gate.touch()
    assert a.wait(30) == 0 and b.wait(30) == 0
    assert host.bookings("infra", "0") == []


def test_taskset_cannot_widen_a_dataplane_booking(host: Host) -> None:
    result = host.isolate(
        "dataplane", 'taskset -pc 0 $$; echo "status $?"; grep Cpus_allowed_list /proc/self/status'
    )
    assert result.code == 0, result.err
    assert "status 0" not in result.out, result.out
    assert "Invalid argument" in result.err, result.err
    assert "Cpus_allowed_list:\t1" in result.out


@pytest.mark.parametrize("command", LEFTOVERS.values(), ids=LEFTOVERS.keys())
def test_a_command_that_leaves_processes_behind_keeps_the_list_booked(
    host: Host, command: str
) -> None:
    began = time.monotonic()
    result = host.isolate("dataplane", f"{command} exit 3")
    assert (result.code, result.err) == (3, "")  # the command's status, at once
    assert time.monotonic() - began < 30
    # The tasks file names the leftover, a live process of the booking, with its record.
    (heir,) = tree(host.conf)["dataplane/1"]  # type: ignore[misc]
    assert alive(heir)
    (booking,) = host.bookings("dataplane", "1")
    assert booking.pid != heir  # kcm made the booking and is gone
    assert host.backend is not None
    assert host.backend.pids(host.path(booking)) == [heir]
    record = Path(host.conf, f"pools/dataplane/1/.heir-{heir}").read_text()
    assert record == f"{start_time(heir)} {booking.name}\n"
    # describe and the seed's readers see the list taken; the next isolate is refused.
    refused = host.isolate("dataplane", "echo ran")
    assert_one_error_line(refused, "no free CPU list", "left behind")
    assert refused.code == 4
    assert refused.out == ""
    kill(heir)
    # The next isolate, not a reconcile, finds the list free, and the gone booking removed.
    again = host.isolate("dataplane", "echo ran")
    assert (again.code, again.out, again.err) == (0, "ran\n", "")
    assert host.bookings("dataplane", "1") == []
    assert os.listdir(Path(host.conf, "pools/dataplane/1")) == ["tasks"]


def test_after_kill_9_of_isolate_the_orphan_holds_the_list_until_it_exits(host: Host) -> None:
    holder = host.start("dataplane", "exec sleep 300")
    wait_for(lambda: tree(host.conf)["dataplane/1"] == [holder.pid])
    (booking,) = host.bookings("dataplane", "1")
    assert host.backend is not None
    wait_for(lambda: len(host.backend.pids(host.path(booking))) == 2)  # type: ignore[union-attr]
    holder.kill()
    holder.wait()
    (orphan,) = host.backend.pids(host.path(booking))
    assert alive(orphan)
    # No reconcile in between: the next isolate is refused while the orphan lives, and hands
    # the list over to it on the way (the tasks file named the dead kcm).
    refused = host.isolate("dataplane", "echo ran")
    assert refused.code == 4, refused.err
    assert_one_error_line(refused, "no free CPU list")
    assert tree(host.conf)["dataplane/1"] == [orphan]
    assert Path(host.conf, f"pools/dataplane/1/.heir-{orphan}").read_text() == (
        f"{start_time(orphan)} {booking.name}\n"
    )
    kill(orphan)
    again = host.isolate("dataplane", "echo ran")
    assert (again.code, again.out) == (0, "ran\n"), again.err
    assert tree(host.conf)["dataplane/1"] == []
    assert host.bookings("dataplane", "1") == []


def test_reconcile_hands_over_keeps_a_live_booking_and_cleans_a_gone_one(host: Host) -> None:
    holder = host.start("dataplane", "exec sleep 300")
    wait_for(lambda: tree(host.conf)["dataplane/1"] == [holder.pid])
    (booking,) = host.bookings("dataplane", "1")
    assert host.backend is not None
    wait_for(lambda: len(host.backend.pids(host.path(booking))) == 2)  # type: ignore[union-attr]
    holder.kill()
    holder.wait()
    (orphan,) = host.backend.pids(host.path(booking))
    result, report = host.reconcile()
    assert result.code == 0, result.err
    assert report["handedOverCpuLists"] == [
        {"booking": booking.name, "cpus": "1", "pid": orphan, "pool": "dataplane"}
    ]
    assert report["reclaimedCpuLists"] == [{"cpus": "1", "pids": [holder.pid], "pool": "dataplane"}]
    assert f"kcm reconcile: handed dataplane/1 over to PID {orphan}" in result.err
    assert tree(host.conf)["dataplane/1"] == [orphan]
    # A second pass changes nothing, and never removes the live booking.
    result, report = host.reconcile()
    assert (result.code, report["removedCgroups"], report["handedOverCpuLists"]) == (0, [], [])
    assert os.path.isdir(host.path(booking))
    kill(orphan)
    result, report = host.reconcile()
    assert result.code == 0, result.err
    assert report["removedCgroups"] == [host.path(booking)]
    assert tree(host.conf)["dataplane/1"] == []
    assert os.listdir(Path(host.conf, "pools/dataplane/1")) == ["tasks"]
    # The levels above the booking are empty now and gone too; only the parent stays.
    assert not os.path.exists(host.backend.subtree)
    assert os.path.isdir(f"{host.backend.hierarchy}/{host.parent}")


def test_reconcile_removes_an_empty_dead_booking_and_reports_what_it_cannot_account_for(
    host: Host, tmp_path: Path
) -> None:
    assert host.backend is not None
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = cgroups.Booking("dataplane", "1", gone.pid, 12345)  # a kcm killed before entering
    host.backend.create(dead)
    # A booking of a list the state does not have, holding a process.
    stray = cgroups.Booking("nosuch", "0", os.getpid(), start_time(os.getpid()))
    host.backend.create(stray)
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        Path(host.path(stray), host.backend.MOVE_FILE).write_text(str(sleeper.pid))
        result, report = host.reconcile()
        assert result.code == 1
        assert report["removedCgroups"] == [host.path(dead)]
        assert not os.path.exists(host.path(dead))
        assert report["unaccountedCgroups"] == [
            {
                "path": host.path(stray),
                "pids": [sleeper.pid],
                "why": "a booking of a CPU list the state does not have",
            }
        ]
        assert result.err.splitlines() == [
            f"kcm reconcile: removed the empty booking cgroup {host.path(dead)}",
            f"kcm: unaccounted cgroup: {host.path(stray)} (a booking of a CPU list the state"
            f" does not have) holds {sleeper.pid}",
        ]
        assert os.path.isdir(host.path(stray))  # never removed while it holds a process
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reconcile_reports_a_process_of_a_booking_that_may_run_outside_its_list(
    host: Host,
) -> None:
    assert host.backend is not None
    result = host.isolate("dataplane", "sleep 300 &")
    assert result.code == 0, result.err
    (heir,) = tree(host.conf)["dataplane/1"]  # type: ignore[misc]
    (booking,) = host.bookings("dataplane", "1")
    # Root widens the booking's cpuset, and the leftover its own affinity.
    list_level = host.backend.list_path("dataplane", "1")
    if host.backend.kind == "v1":
        Path(list_level, "cpuset.cpus").write_text("0-1")
    Path(host.path(booking), "cpuset.cpus").write_text("0-1")
    os.sched_setaffinity(heir, {0, 1})
    result, report = host.reconcile()
    assert result.code == 1
    assert report["processesOutsideTheirList"] == [
        {"allowed": "0-1", "booking": booking.name, "cpus": "1", "pid": heir, "pool": "dataplane"}
    ]
    assert (
        f"kcm: outside its list: pid {heir} of booking dataplane/1/{booking.name} may run on"
        " CPUs 0-1, outside 1"
    ) in result.err.splitlines()


def test_describe_table_and_metrics_show_a_list_held_by_leftovers(host: Host) -> None:
    result = host.isolate("dataplane", "sleep 300 &")
    assert result.code == 0, result.err
    (heir,) = tree(host.conf)["dataplane/1"]  # type: ignore[misc]
    table = host.kcm("describe", "-o", "table")
    assert table.code == 0, table.err
    row = next(line for line in table.out.splitlines() if line.startswith("dataplane"))
    assert row.split()[4:8] == ["held", "by", "leftovers", str(heir)], row
    described = host.kcm("describe")
    assert json.loads(described.out)["pools"]["dataplane"]["cpuLists"]["1"]["tasks"] == [heir]
    metrics = host.kcm("metrics")
    assert metrics.code == 0, metrics.err
    assert 'kcm_pool_cpu_lists_held_by_leftovers{pool="dataplane"} 1.0' in metrics.out
    assert 'kcm_pool_cpu_lists_held{pool="dataplane"} 1.0' in metrics.out
    assert (
        'kcm_cpu_list_state{cpus="1",pool="dataplane",state="held_by_leftovers"} 1.0' in metrics.out
    )


# -- kill -9 at every instant ------------------------------------------------------------------

# The system calls of kcm isolate that change something, each a point to kill it at: the cgroup
# levels and the booking (mkdir), every cgroup and state file write and the move (write), the
# tasks file (renameat, fsync), the spawn (clone3, vfork), the wait for the command, the release
# and the removal (unlinkat, rmdir).
KILL_POINTS = (
    "mkdir",
    "write",
    "renameat",
    "fsync",
    "clone3",
    "vfork",
    "waitid",
    "unlinkat",
    "rmdir",
)
# In the guest (cgroup v2 under TCG, ~10 times slower) the points up to the wait and the move
# back out of the booking: the levels, the cgroup writes, the move in, the state file's write,
# the spawn; what follows (release, removal) is the same code on both, killed at here on v1.
KILL_POINTS_V2 = ("mkdir", "write", "clone3", "vfork", "waitid")
MARK = "KCM_TEST_KILL_MARK"


def marked(mark: str) -> list[int]:
    """Live processes whose environment carries ``MARK=mark``: what one trial started."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                env = Path(f"/proc/{name}/environ").read_bytes()
            except OSError:
                continue
            if needle in env.split(b"\0") and alive(int(name)):
                found.append(int(name))
    return found


def traced_calls(
    host: Host, argv: list[str], env: dict[str, str], names: tuple[str, ...]
) -> list[str]:
    """The system calls of ``names`` that one run of ``argv`` (kcm alone) makes, in order."""
    trace = Path(host.conf).parent / "trace"
    done = subprocess.run(
        ["strace", "-qq", "-o", str(trace), "-e", f"trace={','.join(names)}", *argv],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = [line.partition("(")[0] for line in trace.read_text().splitlines()]
    return [name for name in calls if name in names]


@pytest.mark.skipif(not os.path.exists("/usr/bin/strace"), reason="needs strace")
def test_kill_9_at_every_system_call_of_isolate_leaves_nothing_reconcile_cannot_clean(
    host: Host,
) -> None:
    assert host.backend is not None

    def argv(command: str) -> list[str]:
        return [KCM, "isolate", f"--conf-dir={host.conf}", "--pool=dataplane", command]

    points = KILL_POINTS_V2 if host.backend.kind == "v2" else KILL_POINTS
    calls = traced_calls(host, argv("true"), {**host.env, MARK: "count"}, points)
    counts = {name: calls.count(name) for name in points}
    assert counts["mkdir"] >= 1 and counts["waitid"] == 1, counts
    # Up to kcm's wait for the command, the command is one that outlives kcm (so a kill there
    # leaves it running, and holding the list); after it, one that has ended (kcm gets on).
    waited = calls.index("waitid")
    if host.backend.kind == "v2":
        calls = calls[: waited + 2]  # up to the move back out, the call after the wait
        counts = {name: calls.count(name) for name in points}
    trials = outcomes = 0
    seen: dict[str, int] = {}
    for name, count in counts.items():
        for n in range(1, count + 1):
            mark = f"{os.getpid()}-{name}-{n}"  # unique: another run may be killing too
            env = {**host.env, MARK: mark}
            at = [i for i, call in enumerate(calls) if call == name][n - 1]
            command = "sleep 60; true" if at <= waited else "true"
            inject = f"inject={name}:signal=KILL:when={n}"
            # No pipes: a pipe would hold the run up until the command closed it.
            injected = subprocess.run(
                ["strace", "-qq", "-o", "/dev/null", "-e", inject, *argv(command)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=120,
            )  # fmt: skip
            trials += 1
            # Whatever the instant, every process of the command is in a booking of the state.
            left = marked(mark)
            for pid in left:
                where = host.backend.booking_of("/proc", pid)
                assert where is not None and where.pool == "dataplane", (mark, pid, where)
            kind = "command running" if left else "nothing running"
            tasks = tree(host.conf)["dataplane/1"]
            kind += ", booked" if tasks else ", free"
            seen[kind] = seen.get(kind, 0) + 1
            if left and not seen.get("refused while it ran"):
                # Held while it lives: the next isolate is refused and hands the list over.
                seen["refused while it ran"] = 1
                refused = host.isolate("dataplane", "true")
                assert refused.code == 4, (mark, refused.err)
                (heir,) = tree(host.conf)["dataplane/1"]  # type: ignore[misc]
                assert heir in left, (mark, heir, left)
            # Kill until nothing of the trial lives: a shell found by the scan may have forked
            # its next command before its kill landed (in the booking too, so it is held).
            while left:
                for pid in left:
                    kill(pid)
                left = marked(mark)
            # One reconcile then cleans everything: no task, no record, no cgroup but the parent.
            result, report = host.reconcile()
            assert result.code == 0, (mark, result.err)
            assert tree(host.conf)["dataplane/1"] == [], (mark, injected.returncode)
            assert os.listdir(Path(host.conf, "pools/dataplane/1")) == ["tasks"], mark
            assert not os.path.exists(host.backend.subtree), (mark, report)
            outcomes += 1
    assert trials == outcomes == sum(counts.values())
    assert seen.get("command running, booked", 0) >= 1, seen  # killed after the spawn
    assert seen.get("nothing running, booked", 0) >= 1, seen  # killed after booking


# -- without a cgroup -------------------------------------------------------------------------


@pytest.fixture
def no_cgroup(tmp_path: Path) -> Iterator[Host]:
    empty = tmp_path / "no-cgroupfs"
    empty.mkdir()
    made = Host(tmp_path, unique_parent(), cgroup_fs=str(empty))
    assert made.backend is None
    try:
        yield made
    finally:
        made.close()


def test_without_a_cgroup_an_exclusive_pool_says_so_once_and_a_shared_one_not(
    no_cgroup: Host,
) -> None:
    result = no_cgroup.isolate("dataplane", "echo ran")
    assert (result.code, result.out) == (0, "ran\n")
    assert result.err.splitlines() == [
        f"kcm: warning: no cgroup holds this booking (no cgroup cpuset controller under"
        f" {no_cgroup.env['KCM_CGROUP_FS']} (neither {no_cgroup.env['KCM_CGROUP_FS']}/cpuset nor a"
        " cgroup v2 hierarchy with cpuset)): processes that leave the command's process group"
        " are not held"
    ]
    shared = no_cgroup.isolate("infra", "echo ran")
    assert (shared.code, shared.out, shared.err) == (0, "ran\n", "")


def test_without_a_cgroup_a_leftover_in_the_group_keeps_the_list_and_setsid_escapes(
    no_cgroup: Host,
) -> None:
    result = no_cgroup.isolate("dataplane", "sleep 300 &")
    assert result.code == 0, result.err
    (heir,) = tree(no_cgroup.conf)["dataplane/1"]  # type: ignore[misc]
    try:
        assert alive(heir)
        record = Path(no_cgroup.conf, f"pools/dataplane/1/.heir-{heir}").read_text().split()
        assert record[0] == str(start_time(heir))
        assert record[2] == str(os.getpgid(heir))  # the command's group, which holds it
        refused = no_cgroup.isolate("dataplane", "true")
        assert refused.code == 4
    finally:
        kill(heir)
    mark = f"setsid-{os.getpid()}"
    # The command waits until the sleep has made its own session (its group is then its PID):
    # a leftover still in the command's group when the command exits is held, as it should be.
    escape = (
        "setsid sleep 300 & p=$!;"
        ' while [ "$(ps -o pgid= -p $p | tr -d " ")" != "$p" ]; do sleep 0.01; done'
    )
    freed = no_cgroup.isolate("dataplane", escape, **{MARK: mark})
    assert freed.code == 0
    escaped = marked(mark)
    try:
        assert len(escaped) == 1, escaped
        assert cpus_of(escaped[0]) == "1"  # it runs on the list...
        assert tree(no_cgroup.conf)["dataplane/1"] == []  # ...and nothing holds the list
    finally:
        for pid in escaped:
            kill(pid)


def cpus_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return ""
