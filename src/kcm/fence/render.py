"""The audit report for people (a table) and for scripts (JSON with stable field names, as
README "audit" documents them). Pure: values in, text out."""

from __future__ import annotations

import json
from collections.abc import Sequence

from kcm import cpulist
from kcm.fence.audit import AuditReport, CpuAudit, IrqFinding
from kcm.host.isolation import BOOT_PARAMETERS, BootParameter

JSON_VERSION = 1


def _cpus(cpus: frozenset[int] | None) -> str | None:
    return None if cpus is None else cpulist.format(cpus)


def _param(param: BootParameter | None) -> dict[str, object] | None:
    if param is None:
        return None
    return {
        "raw": param.raw,
        "flags": list(param.flags),
        "cpus": "all" if param.all else _cpus(param.cpus),
    }


def _irq_json(i: IrqFinding) -> dict[str, object]:
    return {
        "irq": i.irq,
        "name": i.name,
        "affinity": cpulist.format(i.affinity),
        "affinity_source": "effective" if i.effective else "smp",
        "settable": i.settable,
        "count": i.count,
    }


def _cpu_json(cpu: CpuAudit) -> dict[str, object]:
    return {
        "cpu": cpu.cpu,
        "cpu_list": cpu.cpu_list,
        "numa_nodes": cpu.nodes,
        "booking": list(cpu.booking),
        "clean": cpu.clean,
        "threads": [
            {
                "pid": t.pid,
                "tid": t.tid,
                "command": t.command,
                "kernel": t.kernel,
                "movable": t.movable,
                "cgroup": t.cgroup,
                "allowed": _cpus(t.allowed),
                "ran": str(t.ran),
                "last_cpu": t.last_cpu,
                "cpu_time_ms": round(t.cpu_time_ns / 1e6, 3),
            }
            for t in cpu.threads
        ],
        "per_cpu_kernel_threads": [
            {"pid": t.pid, "tid": t.tid, "command": t.command} for t in cpu.per_cpu_threads
        ],
        "irqs": [_irq_json(i) for i in cpu.irqs],
        "unmovable_kernel_threads": [
            {"pid": t.pid, "tid": t.tid, "command": t.command, "allowed": _cpus(t.allowed)}
            for t in cpu.unmovable_threads
        ],
        "moving_irqs": [_irq_json(i) for i in cpu.moving_irqs],
        "interrupts_per_s": round(cpu.interrupts_per_s, 1),
        "softirqs_per_s": round(cpu.softirqs_per_s, 1),
        "softirqs_per_s_by_type": {name: round(rate, 1) for name, rate in cpu.softirqs},
        "irq_time_pct": None if cpu.irq_time_pct is None else round(cpu.irq_time_pct, 2),
        "softirq_time_pct": (
            None if cpu.softirq_time_pct is None else round(cpu.softirq_time_pct, 2)
        ),
        "load_balancing": {"off": cpu.load_balancing.off, "why": cpu.load_balancing.why},
        "isolated_at_boot": cpu.isolated_at_boot,
        "nohz_full_at_boot": cpu.nohz_full_at_boot,
        "cmdline": dict(cpu.cmdline),
        "workqueue": cpu.workqueue,
        "default_irq_affinity": cpu.default_irq_affinity,
    }


def to_json(report: AuditReport) -> str:
    iso = report.isolation
    doc = {
        "version": JSON_VERSION,
        "clean": report.clean,
        "conf_dir": report.conf_dir,
        "interval_s": round(report.interval_s, 3),
        "shield": report.shield,
        "cgroup": {"version": report.cgroup_version, "mount": report.cgroup_mount},
        "boot": {
            "cmdline": {name: _param(iso.cmdline.get(name)) for name in BOOT_PARAMETERS},
            "isolated": _cpus(iso.isolated),
            "nohz_full": _cpus(iso.nohz_full),
        },
        "workqueue_cpumask": _cpus(iso.workqueue_cpumask),
        "default_smp_affinity": _cpus(iso.default_smp_affinity),
        "summary": {
            "dataplane_cpus": cpulist.format(c.cpu for c in report.cpus),
            "intruding_threads": sum(len(c.threads) for c in report.cpus),
            "intruding_irqs": sum(len(c.irqs) for c in report.cpus),
        },
        "cpus": [_cpu_json(c) for c in report.cpus],
    }
    # One line, keys sorted: the json module's C encoder does not indent, and on a host of
    # thousands of threads the pure-Python indenting one took most of the audit's time.
    return json.dumps(doc, sort_keys=True) + "\n"


def _columns(
    header: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: set[int]
) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append("    " + "  ".join(cells).rstrip())
    return out


def _yes_no(value: bool | None, yes: str, no: str, unknown: str) -> str:
    return unknown if value is None else (yes if value else no)


def _cpu_table(cpu: CpuAudit, report: AuditReport) -> list[str]:
    iso = report.isolation
    booking = ",".join(map(str, cpu.booking)) or "none"
    verdict = (
        "clean" if cpu.clean else f"INTRUDED: {len(cpu.threads)} thread(s), {len(cpu.irqs)} IRQ(s)"
    )
    lines = [
        f"CPU {cpu.cpu}  (list {cpu.cpu_list}, NUMA node {cpu.nodes}, booked by {booking})"
        f"  {verdict}"
    ]
    lb = cpu.load_balancing
    lines.append(f"  load balancing  {'off' if lb.off else 'ON'}: {lb.why}")
    boot = [
        _yes_no(cpu.isolated_at_boot, "isolated", "not isolated", "isolation unknown"),
        _yes_no(cpu.nohz_full_at_boot, "nohz_full", "not nohz_full", "no nohz_full support"),
    ]
    lines.append(f"  at boot         {', '.join(boot)}")
    wq = _cpus(iso.workqueue_cpumask)
    lines.append(
        "  workqueues      "
        + _yes_no(
            cpu.workqueue,
            f"unbound work may run here (cpumask {wq})",
            f"kept off (cpumask {wq})",
            "no unbound workqueue cpumask",
        )
    )
    default = _cpus(iso.default_smp_affinity)
    lines.append(
        "  new IRQs        "
        + _yes_no(
            cpu.default_irq_affinity,
            f"may land here (default_smp_affinity {default})",
            f"kept off (default_smp_affinity {default})",
            "no default_smp_affinity",
        )
    )
    irq_time = "" if cpu.irq_time_pct is None else f" (irq time {cpu.irq_time_pct:.2f}%)"
    lines.append(f"  interrupts      {cpu.interrupts_per_s:.1f}/s{irq_time}")
    soft_time = (
        "" if cpu.softirq_time_pct is None else f", softirq time {cpu.softirq_time_pct:.2f}%"
    )
    busy = [f"{name} {rate:.1f}" for name, rate in cpu.softirqs if rate > 0]
    kinds = f" ({', '.join(busy)}{soft_time})" if busy or soft_time else ""
    lines.append(f"  softirqs        {cpu.softirqs_per_s:.1f}/s{kinds}")
    if cpu.threads:
        lines.append(f"  threads that may run or ran here ({len(cpu.threads)}):")
        rows = [
            (
                str(t.pid),
                str(t.tid),
                str(t.ran),
                str(t.last_cpu),
                f"{t.cpu_time_ns / 1e6:.1f}",
                _cpus(t.allowed) or "?",
                "yes" if t.movable else "no",
                t.cgroup or "?",
                f"[{t.command}]" if t.kernel else t.command,
            )
            for t in cpu.threads
        ]
        header = ("PID", "TID", "RAN", "CPU", "CPU-MS", "ALLOWED", "MOVABLE", "CGROUP", "COMMAND")
        lines += _columns(header, rows, {0, 1, 3, 4})
    else:
        lines.append("  threads         none but the booking's")
    if cpu.irqs:
        lines.append(f"  IRQs that fire here ({len(cpu.irqs)}):")
        irq_rows = [
            (
                str(i.irq),
                str(i.count),
                f"{cpulist.format(i.affinity)} ({'effective' if i.effective else 'smp'})",
                "yes" if i.settable else "no (managed or per-CPU)",
                i.name,
            )
            for i in cpu.irqs
        ]
        lines += _columns(("IRQ", "COUNT", "AFFINITY", "SETTABLE", "NAME"), irq_rows, {0, 1})
    else:
        lines.append("  IRQs            none")
    if cpu.moving_irqs:
        names = ", ".join(f"{i.irq} ({i.name or 'unnamed'})" for i in cpu.moving_irqs)
        lines.append(f"  IRQs steered off, moving when they next fire (none fired here): {names}")
    if cpu.per_cpu_threads:
        names = ", ".join(f"{t.command} ({t.tid})" for t in cpu.per_cpu_threads)
        lines.append(f"  per-CPU kernel threads, bound here by design: {names}")
    if cpu.unmovable_threads:
        names = ", ".join(f"{t.command} ({t.tid})" for t in cpu.unmovable_threads)
        lines.append(
            "  kernel threads allowed here that the kernel will not move, not seen running"
            f" here: {names}"
        )
    return lines


def _boot_line(report: AuditReport) -> str:
    parts = []
    for name in BOOT_PARAMETERS:
        param = report.isolation.cmdline.get(name)
        parts.append(f"{name}={param.raw}" if param is not None else f"no {name}")
    return "boot line: " + ", ".join(parts) + " (boot-only: kcm reports them and never sets them)"


def to_table(report: AuditReport) -> str:
    threads = sum(len(c.threads) for c in report.cpus)
    irqs = sum(len(c.irqs) for c in report.cpus)
    cpus = cpulist.format(c.cpu for c in report.cpus) or "none"
    verdict = "clean" if report.clean else f"INTRUDED ({threads} thread(s), {irqs} IRQ(s))"
    lines = [
        f"kcm audit of {report.conf_dir}: dataplane CPUs {cpus}, over"
        f" {report.interval_s:.2f} s: {verdict}",
        f"shield: {report.shield or 'none'}; cpusets: "
        + (
            f"cgroup {report.cgroup_version} at {report.cgroup_mount}"
            if report.cgroup_version
            else "no cpuset hierarchy"
        ),
        _boot_line(report),
    ]
    for cpu in report.cpus:
        lines.append("")
        lines += _cpu_table(cpu, report)
    lines.append("")
    lines.append(
        "RAN: yes = ran on this CPU in the interval; maybe = was here at the start and ran;"
        " not-seen = ran, not seen here; no = did not run here"
    )
    return "\n".join(lines) + "\n"
