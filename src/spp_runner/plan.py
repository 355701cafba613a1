"""The plan: conf.yml, the options and the host's facts in; every window with its argv out.

Pure: nothing here reads files or starts processes. ``build`` checks every rule first and
reports all broken ones together; the Plan it returns drives both ``--dry-run`` and the launch.
"""

from __future__ import annotations

import enum
import json
import os
import shlex
from dataclasses import dataclass
from typing import Any

from kcm import cpulist
from spp_runner import eal, qemu
from spp_runner.config import Config, Sudo, VmEntry
from spp_runner.errors import ConfigError
from spp_runner.host import Host, KcmPool

RING_TEMPLATE = "template-ring.qcow2"
VHOST_TEMPLATE = "template-vhost.qcow2"


class Role(enum.Enum):
    """What a window runs; launch and tear-down treat each role its own way."""

    CONTROLLER = "controller"
    PRIMARY = "primary"
    SECONDARY = "secondary"
    RING_VM = "ring-vm"
    VHOST_VM = "vhost-vm"
    TEMPLATE_VM = "template-vm"
    WORKING = "working"

    @property
    def is_vm(self) -> bool:
        return self in (Role.RING_VM, Role.VHOST_VM, Role.TEMPLATE_VM)


@dataclass(frozen=True)
class Options:
    """The command-line options that shape a plan (the seed's defaults)."""

    template: bool = False
    nof_sec: int = 2
    nof_ring: int = 0
    nof_vhost: int = 1
    vhost_num: int = 1
    nof_working: int = 1
    session: str = "spp"


@dataclass(frozen=True)
class ImageLink:
    """A qcow2 image backed by ``parent``, created on first use."""

    path: str
    parent: str


@dataclass(frozen=True)
class Window:
    """One tmux window: what it runs, where, and on which CPUs."""

    name: str
    role: Role
    argv: tuple[str, ...]
    cwd: str
    cores: frozenset[int] | None = None  # None: not pinned by the runner
    auto_cores: bool = False  # kcm books the cores when the window starts
    programs: tuple[str, ...] = ()  # what must exist for a real launch
    vhost_sockets: tuple[str, ...] = ()  # primary: sockets it serves; VM: sockets it joins
    image: str | None = None  # VM: the disk it boots

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def cores_text(self) -> str:
        if self.auto_cores:
            return "auto"
        if self.cores is None:
            return "-"
        return cpulist.format(self.cores)


@dataclass(frozen=True)
class Plan:
    """Everything a launch does and everything a tear-down must undo."""

    session: str
    config_path: str
    windows: tuple[Window, ...]
    controller_host: str
    controller_ports: tuple[int, int]
    file_prefix: str
    huge_dir: str
    runtime_dir: str
    vhost_sockets: tuple[str, ...]
    images: tuple[ImageLink, ...]
    uses_sudo: bool
    kcm_pool: str | None = None
    warnings: tuple[str, ...] = ()

    def window(self, name: str) -> Window:
        for w in self.windows:
            if w.name == name:
                return w
        raise KeyError(name)

    def by_role(self, role: Role) -> tuple[Window, ...]:
        return tuple(w for w in self.windows if w.role is role)


# ----------------------------------------------------------------------------- checks


def _cpus(cpus: frozenset[int]) -> str:
    return cpulist.format(cpus)


def check(config: Config, options: Options, host: Host) -> list[str]:
    """Every rule the plan breaks, each naming the key and what to change."""
    problems: list[str] = []
    counts = (
        ("-ns", options.nof_sec, "secondaries", len(config.secondaries)),
        ("-nr", 0 if options.template else options.nof_ring, "vms_ring", len(config.vms_ring)),
        ("-nv", 0 if options.template else options.nof_vhost, "vms_vhost", len(config.vms_vhost)),
    )
    for flag, asked, key, listed in counts:
        if asked > listed:
            problems.append(
                f"{key}: {flag} {asked} asks for {asked} but only {listed} "
                f"{'is' if listed == 1 else 'are'} listed; add entries under '{key}' or lower "
                f"{flag}"
            )

    secondaries = config.secondaries[: options.nof_sec]
    pinned: list[tuple[str, frozenset[int]]] = []
    if config.primary.cores.cpus:
        pinned.append(("primary.coremask", config.primary.cores.cpus))
    for sec in secondaries:
        if not sec.cores.auto and sec.cores.cpus:
            pinned.append((f"{sec.key}.coremask", sec.cores.cpus))

    online = host.online_cpus
    for key, cpus in pinned:
        outside = cpus - online
        if outside:
            problems.append(
                f"{key}: CPUs {_cpus(outside)} are not online on this host (online CPUs: "
                f"{_cpus(online)}); choose CPUs from {_cpus(online)}"
            )

    for i, (key_a, cpus_a) in enumerate(pinned):
        for key_b, cpus_b in pinned[i + 1 :]:
            shared = cpus_a & cpus_b
            if shared:
                problems.append(
                    f"{key_b}: shares CPUs {_cpus(shared)} with {key_a}; give each process its "
                    "own CPUs"
                )

    autos = [sec for sec in secondaries if sec.cores.auto]
    if autos and config.kcm is None:
        for sec in autos:
            problems.append(
                f"{sec.key}.coremask: 'auto' needs kcm; add 'kcm: {{conf_dir: /etc/kcm}}' to "
                "conf.yml or give a mask"
            )
    if config.kcm is not None:
        if host.kcm_error is not None:
            problems.append(host.kcm_error)
        elif host.kcm_pools is not None:
            problems += _check_kcm(config.kcm.pool, host.kcm_pools, pinned, len(autos))

    if "," in config.paths.sock_dir:
        problems.append(
            f"paths.sock_dir: {config.paths.sock_dir!r} holds a comma, which DPDK's --vdev "
            "cannot carry; choose a directory without one"
        )
    return problems


def _check_kcm(
    pool_name: str,
    pools: tuple[KcmPool, ...],
    pinned: list[tuple[str, frozenset[int]]],
    nof_auto: int,
) -> list[str]:
    problems: list[str] = []
    managed = frozenset().union(*(p.cpus for p in pools))
    for key, cpus in pinned:
        outside = cpus - managed
        if outside:
            problems.append(
                f"{key}: CPUs {_cpus(outside)} are in none of kcm's pools (kcm manages "
                f"{_cpus(managed) or 'no CPUs'}); choose CPUs kcm manages"
            )
    pool = next((p for p in pools if p.name == pool_name), None)
    if pool is None:
        if nof_auto:
            names = ", ".join(p.name for p in pools) or "none"
            problems.append(
                f"kcm.pool: kcm has no pool {pool_name!r} (pools: {names}); set kcm.pool to "
                "an exclusive pool"
            )
        return problems
    if nof_auto:
        if not pool.exclusive:
            problems.append(
                f"kcm.pool: pool {pool_name!r} is shared, so 'auto' secondaries could share "
                "CPUs; use an exclusive pool such as dataplane"
            )
        for key, cpus in pinned:
            shared = cpus & pool.cpus
            if shared:
                fix = "choose other CPUs"
                if key.startswith("secondaries"):
                    fix += " or make this one 'auto'"
                problems.append(
                    f"{key}: CPUs {_cpus(shared)} belong to kcm pool {pool_name!r}, which kcm "
                    f"hands to 'auto' secondaries; {fix}"
                )
        if nof_auto > pool.free_lists:
            problems.append(
                f"secondaries: {nof_auto} use coremask 'auto' but kcm pool {pool_name!r} has "
                f"{pool.free_lists} free CPU list{'s' if pool.free_lists != 1 else ''}; "
                "free some or give masks"
            )
    return problems


# ----------------------------------------------------------------------------- building


def _vhost_vm_windows(
    config: Config, options: Options, vms: tuple[VmEntry, ...], sudo: tuple[str, ...]
) -> tuple[list[Window], list[ImageLink]]:
    windows: list[Window] = []
    images: list[ImageLink] = []
    img_dir = config.paths.img_dir
    template = os.path.join(img_dir, VHOST_TEMPLATE)
    if vms:
        images.append(ImageLink(template, config.paths.hda))
    for ordinal, vm in enumerate(vms):
        image = os.path.join(img_dir, f"vhost{vm.id}.qcow2")
        images.append(ImageLink(image, template))
        first = ordinal * options.vhost_num
        vhost = tuple(
            (index, eal.vhost_socket(config.paths.sock_dir, index))
            for index in range(first, first + options.vhost_num)
        )
        spec = qemu.VmSpec(
            vm.id,
            image,
            "qcow2",
            config.vm.memory,
            config.vm.cpus,
            config.vm.bridge,
            config.eal.huge_dir,
            vhost,
        )
        windows.append(
            Window(
                name=f"vhost{vm.id}",
                role=Role.VHOST_VM,
                argv=(*sudo, *qemu.vm_argv(config.paths.qemu, spec)),
                cwd=img_dir,
                programs=(config.paths.qemu,),
                vhost_sockets=tuple(path for _, path in vhost),
                image=image,
            )
        )
    return windows, images


def _ring_vm_windows(
    config: Config, vms: tuple[VmEntry, ...], sudo: tuple[str, ...]
) -> tuple[list[Window], list[ImageLink]]:
    windows: list[Window] = []
    images: list[ImageLink] = []
    img_dir = config.paths.img_dir
    template = os.path.join(img_dir, RING_TEMPLATE)
    if vms:
        images.append(ImageLink(template, config.paths.hda))
    for vm in vms:
        image = os.path.join(img_dir, f"ring{vm.id}.qcow2")
        images.append(ImageLink(image, template))
        spec = qemu.VmSpec(
            vm.id,
            image,
            "qcow2",
            config.vm.memory,
            config.vm.cpus,
            config.vm.bridge,
            config.eal.huge_dir,
        )
        windows.append(
            Window(
                name=f"ring{vm.id}",
                role=Role.RING_VM,
                argv=(*sudo, *qemu.vm_argv(config.paths.qemu, spec)),
                cwd=img_dir,
                programs=(config.paths.qemu,),
                image=image,
            )
        )
    return windows, images


def build(config: Config, options: Options, host: Host) -> Plan:
    """The plan for ``options`` on ``host``; raises ConfigError listing every problem."""
    problems = [*config.problems, *check(config, options, host)]
    if problems:
        raise ConfigError(*(f"{config.path}: {p}" for p in problems))

    uses_sudo = config.sudo is Sudo.ALWAYS or (config.sudo is Sudo.AUTO and not host.is_root)
    sudo: tuple[str, ...] = ("sudo",) if uses_sudo else ()
    ctl = config.controller
    paths = config.paths
    e = config.eal
    warnings: list[str] = []

    windows = [
        Window(
            name="controller",
            role=Role.CONTROLLER,
            argv=(paths.python, paths.controller, "-p", str(ctl.pri_port), "-s", str(ctl.sec_port)),
            cwd=paths.spp_dir,
            programs=(paths.python, paths.controller),
        )
    ]

    nof_ring = 0 if options.template else options.nof_ring
    nof_vhost = 0 if options.template else options.nof_vhost
    vhost_count = nof_vhost * options.vhost_num
    vhost_sockets = tuple(eal.vhost_socket(paths.sock_dir, i) for i in range(vhost_count))
    portmask = config.primary.portmask
    if portmask is None:
        portmask = (1 << vhost_count) - 1
    primary_eal = eal.EalArgs(
        cores=cpulist.format(config.primary.cores.cpus),
        mem_channels=e.mem_channels,
        huge_dir=e.huge_dir,
        file_prefix=e.file_prefix,
        proc_type=eal.ProcType.PRIMARY,
        socket_mem=e.socket_mem,
        vdevs=tuple(eal.vhost_vdev(paths.sock_dir, i) for i in range(vhost_count)),
    )
    windows.append(
        Window(
            name="primary",
            role=Role.PRIMARY,
            argv=(
                *sudo,
                paths.primary,
                *eal.eal_argv(primary_eal),
                "--",
                "-p",
                f"{portmask:#x}",
                "-n",
                str(config.primary.num_rings),
                "-s",
                f"{ctl.host}:{ctl.pri_port}",
            ),
            cwd=paths.spp_dir,
            cores=config.primary.cores.cpus,
            programs=(paths.primary,),
            vhost_sockets=vhost_sockets,
        )
    )

    for sec in config.secondaries[: options.nof_sec]:
        app = ("--", "-n", str(sec.id), "-s", f"{ctl.host}:{ctl.sec_port}")
        sec_eal = eal.EalArgs(
            cores=None if sec.cores.auto else cpulist.format(sec.cores.cpus),
            mem_channels=e.mem_channels,
            huge_dir=e.huge_dir,
            file_prefix=e.file_prefix,
            proc_type=eal.ProcType.SECONDARY,
        )
        if sec.cores.auto:
            assert config.kcm is not None  # check() refuses 'auto' without kcm
            k = config.kcm
            # kcm books a free list of its pool, pins the child and exports the list; the
            # one shell snippet turns that into spp_nfv's EAL core list.
            argv: tuple[str, ...] = (
                *sudo,
                "env",
                f"KCM_PROC_FS={k.proc_fs}",
                k.program,
                "isolate",
                f"--conf-dir={k.conf_dir}",
                f"--pool={k.pool}",
                f'exec {shlex.quote(paths.nfv)} -l "$KCM_CPUS_ASSIGNED"',
                "--",
                *eal.eal_argv(sec_eal),
                *app,
            )
            programs: tuple[str, ...] = (k.program, paths.nfv)
        else:
            argv = (*sudo, paths.nfv, *eal.eal_argv(sec_eal), *app)
            programs = (paths.nfv,)
        windows.append(
            Window(
                name=f"sec{sec.id}",
                role=Role.SECONDARY,
                argv=argv,
                cwd=paths.spp_dir,
                cores=None if sec.cores.auto else sec.cores.cpus,
                auto_cores=sec.cores.auto,
                programs=programs,
            )
        )

    images: list[ImageLink] = []
    if options.template:
        spec = qemu.VmSpec(
            0, paths.hda, None, config.vm.memory, config.vm.cpus, config.vm.bridge, e.huge_dir
        )
        windows.append(
            Window(
                name="template",
                role=Role.TEMPLATE_VM,
                argv=(*sudo, *qemu.vm_argv(paths.qemu, spec)),
                cwd=paths.img_dir,
                programs=(paths.qemu,),
                image=paths.hda,
            )
        )
    ring_windows, ring_images = _ring_vm_windows(config, config.vms_ring[:nof_ring], sudo)
    vhost_windows, vhost_images = _vhost_vm_windows(
        config, options, config.vms_vhost[:nof_vhost], sudo
    )
    windows += ring_windows + vhost_windows
    images += ring_images + vhost_images
    if ring_windows:
        warnings.append(
            "ring VMs need IVSHMEM, which DPDK dropped in 16.11; they boot without a ring port"
        )

    cwd = os.path.dirname(os.path.abspath(config.path))
    for n in range(1, options.nof_working + 1):
        windows.append(Window(name=f"work{n}", role=Role.WORKING, argv=("bash", "-l"), cwd=cwd))

    runs_as_root = host.is_root or uses_sudo
    return Plan(
        session=options.session,
        config_path=config.path,
        windows=tuple(windows),
        controller_host=ctl.host,
        controller_ports=(ctl.pri_port, ctl.sec_port),
        file_prefix=e.file_prefix,
        huge_dir=e.huge_dir,
        runtime_dir=eal.runtime_dir(
            e.file_prefix, as_root=runs_as_root, xdg_runtime_dir=host.xdg_runtime_dir
        ),
        vhost_sockets=vhost_sockets,
        images=tuple(images),
        uses_sudo=uses_sudo,
        kcm_pool=config.kcm.pool if config.kcm else None,
        warnings=tuple(warnings),
    )


# ----------------------------------------------------------------------------- storage


def to_json(plan: Plan) -> str:
    """The plan as JSON, stored with the session so --status and --down need no conf.yml."""

    def window(w: Window) -> dict[str, Any]:
        return {
            "name": w.name,
            "role": w.role.value,
            "argv": list(w.argv),
            "cwd": w.cwd,
            "cores": None if w.cores is None else sorted(w.cores),
            "auto_cores": w.auto_cores,
            "programs": list(w.programs),
            "vhost_sockets": list(w.vhost_sockets),
            "image": w.image,
        }

    return json.dumps(
        {
            "session": plan.session,
            "config_path": plan.config_path,
            "windows": [window(w) for w in plan.windows],
            "controller_host": plan.controller_host,
            "controller_ports": list(plan.controller_ports),
            "file_prefix": plan.file_prefix,
            "huge_dir": plan.huge_dir,
            "runtime_dir": plan.runtime_dir,
            "vhost_sockets": list(plan.vhost_sockets),
            "images": [[i.path, i.parent] for i in plan.images],
            "uses_sudo": plan.uses_sudo,
            "kcm_pool": plan.kcm_pool,
            "warnings": list(plan.warnings),
        },
        sort_keys=True,
    )


def from_json(text: str) -> Plan:
    """The plan ``to_json`` wrote; ValueError if ``text`` is not one."""
    try:
        d = json.loads(text)
        windows = tuple(
            Window(
                name=w["name"],
                role=Role(w["role"]),
                argv=tuple(w["argv"]),
                cwd=w["cwd"],
                cores=None if w["cores"] is None else frozenset(w["cores"]),
                auto_cores=bool(w["auto_cores"]),
                programs=tuple(w["programs"]),
                vhost_sockets=tuple(w["vhost_sockets"]),
                image=w["image"],
            )
            for w in d["windows"]
        )
        pri_port, sec_port = d["controller_ports"]
        return Plan(
            session=d["session"],
            config_path=d["config_path"],
            windows=windows,
            controller_host=d["controller_host"],
            controller_ports=(int(pri_port), int(sec_port)),
            file_prefix=d["file_prefix"],
            huge_dir=d["huge_dir"],
            runtime_dir=d["runtime_dir"],
            vhost_sockets=tuple(d["vhost_sockets"]),
            images=tuple(ImageLink(p, q) for p, q in d["images"]),
            uses_sudo=bool(d["uses_sudo"]),
            kcm_pool=d["kcm_pool"],
            warnings=tuple(d["warnings"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a stored spp-wakeup plan: {e}") from None
