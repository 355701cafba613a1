"""conf.yml parsing: the seed's format, defaults, and one named problem per broken rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spp_runner import config
from spp_runner.config import Cores, Sudo
from spp_runner.errors import ConfigError

from .conftest import FIXTURES

BASE = {"primary": {"coremask": 3}}


def parse(data: object, path: str = "/etc/spp/conf.yml") -> config.Config:
    return config.parse(data, path)


def parse_text(text: str) -> config.Config:
    return parse(config.load_yaml(text, "conf.yml"))


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("value", "cpus"),
    [
        pytest.param(3, {0, 1}, id="int-3"),
        pytest.param(0x0C, {2, 3}, id="int-0x0C"),
        pytest.param("0x0C", {2, 3}, id="str-0x0C"),
        pytest.param("0x0c", {2, 3}, id="str-lowercase"),
        pytest.param(" 0X300 ", {8, 9}, id="str-upper-X-spaces"),
        pytest.param("0xC00", {10, 11}, id="str-0xC00"),
        pytest.param(1 << 63, {63}, id="int-cpu-63"),
    ],
)
def test_mask_parses(value: object, cpus: set[int]) -> None:
    parsed = config.parse_mask(value, allow_auto=False)
    assert isinstance(parsed, Cores)
    assert parsed.cpus == frozenset(cpus)
    assert not parsed.auto


def test_unquoted_hex_in_yaml_is_the_same_mask_as_the_quoted_string() -> None:
    unquoted = parse_text("primary: {coremask: 0x0C}")
    quoted = parse_text('primary: {coremask: "0x0C"}')
    assert unquoted.primary.cores.cpus == quoted.primary.cores.cpus == frozenset({2, 3})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("12", "'12' is not a core mask", id="decimal-string"),
        pytest.param("0xZZ", "'0xZZ' is not a hexadecimal core mask", id="bad-hex"),
        pytest.param("0x", "'0x' is not a hexadecimal core mask", id="empty-hex"),
        pytest.param("0x1_0", "'0x1_0' is not a hexadecimal core mask", id="underscore"),
        pytest.param("cores 2-3", "'cores 2-3' is not a core mask", id="words"),
        pytest.param(0, "0x0 selects no CPU", id="zero"),
        pytest.param("0x0", "0x0 selects no CPU", id="zero-string"),
        pytest.param(-4, "-4 is negative", id="negative"),
        pytest.param(True, "found the boolean true", id="bool"),
        pytest.param(1.5, "found 1.5", id="float"),
        pytest.param([1, 2], "found a list", id="list"),
        pytest.param(None, "found nothing", id="null"),
        pytest.param("auto", "'auto' is not a core mask", id="auto-not-allowed"),
    ],
)
def test_bad_mask_is_named_with_what_to_write(value: object, message: str) -> None:
    parsed = config.parse_mask(value, allow_auto=False)
    assert isinstance(parsed, str)
    assert message in parsed
    assert 'hexadecimal mask such as "0x0C" or an integer' in parsed or "selects no" in parsed


def test_auto_is_a_mask_for_secondaries_only() -> None:
    conf = parse({"primary": {"coremask": "auto"}, "secondaries": [{"id": 1, "coremask": "AUTO"}]})
    assert conf.secondaries[0].cores.auto
    assert conf.problems == (
        "primary.coremask: 'auto' is only for secondaries; give the primary a fixed mask "
        "such as 0x03",
    )


# ----------------------------------------------------------------------------- the seed


def test_seed_conf_parses_with_no_problem() -> None:
    conf = config.read(str(FIXTURES / "seed_conf.yml"))
    assert conf.problems == ()
    assert conf.controller == config.Controller("127.0.0.1", 5555, 6666)
    assert conf.primary.cores.cpus == frozenset({0, 1})
    assert [(s.id, sorted(s.cores.cpus)) for s in conf.secondaries] == [
        (1, [2, 3]),
        (2, [4, 5]),
        (3, [6, 7]),
        (4, [8, 9]),
        (5, [10, 11]),
    ]
    assert [v.id for v in conf.vms_ring] == [6, 7, 8, 9, 10]
    assert [v.id for v in conf.vms_vhost] == [11, 12, 13, 14, 15]


def test_every_optional_key_has_its_documented_default() -> None:
    conf = parse(BASE, "/home/u/spp-runner/conf.yml")
    assert conf.problems == ()
    assert conf.controller == config.Controller("127.0.0.1", 5555, 6666)
    assert conf.primary.portmask is None
    assert conf.primary.num_rings == 8
    assert conf.secondaries == conf.vms_ring == conf.vms_vhost == ()
    assert conf.paths == config.Paths(
        spp_dir="/home/u/spp",
        python="python3",
        controller="/home/u/spp/src/spp.py",
        primary="/home/u/spp/src/primary/x86_64-native-linuxapp-gcc/spp_primary",
        nfv="/home/u/spp/src/nfv/x86_64-native-linuxapp-gcc/spp_nfv",
        qemu="qemu-system-x86_64",
        hda="/home/u/qemu-hda/img/template.qcow2",
        img_dir="/home/u/qemu-hda/img",
        sock_dir="/tmp",
    )
    assert conf.eal == config.Eal(4, "1024", "/dev/hugepages", "spp")
    assert conf.vm == config.VmSettings(2048, 2, "virbr0")
    assert conf.sudo is Sudo.AUTO
    assert conf.kcm is None


def test_paths_follow_spp_dir_and_resolve_against_the_conf_directory() -> None:
    conf = parse(
        {
            **BASE,
            "paths": {
                "spp_dir": "vendor/spp",
                "qemu": "./bin/qemu",
                "python": "python3.11",
                "hda": "/img/base.img",
            },
        },
        "/srv/run/conf.yml",
    )
    assert conf.paths.spp_dir == "/srv/run/vendor/spp"
    assert conf.paths.primary.startswith("/srv/run/vendor/spp/src/primary/")
    assert conf.paths.qemu == "/srv/run/bin/qemu"  # has a slash: a path
    assert conf.paths.python == "python3.11"  # bare: looked up on PATH
    assert conf.paths.img_dir == "/img"


def test_kcm_section_defaults() -> None:
    conf = parse({**BASE, "kcm": {"conf_dir": "/etc/kcm"}})
    assert conf.kcm == config.Kcm("/etc/kcm", "dataplane", "kcm", "/proc")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", Sudo.AUTO),
        ("always", Sudo.ALWAYS),
        ("never", Sudo.NEVER),
        (True, Sudo.ALWAYS),
        (False, Sudo.NEVER),
    ],
)
def test_sudo_values(value: object, expected: Sudo) -> None:
    conf = parse({**BASE, "sudo": value})
    assert conf.problems == ()
    assert conf.sudo is expected


def test_socket_mem_per_numa_socket() -> None:
    assert parse({**BASE, "eal": {"socket_mem": "512,512"}}).eal.socket_mem == "512,512"


# ----------------------------------------------------------------------------- near

AUTO = {"id": 1, "coremask": "auto"}


@pytest.mark.parametrize(
    ("text", "near"),
    [
        pytest.param('"0000:3b:00.0"', "0000:3b:00.0", id="pci-quoted"),
        pytest.param("0000:AF:00.1", "0000:af:00.1", id="pci-unquoted-upper-case"),
        pytest.param('"3b:00.0"', "3b:00.0", id="pci-without-domain"),
        pytest.param("ens1f0", "ens1f0", id="interface"),
        pytest.param("enp175s0f1np1", "enp175s0f1np1", id="interface-15-chars"),
    ],
)
def test_an_auto_secondary_may_be_placed_near_a_device(text: str, near: str) -> None:
    conf = parse_text(
        f"primary: {{coremask: 3}}\nsecondaries:\n  - {{id: 1, coremask: auto, near: {text}}}\n"
    )
    assert conf.problems == ()
    assert conf.secondaries[0].near == near
    assert conf.secondaries[0].cores.auto


def test_without_near_a_secondary_is_near_nothing() -> None:
    assert parse({**BASE, "secondaries": [AUTO]}).secondaries[0].near is None


NEAR_PROBLEMS = [
    pytest.param(
        # YAML 1.1 reads this as the base-60 float 1080.1: the user must quote it.
        "primary: {coremask: 3}\nsecondaries: [{id: 1, coremask: auto, near: 0000:18:00.1}]\n",
        [
            "secondaries[0].near: found the number 1080.1: YAML reads an unquoted PCI address "
            'made of decimal digits (0000:18:00.1) as a number; quote it: near: "0000:18:00.1"'
        ],
        id="pci-address-yaml-reads-as-a-number",
    ),
    pytest.param(
        "primary: {coremask: 3}\nsecondaries: [{id: 1, coremask: auto, near: [ens1f0]}]\n",
        [
            "secondaries[0].near: expected a device, found a list; name a PCI address such as "
            '"0000:3b:00.0" or a network interface such as ens1f0'
        ],
        id="list",
    ),
    pytest.param(
        "primary: {coremask: 3}\nsecondaries: [{id: 1, coremask: auto, near: }]\n",
        [
            "secondaries[0].near: expected a device, found nothing; name a PCI address such as "
            '"0000:3b:00.0" or a network interface such as ens1f0'
        ],
        id="empty",
    ),
    pytest.param(
        "primary: {coremask: 3}\nsecondaries: [{id: 1, coremask: auto, near: ../../etc}]\n",
        [
            "secondaries[0].near: '../../etc' is neither a PCI address nor an interface name; "
            'name a PCI address such as "0000:3b:00.0" or a network interface such as ens1f0'
        ],
        id="path",
    ),
    pytest.param(
        "primary: {coremask: 3}\nsecondaries: [{id: 1, coremask: auto, near: a-name-of-16-chr}]\n",
        [
            "secondaries[0].near: 'a-name-of-16-chr' is neither a PCI address nor an interface "
            'name; name a PCI address such as "0000:3b:00.0" or a network interface such as '
            "ens1f0"
        ],
        id="interface-name-too-long",
    ),
    pytest.param(
        'primary: {coremask: 3}\nsecondaries: [{id: 1, coremask: auto, near: "0000:3b:00"}]\n',
        [
            "secondaries[0].near: '0000:3b:00' is neither a PCI address nor an interface name; "
            'name a PCI address such as "0000:3b:00.0" or a network interface such as ens1f0'
        ],
        id="pci-address-without-function",
    ),
    pytest.param(
        'primary: {coremask: 3}\nsecondaries: [{id: 1, coremask: "0x0C", near: ens1f0}]\n',
        [
            "secondaries[0].near: only a coremask 'auto' is placed near a device (kcm chooses "
            "its cores); set coremask: auto, or remove 'near' and give CPUs of the device's node"
        ],
        id="fixed-mask",
    ),
    pytest.param(
        "primary: {coremask: 3, near: ens1f0}\n",
        [
            "primary.near: the primary's cores are a fixed mask, which kcm never places; remove "
            "'near' and give the primary CPUs of the device's node (--dry-run shows each "
            "window's node)"
        ],
        id="primary",
    ),
    pytest.param(
        "primary: {coremask: 3}\nsecondaries: [{id: 1, coremask: auto, nearby: ens1f0}]\n",
        ["secondaries[0].nearby: unknown key; known keys: id, coremask, near"],
        id="misspelt",
    ),
]


@pytest.mark.parametrize(("text", "problems"), NEAR_PROBLEMS)
def test_near_problems_name_the_key_and_what_to_write(text: str, problems: list[str]) -> None:
    assert list(parse_text(text).problems) == problems


def test_near_problems_come_with_the_others_at_once() -> None:
    conf = parse_text(
        "primary: {coremask: 3, near: ens1f0}\n"
        "secondaries:\n"
        "  - {id: 1, coremask: auto, near: 0000:00:03.0}\n"
        "  - {id: 2, coremask: '0x30', near: ens2f0}\n"
        "  - {id: 2, coremask: twelve, near: ens2f0}\n"
    )
    assert [p.split(":")[0] for p in conf.problems] == [
        "primary.near",
        "secondaries[0].near",
        "secondaries[1].near",
        "secondaries[2].coremask",  # its near is not judged against a mask that is not one
        "secondaries[2].id",
    ]


# ----------------------------------------------------------------------------- problems

PROBLEMS = [
    pytest.param(
        {"primary": {}},
        ["primary.coremask: missing; give the primary its CPUs, e.g. coremask: 0x03"],
        id="primary-mask-missing",
    ),
    pytest.param(
        {**BASE, "controler": {"host": "x"}},
        [
            "controler: unknown key; known sections: controller, primary, secondaries, vms_ring, "
            "vms_vhost, paths, eal, vm, sudo, kcm"
        ],
        id="unknown-section",
    ),
    pytest.param(
        {"primary": {"coremask": 3, "cores": 2}},
        ["primary.cores: unknown key; known keys: coremask, portmask, num_rings"],
        id="unknown-key",
    ),
    pytest.param(
        {**BASE, "controller": {"pri_port": "5555"}},
        ["controller.pri_port: expected an integer from 1 to 65535, found '5555'"],
        id="port-string",
    ),
    pytest.param(
        {**BASE, "controller": {"sec_port": 70000}},
        ["controller.sec_port: 70000 is out of range; use 1 to 65535"],
        id="port-range",
    ),
    pytest.param(
        {**BASE, "controller": {"pri_port": 6000, "sec_port": 6000}},
        ["controller.sec_port: 6000 is also pri_port; the controller needs two different ports"],
        id="same-ports",
    ),
    pytest.param(
        {**BASE, "controller": {"host": "fe80::1"}},
        [
            "controller.host: 'fe80::1' is not a host name or IPv4 address (SPP's -s host:port "
            "cannot carry IPv6)"
        ],
        id="host-ipv6",
    ),
    pytest.param(
        {**BASE, "controller": {"host": 10}},
        [
            "controller.host: expected a host name or IPv4 address (SPP's -s host:port cannot "
            "carry IPv6), found 10"
        ],
        id="host-int",
    ),
    pytest.param(
        {**BASE, "controller": "127.0.0.1"},
        ["controller: expected a mapping with keys host, pri_port, sec_port, found '127.0.0.1'"],
        id="section-not-mapping",
    ),
    pytest.param(
        {**BASE, "secondaries": {"id": 1}},
        ["secondaries: expected a list of entries like '- id: 1', found a mapping"],
        id="secondaries-not-list",
    ),
    pytest.param(
        {**BASE, "secondaries": [{"id": 1, "coremask": "0x0C"}, {"id": 1, "coremask": 48}]},
        [
            "secondaries[1].id: 1 is already the id of secondaries[0]; secondary and VM ids must "
            "be unique"
        ],
        id="duplicate-secondary-id",
    ),
    pytest.param(
        {**BASE, "secondaries": [{"id": 6, "coremask": 12}], "vms_vhost": [{"id": 6}]},
        [
            "vms_vhost[0].id: 6 is already the id of secondaries[0]; secondary and VM ids must "
            "be unique"
        ],
        id="vm-id-reuses-secondary-id",
    ),
    pytest.param(
        {**BASE, "vms_ring": [{"id": 0}]},
        ["vms_ring[0].id: 0 is out of range; use 1 to 65535 (VM id 0 is the template)"],
        id="vm-id-zero",
    ),
    pytest.param(
        {**BASE, "secondaries": [{"coremask": 12}]},
        ["secondaries[0]: missing 'id'; give each entry a unique positive integer id"],
        id="secondary-id-missing",
    ),
    pytest.param(
        {**BASE, "secondaries": [{"id": "one", "coremask": 12}]},
        ["secondaries[0].id: expected a positive integer, found 'one'"],
        id="secondary-id-string",
    ),
    pytest.param(
        {**BASE, "secondaries": [{"id": 1}]},
        [
            "secondaries[0]: missing 'coremask'; give its CPUs, e.g. coremask: \"0x0C\", or "
            '"auto" to book them from kcm'
        ],
        id="secondary-mask-missing",
    ),
    pytest.param(
        {**BASE, "secondaries": [{"id": 1, "coremask": "12"}]},
        [
            "secondaries[0].coremask: '12' is not a core mask; write a hexadecimal mask such as "
            '"0x0C" or an integer, or "auto"'
        ],
        id="secondary-mask-decimal-string",
    ),
    pytest.param(
        {**BASE, "vms_vhost": [{"id": 11, "name": "a"}]},
        ["vms_vhost[0].name: unknown key; known keys: id"],
        id="vm-unknown-key",
    ),
    pytest.param(
        {**BASE, "eal": {"file_prefix": "spp/../x"}},
        ["eal.file_prefix: 'spp/../x' is not a file prefix of letters, digits, '_' and '-'"],
        id="file-prefix-path",
    ),
    pytest.param(
        {**BASE, "eal": {"socket_mem": "1G"}},
        [
            "eal.socket_mem: expected MB as an integer (1024) or one per NUMA socket "
            "(\"512,512\"), found '1G'"
        ],
        id="socket-mem",
    ),
    pytest.param(
        {**BASE, "eal": {"mem_channels": 0}},
        ["eal.mem_channels: 0 is out of range; use 1 to 32"],
        id="mem-channels",
    ),
    pytest.param(
        {**BASE, "vm": {"memory": True}},
        ["vm.memory: expected an integer from 64 to 4194304, found the boolean true"],
        id="vm-memory-bool",
    ),
    pytest.param(
        {**BASE, "sudo": "sometimes"},
        ["sudo: expected auto, always or never, found 'sometimes'"],
        id="sudo",
    ),
    pytest.param(
        {**BASE, "kcm": {"pool": "dataplane"}},
        [
            "kcm.conf_dir: missing; name kcm's state directory, e.g. /etc/kcm, or remove the kcm "
            "section"
        ],
        id="kcm-without-conf-dir",
    ),
    pytest.param(
        {**BASE, "paths": {"spp_dir": 5}},
        ["paths.spp_dir: expected a path, found 5"],
        id="path-int",
    ),
    pytest.param(
        {**BASE, "primary": {"coremask": 3, "portmask": "ports"}},
        [
            "primary.portmask: 'ports' is not a port mask; write a hexadecimal mask such as "
            '"0x0C" or an integer'
        ],
        id="portmask",
    ),
    pytest.param(
        ["primary"],
        [
            "top level: expected a mapping with keys controller, primary, secondaries, vms_ring, "
            "vms_vhost, paths, eal, vm, sudo, kcm, found a list",
            "primary.coremask: missing; give the primary its CPUs, e.g. coremask: 0x03",
        ],
        id="top-level-list",
    ),
    pytest.param(
        None,
        [
            "the file is empty; it needs at least primary.coremask",
            "primary.coremask: missing; give the primary its CPUs, e.g. coremask: 0x03",
        ],
        id="empty-file",
    ),
]


@pytest.mark.parametrize(("data", "problems"), PROBLEMS)
def test_each_problem_names_its_key(data: object, problems: list[str]) -> None:
    assert list(parse(data).problems) == problems


def test_all_problems_are_reported_together() -> None:
    conf = parse(
        {
            "controller": {"pri_port": 0, "colour": "red"},
            "primary": {"coremask": "0xZZ"},
            "secondaries": [{"id": 1, "coremask": 0}, {"id": 1, "coremask": 12}],
        }
    )
    assert [p.split(":")[0] for p in conf.problems] == [
        "controller.colour",
        "controller.pri_port",
        "primary.coremask",
        "secondaries[0].coremask",
        "secondaries[1].id",
    ]


def test_yaml_syntax_error_names_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as err:
        config.load_yaml("primary:\n  coremask: [0x03\n", "conf.yml")
    assert err.value.lines[0].startswith("conf.yml:3:1: not valid YAML:")


def test_a_key_given_twice_is_an_error_not_a_silent_override() -> None:
    with pytest.raises(ConfigError) as err:
        config.load_yaml("secondaries:\n  - {id: 1, coremask: 12}\nsecondaries: []\n", "conf.yml")
    assert err.value.lines == (
        "conf.yml:3:1: not valid YAML: key 'secondaries' appears twice in one mapping",
    )


def test_yaml_tags_that_run_code_are_refused() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load_yaml("primary: !!python/object/apply:os.system ['true']\n", "conf.yml")


def test_missing_file_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config.read(str(tmp_path / "conf.yml"))
    assert err.value.lines == (
        f"{tmp_path}/conf.yml: no such file; pass --config PATH or copy examples/spp/conf.yml here",
    )


def test_example_conf_has_no_problem() -> None:
    example = Path(__file__).parents[2] / "examples/spp/conf.yml"
    conf = config.read(str(example))
    assert conf.problems == ()
    assert yaml.safe_load(example.read_text())["primary"]["coremask"] == 3


# Found by stress/fuzz.py: each of these escaped load_yaml or parse as a traceback.
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 2000, "conf.yml: not valid YAML: nested too deeply"),
        ("a: 2020-02-30\n", "conf.yml:1:4: not valid YAML: cannot read '2020-02-30' as timestamp"),
        ("a: !!int x\n", "conf.yml:1:4: not valid YAML: cannot read 'x' as int"),
        ("a: !!int\n", "conf.yml:1:4: not valid YAML: cannot read '' as int"),
        ("a: !!bool x\n", "conf.yml:1:4: not valid YAML: cannot read 'x' as bool"),
        ("a: !!timestamp x\n", "conf.yml:1:4: not valid YAML: cannot read 'x' as timestamp"),
        (
            "a: " + "1" * 4301 + "\n",
            "conf.yml:1:4: not valid YAML: cannot read '11111111111111111111'... (4301 chars)"
            " as int",
        ),
        (
            'a: "\\U00110000"\n',
            "conf.yml:1:7: not valid YAML: an escape names no Unicode character",
        ),
        (
            'a: "\\UFFFFFFFF"\n',
            "conf.yml:1:7: not valid YAML: an escape names no Unicode character",
        ),
        ("? [a]\n: 1\n", "conf.yml:1:3: not valid YAML: a mapping or a list cannot be a key"),
        ("? ? \n", "conf.yml:1:3: not valid YAML: a mapping or a list cannot be a key"),
    ],
    ids=[
        "deep",
        "bad-date",
        "int",
        "empty-int",
        "bool",
        "timestamp",
        "long-int",
        "escape",
        "escape-overflow",
        "list-key",
        "map-key",
    ],
)
def test_yaml_python_cannot_read_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load_yaml(text, "conf.yml")
    assert err.value.lines == (message,)


HUGE = 1 << 20_000  # YAML reads 0x1000...0 of any length; str() refuses it in decimal


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"controller": {"pri_port": HUGE}},
            "controller.pri_port: an integer of 20001 bits is out of range; use 1 to 65535",
        ),
        (
            {"controller": {HUGE: 1}},
            "controller.an integer of 20001 bits: unknown key; known keys:",
        ),
        (
            {"secondaries": [{"id": -HUGE, "coremask": 3}]},
            "secondaries[0].id: a negative integer of 20001 bits is out of range; use 1 to 65535",
        ),
        (
            {"secondaries": [{"id": 1, "coremask": -HUGE}]},
            "secondaries[0].coremask: a negative integer of 20001 bits is negative;",
        ),
        (
            {"eal": {"socket_mem": HUGE}},
            "eal.socket_mem: an integer of 20001 bits MB is more than any host has",
        ),
        (
            {"eal": {"socket_mem": -HUGE}},
            "eal.socket_mem: a negative integer of 20001 bits MB is too little; give at least 1",
        ),
        (
            {"vm": {"bridge": HUGE}},
            "vm.bridge: expected a bridge name, found an integer of 20001 bits",
        ),
        (
            {"paths": {"spp_dir": "~nobody\0"}},
            "paths.spp_dir: '~nobody\\x00' holds a NUL or a lone surrogate",
        ),
        (
            {"paths": {"qemu": "~\ud800/qemu"}},
            "paths.qemu: '~\\ud800/qemu' holds a NUL or a lone surrogate",
        ),
    ],
    ids=[
        "port",
        "key",
        "id",
        "mask",
        "socket-mem",
        "negative-socket-mem",
        "type",
        "nul",
        "surrogate",
    ],
)
def test_values_python_cannot_print_or_open_are_problems(
    data: dict[object, object], problem: str
) -> None:
    data = {"primary": {"coremask": 3}, **data}
    problems = config.parse(data, "conf.yml").problems
    assert [p for p in problems if p.startswith(problem)] != [], problems


def test_characters_yaml_refuses_are_a_config_error() -> None:
    # The fuzz harness caught 4cb8f6c building the loader outside the try: PyYAML's reader
    # checks the text as the loader is made.
    with pytest.raises(ConfigError, match=r"^conf\.yml: not valid YAML: unacceptable character"):
        config.load_yaml("\x88\x88", "conf.yml")
