"""Interrupts from a procfs root: ``interrupts``, ``softirqs``, ``stat`` and ``irq/<n>/``.

Parsing takes each file's text; reading takes the root. Nothing here writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kcm import cpulist
from kcm.errors import EnvironmentProblem, ParseError
from kcm.host.threads import read_text

_S_IWUSR = 0o200


@dataclass(frozen=True, slots=True)
class CounterTable:
    """A per-CPU counter file (``interrupts``, ``softirqs``): its CPUs and one row per source.

    ``rows`` maps a source (``"36"``, ``"LOC"``, ``"TIMER"``) to its counts, in ``cpus`` order;
    rows that are not per CPU (``ERR``, ``MIS``) are left out. ``names`` holds the rest of each
    ``interrupts`` line (chip, hardware IRQ, type and the handlers' names).
    """

    cpus: tuple[int, ...]
    rows: dict[str, tuple[int, ...]]
    names: dict[str, str]

    def count(self, source: str, cpu: int) -> int | None:
        """The count of ``source`` on ``cpu``; ``None`` if the table has no such row or CPU."""
        counts = self.rows.get(source)
        if counts is None or cpu not in self.cpus:
            return None
        return counts[self.cpus.index(cpu)]

    def total(self, cpu: int) -> int:
        """The sum of every per-CPU row on ``cpu`` (0 if the CPU is not in the table)."""
        if cpu not in self.cpus:
            return 0
        i = self.cpus.index(cpu)
        return sum(counts[i] for counts in self.rows.values())


def _header_cpus(line: str, what: str) -> tuple[int, ...]:
    cpus = []
    for token in line.split():
        if not (token.startswith("CPU") and token[3:].isdigit()):
            raise ParseError(f"{what}: not a CPU column {token[:20]!r}")
        cpus.append(int(token[3:]))
    if not cpus:
        raise ParseError(f"{what}: no CPU columns")
    return tuple(cpus)


def _parse_table(text: str, what: str) -> CounterTable:
    lines = text.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise ParseError(f"{what}: empty")
    cpus = _header_cpus(lines[0], what)
    width = len(cpus)
    rows: dict[str, tuple[int, ...]] = {}
    names: dict[str, str] = {}
    for line in lines[1:]:
        label, colon, rest = line.partition(":")
        label = label.strip()
        if not colon or not label:
            continue
        fields = rest.split()
        counts = []
        for field in fields[:width]:
            if not (field.isdigit() and field.isascii()):
                break
            counts.append(int(field))
        if len(counts) != width:
            continue  # ERR, MIS and the like: one system-wide count, not one per CPU
        rows[label] = tuple(counts)
        names[label] = " ".join(fields[width:])
    return CounterTable(cpus, rows, names)


def parse_interrupts(text: str) -> CounterTable:
    """``/proc/interrupts``: numbered IRQs and the per-CPU sources (LOC, RES, CAL, ...)."""
    return _parse_table(text, "interrupts")


def parse_softirqs(text: str) -> CounterTable:
    """``/proc/softirqs``: one row per softirq type (TIMER, NET_RX, SCHED, RCU, ...)."""
    return _parse_table(text, "softirqs")


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """One ``cpuN`` line of ``/proc/stat``, in clock ticks."""

    busy: int  # user + nice + system + irq + softirq + steal
    total: int  # every field but guest and guest_nice, which user and nice already count
    irq: int
    softirq: int


def parse_stat_cpus(text: str) -> dict[int, CpuTimes]:
    """The per-CPU lines of ``/proc/stat`` (``cpu0 ...``), by CPU."""
    out: dict[int, CpuTimes] = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        if not name[3:].isdigit() or len(fields) < 7:
            raise ParseError(f"not a /proc/stat cpu line: {line[:80]!r}")
        values = [int(f) for f in fields[:8] if f.isdigit()]
        if len(values) < 7:
            raise ParseError(f"not a /proc/stat cpu line: {line[:80]!r}")
        values += [0] * (8 - len(values))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        busy = user + nice + system + irq + softirq + steal
        out[int(name[3:])] = CpuTimes(busy, busy + idle + iowait, irq, softirq)
    return out


@dataclass(frozen=True, slots=True)
class IrqAffinity:
    """Where one IRQ may fire (``smp_affinity_list``) and where it does (``effective``).

    ``effective`` is ``None`` where the kernel has no ``effective_affinity_list``. ``settable``
    is false when the kernel made ``smp_affinity_list`` read-only: it does so for managed IRQs
    (whose driver spreads them over CPUs) and per-CPU ones.
    """

    irq: int
    allowed: frozenset[int]
    effective: frozenset[int] | None
    settable: bool
    name: str

    @property
    def fires_on(self) -> frozenset[int]:
        return self.allowed if self.effective is None else self.effective


def list_irqs(root: str) -> list[int]:
    """The IRQ numbers of ``<root>/irq``; empty if there is no such directory."""
    try:
        with os.scandir(f"{root}/irq") as it:
            return sorted(int(e.name) for e in it if e.name.isdigit() and e.name.isascii())
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_irq(root: str, irq: int) -> IrqAffinity | None:
    """The affinity of IRQ ``irq`` under ``root``; ``None`` if it has none (gone, or chained)."""
    base = f"{root}/irq/{irq}"
    allowed_text = read_text(f"{base}/smp_affinity_list")
    if allowed_text is None:
        return None
    effective_text = read_text(f"{base}/effective_affinity_list")
    try:
        settable = bool(os.stat(f"{base}/smp_affinity_list").st_mode & _S_IWUSR)
        # The handlers' names are the subdirectories the kernel makes for them.
        with os.scandir(base) as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise EnvironmentProblem(f"cannot read {base}: {e.strerror}") from None
    return IrqAffinity(
        irq=irq,
        allowed=cpulist.parse(allowed_text),
        effective=None if effective_text is None else cpulist.parse(effective_text),
        settable=settable,
        name=", ".join(names),
    )
