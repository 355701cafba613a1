"""The plan as data: windows, exact argv, cores, checks against the host and kcm's pools."""

from __future__ import annotations

import shlex

import pytest

from spp_runner import config, eal, plan, qemu
from spp_runner.errors import ConfigError
from spp_runner.host import Host, KcmCpuList, KcmPool
from spp_runner.plan import Options, Role

from .conftest import FIXTURES

HOST16 = Host(online_cpus=frozenset(range(16)))
HOST2 = Host(online_cpus=frozenset({0, 1}))
CONF_PATH = "/home/u/spp-runner/conf.yml"
DEFAULTS = Options()


def seed() -> config.Config:
    return config.read(str(FIXTURES / "seed_conf.yml"))


def conf(data: dict[str, object]) -> config.Config:
    return config.parse(data, CONF_PATH)


def problems_of(
    data: dict[str, object], options: Options = DEFAULTS, host: Host = HOST16
) -> list[str]:
    with pytest.raises(ConfigError) as err:
        plan.build(conf(data), options, host)
    return [line.removeprefix(f"{CONF_PATH}: ") for line in err.value.lines]


# ----------------------------------------------------------------------------- the seed


def test_seed_conf_default_options_give_the_seed_windows_in_order() -> None:
    p = plan.build(seed(), Options(), HOST16)
    assert [(w.name, w.role) for w in p.windows] == [
        ("controller", Role.CONTROLLER),
        ("primary", Role.PRIMARY),
        ("sec1", Role.SECONDARY),
        ("sec2", Role.SECONDARY),
        ("vhost11", Role.VHOST_VM),
        ("work1", Role.WORKING),
    ]
    assert [w.cores_text for w in p.windows] == ["-", "0-1", "2-3", "4-5", "-", "-"]


def test_seed_conf_all_options_orders_ring_before_vhost_and_counts_windows() -> None:
    p = plan.build(
        seed(), Options(nof_sec=5, nof_ring=5, nof_vhost=5, vhost_num=2, nof_working=3), HOST16
    )
    assert [w.name for w in p.windows] == [
        "controller",
        "primary",
        "sec1",
        "sec2",
        "sec3",
        "sec4",
        "sec5",
        "ring6",
        "ring7",
        "ring8",
        "ring9",
        "ring10",
        "vhost11",
        "vhost12",
        "vhost13",
        "vhost14",
        "vhost15",
        "work1",
        "work2",
        "work3",
    ]
    assert len(p.vhost_sockets) == 10
    assert p.warnings == (
        "ring VMs need IVSHMEM, which DPDK dropped in 16.11; they boot without a ring port",
    )


def test_primary_and_secondary_argv_are_exact() -> None:
    p = plan.build(seed(), Options(nof_sec=1), Host(frozenset(range(16)), is_root=True))
    spp_dir = str(FIXTURES.parent / "spp")  # the default ../spp, next to conf.yml's directory
    assert p.window("primary").argv == (
        f"{spp_dir}/src/primary/x86_64-native-linuxapp-gcc/spp_primary",
        "-l",
        "0-1",
        "-n",
        "4",
        "--socket-mem",
        "1024",
        "--huge-dir",
        "/dev/hugepages",
        "--file-prefix",
        "spp",
        "--proc-type=primary",
        "--vdev",
        "eth_vhost0,iface=/tmp/sock0",
        "--",
        "-p",
        "0x1",
        "-n",
        "8",
        "-s",
        "127.0.0.1:5555",
    )
    assert p.window("sec1").argv == (
        f"{spp_dir}/src/nfv/x86_64-native-linuxapp-gcc/spp_nfv",
        "-l",
        "2-3",
        "-n",
        "4",
        "--huge-dir",
        "/dev/hugepages",
        "--file-prefix",
        "spp",
        "--proc-type=secondary",
        "--",
        "-n",
        "1",
        "-s",
        "127.0.0.1:6666",
    )
    assert p.window("controller").argv == (
        "python3",
        f"{spp_dir}/src/spp.py",
        "-p",
        "5555",
        "-s",
        "6666",
    )
    assert p.window("work1").argv == ("bash", "-l")
    assert p.window("work1").cwd == str(FIXTURES)


def test_controller_host_is_used_in_every_command_that_names_the_controller() -> None:
    data = {
        "controller": {"host": "192.0.2.10", "pri_port": 7001, "sec_port": 7002},
        "primary": {"coremask": 3},
        "secondaries": [{"id": 1, "coremask": 12}, {"id": 2, "coremask": 48}],
    }
    p = plan.build(conf(data), Options(nof_vhost=0), HOST16)
    assert p.controller_host == "192.0.2.10"
    assert p.controller_ports == (7001, 7002)
    naming = [w for w in p.windows if any(a.endswith((":7001", ":7002")) for a in w.argv)]
    assert [w.name for w in naming] == ["primary", "sec1", "sec2"]
    for w in naming:
        assert "127.0.0.1" not in w.command
        assert w.argv[w.argv.index("-s", w.argv.index("--")) + 1].startswith("192.0.2.10:")
    assert p.window("primary").argv[-1] == "192.0.2.10:7001"
    assert p.window("sec2").argv[-1] == "192.0.2.10:7002"


def test_vhost_sockets_of_the_primary_and_of_qemu_come_from_one_name() -> None:
    p = plan.build(seed(), Options(nof_sec=2, nof_vhost=3, vhost_num=2), HOST16)
    primary = p.window("primary").argv
    vdev_sockets = [v.split("iface=")[1] for v in primary if v.startswith("eth_vhost")]
    vm_sockets = [s for w in p.by_role(Role.VHOST_VM) for s in qemu.chardev_paths(w.argv)]
    assert vdev_sockets == vm_sockets == [eal.vhost_socket("/tmp", i) for i in range(6)]
    assert vdev_sockets[0] == "/tmp/sock0"
    assert p.window("vhost12").vhost_sockets == ("/tmp/sock2", "/tmp/sock3")
    assert "0x3f" in primary  # default portmask: one bit per vhost port


def test_socket_names_survive_a_comma_in_the_socket_dir_for_qemu() -> None:
    argv = qemu.vm_argv(
        "qemu",
        qemu.VmSpec(
            3, "/img/a,b.qcow2", "qcow2", 512, 1, "virbr0", "/huge", ((0, "/run/x,y/sock0"),)
        ),
    )
    assert "socket,id=chr0,path=/run/x,,y/sock0" in argv
    assert qemu.chardev_paths(argv) == ["/run/x,y/sock0"]
    assert "file=/img/a,,b.qcow2,if=virtio,format=qcow2" in argv


def test_vhost_vm_argv_uses_shared_hugepage_memory_and_the_libvirt_bridge() -> None:
    p = plan.build(seed(), Options(nof_vhost=1), HOST16)
    argv = p.window("vhost11").argv
    img = str(FIXTURES.parent / "qemu-hda/img")
    assert argv == (
        "qemu-system-x86_64",
        "-name",
        "spp-vm11",
        "-enable-kvm",
        "-cpu",
        "host",
        "-smp",
        "2",
        "-m",
        "2048",
        "-nographic",
        "-drive",
        f"file={img}/vhost11.qcow2,if=virtio,format=qcow2",
        "-netdev",
        "bridge,id=mgmt,br=virbr0",
        "-device",
        "virtio-net-pci,netdev=mgmt,mac=52:54:00:00:00:0b",
        "-object",
        "memory-backend-file,id=mem,size=2048M,mem-path=/dev/hugepages,share=on",
        "-numa",
        "node,memdev=mem",
        "-mem-prealloc",
        "-chardev",
        "socket,id=chr0,path=/tmp/sock0",
        "-netdev",
        "vhost-user,id=vhost0,chardev=chr0,vhostforce=on",
        "-device",
        "virtio-net-pci,netdev=vhost0,mac=52:54:00:12:00:00",
    )


def test_images_chain_template_to_ring_and_vhost_templates_to_instances() -> None:
    p = plan.build(seed(), Options(nof_ring=2, nof_vhost=2), HOST16)
    img = str(FIXTURES.parent / "qemu-hda/img")
    assert [
        (i.path.removeprefix(img + "/"), i.parent.removeprefix(img + "/")) for i in p.images
    ] == [
        ("template-ring.qcow2", "template.qcow2"),
        ("ring6.qcow2", "template-ring.qcow2"),
        ("ring7.qcow2", "template-ring.qcow2"),
        ("template-vhost.qcow2", "template.qcow2"),
        ("vhost11.qcow2", "template-vhost.qcow2"),
        ("vhost12.qcow2", "template-vhost.qcow2"),
    ]


def test_template_option_boots_vm0_from_the_template_itself_and_no_instances() -> None:
    p = plan.build(seed(), Options(template=True), HOST16)
    assert [w.name for w in p.windows] == [
        "controller",
        "primary",
        "sec1",
        "sec2",
        "template",
        "work1",
    ]
    vm0 = p.window("template")
    assert vm0.image is not None and vm0.image.endswith("qemu-hda/img/template.qcow2")
    assert "spp-vm0" in vm0.argv
    assert f"file={vm0.image},if=virtio" in vm0.argv  # format left to QEMU: may be raw
    assert p.images == () and p.vhost_sockets == ()


def test_sudo_prefixes_dpdk_and_qemu_but_not_the_controller_when_not_root() -> None:
    p = plan.build(
        seed(),
        Options(),
        Host(frozenset(range(16)), is_root=False, xdg_runtime_dir="/run/user/1000"),
    )
    assert p.uses_sudo
    assert [w.argv[0] == "sudo" for w in p.windows] == [False, True, True, True, True, False]
    # DPDK runs as root through sudo, so its runtime files are root's.
    assert p.runtime_dir == "/var/run/dpdk/spp"


@pytest.mark.parametrize(
    ("sudo", "is_root", "expected"),
    [("auto", True, False), ("auto", False, True), ("never", False, False), ("always", True, True)],
)
def test_sudo_setting(sudo: str, is_root: bool, expected: bool) -> None:
    data = {"primary": {"coremask": 3}, "sudo": sudo}
    p = plan.build(
        conf(data), Options(nof_sec=0, nof_vhost=0), Host(frozenset({0, 1}), is_root=is_root)
    )
    assert p.uses_sudo is expected
    assert (p.window("primary").argv[0] == "sudo") is expected


def test_runtime_dir_of_a_non_root_user_without_sudo() -> None:
    data = {"primary": {"coremask": 3}, "sudo": "never", "eal": {"file_prefix": "lab"}}
    host = Host(frozenset({0, 1}), is_root=False, xdg_runtime_dir="/run/user/1000")
    p = plan.build(conf(data), Options(nof_sec=0, nof_vhost=0), host)
    assert p.runtime_dir == "/run/user/1000/dpdk/lab"


def test_plan_survives_its_stored_form() -> None:
    p = plan.build(seed(), Options(nof_sec=3, nof_ring=1, nof_vhost=2, vhost_num=2), HOST16)
    assert plan.from_json(plan.to_json(p)) == p


def test_stored_form_that_is_not_a_plan_is_refused() -> None:
    with pytest.raises(ValueError, match="not a stored spp-wakeup plan"):
        plan.from_json('{"session": "spp"}')


# ----------------------------------------------------------------------------- checks

TWO = {"primary": {"coremask": 1}, "secondaries": [{"id": 1, "coremask": 2}]}

CHECKS = [
    pytest.param(
        {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": "0x06"}]},
        Options(nof_sec=1, nof_vhost=0),
        HOST16,
        [
            "secondaries[0].coremask: shares CPUs 1 with primary.coremask; give each process its "
            "own CPUs"
        ],
        id="overlap-primary",
    ),
    pytest.param(
        {
            "primary": {"coremask": 1},
            "secondaries": [{"id": 1, "coremask": 6}, {"id": 2, "coremask": 12}],
        },
        Options(nof_sec=2, nof_vhost=0),
        HOST16,
        [
            "secondaries[1].coremask: shares CPUs 2 with secondaries[0].coremask; give each "
            "process its own CPUs"
        ],
        id="overlap-secondaries",
    ),
    pytest.param(
        {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": "0x30000"}]},
        Options(nof_sec=1, nof_vhost=0),
        HOST16,
        [
            "secondaries[0].coremask: CPUs 16-17 are not online on this host (online CPUs: 0-15); "
            "choose CPUs from 0-15"
        ],
        id="outside-online",
    ),
    pytest.param(
        {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": 12}]},
        Options(nof_sec=2, nof_vhost=0),
        HOST16,
        [
            "secondaries: -ns 2 asks for 2 but only 1 is listed; add entries under 'secondaries' "
            "or lower -ns"
        ],
        id="too-few-secondaries",
    ),
    pytest.param(
        {"primary": {"coremask": 3}, "vms_ring": [{"id": 6}]},
        Options(nof_sec=0, nof_ring=3, nof_vhost=0),
        HOST16,
        [
            "vms_ring: -nr 3 asks for 3 but only 1 is listed; add entries under 'vms_ring' or "
            "lower -nr"
        ],
        id="too-few-ring-vms",
    ),
    pytest.param(
        {"primary": {"coremask": 3}},
        Options(nof_sec=0, nof_vhost=1),
        HOST16,
        [
            "vms_vhost: -nv 1 asks for 1 but only 0 are listed; add entries under 'vms_vhost' or "
            "lower -nv"
        ],
        id="too-few-vhost-vms",
    ),
    pytest.param(
        {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": "auto"}]},
        Options(nof_sec=1, nof_vhost=0),
        HOST16,
        [
            "secondaries[0].coremask: 'auto' needs kcm; add 'kcm: {conf_dir: /etc/kcm}' to "
            "conf.yml or give a mask"
        ],
        id="auto-without-kcm",
    ),
    pytest.param(
        {"primary": {"coremask": 3}, "paths": {"sock_dir": "/run/a,b"}},
        Options(nof_sec=0, nof_vhost=0),
        HOST16,
        [
            "paths.sock_dir: '/run/a,b' holds a comma, which DPDK's --vdev cannot carry; choose "
            "a directory without one"
        ],
        id="comma-in-sock-dir",
    ),
]


@pytest.mark.parametrize(("data", "options", "host", "expected"), CHECKS)
def test_each_rule_is_reported_with_what_to_change(
    data: dict[str, object], options: Options, host: Host, expected: list[str]
) -> None:
    assert problems_of(data, options, host) == expected


def test_only_the_secondaries_this_run_uses_are_checked_against_the_host() -> None:
    p = plan.build(seed(), Options(nof_sec=0, nof_vhost=0), HOST2)
    assert [w.name for w in p.windows] == ["controller", "primary", "work1"]


def test_seed_conf_on_this_two_cpu_host_reports_every_secondary_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        plan.build(seed(), Options(nof_sec=5), HOST2)
    assert len(err.value.lines) == 5
    assert all("are not online on this host (online CPUs: 0-1)" in line for line in err.value.lines)


def test_config_problems_and_plan_problems_come_together() -> None:
    data = {"primary": {"coremask": 3, "speed": 1}, "secondaries": [{"id": 1, "coremask": 6}]}
    assert problems_of(data, Options(nof_sec=2, nof_vhost=0)) == [
        "primary.speed: unknown key; known keys: coremask, portmask, num_rings",
        "secondaries: -ns 2 asks for 2 but only 1 is listed; add entries under 'secondaries' "
        "or lower -ns",
        "secondaries[0].coremask: shares CPUs 1 with primary.coremask; give each process its "
        "own CPUs",
    ]


# ----------------------------------------------------------------------------- kcm

# The pools kcm init makes on the seeds' 16-CPU host with its defaults.
SEED_POOLS = (
    KcmPool("controlplane", False, (KcmCpuList(frozenset({3, 11}), ()),)),
    KcmPool("dataplane", True, tuple(KcmCpuList(frozenset({c, c + 8}), ()) for c in (4, 5, 6, 7))),
    KcmPool("infra", False, (KcmCpuList(frozenset({0, 1, 2, 8, 9, 10}), ()),)),
)
KCM_HOST = Host(frozenset(range(16)), kcm_pools=SEED_POOLS)
KCM = {"conf_dir": "/etc/kcm"}


def test_auto_secondary_runs_through_kcm_isolate_with_the_assigned_list() -> None:
    data = {
        "primary": {"coremask": 3},
        "secondaries": [{"id": 1, "coremask": "auto"}, {"id": 2, "coremask": "auto"}],
        "kcm": KCM,
    }
    p = plan.build(conf(data), Options(nof_vhost=0), KCM_HOST)
    sec = p.window("sec2")
    nfv = "/home/u/spp/src/nfv/x86_64-native-linuxapp-gcc/spp_nfv"
    assert sec.argv == (
        "env",
        "KCM_PROC_FS=/proc",
        "kcm",
        "isolate",
        "--conf-dir=/etc/kcm",
        "--pool=dataplane",
        f'exec {nfv} -l "$KCM_CPUS_ASSIGNED"',
        "--",
        "-n",
        "4",
        "--huge-dir",
        "/dev/hugepages",
        "--file-prefix",
        "spp",
        "--proc-type=secondary",
        "--",
        "-n",
        "2",
        "-s",
        "127.0.0.1:6666",
    )
    assert sec.auto_cores and sec.cores is None and sec.cores_text == "auto"
    # What the shell kcm starts will run, once kcm has exported the list:
    snippet = sec.argv[6]
    assert shlex.split(snippet.replace("$KCM_CPUS_ASSIGNED", "4,12")) == ["exec", nfv, "-l", "4,12"]


def test_auto_with_sudo_keeps_kcm_proc_fs_through_env() -> None:
    data = {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": "auto"}], "kcm": KCM}
    host = Host(frozenset(range(16)), is_root=False, kcm_pools=SEED_POOLS)
    argv = plan.build(conf(data), Options(nof_sec=1, nof_vhost=0), host).window("sec1").argv
    assert argv[:3] == ("sudo", "env", "KCM_PROC_FS=/proc")


KCM_CHECKS = [
    pytest.param(
        {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": "0x30000"}]},
        KCM_HOST,
        [
            "secondaries[0].coremask: CPUs 16-17 are not online on this host (online CPUs: "
            "0-15); choose CPUs from 0-15",
            "secondaries[0].coremask: CPUs 16-17 are in none of kcm's pools (kcm manages 0-15); "
            "choose CPUs kcm manages",
        ],
        id="outside-pools",
    ),
    pytest.param(
        {
            "primary": {"coremask": 3},
            "secondaries": [{"id": 1, "coremask": "auto"}, {"id": 2, "coremask": "0x30"}],
        },
        KCM_HOST,
        [
            "secondaries[1].coremask: CPUs 4-5 belong to kcm pool 'dataplane', which kcm hands "
            "to 'auto' secondaries; choose other CPUs or make this one 'auto'"
        ],
        id="fixed-mask-on-dataplane-with-auto",
    ),
    pytest.param(
        {
            "primary": {"coremask": 3},
            "secondaries": [{"id": i, "coremask": "auto"} for i in range(1, 6)],
        },
        KCM_HOST,
        [
            "secondaries: 5 use coremask 'auto' but kcm pool 'dataplane' has 4 free CPU lists; "
            "free some or give masks"
        ],
        id="too-many-auto",
    ),
    pytest.param(
        {
            "primary": {"coremask": 3},
            "secondaries": [{"id": 1, "coremask": "auto"}, {"id": 2, "coremask": "auto"}],
        },
        Host(
            frozenset(range(16)),
            kcm_pools=(
                SEED_POOLS[0],
                KcmPool(
                    "dataplane",
                    True,
                    (KcmCpuList(frozenset({4, 12}), (4242,)), KcmCpuList(frozenset({5, 13}), ())),
                ),
                SEED_POOLS[2],
            ),
        ),
        [
            "secondaries: 2 use coremask 'auto' but kcm pool 'dataplane' has 1 free CPU list; "
            "free some or give masks"
        ],
        id="busy-lists-are-not-free",
    ),
    pytest.param(
        {
            "primary": {"coremask": 3},
            "secondaries": [{"id": 1, "coremask": "auto"}],
            "kcm": {"conf_dir": "/etc/kcm", "pool": "infra"},
        },
        KCM_HOST,
        [
            "kcm.pool: pool 'infra' is shared, so 'auto' secondaries could share CPUs; use an "
            "exclusive pool such as dataplane",
            "primary.coremask: CPUs 0-1 belong to kcm pool 'infra', which kcm hands to 'auto' "
            "secondaries; choose other CPUs",
        ],
        id="shared-pool",
    ),
    pytest.param(
        {
            "primary": {"coremask": 3},
            "secondaries": [{"id": 1, "coremask": "auto"}],
            "kcm": {"conf_dir": "/etc/kcm", "pool": "fastpath"},
        },
        KCM_HOST,
        [
            "kcm.pool: kcm has no pool 'fastpath' (pools: controlplane, dataplane, infra); set "
            "kcm.pool to an exclusive pool"
        ],
        id="no-such-pool",
    ),
    pytest.param(
        {"primary": {"coremask": 3}},
        Host(frozenset(range(16)), kcm_error="kcm.conf_dir: /etc/kcm holds no kcm state"),
        ["kcm.conf_dir: /etc/kcm holds no kcm state"],
        id="unreadable-state",
    ),
]


@pytest.mark.parametrize(("data", "host", "expected"), KCM_CHECKS)
def test_kcm_rules(data: dict[str, object], host: Host, expected: list[str]) -> None:
    data = {"kcm": KCM, **data}
    assert (
        problems_of(
            data,
            Options(
                nof_sec=len(data.get("secondaries", [])),  # type: ignore[arg-type]
                nof_vhost=0,
            ),
            host,
        )
        == expected
    )


def test_fixed_masks_inside_kcm_pools_pass_when_no_secondary_is_auto() -> None:
    data = {"primary": {"coremask": 3}, "secondaries": [{"id": 1, "coremask": "0x30"}], "kcm": KCM}
    p = plan.build(conf(data), Options(nof_sec=1, nof_vhost=0), KCM_HOST)
    assert p.window("sec1").cores == frozenset({4, 5})
