"""Shell completion for spp-wakeup and sppsh (``--completion bash|zsh``): their grammars, read
from their argparse parsers, and sppsh's VMs (ids, host names, addresses) from the lease file.

The scripts are kcm's (``kcm.completion``): the same walk of the command line, the same
quoting of every value that comes from outside.
"""

from __future__ import annotations

import argparse

from kcm.completion import (
    FILES,
    FLAG,
    NONE,
    USERS,
    Grammar,
    Kind,
    Spec,
    Word,
    call,
    option_value,
    serve,
    words,
)


def grammar_of(parser: argparse.ArgumentParser, kinds: dict[str, Kind]) -> Grammar:
    """The options and positional arguments of ``parser``; ``kinds`` says how the value of
    each (by ``dest``) completes, where its ``choices`` do not (default: nothing)."""
    options = []
    arguments = []
    # argparse has no public list of its actions; _actions is what its own help walks.
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue  # the scripts add --help to every grammar
        if action.choices is not None:
            kind = words(*(str(choice) for choice in action.choices))
        else:
            kind = kinds.get(action.dest, NONE)
        if action.option_strings:
            flag = action.nargs == 0
            options.append(
                Word(tuple(action.option_strings), FLAG if flag else kind, action.help or "")
            )
        else:
            arguments.append(kind)
    return Grammar(tuple(options), tuple(arguments))


def wakeup_spec() -> Spec:
    from spp_runner.cli import PROG, parser

    grammar = grammar_of(parser(), {"config": FILES})
    return Spec(PROG, (), f"{PROG} --completion", grammar)


def sppsh_spec() -> Spec:
    from spp_runner.sppsh import PROG, parser

    kinds = {"account": USERS, "lease_file": FILES, "target": call("targets")}
    return Spec(PROG, (), f"{PROG} --completion", grammar_of(parser(), kinds))


def sppsh_targets(line: list[str]) -> list[str]:
    """What ``sppsh ID|HOST|IP`` accepts: each lease's id, host name and address, from the
    lease file on the line (``--lease-file``) or libvirt's, through sppsh's own reader: it
    refuses, unread, a file that is not a regular one (a FIFO cannot block), and refuses each
    lease whose address is no IP address or whose host name is not plain, so a name a guest
    made of shell code is never offered. The scripts quote what is, all the same."""
    from spp_runner.sppsh import DEFAULT_LEASE_FILE, read_lease_file

    path = option_value(line, "--lease-file") or DEFAULT_LEASE_FILE
    targets = []
    for lease in read_lease_file(path).leases:
        if lease.vm_id is not None:
            targets.append(str(lease.vm_id))
        if lease.host:
            targets.append(lease.host)
        targets.append(lease.ip)
    return sorted(set(targets), key=targets.index)


def sppsh_values(argv: list[str]) -> int:
    """``sppsh __complete targets -- <words>``, as the completion scripts ask it."""
    from spp_runner.errors import SppError

    return serve(argv, {"targets": sppsh_targets}, (SppError, OSError, UnicodeError))
