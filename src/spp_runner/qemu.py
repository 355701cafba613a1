"""QEMU command lines for the runner's VMs, built from typed values."""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class VmSpec:
    """One VM: its id (0 is the template), disk image, size, and vhost-user sockets."""

    vm_id: int
    image: str
    image_format: str | None  # None: let QEMU probe (the user's template may be raw)
    memory_mb: int
    cpus: int
    bridge: str
    huge_dir: str
    vhost: tuple[tuple[int, str], ...] = ()  # (vhost interface index, socket path)


def _value(text: str) -> str:
    """``text`` as a value inside a comma-separated QEMU option (commas are doubled)."""
    return text.replace(",", ",,")


def mac(kind: int, number: int) -> str:
    """A locally administered MAC in QEMU's 52:54:00 range; ``kind`` keeps NIC roles apart."""
    return f"52:54:00:{kind:02x}:{(number >> 8) & 0xFF:02x}:{number & 0xFF:02x}"


def vm_argv(qemu: str, vm: VmSpec) -> list[str]:
    """The QEMU command line for ``vm``.

    The management NIC sits on the libvirt bridge, whose dnsmasq hands out the leases that
    sppsh reads. vhost-user needs guest memory that the DPDK host process can map, hence a
    shared hugepage backend whenever the VM has vhost interfaces.
    """
    argv = [
        qemu,
        "-name",
        f"spp-vm{vm.vm_id}",
        "-enable-kvm",
        "-cpu",
        "host",
        "-smp",
        str(vm.cpus),
        "-m",
        str(vm.memory_mb),
        "-nographic",
        "-drive",
        f"file={_value(vm.image)},if=virtio"
        + (f",format={vm.image_format}" if vm.image_format else ""),
        "-netdev",
        f"bridge,id=mgmt,br={vm.bridge}",
        "-device",
        f"virtio-net-pci,netdev=mgmt,mac={mac(0, vm.vm_id)}",
    ]
    if vm.vhost:
        argv += [
            "-object",
            f"memory-backend-file,id=mem,size={vm.memory_mb}M,mem-path={_value(vm.huge_dir)},share=on",
            "-numa",
            "node,memdev=mem",
            "-mem-prealloc",
        ]
    for index, socket_path in vm.vhost:
        argv += [
            "-chardev",
            f"socket,id=chr{index},path={_value(socket_path)}",
            "-netdev",
            f"vhost-user,id=vhost{index},chardev=chr{index},vhostforce=on",
            "-device",
            f"virtio-net-pci,netdev=vhost{index},mac={mac(0x12, index)}",
        ]
    return argv


def chardev_paths(argv: list[str] | tuple[str, ...]) -> list[str]:
    """The socket paths of the ``-chardev socket,...`` options in a QEMU argv."""
    paths = []
    for flag, value in itertools.pairwise(argv):
        if flag == "-chardev" and value.startswith("socket,"):
            for part in value.replace(",,", "\0").split(","):
                if part.startswith("path="):
                    paths.append(part[len("path=") :].replace("\0", ","))
    return paths
