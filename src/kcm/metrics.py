"""``kcm metrics``: the state as Prometheus metrics, printed once, served, or written as a textfile.

The families are pure functions of a ``Snapshot`` (the pools, the reconcile loop's totals and
the shield record, read under describe's shared lock; which recorded tasks still live; and, with
an exclusive dataplane pool, the audit's judgement of this instant); ``SOURCES`` lists them.
Each metric that comes with later work is one more function there, fed by one more field of
``Snapshot`` that ``read_snapshot`` fills in.

Uses the official ``prometheus_client`` for the families, the exposition format and the WSGI
app; imported only by this command (``tests/k8s/test_imports.py`` checks it stays off the
other commands' paths).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from kcm import __version__, cpulist, totals
from kcm.describe import lists_held_by_leftovers, read_state, read_tasks
from kcm.errors import EnvironmentProblem, KcmError, LockTimeoutError, UsageError
from kcm.fence import record
from kcm.fence.audit import AuditReport, DataplaneList
from kcm.host.procfs import proc_root_or_default
from kcm.model import FREE, HELD_BY_LEFTOVERS, LIST_STATES, CpuList, Pool, list_state
from kcm.state import lock_timeout

try:
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Histogram,
        disable_created_metrics,
        generate_latest,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import make_wsgi_app
    from prometheus_client.registry import Collector
except ImportError:  # the standalone kcm of ``kcm install`` carries kcm's modules only
    raise EnvironmentProblem(
        "kcm metrics needs the Python package 'prometheus_client' (pip install"
        " prometheus_client); the standalone kcm written by kcm install does not carry it"
    ) from None

# No ``<name>_created`` series beside each counter and histogram: a process start time that
# says nothing about the state, and doubles what a scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]

TEXTFILE = "kcm.prom"
# Lock waits are microseconds when nothing writes and up to KCM_LOCK_TIMEOUT (30 s by default)
# when a writer stalls; the buckets span both.
LOCK_WAIT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


DATAPLANE = "dataplane"
UNSHIELDED = "unshielded"
# kcm_shield_state's states: no record, then the record's phases (kcm.fence.record).
SHIELD_STATES = (UNSHIELDED, *record.PHASES)


class HostRoots:
    """Where the dataplane audit reads the host: procfs, sysfs and the cgroup root."""

    __slots__ = ("cgroup", "proc", "sys")

    def __init__(self, proc: str, sys: str, cgroup: str) -> None:
        self.proc = proc
        self.sys = sys
        self.cgroup = cgroup


class Intrusions:
    """The audit of one instant (``kcm.fence.command.audit_now``), or why it could not be
    made, and how long it took."""

    __slots__ = ("error", "report", "seconds")

    def __init__(self, report: AuditReport | None, seconds: float, error: str | None) -> None:
        self.report = report
        self.seconds = seconds
        self.error = error


class Snapshot:
    """What one scrape read: the pools, the PIDs among their tasks that a process holds, the
    lists (``pool/cpus``) only leftovers of gone bookings hold, the reconcile loop's totals
    (``None``: no loop ever recorded any), the shield record's phase (``None``: no record), and
    the audit of this instant (``None`` without an exclusive dataplane pool)."""

    __slots__ = ("intrusions", "leftovers", "live", "pools", "shield", "totals")

    def __init__(
        self,
        pools: dict[str, Pool],
        live: set[int],
        leftovers: set[str] | None = None,
        *,
        totals: totals.Totals | None = None,
        shield: str | None = None,
        intrusions: Intrusions | None = None,
    ) -> None:
        self.pools = pools
        self.live = live
        self.leftovers = set() if leftovers is None else leftovers
        self.totals = totals
        self.shield = shield
        self.intrusions = intrusions

    def state(self, pool: str, cl: CpuList) -> str:
        return list_state(cl, f"{pool}/{cl.cpus}" in self.leftovers)


def dataplane_lists(pools: dict[str, Pool]) -> tuple[DataplaneList, ...] | None:
    """The lists the audit judges: those of an exclusive dataplane pool, else ``None``."""
    pool = pools.get(DATAPLANE)
    if pool is None or not pool.exclusive:
        return None
    return tuple(
        DataplaneList(cl.cpus, frozenset(cpulist.parse(cl.cpus)), tuple(cl.tasks))
        for cl in pool.cpu_lists.values()
    )


def audit_instant(
    conf_dir: str, lists: tuple[DataplaneList, ...], roots: HostRoots, *, strict: bool
) -> Intrusions:
    """``kcm.fence.command.audit_now`` on the host at ``roots``; a host that cannot be read
    raises when ``strict``, else is logged and returned as the error."""
    from kcm.fence.command import audit_now, cgroup_bookings
    from kcm.fence.reader import HostReader

    started = time.monotonic()
    try:
        report = audit_now(
            conf_dir,
            lists,
            HostReader(roots.proc, roots.sys, roots.cgroup),
            booking_of=cgroup_bookings(conf_dir, roots.cgroup),
        )
    except KcmError as e:
        if strict:
            raise
        log(f"error: dataplane audit: {e.message}")
        return Intrusions(None, time.monotonic() - started, e.message)
    return Intrusions(report, time.monotonic() - started, None)


def read_snapshot(
    conf_dir: str,
    proc_root: str,
    lock_wait: Histogram,
    roots: HostRoots | None = None,
    *,
    strict: bool = True,
) -> Snapshot:
    """The state under the shared lock (its wait observed in ``lock_wait``), then procfs; with
    ``roots`` and an exclusive dataplane pool, the audit of this instant there too."""
    started = time.monotonic()
    try:
        read = read_state(conf_dir, hidden=(totals.NAME, record.NAME))
    except LockTimeoutError:
        lock_wait.observe(time.monotonic() - started)
        raise
    lock_wait.observe(read.lock_wait)
    counted = totals.read(read.hidden[totals.NAME], f"{conf_dir}/{totals.NAME}")
    shield_text = read.hidden[record.NAME]
    shield = (
        None if shield_text is None else record.phase_of(shield_text, f"{conf_dir}/{record.NAME}")
    )
    pids = [
        pid for pool in read.pools.values() for cl in pool.cpu_lists.values() for pid in cl.tasks
    ]
    live = set(read_tasks(proc_root, pids))
    leftovers = lists_held_by_leftovers(conf_dir, read.pools, live)
    lists = dataplane_lists(read.pools)
    intrusions = None
    if roots is not None and lists is not None:
        intrusions = audit_instant(conf_dir, lists, roots, strict=strict)
    return Snapshot(
        read.pools, live, leftovers, totals=counted, shield=shield, intrusions=intrusions
    )


# -- the families: pure functions of a snapshot ------------------------------------------------


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def pool_families(snapshot: Snapshot) -> Iterator[Metric]:
    """Per pool: CPUs, CPU lists, free and held lists, tasks, and whether it is exclusive."""
    cpus = _gauge("kcm_pool_cpus", "CPUs in the pool's CPU lists.", ["pool"])
    lists = _gauge("kcm_pool_cpu_lists", "CPU lists in the pool.", ["pool"])
    free = _gauge("kcm_pool_cpu_lists_free", "CPU lists of the pool that nothing holds.", ["pool"])
    held = _gauge(
        "kcm_pool_cpu_lists_held",
        "CPU lists of the pool that are held (kcm_pool_cpu_lists minus the free ones).",
        ["pool"],
    )
    leftovers = _gauge(
        "kcm_pool_cpu_lists_held_by_leftovers",
        "CPU lists of the pool held only by processes that bookings left behind once their kcm"
        " isolate was gone (counted in kcm_pool_cpu_lists_held too).",
        ["pool"],
    )
    tasks = _gauge("kcm_pool_tasks", "Tasks recorded on the pool's CPU lists.", ["pool"])
    exclusive = _gauge(
        "kcm_pool_exclusive",
        "1 if the pool is exclusive (a CPU list runs one task), 0 if it is shared.",
        ["pool"],
    )
    for name in sorted(snapshot.pools):
        pool = snapshot.pools[name]
        all_cpus: set[int] = set()
        n_free = n_tasks = n_leftovers = 0
        for cl in pool.cpu_lists.values():
            all_cpus |= cpulist.parse(cl.cpus)
            state = snapshot.state(name, cl)
            n_free += state == FREE
            n_leftovers += state == HELD_BY_LEFTOVERS
            n_tasks += len(cl.tasks)
        cpus.add_metric([name], len(all_cpus))
        lists.add_metric([name], len(pool.cpu_lists))
        free.add_metric([name], n_free)
        held.add_metric([name], len(pool.cpu_lists) - n_free)
        leftovers.add_metric([name], n_leftovers)
        tasks.add_metric([name], n_tasks)
        exclusive.add_metric([name], 1 if pool.exclusive else 0)
    yield from (cpus, lists, free, held, leftovers, tasks, exclusive)


def cpu_list_families(snapshot: Snapshot) -> Iterator[Metric]:
    """Per CPU list: its tasks, the ones whose process is gone, and its state as a state set."""
    labels = ["pool", "cpus"]
    tasks = _gauge("kcm_cpu_list_tasks", "Tasks recorded on the CPU list.", labels)
    stale = _gauge(
        "kcm_cpu_list_stale_tasks",
        "Tasks recorded on the CPU list whose process is gone (kcm reconcile removes them).",
        labels,
    )
    state = _gauge(
        "kcm_cpu_list_state",
        "1 for the CPU list's state (free, held, held_by_leftovers), 0 for the other states.",
        [*labels, "state"],
    )
    for name in sorted(snapshot.pools):
        for key in sorted(snapshot.pools[name].cpu_lists):
            cl = snapshot.pools[name].cpu_lists[key]
            tasks.add_metric([name, cl.cpus], len(cl.tasks))
            stale.add_metric([name, cl.cpus], sum(pid not in snapshot.live for pid in cl.tasks))
            current = snapshot.state(name, cl)
            for each in LIST_STATES:
                state.add_metric([name, cl.cpus, each], 1 if each == current else 0)
    yield from (tasks, stale, state)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def reconcile_families(snapshot: Snapshot) -> Iterator[Metric]:
    """The reconcile loop's totals (``kcm.totals``): none until a loop has recorded a pass.

    Counters since the loop started, ``kcm_reconcile_loop_start_time_seconds`` (a restarted
    loop counts from 0 again, which Prometheus' rate() and increase() take as a reset)."""
    t = snapshot.totals
    if t is None:
        return
    since = " since the reconcile loop started"
    yield _counter(
        "kcm_reconcile_passes",
        f"Passes of kcm reconcile --interval{since}, failed ones included.",
        t.passes,
    )
    yield _counter(
        "kcm_reconcile_pass_failures",
        f"Passes that failed{since} (the loop logs why).",
        t.failed_passes,
    )
    yield _counter(
        "kcm_reconcile_pids_freed", f"Dead tasks removed from CPU lists{since}.", t.pids_freed
    )
    yield _counter(
        "kcm_reconcile_lists_handed_over",
        f"CPU lists handed over to processes a gone booking left behind{since}.",
        t.lists_handed_over,
    )
    yield _counter(
        "kcm_reconcile_cgroups_removed", f"Empty booking cgroups removed{since}.", t.cgroups_removed
    )
    start = _gauge(
        "kcm_reconcile_loop_start_time_seconds",
        "When the reconcile loop that"
        " recorded these totals started, in Unix seconds: its counters count from"
        " there.",
        [],
    )
    start.add_metric([], t.started)
    interval = _gauge("kcm_reconcile_interval_seconds", "The reconcile loop's --interval.", [])
    interval.add_metric([], t.interval)
    yield from (start, interval)
    if t.last_pass_ended is None or t.last_pass_seconds is None:
        return
    ended = _gauge(
        "kcm_reconcile_last_pass_timestamp_seconds",
        "When the reconcile loop's last pass ended, in Unix seconds.",
        [],
    )
    ended.add_metric([], t.last_pass_ended)
    took = _gauge(
        "kcm_reconcile_last_pass_duration_seconds",
        "How long the reconcile loop's last pass took.",
        [],
    )
    took.add_metric([], t.last_pass_seconds)
    ok = _gauge(
        "kcm_reconcile_last_pass_success",
        "1 if the reconcile loop's last pass succeeded, 0 if it failed.",
        [],
    )
    ok.add_metric([], 1 if t.last_pass_ok else 0)
    yield from (ended, took, ok)


def shield_families(snapshot: Snapshot) -> Iterator[Metric]:
    """The shield record's phase as a state set; and, per dataplane CPU, what intrudes now.

    Only with an exclusive dataplane pool (what kcm shield and kcm audit need), or a record."""
    if (
        snapshot.intrusions is None
        and snapshot.shield is None
        and (dataplane_lists(snapshot.pools) is None)
    ):
        return
    state = _gauge(
        "kcm_shield_state",
        "1 for the shield's state (unshielded: no .shield.json; else the phase it records:"
        " shielding, shielded, unshielding), 0 for the other states.",
        ["state"],
    )
    current = UNSHIELDED if snapshot.shield is None else snapshot.shield
    for each in SHIELD_STATES:
        state.add_metric([each], 1 if each == current else 0)
    yield state
    found = snapshot.intrusions
    if found is None:
        return
    up = _gauge(
        "kcm_dataplane_audit_up",
        "1 if this scrape's audit of the dataplane CPUs"
        " read the host, else 0 (the error is logged on stderr).",
        [],
    )
    up.add_metric([], 0 if found.report is None else 1)
    took = _gauge(
        "kcm_dataplane_audit_duration_seconds",
        "How long this scrape's audit of the dataplane CPUs took.",
        [],
    )
    took.add_metric([], found.seconds)
    yield from (up, took)
    if found.report is None:
        return
    threads = _gauge(
        "kcm_dataplane_cpu_intruding_threads",
        "Threads allowed on the dataplane CPU that are not its list's booking (kcm audit's"
        " threads, judged at this instant; per-CPU and unmovable kernel threads are not"
        " counted).",
        ["cpu"],
    )
    irqs = _gauge(
        "kcm_dataplane_cpu_intruding_irqs",
        "IRQs whose affinity includes the dataplane CPU (kcm audit's IRQs at this instant;"
        " ones steered off and not yet moved are not counted).",
        ["cpu"],
    )
    for cpu in found.report.cpus:
        threads.add_metric([str(cpu.cpu)], len(cpu.threads))
        irqs.add_metric([str(cpu.cpu)], len(cpu.irqs))
    yield from (threads, irqs)


# Each takes a snapshot and yields families.
SOURCES: tuple[Callable[[Snapshot], Iterable[Metric]], ...] = (
    pool_families,
    cpu_list_families,
    reconcile_families,
    shield_families,
)


class StateCollector(Collector):
    """A ``prometheus_client`` collector that reads the state afresh on every ``collect``.

    ``strict`` (printing once, writing a textfile) lets a state error end the command; serving,
    a failed read is logged, counted, and reported as ``kcm_state_up 0``, and the server goes
    on.
    """

    def __init__(
        self, conf_dir: str, proc_root: str, *, strict: bool, roots: HostRoots | None = None
    ) -> None:
        self.conf_dir = conf_dir
        self.proc_root = proc_root
        self.strict = strict
        self.roots = roots
        # Not registered anywhere: collect() yields them after the read they measure.
        self.lock_wait = Histogram(
            "kcm_lock_wait_seconds",
            "Time this exporter waited for the state's shared lock, per read of the state.",
            buckets=LOCK_WAIT_BUCKETS,
            registry=None,
        )
        self.read_errors = Counter(
            "kcm_state_read_errors",
            "Reads of the state directory that failed (the error is logged on stderr).",
            registry=None,
        )
        self._guard = threading.Lock()  # one read at a time; concurrent scrapes queue

    def collect(self) -> Iterator[Metric]:
        with self._guard:
            try:
                snapshot: Snapshot | None = read_snapshot(
                    self.conf_dir, self.proc_root, self.lock_wait, self.roots, strict=self.strict
                )
            except KcmError as e:
                if self.strict:
                    raise
                self.read_errors.inc()
                log(f"error: {e.message}")
                snapshot = None
            families: list[Metric] = []
            if snapshot is not None:
                for source in SOURCES:
                    families.extend(source(snapshot))
            up = _gauge("kcm_state_up", "1 if the last read of the state succeeded, else 0.", [])
            up.add_metric([], 1 if snapshot is not None else 0)
            info = _gauge("kcm_build_info", "The running kcm's version; always 1.", ["version"])
            info.add_metric([__version__], 1)
            families += [up, info, *self.lock_wait.collect(), *self.read_errors.collect()]
        yield from families


def log(line: str) -> None:
    print(f"kcm metrics: {line}", file=sys.stderr, flush=True)


def registry_for(collector: StateCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def host_roots() -> HostRoots:
    """The audit's roots: ``$KCM_PROC_FS``, ``$KCM_SYS_FS``, ``$KCM_CGROUP_FS`` (or their
    defaults), as ``kcm audit`` reads them."""
    from kcm.fence.command import sys_root
    from kcm.host.cgroups import cgroup_root

    return HostRoots(proc_root_or_default(), sys_root(), cgroup_root())


def exposition(conf_dir: str) -> bytes:
    """The metrics of ``conf_dir`` once, in the Prometheus text format; state errors raise."""
    collector = StateCollector(conf_dir, proc_root_or_default(), strict=True, roots=host_roots())
    return generate_latest(registry_for(collector))


# -- the textfile ------------------------------------------------------------------------------


def write_textfile(directory: str, data: bytes) -> str:
    """Replace ``<directory>/kcm.prom`` with ``data``: temp file, fsync, rename, fsync the dir.

    The temp file's name does not end in ``.prom``, so node_exporter's textfile collector never
    reads it; a failure removes it, and the old ``kcm.prom`` (if any) stays as it was.
    """
    path = os.path.join(directory, TEXTFILE)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write {path}: {directory}: {e.strerror}") from None
    tmp = f".{TEXTFILE}.{os.getpid()}.tmp"
    try:
        try:  # only a killed writer that had this PID can have left one
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, 0o644)  # readable by node_exporter whatever the umask
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, TEXTFILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        os.fsync(dir_fd)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write {path}: {e.strerror}") from None
    finally:
        os.close(dir_fd)
    return path


# -- serving -----------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every IPv4 address); port 0 picks a free one."""
    host, colon, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    # An IPv6 address needs its brackets: in "::1:9545" the port cannot be told apart.
    if (
        not colon
        or (":" in host and not bracketed)
        or not (port.isascii() and port.isdigit())
        or len(port) > 5
    ):
        raise UsageError(
            f"--listen={text!r} is not <host>:<port> (for example 127.0.0.1:9545, :9545 or"
            " [::1]:9545)"
        )
    if int(port) > 65535:
        raise UsageError(f"--listen={text!r}: port {port} is not from 0 to 65535")
    if any(c.isspace() or c in "/[]" for c in host):
        raise UsageError(f"--listen={text!r}: {host!r} is not a host name or address")
    return host or "0.0.0.0", int(port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per scrape: Prometheus scrapes every few seconds


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can hang for
        # seconds on a node without DNS; the WSGI environment only needs a name.
        TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = self.server_address[1]
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


def web_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """``/metrics`` (prometheus_client's app), ``/healthz`` (``ok`` while serving), else 404."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if path == "/healthz":
            start_response("200 OK", text)
            return [b"ok\n"]
        start_response("404 Not Found", text)
        return [b"not found: kcm serves /metrics and /healthz\n"]

    return app


def serve(conf_dir: str, listen: str) -> int:
    """Serve ``/metrics`` and ``/healthz`` on ``listen`` until SIGTERM or SIGINT; exit 0 then."""
    import signal

    host, port = parse_listen(listen)
    collector = StateCollector(conf_dir, proc_root_or_default(), strict=False, roots=host_roots())
    registry = registry_for(collector)
    from prometheus_client import ProcessCollector

    ProcessCollector(registry=registry)  # the exporter's own CPU, memory and open files
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(
            host, port, web_app(registry), server_class=server_class, handler_class=_QuietHandler
        )
    except OSError as e:
        raise EnvironmentProblem(f"cannot listen on {listen}: {e.strerror or e}") from None
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, name="kcm-metrics", daemon=True)
    try:
        thread.start()
        shown = f"[{host}]" if ":" in host else host
        log(f"serving http://{shown}:{server.server_port}/metrics and /healthz")
        while not stop.wait(3600):
            pass
        log("stopping")
        server.shutdown()
        return 0
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(conf_dir: str, *, listen: str | None, textfile: str | None) -> int:
    """``kcm metrics``: print once, write ``--textfile``'s file, or serve on ``--listen``."""
    if listen is not None and textfile is not None:
        raise UsageError("kcm metrics takes --listen or --textfile, not both")
    lock_timeout()  # a bad KCM_LOCK_TIMEOUT is a usage error now, not one per scrape
    if listen is not None:
        return serve(conf_dir, listen)
    if textfile is not None and not textfile:
        raise UsageError("--textfile must not be empty")
    data = exposition(conf_dir)  # read everything before writing anything
    if textfile is not None:
        write_textfile(textfile, data)
    else:
        sys.stdout.write(data.decode("utf-8"))
    return 0
