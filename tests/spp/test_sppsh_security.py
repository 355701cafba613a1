"""sppsh against a lease file that guests wrote: a guest picks its own DHCP host name, so
nothing read from the file may reach ssh as an option or the terminal as a control sequence,
and no file in the lease file's place may hang sppsh or make it read without bound.

ssh is a stand-in on PATH that records the argv it was run with.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path

import pytest

from spp_runner import sppsh
from spp_runner.escape import shown

from .conftest import SPPSH, VENV_BIN, write_exec

LATER = int(time.time()) + 3600
PROXY = "-oProxyCommand=touch {mark}"

FAKE_SSH = """
    #!/bin/sh
    # Record the argv, one argument per line, and never connect anywhere.
    for arg in "$@"; do printf '%s\\n' "$arg"; done > "$SSH_RECORD"
"""


def lease(ip: str, host: str | None) -> dict[str, object]:
    entry: dict[str, object] = {
        "ip-address": ip,
        "mac-address": "52:54:00:00:00:03",
        "expiry-time": LATER,
    }
    if host is not None:
        entry["hostname"] = host
    return entry


class Guests:
    """A lease file, a recording ssh on PATH, and a file a ProxyCommand would create."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.leases = root / "virbr0.status"
        self.record = root / "ssh-argv"
        self.mark = root / "proxy-command-ran"
        write_exec(root / "bin/ssh", FAKE_SSH)
        self.env = {
            **os.environ,
            "PATH": f"{root / 'bin'}:{VENV_BIN}:{os.environ['PATH']}",
            "SSH_RECORD": str(self.record),
        }

    def write(self, entries: list[dict[str, object]]) -> None:
        self.leases.write_text(json.dumps(entries, indent=2))

    def sppsh(
        self, *args: str, lease_file: Path | str | None = None
    ) -> subprocess.CompletedProcess[str]:
        path = str(self.leases if lease_file is None else lease_file)
        return subprocess.run(
            [SPPSH, "--lease-file", path, *args],
            capture_output=True,
            text=True,
            env=self.env,
            stdin=subprocess.DEVNULL,
            timeout=20,
            # Before the bounded read, /dev/zero was read into memory until it ran out.
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),
            check=False,
        )

    def ssh_argv(self) -> list[str] | None:
        """What the stand-in ssh was run with, or None if it never ran."""
        if not self.record.exists():
            return None
        return self.record.read_text().splitlines()


@pytest.fixture
def guests(tmp_path: Path) -> Guests:
    return Guests(tmp_path)


def refused_proxy_lease(guests: Guests) -> str:
    """Lease 0 claims VM 3 with an ssh option as its address; lease 1 is a plain VM 4."""
    proxy = PROXY.format(mark=guests.mark)
    guests.write([lease(proxy, "spp3"), lease("192.168.122.4", "spp4")])
    return (
        f"sppsh: warning: {guests.leases}: entry 0 refused: ip-address {shown(proxy)} is "
        "not an IPv4 or IPv6 address\n"
    )


def test_an_option_as_address_is_never_printed_as_the_ssh_command(guests: Guests) -> None:
    warning = refused_proxy_lease(guests)
    result = guests.sppsh("--print", "3")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == warning + (
        "sppsh: error: no VM with id, host or IP address '3' (sppsh -l lists them)\n"
    )


def test_an_option_as_address_never_reaches_ssh(guests: Guests) -> None:
    warning = refused_proxy_lease(guests)
    result = guests.sppsh("3")
    assert result.returncode == 1
    assert result.stderr.startswith(warning)
    assert guests.ssh_argv() is None  # ssh never ran
    assert not guests.mark.exists()


def test_the_other_leases_still_list_and_log_in_with_the_destination_after_dashes(
    guests: Guests,
) -> None:
    warning = refused_proxy_lease(guests)
    listed = guests.sppsh("-l")
    assert (listed.returncode, listed.stdout) == (0, "id:4, host:spp4, ipaddr:192.168.122.4\n")
    assert listed.stderr == warning

    login = guests.sppsh("-a", "user1", "4")
    assert login.returncode == 0, login.stderr
    assert guests.ssh_argv() == ["-l", "user1", "--", "192.168.122.4"]
    assert not guests.mark.exists()


@pytest.mark.parametrize(
    ("host", "problems"),
    [
        ("-oProxyCommand=sh3", ["begins with '-', which ssh reads as an option"]),
        (
            "-oX\x1b[2J3",
            [
                "begins with '-', which ssh reads as an option",
                "holds control, invisible or blank characters",
            ],
        ),
        ("spp\x1b]0;owned\x073", ["holds control, invisible or blank characters"]),
        ("spp3\n", ["holds control, invisible or blank characters"]),
        ("spp\r3", ["holds control, invisible or blank characters"]),
        ("spp\u202e3", ["holds control, invisible or blank characters"]),  # right-to-left
        ("spp 3", ["holds control, invisible or blank characters"]),
        ("root@192.168.122.3", ["is not a host name"]),
        ("spp:3", ["is not a host name"]),
        ("spp/../3", ["is not a host name"]),
        ("$(reboot)3", ["is not a host name"]),
        (".spp3", ["is not a host name"]),
        ("spp" + "3" * 300, ["is longer than a host name may be (253 characters)"]),
    ],
    ids=[
        "option",
        "option-and-escape",
        "osc-title",
        "newline",
        "carriage-return",
        "rtl-override",
        "blank",
        "user-at",
        "host-port",
        "path",
        "shell",
        "leading-dot",
        "too-long",
    ],
)
def test_a_host_name_that_is_not_plain_is_refused_and_shown_escaped(
    guests: Guests, host: str, problems: list[str]
) -> None:
    guests.write([lease("192.168.122.3", host), lease("192.168.122.5", "spp5")])
    result = guests.sppsh("-l")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "id:5, host:spp5, ipaddr:192.168.122.5\n"
    lines = result.stderr.splitlines()
    assert len(lines) == len(problems), result.stderr
    for line, problem in zip(lines, problems, strict=True):
        assert line.startswith(f"sppsh: warning: {guests.leases}: entry 0 refused: hostname ")
        assert problem in line
    # Nothing from the file reaches the terminal raw: every character printed is plain.
    for out in (result.stdout, result.stderr):
        assert all(ch == "\n" or (ch.isprintable() and ord(ch) < 0x7F) for ch in out), out
    assert shown(host)[:20] in result.stderr  # escaped, not dropped

    login = guests.sppsh("3")
    assert login.returncode == 1
    assert guests.ssh_argv() is None


@pytest.mark.parametrize(
    "address",
    ["fe80::1%-oProxyCommand=x", "192.168.122.3 -oProxyCommand=x", "-6", "::1]:22", "3"],
)
def test_an_address_that_is_not_an_ip_address_is_refused(guests: Guests, address: str) -> None:
    guests.write([lease(address, "spp3")])
    result = guests.sppsh("--print", "spp3")
    assert (result.returncode, result.stdout) == (1, "No VMs running\n")
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"sppsh: warning: {guests.leases}: entry 0 refused: ip-address ")


@pytest.mark.parametrize("account", ["-oProxyCommand=x", "a\nb", "a b", ""])
def test_an_account_that_is_not_a_user_name_is_a_usage_error(guests: Guests, account: str) -> None:
    guests.write([lease("192.168.122.3", "spp3")])
    result = guests.sppsh(f"--account={account}", "3")
    assert result.returncode == 2
    assert result.stderr == (
        f"sppsh: error: argument -a/--account: {account!r} is not a user name (no leading "
        "'-', blanks or control characters) (see sppsh -h)\n"
    )
    assert guests.ssh_argv() is None


def test_a_fifo_as_the_lease_file_is_refused_without_hanging(guests: Guests) -> None:
    fifo = guests.root / "fifo.status"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = guests.sppsh("-l", lease_file=fifo)  # a plain open() waits for a writer forever
    assert time.monotonic() - started < 10
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"sppsh: error: {fifo}: a FIFO, not a lease file; refused unread\n"


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_as_the_lease_file_is_refused_unread(guests: Guests, device: str) -> None:
    result = guests.sppsh("-l", lease_file=device)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"sppsh: error: {device}: a character device, not a lease file; refused unread\n"
    )


def test_a_directory_as_the_lease_file_is_refused(guests: Guests) -> None:
    result = guests.sppsh("-l", lease_file=guests.root)
    assert result.returncode == 1
    assert result.stderr == (
        f"sppsh: error: {guests.root}: a directory, not a lease file; refused unread\n"
    )


def test_a_huge_sparse_lease_file_is_refused_unread(guests: Guests) -> None:
    huge = guests.root / "huge.status"
    with huge.open("wb") as f:
        f.truncate(16 << 30)  # 16 GiB of holes: reading it would take minutes and all memory
    started = time.monotonic()
    result = guests.sppsh("-l", lease_file=huge)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert result.stderr == (
        f"sppsh: error: {huge}: {16 << 30} bytes is over the {sppsh.MAX_LEASE_FILE} byte "
        "limit of a lease file; refused unread\n"
    )


def test_a_lease_file_just_over_the_limit_is_refused_and_one_at_it_is_read(
    guests: Guests,
) -> None:
    entry = json.dumps(lease("192.168.122.3", "spp3"))
    at_limit = "[" + entry + " " * (sppsh.MAX_LEASE_FILE - len(entry) - 2) + "]"
    assert len(at_limit) == sppsh.MAX_LEASE_FILE
    guests.leases.write_text(at_limit)
    assert guests.sppsh("-l").stdout == "id:3, host:spp3, ipaddr:192.168.122.3\n"
    guests.leases.write_text(at_limit + " ")
    result = guests.sppsh("-l")
    assert result.returncode == 1
    assert "byte limit of a lease file; refused unread" in result.stderr


def test_many_refused_leases_cost_little(guests: Guests) -> None:
    # One guest rewriting its name at every renewal: each bad lease is one line, quickly.
    guests.write([lease(f"-o{i}", f"-x{i}") for i in range(2000)])
    started = time.monotonic()
    result = guests.sppsh("-l")
    assert time.monotonic() - started < 10
    assert result.stdout == "No VMs running\n"
    assert len(result.stderr.splitlines()) == 4000
