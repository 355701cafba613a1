"""What the runner learns about the host before planning: online CPUs, user, kcm's pools.

Reading is here; every decision made from these facts is in plan.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kcm import cpulist
from kcm.errors import ParseError
from kcm.host.sysfs import read_online_cpus, sys_root
from spp_runner.errors import ConfigError


@dataclass(frozen=True)
class KcmCpuList:
    """One CPU list of a kcm pool and the PIDs kcm has recorded on it."""

    cpus: frozenset[int]
    tasks: tuple[int, ...]


@dataclass(frozen=True)
class KcmPool:
    name: str
    exclusive: bool
    cpu_lists: tuple[KcmCpuList, ...]

    @property
    def cpus(self) -> frozenset[int]:
        return frozenset().union(*(c.cpus for c in self.cpu_lists))

    @property
    def free_lists(self) -> int:
        return sum(1 for c in self.cpu_lists if not c.tasks)


@dataclass(frozen=True)
class Host:
    """The facts a plan depends on; tests build these directly."""

    online_cpus: frozenset[int]
    is_root: bool = True
    xdg_runtime_dir: str | None = None
    kcm_pools: tuple[KcmPool, ...] | None = None  # None: no kcm.conf_dir in conf.yml
    kcm_error: str | None = None  # why kcm's state could not be read


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_kcm_pools(conf_dir: str) -> tuple[KcmPool, ...]:
    """kcm's pools as its state directory records them (``pools/<pool>/<cpulist>/tasks``)."""
    pools_dir = os.path.join(conf_dir, "pools")
    if not os.path.isdir(pools_dir):
        raise ConfigError(
            f"kcm.conf_dir: {conf_dir} holds no kcm state ({pools_dir} is missing); "
            f"run 'kcm init --conf-dir={conf_dir}' first or fix the path"
        )
    pools: list[KcmPool] = []
    for name in sorted(os.listdir(pools_dir)):
        pool_dir = os.path.join(pools_dir, name)
        if not os.path.isdir(pool_dir):
            continue
        try:
            exclusive = _read_text(os.path.join(pool_dir, "exclusive")).strip() == "1"
        except OSError as e:
            raise ConfigError(f"kcm.conf_dir: cannot read pool {name!r}: {e}") from None
        lists: list[KcmCpuList] = []
        for entry in sorted(os.listdir(pool_dir)):
            list_dir = os.path.join(pool_dir, entry)
            if not os.path.isdir(list_dir):
                continue
            try:
                cpus = cpulist.parse(entry)
                tasks_text = _read_text(os.path.join(list_dir, "tasks"))
                tasks = tuple(int(t) for t in tasks_text.replace(",", " ").split())
            except (ParseError, ValueError, OSError) as e:
                raise ConfigError(f"kcm.conf_dir: {list_dir} is not a kcm CPU list: {e}") from None
            lists.append(KcmCpuList(cpus, tasks))
        pools.append(KcmPool(name, exclusive, tuple(lists)))
    return tuple(pools)


def read_host(kcm_conf_dir: str | None, sysfs: str | None = None) -> Host:
    """This host's facts; CPUs come from ``$KCM_SYS_FS`` (default /sys) as in kcm."""
    online = read_online_cpus(sysfs or sys_root())
    pools: tuple[KcmPool, ...] | None = None
    error: str | None = None
    if kcm_conf_dir is not None:
        try:
            pools = read_kcm_pools(kcm_conf_dir)
        except ConfigError as e:
            error = e.message
    return Host(
        online_cpus=online,
        is_root=os.geteuid() == 0,
        xdg_runtime_dir=os.environ.get("XDG_RUNTIME_DIR") or None,
        kcm_pools=pools,
        kcm_error=error,
    )
