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
    (``isolcpus=``, ``nohz_full=``); ``numa_nodes`` every NUMA node, also one without CPUs.
    """

    cores: tuple[Core, ...]
    isolated: frozenset[int] = frozenset()
    nohz_full: frozenset[int] = frozenset()
    numa_nodes: tuple[int, ...] = ()

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

    def socket_cpus(self, socket: int) -> frozenset[int]:
        return frozenset(cpu for core in self.cores if core.socket == socket for cpu in core.cpus)

    def node_cpus(self, node: int) -> frozenset[int]:
        return frozenset(cpu for core in self.cores if core.numa_node == node for cpu in core.cpus)

    def node_of(self, cpu: int) -> int | None:
        for core in self.cores:
            if cpu in core.cpus:
                return core.numa_node
        return None

    @staticmethod
    def from_cores(
        cores: list[Core],
        *,
        isolated: frozenset[int] = frozenset(),
        nohz_full: frozenset[int] = frozenset(),
        numa_nodes: tuple[int, ...] | None = None,
    ) -> Topology:
        if numa_nodes is None:
            numa_nodes = tuple(sorted({c.numa_node for c in cores if c.numa_node is not None}))
        return Topology(
            tuple(sorted(cores, key=lambda c: (c.socket, c.core_id, c.cpus))),
            isolated=isolated,
            nohz_full=nohz_full,
            numa_nodes=tuple(sorted(numa_nodes)),
        )
