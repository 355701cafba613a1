"""The ``kcm`` command line: parse, call one function of the core, map errors to exit codes.

A small hand-written parser for the seed's docopt-style usage: argparse alone costs more
start-up time than ``kcm isolate`` spends on its whole allocation. What it parses comes from
the table of subcommands in ``kcm/commands.py`` (see there how to add one), through the
grammar block below, which ``python -m kcm.commands`` writes: the table itself, with every
help text, is loaded only for help and completion, never on ``kcm isolate``'s path.
"""

from __future__ import annotations

import os
import sys

from kcm import __version__
from kcm.errors import KcmError, UsageError

# -- grammar: generated from kcm/commands.py by `python -m kcm.commands`; do not edit --
# Per subcommand: its options taking a value, its flags, their defaults, short
# spellings, the options it needs, its positional arguments (name, required), and
# its handler.
VALUE_OPTIONS = {
    "init": ("--conf-dir", "--num-dp-cores", "--num-cp-cores", "--exclusive-mode"),
    "discover": ("--conf-dir", "--interval"),
    "describe": ("--conf-dir", "--output"),
    "reconcile": ("--conf-dir", "--interval"),
    "isolate": ("--conf-dir", "--pool", "--socket-id", "--numa-node", "--near"),
    "install": ("--install-dir",),
    "cluster-init": (
        "--namespace",
        "--image",
        "--num-dp-cores",
        "--num-cp-cores",
        "--node-selector",
        "--reconcile-interval",
    ),
    "metrics": ("--conf-dir", "--listen", "--textfile"),
    "audit": ("--conf-dir", "--interval", "--output"),
    "shield": ("--conf-dir",),
    "unshield": ("--conf-dir",),
}
FLAGS = {
    "init": ("--keep-existing", "--quiet"),
    "discover": ("--taint",),
    "reconcile": ("--quiet",),
    "isolate": ("--near-strict",),
    "install": ("--quiet",),
    "cluster-init": ("--example-workload",),
    "shield": ("--quiet",),
    "unshield": ("--quiet",),
}
DEFAULTS = {
    "init": {
        "--conf-dir": "/etc/kcm",
        "--num-dp-cores": "4",
        "--num-cp-cores": "1",
        "--exclusive-mode": "packed",
    },
    "discover": {"--conf-dir": "/etc/kcm"},
    "describe": {"--conf-dir": "/etc/kcm", "--output": "json"},
    "reconcile": {"--conf-dir": "/etc/kcm"},
    "isolate": {"--conf-dir": "/etc/kcm"},
    "cluster-init": {
        "--namespace": "kcm",
        "--image": "kcm:latest",
        "--num-dp-cores": "4",
        "--num-cp-cores": "1",
        "--reconcile-interval": "60",
    },
    "metrics": {"--conf-dir": "/etc/kcm"},
    "audit": {"--conf-dir": "/etc/kcm", "--interval": "1", "--output": "table"},
    "shield": {"--conf-dir": "/etc/kcm"},
    "unshield": {"--conf-dir": "/etc/kcm"},
}
SHORT = {
    "describe": {"-o": "--output"},
    "audit": {"-o": "--output"},
}
REQUIRED = {
    "isolate": ("--pool",),
    "install": ("--install-dir",),
}
ARGUMENTS = {
    "isolate": (("<command>", True),),
    "completion": (("<shell>", True),),
    "help": (("<subcommand>", False),),
}
# After its arguments, '--' and what follows belong to them (and so does --help).
REST = ("isolate",)
RUN = {
    "init": "kcm.cli:run_init",
    "discover": "kcm.cli:run_discover",
    "describe": "kcm.cli:run_describe",
    "reconcile": "kcm.cli:run_reconcile",
    "isolate": "kcm.cli:run_isolate",
    "install": "kcm.cli:run_install",
    "cluster-init": "kcm.cli:run_cluster_init",
    "metrics": "kcm.cli:run_metrics",
    "audit": "kcm.cli:run_audit",
    "shield": "kcm.cli:run_shield",
    "unshield": "kcm.cli:run_unshield",
    "completion": "kcm.cli:run_completion",
    "help": "kcm.cli:run_help",
}
# -- end of grammar --


class Args:
    """A parsed command line: the subcommand, option values, its positional arguments
    (``words``: isolate's ``<command>``, completion's ``<shell>``) and isolate's ``<args>``."""

    __slots__ = ("args", "options", "subcommand", "words")

    def __init__(self, subcommand: str) -> None:
        self.subcommand = subcommand
        self.options: dict[str, str] = {}
        self.words: list[str] = []
        self.args: list[str] = []

    @property
    def command(self) -> str | None:
        """isolate's ``<command>``."""
        return self.words[0] if self.words else None

    def get(self, name: str) -> str:
        value = self.options.get(name)
        return DEFAULTS.get(self.subcommand, {}).get(name, "") if value is None else value

    def flag(self, name: str) -> bool:
        return name in self.options


def parse(argv: list[str]) -> Args:
    """Parse ``argv`` (without the program name) the way the seed's usage reads.

    ``-h``/``--help`` anywhere before a subcommand's arguments asks for its help (subcommand
    ``help``, its name the one word); after isolate's ``<command>`` it is the command's.
    """
    if not argv:
        raise UsageError("a subcommand is required")
    sub = argv[0]
    if sub not in RUN:
        raise UsageError(f"unknown subcommand {sub!r}")
    values = VALUE_OPTIONS.get(sub, ())
    flags = FLAGS.get(sub, ())
    short_names = SHORT.get(sub, {})
    arguments = ARGUMENTS.get(sub, ())
    rest = sub in REST
    args = Args(sub)
    i = 1
    while i < len(argv):
        token = argv[i]
        i += 1
        if rest and len(args.words) == len(arguments):
            # After isolate's <command>: its --help, then '--' and its <args>, verbatim.
            if token == "--":
                args.args += argv[i:]
                break
            if token in ("-h", "--help"):
                args.args.append(token)
                continue
            raise UsageError(
                f"unexpected argument {token!r}: put the command's arguments after '--'"
                " (kcm isolate --pool=<pool> <command> -- <args> ...)"
            )
        if token == "--":
            raise UsageError("'--' only belongs after kcm isolate's <command>")
        if token in ("-h", "--help"):
            help_args = Args("help")
            help_args.words = [sub]
            return help_args
        short = short_names.get(token[:2])
        if short is not None:  # "-o table" reads on as "--output table"
            rest_of_token = token[2:]
            token = short if not rest_of_token else f"{short}={rest_of_token.removeprefix('=')}"
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            if name in values:
                if not eq:
                    if i >= len(argv):
                        raise UsageError(f"{name} needs a value")
                    value = argv[i]
                    i += 1
            elif name in flags and not eq:
                value = ""
            else:
                raise UsageError(f"kcm {sub} has no option {token!r}")
            if name in args.options:
                raise UsageError(f"{name} given twice")
            args.options[name] = value
        elif len(args.words) < len(arguments):
            args.words.append(token)
        else:
            raise UsageError(f"unexpected argument {token!r}")
    for name in REQUIRED.get(sub, ()):
        if name not in args.options:
            raise UsageError(f"kcm {sub} needs {name}=<{name[2:].split('-')[0]}>")
    for index, (name, required) in enumerate(arguments):
        if required and index >= len(args.words):
            raise UsageError(f"kcm {sub} needs a {name}")
    return args


def count_option(args: Args, name: str) -> int:
    text = args.get(name)
    if not (text.isdigit() and text.isascii()):
        raise UsageError(f"{name}={text!r} is not a non-negative whole number")
    return int(text)


def seconds_option(args: Args, name: str) -> float | None:
    if name not in args.options:
        return None
    text = args.options[name]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"{name}={text!r} is not a positive number of seconds")
    return value


def dispatch(args: Args) -> int:
    """Call the handler the table names for the subcommand (``"module:function"``)."""
    module, _, function = RUN[args.subcommand].partition(":")
    handler = getattr(__import__(module, fromlist=[function]), function)
    code: int = handler(args)
    return code


# -- The handlers: each turns its Args into one call of the core -----------------------------


def run_isolate(args: Args) -> int:
    import gc

    # As for describe: isolate makes no cycles worth collecting (its values are acyclic, and
    # while its command runs it allocates nothing), so the collector's passes over the
    # objects its imports create are pure start-up cost (~0.05 ms, measured in BENCHMARKS.md).
    gc.disable()
    from kcm import isolate

    assert args.command is not None
    asked = None
    if any(name in args.options for name in PLACEMENT):
        from kcm import placement

        asked = placement.placement(
            args.options.get("--socket-id"),
            args.options.get("--numa-node"),
            args.options.get("--near"),
            args.flag("--near-strict"),
        )
    return isolate.run(args.get("--conf-dir"), args.get("--pool"), args.command, args.args, asked)


# isolate's placement options: only they bring the topology in.
PLACEMENT = ("--socket-id", "--numa-node", "--near", "--near-strict")


def run_describe(args: Args) -> int:
    import gc

    from kcm import describe

    # describe builds acyclic values and exits: the cyclic collector's passes over the
    # thousands of objects of a large state are pure cost (1-2 ms at 10,000 tasks).
    gc.disable()
    conf_dir = args.get("--conf-dir")
    output = args.get("--output")
    if output == "json":
        sys.stdout.write(describe.describe(conf_dir))
    elif output == "table":
        sys.stdout.write(describe.describe_table(conf_dir, colour=use_colour()))
    else:
        raise UsageError(f"--output={output!r} is not a format: json or table")
    return 0


def run_metrics(args: Args) -> int:
    from kcm import metrics

    return metrics.main(
        args.get("--conf-dir"),
        listen=args.options.get("--listen"),
        textfile=args.options.get("--textfile"),
    )


def run_init(args: Args) -> int:
    from kcm import init

    dp, cp = count_option(args, "--num-dp-cores"), count_option(args, "--num-cp-cores")
    return init.init(
        args.get("--conf-dir"),
        dp,
        cp,
        keep_existing=args.flag("--keep-existing"),
        exclusive_mode=args.get("--exclusive-mode"),
        quiet=args.flag("--quiet"),
    )


def run_reconcile(args: Args) -> int:
    from kcm import reconcile

    return reconcile.main(
        args.get("--conf-dir"), seconds_option(args, "--interval"), quiet=args.flag("--quiet")
    )


def run_install(args: Args) -> int:
    from kcm import install

    install.main(args.get("--install-dir"), quiet=args.flag("--quiet"))
    return 0


def run_discover(args: Args) -> int:
    from kcm.k8s import discover

    return discover.main(
        args.get("--conf-dir"),
        taint=args.flag("--taint"),
        interval=seconds_option(args, "--interval"),
    )


def run_cluster_init(args: Args) -> int:
    from kcm.k8s import cluster

    options = {name: args.get(name) for name in VALUE_OPTIONS["cluster-init"]}
    return cluster.main(options, example_workload=args.flag("--example-workload"))


def run_audit(args: Args) -> int:
    from kcm.fence import command

    return command.main(
        args.get("--conf-dir"), seconds_option(args, "--interval"), args.get("--output")
    )


def run_shield(args: Args) -> int:
    from kcm.fence import run

    return run.shield_main(args.get("--conf-dir"), quiet=args.flag("--quiet"))


def run_unshield(args: Args) -> int:
    from kcm.fence import run

    return run.unshield_main(args.get("--conf-dir"), quiet=args.flag("--quiet"))


def run_help(args: Args) -> int:
    from kcm import commands

    if not args.words:
        sys.stdout.write(commands.global_help())
        return 0
    command = commands.BY_NAME.get(args.words[0])
    if command is None:
        raise UsageError(f"kcm help: no subcommand {args.words[0]!r}")
    sys.stdout.write(commands.command_help(command))
    return 0


def run_completion(args: Args) -> int:
    from kcm import commands, completion

    shell = args.words[0]
    if shell not in completion.SHELLS:
        raise UsageError(f"kcm completion: no shell {shell!r}; bash or zsh")
    sys.stdout.write(completion.script(shell, commands.completion_spec()))
    return 0


def use_colour() -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    return (
        sys.stdout.isatty()
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM", "") != "dumb"
    )


def one_line(message: str) -> str:
    """``message`` with control characters escaped: a name read from disk may hold a newline,
    and an error is always one line."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        from kcm.commands import global_help

        sys.stdout.write(global_help())
        return 0
    if argv and argv[0] == "--version":
        sys.stdout.write(f"kcm {__version__}\n")
        return 0
    if argv and argv[0] == "__complete":  # the completion scripts' question; never an error
        from kcm.completion import kcm_values

        return kcm_values(argv[1:])
    try:
        return dispatch(parse(argv))
    except KcmError as e:
        if os.environ.get("KCM_DEBUG") == "1":
            raise
        hint = " (see kcm --help)" if isinstance(e, UsageError) else ""
        sys.stderr.write(f"kcm: error: {one_line(e.message)}{hint}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def __getattr__(name: str) -> str:
    """``HELP``, the text of ``kcm --help``, made from the table only when asked for."""
    if name == "HELP":
        from kcm.commands import global_help

        return global_help()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run() -> None:
    """The launchers' entry: ``main``, then exit without tearing the interpreter down.

    Skipping finalisation saves ``kcm isolate`` a millisecond or two per call; every stream
    is flushed first, and kcm holds no other buffered resource.
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        code = code or 1
    os._exit(code)
