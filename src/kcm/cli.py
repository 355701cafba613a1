"""The ``kcm`` command line: parse, call one function of the core, map errors to exit codes.

A small hand-written parser for the seed's docopt-style usage: argparse alone costs more
start-up time than ``kcm isolate`` spends on its whole allocation.
"""

from __future__ import annotations

import os
import sys

from kcm import __version__
from kcm.errors import KcmError, UsageError

USAGE = """\
kcm.

Usage:
  kcm (-h | --help)
  kcm --version
  kcm init [--conf-dir=<dir>] [--num-dp-cores=<num>] [--num-cp-cores=<num>]
  kcm discover [--conf-dir=<dir>]
  kcm describe [--conf-dir=<dir>]
  kcm reconcile [--conf-dir=<dir>]
  kcm isolate [--conf-dir=<dir>] --pool=<pool> <command> [-- <args> ...]
  kcm install --install-dir=<dir>
  kcm init [--conf-dir=<dir>] [--num-dp-cores=<num>] [--num-cp-cores=<num>] [--keep-existing]
           [--exclusive-mode=<mode>] [--quiet]
  kcm discover [--conf-dir=<dir>] [--taint] [--interval=<seconds>]
  kcm reconcile [--conf-dir=<dir>] [--interval=<seconds>] [--quiet]
  kcm cluster-init [--namespace=<ns>] [--image=<image>] [--num-dp-cores=<num>]
                   [--num-cp-cores=<num>] [--node-selector=<key=value>]
                   [--reconcile-interval=<seconds>] [--example-workload]
  kcm install --install-dir=<dir> [--quiet]
  kcm describe [--conf-dir=<dir>] [-o <format> | --output=<format>]
  kcm metrics [--conf-dir=<dir>] [--listen=<host:port> | --textfile=<dir>]
"""

OPTIONS = """\
Options:
  -h --help             Show this screen.
  --version             Show version.
  --conf-dir=<dir>      KCM configuration directory [default: /etc/kcm].
  --install-dir=<dir>   KCM install directory.
  --num-dp-cores=<num>  Number of data plane cores [default: 4].
  --num-cp-cores=<num>  Number of control plane cores [default: 1].
  --pool=<pool>         Pool name: either infra, controlplane or dataplane.
  --keep-existing       init: keep a state directory that is already initialised.
  --exclusive-mode=<mode>
                        init: packed takes the dataplane cores from the top of the host,
                        spread deals them across the sockets [default: packed].
  --taint               discover: also taint the node kcm.io/dataplane=true:NoSchedule.
  --interval=<seconds>  reconcile, discover: run a pass every <seconds> until SIGTERM.
  --quiet               init, install: say nothing on stderr when they succeed;
                        reconcile: no line on stderr per list it frees tasks from.
  --namespace=<ns>      cluster-init: namespace to deploy into [default: kcm].
  --image=<image>       cluster-init: kcm container image [default: kcm:latest].
  --node-selector=<key=value>
                        cluster-init: run only on nodes with these labels
                        (key=value[,key=value...]).
  --reconcile-interval=<seconds>
                        cluster-init: reconcile and discover period [default: 60].
  --example-workload    cluster-init: also print a Pod that asks for kcm.io/dataplane.
  -o --output=<format>  describe: json (the seed's) or table [default: json].
  --listen=<host:port>  metrics: serve /metrics and /healthz there until SIGTERM
                        (port 0 picks a free port; the address is logged on stderr).
  --textfile=<dir>      metrics: write <dir>/kcm.prom atomically, for node_exporter's
                        textfile collector.

Environment:
  KCM_PROC_FS           procfs to consult for PIDs; required by isolate and reconcile
                        (describe --output=table and metrics read /proc without it).
  KCM_SYS_FS            sysfs to read the CPU topology from [default: /sys].
  KCM_LOCK_TIMEOUT      seconds to wait for, and at most hold, the state lock [default: 30];
                        isolate waits 10 times as long to release its CPU list.
  KCM_ALLOW_SHARED_STATE=1
                        trust a state directory that group or others may write, or
                        (for isolate, reconcile, init) that another user owns.
  KCM_ALLOW_PID_NAMESPACE=1
                        let isolate and reconcile use a KCM_PROC_FS of another PID
                        namespace than the host's (its PID 2 is not kthreadd).
  KCM_DEBUG=1           show a traceback on errors.
  NO_COLOR              describe --output=table: no colour even on a terminal.
  NODE_NAME             discover: the node to advertise (in a pod: from spec.nodeName).
  KUBECONFIG            discover outside a pod: kubeconfig file(s) [default: ~/.kube/config].
  (CMK_PROC_FS and CMK_LOCK_TIMEOUT are read as aliases.)

Exit status:
  0 success; 1 reconcile found tasks with the wrong affinity; 2 usage error;
  3 bad or missing state directory, or one that cannot be written (full, read-only, no
  permission: the message names the path); 4 no free CPU list in the pool; 5 lock timeout;
  6 host problem (procfs, a procfs of another PID namespace, sysfs, too few cores, cannot
  pin, missing Python package, an unsafe install directory); 7 Kubernetes problem (no
  NODE_NAME, no credentials, API unreachable or refusing).
  metrics: 6 also when it cannot listen on --listen's address or write --textfile's file.
  isolate exits with its command's status (128+N if the command was killed by signal N),
  also when releasing its list fails (it says so on stderr).
"""

HELP = USAGE + "\n" + OPTIONS

# Each subcommand: the options taking a value, the flags, and their defaults.
VALUE_OPTIONS = {
    "init": {"--conf-dir", "--num-dp-cores", "--num-cp-cores", "--exclusive-mode"},
    "discover": {"--conf-dir", "--interval"},
    "describe": {"--conf-dir", "--output"},
    "reconcile": {"--conf-dir", "--interval"},
    "isolate": {"--conf-dir", "--pool"},
    "install": {"--install-dir"},
    "metrics": {"--conf-dir", "--listen", "--textfile"},
    "cluster-init": {
        "--namespace",
        "--image",
        "--num-dp-cores",
        "--num-cp-cores",
        "--node-selector",
        "--reconcile-interval",
    },
}
FLAGS = {
    "init": {"--keep-existing", "--quiet"},
    "install": {"--quiet"},
    "discover": {"--taint"},
    "reconcile": {"--quiet"},
    "cluster-init": {"--example-workload"},
}
DEFAULTS = {
    "--conf-dir": "/etc/kcm",
    "--num-dp-cores": "4",
    "--num-cp-cores": "1",
    "--exclusive-mode": "packed",
    "--namespace": "kcm",
    "--image": "kcm:latest",
    "--reconcile-interval": "60",
    "--output": "json",
}
# Short spellings, as kubectl has them: -o table, -otable, -o=table.
SHORT = {"describe": {"-o": "--output"}}
REQUIRED = {"isolate": ("--pool",), "install": ("--install-dir",)}


class Args:
    """A parsed command line: the subcommand, option values and isolate's command and args."""

    __slots__ = ("args", "command", "options", "subcommand")

    def __init__(self, subcommand: str) -> None:
        self.subcommand = subcommand
        self.options: dict[str, str] = {}
        self.command: str | None = None
        self.args: list[str] = []

    def get(self, name: str) -> str:
        value = self.options.get(name)
        return DEFAULTS.get(name, "") if value is None else value

    def flag(self, name: str) -> bool:
        return name in self.options


def parse(argv: list[str]) -> Args:
    """Parse ``argv`` (without the program name) the way the seed's usage reads."""
    if not argv:
        raise UsageError("a subcommand is required")
    sub = argv[0]
    if sub not in VALUE_OPTIONS:
        raise UsageError(f"unknown subcommand {sub!r}")
    values = VALUE_OPTIONS[sub]
    flags = FLAGS.get(sub, set())
    args = Args(sub)
    i = 1
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            if sub != "isolate" or args.command is None:
                raise UsageError("'--' only belongs after kcm isolate's <command>")
            args.args = argv[i:]
            break
        if token in ("-h", "--help") and args.command is None:
            args.subcommand = "help"
            return args
        short = SHORT.get(sub, {}).get(token[:2])
        if short is not None:  # "-o table" reads on as "--output table"
            rest = token[2:]
            token = short if not rest else f"{short}={rest.removeprefix('=')}"
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
        elif sub == "isolate" and args.command is None:
            args.command = token
        elif sub == "isolate":
            raise UsageError(
                f"unexpected argument {token!r}: put the command's arguments after '--'"
                " (kcm isolate --pool=<pool> <command> -- <args> ...)"
            )
        else:
            raise UsageError(f"unexpected argument {token!r}")
    for name in REQUIRED.get(sub, ()):
        if name not in args.options:
            raise UsageError(f"kcm {sub} needs {name}=<{name[2:].split('-')[0]}>")
    if sub == "isolate" and not args.command:
        raise UsageError("kcm isolate needs a <command>")
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
    sub = args.subcommand
    conf_dir = args.get("--conf-dir")
    if sub == "isolate":
        from kcm import isolate

        assert args.command is not None
        return isolate.run(conf_dir, args.get("--pool"), args.command, args.args)
    if sub == "describe":
        import gc

        from kcm import describe

        # describe builds acyclic values and exits: the cyclic collector's passes over the
        # thousands of objects of a large state are pure cost (1-2 ms at 10,000 tasks).
        gc.disable()
        output = args.get("--output")
        if output == "json":
            sys.stdout.write(describe.describe(conf_dir))
        elif output == "table":
            sys.stdout.write(describe.describe_table(conf_dir, colour=use_colour()))
        else:
            raise UsageError(f"--output={output!r} is not a format: json or table")
        return 0
    if sub == "metrics":
        from kcm import metrics

        return metrics.main(
            conf_dir, listen=args.options.get("--listen"), textfile=args.options.get("--textfile")
        )
    if sub == "init":
        from kcm import init

        dp, cp = count_option(args, "--num-dp-cores"), count_option(args, "--num-cp-cores")
        return init.init(
            conf_dir,
            dp,
            cp,
            keep_existing=args.flag("--keep-existing"),
            exclusive_mode=args.get("--exclusive-mode"),
            quiet=args.flag("--quiet"),
        )
    if sub == "reconcile":
        from kcm import reconcile

        return reconcile.main(
            conf_dir, seconds_option(args, "--interval"), quiet=args.flag("--quiet")
        )
    if sub == "install":
        from kcm import install

        install.main(args.get("--install-dir"), quiet=args.flag("--quiet"))
        return 0
    if sub == "discover":
        from kcm.k8s import discover

        return discover.main(
            conf_dir, taint=args.flag("--taint"), interval=seconds_option(args, "--interval")
        )
    from kcm.k8s import cluster

    options = {name: args.get(name) for name in VALUE_OPTIONS["cluster-init"]}
    return cluster.main(options, example_workload=args.flag("--example-workload"))


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
        sys.stdout.write(HELP)
        return 0
    if argv and argv[0] == "--version":
        sys.stdout.write(f"kcm {__version__}\n")
        return 0
    try:
        args = parse(argv)
        if args.subcommand == "help":
            sys.stdout.write(HELP)
            return 0
        return dispatch(args)
    except KcmError as e:
        if os.environ.get("KCM_DEBUG") == "1":
            raise
        hint = " (see kcm --help)" if isinstance(e, UsageError) else ""
        sys.stderr.write(f"kcm: error: {one_line(e.message)}{hint}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130


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
