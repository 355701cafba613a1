"""The CPU topology as a plain value (built from sysfs by ``kcm.host.sysfs``); pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Core:
    """One physical core: the online hyperthreads that share it, its socket and NUMA node."""

    socket: int
    core_id: int
    cpus: tuple[int, ...]
    numa_node: int | None = None


@dataclass(frozen=True)
class Topology:
    """The online CPUs of a host grouped into physical cores, ordered by (socket, core, CPU).

    ``isolated`` and ``nohz_full`` are the CPUs the kernel was booted to keep apart
    (``isolcpus=``, ``nohz_full=``).
    """

    cores: tuple[Core, ...]
    isolated: frozenset[int] = frozenset()
    nohz_full: frozenset[int] = frozenset()

    @property
    def cpus(self) -> frozenset[int]:
        return frozenset(cpu for core in self.cores for cpu in core.cpus)

    @property
    def sockets(self) -> tuple[int, ...]:
        return tuple(sorted({core.socket for core in self.cores}))

    @property
    def isolated_at_boot(self) -> frozenset[int]:
        """Online CPUs the boot line keeps apart: ``isolcpus`` (with its scheduler domain
        flag, the default) shows in ``isolated``; tuned's cpu-partitioning and others use
        ``isolcpus=managed_irq`` with ``nohz_full``, which shows in ``nohz_full`` only."""
        return (self.isolated | self.nohz_full) & self.cpus

    @staticmethod
    def from_cores(
        cores: list[Core],
        *,
        isolated: frozenset[int] = frozenset(),
        nohz_full: frozenset[int] = frozenset(),
    ) -> Topology:
        return Topology(
            tuple(sorted(cores, key=lambda c: (c.socket, c.core_id, c.cpus))),
            isolated=isolated,
            nohz_full=nohz_full,
        )
