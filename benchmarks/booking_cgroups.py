"""What a booking cgroup costs: the moves, one booking's lifecycle, and kcm isolate's start-up.

    .venv/bin/python benchmarks/booking_cgroups.py [--rounds N] [--no-startup]

Needs root and a writable cpuset hierarchy (v1 on the development host; v2 in the guest, where
``--no-startup`` skips the fresh-venv part). Everything it creates lives under a parent unique
to the run and is removed at the end. Three parts:

- moves: writing ``0`` into v1 ``tasks`` (the calling thread), ``0`` and the PID into
  ``cgroup.procs`` (the whole process), each in and back out, spaced 0.2 s apart (cold: what
  one ``kcm isolate`` pays) and back to back (warm: what a loop pays);
- lifecycle: create + enter + leave + populated + remove of one booking in this process, the
  levels above it existing (as after the first isolate on a list), medians in ms;
- start-up: like bench.py, in a fresh venv install, alternating, medians of the wall time and
  of the CPU time (user + system, from wait4, which the machine's load moves far less than
  the wall time). The commands: ``python -c pass``; what isolate does before it spawns (its
  imports, its stat, the pinning); the same importing the v1 backend too; the same with one
  booking's whole lifecycle; today's ``kcm isolate --pool=infra true``. The difference
  between the second and the fourth is what wiring the cgroup into isolate adds.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kcm.host import cgroups, procfs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # the sibling script: the venv install and the state it benchmarks

# What isolate does about pinning today (its imports, its own stat, the affinity), without and
# with the booking cgroup around it: the difference is what phase 2 adds to every isolate.
PINNING = """
import os, kcm.isolate
from kcm.host import procfs
me = procfs.self_stat("/proc")
os.sched_setaffinity(0, {{{cpus}}})
"""
IMPORTS = PINNING + "import kcm.host.cgroups.v1\n"
LIFECYCLE = """
import os, kcm.isolate
from kcm.host import cgroups, procfs
me = procfs.self_stat("/proc")
backend = cgroups.detect({conf!r}, parent={parent!r})
booking = cgroups.Booking("infra", "{cpus}", me.pid, me.start_time)
backend.create(booking)
origin = backend.enter(booking, "/proc")
os.sched_setaffinity(0, {{{cpus}}})
backend.leave(origin)
assert backend.remove(booking)  # the test-and-remove isolate's exit path uses
"""


def write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def moves(backend: cgroups.Backend, cpus: str, rounds: int) -> list[tuple[str, float, float]]:
    """(way, cold median ms, warm median ms) for each way of moving in and out."""
    booking = cgroups.Booking("infra", cpus, os.getpid(), 1)
    path = backend.create(booking)
    home = backend.cgroup_of("/proc", "self") or "/"
    home_path = f"{backend.hierarchy}{home.rstrip('/')}"
    me = str(os.getpid())
    ways = [("cgroup.procs", "0"), ("cgroup.procs", me)]
    if backend.kind == "v1":
        ways.insert(0, ("tasks", "0"))
    results = []
    try:
        for name, value in ways:
            figures = []
            for spacing in (0.2, 0.0):
                samples = []
                for _ in range(rounds):
                    for target in (path, home_path):
                        time.sleep(spacing)
                        start = time.perf_counter()
                        write(f"{target}/{name}", value)
                        samples.append((time.perf_counter() - start) * 1000)
                figures.append(median(samples))
            results.append((f"`{value}` into `{name}`", figures[0], figures[1]))
    finally:
        backend.leave(home)
        backend.remove(booking)
    return results


def lifecycle(backend: cgroups.Backend, cpus: str, rounds: int) -> dict[str, float]:
    steps: dict[str, list[float]] = {"create": [], "enter": [], "leave": [], "populated": []}
    steps["remove"] = []
    steps["total"] = []
    warm = cgroups.Booking("infra", cpus, os.getpid(), 0)
    backend.create(warm)  # the levels exist from here on, as after a list's first booking
    backend.remove(warm)
    for n in range(rounds):
        booking = cgroups.Booking("infra", cpus, os.getpid(), 10 + n)
        path = backend.path(booking)
        marks = [time.perf_counter()]
        backend.create(booking)
        marks.append(time.perf_counter())
        origin = backend.enter(booking, "/proc")
        marks.append(time.perf_counter())
        backend.leave(origin)
        marks.append(time.perf_counter())
        backend.populated(path)
        marks.append(time.perf_counter())
        backend.remove(booking)
        marks.append(time.perf_counter())
        for i, key in enumerate(("create", "enter", "leave", "populated", "remove")):
            steps[key].append((marks[i + 1] - marks[i]) * 1000)
        steps["total"].append((marks[-1] - marks[0]) * 1000)
        time.sleep(0.05)  # spaced as separate isolates would be
    return {key: median(values) for key, values in steps.items()}


def spawn(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``argv``, in ms."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
    finally:
        os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {argv}")
    return wall * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def measure(
    commands: dict[str, list[str]], env: dict[str, str], rounds: int
) -> dict[str, tuple[float, float]]:
    """Alternating rounds; each command's median wall and CPU times."""
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # warm caches
        for _ in range(3):
            spawn(argv, env)
    for _ in range(rounds):
        for name, argv in commands.items():
            wall, cpu = spawn(argv, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {name: (median(walls[name]), median(cpus[name])) for name in commands}


def startup(cpus: str, parent: str, rounds: int) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="kcm-bench-cg-") as tmp:
        where = Path(tmp)
        bin_dir = bench.make_venv(where / "venv")
        python = str(bin_dir / "python")
        conf = bench.build_isolate_state(bin_dir, where)
        env = {**os.environ, "KCM_PROC_FS": "/proc"}
        return measure(
            {
                "python -c pass": [python, "-c", "pass"],
                "isolate's imports, stat and pinning": [python, "-c", PINNING.format(cpus=cpus)],
                "... + importing the v1 backend": [python, "-c", IMPORTS.format(cpus=cpus)],
                "... + one booking cgroup (detect, create, enter, leave, remove)": [
                    python,
                    "-c",
                    LIFECYCLE.format(conf=conf, parent=parent, cpus=cpus),
                ],
                "kcm isolate --pool=infra true (today, no cgroup)": [
                    str(bin_dir / "kcm"),
                    "isolate",
                    f"--conf-dir={conf}",
                    "--pool=infra",
                    "true",
                ],
            },
            env,
            rounds,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--no-startup", action="store_true")
    options = parser.parse_args()
    parent = f"kcm-bench-{os.getpid()}-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="kcm-bench-cg-state-") as conf:
        backend = cgroups.detect(conf, parent=parent)
        if not isinstance(backend, cgroups.Backend):
            raise SystemExit(f"no cgroup backend: {backend.reason}")
        top = f"{backend.hierarchy}/{parent}"
        cpus = "0"
        print(
            f"{backend.kind} at {backend.hierarchy}; {platform.machine()}, {os.cpu_count()} CPUs,"
            f" Linux {platform.release()}, Python {platform.python_version()}"
        )
        try:
            print("\n| move (in, then back out) | cold median (ms) | warm median (ms) |")
            print("| --- | ---: | ---: |")
            for way, cold, warm in moves(backend, cpus, max(5, options.rounds // 20)):
                print(f"| {way} | {cold:.3f} | {warm:.3f} |")
            steps = lifecycle(backend, cpus, max(10, options.rounds // 4))
            print("\n| one booking's step | median (ms) |")
            print("| --- | ---: |")
            for step, ms in steps.items():
                print(f"| {step} | {ms:.3f} |")
            if not options.no_startup:
                medians = startup(cpus, parent, options.rounds)
                base_wall, base_cpu = medians["python -c pass"]
                print(f"\n{options.rounds} alternating rounds\n")
                print(
                    "| command | wall median (ms) | vs `-c pass` | CPU median (ms) | vs `-c pass` |"
                )
                print("| --- | ---: | ---: | ---: | ---: |")
                for name, (wall, cpu) in medians.items():
                    print(
                        f"| `{name}` | {wall:.2f} | {wall / base_wall:.2f}x | {cpu:.2f} |"
                        f" {cpu / base_cpu:.2f}x |"
                    )
                names = list(medians)
                for i, what in ((0, "wall"), (1, "CPU")):
                    imports = medians[names[2]][i] - medians[names[1]][i]
                    added = medians[names[3]][i] - medians[names[1]][i]
                    print(f"{what}: the cgroup adds {added:.2f} ms ({imports:.2f} of it imports)")
                isolate = medians[names[4]][0]
                added_cpu = medians[names[3]][1] - medians[names[1]][1]
                print(
                    f"isolate today {isolate / base_wall:.2f}x; with the cgroup's CPU time added"
                    f" {(isolate + added_cpu) / base_wall:.2f}x (target <= 1.5x)"
                )
        finally:
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                os.rmdir(dirpath)
    return 0


if __name__ == "__main__":
    procfs.self_stat("/proc")  # fail early without a procfs
    sys.exit(main())
