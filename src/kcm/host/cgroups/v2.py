"""The cgroup v2 backend: booking cgroups in the unified hierarchy, with the cpuset controller.

A cgroup has cpuset files only when its parent lists ``cpuset`` in ``cgroup.subtree_control``,
which needs the same of the grandparent, and so on up to the root: kcm enables ``+cpuset`` on
every level from the hierarchy's root down to the list's, where it is missing (on a systemd host
with ``contrib/systemd/kcm-bookings.service`` the levels above ``<parent>`` have it already and
are only read). The booking gets ``cpuset.cpus`` = the list, ``cpuset.mems`` = every node the
root has. The rule that a cgroup with controllers enabled for its children holds no processes
is kept by construction: only bookings, the leaves, ever hold processes.

Concurrent creators: a level another kcm has made without enabling cpuset yet gives its
children no cpuset files; whoever meets that enables it itself, top-down (``+cpuset`` again is
a no-op).
"""

from __future__ import annotations

import os

from kcm import cpulist
from kcm.errors import CgroupError, ParseError
from kcm.host.cgroups import Backend, Booking, read_file, read_level_file, why, write_file

CPUS = "cpuset.cpus"
MEMS = "cpuset.mems"
SUBTREE_CONTROL = "cgroup.subtree_control"


class Unified(Backend):
    """Booking cgroups in a cgroup v2 hierarchy that has the cpuset controller."""

    kind = "v2"
    # cgroup.threads can't move a thread between domain cgroups: the whole process moves.
    MOVE_FILE = "cgroup.procs"
    ROOT_CPUS = "cpuset.cpus.effective"
    ROOT_MEMS = "cpuset.mems.effective"
    LEVEL_CPUS = "cpuset.cpus.effective"
    __slots__ = ()

    def usable_cpus(self, cpu_list: str, pool: str | None = None) -> str:
        """The CPUs of ``cpu_list`` the hierarchy has, counting those of a partition at the
        list's own level: ``kcm shield`` makes the list's level an isolated partition, which
        takes its CPUs out of the root's effective CPUs and gives them to the level."""
        have = super().usable_cpus(cpu_list)
        if have == cpu_list or pool is None:
            return have
        text = read_level_file(self.list_path(pool, cpu_list), self.LEVEL_CPUS)
        try:
            level = cpulist.parse(text) if text else frozenset()
        except ParseError:
            return have
        wanted = cpulist.parse(cpu_list)
        got = (cpulist.parse(have) if have else frozenset()) | (wanted & level)
        return cpu_list if got == wanted else cpulist.format(got)

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
        if mems is None:
            root_mems = f"{self.hierarchy}/{self.ROOT_MEMS}"
            try:
                mems = read_file(root_mems).strip()
            except OSError as e:
                raise CgroupError(f"cannot read {root_mems}: {why(e)}") from None
        for name, value in ((CPUS, cpus), (MEMS, mems)):
            try:
                write_file(f"{path}/{name}", value)
            except OSError as e:
                import errno  # as in kcm.host.cgroups: only once a call failed

                # No such file (EACCES from the O_CREAT, or ENOENT): cpuset is not enabled
                # in the list level's subtree_control yet. Seen in the guest with 8 creators
                # racing even after the levels were made: the caller makes them again and
                # retries; a file that is there and refuses is an error.
                if e.errno == errno.ENOENT or (
                    e.errno == errno.EACCES and (not strict or not os.path.exists(f"{path}/{name}"))
                ):
                    return False
                raise CgroupError(f"cannot set {path}/{name} to {value}: {why(e)}") from None
        return True

    def _make_levels(self, booking: Booking, list_cpus: str) -> bool:
        names = [*self.parent.split("/"), self.state_id, booking.pool, booking.cpu_list]
        level = self.hierarchy
        for name in names:
            if not _enable_cpuset(level):
                return False
            level = f"{level}/{name}"
            try:
                os.mkdir(level, 0o755)
            except FileExistsError:
                pass
            except FileNotFoundError:
                return False
            except OSError as e:
                raise CgroupError(f"cannot create {level}: {why(e)}") from None
        return _enable_cpuset(level)

    def populated(self, path: str) -> bool:
        """``populated 1`` in ``cgroup.events``: the kernel's own count, descendants included."""
        try:
            text = read_file(f"{path}/cgroup.events")
        except FileNotFoundError:
            return False
        except OSError as e:
            raise CgroupError(f"cannot read {path}/cgroup.events: {why(e)}") from None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "populated":
                return value.strip() == "1"
        raise CgroupError(f"{path}/cgroup.events has no populated line")


def _enable_cpuset(level: str) -> bool:
    """``+cpuset`` in ``level``'s subtree_control unless it is there; False if it vanished."""
    control = f"{level}/{SUBTREE_CONTROL}"
    enabled = read_level_file(level, SUBTREE_CONTROL)
    if enabled is None:
        return False
    if "cpuset" in enabled.split():
        return True
    try:
        write_file(control, "+cpuset")
    except OSError as e:
        import errno

        if e.errno in (errno.EBUSY, errno.EOPNOTSUPP):
            # EBUSY: this level holds processes. EOPNOTSUPP: cpuset is threaded, so a level
            # with processes may still enable it, but then its children are "domain invalid"
            # (cgroup.type) and the failure shows one level down.
            where = "it" if e.errno == errno.EBUSY else "the level above it"
            hint = (
                f"{where} holds processes, and a v2 cgroup that delegates controllers to"
                " bookings may not (a systemd unit's own cgroup: see"
                " contrib/systemd/kcm-bookings.service)"
            )
        elif e.errno in (errno.ENOENT, errno.EINVAL):
            hint = "cpuset is not available there (the level above does not delegate it)"
        else:
            hint = why(e)
        raise CgroupError(f"cannot enable cpuset in {control}: {hint}") from None
    return True
