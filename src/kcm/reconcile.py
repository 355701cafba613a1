"""Clear tasks whose process is gone (or whose PID now names another process); check affinity."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from kcm import cpulist
from kcm.host import procfs
from kcm.state import OWNER_PREFIX, TMP_PREFIX, StateDir, lock_timeout, parse_owner


@dataclass(frozen=True)
class Mismatch:
    """A live task running on other CPUs than its list's."""

    pid: int
    pool: str
    cpu_list: str
    allowed: str


@dataclass
class Report:
    """What one reconcile pass did and found."""

    removed: list[tuple[str, str, int]] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    cleaned: int = 0

    def summary(self) -> str:
        removed = ", ".join(f"{pid} from {pool}/{cl}" for pool, cl, pid in self.removed)
        return (
            f"removed {len(self.removed)} dead task(s){': ' + removed if removed else ''};"
            f" {len(self.mismatches)} affinity mismatch(es)"
        )


def _is_dead(root: str, pid: int, owner_start: int | None) -> bool:
    stat = procfs.read_stat(root, pid)
    if not procfs.is_alive(stat):
        return True
    # The PID lives, but if kcm isolate recorded a start time, a different one means the
    # kernel has handed the PID of a dead isolate to an unrelated process.
    return owner_start is not None and stat is not None and stat.start_time != owner_start


def reconcile(conf_dir: str, root: str) -> Report:
    """One pass: remove dead PIDs under the lock, then compare live tasks' affinity."""
    report = Report()
    live: list[tuple[str, str, int]] = []
    with StateDir(conf_dir) as state:
        state.lock(lock_timeout())
        for pool in state.read_pools().values():
            for cl in pool.cpu_lists.values():
                hidden = state.hidden_entries(pool.name, cl.cpus)
                owners: dict[int, int | None] = {}
                junk: list[str] = []
                for name, text in hidden.items():
                    if name.startswith(OWNER_PREFIX):
                        pid_text = name[len(OWNER_PREFIX) :]
                        if pid_text.isdigit():
                            owners[int(pid_text)] = parse_owner(text)
                        else:
                            junk.append(name)
                    elif name.startswith(TMP_PREFIX):
                        writer = name[len(TMP_PREFIX) :].partition("-")[0]
                        if not writer.isdigit() or not procfs.is_alive(
                            procfs.read_stat(root, writer)
                        ):
                            junk.append(name)
                dead = [pid for pid in cl.tasks if _is_dead(root, pid, owners.get(pid))]
                if dead:
                    kept = [pid for pid in cl.tasks if pid not in dead]
                    state.set_tasks(pool.name, cl.cpus, kept, dead)
                    report.removed.extend((pool.name, cl.cpus, pid) for pid in dead)
                else:
                    kept = cl.tasks
                # Owner records of PIDs no longer on the list (a killed isolate between writes);
                # those of the dead were removed with them.
                junk += [f"{OWNER_PREFIX}{pid}" for pid in owners if pid not in cl.tasks]
                if junk:
                    state.remove_hidden(pool.name, cl.cpus, junk)
                    report.cleaned += len(junk)
                live.extend((pool.name, cl.cpus, pid) for pid in kept)
    for pool_name, cl_name, pid in live:
        allowed = procfs.read_cpus_allowed_list(root, pid)
        if allowed is None:
            continue  # exited since the pass; the next pass removes it
        try:
            same = cpulist.parse(allowed) == cpulist.parse(cl_name)
        except ValueError:
            same = False
        if not same:
            report.mismatches.append(Mismatch(pid, pool_name, cl_name, allowed))
    return report


def print_mismatches(report: Report) -> None:
    for m in report.mismatches:
        print(
            f"kcm: affinity mismatch: pid {m.pid} in {m.pool}/{m.cpu_list}"
            f" may run on CPUs {m.allowed}, expected {m.cpu_list}",
            file=sys.stderr,
        )


def main(conf_dir: str, interval: float | None) -> int:
    """``kcm reconcile``: one pass (exit 1 on affinity mismatches), or a pass every interval."""
    root = procfs.proc_root("kcm reconcile")
    if interval is None:
        report = reconcile(conf_dir, root)
        print_mismatches(report)
        return 1 if report.mismatches else 0
    from kcm.loop import run_every

    def one_pass() -> str:
        report = reconcile(conf_dir, root)
        print_mismatches(report)
        return report.summary()

    return run_every(interval, one_pass, "reconcile")
