"""The CPU topology as a plain value (built from sysfs by ``kcm.host.sysfs``); pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Core:
    """One physical core: the online hyperthreads that share it."""

    socket: int
    core_id: int
    cpus: tuple[int, ...]
    numa_node: int | None = None


@dataclass(frozen=True)
class Topology:
    """The online CPUs of a host grouped into physical cores, ordered by (socket, core, CPU)."""

    cores: tuple[Core, ...]

    @property
    def cpus(self) -> frozenset[int]:
        return frozenset(cpu for core in self.cores for cpu in core.cpus)

    @property
    def sockets(self) -> tuple[int, ...]:
        return tuple(sorted({core.socket for core in self.cores}))

    @staticmethod
    def from_cores(cores: list[Core]) -> Topology:
        return Topology(tuple(sorted(cores, key=lambda c: (c.socket, c.core_id, c.cpus))))
