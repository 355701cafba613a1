"""DPDK's side of the runner: EAL argv, vhost-user socket names, and where DPDK leaves files.

Every DPDK command line the runner builds comes from ``eal_argv``; every vhost-user socket
path comes from ``vhost_socket``, which both the primary's vdevs and QEMU's chardevs use, so
the two ends of a vhost link always name the same file.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

NUMA_NODE_VARIABLE = "KCM_NUMA_NODE"  # what kcm isolate exports: the list's node, or nothing


class ProcType(enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


@dataclass(frozen=True)
class EalArgs:
    """The EAL options of one DPDK process.

    ``cores`` is a cpu-list (``"2-3"``) or a shell expansion such as ``"$KCM_CPUS_ASSIGNED"``
    when kcm chooses the cores at start.
    """

    cores: str | None  # None: the caller passes the core option itself
    mem_channels: int
    huge_dir: str
    file_prefix: str
    proc_type: ProcType
    socket_mem: str | None = None  # None: no --socket-mem (a secondary on a one-node host)
    vdevs: tuple[str, ...] = ()


def eal_argv(args: EalArgs) -> list[str]:
    """The EAL part of a DPDK command line, before the ``--`` that starts the app's options."""
    argv = [] if args.cores is None else ["-l", args.cores]
    argv += ["-n", str(args.mem_channels)]
    if args.socket_mem is not None:
        argv += ["--socket-mem", args.socket_mem]
    argv += [
        "--huge-dir",
        args.huge_dir,
        "--file-prefix",
        args.file_prefix,
        f"--proc-type={args.proc_type.value}",
    ]
    for vdev in args.vdevs:
        argv += ["--vdev", vdev]
    return argv


def socket_mem(nodes: Iterable[int], mb: int) -> str:
    """``--socket-mem`` for ``mb`` MB on each of ``nodes`` and none on the others: one entry per
    node up to the highest (DPDK reads the missing ones after it as 0), so node 0 alone is
    ``1024``, node 1 ``0,1024`` and nodes 0 and 2 ``1024,0,1024``."""
    wanted = frozenset(nodes)
    if not wanted or min(wanted) < 0:
        raise ValueError(f"no NUMA nodes to give memory: {sorted(wanted)}")
    return ",".join(str(mb) if node in wanted else "0" for node in range(max(wanted) + 1))


def socket_mem_from_node(mb: int, variable: str = NUMA_NODE_VARIABLE) -> str:
    """sh code that sets ``mem`` to ``socket_mem({$variable}, mb)``, or leaves it empty when the
    variable holds no node number (kcm leaves it empty for a CPU list that spans nodes; four
    digits or more are no node Linux has, and would only make the loop long).

    Used where kcm chooses the cores, and so the node, only when the window starts; the EAL
    option is then ``${mem:+--socket-mem "$mem"}``.
    """
    return (
        f'mem=; node=${{{variable}:-}}; case $node in ""|*[!0-9]*|????*) ;; *) mem={mb}; '
        'while [ "$node" -gt 0 ]; do mem=0,$mem; node=$((node - 1)); done;; esac'
    )


SOCKET_MEM_FROM_SHELL = '${mem:+--socket-mem "$mem"}'


def vhost_socket(sock_dir: str, index: int) -> str:
    """The vhost-user socket of vhost interface ``index``: SPP's ``vhost:N`` is ``sockN``."""
    if index < 0:
        raise ValueError(f"vhost interface index {index} is negative")
    return os.path.join(sock_dir, f"sock{index}")


def vhost_vdev(sock_dir: str, index: int) -> str:
    """The primary's ``--vdev`` value that serves vhost interface ``index`` as a socket server."""
    return f"eth_vhost{index},iface={vhost_socket(sock_dir, index)}"


def runtime_dir(file_prefix: str, *, as_root: bool, xdg_runtime_dir: str | None) -> str:
    """Where DPDK keeps a prefix's runtime files (``config``, ``mp_socket``, fbarrays).

    Root uses ``/var/run/dpdk``; other users ``$XDG_RUNTIME_DIR/dpdk``, else ``/tmp/dpdk``.
    """
    base = "/var/run" if as_root else (xdg_runtime_dir or "/tmp")
    return os.path.join(base, "dpdk", file_prefix)


def runtime_config(run_dir: str) -> str:
    """The primary's shared config file; it exists once the primary's EAL is up."""
    return os.path.join(run_dir, "config")


def secondary_socket_pattern(pid: int) -> re.Pattern[str]:
    """Names of the multi-process socket a secondary with ``pid`` opens in the runtime dir."""
    return re.compile(rf"^mp_socket_{pid}_[0-9a-f]+$")


def hugepage_file_pattern(file_prefix: str) -> re.Pattern[str]:
    """Names of the hugepage files EAL creates for ``file_prefix`` (``<prefix>map_<n>``)."""
    return re.compile(rf"^{re.escape(file_prefix)}map_[0-9]+$")
