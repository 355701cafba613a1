"""From a holder's death to its list being booked again: it is the next isolate, not a reconcile.

    .venv/bin/python benchmarks/holder_death.py [--rounds N]

Needs root and a writable cpuset hierarchy (cgroup v1 here). A state of one exclusive list
(``dataplane/1``) and, per round and per way a list is left held:

- **leftover**: ``kcm isolate --pool=dataplane 'sleep 300 &'`` returns, the sleep keeps the
  list (the tasks file names it, a heir);
- **orphan**: ``kcm isolate --pool=dataplane 'exec sleep 300'`` is killed with ``-9``, its sleep
  keeps the list (the tasks file still names the dead kcm);

the holder is then killed and reaped, and at once one ``kcm isolate --pool=dataplane true`` is
started: it must succeed on its first try (no reconcile runs), and its wall time is what the
list's reuse costs. The same isolate on a list left free (its booking released normally) is
the baseline, alternated round by round. kcm is installed into a fresh venv as bench.py does.
Everything lives under a cgroup parent unique to the run, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402  the sibling script: the fresh venv install users get

KCM = ""  # the installed kcm, set by main


def isolate(conf: str, command: str, env: dict[str, str]) -> tuple[int, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [KCM, "isolate", f"--conf-dir={conf}", "--pool=dataplane", command],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return done.returncode, time.perf_counter() - started


def tasks(conf: str) -> list[int]:
    text = Path(conf, "pools/dataplane/1/tasks").read_text().strip()
    return [int(p) for p in text.split(",")] if text else []


def kill_and_reap(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone from /proc (its new parent reaped it)."""
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.0002)


def held_by_leftover(conf: str, env: dict[str, str]) -> int:
    code, _ = isolate(conf, "sleep 300 </dev/null >/dev/null 2>&1 &", env)
    assert code == 0
    (heir,) = tasks(conf)
    return heir


def held_by_orphan(conf: str, env: dict[str, str]) -> int:
    kcm = subprocess.Popen(
        [KCM, "isolate", f"--conf-dir={conf}", "--pool=dataplane", "exec sleep 300"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not (tasks(conf) == [kcm.pid] and children(kcm.pid)):
        if time.monotonic() > deadline:
            raise SystemExit("the holder never started")
        time.sleep(0.002)
    (orphan,) = children(kcm.pid)
    kcm.kill()
    kcm.wait()
    return orphan


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(name))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    options = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.fixtures.cgroups import remove_parent
    from tests.fixtures.sysfs import NO_HT_2, build_sysfs

    parent = f"kcm-bench-{os.getpid()}-{secrets.token_hex(4)}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KCM_", "CMK_"))}
    env = {**base, "KCM_PROC_FS": "/proc", "KCM_CGROUP_PARENT": parent}
    samples: dict[str, list[float]] = {"free": [], "leftover": [], "orphan": []}
    global KCM
    try:
        with tempfile.TemporaryDirectory(prefix="kcm-bench-") as tmp:
            KCM = str(bench.make_venv(Path(tmp) / "venv") / "kcm")
            sys_root = build_sysfs(f"{tmp}/sys", NO_HT_2)
            conf = f"{tmp}/kcm"
            subprocess.run(
                [KCM, "init", f"--conf-dir={conf}", "--num-dp-cores=1", "--num-cp-cores=0"],
                env={**env, "KCM_SYS_FS": sys_root},
                check=True,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(3):  # warm caches
                isolate(conf, "true", env)
            for _ in range(options.rounds):
                code, seconds = isolate(conf, "true", env)
                assert code == 0
                samples["free"].append(seconds)
                for way, hold in (("leftover", held_by_leftover), ("orphan", held_by_orphan)):
                    holder = hold(conf, env)
                    refused, _ = isolate(conf, "true", env)
                    assert refused == 4, f"{way}: the list was not held ({refused})"
                    kill_and_reap(holder)
                    code, seconds = isolate(conf, "true", env)
                    if code != 0:
                        raise SystemExit(f"{way}: the first isolate after the death exited {code}")
                    samples[way].append(seconds)
                    assert tasks(conf) == []
    finally:
        remove_parent(parent)
    free = statistics.median(samples["free"]) * 1000
    print(f"{options.rounds} rounds; every first isolate after a holder's death succeeded")
    print()
    print("| the list was | first isolate after (median ms) | vs a free list |")
    print("| --- | ---: | ---: |")
    print(f"| free (released by its kcm) | {free:.2f} | 1.00x |")
    for way, article in (("leftover", "a"), ("orphan", "an")):
        ms = statistics.median(samples[way]) * 1000
        print(f"| held by {article} {way}, just dead | {ms:.2f} | {ms / free:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
