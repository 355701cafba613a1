"""What reconcile needs of a state's cgroup subtree beyond a booking's life: every booking and
stray (``scan``), the empty levels (``prune``), a list's bookings, a booking's cpuset changed.

Kept out of the package's ``__init__`` so that ``kcm isolate``'s start-up does not load it
(``Backend`` calls in here on first use).
"""

from __future__ import annotations

import errno
import os

from kcm.errors import CgroupError
from kcm.host.cgroups import (
    Backend,
    Booking,
    _child_dirs,
    _is_pool_name,
    is_list_name,
    parse_booking_name,
    read_level_file,
    why,
    write_file,
)


class Scan:
    """What ``scan()`` found under a state's subtree.

    ``bookings``: every well-named booking cgroup (``<pool>/<cpu list>/<pid>-<start>``).
    ``strays``: paths (relative to the subtree) of cgroups kcm did not make: directories whose
    name no pool, CPU list or booking has, and levels above the bookings that hold processes
    themselves (v1 allows it; kcm never does it), the state's own level as ``.``.
    """

    __slots__ = ("bookings", "strays")

    def __init__(self, bookings: list[Booking], strays: list[str]) -> None:
        self.bookings = bookings
        self.strays = strays

    def __repr__(self) -> str:
        return f"Scan({self.bookings!r}, {self.strays!r})"


def scan(backend: Backend) -> Scan:
    """Every booking cgroup under the state's subtree, and the strays (see ``Scan``)."""
    bookings: list[Booking] = []
    strays: list[str] = []
    for pool in _levels(backend.subtree, strays, ""):
        pool_rel = pool.name
        if not _is_pool_name(pool.name):
            strays.append(pool_rel)
            continue
        for cl in _levels(pool.path, strays, pool_rel):
            cl_rel = f"{pool_rel}/{cl.name}"
            if not is_list_name(cl.name):
                strays.append(cl_rel)
                continue
            for entry in _levels(cl.path, strays, cl_rel):
                ids = parse_booking_name(entry.name)
                if ids is None:
                    strays.append(f"{cl_rel}/{entry.name}")
                else:
                    bookings.append(Booking(pool.name, cl.name, ids[0], ids[1]))
    return Scan(bookings, strays)


def _levels(path: str, strays: list[str], rel: str) -> list[os.DirEntry[str]]:
    """The sub-cgroups of a level; the level itself is a stray if it holds processes."""
    procs = read_level_file(path, "cgroup.procs")
    try:
        children = sorted(_child_dirs(path), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {why(e)}") from None
    if procs:
        strays.append(rel or ".")
    return children


def prune(backend: Backend, keep: frozenset[str] = frozenset()) -> int:
    """Remove the empty levels (lists, pools, the state's own) that hold no booking, but
    those in ``keep`` (absolute paths: the cgroups a shield set files of); how many.

    Bookings are never touched (an empty one may be about to be entered), nor ``<parent>``.
    A creator that loses a level to this makes it again (see ``create``).
    """
    removed = 0
    try:
        pools = list(_child_dirs(backend.subtree))
    except FileNotFoundError:
        return 0
    for pool in pools:
        try:
            lists = list(_child_dirs(pool.path))
        except FileNotFoundError:
            continue
        for cl in lists:
            removed += _rmdir_if_idle(cl.path, keep)
        removed += _rmdir_if_idle(pool.path, keep)
    return removed + _rmdir_if_idle(backend.subtree, keep)


def _rmdir_if_idle(path: str, keep: frozenset[str]) -> int:
    if path.rstrip("/") in keep:
        return 0
    try:
        os.rmdir(path)
        return 1
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
            return 0
        raise CgroupError(f"cannot remove {path}: {why(e)}") from None


def bookings(backend: Backend, pool: str, cpu_list: str) -> list[Booking]:
    """The well-named booking cgroups under a list's level (one listing), by name."""
    found = []
    try:
        entries = sorted(_child_dirs(backend.list_path(pool, cpu_list)), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise CgroupError(f"cannot read {backend.list_path(pool, cpu_list)}: {why(e)}") from None
    for entry in entries:
        ids = parse_booking_name(entry.name)
        if ids is not None:
            found.append(Booking(pool, cpu_list, ids[0], ids[1]))
    return found


def set_cpuset(
    backend: Backend, booking: Booking, cpus: str | None = None, mems: str | None = None
) -> None:
    """Change a booking's CPUs and/or memory nodes (v1: within its list's level)."""
    path = backend.path(booking)
    for name, value in (("cpuset.cpus", cpus), ("cpuset.mems", mems)):
        if value is None:
            continue
        try:
            write_file(f"{path}/{name}", value)
        except OSError as e:
            raise CgroupError(f"cannot set {path}/{name} to {value}: {why(e)}") from None
