"""Run a command, or pytest, inside the project's guest kernel under QEMU (TCG), from the host.

The guest sees the host's whole root read-only over 9p, so the host's Python, virtualenv and
checkout are there at the same paths; everything it writes goes to its own tmpfs and cgroups.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from tests.guest.build import CHECKOUT, GuestKernel, GuestUnavailable, ensure_kernel

# The kernel each cgroup mode boots by default: 6.12 has no cgroup v1 cpuset, 6.1 has both.
KERNEL_FOR = {"v2": "6.12", "v1": "6.1"}
MODES = tuple(KERNEL_FOR)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STATUS_PORT = "/dev/ttyS2"  # see init.sh: ttyS0 console, ttyS1 job output, ttyS2 status


class GuestError(Exception):
    """The guest did not run the job to its end: it failed to boot, or ran out of time."""


@dataclass(frozen=True)
class GuestResult:
    """What a job in the guest did: its exit status, its output, and how long the boot took."""

    exit_code: int
    output: str  # the job's stdout and stderr, in the order written
    boot_seconds: float  # host wall time from QEMU's start to the job's start
    seconds: float  # host wall time of the whole run, power-off included
    console: str  # the kernel's console, for diagnosis
    status: tuple[str, ...]  # the status port's lines
    kernel: str  # the Debian package=version booted
    retried: tuple[str, ...] = ()  # why each earlier guest was run again (see BOOT_ATTEMPTS)


@dataclass(frozen=True)
class PytestCounts:
    """pytest's outcome counts inside the guest, as its terminal summary counts them."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfailed: int = 0
    xpassed: int = 0
    deselected: int = 0

    @property
    def all_passed(self) -> bool:
        """At least one test ran, and every selected test passed (a skip is not a pass)."""
        others = self.failed + self.errors + self.skipped + self.xfailed + self.xpassed
        return self.passed > 0 and others == 0


@dataclass(frozen=True)
class GuestPytest:
    counts: PytestCounts | None  # None when pytest never reached its summary
    result: GuestResult


# ----------------------------------------------------------------------------- pure parts


def guest_env(
    cgroup: str, smp: int, python: str = sys.executable, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The job's whole environment: nothing of the host's but the interpreter's directory."""
    env = {
        "PATH": f"{Path(python).parent}:{SYSTEM_PATH}",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        # The share is read-only: no bytecode, pytest cache or Hypothesis database on it.
        "PYTHONDONTWRITEBYTECODE": "1",
        "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/hypothesis",
        "KCM_IN_GUEST": cgroup,
        "KCM_GUEST_SMP": str(smp),
        "KCM_GUEST_STATUS": STATUS_PORT,
    }
    env.update(extra or {})
    return env


def job_script(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> str:
    """The shell script /init runs chrooted into the host's root: cd, then exec argv in env."""
    if not argv:
        raise ValueError("an empty argv")
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    command = " ".join(shlex.quote(arg) for arg in argv)
    return f"cd {shlex.quote(str(cwd))} || exit 126\nexec env -i {assignments} {command}\n"


def numa_argv(smp: int, memory_mb: int, nodes: int) -> list[str]:
    """QEMU's ``-numa`` options for ``nodes`` NUMA nodes sharing the vCPUs and memory evenly
    (node n: the n-th run of vCPUs and a RAM backend of its own); none for one node."""
    if nodes <= 1:
        return []
    if smp < nodes or memory_mb < 128 * nodes:
        raise ValueError(f"{nodes} NUMA nodes need a vCPU and 128 MiB each ({smp}, {memory_mb})")
    argv: list[str] = []
    first = 0
    for node in range(nodes):
        count = smp // nodes + (1 if node < smp % nodes else 0)
        cpus = f"{first}-{first + count - 1}" if count > 1 else str(first)
        first += count
        size = memory_mb // nodes + (memory_mb % nodes if node == nodes - 1 else 0)
        argv += ["-object", f"memory-backend-ram,id=mem{node},size={size}M"]
        argv += ["-numa", f"node,nodeid={node},cpus={cpus},memdev=mem{node}"]
    return argv


# The guest mounts a tmpfs of its own on each of these (tests/guest/init.sh).
SCRATCH = ("/tmp", "/var/tmp", "/run")


def hidden_paths(paths: Sequence[Path] | None = None) -> list[str]:
    """The checkout and the ``shared`` beside it where they sit below one of the guest's
    scratch directories (a CI clone in /tmp), which the guest then mounts again over its
    tmpfs: ``<path>:<what it resolves to>`` each (a link's target is mounted at the link). A
    path the kernel command line cannot carry (white space, a comma, a colon) is refused."""
    if paths is None:
        paths = [CHECKOUT, CHECKOUT.parent / "shared"]
    keep = []
    for path in paths:
        text = os.path.abspath(path)
        if not os.path.exists(text) or not any(text.startswith(d + "/") for d in SCRATCH):
            continue
        pair = f"{text}:{os.path.realpath(text)}"
        if any(c.isspace() or c == "," for c in pair) or pair.count(":") != 1:
            raise ValueError(f"the guest cannot mount {text} again: white space, ',' or ':'")
        keep.append(pair)
    return keep


def boot_parameters(words: Sequence[str]) -> list[str]:
    """Extra kernel parameters (``nohz_full=3``), each one word; the harness's own are refused."""
    for word in words:
        name = word.partition("=")[0]
        if not word or not word.isprintable() or any(c.isspace() or c in "\"'" for c in word):
            raise ValueError(f"a kernel parameter is one plain word: {word!r}")
        if name.startswith("kcm.") or name in ("console", "panic", "init", "rdinit", "root"):
            raise ValueError(f"the harness sets {name}= itself: {word!r}")
    return list(words)


def qemu_argv(
    kernel: GuestKernel,
    *,
    cgroup: str,
    job: Path,
    ports: Path,
    smp: int,
    memory_mb: int,
    numa_nodes: int = 1,
    kernel_args: Sequence[str] = (),
) -> list[str]:
    """QEMU under TCG with the host's root shared read-only, no network, three serial ports,
    ``numa_nodes`` NUMA nodes (see ``numa_argv``) and ``kernel_args`` on the boot line."""
    if any(c.isspace() for c in str(job)):
        raise ValueError(f"the job's path goes on the kernel command line: {job}")
    append = f"console=ttyS0 quiet panic=-1 kcm.cgroup={cgroup} kcm.job={job}"
    keep = hidden_paths()
    if keep:
        append += f" kcm.keep={','.join(keep)}"
    extra = boot_parameters(kernel_args)
    if extra:
        append += " " + " ".join(extra)
    return [
        "qemu-system-x86_64",
        "-nodefaults",
        "-machine", "q35",
        "-accel", "tcg,thread=multi",
        "-smp", str(smp),
        "-m", str(memory_mb),
        "-display", "none",
        "-no-reboot",
        "-nic", "none",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(kernel.initrd),
        "-append", append,
        "-serial", f"file:{ports / 'console'}",
        "-serial", f"file:{ports / 'output'}",
        "-serial", f"file:{ports / 'status'}",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        *numa_argv(smp, memory_mb, numa_nodes),
    ]  # fmt: skip


def exit_code(status: Sequence[str]) -> int | None:
    """The job's exit status from the status lines, or None when /init never reported one."""
    for line in reversed(status):  # /init's own line is the last
        word, _, rest = line.partition(" ")
        if word == "exit" and rest.strip().isdigit():
            return int(rest)
    return None


def failure(status: Sequence[str]) -> str | None:
    """Why /init gave up before the job ran, if it said so."""
    for line in status:
        word, _, rest = line.partition(" ")
        if word == "fail":
            return rest
    return None


def pytest_counts(status: Sequence[str]) -> PytestCounts | None:
    """The counts the guest's pytest wrote on the status port (see report_counts)."""
    known = {f.name for f in fields(PytestCounts)}
    for line in reversed(status):
        word, _, rest = line.partition(" ")
        if word == "pytest":
            got = json.loads(rest)
            return PytestCounts(**{k: int(v) for k, v in got.items() if k in known})
    return None


# ----------------------------------------------------------------------------- running


def run_in_guest(
    argv: Sequence[str],
    *,
    cgroup: str = "v2",
    kernel: str | None = None,
    smp: int = 4,
    memory_mb: int = 1024,
    env: Mapping[str, str] | None = None,
    cwd: Path = CHECKOUT,
    timeout: float = 300.0,
    numa_nodes: int = 1,
    kernel_args: Sequence[str] = (),
) -> GuestResult:
    """Boot the guest, run ``argv`` in it as root, and return what it did.

    ``cgroup`` picks the hierarchy mounted at /sys/fs/cgroup (``v2``) or the v1 cpuset at
    /sys/fs/cgroup/cpuset (``v1``); ``kernel`` the series (default: 6.12 for v2, 6.1 for v1).
    ``env`` adds to the job's environment (see guest_env), ``kernel_args`` to the boot line
    (``nohz_full=3``; see boot_parameters). Raises GuestUnavailable when this
    host cannot have the guest, GuestError when it does not finish the job within ``timeout``.
    """
    if cgroup not in KERNEL_FOR:
        raise ValueError(f"cgroup {cgroup!r}: want one of {', '.join(MODES)}")
    if cgroup == "v1" and kernel == "6.12":
        raise ValueError("6.12 has no cgroup v1 cpuset (CONFIG_CPUSETS_V1 is off)")
    boot_parameters(kernel_args)  # before a kernel is fetched or built for nothing
    built = ensure_kernel(kernel or KERNEL_FOR[cgroup])
    with tempfile.TemporaryDirectory(prefix="kcm-guest-") as scratch:
        ports = Path(scratch)
        job = ports / "job.sh"
        job.write_text(job_script(argv, guest_env(cgroup, smp, extra=env), cwd))
        argv_qemu = qemu_argv(
            built,
            cgroup=cgroup,
            job=job,
            ports=ports,
            smp=smp,
            memory_mb=memory_mb,
            numa_nodes=numa_nodes,
            kernel_args=kernel_args,
        )
        run, retried = boot_until_started(argv_qemu, ports, timeout)
    code = exit_code(run.status)
    if code is None or run.timed_out:
        if run.timed_out:
            where = "in the job" if run.boot is not None else "booting"
            why = f"timed out after {timeout:g} s ({where})"
        else:
            why = failure(run.status) or f"QEMU exited {run.returncode} without the job's status"
        if retried:
            why += f" (after {len(retried)} guest(s) that died: {'; '.join(retried)})"
        raise GuestError(
            f"guest {built.pin.key} ({cgroup}): {why}\n"
            f"--- qemu\n{run.qemu_log[-2000:]}\n--- console\n{run.console[-4000:]}\n"
            f"--- output\n{run.output[-8000:]}"
        )
    return GuestResult(
        exit_code=code,
        output=run.output,
        boot_seconds=run.boot if run.boot is not None else run.seconds,
        seconds=run.seconds,
        console=run.console,
        status=run.status,
        kernel=built.pin.key,
        retried=tuple(retried),
    )


@dataclass(frozen=True)
class Boot:
    """One boot of QEMU: what its ports held when it ended."""

    boot: float | None  # seconds until the job started, None if it never did
    timed_out: bool
    returncode: int | None
    seconds: float
    status: tuple[str, ...]
    console: str
    output: str
    qemu_log: str


def boot_once(argv_qemu: Sequence[str], ports: Path, timeout: float) -> Boot:
    """Run QEMU once with empty ports; whatever happens, no QEMU outlives the call."""
    for port in ("console", "output", "status", "qemu.log"):
        (ports / port).write_bytes(b"")
    with (ports / "qemu.log").open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv_qemu,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            boot = _wait(proc, ports / "status", started, timeout)
        finally:
            # Whatever happened (a timeout, ^C, an error here), no QEMU outlives the call.
            timed_out = proc.poll() is None
            if timed_out:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return Boot(
        boot=boot,
        timed_out=timed_out,
        returncode=proc.returncode,
        seconds=time.monotonic() - started,
        status=tuple((ports / "status").read_text(errors="replace").splitlines()),
        console=(ports / "console").read_text(errors="replace"),
        output=(ports / "output").read_text(errors="replace"),
        qemu_log=(ports / "qemu.log").read_text(errors="replace"),
    )


# Multi-threaded TCG (QEMU 7.2 here) now and then runs a stale translation of kernel code that
# another vCPU is patching (a static key's int3), and the guest kernel dies at "Oops: int3".
# On 2026-12-01 it struck 3 of about 35 boots of the 6.12 guest (none of the 6.1 one), each
# while it booted: at 1.4 s, in sched_clock_cpu, the moment the kernel flips the static key
# that marks sched_clock stable (its log says "sched_clock: Marking stable" at 1.5 s). The
# fault is the emulator's, and a job can change nothing outside its guest (the host's root is
# shared read-only), so the harness runs it again in a new guest: after any panic before the
# job started, and after that oops at any point. Up to this many guests in all (a death costs
# about 2 s; at 1 in 10, five in a row is 1 in 100,000); each retry is said on stderr and kept
# in GuestResult.retried.
BOOT_ATTEMPTS = 5
TCG_FAULT = "Oops: int3"


def boot_until_started(
    argv_qemu: Sequence[str], ports: Path, timeout: float
) -> tuple[Boot, list[str]]:
    """Boot until a guest does not die of what retry_reason names, up to BOOT_ATTEMPTS
    guests: the last one, and the reason each earlier one was retried."""
    retried: list[str] = []
    while True:
        run = boot_once(argv_qemu, ports, timeout)
        reason = retry_reason(run.status, run.console, run.timed_out)
        if reason is None or len(retried) + 1 >= BOOT_ATTEMPTS:
            return run, retried
        retried.append(reason)
        where = "while booting" if run.boot is None else "in the job"
        print(f"guest: the kernel died {where} ({reason}); booting a new guest", file=sys.stderr)


def retry_reason(status: Sequence[str], console: str, timed_out: bool) -> str | None:
    """Why a guest's run is one to run again (see BOOT_ATTEMPTS), or None: TCG's fault
    anywhere, or the kernel's panic line when it panicked before the job started."""
    lines = console.splitlines()
    for line in lines:
        if TCG_FAULT in line:
            return line[line.index(TCG_FAULT) :].strip()
    if timed_out or any(line.startswith("start ") for line in status):
        return None  # the job ran: its failure is reported
    for line in lines:
        _, found, why = line.partition("Kernel panic - not syncing:")
        if found:
            return why.strip() or "no reason given"
    return None


def run_pytest_in_guest(
    paths: Sequence[str] = ("tests",),
    *,
    cgroup: str = "v2",
    kernel: str | None = None,
    args: Sequence[str] = (),
    smp: int = 4,
    memory_mb: int = 1024,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    numa_nodes: int = 1,
    kernel_args: Sequence[str] = (),
) -> GuestPytest:
    """Run pytest on ``paths`` in the guest; there only tests marked guest(cgroup) are selected."""
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args, *paths]
    result = run_in_guest(
        argv,
        cgroup=cgroup,
        kernel=kernel,
        smp=smp,
        memory_mb=memory_mb,
        env=env,
        timeout=timeout,
        numa_nodes=numa_nodes,
        kernel_args=kernel_args,
    )
    return GuestPytest(pytest_counts(result.status), result)


def guest_test_files(paths: Sequence[str] = ("tests",), cwd: Path = CHECKOUT) -> list[str]:
    """The test files under ``paths`` that hold guest-marked tests, as the host collects them.

    Collecting on the host takes a second or two; collecting the whole tree under TCG takes
    ten or more, so the guest is handed only these files.
    """
    collect = ["--collect-only", "-q", "-m", "guest"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *collect, *paths],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "KCM_IN_GUEST"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"collecting the guest tests failed:\n{done.stdout}{done.stderr}")
    return sorted({line.split("::", 1)[0] for line in done.stdout.splitlines() if "::" in line})


def require_guest(series: str) -> GuestKernel:
    """The built guest of ``series``, or a skip with the reason; in CI as root, a failure."""
    try:
        return ensure_kernel(series)
    except GuestUnavailable as e:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"CI runs as root and must boot the guest: {e}")
        pytest.skip(f"no guest kernel here: {e}")


def _wait(
    proc: subprocess.Popen[bytes], status: Path, started: float, timeout: float
) -> float | None:
    """Wait for QEMU to exit within ``timeout``; return the seconds until the job started."""
    deadline = started + timeout
    boot: float | None = None
    while proc.poll() is None:
        now = time.monotonic()
        if now >= deadline:
            break
        if boot is None:
            if status.read_bytes().startswith(b"start "):
                boot = now - started
            time.sleep(0.05)
        else:
            try:
                proc.wait(timeout=deadline - now)
            except subprocess.TimeoutExpired:
                break
    return boot


def _die_with_parent() -> None:
    # If the test run itself is killed, the kernel kills QEMU too (PR_SET_PDEATHSIG).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.guest.harness [options] COMMAND...`` or ``... --pytest [-- ARGS]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.guest.harness",
        description="Boot the guest kernel and run a command, or the guest tests, inside it.",
    )
    parser.add_argument("--cgroup", choices=MODES, default="v2", help="hierarchy to mount")
    parser.add_argument("--kernel", choices=sorted(set(KERNEL_FOR.values())), help="series")
    parser.add_argument("--smp", type=int, default=4, help="vCPUs (default 4)")
    parser.add_argument("--memory", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument(
        "--numa", type=int, default=1, help="NUMA nodes sharing vCPUs and memory (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument(
        "--kernel-arg",
        action="append",
        default=[],
        metavar="WORD",
        help="a kernel parameter for the boot line, e.g. nohz_full=3 (repeatable)",
    )
    parser.add_argument(
        "--pytest",
        action="store_true",
        help="run pytest with the rest as its arguments (default: the guest test files)",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="argv to run in the guest (after -- if it starts with -)",
    )
    words = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in words:
        rest = words[words.index("--") + 1 :]
        words = words[: words.index("--")]
    args = parser.parse_args(words)
    command = [*args.command, *rest]
    if not args.pytest and not command:
        parser.error("give a command to run, or --pytest")
    try:
        boot_parameters(args.kernel_arg)
    except ValueError as e:
        print(f"guest: {e}", file=sys.stderr)
        return 125
    try:
        if args.pytest:
            # Without a test path among its arguments, pytest gets the guest test files.
            named = any(Path(arg.split("::")[0]).exists() for arg in command)
            result = run_pytest_in_guest(
                command if named else [*command, *guest_test_files()],
                cgroup=args.cgroup,
                kernel=args.kernel,
                smp=args.smp,
                memory_mb=args.memory,
                timeout=args.timeout,
                numa_nodes=args.numa,
                kernel_args=args.kernel_arg,
            ).result
        else:
            result = run_in_guest(
                command,
                cgroup=args.cgroup,
                kernel=args.kernel,
                smp=args.smp,
                memory_mb=args.memory,
                timeout=args.timeout,
                numa_nodes=args.numa,
                kernel_args=args.kernel_arg,
            )
    except (GuestUnavailable, GuestError) as e:
        print(f"guest: {e}", file=sys.stderr)
        return 125
    sys.stdout.write(result.output)
    print(
        f"guest: {result.kernel} ({args.cgroup}): exit {result.exit_code}, "
        f"job started {result.boot_seconds:.1f} s after QEMU, {result.seconds:.1f} s in all",
        file=sys.stderr,
    )
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
