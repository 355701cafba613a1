"""sppsh: list the VMs in libvirt's DHCP lease file and log in to one of them with ssh.

A VM's id is the number at the end of its host name (``spp12`` is VM 12), as the seed's
template-and-instances scheme names them. A VM without a host name, or whose name does not
end in digits, has no id and is reached by its IP address.

The lease file is written from what each guest's DHCP client says, so a guest chooses its
own host name: nothing read from it reaches ssh or the terminal before it is checked. An
address must parse as an IPv4 or IPv6 address, a host name must be a plain DNS name, the
destination always follows ``--``, and a refused lease is reported with its values escaped.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from spp_runner.errors import LeaseError, SppError, UsageError
from spp_runner.escape import shown

PROG = "sppsh"
DEFAULT_LEASE_FILE = "/var/lib/libvirt/dnsmasq/virbr0.status"
# A longer number at the end of a host name is no VM id (ids fit in two bytes of a MAC).
MAX_ID_DIGITS = 9
# A /16 of leases is about 13 MiB; a libvirt network is a /24 (about 50 KiB). 4 MiB is
# some 20,000 leases, and bounds what one read may cost.
MAX_LEASE_FILE = 4 * 1024 * 1024
MAX_HOST_NAME = 253  # the longest DNS name
# Letters, digits, '-', '_' and '.', starting with a letter, digit or '_': nothing ssh or a
# shell reads as an option, a user ("@"), a port (":"), a path or a quote.
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Lease:
    ip: str  # the address in its canonical form
    mac: str
    host: str | None
    expiry: int | None

    @property
    def vm_id(self) -> int | None:
        if not self.host:
            return None
        # rstrip, not a regex search: "[0-9]+$" is quadratic on a long run of digits that
        # does not end the name (30,000 digits took seconds).
        digits = self.host[len(self.host.rstrip("0123456789")) :]
        return int(digits) if 0 < len(digits) <= MAX_ID_DIGITS else None

    def line(self) -> str:
        vm_id = "-" if self.vm_id is None else str(self.vm_id)
        return f"id:{vm_id}, host:{self.host or '-'}, ipaddr:{self.ip}"


@dataclass(frozen=True)
class Refusal:
    """One problem of one lease that keeps it from being listed or logged in to."""

    entry: int  # its index in the file's JSON list
    problem: str  # one line; every value from the file in it is escaped

    def line(self, source: str) -> str:
        return f"{source}: entry {self.entry} refused: {self.problem}"


@dataclass(frozen=True)
class LeaseFile:
    """The unexpired leases that passed every check, and the problems of those that did not."""

    leases: list[Lease]
    refused: list[Refusal]


def address_problem(text: str) -> str | None:
    """Why ``text`` is not an address ssh may be given as its destination, or None."""
    if "%" in text:  # ipaddress accepts "fe80::1%<anything>"; no DHCP lease holds a zone
        return f"ip-address {shown(text)} has a zone index, which no lease has"
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return f"ip-address {shown(text)} is not an IPv4 or IPv6 address"
    return None


def host_name_problems(name: str) -> list[str]:
    """Why ``name`` is not a plain host name, one line per problem (empty when it is one)."""
    problems = []
    if name.startswith("-"):
        problems.append(f"hostname {shown(name)} begins with '-', which ssh reads as an option")
    if any(not ch.isprintable() or ch.isspace() for ch in name):
        problems.append(f"hostname {shown(name)} holds control, invisible or blank characters")
    elif not name.startswith("-") and not _HOST_NAME.fullmatch(name):
        problems.append(
            f"hostname {shown(name)} is not a host name (letters, digits, '-', '_' and '.', "
            "beginning with a letter, digit or '_')"
        )
    if len(name) > MAX_HOST_NAME:
        problems.append(
            f"hostname {shown(name)} is longer than a host name may be ({MAX_HOST_NAME} characters)"
        )
    return problems


def parse_lease_file(text: str, source: str, now: float) -> LeaseFile:
    """The unexpired leases of a libvirt ``<bridge>.status`` file, ordered by id then IP,
    and what was refused.

    libvirt writes a JSON list of objects with ``ip-address``, ``mac-address``,
    ``expiry-time`` and, when the client sent one, ``hostname``; an empty file means none.
    A file that is not such a list is an error; a lease whose address or host name fails its
    check is refused and the others still count, so one guest cannot hide the rest.
    """
    if not text.strip():
        return LeaseFile([], [])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LeaseError(
            f"{source}: not a libvirt lease file (invalid JSON: {e.msg} at line {e.lineno})"
        ) from None
    except RecursionError:
        raise LeaseError(f"{source}: not a libvirt lease file (JSON nested too deeply)") from None
    except ValueError:  # int() refuses a number of over 4300 digits
        raise LeaseError(f"{source}: not a libvirt lease file (a number too long)") from None
    if not isinstance(data, list):
        raise LeaseError(f"{source}: not a libvirt lease file (expected a JSON list)")
    leases = []
    refused = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("ip-address"), str):
            raise LeaseError(f"{source}: entry {i} has no ip-address")
        expiry = item.get("expiry-time")
        expiry = expiry if isinstance(expiry, int) and not isinstance(expiry, bool) else None
        if expiry is not None and expiry < now:
            continue
        ip = item["ip-address"]
        host = item.get("hostname")
        host = host if isinstance(host, str) and host else None
        problems = []
        if (problem := address_problem(ip)) is not None:
            problems.append(problem)
        if host is not None:
            problems += host_name_problems(host)
        if problems:
            refused += [Refusal(i, problem) for problem in problems]
            continue
        leases.append(
            Lease(
                ip=str(ipaddress.ip_address(ip)),
                mac=str(item.get("mac-address", "")),
                host=host,
                expiry=expiry,
            )
        )

    def key(lease: Lease) -> tuple[int, int, str]:
        vm_id = lease.vm_id
        return (vm_id is None, vm_id or 0, lease.ip)

    return LeaseFile(sorted(leases, key=key), refused)


def parse_leases(text: str, source: str, now: float) -> list[Lease]:
    """The leases of ``parse_lease_file`` that passed its checks."""
    return parse_lease_file(text, source, now).leases


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_text(path: str) -> str:
    """The lease file's text, read without hanging and without reading more than the limit.

    O_NONBLOCK keeps a FIFO from blocking the open, O_NOCTTY keeps a terminal from becoming
    ours, and the fstat refuses anything but a regular file, or one over the limit, before a
    byte is read (a sparse file of any size is refused unread).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LeaseError(
            f"{path}: no such lease file; is libvirt's network running? (--lease-file PATH "
            "reads another)"
        ) from None
    except OSError as e:
        raise LeaseError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LeaseError(f"{path}: {_kind(st.st_mode)}, not a lease file; refused unread")
        if st.st_size > MAX_LEASE_FILE:
            raise LeaseError(
                f"{path}: {st.st_size} bytes is over the {MAX_LEASE_FILE} byte limit of a "
                "lease file; refused unread"
            )
        chunks = []
        size = 0
        while size <= MAX_LEASE_FILE:
            chunk = os.read(fd, MAX_LEASE_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise LeaseError(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if size > MAX_LEASE_FILE:  # it grew after the fstat
        raise LeaseError(f"{path}: over the {MAX_LEASE_FILE} byte limit of a lease file")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise LeaseError(f"{path}: cannot read: not UTF-8 text (byte {e.start})") from None


def read_lease_file(path: str, now: float | None = None) -> LeaseFile:
    return parse_lease_file(read_text(path), path, time.time() if now is None else now)


def read_leases(path: str, now: float | None = None) -> list[Lease]:
    return read_lease_file(path, now).leases


def _same_address(target: str, ip: str) -> bool:
    try:
        return str(ipaddress.ip_address(target)) == ip
    except ValueError:
        return False


def find(leases: list[Lease], target: str) -> Lease:
    """The one lease whose id, host name or IP address is exactly ``target``."""
    hits = [
        lease
        for lease in leases
        if target in (lease.ip, lease.host)
        or _same_address(target, lease.ip)
        or (lease.vm_id is not None and str(lease.vm_id) == target)
    ]
    if not hits:
        raise LeaseError(f"no VM with id, host or IP address {target!r} (sppsh -l lists them)")
    if len(hits) > 1:
        ips = ", ".join(lease.ip for lease in hits)
        raise LeaseError(f"{target!r} matches {len(hits)} VMs ({ips}); give the IP address")
    return hits[0]


def ssh_argv(lease: Lease, user: str | None) -> list[str]:
    """How sppsh logs in: ssh as ``user`` when given (else as the same account), with the
    destination after ``--`` so that nothing in it can be taken for an option."""
    login = ["-l", user] if user else []
    return ["ssh", *login, "--", lease.ip]


def _account(text: str) -> str:
    if not text or text.startswith("-") or any(not ch.isprintable() or ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a user name (no leading '-', blanks or control characters)"
        )
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} -h)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Log in to SPP's VMs by id, host name or IP address.",
        epilog="A lease whose address is not an IP address, or whose host name is not plain, "
        "is refused (one warning line each on stderr); the other leases still count.",
        allow_abbrev=False,
    )
    p.add_argument("-l", "--list", action="store_true", help="list VMs: id, host, ipaddr")
    p.add_argument(
        "-a", "--account", metavar="USER", type=_account, help="log in as USER (default: you)"
    )
    p.add_argument(
        "--lease-file",
        default=DEFAULT_LEASE_FILE,
        metavar="PATH",
        help=f"libvirt lease file to read (default {DEFAULT_LEASE_FILE})",
    )
    p.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="print the ssh command instead of running it",
    )
    p.add_argument(
        "--completion",
        choices=("bash", "zsh"),
        metavar="SHELL",
        help="print the completion script for SHELL (bash or zsh) and exit:"
        " source <(sppsh --completion bash)",
    )
    p.add_argument("target", nargs="?", metavar="ID|HOST|IP", help="the VM to log in to")
    return p


Exec = Callable[[str, Sequence[str]], object]


def _exec(program: str, argv: Sequence[str]) -> object:
    os.execvp(program, list(argv))


def run(argv: list[str] | None = None, exec_fn: Exec = _exec) -> int:
    args = parser().parse_args(argv)
    if args.completion:
        from kcm.completion import script
        from spp_runner.completion import sppsh_spec

        sys.stdout.write(script(args.completion, sppsh_spec()))
        return 0
    if args.list == (args.target is not None):
        if args.list:
            raise UsageError("give either -l or a VM to log in to, not both")
        raise UsageError("give -l to list VMs, or the id, host name or IP address of one")
    lease_file = read_lease_file(args.lease_file)
    for refusal in lease_file.refused:
        print(f"{PROG}: warning: {refusal.line(args.lease_file)}", file=sys.stderr)
    leases = lease_file.leases
    if not leases:
        print("No VMs running")
        return 1
    if args.list:
        for lease in leases:
            print(lease.line())
        return 0
    argv_ssh = ssh_argv(find(leases, args.target), args.account)
    if args.print_only:
        print(shlex.join(argv_ssh))
        return 0
    sys.stdout.flush()
    exec_fn(argv_ssh[0], argv_ssh)
    return 0


def main(argv: list[str] | None = None, exec_fn: Exec = _exec) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["__complete"]:  # the completion scripts' question; never an error
        from spp_runner.completion import sppsh_values

        return sppsh_values(argv[1:])
    try:
        return run(argv, exec_fn)
    except SppError as e:
        for line in e.lines:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"{PROG}: error: cannot run ssh: {e.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
