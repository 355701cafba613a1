"""A dead isolate's PID handed to an unrelated live process: reconcile frees the list anyway.

Each trial books the exclusive list with ``kcm isolate``, kills kcm and its command with
SIGKILL (so the PID stays in the tasks file), then starts another process under that very PID
through ``/proc/sys/kernel/ns_last_pid`` (root only). The impostor alternates between a plain
``sleep`` pinned to the list's CPUs, so affinity cannot tell it apart, and another
``kcm isolate`` that legitimately holds a list of a shared pool under the reused PID.
``kcm reconcile`` must free the exclusive list every time and leave the impostor alone.

    .venv/bin/python -m stress.pid_reuse --trials 1000
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from stress import common
from stress.common import KCM, Report, kcm_env, make_state, scan
from stress.common import run as run_cmd

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
EXCLUSIVE = "dataplane/1"
SHARED = "infra/0"


def wait_for(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.002)
    return False


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def spawn_as(pid: int, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """Start ``argv`` as PID ``pid`` (the kernel hands out ns_last_pid + 1 next); None if raced."""
    for _ in range(100):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


def become_subreaper() -> None:
    """Adopt our orphaned descendants, so a killed isolate's command is reaped at once.

    Left to PID 1, a container's init may take seconds to reap it, and until then the PID
    cannot be handed out again.
    """
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class _Refused(Exception):
    pass


def trial(conf: str, env: dict[str, str], n: int, report: Report) -> None:
    holder = subprocess.Popen(
        [KCM, "isolate", f"--conf-dir={conf}", "--pool=dataplane", "exec sleep 600"],
        env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def booked() -> bool:
        if holder.poll() is not None:
            raise _Refused(holder.communicate()[1].strip())
        return scan(conf).tasks[EXCLUSIVE] == [holder.pid] and bool(children(holder.pid))

    try:
        if not wait_for(booked):
            raise _Refused("it did not book within 10 s")
    except _Refused as e:
        report.fail(f"trial {n}: isolate never booked {EXCLUSIVE}: {e}")
        holder.kill()
        holder.wait()
        run_cmd([KCM, "reconcile", f"--conf-dir={conf}"], env)
        return
    command = children(holder.pid)[0]
    holder.kill()  # kill -9 of kcm: its PID stays listed, with its owner record
    holder.wait()
    os.kill(command, signal.SIGKILL)
    os.waitpid(command, 0)  # an orphan reparented to us (the subreaper): its PID is free now
    target = holder.pid
    as_isolate = n % 2 == 1
    if as_isolate:
        argv = [KCM, "isolate", f"--conf-dir={conf}", "--pool=infra", "exec sleep 600"]
    else:
        argv = ["sleep", "600"]
    impostor = spawn_as(target, argv, env)
    if impostor is None:
        report.count("reuse_not_arranged")
        run_cmd([KCM, "reconcile", f"--conf-dir={conf}"], env)
        return
    report.count("reuses_arranged")
    try:
        if as_isolate:
            report.count("impostor_kcm_isolate")
            if not wait_for(lambda: scan(conf).tasks[SHARED] == [target]):
                report.fail(f"trial {n}: the impostor isolate never booked {SHARED}")
        else:
            report.count("impostor_pinned_sleep")
            os.sched_setaffinity(target, {1})  # the list's CPU: affinity cannot tell
        before = scan(conf).tasks
        if before[EXCLUSIVE] != [target]:
            report.fail(f"trial {n}: expected {EXCLUSIVE} to list {target}: {before}")
        result = run_cmd([KCM, "reconcile", f"--conf-dir={conf}"], env)
        after = scan(conf)
        if result.returncode != 0:
            report.fail(f"trial {n}: reconcile exited {result.returncode}: {result.stderr}")
        if after.tasks[EXCLUSIVE]:
            report.count("lists_not_freed")
            report.fail(f"trial {n}: {EXCLUSIVE} still holds {after.tasks[EXCLUSIVE]}")
        else:
            report.count("lists_freed")
        if f"{EXCLUSIVE}/.owner-{target}" in after.hidden:
            report.fail(f"trial {n}: the dead isolate's owner record survived")
        if impostor.poll() is not None:
            report.count("impostors_harmed")
            report.fail(f"trial {n}: the impostor died")
        if as_isolate and after.tasks[SHARED] != [target]:
            report.count("impostors_harmed")
            report.fail(f"trial {n}: the impostor lost its own list: {after.tasks[SHARED]}")
    finally:
        impostor.send_signal(signal.SIGTERM)  # an impostor isolate releases its list
        impostor.wait(timeout=30)
    if scan(conf).tasks[SHARED]:
        report.fail(f"trial {n}: {SHARED} not released by the impostor")


def stress(workdir: str, trials: int, time_limit: float) -> Report:
    report = Report("pid_reuse", requested_trials=trials)
    if os.geteuid() != 0 or not os.access(NS_LAST_PID, os.W_OK):
        report.fail(f"{NS_LAST_PID} is not writable: run as root")
        return report
    conf = make_state(
        os.path.join(workdir, "kcm"), {"dataplane": (True, ["1"]), "infra": (False, ["0"])}
    )
    become_subreaper()
    env = kcm_env(KCM_PROC_FS="/proc")
    for key in ("reuses_arranged", "lists_freed", "lists_not_freed", "impostors_harmed"):
        report.count(key, 0)
    deadline = time.monotonic() + time_limit
    for n in range(trials):
        if time.monotonic() > deadline:
            report.fail(f"time limit reached after {n} trials")
            break
        trial(conf, env, n, report)
        report.count("trials")
    final = scan(conf)
    if any(final.tasks.values()) or final.hidden:
        report.fail(f"left at the end: {final.tasks} {final.hidden}")
    return report


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--time-limit", type=float, default=900)
    return common.main(p, argv, "pid-reuse", lambda a, d: stress(d, a.trials, a.time_limit))


if __name__ == "__main__":
    sys.exit(main())
