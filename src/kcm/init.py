"""``kcm init``: carve the pools from the host's topology and create the state directory."""

from __future__ import annotations

import os
import sys

from kcm import allocate, cpulist, state
from kcm.errors import StateError
from kcm.host import sysfs
from kcm.model import Pool
from kcm.topology import Topology


def init(
    conf_dir: str,
    num_dp_cores: int,
    num_cp_cores: int,
    *,
    keep_existing: bool,
    exclusive_mode: str = allocate.PACKED,
    quiet: bool = False,
) -> int:
    """Create ``conf_dir``; with ``keep_existing``, a complete valid state is left as it is.

    Keeping the state is what makes init restart-safe (a DaemonSet's init container runs it on
    every pod start): live allocations survive. Anything else non-empty is still refused.
    """
    allocate.check_exclusive_mode(exclusive_mode)
    if keep_existing and state.is_initialized(conf_dir):
        # A writer's checks under a reader's lock: the state kept is the one isolate will use.
        with state.StateDir(conf_dir, writer=True) as existing:
            existing.lock(state.lock_timeout(), shared=True)
            pools = existing.read_pools()  # strict: a corrupt state is an error, not "kept"
        missing = {allocate.DATAPLANE, allocate.CONTROLPLANE, allocate.INFRA} - set(pools)
        if missing:
            raise StateError(f"{conf_dir} lacks the pool(s) {', '.join(sorted(missing))}")
        held = sum(len(cl.tasks) for p in pools.values() for cl in p.cpu_lists.values())
        if not quiet:
            print(f"kcm: kept the existing state in {conf_dir} ({held} task(s))", file=sys.stderr)
        return 0
    root = sysfs.sys_root()
    topo = sysfs.read_topology(root)
    carving = allocate.carving(topo, num_dp_cores, num_cp_cores, exclusive_mode=exclusive_mode)
    pools = carving.pools
    path = os.path.normpath(conf_dir)
    state.create(path, pools)
    if not quiet:
        for line in carved(path, root, topo, pools):
            print(line, file=sys.stderr)
    for warning in carving.warnings:  # also when quiet: the operator should fix these
        print(f"kcm: warning: {warning}", file=sys.stderr)
    return 0


def carved(path: str, sys_root: str, topology: Topology, pools: dict[str, Pool]) -> list[str]:
    """What init says it made: the directory, then one line per pool with its lists."""
    cores, cpus = len(topology.cores), len(topology.cpus)
    lines = [f"kcm: created {path} from the topology in {sys_root} ({cores} cores, {cpus} CPUs)"]
    isolated = topology.isolated_at_boot
    if isolated:
        lines[0] += f"; isolated at boot: CPUs {cpulist.format(isolated)}"
    order = [allocate.DATAPLANE, allocate.CONTROLPLANE, allocate.INFRA]
    for name in sorted(pools, key=lambda n: (order.index(n) if n in order else len(order), n)):
        pool = pools[name]
        kind = "exclusive" if pool.exclusive else "shared"
        lists = " ".join(sorted(pool.cpu_lists, key=allocate.cpu_order)) or "no lists"
        lines.append(f"kcm:   {name} ({kind}): {lists}")
    return lines
