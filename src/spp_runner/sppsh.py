"""sppsh: list the VMs in libvirt's DHCP lease file and log in to one of them with ssh.

A VM's id is the number at the end of its host name (``spp12`` is VM 12), as the seed's
template-and-instances scheme names them. A VM without a host name, or whose name does not
end in digits, has no id and is reached by its IP address.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from spp_runner.errors import LeaseError, SppError, UsageError

PROG = "sppsh"
DEFAULT_LEASE_FILE = "/var/lib/libvirt/dnsmasq/virbr0.status"
# A longer number at the end of a host name is no VM id (ids fit in two bytes of a MAC).
MAX_ID_DIGITS = 9


@dataclass(frozen=True)
class Lease:
    ip: str
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


def parse_leases(text: str, source: str, now: float) -> list[Lease]:
    """The unexpired leases of a libvirt ``<bridge>.status`` file, ordered by id then IP.

    libvirt writes a JSON list of objects with ``ip-address``, ``mac-address``,
    ``expiry-time`` and, when the client sent one, ``hostname``; an empty file means none.
    """
    if not text.strip():
        return []
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
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("ip-address"), str):
            raise LeaseError(f"{source}: entry {i} has no ip-address")
        expiry = item.get("expiry-time")
        expiry = expiry if isinstance(expiry, int) and not isinstance(expiry, bool) else None
        if expiry is not None and expiry < now:
            continue
        host = item.get("hostname")
        leases.append(
            Lease(
                ip=item["ip-address"],
                mac=str(item.get("mac-address", "")),
                host=host if isinstance(host, str) and host else None,
                expiry=expiry,
            )
        )

    def key(lease: Lease) -> tuple[int, int, str]:
        vm_id = lease.vm_id
        return (vm_id is None, vm_id or 0, lease.ip)

    return sorted(leases, key=key)


def read_leases(path: str, now: float | None = None) -> list[Lease]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise LeaseError(
            f"{path}: no such lease file; is libvirt's network running? (--lease-file PATH "
            "reads another)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise LeaseError(f"{path}: cannot read: {e}") from None
    return parse_leases(text, path, time.time() if now is None else now)


def find(leases: list[Lease], target: str) -> Lease:
    """The one lease whose id, host name or IP address is exactly ``target``."""
    hits = [
        lease
        for lease in leases
        if target in (lease.ip, lease.host)
        or (lease.vm_id is not None and str(lease.vm_id) == target)
    ]
    if not hits:
        raise LeaseError(f"no VM with id, host or IP address {target!r} (sppsh -l lists them)")
    if len(hits) > 1:
        ips = ", ".join(lease.ip for lease in hits)
        raise LeaseError(f"{target!r} matches {len(hits)} VMs ({ips}); give the IP address")
    return hits[0]


def ssh_argv(lease: Lease, user: str | None) -> list[str]:
    """How sppsh logs in: plain ssh, as ``user`` when given, else as the same account."""
    return ["ssh", f"{user}@{lease.ip}" if user else lease.ip]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} -h)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Log in to SPP's VMs by id, host name or IP address.",
        allow_abbrev=False,
    )
    p.add_argument("-l", "--list", action="store_true", help="list VMs: id, host, ipaddr")
    p.add_argument("-a", "--account", metavar="USER", help="log in as USER (default: you)")
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
    p.add_argument("target", nargs="?", metavar="ID|HOST|IP", help="the VM to log in to")
    return p


Exec = Callable[[str, Sequence[str]], object]


def _exec(program: str, argv: Sequence[str]) -> object:
    os.execvp(program, list(argv))


def run(argv: list[str] | None = None, exec_fn: Exec = _exec) -> int:
    args = parser().parse_args(argv)
    if args.list == (args.target is not None):
        if args.list:
            raise UsageError("give either -l or a VM to log in to, not both")
        raise UsageError("give -l to list VMs, or the id, host name or IP address of one")
    leases = read_leases(args.lease_file)
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
