"""conf.yml: the model, its defaults, and a parser that reports every problem at once.

The seed's five sections (controller, primary, secondaries, vms_ring, vms_vhost) keep their
format; the optional sections (paths, eal, vm, sudo, kcm) give every other setting a default.
Parsing never stops at the first problem: each one is collected, with the key it concerns and
what to change, and the caller reports them together.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from kcm import cpulist
from spp_runner.errors import ConfigError

DEFAULT_CONFIG = "conf.yml"
MAX_ID = 65535  # ids end up in MAC addresses, two bytes each

# Where SPP's make-based build puts its programs, relative to the SPP tree.
SPP_CONTROLLER = "src/spp.py"
SPP_PRIMARY = "src/primary/x86_64-native-linuxapp-gcc/spp_primary"
SPP_NFV = "src/nfv/x86_64-native-linuxapp-gcc/spp_nfv"

_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SOCKET_MEM_RE = re.compile(r"^[0-9]+(,[0-9]+)*$")
# A PCI function as sysfs names it (the domain may be left out) ...
_PCI_RE = re.compile(r"^([0-9A-Fa-f]{4}:)?[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")
# ... or a network interface: what the kernel's dev_valid_name() lets through.
_IFNAME_RE = re.compile(r"^[^/:\s]{1,15}$")
_NEAR_HINT = 'name a PCI address such as "0000:3b:00.0" or a network interface such as ens1f0'


class Sudo(enum.Enum):
    """When DPDK and QEMU commands are prefixed with ``sudo``."""

    AUTO = "auto"  # only when spp-wakeup itself does not run as root
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True)
class Cores:
    """A ``coremask`` from conf.yml: a set of CPUs, or ``auto`` (booked from kcm at start)."""

    cpus: frozenset[int]
    auto: bool = False
    text: str = ""  # as written in conf.yml, for messages

    def describe(self) -> str:
        if self.auto:
            return "auto"
        return f"{self.text} (CPUs {cpulist.format(self.cpus)})"


@dataclass(frozen=True)
class Controller:
    host: str = "127.0.0.1"
    pri_port: int = 5555
    sec_port: int = 6666


@dataclass(frozen=True)
class Primary:
    cores: Cores
    portmask: int | None = None  # None: one bit per vhost port the runner adds
    num_rings: int = 8


@dataclass(frozen=True)
class Secondary:
    id: int
    cores: Cores
    key: str  # where it is in conf.yml, e.g. "secondaries[2]"
    near: str | None = None  # coremask auto: the NIC whose NUMA node kcm should prefer


@dataclass(frozen=True)
class VmEntry:
    id: int
    key: str


@dataclass(frozen=True)
class Paths:
    """Programs and files; relative paths are resolved against conf.yml's directory."""

    spp_dir: str
    python: str
    controller: str
    primary: str
    nfv: str
    qemu: str
    hda: str
    img_dir: str
    sock_dir: str


@dataclass(frozen=True)
class Eal:
    mem_channels: int = 4
    socket_mem: str = "1024"
    huge_dir: str = "/dev/hugepages"
    file_prefix: str = "spp"


@dataclass(frozen=True)
class VmSettings:
    memory: int = 2048  # MiB
    cpus: int = 2
    bridge: str = "virbr0"


@dataclass(frozen=True)
class Kcm:
    conf_dir: str
    pool: str = "dataplane"
    program: str = "kcm"
    proc_fs: str = "/proc"


@dataclass(frozen=True)
class Config:
    """A parsed conf.yml. ``problems`` lists what is wrong with it; empty means usable."""

    path: str
    controller: Controller
    primary: Primary
    secondaries: tuple[Secondary, ...]
    vms_ring: tuple[VmEntry, ...]
    vms_vhost: tuple[VmEntry, ...]
    paths: Paths
    eal: Eal = Eal()
    vm: VmSettings = VmSettings()
    sudo: Sudo = Sudo.AUTO
    kcm: Kcm | None = None
    problems: tuple[str, ...] = field(default=())


_SECTIONS: dict[str, tuple[str, ...] | None] = {
    "controller": ("host", "pri_port", "sec_port"),
    "primary": ("coremask", "portmask", "num_rings"),
    "secondaries": None,
    "vms_ring": None,
    "vms_vhost": None,
    "paths": (
        "spp_dir",
        "python",
        "controller",
        "primary",
        "nfv",
        "qemu",
        "hda",
        "img_dir",
        "sock_dir",
    ),
    "eal": ("mem_channels", "socket_mem", "huge_dir", "file_prefix"),
    "vm": ("memory", "cpus", "bridge"),
    "sudo": None,
    "kcm": ("conf_dir", "pool", "program", "proc_fs"),
}


def _int_text(value: int) -> str:
    """``value`` for a message: str() refuses integers of over 4300 digits (YAML reads
    ``0xfff...`` of any length), so a long one is given by its size."""
    if value.bit_length() <= 64:
        return str(value)
    return f"a{' negative' if value < 0 else 'n'} integer of {value.bit_length()} bits"


def _key_text(key: object) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return _int_text(key)
    return str(key)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, set):
        return "a set"
    if isinstance(value, int):
        return _int_text(value)
    return repr(value)


def parse_near(value: object) -> str:
    """A ``near`` device as conf.yml gives it, or raise ValueError with the reason it is not one.

    Only the spelling is checked here; whether the host has the device is the plan's question.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # YAML 1.1 reads 0000:18:00.1 as the base-60 number 1080.1, so its text is lost.
        raise ValueError(
            f"found the number {value!r}: YAML reads an unquoted PCI address made of decimal "
            'digits (0000:18:00.1) as a number; quote it: near: "0000:18:00.1"'
        )
    if not isinstance(value, str):
        raise ValueError(f"expected a device, found {_type_name(value)}; {_NEAR_HINT}")
    text = value.strip()
    if _PCI_RE.match(text):
        return text.lower()
    if text in (".", "..") or not text.isprintable() or not _IFNAME_RE.match(text):
        raise ValueError(f"{value!r} is neither a PCI address nor an interface name; {_NEAR_HINT}")
    return text


def parse_mask(value: object, *, allow_auto: bool) -> Cores | str:
    """A coremask as conf.yml may write it, or the reason it is not one.

    YAML reads ``0x0C`` unquoted as the integer 12, so integers are masks too; strings must
    spell the mask in hexadecimal with ``0x``, since ``"12"`` could mean either base.
    """
    hint = 'write a hexadecimal mask such as "0x0C" or an integer'
    if allow_auto:
        hint += ', or "auto"'
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"expected a core mask, found {_type_name(value)}; {hint}"
    if isinstance(value, str):
        text = value.strip()
        if allow_auto and text.lower() == "auto":
            return Cores(frozenset(), auto=True, text="auto")
        if not text.lower().startswith("0x"):
            return f"{value!r} is not a core mask; {hint}"
        try:
            mask = int(text[2:], 16)
        except ValueError:
            return f"{value!r} is not a hexadecimal core mask; {hint}"
        if "_" in text:
            return f"{value!r} is not a hexadecimal core mask; {hint}"
    else:
        text = f"{value:#x}"
        mask = value
    if mask < 0:
        shown = repr(value) if isinstance(value, str) else _int_text(value)
        return f"{shown} is negative; {hint}"
    if mask == 0:
        return f"{text} selects no CPU; set at least one bit"
    if mask.bit_length() > cpulist.MAX_CPU:
        return f"{text} names CPUs beyond {cpulist.MAX_CPU - 1}"
    return Cores(cpulist.from_mask(mask), text=text)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError):
            # PyYAML's constructors raise these for scalars they cannot convert: "!!int x",
            # "!!timestamp x", "2020-02-30", a decimal integer of over 4300 digits.
            tag = node.tag.rpartition(":")[2]
            problem = f"cannot read this {tag}"
            if isinstance(node.value, str):
                value = node.value
                shown = (
                    repr(value) if len(value) <= 40 else f"{value[:20]!r}... ({len(value)} chars)"
                )
                problem = f"cannot read {shown} as {tag}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, list | dict | set):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping or a list cannot be a key", key_node.start_mark
            )
        if isinstance(key, str | int) and key in seen:
            mark = key_node.start_mark
            shown = repr(key) if isinstance(key, str) else _key_text(key)
            raise yaml.constructor.ConstructorError(
                None, None, f"key {shown} appears twice in one mapping", mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_yaml(text: str, path: str) -> object:
    """The YAML document in ``text``; a syntax error names the file, line and column."""
    try:
        loader = _UniqueKeyLoader(text)  # a SafeLoader subclass; its reader checks the text
        try:
            return loader.get_single_data()
        except (ValueError, OverflowError):
            # PyYAML's scanner passes a "\U" escape to chr() unchecked (constructors' errors
            # are ConstructorErrors already: see _UniqueKeyLoader.construct_object).
            raise yaml.scanner.ScannerError(
                None, None, "an escape names no Unicode character", loader.get_mark()
            ) from None
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def read(path: str) -> Config:
    """Read and parse ``path``; only an unreadable or unparsable file raises here."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; pass --config PATH or copy examples/spp/conf.yml here"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse(load_yaml(text, path), path)


class _Parser:
    """Walks the YAML document, collecting problems instead of raising at the first."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{key}: {text}")

    def mapping(self, value: object, key: str, known: tuple[str, ...]) -> dict[str, object]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(
                key or "top level",
                f"expected a mapping with keys {', '.join(known)}, found {_type_name(value)}",
            )
            return {}
        result: dict[str, object] = {}
        for k, v in value.items():
            if k not in known:
                self.problem(
                    f"{key}.{_key_text(k)}" if key else _key_text(k),
                    f"unknown key; {'known keys' if key else 'known sections'}: {', '.join(known)}",
                )
            else:
                result[str(k)] = v
        return result

    def integer(
        self, section: dict[str, object], key: str, where: str, default: int, lo: int, hi: int
    ) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(
                f"{where}.{key}",
                f"expected an integer from {lo} to {hi}, found {_type_name(value)}",
            )
            return default
        if not lo <= value <= hi:
            self.problem(f"{where}.{key}", f"{_int_text(value)} is out of range; use {lo} to {hi}")
            return default
        return value

    def string(
        self,
        section: dict[str, object],
        key: str,
        where: str,
        default: str,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> str:
        value = section.get(key, default)
        if not isinstance(value, str) or not value.strip():
            self.problem(
                f"{where}.{key}",
                f"expected {what or 'a non-empty string'}, found {_type_name(value)}",
            )
            return default
        value = value.strip()
        if pattern is not None and not pattern.match(value):
            self.problem(f"{where}.{key}", f"{value!r} is not {what}")
            return default
        # YAML's "\0" and "\ud800" escapes: no path, program or name can hold them.
        if "\0" in value or (not value.isascii() and not _encodable(value)):
            self.problem(f"{where}.{key}", f"{value!r} holds a NUL or a lone surrogate")
            return default
        return value

    def file_path(self, section: dict[str, object], key: str, where: str, default: str) -> str:
        """A path; relative ones are taken from conf.yml's directory."""
        value = self.string(section, key, where, default, what="a path")
        return self.resolve(value)

    def resolve(self, value: str) -> str:
        value = os.path.expanduser(value)
        return os.path.normpath(os.path.join(self.base_dir, value))

    def program(self, section: dict[str, object], key: str, where: str, default: str) -> str:
        """A program: a bare name is looked up on PATH at launch, anything with / is a path."""
        value = self.string(section, key, where, default, what="a program name or path")
        return self.resolve(value) if "/" in value else value

    def entries(self, value: object, key: str, known: tuple[str, ...]) -> list[dict[str, object]]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(
                key, f"expected a list of entries like '- id: 1', found {_type_name(value)}"
            )
            return []
        return [
            self.mapping(item, f"{key}[{i}]", known) if item is not None else {}
            for i, item in enumerate(value)
        ]

    def entry_id(self, entry: dict[str, object], where: str) -> int | None:
        if "id" not in entry:
            self.problem(where, "missing 'id'; give each entry a unique positive integer id")
            return None
        value = entry["id"]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{where}.id", f"expected a positive integer, found {_type_name(value)}")
            return None
        if not 1 <= value <= MAX_ID:
            self.problem(
                f"{where}.id",
                f"{_int_text(value)} is out of range; use 1 to {MAX_ID} (VM id 0 is the template)",
            )
            return None
        return value


def parse(data: object, path: str) -> Config:
    """The Config that the YAML document ``data`` (read from ``path``) describes."""
    p = _Parser(os.path.dirname(os.path.abspath(path)))
    if data is None:
        data = {}
        p.problems.append("the file is empty; it needs at least primary.coremask")
    top = p.mapping(data, "", tuple(_SECTIONS))

    def known(name: str) -> tuple[str, ...]:
        keys = _SECTIONS[name]
        assert keys is not None
        return keys

    ctl = p.mapping(top.get("controller"), "controller", known("controller"))
    host = p.string(
        ctl,
        "host",
        "controller",
        "127.0.0.1",
        _HOST_RE,
        "a host name or IPv4 address (SPP's -s host:port cannot carry IPv6)",
    )
    pri_port = p.integer(ctl, "pri_port", "controller", 5555, 1, 65535)
    sec_port = p.integer(ctl, "sec_port", "controller", 6666, 1, 65535)
    if pri_port == sec_port:
        p.problem(
            "controller.sec_port",
            f"{sec_port} is also pri_port; the controller needs two different ports",
        )
    controller = Controller(host, pri_port, sec_port)

    raw_pri = top.get("primary")
    if isinstance(raw_pri, dict) and "near" in raw_pri:
        # Said for what it is, not as an unknown key: only 'auto' secondaries are placed.
        raw_pri = {k: v for k, v in raw_pri.items() if k != "near"}
        p.problem(
            "primary.near",
            "the primary's cores are a fixed mask, which kcm never places; remove 'near' and "
            "give the primary CPUs of the device's node (--dry-run shows each window's node)",
        )
    pri = p.mapping(raw_pri, "primary", known("primary"))
    if "coremask" not in pri:
        p.problem("primary.coremask", "missing; give the primary its CPUs, e.g. coremask: 0x03")
        primary_cores = Cores(frozenset(), text="?")
    else:
        parsed = parse_mask(pri["coremask"], allow_auto=False)
        if isinstance(parsed, str):
            if isinstance(pri["coremask"], str) and pri["coremask"].strip().lower() == "auto":
                parsed = (
                    "'auto' is only for secondaries; give the primary a fixed mask such as 0x03"
                )
            p.problem("primary.coremask", parsed)
            primary_cores = Cores(frozenset(), text="?")
        else:
            primary_cores = parsed
    portmask: int | None = None
    if "portmask" in pri:
        parsed_ports = parse_mask(pri["portmask"], allow_auto=False)
        if isinstance(parsed_ports, str):
            p.problem("primary.portmask", parsed_ports.replace("core mask", "port mask"))
        else:
            portmask = cpulist.to_mask(parsed_ports.cpus)
    num_rings = p.integer(pri, "num_rings", "primary", 8, 0, 1024)
    primary = Primary(primary_cores, portmask, num_rings)

    secondaries: list[Secondary] = []
    sec_keys = ("id", "coremask", "near")
    for i, entry in enumerate(p.entries(top.get("secondaries"), "secondaries", sec_keys)):
        where = f"secondaries[{i}]"
        sec_id = p.entry_id(entry, where)
        if "coremask" not in entry:
            p.problem(
                where,
                "missing 'coremask'; give its CPUs, e.g. coremask: \"0x0C\", or "
                '"auto" to book them from kcm',
            )
            cores = Cores(frozenset(), text="?")
        else:
            parsed = parse_mask(entry["coremask"], allow_auto=True)
            if isinstance(parsed, str):
                p.problem(f"{where}.coremask", parsed)
                cores = Cores(frozenset(), text="?")
            else:
                cores = parsed
        near: str | None = None
        if "near" in entry:
            try:
                near = parse_near(entry["near"])
            except ValueError as e:
                p.problem(f"{where}.near", str(e))
            if near is not None and not cores.auto and cores.text != "?":
                p.problem(
                    f"{where}.near",
                    "only a coremask 'auto' is placed near a device (kcm chooses its cores); "
                    "set coremask: auto, or remove 'near' and give CPUs of the device's node",
                )
                near = None
        if sec_id is not None:
            secondaries.append(Secondary(sec_id, cores, where, near))

    def vms(name: str) -> tuple[VmEntry, ...]:
        found = []
        for i, entry in enumerate(p.entries(top.get(name), name, ("id",))):
            vm_id = p.entry_id(entry, f"{name}[{i}]")
            if vm_id is not None:
                found.append(VmEntry(vm_id, f"{name}[{i}]"))
        return tuple(found)

    vms_ring = vms("vms_ring")
    vms_vhost = vms("vms_vhost")

    # A VM's id is the secondary id of the spp_nfv inside it, so ids are shared by all three.
    owners: dict[int, str] = {}
    items: list[Secondary | VmEntry] = [*secondaries, *vms_ring, *vms_vhost]
    for item in items:
        if item.id in owners:
            p.problem(
                f"{item.key}.id",
                f"{item.id} is already the id of {owners[item.id]}; "
                "secondary and VM ids must be unique",
            )
        else:
            owners[item.id] = item.key

    raw_paths = p.mapping(top.get("paths"), "paths", known("paths"))
    spp_dir = p.file_path(raw_paths, "spp_dir", "paths", "../spp")
    hda = p.file_path(raw_paths, "hda", "paths", "../qemu-hda/img/template.qcow2")
    paths = Paths(
        spp_dir=spp_dir,
        python=p.program(raw_paths, "python", "paths", "python3"),
        controller=p.file_path(
            raw_paths, "controller", "paths", os.path.join(spp_dir, SPP_CONTROLLER)
        ),
        primary=p.file_path(raw_paths, "primary", "paths", os.path.join(spp_dir, SPP_PRIMARY)),
        nfv=p.file_path(raw_paths, "nfv", "paths", os.path.join(spp_dir, SPP_NFV)),
        qemu=p.program(raw_paths, "qemu", "paths", "qemu-system-x86_64"),
        hda=hda,
        img_dir=p.file_path(raw_paths, "img_dir", "paths", os.path.dirname(hda)),
        sock_dir=p.file_path(raw_paths, "sock_dir", "paths", "/tmp"),
    )

    raw_eal = p.mapping(top.get("eal"), "eal", known("eal"))
    socket_mem_value = raw_eal.get("socket_mem", 1024)
    socket_mem = "1024"
    if isinstance(socket_mem_value, int) and not isinstance(socket_mem_value, bool):
        if socket_mem_value < 1:
            shown = _int_text(socket_mem_value)
            p.problem("eal.socket_mem", f"{shown} MB is too little; give at least 1")
        elif socket_mem_value.bit_length() > 64:
            shown = _int_text(socket_mem_value)
            p.problem("eal.socket_mem", f"{shown} MB is more than any host has")
        else:
            socket_mem = str(socket_mem_value)
    elif isinstance(socket_mem_value, str) and _SOCKET_MEM_RE.match(socket_mem_value.strip()):
        socket_mem = socket_mem_value.strip()
    else:
        p.problem(
            "eal.socket_mem",
            f"expected MB as an integer (1024) or one per NUMA socket "
            f'("512,512"), found {_type_name(socket_mem_value)}',
        )
    eal = Eal(
        mem_channels=p.integer(raw_eal, "mem_channels", "eal", 4, 1, 32),
        socket_mem=socket_mem,
        huge_dir=p.file_path(raw_eal, "huge_dir", "eal", "/dev/hugepages"),
        file_prefix=p.string(
            raw_eal,
            "file_prefix",
            "eal",
            "spp",
            _PREFIX_RE,
            "a file prefix of letters, digits, '_' and '-'",
        ),
    )

    raw_vm = p.mapping(top.get("vm"), "vm", known("vm"))
    vm = VmSettings(
        memory=p.integer(raw_vm, "memory", "vm", 2048, 64, 1 << 22),
        cpus=p.integer(raw_vm, "cpus", "vm", 2, 1, 512),
        bridge=p.string(raw_vm, "bridge", "vm", "virbr0", _NAME_RE, "a bridge name"),
    )

    sudo = Sudo.AUTO
    if "sudo" in top:
        raw_sudo = top["sudo"]
        if raw_sudo is True:
            sudo = Sudo.ALWAYS
        elif raw_sudo is False:
            sudo = Sudo.NEVER
        elif isinstance(raw_sudo, str) and raw_sudo.strip().lower() in {s.value for s in Sudo}:
            sudo = Sudo(raw_sudo.strip().lower())
        else:
            p.problem("sudo", f"expected auto, always or never, found {_type_name(raw_sudo)}")

    kcm: Kcm | None = None
    if top.get("kcm") is not None:
        raw_kcm = p.mapping(top["kcm"], "kcm", known("kcm"))
        if isinstance(top["kcm"], dict) and "conf_dir" not in raw_kcm:
            p.problem(
                "kcm.conf_dir",
                "missing; name kcm's state directory, e.g. /etc/kcm, or remove the kcm section",
            )
        if raw_kcm:
            kcm = Kcm(
                conf_dir=p.file_path(raw_kcm, "conf_dir", "kcm", "/etc/kcm"),
                pool=p.string(raw_kcm, "pool", "kcm", "dataplane", _NAME_RE, "a pool name"),
                program=p.program(raw_kcm, "program", "kcm", "kcm"),
                proc_fs=p.file_path(raw_kcm, "proc_fs", "kcm", "/proc"),
            )

    return Config(
        path=path,
        controller=controller,
        primary=primary,
        secondaries=tuple(secondaries),
        vms_ring=vms_ring,
        vms_vhost=vms_vhost,
        paths=paths,
        eal=eal,
        vm=vm,
        sudo=sudo,
        kcm=kcm,
        problems=tuple(p.problems),
    )
