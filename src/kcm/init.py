"""``kcm init``: carve the pools from the host's topology and create the state directory."""

from __future__ import annotations

import os
import sys

from kcm import allocate, state
from kcm.errors import StateError
from kcm.host import sysfs


def init(conf_dir: str, num_dp_cores: int, num_cp_cores: int, *, keep_existing: bool) -> int:
    """Create ``conf_dir``; with ``keep_existing``, a complete valid state is left as it is.

    Keeping the state is what makes init restart-safe (a DaemonSet's init container runs it on
    every pod start): live allocations survive. Anything else non-empty is still refused.
    """
    if keep_existing and state.is_initialized(conf_dir):
        # A writer's checks under a reader's lock: the state kept is the one isolate will use.
        with state.StateDir(conf_dir, writer=True) as existing:
            existing.lock(state.lock_timeout(), shared=True)
            pools = existing.read_pools()  # strict: a corrupt state is an error, not "kept"
        missing = {allocate.DATAPLANE, allocate.CONTROLPLANE, allocate.INFRA} - set(pools)
        if missing:
            raise StateError(f"{conf_dir} lacks the pool(s) {', '.join(sorted(missing))}")
        held = sum(len(cl.tasks) for p in pools.values() for cl in p.cpu_lists.values())
        print(f"kcm: kept the existing state in {conf_dir} ({held} task(s))", file=sys.stderr)
        return 0
    topo = sysfs.read_topology(sysfs.sys_root())
    pools = allocate.carve(topo, num_dp_cores, num_cp_cores)
    state.create(os.path.normpath(conf_dir), pools)
    return 0
