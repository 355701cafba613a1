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
    nodes: tuple[int, ...] = ()  # NUMA nodes of its fixed cores (none known: empty)
    near: str | None = None  # auto: the device whose node kcm prefers
    near_node: int | None = None  # that device's node when planned (None: on no node)
    node_memory: int | None = None  # auto: MB that its shell gives KCM_NUMA_NODE's node

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
class NodeMemory:
    """The hugepage memory, in MB, that the session's DPDK processes ask of one NUMA node."""

    node: int
    mb: int


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
    numa_nodes: tuple[int, ...] = ()  # the host's nodes with CPUs (none known: empty)
    hugepages: tuple[NodeMemory, ...] = ()  # what each node must have free for the launch
    sys_root: str = "/sys"  # the sysfs planned against; the hugepage check reads it too
    kcm_program: str | None = None

    @property
    def multi_node(self) -> bool:
        """Whether NUMA placement matters here: on one node every choice is local."""
        return len(self.numa_nodes) > 1

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

    for sec in secondaries:
        device = host.device(sec.near) if sec.near is not None else None
        if device is not None and device.error is not None:
            fix = "" if "; " in device.error else "; name a device of this host or remove 'near'"
            problems.append(f"{sec.key}.near: {device.error}{fix}")

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


# ----------------------------------------------------------------------------- NUMA


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _nodes_with_cpus(host: Host, cpus: frozenset[int]) -> str:
    """``0 (CPUs 0-9) and 1 (CPUs 10-11)``: each node of ``cpus`` with its CPUs among them."""
    return _and(
        [
            f"{node} (CPUs {_cpus(frozenset(c for c in cpus if host.cpu_nodes.get(c) == node))})"
            for node in sorted(host.nodes_of(cpus))
        ]
    )


@dataclass(frozen=True)
class _Memory:
    """eal.socket_mem read for NUMA: one number is MB for each node a process runs on; a
    list (``"1024,512"``) is passed as written, one entry per node from node 0."""

    text: str
    per_node: int | None  # one number
    listed: tuple[int, ...]  # a list

    @staticmethod
    def of(text: str) -> _Memory:
        values = tuple(int(v) for v in text.split(","))
        if len(values) == 1:
            return _Memory(text, values[0], ())
        return _Memory(text, None, values)

    def argument(self, nodes: frozenset[int]) -> str:
        """The ``--socket-mem`` of a process on ``nodes`` (none known: as written)."""
        if self.per_node is None or not nodes:
            return self.text
        return eal.socket_mem(nodes, self.per_node)

    def on(self, node: int) -> int:
        if self.per_node is not None:
            return self.per_node
        return self.listed[node] if node < len(self.listed) else 0


def _hugepages(memory: _Memory, nodes_in_use: frozenset[int]) -> tuple[NodeMemory, ...]:
    """What each node must have free: a list's entries are what the primary reserves at start;
    one number is each node a DPDK process of the session runs on (or, for an 'auto'
    secondary, the node of its device). Secondaries reserve nothing themselves: they share the
    primary's memory, and DPDK grows it on their node when they allocate there, so a number
    counts once per node, not once per process."""
    if memory.per_node is None:
        return tuple(NodeMemory(n, mb) for n, mb in enumerate(memory.listed) if mb)
    return tuple(NodeMemory(n, memory.per_node) for n in sorted(nodes_in_use))


def _numa_warnings(
    host: Host, memory: _Memory, pinned: list[tuple[str, str, frozenset[int]]]
) -> list[str]:
    """Fixed masks that span nodes, and nodes a listed socket_mem leaves without memory."""
    warnings: list[str] = []
    for key, text, cpus in pinned:
        if len(host.nodes_of(cpus)) > 1:
            warnings.append(
                f"{key}: {text} spans NUMA nodes {_nodes_with_cpus(host, cpus)}; its memory "
                "and packets cross between the nodes, so choose CPUs of one node"
            )
    if memory.per_node is None:
        for key, _, cpus in pinned:
            for node in sorted(host.nodes_of(cpus)):
                if memory.on(node) == 0:
                    on_node = frozenset(c for c in cpus if host.cpu_nodes.get(c) == node)
                    warnings.append(
                        f"eal.socket_mem: {memory.text!r} gives node {node} no memory, but "
                        f"{key} has CPUs {_cpus(on_node)} there; give node {node} memory, or "
                        "write one number to give each process that much on its own nodes"
                    )
    return warnings


def _near_warnings(config: Config, host: Host, autos: list[tuple[str, int]]) -> list[str]:
    """Nodes whose free lists in kcm's pool are fewer than the 'auto' secondaries near them."""
    if config.kcm is None or host.kcm_pools is None:
        return []
    pool = next((p for p in host.kcm_pools if p.name == config.kcm.pool), None)
    if pool is None:
        return []
    warnings = []
    for node in sorted({n for _, n in autos}):
        keys = [k for k, n in autos if n == node]
        free = sum(
            1
            for cl in pool.cpu_lists
            if not cl.tasks
            and cl.cpus
            and host.nodes_of(cl.cpus) == {node}
            and all(c in host.cpu_nodes for c in cl.cpus)
        )
        if free < len(keys):
            short = len(keys) - free
            lists = f"{free} free CPU list{'' if free == 1 else 's'}"
            autos_text = f"{len(keys)} 'auto' secondar{'y' if len(keys) == 1 else 'ies'}"
            warnings.append(
                f"{_and(keys)}: placed near a device on node {node}, where kcm pool "
                f"{config.kcm.pool!r} has {lists} for {autos_text}; kcm will give {short} a list "
                f"of another node and say so in {'its' if short == 1 else 'their'} window"
            )
    return warnings


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
    memory = _Memory.of(e.socket_mem)
    multi_node = len(host.numa_nodes) > 1
    primary_nodes = host.nodes_of(config.primary.cores.cpus)
    nodes_in_use = set(primary_nodes)
    pinned = [("primary.coremask", config.primary.cores.text, config.primary.cores.cpus)]
    primary_eal = eal.EalArgs(
        cores=cpulist.format(config.primary.cores.cpus),
        mem_channels=e.mem_channels,
        huge_dir=e.huge_dir,
        file_prefix=e.file_prefix,
        proc_type=eal.ProcType.PRIMARY,
        socket_mem=memory.argument(primary_nodes),
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
            nodes=tuple(sorted(primary_nodes)),
        )
    )

    near_autos: list[tuple[str, int]] = []  # (key, node of its device) of each 'auto' near one
    for sec in config.secondaries[: options.nof_sec]:
        app = ("--", "-n", str(sec.id), "-s", f"{ctl.host}:{ctl.sec_port}")
        nodes = frozenset() if sec.cores.auto else host.nodes_of(sec.cores.cpus)
        # A secondary reserves no memory (DPDK ignores its --socket-mem); on a host of several
        # nodes it still names its node, as the memory it allocates comes from there.
        socket_mem: str | None = None
        node_memory: int | None = None
        if multi_node and (nodes or memory.per_node is None):
            socket_mem = memory.argument(nodes)
        elif multi_node and sec.cores.auto:
            node_memory = memory.per_node  # from KCM_NUMA_NODE, once kcm has chosen
        sec_eal = eal.EalArgs(
            cores=None if sec.cores.auto else cpulist.format(sec.cores.cpus),
            mem_channels=e.mem_channels,
            huge_dir=e.huge_dir,
            file_prefix=e.file_prefix,
            proc_type=eal.ProcType.SECONDARY,
            socket_mem=socket_mem,
        )
        device = host.device(sec.near) if sec.near is not None else None
        near_node = device.node if device is not None else None
        if sec.cores.auto:
            assert config.kcm is not None  # check() refuses 'auto' without kcm
            k = config.kcm
            # kcm books a free list of its pool, pins the child and exports the list (and its
            # node); the one shell snippet turns that into spp_nfv's EAL options.
            command = f'exec {shlex.quote(paths.nfv)} -l "$KCM_CPUS_ASSIGNED"'
            if node_memory is not None:
                command = (
                    f"{eal.socket_mem_from_node(node_memory)}; {command} "
                    f"{eal.SOCKET_MEM_FROM_SHELL}"
                )
            # kcm in the window reads the host the plan was made for (the window's
            # environment holds PATH alone).
            sys_env = () if host.sys_root == "/sys" else (f"KCM_SYS_FS={host.sys_root}",)
            near = () if sec.near is None else (f"--near={sec.near}",)
            argv: tuple[str, ...] = (
                *sudo,
                "env",
                f"KCM_PROC_FS={k.proc_fs}",
                *sys_env,
                k.program,
                "isolate",
                f"--conf-dir={k.conf_dir}",
                f"--pool={k.pool}",
                *near,
                command,
                "--",
                *eal.eal_argv(sec_eal),
                *app,
            )
            programs: tuple[str, ...] = (k.program, paths.nfv)
            if near_node is not None:
                near_autos.append((sec.key, near_node))
                nodes_in_use.add(near_node)
        else:
            argv = (*sudo, paths.nfv, *eal.eal_argv(sec_eal), *app)
            programs = (paths.nfv,)
            pinned.append((f"{sec.key}.coremask", sec.cores.text, sec.cores.cpus))
            nodes_in_use |= nodes
        windows.append(
            Window(
                name=f"sec{sec.id}",
                role=Role.SECONDARY,
                argv=argv,
                cwd=paths.spp_dir,
                cores=None if sec.cores.auto else sec.cores.cpus,
                auto_cores=sec.cores.auto,
                programs=programs,
                nodes=tuple(sorted(nodes)),
                near=sec.near,
                near_node=near_node,
                node_memory=node_memory,
            )
        )
    if host.cpu_nodes:
        warnings += _numa_warnings(host, memory, pinned)
    if multi_node:
        warnings += _near_warnings(config, host, near_autos)

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
        numa_nodes=tuple(sorted(host.numa_nodes)),
        hugepages=_hugepages(memory, frozenset(nodes_in_use)) if host.cpu_nodes else (),
        sys_root=host.sys_root,
        kcm_program=config.kcm.program if config.kcm else None,
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
            "nodes": list(w.nodes),
            "near": w.near,
            "near_node": w.near_node,
            "node_memory": w.node_memory,
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
            "numa_nodes": list(plan.numa_nodes),
            "hugepages": [[m.node, m.mb] for m in plan.hugepages],
            "sys_root": plan.sys_root,
            "kcm_program": plan.kcm_program,
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
                # What an older spp-wakeup's stored plan lacks has its default.
                nodes=tuple(int(n) for n in w.get("nodes", ())),
                near=w.get("near"),
                near_node=w.get("near_node"),
                node_memory=w.get("node_memory"),
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
            numa_nodes=tuple(int(n) for n in d.get("numa_nodes", ())),
            hugepages=tuple(NodeMemory(int(n), int(mb)) for n, mb in d.get("hugepages", ())),
            sys_root=d.get("sys_root", "/sys"),
            kcm_program=d.get("kcm_program"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a stored spp-wakeup plan: {e}") from None
