"""spp-wakeup as a user runs it: dry runs, errors, refusals; nothing here starts SPP."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import FIXTURES, SPP_WAKEUP, VENV_BIN, make_sysfs, run_cli, tmux

REPO = Path(__file__).parents[2]


def seed_dir(tmp_path: Path) -> Path:
    """A runner directory holding the seed's conf.yml, byte for byte."""
    run_dir = tmp_path / "spp-runner"
    run_dir.mkdir()
    shutil.copyfile(FIXTURES / "seed_conf.yml", run_dir / "conf.yml")
    return run_dir


def assert_error_lines(
    result: subprocess.CompletedProcess[str], code: int, lines: list[str]
) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"spp-wakeup: error: {line}" for line in lines]


@pytest.mark.parametrize(
    "bundled",
    [
        pytest.param(False, id="sysfs-without-numa-nodes"),
        # examples/sysfs/seed-16cpu: one NUMA node with 1024 free 2 MB pages. On one node NUMA
        # changes nothing: no node column, no --socket-mem for secondaries, 1024 on node 0.
        pytest.param(True, id="bundled-sysfs-one-node"),
    ],
)
def test_seed_conf_plans_unchanged_on_a_16_cpu_host(
    tmp_path: Path, sysfs16: Path, monkeypatch: pytest.MonkeyPatch, bundled: bool
) -> None:
    if bundled:
        monkeypatch.setenv("KCM_SYS_FS", str(REPO / "examples/sysfs/seed-16cpu"))
    run_dir = seed_dir(tmp_path)
    result = run_cli(SPP_WAKEUP, "--dry-run", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    spp = f"{tmp_path}/spp"
    img = f"{tmp_path}/qemu-hda/img"
    assert (
        result.stdout
        == f"""\
session 'spp' from conf.yml: 6 windows
  [0] controller  cores: -
      python3 {spp}/src/spp.py -p 5555 -s 6666
      ready when 127.0.0.1:5555 and 127.0.0.1:6666 accept connections
  [1] primary     cores: 0-1
      {spp}/src/primary/x86_64-native-linuxapp-gcc/spp_primary -l 0-1 -n 4 --socket-mem 1024 \
--huge-dir /dev/hugepages --file-prefix spp --proc-type=primary \
--vdev eth_vhost0,iface=/tmp/sock0 -- -p 0x1 -n 8 -s 127.0.0.1:5555
      ready when /var/run/dpdk/spp/config is held by the live primary and its mempool exists
  [2] sec1        cores: 2-3
      {spp}/src/nfv/x86_64-native-linuxapp-gcc/spp_nfv -l 2-3 -n 4 --huge-dir /dev/hugepages \
--file-prefix spp --proc-type=secondary -- -n 1 -s 127.0.0.1:6666
      ready when it has attached to the primary (mp_socket in /var/run/dpdk/spp)
  [3] sec2        cores: 4-5
      {spp}/src/nfv/x86_64-native-linuxapp-gcc/spp_nfv -l 4-5 -n 4 --huge-dir /dev/hugepages \
--file-prefix spp --proc-type=secondary -- -n 2 -s 127.0.0.1:6666
      ready when it has attached to the primary (mp_socket in /var/run/dpdk/spp)
  [4] vhost11     cores: -
      qemu-system-x86_64 -name spp-vm11 -enable-kvm -cpu host -smp 2 -m 2048 -nographic \
-drive file={img}/vhost11.qcow2,if=virtio,format=qcow2 -netdev bridge,id=mgmt,br=virbr0 \
-device virtio-net-pci,netdev=mgmt,mac=52:54:00:00:00:0b \
-object memory-backend-file,id=mem,size=2048M,mem-path=/dev/hugepages,share=on \
-numa node,memdev=mem -mem-prealloc -chardev socket,id=chr0,path=/tmp/sock0 \
-netdev vhost-user,id=vhost0,chardev=chr0,vhostforce=on \
-device virtio-net-pci,netdev=vhost0,mac=52:54:00:12:00:00
      starts once /tmp/sock0 exists
  [5] work1       cores: -
      bash -l
images (qcow2 overlays, created on first use):
  {img}/template-vhost.qcow2  <- {img}/template.qcow2
  {img}/vhost11.qcow2  <- {img}/template-vhost.qcow2
--down removes:
  /tmp/sock0
  /var/run/dpdk/spp
  /dev/hugepages/sppmap_*
"""
    )
    # It plans where SPP, QEMU and the template are missing, and says what a launch needs.
    warnings = result.stderr.splitlines()
    assert all(
        w.startswith("spp-wakeup: warning: a real launch would stop here: ") for w in warnings
    )
    assert any(f"{spp}/src/spp.py does not exist" in w for w in warnings)
    assert any(f"VM template image {img}/template.qcow2 does not exist" in w for w in warnings)
    assert not any("hugepages:" in w for w in warnings)  # node 0 has the 512 pages it needs
    assert not (tmp_path / "qemu-hda").exists()  # a dry run creates no image


def test_seed_conf_with_every_entry(tmp_path: Path, sysfs16: Path) -> None:
    result = run_cli(
        SPP_WAKEUP,
        "--dry-run",
        "-ns",
        "5",
        "-nr",
        "5",
        "-nv",
        "5",
        "-vn",
        "2",
        "-nw",
        "2",
        cwd=seed_dir(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    heads = [line.split() for line in result.stdout.splitlines() if "cores:" in line]
    assert [(h[1], h[3]) for h in heads] == [
        ("controller", "-"),
        ("primary", "0-1"),
        ("sec1", "2-3"),
        ("sec2", "4-5"),
        ("sec3", "6-7"),
        ("sec4", "8-9"),
        ("sec5", "10-11"),
        *[(f"ring{i}", "-") for i in range(6, 11)],
        *[(f"vhost{i}", "-") for i in range(11, 16)],
        ("work1", "-"),
        ("work2", "-"),
    ]
    assert "--vdev eth_vhost9,iface=/tmp/sock9 -- -p 0x3ff" in result.stdout
    assert (
        "spp-wakeup: warning: ring VMs need IVSHMEM, which DPDK dropped in 16.11; they "
        "boot without a ring port"
    ) in result.stderr.splitlines()


def test_dry_run_starts_nothing(tmp_path: Path, sysfs16: Path, tmux_env: dict[str, str]) -> None:
    env = {**tmux_env, "KCM_SYS_FS": str(sysfs16)}
    result = run_cli(SPP_WAKEUP, "--dry-run", cwd=seed_dir(tmp_path), env=env)
    assert result.returncode == 0
    assert tmux(env, "list-sessions") == []


def test_seed_conf_on_a_two_cpu_host_names_every_secondary_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KCM_SYS_FS", str(make_sysfs(tmp_path / "sys2", "0-1")))
    result = run_cli(SPP_WAKEUP, "--dry-run", "-ns", "3", cwd=seed_dir(tmp_path))
    assert_error_lines(
        result,
        3,
        [
            f"conf.yml: secondaries[{i}].coremask: CPUs {c} are not online on this host (online "
            "CPUs: 0-1); choose CPUs from 0-1"
            for i, c in enumerate(["2-3", "4-5", "6-7"])
        ],
    )
    assert result.stdout == ""


def test_example_conf_dry_runs_on_the_bundled_16_cpu_sysfs() -> None:
    env_result = subprocess.run(
        [SPP_WAKEUP, "--config", "examples/spp/conf.yml", "--dry-run", "-ns", "5", "-nv", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "KCM_SYS_FS": "examples/sysfs/seed-16cpu"},
    )
    assert env_result.returncode == 0, env_result.stderr
    assert env_result.stdout.startswith("session 'spp' from examples/spp/conf.yml: 11 windows\n")


def test_bad_conf_lists_every_problem_one_line_each(tmp_path: Path, sysfs16: Path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text(
        "controller: {host: 127.0.0.1, pri_port: 5555, sec_port: 5555}\n"
        "primary: {coremask: 0x03}\n"
        "secondaries:\n"
        "  - {id: 1, coremask: '0x06'}\n"
        "  - {id: 1, coremask: 'twelve'}\n"
        "vm: {memroy: 4096}\n"
    )
    result = run_cli(SPP_WAKEUP, "--dry-run", "--config", str(conf))
    assert_error_lines(
        result,
        3,
        [
            f"{conf}: controller.sec_port: 5555 is also pri_port; the controller needs two "
            "different ports",
            f"{conf}: secondaries[1].coremask: 'twelve' is not a core mask; write a hexadecimal "
            'mask such as "0x0C" or an integer, or "auto"',
            f"{conf}: secondaries[1].id: 1 is already the id of secondaries[0]; secondary and VM "
            "ids must be unique",
            f"{conf}: vm.memroy: unknown key; known keys: memory, cpus, bridge",
            f"{conf}: vms_vhost: -nv 1 asks for 1 but only 0 are listed; add entries under "
            "'vms_vhost' or lower -nv",
            f"{conf}: secondaries[0].coremask: shares CPUs 1 with primary.coremask; give each "
            "process its own CPUs",
        ],
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-ns", "-1"], "argument -ns/--nof-sec: -1 is negative (see spp-wakeup -h)"),
        (
            ["-nv", "two"],
            "argument -nv/--nof-vhost: 'two' is not a whole number (see spp-wakeup -h)",
        ),
        (["--down"], "argument --down: not allowed with argument --dry-run (see spp-wakeup -h)"),
        (
            ["-t", "-nv", "1"],
            "-t boots only the template VM; drop -nr/-nv (instances are "
            "backed by the template and must not run while it changes)",
        ),
        (["-vn", "0"], "-vn 0: vhost VMs need at least one vhost interface; use -vn 1 or -nv 0"),
        (
            ["--session", "a:b"],
            "--session 'a:b': use letters, digits, '_' and '-' (tmux reserves ':' and '.')",
        ),
        (
            ["--timeout", "0"],
            "argument --timeout: 0 is not a positive number of seconds (see spp-wakeup -h)",
        ),
        (["--nof"], "unrecognized arguments: --nof (see spp-wakeup -h)"),
    ],
)
def test_usage_errors_are_one_line(
    tmp_path: Path, sysfs16: Path, args: list[str], message: str
) -> None:
    result = run_cli(SPP_WAKEUP, "--dry-run", *args, cwd=seed_dir(tmp_path))
    assert_error_lines(result, 2, [message])


def test_missing_conf(tmp_path: Path) -> None:
    result = run_cli(SPP_WAKEUP, "--dry-run", cwd=tmp_path)
    assert_error_lines(
        result, 3, ["conf.yml: no such file; pass --config PATH or copy examples/spp/conf.yml here"]
    )


def test_unreadable_sysfs_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KCM_SYS_FS", str(tmp_path / "nosys"))
    result = run_cli(SPP_WAKEUP, "--dry-run", cwd=seed_dir(tmp_path))
    assert_error_lines(
        result,
        6,
        [f"cannot read CPU topology: {tmp_path}/nosys/devices/system/cpu/online does not exist"],
    )


def test_help_shows_the_seed_options() -> None:
    result = run_cli(SPP_WAKEUP, "-h")
    assert result.returncode == 0
    for option in (
        "-t, --template",
        "-ns NOF_SEC, --nof-sec NOF_SEC",
        "-nr NOF_RING, --nof-ring NOF_RING",
        "-nv NOF_VHOST, --nof-vhost NOF_VHOST",
        "-vn VHOST_NUM, --vhost-num VHOST_NUM",
        "-nw NOF_WORKING, --nof-working NOF_WORKING",
        "--config PATH",
        "--session NAME",
        "--dry-run",
        "--no-attach",
        "--status",
        "--down",
    ):
        assert option in result.stdout, option


@pytest.mark.parametrize("mode", ["--status", "--down"])
def test_status_and_down_without_a_session(mode: str, tmux_env: dict[str, str]) -> None:
    result = run_cli(SPP_WAKEUP, mode, "--session", "nosuch", env=tmux_env)
    assert_error_lines(result, 6, ["no tmux session named 'nosuch'; start one with spp-wakeup"])


def test_status_refuses_a_session_spp_wakeup_did_not_start(tmux_env: dict[str, str]) -> None:
    tmux(tmux_env, "new-session", "-d", "-s", "spp", "sleep 60")
    result = run_cli(SPP_WAKEUP, "--status", env=tmux_env)
    assert_error_lines(
        result, 6, ["tmux session 'spp' was not started by spp-wakeup (it has no stored plan)"]
    )


def path_without_qemu(tmp_path: Path) -> str:
    """VENV_BIN and every program of /usr/bin and /bin except QEMU's system emulators.

    QEMU is installed wherever the guest-kernel tests run (scripts/setup.sh), so the PATH
    that lacks it is made, not hoped for.
    """
    shadow = tmp_path / "bin-without-qemu"
    shadow.mkdir()
    for directory in ("/usr/bin", "/bin"):
        for entry in os.scandir(directory):
            link = shadow / entry.name
            if not entry.name.startswith("qemu-system-") and not os.path.lexists(link):
                link.symlink_to(entry.path)
    return f"{VENV_BIN}:{shadow}"


def test_launch_with_vms_but_no_qemu_refuses_naming_it(
    tmp_path: Path, sysfs16: Path, tmux_env: dict[str, str], spp_tree: Path
) -> None:
    path = path_without_qemu(tmp_path)
    assert shutil.which("qemu-system-x86_64", path=path) is None
    hda = tmp_path / "qemu-hda/img/template.qcow2"
    hda.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(hda), "16M"], check=True)
    conf = tmp_path / "conf.yml"
    conf.write_text("primary: {coremask: 1}\nvms_vhost: [{id: 11}]\n")
    env = {**tmux_env, "PATH": path, "KCM_SYS_FS": str(sysfs16)}
    result = run_cli(SPP_WAKEUP, "--config", str(conf), "-ns", "0", "--no-attach", env=env)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        "spp-wakeup: error: qemu-system-x86_64 not found on PATH (needed by window "
        "'vhost11'); install QEMU (Debian: qemu-system-x86) or set paths.qemu"
    ) in result.stderr.splitlines()
    assert tmux(env, "list-sessions") == []
    assert not (tmp_path / "qemu-hda/img/vhost11.qcow2").exists()


@pytest.fixture
def kcm_state(tmp_path: Path, sysfs16: Path) -> Path:
    """kcm's state for the seeds' 16-CPU host, made by the real kcm init."""
    state = tmp_path / "kcm"
    result = run_cli(str(VENV_BIN / "kcm"), "init", f"--conf-dir={state}")
    assert result.returncode == 0, result.stderr
    return state


def test_kcm_example_plans_auto_secondaries_through_kcm(
    tmp_path: Path, kcm_state: Path, sysfs16: Path
) -> None:
    text = (REPO / "examples/spp/conf-kcm.yml").read_text()
    conf = tmp_path / "conf.yml"
    conf.write_text(text.replace("/etc/kcm", str(kcm_state)))
    result = run_cli(SPP_WAKEUP, "--config", str(conf), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "  [2] sec1        cores: auto\n" in result.stdout
    # kcm in the window reads the sysfs the plan was made for (here the fake 16-CPU host's),
    # as the window's environment holds PATH alone.
    assert (
        f"      env KCM_PROC_FS=/proc KCM_SYS_FS={sysfs16} kcm isolate --conf-dir={kcm_state} "
        "--pool=dataplane 'exec " in result.stdout
    )
    assert "      cores booked by kcm from pool 'dataplane' at start\n" in result.stdout


def test_kcm_pools_limit_auto_secondaries_and_fixed_masks(tmp_path: Path, kcm_state: Path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text(
        "primary: {coremask: 0x03}\n"
        "secondaries:\n"
        + "".join(f"  - {{id: {i}, coremask: auto}}\n" for i in range(1, 5))
        + "  - {id: 5, coremask: '0x3000'}\n"
        + f"kcm: {{conf_dir: {kcm_state}}}\n"
    )
    ok = run_cli(SPP_WAKEUP, "--config", str(conf), "--dry-run", "-ns", "4", "-nv", "0")
    assert ok.returncode == 0, ok.stderr
    bad = run_cli(SPP_WAKEUP, "--config", str(conf), "--dry-run", "-ns", "5", "-nv", "0")
    assert_error_lines(
        bad,
        3,
        [
            f"{conf}: secondaries[4].coremask: CPUs 12-13 belong to kcm pool 'dataplane', which "
            "kcm hands to 'auto' secondaries; choose other CPUs or make this one 'auto'",
        ],
    )


def test_kcm_conf_dir_without_state(tmp_path: Path, sysfs16: Path) -> None:
    conf = tmp_path / "conf.yml"
    conf.write_text(f"primary: {{coremask: 3}}\nkcm: {{conf_dir: {tmp_path}/none}}\n")
    result = run_cli(SPP_WAKEUP, "--config", str(conf), "--dry-run", "-ns", "0", "-nv", "0")
    assert_error_lines(
        result,
        3,
        [
            f"{conf}: kcm.conf_dir: {tmp_path}/none holds no kcm state ({tmp_path}/none/pools is "
            f"missing); run 'kcm init --conf-dir={tmp_path}/none' first or fix the path"
        ],
    )
