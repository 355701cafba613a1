"""Text a user reads: the plan of a dry run and the table of --status."""

from __future__ import annotations

from kcm import cpulist
from spp_runner import eal
from spp_runner.escape import shown
from spp_runner.launch import SessionStatus
from spp_runner.plan import Plan, Role, Window


def node_text(w: Window) -> str:
    """The NUMA node a window's process runs on, as the dry run shows it."""
    if w.auto_cores:
        if w.near is None:
            return "kcm's ($KCM_NUMA_NODE)"
        if w.near_node is None:
            return f"kcm's (near {w.near}, which is on no node)"
        return f"{w.near_node} if kcm has a free list there (near {w.near})"
    if w.cores is None:
        return "-"
    return ",".join(map(str, w.nodes)) or "?"


def render_plan(plan: Plan) -> str:
    """Every window with its cores (and, on a host of several NUMA nodes, their node) and
    exact command line, then images and clean-up."""
    lines = [f"session '{plan.session}' from {plan.config_path}: {len(plan.windows)} windows"]
    width = max(len(w.name) for w in plan.windows)
    digits = len(str(len(plan.windows) - 1))
    cores_width = max(len(w.cores_text) for w in plan.windows)
    for index, w in enumerate(plan.windows):
        label = f"[{index}]".rjust(digits + 2)
        head = f"  {label} {w.name:<{width}}  cores: {w.cores_text}"
        if plan.multi_node:
            head = f"{head:<{len(head) - len(w.cores_text) + cores_width}}  node: {node_text(w)}"
        lines.append(head)
        lines.append(f"      {w.command}")
        if w.role is Role.CONTROLLER:
            ports = " and ".join(f"{plan.controller_host}:{p}" for p in plan.controller_ports)
            lines.append(f"      ready when {ports} accept connections")
        elif w.role is Role.PRIMARY:
            lines.append(
                f"      ready when {eal.runtime_config(plan.runtime_dir)} is held by "
                "the live primary and its mempool exists"
            )
        elif w.role is Role.SECONDARY:
            lines.append(
                f"      ready when it has attached to the primary (mp_socket in {plan.runtime_dir})"
            )
            if w.auto_cores:
                lines.append(f"      cores booked by kcm from pool '{plan.kcm_pool}' at start")
            if w.near is not None:
                lines.append(
                    f"      near {w.near}: kcm prefers a list on "
                    + (
                        "any node, as the device is on none"
                        if w.near_node is None
                        else f"node {w.near_node}, else takes another node's and says so"
                    )
                )
            if w.node_memory is not None:
                example = eal.socket_mem({1}, w.node_memory)
                lines.append(
                    f"      --socket-mem from $KCM_NUMA_NODE, in the window's shell: "
                    f"{w.node_memory} MB on kcm's node (node 1 gives {example}); none when "
                    "the list spans nodes"
                )
        elif w.role is Role.VHOST_VM:
            verb = "exists" if len(w.vhost_sockets) == 1 else "exist"
            lines.append(f"      starts once {', '.join(w.vhost_sockets)} {verb}")
    if plan.multi_node and plan.hugepages:
        asks = ", ".join(f"node {m.node} {m.mb} MB" for m in plan.hugepages)
        lines.append(f"hugepages each node must have free (checked before a launch): {asks}")
    if plan.images:
        lines.append("images (qcow2 overlays, created on first use):")
        for link in plan.images:
            lines.append(f"  {link.path}  <- {link.parent}")
    lines.append("--down removes:")
    for path in plan.vhost_sockets:
        lines.append(f"  {path}")
    lines.append(f"  {plan.runtime_dir}")
    lines.append(f"  {plan.huge_dir}/{plan.file_prefix}map_*")
    return "\n".join(lines)


def render_status(session: str, status: SessionStatus) -> str:
    """The planned windows as a table, then any window of the session that is not ours."""
    header = ("WINDOW", "STATE", "PID", "CPUS", "PLANNED", "COMMAND")
    table = [header] + [
        (
            r.name,
            r.state,
            "-" if r.pid is None else str(r.pid),
            "-" if r.cpus is None else cpulist.format(r.cpus),
            r.planned,
            r.command,
        )
        for r in status.windows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    out = [f"session '{session}':"]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.append("  " + "  ".join([*cells, row[-1]]))
    planned = {r.name for r in status.windows}
    for window in status.foreign:
        why = " (it has the name of a planned window)" if window.name in planned else ""
        out.append(
            f"not ours: window {shown(window.name)} ({window.window_id}) was not started by "
            f"spp-wakeup{why}; --status and --down leave it alone"
        )
    return "\n".join(out)
