"""kcm metrics: Prometheus' text format printed, served over real HTTP, and written as a textfile.

Every scrape is parsed with prometheus_client's own parser; the values are checked against the
state tree on disk and the real /proc.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kcm import cpulist
from tests.conftest import KCM, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import build_state, snapshot, tree

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, sorted labels); each family must have HELP and TYPE lines."""
    samples: Samples = {}
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type != "unknown", f"{family.name} has no TYPE"
        # The exposition names a counter's family with its _total suffix.
        names = {family.name, f"{family.name}_total"}
        assert names & helped and names & typed, family.name
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or gone while it was read
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def expected_from_disk(conf: str) -> Samples:
    """What the metrics must say, computed from the files on disk and the real /proc alone."""
    out: Samples = {}
    state = tree(conf)
    for pool in (k for k in state if "/" not in k):
        lists = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{pool}/")}
        assert isinstance(state[pool], bool)
        p = (("pool", pool),)
        cpus: set[int] = set()
        for name in lists:
            cpus |= cpulist.parse(name)
        held = sum(1 for tasks in lists.values() if tasks)
        # A list only heirs hold: every live task has a .heir-<pid> record (kcm.holders).
        leftovers = {
            name
            for name, tasks in lists.items()
            if isinstance(tasks, list)
            and any(is_alive(t) for t in tasks)
            and all(
                Path(conf, "pools", pool, name, f".heir-{t}").exists() for t in tasks if is_alive(t)
            )
        }
        out[("kcm_pool_cpus", p)] = len(cpus)
        out[("kcm_pool_cpu_lists", p)] = len(lists)
        out[("kcm_pool_cpu_lists_free", p)] = len(lists) - held
        out[("kcm_pool_cpu_lists_held", p)] = held
        out[("kcm_pool_cpu_lists_held_by_leftovers", p)] = len(leftovers)
        out[("kcm_pool_exclusive", p)] = 1 if state[pool] else 0
        out[("kcm_pool_tasks", p)] = sum(len(t) for t in lists.values() if isinstance(t, list))
        for name, tasks in lists.items():
            assert isinstance(tasks, list)
            labels = (("cpus", name), ("pool", pool))
            out[("kcm_cpu_list_tasks", labels)] = len(tasks)
            out[("kcm_cpu_list_stale_tasks", labels)] = sum(not is_alive(t) for t in tasks)
            for each in ("free", "held", "held_by_leftovers"):
                current = "held" if tasks else "free"
                current = "held_by_leftovers" if name in leftovers else current
                out[("kcm_cpu_list_state", (*labels, ("state", each)))] = each == current
    return out


def assert_matches_disk(samples: Samples, conf: str) -> None:
    expected = expected_from_disk(conf)
    shown = {k: v for k, v in samples.items() if k[0].startswith(("kcm_pool_", "kcm_cpu_list_"))}
    assert shown == expected


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def mixed_state(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    """Live tasks, a dead one and a zombie, across an exclusive and a shared pool."""
    live = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    zombie = subprocess.Popen(["true"])  # never waited for until the fixture ends
    processes.extend([*live, zombie])
    dead = subprocess.Popen(["true"])
    dead.wait()
    deadline = time.monotonic() + 10
    while is_alive(zombie.pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return build_state(
        str(tmp_path / "kcm"),
        {
            "dataplane": (
                True,
                {"4,12": str(live[0].pid), "5,13": str(dead.pid), "6,14": "", "7,15": ""},
            ),
            "controlplane": (False, {"3,11": ""}),
            "infra": (False, {"0-2,8-10": f"{live[1].pid},{zombie.pid},{live[2].pid}"}),
        },
    )


def test_printed_once_every_family_has_help_and_type_and_the_values_match_the_state(
    mixed_state: str,
) -> None:
    result = run_kcm("metrics", f"--conf-dir={mixed_state}", env=kcm_env())
    assert (result.code, result.err) == (0, "")
    samples = parse(result.out)
    assert_matches_disk(samples, mixed_state)
    # Spelled out once, for the reader: 8 dataplane CPUs in 4 lists, 2 held, 1 of them by a
    # task that is gone; infra's zombie is stale too.
    assert value(samples, "kcm_pool_cpus", pool="dataplane") == 8
    assert value(samples, "kcm_pool_cpu_lists_held", pool="dataplane") == 2
    assert value(samples, "kcm_pool_cpu_lists_free", pool="dataplane") == 2
    assert value(samples, "kcm_cpu_list_stale_tasks", pool="dataplane", cpus="5,13") == 1
    assert value(samples, "kcm_cpu_list_stale_tasks", pool="dataplane", cpus="4,12") == 0
    assert value(samples, "kcm_cpu_list_stale_tasks", pool="infra", cpus="0-2,8-10") == 1
    assert value(samples, "kcm_cpu_list_tasks", pool="infra", cpus="0-2,8-10") == 3
    assert value(samples, "kcm_state_up") == 1
    assert value(samples, "kcm_lock_wait_seconds_count") == 1
    assert value(samples, "kcm_state_read_errors_total") == 0
    assert not [k for k in samples if k[0].endswith("_created")]


def test_names_follow_prometheus_conventions(mixed_state: str) -> None:
    text = run_kcm("metrics", f"--conf-dir={mixed_state}", env=kcm_env()).out
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, family in families.items():
        assert name.startswith("kcm_"), name
        assert name == name.lower()
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples)
    assert families["kcm_lock_wait_seconds"].type == "histogram"
    labels = {k for f in families.values() for s in f.samples for k in s.labels}
    assert labels == {"pool", "cpus", "state", "version", "le", "cpu"}


# -- serving -------------------------------------------------------------------------------------


class Server:
    """A real ``kcm metrics --listen=127.0.0.1:0`` process and the port it logged."""

    def __init__(self, conf: str, env: dict[str, str] | None = None, host: str = "127.0.0.1"):
        self.proc = subprocess.Popen(
            [KCM, "metrics", f"--conf-dir={conf}", f"--listen={host}:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else kcm_env(),
        )
        line = self.read_line(15)
        assert line.startswith("kcm metrics: serving http://"), line
        self.base = line.split()[3].removesuffix("/metrics")
        self.lines = [line]

    def read_line(self, timeout: float) -> str:
        assert self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stderr], [], [], timeout)
        assert ready, "kcm metrics said nothing"
        return self.proc.stderr.readline().decode()

    def get(self, path: str) -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as response:
                kind = response.headers.get("Content-Type", "")
                return response.status, kind, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode()

    def scrape(self) -> Samples:
        status, kind, body = self.get("/metrics")
        assert status == 200
        assert kind.startswith("text/plain; version=0.0.4")
        return parse(body)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=15)
        return self.proc.returncode, "".join(self.lines) + err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def test_serves_metrics_and_healthz_over_http_until_sigterm(
    mixed_state: str, servers: list[Server]
) -> None:
    server = Server(mixed_state)
    servers.append(server)
    samples = server.scrape()
    assert_matches_disk(samples, mixed_state)
    assert value(samples, "kcm_state_up") == 1
    assert any(k[0] == "process_resident_memory_bytes" for k in samples)  # its own process
    assert server.get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    status, _, body = server.get("/nope")
    assert status == 404 and "/metrics" in body
    # The state is read afresh on every scrape.
    Path(mixed_state, "pools/dataplane/6,14/tasks").write_text(str(os.getpid()))
    again = server.scrape()
    assert_matches_disk(again, mixed_state)
    assert value(again, "kcm_pool_cpu_lists_free", pool="dataplane") == 1
    assert value(again, "kcm_lock_wait_seconds_count") == 2
    code, err = server.stop(signal.SIGTERM)
    assert code == 0
    assert err.splitlines()[-1] == "kcm metrics: stopping"
    assert "Traceback" not in err


def test_sigint_ends_it_cleanly_too(state2: str, servers: list[Server]) -> None:
    server = Server(state2)
    servers.append(server)
    assert server.get("/healthz")[0] == 200
    code, err = server.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err


def test_a_real_booking_and_a_killed_isolate_show_as_held_then_stale(
    state2: str, servers: list[Server], tmp_path: Path
) -> None:
    server = Server(state2)
    servers.append(server)
    assert value(server.scrape(), "kcm_pool_cpu_lists_free", pool="dataplane") == 1
    pid_file = tmp_path / "sleep.pid"
    holder = subprocess.Popen(
        [
            KCM,
            "isolate",
            f"--conf-dir={state2}",
            "--pool=dataplane",
            f"echo $$ > {pid_file}; exec sleep 60",
        ],
        env=kcm_env(KCM_PROC_FS="/proc"),
    )
    try:
        deadline = time.monotonic() + 10
        while tree(state2)["dataplane/1"] != [holder.pid] or not pid_file.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        samples = server.scrape()
        assert value(samples, "kcm_pool_cpu_lists_free", pool="dataplane") == 0
        assert value(samples, "kcm_cpu_list_state", pool="dataplane", cpus="1", state="held") == 1
        assert value(samples, "kcm_cpu_list_stale_tasks", pool="dataplane", cpus="1") == 0
        holder.kill()  # kill -9: isolate cannot remove its PID, reconcile would
        holder.wait()
        samples = server.scrape()
        assert value(samples, "kcm_cpu_list_stale_tasks", pool="dataplane", cpus="1") == 1
        assert_matches_disk(samples, state2)
    finally:
        holder.kill()
        holder.wait()
        if pid_file.exists() and pid_file.read_text().strip():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def open_files(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return found


def test_lock_wait_histogram_measures_the_wait_for_a_writer(
    state2: str, servers: list[Server]
) -> None:
    server = Server(state2)
    servers.append(server)
    before = server.scrape()
    fd = os.open(os.path.join(state2, "lock"), os.O_RDWR)
    result: list[Samples] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer holds the lock
        scraper = threading.Thread(target=lambda: result.append(server.scrape()))
        scraper.start()
        # Half a second from the moment the exporter waits: it opens the lock file only
        # to take the lock (and, serving from a thread, polls for it rather than blocking).
        lock = os.path.realpath(os.path.join(state2, "lock"))
        deadline = time.monotonic() + 20
        while lock not in open_files(server.proc.pid):
            assert time.monotonic() < deadline, "the scrape never waited for the lock"
            time.sleep(0.002)
        time.sleep(0.5)
    finally:
        os.close(fd)
    scraper.join(30)
    (after,) = result

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("kcm_lock_wait_seconds_count") == 1
    assert delta("kcm_lock_wait_seconds_sum") >= 0.5
    assert delta("kcm_lock_wait_seconds_bucket", le="0.25") == 0
    assert delta("kcm_lock_wait_seconds_bucket", le="+Inf") == 1


def test_a_state_error_while_serving_is_logged_and_reported_not_fatal(
    mixed_state: str, servers: list[Server]
) -> None:
    server = Server(mixed_state)
    servers.append(server)
    tasks = Path(mixed_state, "pools/dataplane/6,14/tasks")
    tasks.write_text("12,abc")
    samples = server.scrape()
    assert value(samples, "kcm_state_up") == 0
    assert value(samples, "kcm_state_read_errors_total") == 1
    assert not [k for k in samples if k[0].startswith("kcm_pool_")]
    line = server.read_line(5)
    assert line.startswith("kcm metrics: error: ") and "6,14/tasks: invalid tasks file" in line
    tasks.write_text("")
    samples = server.scrape()
    assert value(samples, "kcm_state_up") == 1
    assert value(samples, "kcm_state_read_errors_total") == 1
    assert_matches_disk(samples, mixed_state)


def test_ipv6_loopback(state2: str, servers: list[Server]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = Server(state2, host="[::1]")
    servers.append(server)
    assert server.base.startswith("http://[::1]:")
    assert server.get("/healthz")[0] == 200


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("9545", "--listen='9545' is not <host>:<port>"),
        ("127.0.0.1:", "is not <host>:<port>"),
        ("127.0.0.1:http", "is not <host>:<port>"),
        ("127.0.0.1:99999", "port 99999 is not from 0 to 65535"),
        ("::1:9545", "is not <host>:<port>"),
        ("a b:9545", "'a b' is not a host name or address"),
    ],
)
def test_a_bad_listen_address_is_a_usage_error(state2: str, listen: str, message: str) -> None:
    result = run_kcm("metrics", f"--conf-dir={state2}", f"--listen={listen}", timeout=20)
    assert_one_error_line(result, message)
    assert (result.code, result.out) == (2, "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--textfile="], "--textfile must not be empty"),
        (["--listen="], "--listen='' is not <host>:<port>"),
        (["--output=table"], "kcm metrics has no option '--output=table'"),
        (["now"], "unexpected argument 'now'"),
    ],
)
def test_other_usage_errors(state2: str, args: list[str], message: str) -> None:
    result = run_kcm("metrics", f"--conf-dir={state2}", *args)
    assert_one_error_line(result, message)
    assert (result.code, result.out) == (2, "")


def test_a_bad_lock_timeout_stops_the_server_before_it_starts(state2: str) -> None:
    env = kcm_env(KCM_LOCK_TIMEOUT="soon")
    result = run_kcm("metrics", f"--conf-dir={state2}", "--listen=127.0.0.1:0", env=env)
    assert_one_error_line(result, "KCM_LOCK_TIMEOUT='soon' is not a positive number")
    assert result.code == 2


def test_a_port_in_use_is_one_line_and_exit_6(state2: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_kcm("metrics", f"--conf-dir={state2}", f"--listen=127.0.0.1:{port}")
    assert_one_error_line(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert (result.code, result.out) == (6, "")


def test_an_address_this_host_does_not_have_is_one_line_and_exit_6(state2: str) -> None:
    # 192.0.2.1 is TEST-NET-1: never a local address; binding to it sends nothing anywhere.
    result = run_kcm("metrics", f"--conf-dir={state2}", "--listen=192.0.2.1:9545")
    assert_one_error_line(result, "cannot listen on 192.0.2.1:9545: Cannot assign requested")
    assert result.code == 6


def test_listen_and_textfile_exclude_each_other(state2: str, tmp_path: Path) -> None:
    result = run_kcm(
        "metrics", f"--conf-dir={state2}", "--listen=127.0.0.1:0", f"--textfile={tmp_path}"
    )
    assert_one_error_line(result, "--listen or --textfile, not both")
    assert result.code == 2
    assert os.listdir(tmp_path) != ["kcm.prom"]


def test_a_missing_or_corrupt_state_is_one_line_and_exit_3(tmp_path: Path, state2: str) -> None:
    result = run_kcm("metrics", f"--conf-dir={tmp_path}/none")
    assert_one_error_line(result, f"{tmp_path}/none does not exist")
    assert (result.code, result.out) == (3, "")
    Path(state2, "pools/infra/exclusive").write_text("maybe")
    result = run_kcm("metrics", f"--conf-dir={state2}")
    assert_one_error_line(result, "pools/infra/exclusive: expected 0 or 1")
    assert (result.code, result.out) == (3, "")


# -- the textfile ------------------------------------------------------------------------------


def without_lock_wait(text: str) -> str:
    """The text less the histogram, whose timings differ from one run to the next, and the
    dataplane audit of the real host, whose threads come and go."""
    varying = ("kcm_lock_wait_seconds", "kcm_dataplane_")
    return "\n".join(line for line in text.splitlines() if not any(v in line for v in varying))


def test_textfile_is_written_whole_readable_and_alone(mixed_state: str, tmp_path: Path) -> None:
    out = tmp_path / "textfile"
    out.mkdir()
    old = os.umask(0o077)  # node_exporter must be able to read it whatever the umask
    try:
        result = run_kcm("metrics", f"--conf-dir={mixed_state}", f"--textfile={out}")
    finally:
        os.umask(old)
    assert (result.code, result.out, result.err) == (0, "", "")
    assert os.listdir(out) == ["kcm.prom"]  # no temp file left behind
    assert (out / "kcm.prom").stat().st_mode & 0o777 == 0o644
    text = (out / "kcm.prom").read_text()
    assert_matches_disk(parse(text), mixed_state)
    printed = run_kcm("metrics", f"--conf-dir={mixed_state}").out
    assert without_lock_wait(text) == without_lock_wait(printed)


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_textfile_dir_that_is_not_one_is_one_line_and_exit_6(
    state2: str, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "out"
    if kind == "a file":
        target.write_text("x")
    result = run_kcm("metrics", f"--conf-dir={state2}", f"--textfile={target}")
    assert_one_error_line(result, f"cannot write {target}/kcm.prom")
    assert (result.code, result.out) == (6, "")
    assert not (tmp_path / "kcm.prom").exists()


def run_in_mount_namespace(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``script`` under ``sh`` in a mount namespace of its own: its mounts vanish with it."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_an_unwritable_textfile_dir_keeps_the_old_file(state2: str, tmp_path: Path) -> None:
    out = tmp_path / "textfile"
    out.mkdir()
    (out / "kcm.prom").write_text("# the previous run's metrics\n")
    before = snapshot(str(out))
    # A read-only bind mount: even root cannot write there (mode bits would not stop root).
    proc = run_in_mount_namespace(
        f'mount --bind "{out}" "{out}"; mount -o remount,ro,bind "{out}";'
        f' exec "{KCM}" metrics --conf-dir="{state2}" --textfile="{out}"',
        kcm_env(),
    )
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr == f"kcm: error: cannot write {out}/kcm.prom: Read-only file system\n"
    assert snapshot(str(out)) == before


def test_a_full_disk_leaves_nothing_half_written(tmp_path: Path) -> None:
    lists = {f"{i},{i + 512}": str(100000 + i) for i in range(512)}
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, lists)})
    out = tmp_path / "textfile"
    out.mkdir()
    # 16 KiB of tmpfs holds the old file but not the new one, of some 150 KB.
    proc = run_in_mount_namespace(
        f'mount -t tmpfs -o size=16k kcm-test-textfile "{out}";'
        f' echo "# old" > "{out}/kcm.prom";'
        f' if "{KCM}" metrics --conf-dir="{conf}" --textfile="{out}"; then exit 99; fi;'
        f' ls -A "{out}"; cat "{out}/kcm.prom"',
        kcm_env(),
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout == "kcm.prom\n# old\n"
    assert proc.stderr == f"kcm: error: cannot write {out}/kcm.prom: No space left on device\n"


def test_a_state_error_leaves_the_old_textfile(state2: str, tmp_path: Path) -> None:
    out = tmp_path / "textfile"
    out.mkdir()
    assert run_kcm("metrics", f"--conf-dir={state2}", f"--textfile={out}").code == 0
    before = snapshot(str(out))
    Path(state2, "pools/infra/0/tasks").write_text("x")
    result = run_kcm("metrics", f"--conf-dir={state2}", f"--textfile={out}")
    assert_one_error_line(result, "pools/infra/0/tasks: invalid tasks file")
    assert result.code == 3
    assert snapshot(str(out)) == before


def test_a_reader_in_a_loop_never_sees_a_torn_textfile(tmp_path: Path) -> None:
    """Rewrites of a ~150 KB file while a reader reads it, and lists the directory the way
    node_exporter does, as fast as it can."""
    lists = {f"{i},{i + 512}": "" for i in range(512)}
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, lists)})
    out = tmp_path / "textfile"
    out.mkdir()
    writes = 25
    failures: list[str] = []

    def writer() -> None:
        for n in range(writes):
            # A different state each time, so the file's length changes from write to write.
            Path(conf, f"pools/dataplane/{n},{n + 512}/tasks").write_text(str(os.getpid()))
            result = run_kcm("metrics", f"--conf-dir={conf}", f"--textfile={out}")
            if result.code != 0:
                failures.append(result.err)

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    seen: set[float] = set()
    while thread.is_alive():
        for name in os.listdir(out):
            assert name == "kcm.prom" or not name.endswith(".prom"), name
        try:
            text = (out / "kcm.prom").read_text()
        except FileNotFoundError:
            continue  # before the first write
        reads += 1
        # A torn file is cut short: it would miss its last line. Parsing every read would
        # slow the reader down too much to race the writer; one in ten is parsed whole.
        assert text.startswith("# HELP kcm_pool_cpus "), text[:200]
        assert text.endswith("\nkcm_state_read_errors_total 0.0\n"), text[-200:]
        seen.add(text.count('state="held"} 1.0'))
        if reads % 10 == 0:
            parse(text)
    thread.join()
    assert failures == []
    assert reads > writes  # the reader did race the writer
    assert len(seen) > 1  # and saw more than one version
