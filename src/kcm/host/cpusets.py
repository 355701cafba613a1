"""The cpuset tree under a cgroup root, read only: which hierarchy holds cpuset (v1 or v2),
each cpuset's CPUs, load balancing (v1) and partition (v2). Nothing here writes.

Booking cgroups are ``kcm.host.cgroups``' business; this is the whole-tree view the fence
needs to judge load balancing and to plan the shield.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kcm import cpulist
from kcm.errors import ParseError
from kcm.host.cgroups import find_hierarchy
from kcm.host.threads import read_text


@dataclass(frozen=True, slots=True)
class Cpuset:
    """One cgroup of the cpuset hierarchy, as read. ``path`` is ``/`` for the root.

    ``cpus`` is ``cpuset.cpus`` exactly as the kernel printed it (v2: empty means "what the
    parent has"); ``effective`` the CPUs it really has. v1 only: ``load_balance``
    (``cpuset.sched_load_balance``) and ``cpu_exclusive``. v2 only: ``partition``
    (``member``, ``root``, ``isolated``, or ``... invalid (why)``) and ``exclusive``
    (``cpuset.cpus.exclusive``, kernel 6.7 and later). ``None`` where the file is absent.
    """

    path: str
    cpus: str
    effective: frozenset[int]
    mems: str | None = None
    load_balance: bool | None = None
    cpu_exclusive: bool | None = None
    partition: str | None = None
    exclusive: str | None = None

    @property
    def isolated_partition(self) -> bool:
        """A valid v2 isolated partition: no load balancing on its CPUs."""
        return self.partition == "isolated"


@dataclass(frozen=True, slots=True)
class CpusetTree:
    """The cpuset hierarchy: ``version`` ``v1`` or ``v2``, its mount, every cpuset (parents
    before children) and, on v2, the root's ``cpuset.cpus.isolated`` where the kernel has it."""

    version: str
    mount: str
    cpusets: tuple[Cpuset, ...]
    isolated: frozenset[int] | None = None

    def covering(self, cpu: int) -> list[Cpuset]:
        return [cs for cs in self.cpusets if cpu in cs.effective]


def _file(base: str, name: str) -> str | None:
    text = read_text(f"{base}/cpuset.{name}")
    return None if text is None else text.strip()


def _flag(text: str | None) -> bool | None:
    return None if text is None else text == "1"


def read_tree(root: str) -> CpusetTree | None:
    """The cpuset tree under the cgroup root ``root``; ``None`` if no hierarchy holds cpuset
    (found by ``kcm.host.cgroups.find_hierarchy``, the one detection the bookings use too).

    A cgroup removed while the tree is walked is skipped; malformed content is a ParseError.
    """
    found = find_hierarchy(root)
    if found is None:
        return None
    version, mount = found
    cpusets: list[Cpuset] = []
    for dirpath, dirnames, _ in os.walk(mount):
        dirnames.sort()
        rel = "/" + os.path.relpath(dirpath, mount) if dirpath != mount else "/"
        cs = _read_cpuset(dirpath, rel, version)
        if cs is not None:
            cpusets.append(cs)
    isolated = None
    if version == "v2":
        text = read_text(f"{mount}/cpuset.cpus.isolated")
        isolated = None if text is None else cpulist.parse(text)
    return CpusetTree(version, mount, tuple(cpusets), isolated)


def _read_cpuset(base: str, rel: str, version: str) -> Cpuset | None:
    if version == "v1":
        cpus = _file(base, "cpus")
        if cpus is None:
            return None
        effective = _file(base, "effective_cpus")
        return Cpuset(
            path=rel,
            cpus=cpus,
            effective=cpulist.parse(cpus if effective is None else effective),
            mems=_file(base, "mems"),
            load_balance=_flag(_file(base, "sched_load_balance")),
            cpu_exclusive=_flag(_file(base, "cpu_exclusive")),
        )
    # v2: the root has no cpuset.cpus, only cpuset.cpus.effective; a child has cpuset files
    # only where its parent enabled the controller.
    effective = _file(base, "cpus.effective")
    if effective is None:
        return None
    cpus = _file(base, "cpus")
    try:
        return Cpuset(
            path=rel,
            cpus="" if cpus is None else cpus,
            effective=cpulist.parse(effective),
            mems=_file(base, "mems"),
            partition=_file(base, "cpus.partition"),
            exclusive=_file(base, "cpus.exclusive"),
        )
    except ParseError as e:
        raise ParseError(f"{base}: {e}") from None
