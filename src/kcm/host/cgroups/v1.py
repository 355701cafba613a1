"""The cgroup v1 cpuset backend: booking cgroups in ``<root>/cpuset``.

v1 refuses a task in a cpuset whose ``cpuset.cpus`` or ``cpuset.mems`` is empty (ENOSPC), and
a level's CPUs and nodes must lie within its parent's (EACCES), so every level is initialised
top-down before anything goes below it: levels above the list get their parent's CPUs and
nodes, the list level and the booking the list's CPUs, all nodes for now.

Concurrent creators: a level another kcm has made but not yet initialised is empty, and any
write below it fails with EACCES. Whoever meets that initialises the levels itself, top-down,
writing only what is empty (or, at the list level, different), with the same values every
creator would write: two creators racing write the same bytes, and the second is a no-op.
"""

from __future__ import annotations

import os

from kcm.errors import CgroupError
from kcm.host.cgroups import (
    Backend,
    Booking,
    read_file,
    read_level_file,
    same_cpus,
    why,
    write_file,
)

CPUS = "cpuset.cpus"
MEMS = "cpuset.mems"


class CpusetV1(Backend):
    """Booking cgroups in the v1 cpuset hierarchy."""

    kind = "v1"
    MOVE_FILE = "tasks"  # "0" moves the calling thread without the ~10 ms RCU wait of procs
    ROOT_CPUS = CPUS  # the top cpuset's: the online CPUs
    ROOT_MEMS = MEMS
    __slots__ = ()

    def _make_booking(
        self, path: str, list_path: str, cpus: str, mems: str | None, *, strict: bool
    ) -> bool:
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except FileNotFoundError:
            return False
        except OSError as e:
            raise CgroupError(f"cannot create {path}: {why(e)}") from None
        try:
            all_mems = read_file(f"{list_path}/{MEMS}").strip()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise CgroupError(f"cannot read {list_path}/{MEMS}: {why(e)}") from None
        if not all_mems:
            return False
        mems = mems or all_mems
        for name, value in ((CPUS, cpus), (MEMS, mems)):
            try:
                write_file(f"{path}/{name}", value)
            except OSError as e:
                import errno  # on a failure only: off isolate's start-up path

                # A level not initialised yet refuses a write below it (EACCES: not within
                # the parent; ENOSPC: nothing to run on); ENOENT: it was just removed.
                if not strict and e.errno in (errno.EACCES, errno.ENOSPC):
                    return False
                if e.errno == errno.ENOENT:
                    return False
                raise CgroupError(_write_failure(path, name, value, e)) from None
        return True

    def _make_levels(self, booking: Booking, list_cpus: str) -> bool:
        names = [*self.parent.split("/"), self.state_id, booking.pool, booking.cpu_list]
        above = self.hierarchy
        try:
            cpus = read_file(f"{above}/{CPUS}").strip()
            mems = read_file(f"{above}/{MEMS}").strip()
        except OSError as e:
            raise CgroupError(f"cannot read the cpuset of {above}: {why(e)}") from None
        for depth, name in enumerate(names):
            level = f"{above}/{name}"
            try:
                os.mkdir(level, 0o755)
            except FileExistsError:
                pass
            except FileNotFoundError:
                return False  # ``above`` was just removed: start again from the top
            except OSError as e:
                raise CgroupError(f"cannot create {level}: {why(e)}") from None
            want_cpus = list_cpus if depth == len(names) - 1 else None
            level_values = _initialise(level, cpus, mems, want_cpus)
            if level_values is None:
                return False
            cpus, mems = level_values
            above = level
        return True


def _initialise(level: str, cpus: str, mems: str, want_cpus: str | None) -> tuple[str, str] | None:
    """Give ``level`` CPUs and nodes if it has none (the list level: exactly ``want_cpus``).

    ``cpus``/``mems`` are the parent's. Returns the level's own, or None if it vanished.
    """
    have_cpus = read_level_file(level, CPUS)
    have_mems = read_level_file(level, MEMS)
    if have_cpus is None or have_mems is None:
        return None
    if want_cpus is not None and not same_cpus(have_cpus, want_cpus):
        new_cpus = want_cpus
    elif not have_cpus:
        new_cpus = cpus
    else:
        new_cpus = ""
    # CPUs before nodes or nodes before CPUs: either order passes v1's checks, since a level's
    # children are either initialised within its values or still empty.
    for name, value in ((CPUS, new_cpus), (MEMS, "" if have_mems else mems)):
        if not value:
            continue
        try:
            write_file(f"{level}/{name}", value)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CgroupError(_write_failure(level, name, value, e)) from None
    return (new_cpus or have_cpus, have_mems or mems)


def _write_failure(path: str, name: str, value: str, e: OSError) -> str:
    import errno

    if e.errno == errno.EACCES:
        hint = "not within the level above it, or not permitted"
    elif e.errno == errno.EBUSY:
        hint = "a cgroup below it has CPUs or nodes outside the new value"
    elif e.errno in (errno.EINVAL, errno.ERANGE):
        hint = "no such online CPUs or memory nodes"
    else:
        hint = why(e)
    code = errno.errorcode.get(e.errno or 0, str(e.errno))
    return f"cannot set {path}/{name} to {value}: {hint} ({code})"
