"""What the kernel says about CPU isolation: the boot command line, the CPUs isolated or
nohz_full at boot (sysfs), the unbound workqueue cpumask and the default IRQ affinity.

``isolcpus``, ``nohz_full`` and ``rcu_nocbs`` can only be set on the boot command line: kcm
reports them and never pretends to set them. Parsing takes text; nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcm import cpulist
from kcm.errors import ParseError
from kcm.host.sysfs import read_boot_cpus
from kcm.host.threads import read_text

# The kernel parameters the fence reports, in the order it reports them.
BOOT_PARAMETERS = ("isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity")
# isolcpus flags (kernel/sched/isolation.c); the rest of its value is a CPU list.
ISOLCPUS_FLAGS = ("nohz", "domain", "managed_irq")


@dataclass(frozen=True, slots=True)
class BootParameter:
    """One boot parameter as given: its raw value, its flags (isolcpus) and its CPUs.

    ``cpus`` is ``None`` when the value is no CPU list (``rcu_nocbs=all``, a typo), and
    ``all`` is set for the ``all`` keyword.
    """

    name: str
    raw: str
    flags: tuple[str, ...]
    cpus: frozenset[int] | None
    all: bool = False


def parse_cmdline(text: str) -> dict[str, BootParameter]:
    """The isolation parameters of a ``/proc/cmdline`` text, by name (the last one given wins,
    as in the kernel). Words after ``--`` are the init's, not the kernel's."""
    found: dict[str, BootParameter] = {}
    for word in text.split():
        if word == "--":
            break
        name, eq, value = word.partition("=")
        if name not in BOOT_PARAMETERS:
            continue
        value = value.strip('"')
        flags: list[str] = []
        rest = value
        if name == "isolcpus":
            parts = value.split(",")
            while parts and parts[0] in ISOLCPUS_FLAGS:
                flags.append(parts.pop(0))
            rest = ",".join(parts)
        if rest == "all" or (name == "rcu_nocbs" and not eq):
            found[name] = BootParameter(name, value, tuple(flags), None, all=True)
            continue
        try:
            cpus: frozenset[int] | None = cpulist.parse(rest)
        except ParseError:
            cpus = None
        found[name] = BootParameter(name, value, tuple(flags), cpus)
    return found


@dataclass(frozen=True, slots=True)
class Isolation:
    """The host's isolation settings, as read. ``None`` where the kernel has no such file."""

    cmdline: dict[str, BootParameter]
    isolated: frozenset[int] | None
    nohz_full: frozenset[int] | None
    workqueue_cpumask: frozenset[int] | None
    default_smp_affinity: frozenset[int] | None


def read_isolation(proc_root: str, sys_root: str) -> Isolation:
    """Read the boot line, ``devices/system/cpu/{isolated,nohz_full}`` (through
    ``kcm.host.sysfs.read_boot_cpus``, init's reader too), the unbound workqueue cpumask and
    ``irq/default_smp_affinity``; malformed content is a ParseError, or an EnvironmentProblem
    naming the sysfs file."""
    cmdline = read_text(f"{proc_root}/cmdline")
    isolated, nohz = read_boot_cpus(sys_root)
    wq = read_text(f"{sys_root}/devices/virtual/workqueue/cpumask")
    default = read_text(f"{proc_root}/irq/default_smp_affinity")
    return Isolation(
        cmdline=parse_cmdline(cmdline or ""),
        isolated=isolated,
        nohz_full=nohz,
        workqueue_cpumask=None if wq is None else cpulist.parse_mask(wq),
        default_smp_affinity=None if default is None else cpulist.parse_mask(default),
    )
