"""sppsh on lease files written the way libvirt writes them; the ssh argv it would run."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from spp_runner import sppsh
from spp_runner.errors import LeaseError

from .conftest import SPPSH, run_cli

LATER = int(time.time()) + 3600


def lease(
    ip: str, host: str | None, mac: str = "52:54:00:00:00:01", expiry: int = LATER
) -> dict[str, object]:
    entry: dict[str, object] = {
        "ip-address": ip,
        "mac-address": mac,
        "client-id": "ff:00:00:00:00:00:01:00:01",
        "expiry-time": expiry,
    }
    if host is not None:
        entry["hostname"] = host
    return entry


@pytest.fixture
def leases(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(entries: list[dict[str, object]] | str) -> str:
        path = tmp_path / "virbr0.status"
        path.write_text(entries if isinstance(entries, str) else json.dumps(entries, indent=4))
        return str(path)

    return write


MANY = [
    lease("192.168.122.57", "spp1", "52:54:00:00:00:01"),
    lease("192.168.122.157", "spp0", "52:54:00:00:00:00"),
    lease("192.168.122.12", "spp12", "52:54:00:00:00:0c"),
    lease("192.168.122.99", None, "52:54:00:00:00:63"),
    lease("fd00:122::3a", "spp2", "52:54:00:00:00:02"),
]


def test_list_many_in_id_order_with_the_seed_line_format(leases) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(SPPSH, "-l", "--lease-file", leases(MANY))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "id:0, host:spp0, ipaddr:192.168.122.157",
        "id:1, host:spp1, ipaddr:192.168.122.57",
        "id:2, host:spp2, ipaddr:fd00:122::3a",
        "id:12, host:spp12, ipaddr:192.168.122.12",
        "id:-, host:-, ipaddr:192.168.122.99",
    ]
    assert result.stderr == ""


def test_list_one(leases) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(SPPSH, "-l", "--lease-file", leases([lease("10.0.0.5", "spp7")]))
    assert (result.returncode, result.stdout) == (0, "id:7, host:spp7, ipaddr:10.0.0.5\n")


@pytest.mark.parametrize("content", ["[]", "", "\n"], ids=["empty-list", "empty-file", "newline"])
def test_no_leases_says_no_vms_running_and_fails(leases, content: str) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(SPPSH, "-l", "--lease-file", leases(content))
    assert (result.returncode, result.stdout, result.stderr) == (1, "No VMs running\n", "")


def test_login_with_no_leases_also_says_no_vms_running(leases) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(SPPSH, "--print", "0", "--lease-file", leases("[]"))
    assert (result.returncode, result.stdout) == (1, "No VMs running\n")


def test_expired_leases_are_not_running_vms(leases) -> None:  # type: ignore[no-untyped-def]
    path = leases(
        [lease("10.0.0.5", "spp7", expiry=int(time.time()) - 60), lease("10.0.0.6", "spp8")]
    )
    result = run_cli(SPPSH, "-l", "--lease-file", path)
    assert result.stdout == "id:8, host:spp8, ipaddr:10.0.0.6\n"


@pytest.mark.parametrize(
    ("args", "argv"),
    [
        (["0"], "ssh -- 192.168.122.157"),
        (["12"], "ssh -- 192.168.122.12"),
        (["spp1"], "ssh -- 192.168.122.57"),
        (["192.168.122.99"], "ssh -- 192.168.122.99"),
        (["-a", "user1", "spp0"], "ssh -l user1 -- 192.168.122.157"),
        (["-a", "root", "2"], "ssh -l root -- fd00:122::3a"),
        (["FD00:122:0::3A"], "ssh -- fd00:122::3a"),
    ],
    ids=[
        "by-id",
        "by-two-digit-id",
        "by-host",
        "by-ip-without-hostname",
        "as-user",
        "ipv6",
        "ipv6-spelled-otherwise",
    ],
)
def test_login_target_and_ssh_argv(leases, args: list[str], argv: str) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(SPPSH, "--print", "--lease-file", leases(MANY), *args)
    assert (result.returncode, result.stdout, result.stderr) == (0, argv + "\n", "")


@pytest.mark.parametrize("target", ["1 ", "spp", "sp", "192.168.122.1", "01x", "spp01", "3"])
def test_matching_is_exact_never_by_prefix(leases, target: str) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(SPPSH, "--print", "--lease-file", leases(MANY), target)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"sppsh: error: no VM with id, host or IP address {target!r} (sppsh -l lists them)\n"
    )


def test_two_vms_with_one_name_are_ambiguous(leases) -> None:  # type: ignore[no-untyped-def]
    path = leases([lease("10.0.0.5", "spp3"), lease("10.0.0.9", "spp3")])
    result = run_cli(SPPSH, "--print", "--lease-file", path, "spp3")
    assert result.returncode == 1
    assert result.stderr == (
        "sppsh: error: 'spp3' matches 2 VMs (10.0.0.5, 10.0.0.9); give the IP address\n"
    )


def test_login_execs_ssh_with_the_argv(tmp_path: Path) -> None:
    path = tmp_path / "virbr0.status"
    path.write_text(json.dumps(MANY))
    calls: list[tuple[str, list[str]]] = []

    def fake_exec(program: str, argv: Sequence[str]) -> object:
        calls.append((program, list(argv)))
        return None

    assert sppsh.main(["-a", "spp", "1", "--lease-file", str(path)], exec_fn=fake_exec) == 0
    assert calls == [("ssh", ["ssh", "-l", "spp", "--", "192.168.122.57"])]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "{not json",
            "not a libvirt lease file (invalid JSON: Expecting property name enclosed "
            "in double quotes at line 1)",
        ),
        ('{"ip-address": "1.2.3.4"}', "not a libvirt lease file (expected a JSON list)"),
        ('[{"hostname": "spp1"}]', "entry 0 has no ip-address"),
    ],
)
def test_a_broken_lease_file_is_one_error_line(leases, content: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = leases(content)
    result = run_cli(SPPSH, "-l", "--lease-file", path)
    assert result.returncode == 1
    assert result.stderr == f"sppsh: error: {path}: {message}\n"


def test_missing_lease_file(tmp_path: Path) -> None:
    result = run_cli(SPPSH, "-l", "--lease-file", str(tmp_path / "none.status"))
    assert result.returncode == 1
    assert result.stderr == (
        f"sppsh: error: {tmp_path}/none.status: no such lease file; is libvirt's network "
        "running? (--lease-file PATH reads another)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give -l to list VMs, or the id, host name or IP address of one"),
        (["-l", "spp0"], "give either -l or a VM to log in to, not both"),
        (["--bogus"], "unrecognized arguments: --bogus (see sppsh -h)"),
    ],
)
def test_usage_errors(leases, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(SPPSH, "--lease-file", leases(MANY), *args)
    assert result.returncode == 2
    assert result.stderr == f"sppsh: error: {message}\n"


def test_default_lease_file_is_libvirts() -> None:
    assert sppsh.DEFAULT_LEASE_FILE == "/var/lib/libvirt/dnsmasq/virbr0.status"
    assert sppsh.parser().parse_args(["-l"]).lease_file == sppsh.DEFAULT_LEASE_FILE


# Found by stress/fuzz.py: each of these escaped parse_leases as a traceback.
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000, "not a libvirt lease file (JSON nested too deeply)"),
        ("[" + "1" * 4301 + "]", "not a libvirt lease file (a number too long)"),
    ],
    ids=["deep-nesting", "long-number"],
)
def test_json_python_cannot_read_is_a_lease_error(content: str, message: str) -> None:
    with pytest.raises(LeaseError) as e:
        sppsh.parse_leases(content, "virbr0.status", 0)
    assert e.value.message == f"virbr0.status: {message}"


@pytest.mark.parametrize(
    ("host", "vm_id"),
    [
        ("spp12", 12),
        ("12", 12),
        ("spp", None),
        ("spp123456789", 123456789),
        ("spp1234567890", None),  # longer than any VM id: no id
        ("spp" + "1" * 5000, None),  # int() would refuse it
        ("spp" + "1" * 100_000 + "x", None),  # the regex search took minutes on this
    ],
    ids=lambda v: v if isinstance(v, int | None) or len(v) < 20 else f"{len(v)}-chars",
)
def test_vm_id_is_the_host_names_trailing_number(host: str, vm_id: int | None) -> None:
    started = time.monotonic()
    assert sppsh.Lease("10.0.0.1", "", host, None).vm_id == vm_id
    assert time.monotonic() - started < 1
