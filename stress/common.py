"""What every stress script shares: the kcm command, state building, raw scans, figures."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

from kcm import state
from kcm.errors import ParseError
from kcm.model import CpuList, Pool

BIN = os.path.dirname(sys.executable)
KCM = os.path.join(BIN, "kcm")
# The cgroup parent of this run's bookings (``KCM_CGROUP_PARENT``): its own, removed by
# ``main`` at the end with whatever the run left in it.
CGROUP_PARENT = f"kcm-stress-{os.getpid()}-{secrets.token_hex(4)}"


def kcm_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any KCM_/CMK_ setting, plus the run's cgroup parent
    and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KCM_", "CMK_"))}
    env["KCM_CGROUP_PARENT"] = CGROUP_PARENT
    env.update(extra)
    return env


def online_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def make_state(path: str, pools: Mapping[str, tuple[bool, list[str]]]) -> str:
    """Create a state directory through kcm's own writer: ``{pool: (exclusive, [cpu lists])}``."""
    state.create(
        path,
        {
            name: Pool(name, exclusive, {cl: CpuList(cl) for cl in lists})
            for name, (exclusive, lists) in pools.items()
        },
    )
    return path


def spread_lists(count: int, first_fake: int) -> list[str]:
    """``count`` distinct CPU list names over this machine's CPUs.

    A 2-CPU machine has only three distinct lists, so each name pairs one online CPU with a CPU
    number the machine lacks (``0,2``, ``1,3``, ...). The kernel ignores CPUs beyond the
    possible ones, so a task on ``0,2`` really runs pinned to CPU 0, and kcm still books each
    name as one list.
    """
    cpus = online_cpus()
    return [f"{cpus[i % len(cpus)]},{first_fake + i}" for i in range(count)]


def exclusive_lists(count: int, first_fake: int) -> list[str]:
    """``count`` CPU list names for an exclusive pool: like ``spread_lists``, but disjoint.

    kcm refuses an exclusive pool whose lists share a CPU (two holders would run on it
    "exclusively"), so such a pool has at most one list per online CPU.
    """
    cpus = online_cpus()
    if count > len(cpus):
        raise ValueError(
            f"{count} exclusive lists need {count} online CPUs; this machine has {len(cpus)}"
        )
    return [f"{cpus[i]},{first_fake + i}" for i in range(count)]


def pinned_part(cpu_list: str) -> set[int]:
    """The CPUs a task booked on ``cpu_list`` can actually be pinned to on this machine."""
    from kcm import cpulist

    return set(cpulist.parse(cpu_list)) & set(online_cpus())


@dataclass
class Scan:
    """One raw read of a state directory, without the lock, as a crash or race would see it."""

    tasks: dict[str, list[int]] = field(default_factory=dict)  # "pool/list" -> PIDs
    exclusive: dict[str, bool] = field(default_factory=dict)
    torn: list[str] = field(default_factory=list)  # files that did not parse, with why
    hidden: list[str] = field(default_factory=list)  # .owner-/.tmp- entries


def scan(conf_dir: str) -> Scan:
    """Parse every file of the state with kcm's parsers, reading around the lock on purpose.

    Temp files (``.tmp-...``) are writes in flight and no part of the state: they are counted,
    not parsed. Every other file must parse at every instant.
    """
    found = Scan()
    pools_dir = os.path.join(conf_dir, state.POOLS)
    if not os.path.isfile(os.path.join(conf_dir, state.LOCK)):
        found.torn.append(f"{conf_dir}/lock is missing")
    for pool in sorted(os.listdir(pools_dir)):
        pool_dir = os.path.join(pools_dir, pool)
        if pool.startswith("."):
            found.hidden.append(f"{pool}")
            continue
        _parse_file(found, f"{pool_dir}/exclusive", state.parse_exclusive, pool, found.exclusive)
        for entry in sorted(os.listdir(pool_dir)):
            path = os.path.join(pool_dir, entry)
            if entry == state.EXCLUSIVE:
                continue
            if entry.startswith("."):
                found.hidden.append(f"{pool}/{entry}")
                continue
            key = f"{pool}/{entry}"
            _parse_file(found, f"{path}/tasks", state.parse_tasks, key, found.tasks)
            for name in os.listdir(path):
                if name.startswith(state.OWNER_PREFIX):
                    found.hidden.append(f"{key}/{name}")
                    try:
                        text = _read(f"{path}/{name}")
                    except FileNotFoundError:
                        continue  # removed by reconcile between listing and reading
                    if state.parse_owner(text) is None:
                        found.torn.append(f"{path}/{name}: {text!r} is no start time")
                elif name.startswith(state.TMP_PREFIX):
                    found.hidden.append(f"{key}/{name}")
    return found


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace")


T = TypeVar("T")


def _parse_file(
    found: Scan, path: str, parse: Callable[[str], T], key: str, into: dict[str, T]
) -> None:
    try:
        into[key] = parse(_read(path))
    except (OSError, ParseError) as e:
        found.torn.append(f"{path}: {e}")


def stderr_problem(text: str, allowed: tuple[str, ...]) -> str | None:
    """Why ``text`` (a kcm stderr) is not one clean error line starting with ``allowed``."""
    if "Traceback" in text:
        return "traceback: " + text.strip().splitlines()[-1]
    lines = text.strip().splitlines()
    if len(lines) != 1:
        return f"{len(lines)} stderr lines: {text.strip()[:200]!r}"
    if not lines[0].startswith(allowed):
        return f"unexpected error: {lines[0]!r}"
    return None


def run(
    argv: list[str], env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout
    )


class Report:
    """Figures of one script run: printed as aligned lines and as one JSON line at the end."""

    def __init__(self, script: str, **scale: object) -> None:
        self.script = script
        self.started = time.monotonic()
        self.figures: dict[str, object] = {"script": script, **scale}
        self.failures: list[str] = []

    def __setitem__(self, key: str, value: object) -> None:
        self.figures[key] = value

    def __getitem__(self, key: str) -> object:
        return self.figures[key]

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key`` (created at 0)."""
        value = self.figures.get(key, 0)
        self.figures[key] = (value if isinstance(value, int) else 0) + n

    def fail(self, what: str) -> None:
        self.failures.append(what)

    @property
    def ok(self) -> bool:
        return not self.failures

    def finish(self, out: TextIO | None = None) -> dict[str, object]:
        self.figures["seconds"] = round(time.monotonic() - self.started, 1)
        self.figures["date"] = time.strftime("%Y-%m-%d")
        self.figures["failures"] = len(self.failures)
        stream = sys.stdout if out is None else out
        width = max(len(k) for k in self.figures)
        for key, value in self.figures.items():
            print(f"{key:<{width}}  {value}", file=stream)
        for what in self.failures[:20]:
            print(f"FAILED: {what}", file=stream)
        if len(self.failures) > 20:
            print(f"... and {len(self.failures) - 20} more", file=stream)
        print(json.dumps(self.figures), file=stream)
        return self.figures


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser, described by the first line of its docstring, with ``--workdir``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    p.add_argument("--workdir", help="where to build the state (default: a temp dir)")
    return p


def main(
    p: argparse.ArgumentParser,
    argv: list[str] | None,
    script: str,
    stress: Callable[[argparse.Namespace, str], Report],
) -> int:
    """Parse ``argv``, run ``stress`` in a fresh work directory, print its figures; 0 if it held."""
    args = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix=f"kcm-{script}-", dir=args.workdir) as workdir:
            report = stress(args, workdir)
            report.finish()
    finally:
        remove_cgroup_parent()
    return 0 if report.ok else 1


def cgroup_top() -> str | None:
    """``<hierarchy>/<CGROUP_PARENT>``: where this run's bookings go (None without cgroups)."""
    from kcm.host import cgroups

    found = cgroups.find_hierarchy(cgroups.DEFAULT_CGROUP_FS)
    return None if found is None else f"{found[1]}/{CGROUP_PARENT}"


def remove_cgroup_parent() -> None:
    """Kill what the run left in its cgroup parent (only the run put processes there) and
    remove every level of it, bottom-up."""
    top = cgroup_top()
    if top is None or not os.path.isdir(top):
        return
    empty_cgroup_tree(top, 30)
    remove_cgroup_tree(top, strict=False)


def empty_cgroup_tree(top: str, timeout: float) -> list[int]:
    """SIGKILL every process in the cgroup ``top`` and below it (a tree only this run put
    processes in) until none is left or ``timeout`` seconds pass; the PIDs still there."""
    import signal

    deadline = time.monotonic() + timeout
    while True:
        left: set[int] = set()
        for dirpath, _dirs, _files in os.walk(top):
            try:
                left.update(int(pid) for pid in _read(f"{dirpath}/cgroup.procs").split())
            except FileNotFoundError:
                continue
        if not left or time.monotonic() > deadline:
            return sorted(left)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def remove_cgroup_tree(top: str, *, strict: bool) -> None:
    """Remove the cgroup ``top`` and every level below it, bottom-up. ``strict``: a level
    that cannot be removed (still busy) is an error; else it is left."""
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError:
            if strict:
                raise


# -- the invariant of issue 10, checked on the live system -----------------------------------


@dataclass(frozen=True)
class Placed:
    """A live process of a booking of the run's state: where the kernel says it is."""

    pid: int
    pool: str
    cpu_list: str
    booking: str
    allowed: frozenset[int]


def _status_cpus(text: str) -> frozenset[int] | None:
    from kcm import cpulist

    for line in text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return cpulist.parse(line.partition(":")[2].strip())
    return None


def placed(conf_dir: str) -> list[Placed]:
    """Every live process in a booking cgroup of ``conf_dir``'s state, from one walk over
    ``/proc/*/cgroup`` and ``/proc/*/status`` (the kernel's own word, not kcm's)."""
    from kcm.host import cgroups

    found = cgroups.find_hierarchy(cgroups.DEFAULT_CGROUP_FS)
    if found is None:
        return []
    kind = found[0]
    state = cgroups.state_id(os.path.realpath(conf_dir))
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            where = cgroups.parse_proc_cgroup(_read(f"/proc/{name}/cgroup"), kind)
            booking = None if where is None else cgroups.booking_at(where, CGROUP_PARENT, state)
            if booking is None:
                continue
            status = _read(f"/proc/{name}/status")
        except OSError:
            continue
        if "\nState:\tZ" in status:
            continue
        allowed = _status_cpus(status)
        if allowed is not None:
            pool, cpu_list = booking.pool, booking.cpu_list
            out.append(Placed(int(name), pool, cpu_list, booking.name, allowed))
    return out


def shared_cpus(found: list[Placed], exclusive_pools: set[str]) -> list[str]:
    """Each CPU that processes of two bookings of exclusive pools may run on at once."""
    by_cpu: dict[int, set[str]] = {}
    for p in found:
        if p.pool in exclusive_pools:
            for cpu in p.allowed:
                by_cpu.setdefault(cpu, set()).add(f"{p.pool}/{p.cpu_list}/{p.booking}")
    return [
        f"CPU {cpu} runs processes of {len(b)} bookings: {sorted(b)}"
        for cpu, b in sorted(by_cpu.items())
        if len(b) > 1
    ]


def marked(variable: str, value: str) -> list[int]:
    """Live processes whose environment holds ``variable=value`` (what a run started)."""
    needle = f"{variable}={value}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            status = _read(f"/proc/{name}/status")
        except OSError:
            continue
        if needle in env and "\nState:\tZ" not in status:
            found.append(int(name))
    return found


def booking_cgroups(conf_dir: str) -> list[str]:
    """The booking cgroups of the state under the run's parent (``pool/list/booking``)."""
    top = cgroup_top()
    if top is None:
        return []
    from kcm.host import cgroups

    subtree = f"{top}/{cgroups.state_id(os.path.realpath(conf_dir))}"
    out = []
    for dirpath, dirs, _files in os.walk(subtree):
        rel = os.path.relpath(dirpath, subtree)
        if rel.count("/") == 2:
            out.append(rel)
            dirs[:] = []
    return sorted(out)


def booked_by(conf_dir: str, kcm: int) -> list[int]:
    """The processes in the booking cgroups that the kcm isolate ``kcm`` made (any pool, any
    list of ``conf_dir``'s state), and below them."""
    top = cgroup_top()
    if top is None:
        return []
    from kcm.host import cgroups

    subtree = f"{top}/{cgroups.state_id(os.path.realpath(conf_dir))}"
    found: list[int] = []
    for rel in booking_cgroups(conf_dir):
        if rel.rpartition("/")[2].partition("-")[0] != str(kcm):
            continue
        for dirpath, _dirs, _files in os.walk(f"{subtree}/{rel}"):
            try:
                found += [int(pid) for pid in _read(f"{dirpath}/cgroup.procs").split()]
            except FileNotFoundError:
                continue
    return found
