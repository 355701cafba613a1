"""On the host, no guest booted: the builder's and harness's parts, and the guard on the host."""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.guest import build, marker
from tests.guest.build import GuestKernel, GuestUnavailable, Pin
from tests.guest.harness import (
    PytestCounts,
    exit_code,
    failure,
    guest_env,
    hidden_paths,
    job_script,
    main,
    numa_argv,
    pytest_counts,
    qemu_argv,
    require_guest,
    retry_reason,
)

CHECKOUT = Path(__file__).resolve().parent.parent.parent

# ----------------------------------------------------------------------------- pins


def test_the_pins_in_the_tree_name_one_package_of_each_series() -> None:
    pins = build.read_pins()
    assert sorted(pins) == sorted(build.SERIES)
    for series, pin in pins.items():
        assert build.SERIES[series].fullmatch(pin.package)
        assert pin.version


def test_pins_round_trip_through_their_file_format() -> None:
    pins = {
        "6.12": Pin("6.12", "linux-image-6.12.9+deb12-amd64", "6.12.9-1~deb12u1"),
        "6.1": Pin("6.1", "linux-image-6.1.0-7-amd64", "6.1.20-2"),
    }
    assert build.parse_pins(build.format_pins(pins)) == pins


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("6.12 linux-image-6.12.9+deb12-amd64\n", "want 'series package version'"),
        ("5.10 linux-image-5.10.0-1-amd64 5.10.1-1\n", "unknown series '5.10'"),
        ("6.12 linux-image-6.12.9+deb12-cloud-amd64 6.12.9-1\n", "is not of series 6.12"),
        ("6.1 linux-image-6.12.9+deb12-amd64 6.12.9-1\n", "is not of series 6.1"),
    ],
)
def test_a_bad_pin_line_is_refused_with_its_line(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        build.parse_pins("# comment\n\n" + text)


def test_madison_lines_give_binary_packages_and_versions() -> None:
    text = (
        "linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://example/debian-security "
        "bookworm-security/main amd64 Packages\n"
        "     linux | 6.1.192-2 | http://example/debian bookworm/main Sources\n"
    )
    assert build.parse_madison(text) == [("linux-image-6.1.0-56-amd64", "6.1.192-2")]


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg orders Debian versions")
def test_the_newest_package_of_the_series_wins_by_debian_version_order() -> None:
    candidates = [
        ("linux-image-6.12.9+deb12-amd64", "6.12.9-1~deb12u1"),
        ("linux-image-6.12.10+deb12-amd64", "6.12.10-1~deb12u1"),  # 10 > 9, not as text
        ("linux-image-6.12.30+deb12-cloud-amd64", "6.12.30-1"),  # another flavour
        ("linux-image-6.1.0-57-amd64", "6.1.192-3"),  # another series
    ]
    assert build.newest("6.12", candidates) == Pin(
        "6.12", "linux-image-6.12.10+deb12-amd64", "6.12.10-1~deb12u1"
    )
    with pytest.raises(GuestUnavailable, match=r"no package of kernel series 6\.1"):
        build.newest("6.1", candidates[:3])


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="repin asks apt-cache")
def test_repin_pins_a_package_the_registry_offers_for_each_series(tmp_path: Path) -> None:
    lock = tmp_path / "kernels.lock"
    try:
        pins = build.repin(lock)
    except GuestUnavailable as e:
        pytest.skip(f"no package lists here: {e}")
    assert build.read_pins(lock) == pins
    assert sorted(pins) == sorted(build.SERIES)
    for pin in pins.values():
        offered = subprocess.run(
            ["apt-cache", "madison", pin.package], capture_output=True, text=True, check=True
        ).stdout
        assert (pin.package, pin.version) in build.parse_madison(offered)


# ----------------------------------------------------------------------------- modules


def fake_module(info: bytes) -> bytes:
    """A minimal ELF64 file with a .modinfo section holding ``info`` (and .shstrtab)."""
    names = b"\0.modinfo\0.shstrtab\0"
    info_at = 64
    names_at = info_at + len(info)
    headers_at = names_at + len(names)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, headers_at)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)

    def section(name: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQ", name, 1, 0, 0, offset, size) + bytes(24)

    return (
        bytes(header)
        + info
        + names
        + bytes(64)
        + section(1, info_at, len(info))
        + section(10, names_at, len(names))
    )


def test_modinfo_reads_the_depends_of_a_module() -> None:
    elf = fake_module(b"license=GPL\0depends=netfs,9pnet\0vermagic=6.12.9 SMP mod_unload\0")
    assert build.modinfo(elf) == {
        "license": "GPL",
        "depends": "netfs,9pnet",
        "vermagic": "6.12.9 SMP mod_unload",
    }


def test_modinfo_refuses_what_is_not_an_elf64_module() -> None:
    with pytest.raises(ValueError, match="not a little-endian ELF64"):
        build.modinfo(b"#!/bin/sh\n" + bytes(64))


@pytest.mark.parametrize(
    ("filename", "name"),
    [("9pnet_virtio.ko.xz", "9pnet_virtio"), ("virtio-rng.ko", "virtio_rng"), ("9p.ko", "9p")],
)
def test_module_names_are_the_kernels(filename: str, name: str) -> None:
    assert build.module_name(filename) == name


# The two kernels' shapes: virtio_pci built into 6.12, a module with its own helpers on 6.1.
DEPENDS_612 = {
    "netfs": [],
    "9pnet": ["netfs"],
    "9pnet_virtio": ["9pnet"],
    "9p": ["netfs", "9pnet"],
}
DEPENDS_61 = {
    "virtio": [],
    "virtio_ring": [],
    "virtio_pci_modern_dev": [],
    "virtio_pci_legacy_dev": [],
    "virtio_pci": ["virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio", "virtio_ring"],
    "fscache": ["netfs"],
    "netfs": [],
    "9pnet": [],
    "9pnet_virtio": ["virtio", "virtio_ring", "9pnet"],
    "9p": ["netfs", "9pnet", "fscache"],
}


@pytest.mark.parametrize(
    ("depends", "builtin", "order"),
    [
        (DEPENDS_612, ["virtio_pci"], ["netfs", "9pnet", "9pnet_virtio", "9p"]),
        (
            DEPENDS_61,
            [],
            [
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "fscache",
                "9p",
            ],
        ),
    ],
)
def test_modules_load_after_what_they_depend_on(
    depends: dict[str, list[str]], builtin: list[str], order: list[str]
) -> None:
    assert build.load_order(build.WANTED_MODULES, depends, builtin) == order


def test_a_module_the_kernel_lacks_makes_the_guest_unavailable() -> None:
    with pytest.raises(GuestUnavailable, match="no module virtio_pci"):
        build.load_order(build.WANTED_MODULES, DEPENDS_612, builtin=[])


def test_a_dependency_cycle_is_an_error() -> None:
    with pytest.raises(ValueError, match="cycle"):
        build.load_order(["a"], {"a": ["b"], "b": ["a"]}, builtin=[])


# ----------------------------------------------------------------------------- the cache


def test_a_cached_guest_is_used_only_while_its_inputs_are_the_same(tmp_path: Path) -> None:
    pin = build.read_pins()["6.12"]
    if not build.BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    out = tmp_path / "6.12"
    out.mkdir()
    (out / "modules").write_text("6.12.9+deb12-amd64 netfs 9pnet 9pnet_virtio 9p\n")
    (out / "inputs").write_text(build.inputs(pin))
    got = build._load(out, pin)
    assert got == GuestKernel(
        pin,
        "6.12.9+deb12-amd64",
        out / "vmlinuz",
        out / "initrd",
        out / "config",
        ("netfs", "9pnet", "9pnet_virtio", "9p"),
    )
    other = Pin("6.12", pin.package, pin.version + "+1")
    assert build._load(out, other) is None  # another pin: rebuild
    (out / "inputs").write_text(build.inputs(pin).replace("init ", "init 0"))
    assert build._load(out, pin) is None  # another /init: rebuild


def test_without_a_static_busybox_guest_runs_skip_and_say_why_but_fail_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "BUSYBOX", tmp_path / "busybox")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian package busybox-static"):
        require_guest("6.12")
    monkeypatch.setenv("CI", "true")
    if os.geteuid() == 0:
        with pytest.raises(pytest.fail.Exception, match="CI runs as root and must boot"):
            require_guest("6.12")


def test_only_a_static_executable_can_be_pid_1_of_the_initramfs(tmp_path: Path) -> None:
    # The initramfs has no libc: a dynamically linked busybox could not start there.
    assert not build.is_static_elf(Path(os.path.realpath(sys.executable)))
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert not build.is_static_elf(tmp_path / "script")
    ldconfig = Path("/sbin/ldconfig")  # glibc's, static on every glibc system
    if ldconfig.exists():
        assert build.is_static_elf(ldconfig)


# ----------------------------------------------------------------------------- the harness


def fake_kernel(tmp_path: Path) -> GuestKernel:
    pin = Pin("6.12", "linux-image-6.12.9+deb12-amd64", "6.12.9-1")
    return GuestKernel(
        pin, "6.12.9+deb12-amd64", tmp_path / "vmlinuz", tmp_path / "initrd", tmp_path, ()
    )


def fake_qemu_argv(
    tmp_path: Path, job: str = "job.sh", kernel_args: Sequence[str] = ()
) -> list[str]:
    """QEMU's argv for the fake kernel: v1, 4 vCPUs, 512 MiB, ports and job in ``tmp_path``."""
    return qemu_argv(
        fake_kernel(tmp_path),
        cgroup="v1",
        job=tmp_path / job,
        ports=tmp_path,
        smp=4,
        memory_mb=512,
        kernel_args=kernel_args,
    )


def test_qemu_shares_the_root_read_only_without_a_network(tmp_path: Path) -> None:
    argv = fake_qemu_argv(tmp_path)
    pairs = itertools.pairwise(argv)
    options = {flag: value for flag, value in pairs if not value.startswith("-")}
    assert argv[0] == "qemu-system-x86_64"
    assert "-nodefaults" in argv  # no default NIC, disks or monitor
    assert options["-nic"] == "none"
    assert options["-accel"] == "tcg,thread=multi"
    virtfs = options["-virtfs"].split(",")
    assert "path=/" in virtfs and "readonly=on" in virtfs and "mount_tag=hostroot" in virtfs
    serials = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-serial"]
    assert serials == [f"file:{tmp_path / port}" for port in ("console", "output", "status")]
    assert f"kcm.cgroup=v1 kcm.job={tmp_path / 'job.sh'}" in options["-append"]


def test_numa_nodes_share_the_vcpus_and_memory_evenly() -> None:
    assert numa_argv(4, 1024, 1) == []
    assert numa_argv(4, 1024, 2) == [
        "-object", "memory-backend-ram,id=mem0,size=512M",
        "-numa", "node,nodeid=0,cpus=0-1,memdev=mem0",
        "-object", "memory-backend-ram,id=mem1,size=512M",
        "-numa", "node,nodeid=1,cpus=2-3,memdev=mem1",
    ]  # fmt: skip
    three = numa_argv(4, 1000, 3)
    assert [a for a in three if a.startswith("node,")] == [
        "node,nodeid=0,cpus=0-1,memdev=mem0",
        "node,nodeid=1,cpus=2,memdev=mem1",
        "node,nodeid=2,cpus=3,memdev=mem2",
    ]
    assert "memory-backend-ram,id=mem2,size=334M" in three  # the rest goes to the last
    with pytest.raises(ValueError, match="a vCPU and 128 MiB each"):
        numa_argv(1, 1024, 2)


def test_a_job_path_with_a_space_cannot_go_on_the_kernel_command_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kernel command line"):
        fake_qemu_argv(tmp_path, job="a job.sh")


def test_extra_boot_parameters_follow_the_harness_own(tmp_path: Path) -> None:
    def boot_line(words: list[str]) -> str:
        argv = fake_qemu_argv(tmp_path, kernel_args=words)
        return argv[argv.index("-append") + 1]

    plain = boot_line([])
    assert boot_line(["nohz_full=3", "rcu_nocbs=3"]) == f"{plain} nohz_full=3 rcu_nocbs=3"
    for word, why in [
        ("nohz_full=3 init=/bin/sh", "one plain word"),
        ("", "one plain word"),
        ("a\tb", "one plain word"),
        ("x='1'", "one plain word"),
        ("kcm.job=/tmp/other", "sets kcm.job= itself"),
        ("init=/bin/sh", "sets init= itself"),
        ("panic=0", "sets panic= itself"),
    ]:
        with pytest.raises(ValueError, match=why):
            boot_line([word])


def test_the_harness_command_refuses_a_bad_boot_parameter_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--kernel-arg", "kcm.cgroup=v1", "true"]) == 125
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "guest: the harness sets kcm.cgroup= itself: 'kcm.cgroup=v1'\n"


PANIC_CONSOLE = """\
[    1.406850] CPU: 2 UID: 0 PID: 0 Comm: swapper/2 Tainted: G      D      6.12.117+deb12-amd64 #1
[    1.406909] Kernel panic - not syncing: Fatal exception in interrupt
[    3.443172] Shutting down cpus with NMI
"""


def test_a_guest_is_run_again_after_tcg_s_fault_or_a_panic_before_its_job() -> None:
    int3 = PANIC_CONSOLE.replace("Comm:", "Oops: int3: 0000 [#2] PREEMPT SMP NOPTI\n[ 1.5] Comm:")
    oops = "Oops: int3: 0000 [#2] PREEMPT SMP NOPTI"
    assert retry_reason((), PANIC_CONSOLE, timed_out=False) == "Fatal exception in interrupt"
    # TCG's fault is retried wherever it struck, even in the job, even when it hung the guest.
    assert retry_reason((), int3, timed_out=False) == oops
    assert retry_reason(("start 2.10",), int3, timed_out=True) == oops
    # Once the job started it may have done things: any other failure is reported, not retried.
    assert retry_reason(("start 2.10",), PANIC_CONSOLE, timed_out=False) is None
    assert retry_reason((), PANIC_CONSOLE, timed_out=True) is None  # a hang is not retried
    assert retry_reason(("fail no cgroup2",), "[ 1.0] Run /init as init process\n", False) is None
    assert retry_reason((), "[ 1.2] Kernel panic - not syncing:\n", False) == "no reason given"


def run_job(argv: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    script = cwd / "job.sh"
    script.write_text(job_script(argv, env, cwd))
    done = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_the_job_script_runs_argv_in_exactly_the_environment_given(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "X": "a 'quoted' $value"}
    args = ["two words", "$HOME", "it's", "`id`", ""]
    assert run_job(["printf", "%s\\n", *args], env, tmp_path) == args
    assert run_job(["env"], env, tmp_path) == ["PATH=/usr/bin:/bin", "X=a 'quoted' $value"]
    assert run_job(["pwd"], env, tmp_path) == [str(tmp_path)]


def test_the_guest_gets_none_of_the_hosts_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_ONLY", "secret")
    env = guest_env("v2", 4, python="/venv/bin/python", extra={"EXTRA": "1"})
    assert "HOST_ONLY" not in env
    assert env["PATH"].startswith("/venv/bin:")
    assert env["KCM_IN_GUEST"] == "v2" and env["KCM_GUEST_SMP"] == "4" and env["EXTRA"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_the_status_lines_give_the_exit_code_the_failure_and_the_counts() -> None:
    ran = ["start 3.21", 'pytest {"passed": 3, "skipped": 1, "errors": 0}', "exit 1"]
    assert exit_code(ran) == 1
    assert failure(ran) is None
    assert pytest_counts(ran) == PytestCounts(passed=3, skipped=1)
    died = ["fail mount the host's root over 9p"]
    assert exit_code(died) is None
    assert failure(died) == "mount the host's root over 9p"
    assert pytest_counts(died) is None


@pytest.mark.parametrize(
    ("counts", "all_passed"),
    [
        (PytestCounts(passed=4, deselected=10), True),
        (PytestCounts(), False),  # nothing ran
        (PytestCounts(passed=4, skipped=1), False),  # a guest test that skips is a gap
        (PytestCounts(passed=4, failed=1), False),
        (PytestCounts(passed=4, errors=1), False),
        (PytestCounts(passed=4, xfailed=1), False),
    ],
)
def test_the_guest_run_passes_only_when_every_selected_test_passed(
    counts: PytestCounts, all_passed: bool
) -> None:
    assert counts.all_passed is all_passed


# ----------------------------------------------------------------------------- the guard


def test_the_guest_mode_is_trusted_only_with_the_guest_kernels_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cmdline").write_text("console=ttyS0 quiet kcm.cgroup=v1 kcm.job=/tmp/j\n")
    monkeypatch.delenv("KCM_IN_GUEST", raising=False)
    assert marker.guest_mode(tmp_path) is None
    monkeypatch.setenv("KCM_IN_GUEST", "v1")
    assert marker.guest_mode(tmp_path) == "v1"
    monkeypatch.setenv("KCM_IN_GUEST", "v2")
    with pytest.raises(pytest.UsageError, match="not the project's guest"):
        marker.guest_mode(tmp_path)
    monkeypatch.setenv("KCM_IN_GUEST", "v3")
    with pytest.raises(pytest.UsageError, match="want one of v1, v2"):
        marker.guest_mode(tmp_path)


def run_pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KCM_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=CHECKOUT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_on_the_host_the_guest_tests_skip() -> None:
    done = run_pytest("-q", "-rs", "tests/guest/test_cgroup_v2.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 skipped" in done.stdout
    assert "tests/guest/test_boot.py runs it in the guest" in done.stdout


def test_kcm_in_guest_on_the_host_refuses_to_run_the_guest_tests() -> None:
    done = run_pytest("-q", "tests/guest/test_cgroup_v2.py", KCM_IN_GUEST="v2")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "not the project's guest" in done.stderr
    assert "passed" not in done.stdout and "failed" not in done.stdout


def test_a_checkout_below_the_guests_scratch_is_mounted_again(tmp_path: Path) -> None:
    # A CI clone in /tmp: the guest's own tmpfs on /tmp would hide it (the job's "cd" failed).
    clone = Path("/tmp") / f"kcm-keep-{os.getpid()}"
    (clone / "kcm").mkdir(parents=True)
    try:
        outside = Path("/usr/bin")  # not below a scratch directory (this checkout may be)
        (clone / "shared").symlink_to(outside)  # as ../shared may be a link
        kept = hidden_paths([clone / "kcm", clone / "shared", clone / "gone", outside])
        assert kept == [f"{clone}/kcm:{clone}/kcm", f"{clone}/shared:{outside}"]
        (clone / "a,b").mkdir()
        with pytest.raises(ValueError, match="white space"):
            hidden_paths([clone / "a,b"])
    finally:
        shutil.rmtree(clone)
