"""The table of kcm's subcommands, and what is made from it: the help texts, the parser's grammar
and the shell completion's grammar.

Each ``Command`` of ``COMMANDS`` says everything about one subcommand: its usage lines, options
(with help, default, and how to complete their values), positional arguments, the environment
variables it reads, the exit codes it can return, and the function that runs it. ``kcm --help``
(the seed's text, then our additions), ``kcm <subcommand> --help``, ``kcm help <subcommand>``,
``kcm completion bash|zsh`` and the parser all come from it.

How to add a subcommand (or an option of one):

1. Add a ``Command`` to ``COMMANDS`` (or an ``Option`` to its ``options``). Reuse the constants
   below for what others share (``CONF_DIR``, ``LOCK_TIMEOUT``, ``EXIT_STATE``, ...); give an
   option ``complete=`` how its value completes (``DIRS``, ``FILES``, ``POOLS``, ``words(...)``)
   and ``values=`` the words it accepts, if they are few.
2. Run ``.venv/bin/python -m kcm.commands``. It rewrites the generated grammar block of
   ``kcm/cli.py``: the parser reads that block, not this module, so that ``kcm isolate`` never
   loads the help texts. ``tests/unit/test_commands.py`` fails while the block is stale, and
   when a usage line names an option the entry does not have (or the other way round).
3. Write the handler that ``run`` names (``"module:function"``, taking ``kcm.cli.Args`` and
   returning the exit code; the value checks that give usage errors belong there), its tests,
   and its README section.
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from kcm.completion import (
    COMMANDS as COMMAND_NAMES,
)
from kcm.completion import (
    DEFAULT,
    DIRS,
    FLAG,
    NONE,
    Grammar,
    Kind,
    Spec,
    Word,
    call,
    words,
)

POOLS = call("pools")
WIDTH = 96  # help lines stay within this
COLUMN = 24  # where an option's help starts, as in the seed's text


@dataclass(frozen=True)
class Option:
    """One option: ``--name`` (a flag) or ``--name=<value>``."""

    name: str
    help: str  # a phrase without its final period; "[default: ...]" is added from ``default``
    value: str = ""  # "<dir>" for an option taking a value, "" for a flag
    default: str | None = None
    short: str = ""  # "-o": the same option, its value in the next word or glued to it
    required: bool = False
    values: tuple[str, ...] = ()  # the words it accepts, when they are few (for completion)
    complete: Kind = NONE  # how its value completes; ``values`` give words(...) by themselves

    @property
    def spelling(self) -> str:
        long = f"{self.name}={self.value}" if self.value else self.name
        return f"{self.short} {long}" if self.short else long

    @property
    def kind(self) -> Kind:
        if not self.value:
            return FLAG
        if self.values and self.complete == NONE:
            return words(*self.values)
        return self.complete

    def text(self) -> str:
        default = f" [default: {self.default}]" if self.default is not None else ""
        return f"{self.help}{default}."


@dataclass(frozen=True)
class Argument:
    """A positional argument: ``<command>``, ``<shell>``."""

    name: str
    help: str
    required: bool = True
    complete: Kind = NONE


@dataclass(frozen=True)
class Env:
    """An environment variable a subcommand reads; ``name`` as it is shown (``KCM_DEBUG=1``)."""

    name: str
    help: str


@dataclass(frozen=True)
class Exit:
    """An exit status a subcommand can return; ``code`` is shown as it is ("0", "*")."""

    code: str
    help: str


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # what it does, one line, for its --help and the completion's descriptions
    usage: tuple[str, ...]  # its usage lines, as they stand in kcm --help
    run: str  # "module:function" of its handler
    options: tuple[Option, ...] = ()
    arguments: tuple[Argument, ...] = ()
    rest: bool = False  # "[-- <args> ...]" follows the arguments, and belongs to them
    env: tuple[Env, ...] = ()
    exits: tuple[Exit, ...] = ()
    seed_usage: str = ""  # the seed's usage line, kept verbatim at the head of kcm --help
    notes: tuple[str, ...] = field(default=())  # paragraphs for its --help


# -- What several subcommands share ----------------------------------------------------------

# The seed's options, whose lines in kcm --help are the seed's, byte for byte.
CONF_DIR = Option(
    "--conf-dir", "KCM configuration directory", "<dir>", default="/etc/kcm", complete=DIRS
)
INSTALL_DIR = Option(
    "--install-dir", "KCM install directory", "<dir>", required=True, complete=DIRS
)
NUM_DP = Option("--num-dp-cores", "Number of data plane cores", "<num>", default="4")
NUM_CP = Option("--num-cp-cores", "Number of control plane cores", "<num>", default="1")
POOL = Option(
    "--pool",
    "Pool name: either infra, controlplane or dataplane",
    "<pool>",
    required=True,
    complete=POOLS,
)
SEED_OPTIONS = (
    ("-h --help", "Show this screen."),
    ("--version", "Show version."),
    (CONF_DIR.spelling, CONF_DIR.text()),
    (INSTALL_DIR.spelling, INSTALL_DIR.text()),
    (NUM_DP.spelling, NUM_DP.text()),
    (NUM_CP.spelling, NUM_CP.text()),
    (POOL.spelling, POOL.text()),
)
SEED_OPTION_NAMES = frozenset(("--conf-dir", "--install-dir", "--num-dp-cores", "--num-cp-cores",
                               "--pool"))  # fmt: skip
INTERVAL = Option("--interval", "run a pass every <seconds> until SIGTERM", "<seconds>")
QUIET = Option("--quiet", "say nothing on stderr when it succeeds")

PROC_FS = Env("KCM_PROC_FS", "procfs to consult for PIDs (required; CMK_PROC_FS is an alias)")
PROC_FS_TASKS = Env(
    "KCM_PROC_FS",
    "procfs to look the recorded tasks up in (describe: for the table) [default: /proc]",
)
SYS_FS = Env("KCM_SYS_FS", "sysfs to read the CPU topology from [default: /sys]")
SYS_FS_PLACEMENT = Env(
    "KCM_SYS_FS",
    "sysfs to read sockets, NUMA nodes and devices from, for the placement options [default: /sys]",
)
LOCK_TIMEOUT = Env(
    "KCM_LOCK_TIMEOUT",
    "seconds to wait for, and at most hold, the state lock [default: 30]"
    " (CMK_LOCK_TIMEOUT is an alias)",
)
SHARED_STATE = Env(
    "KCM_ALLOW_SHARED_STATE=1", "trust a state directory that group or others may write"
)
SHARED_STATE_OWNED = Env(
    "KCM_ALLOW_SHARED_STATE=1",
    "trust a state directory that group or others may write, or that another user owns",
)
PID_NAMESPACE = Env(
    "KCM_ALLOW_PID_NAMESPACE=1",
    "use a KCM_PROC_FS of another PID namespace than the host's (its PID 2 is not kthreadd)",
)
DEBUG = Env("KCM_DEBUG=1", "show a traceback on errors")
CGROUP_FS = Env(
    "KCM_CGROUP_FS",
    "the cgroup root where each booking gets a cgroup of its own [default: /sys/fs/cgroup]:"
    " the v1 cpuset or v2 with cpuset; none there, or not writable: the PID and the"
    " command's process group hold it (README)",
)
CGROUP_PARENT = Env(
    "KCM_CGROUP_PARENT",
    "where the booking cgroups go below the hierarchy's root [default: kcm]; with systemd"
    " and cgroup v2: system.slice/kcm-bookings.service",
)
SHIELD_QUIET = Option(
    "--quiet", "only warnings on stderr: what the kernel refuses, what others set"
)

EXIT_OK = Exit("0", "success")
EXIT_USAGE = Exit("2", "usage error (the message says what to change)")
EXIT_STATE = Exit(
    "3",
    "bad or missing state directory, or one that cannot be written (full, read-only, no"
    " permission: the message names the path)",
)
EXIT_LOCK = Exit("5", "the state lock not taken, or held too long, within KCM_LOCK_TIMEOUT")
EXIT_HOST = Exit(
    "6",
    "host problem: procfs, a procfs of another PID namespace, sysfs, too few cores, cannot"
    " pin, a cgroup that refused a change, a missing Python package, an unsafe install"
    " directory",
)
EXIT_CLUSTER = Exit("7", "Kubernetes problem: no NODE_NAME, no credentials, API unreachable or"
                    " refusing")  # fmt: skip

# -- The subcommands, in the seed's order, then ours -----------------------------------------

COMMANDS: tuple[Command, ...] = (
    Command(
        "init",
        "carve the pools from the CPU topology into a new state directory",
        usage=(
            "kcm init [--conf-dir=<dir>] [--num-dp-cores=<num>] [--num-cp-cores=<num>]"
            " [--keep-existing]",
            "         [--exclusive-mode=<mode>] [--quiet]",
        ),
        seed_usage="kcm init [--conf-dir=<dir>] [--num-dp-cores=<num>] [--num-cp-cores=<num>]",
        run="kcm.cli:run_init",
        options=(
            CONF_DIR,
            NUM_DP,
            NUM_CP,
            Option("--keep-existing", "keep a state directory that is already initialised"),
            Option(
                "--exclusive-mode",
                "packed takes the dataplane cores from the top of the host, spread deals them"
                " across the sockets",
                "<mode>",
                default="packed",
                values=("packed", "spread"),
            ),
            QUIET,
        ),
        env=(SYS_FS, LOCK_TIMEOUT, SHARED_STATE_OWNED, DEBUG),
        exits=(EXIT_OK, EXIT_USAGE, EXIT_STATE, EXIT_LOCK, EXIT_HOST),
        notes=(
            "The directory must not exist or be empty (see --keep-existing). What init made"
            " goes to stderr, one line per pool with its lists.",
        ),
    ),
    Command(
        "discover",
        "advertise the node's dataplane CPU lists to Kubernetes",
        usage=("kcm discover [--conf-dir=<dir>] [--taint] [--interval=<seconds>]",),
        seed_usage="kcm discover [--conf-dir=<dir>]",
        run="kcm.cli:run_discover",
        options=(
            CONF_DIR,
            Option("--taint", "also taint the node kcm.io/dataplane=true:NoSchedule"),
            INTERVAL,
        ),
        env=(
            Env("NODE_NAME", "the node to advertise (in a pod: from spec.nodeName)"),
            Env("KUBECONFIG", "kubeconfig file(s) outside a pod [default: ~/.kube/config]"),
            LOCK_TIMEOUT,
            SHARED_STATE,
            DEBUG,
        ),
        exits=(EXIT_OK, EXIT_USAGE, EXIT_STATE, EXIT_LOCK, EXIT_HOST, EXIT_CLUSTER),
    ),
    Command(
        "describe",
        "print the state directory, as JSON (the seed's) or as a table",
        usage=("kcm describe [--conf-dir=<dir>] [-o <format> | --output=<format>]",),
        seed_usage="kcm describe [--conf-dir=<dir>]",
        run="kcm.cli:run_describe",
        options=(
            CONF_DIR,
            Option(
                "--output",
                "json (the seed's) or table",
                "<format>",
                default="json",
                short="-o",
                values=("json", "table"),
            ),
        ),
        env=(
            PROC_FS_TASKS,
            Env("KCM_SYS_FS", "sysfs to read the NUMA nodes from (for the table) [default: /sys]"),
            Env("NO_COLOR", "no colour in the table, even on a terminal"),
            LOCK_TIMEOUT,
            SHARED_STATE,
            DEBUG,
        ),
        exits=(EXIT_OK, EXIT_USAGE, EXIT_STATE, EXIT_LOCK),
    ),
    Command(
        "reconcile",
        "remove the PIDs of dead processes from the state; report tasks on the wrong CPUs",
        usage=("kcm reconcile [--conf-dir=<dir>] [--interval=<seconds>] [--quiet]",),
        seed_usage="kcm reconcile [--conf-dir=<dir>]",
        run="kcm.cli:run_reconcile",
        options=(
            CONF_DIR,
            INTERVAL,
            Option("--quiet", "no line on stderr per list it frees tasks from"),
        ),
        env=(
            PROC_FS,
            PID_NAMESPACE,
            LOCK_TIMEOUT,
            SHARED_STATE_OWNED,
            CGROUP_FS,
            CGROUP_PARENT,
            DEBUG,
        ),
        exits=(
            EXIT_OK,
            Exit(
                "1",
                "found tasks running on other CPUs than their list, processes of a booking"
                " that may run outside its list, or cgroups no list accounts for",
            ),
            EXIT_USAGE,
            EXIT_STATE,
            EXIT_LOCK,
            EXIT_HOST,
        ),
        notes=(
            "Its JSON report goes to stdout; with --interval, one log line per pass, and the"
            " loop's totals in <dir>/.reconcile.json after each pass, for kcm metrics.",
        ),
    ),
    Command(
        "isolate",
        "run a command pinned to a CPU list of a pool",
        usage=(
            "kcm isolate [--conf-dir=<dir>] --pool=<pool> [--socket-id=<n>] [--numa-node=<n>]",
            "            [--near=<device> [--near-strict]] <command> [-- <args> ...]",
        ),
        seed_usage="kcm isolate [--conf-dir=<dir>] --pool=<pool> <command> [-- <args> ...]",
        run="kcm.cli:run_isolate",
        options=(
            CONF_DIR,
            POOL,
            Option("--socket-id", "take a list whose CPUs all lie on socket <n> (CMK's)", "<n>"),
            Option("--numa-node", "take a list whose CPUs all lie on NUMA node <n>", "<n>"),
            Option(
                "--near",
                "prefer a list on the NUMA node of <device>, a PCI address (0000:3b:00.0) or a"
                " network interface (ens1f0); else take another and say so",
                "<device>",
            ),
            Option("--near-strict", "with --near: refuse (exit 4) rather than take another"),
        ),
        arguments=(
            Argument(
                "<command>",
                "run in a sub-shell (sh -c); each <arg> after '--' reaches it verbatim",
                complete=COMMAND_NAMES,
            ),
        ),
        rest=True,
        env=(
            PROC_FS,
            PID_NAMESPACE,
            LOCK_TIMEOUT,
            SHARED_STATE_OWNED,
            SYS_FS_PLACEMENT,
            CGROUP_FS,
            CGROUP_PARENT,
            DEBUG,
        ),
        exits=(
            EXIT_USAGE,
            EXIT_STATE,
            Exit(
                "4", "no free CPU list in the pool (on the socket, node or near the device asked)"
            ),
            EXIT_LOCK,
            EXIT_HOST,
            Exit(
                "*",
                "the command's status (128+N if it was killed by signal N), also when"
                " releasing its list fails (it says so on stderr), and also when it leaves"
                " processes behind, which keep the list booked until they exit",
            ),
        ),
        notes=(
            "The command gets KCM_CPUS_ASSIGNED (the list) and KCM_POOL in its environment,"
            " and with a placement option KCM_NUMA_NODE (the list's node, empty when it"
            " spans nodes);"
            " kcm waits up to 10 times KCM_LOCK_TIMEOUT to release its list afterwards."
            " --help after <command> is the command's: kcm isolate --pool=infra mytool --help"
            " runs mytool --help; give its other arguments after '--'.",
        ),
    ),
    Command(
        "install",
        "write a standalone kcm (and cmk) into a directory",
        usage=("kcm install --install-dir=<dir> [--quiet]",),
        seed_usage="kcm install --install-dir=<dir>",
        run="kcm.cli:run_install",
        options=(INSTALL_DIR, QUIET),
        env=(DEBUG,),
        exits=(
            EXIT_OK,
            EXIT_USAGE,
            Exit("6", "an install directory others could change, or that cannot be written"),
        ),
    ),
    Command(
        "cluster-init",
        "print the Kubernetes manifests that run kcm on every node",
        usage=(
            "kcm cluster-init [--namespace=<ns>] [--image=<image>] [--num-dp-cores=<num>]",
            "                 [--num-cp-cores=<num>] [--node-selector=<key=value>]",
            "                 [--reconcile-interval=<seconds>] [--example-workload]",
        ),
        run="kcm.cli:run_cluster_init",
        options=(
            Option("--namespace", "namespace to deploy into", "<ns>", default="kcm"),
            Option("--image", "kcm container image", "<image>", default="kcm:latest"),
            NUM_DP,
            NUM_CP,
            Option(
                "--node-selector",
                "run only on nodes with these labels (key=value[,key=value...])",
                "<key=value>",
            ),
            Option(
                "--reconcile-interval",
                "reconcile and discover period",
                "<seconds>",
                default="60",
            ),
            Option("--example-workload", "also print a Pod that asks for kcm.io/dataplane"),
        ),
        env=(DEBUG,),
        exits=(EXIT_OK, EXIT_USAGE, Exit("6", "a missing Python package (PyYAML)")),
    ),
    Command(
        "metrics",
        "export the state in the Prometheus text format",
        usage=("kcm metrics [--conf-dir=<dir>] [--listen=<host:port> | --textfile=<dir>]",),
        run="kcm.cli:run_metrics",
        options=(
            CONF_DIR,
            Option(
                "--listen",
                "serve /metrics and /healthz there until SIGTERM (port 0 picks a free port;"
                " the address is logged on stderr)",
                "<host:port>",
            ),
            Option(
                "--textfile",
                "write <dir>/kcm.prom atomically, for node_exporter's textfile collector",
                "<dir>",
                complete=DIRS,
            ),
        ),
        notes=(
            'Metrics (README "metrics" says what each means): per pool kcm_pool_cpus,'
            " kcm_pool_cpu_lists, kcm_pool_cpu_lists_free, kcm_pool_cpu_lists_held,"
            " kcm_pool_cpu_lists_held_by_leftovers, kcm_pool_tasks, kcm_pool_exclusive; per"
            " CPU list kcm_cpu_list_tasks, kcm_cpu_list_stale_tasks, kcm_cpu_list_state.",
            "Once a kcm reconcile --interval loop has recorded a pass (<dir>/.reconcile.json),"
            " counters since the loop started: kcm_reconcile_passes_total,"
            " kcm_reconcile_pass_failures_total, kcm_reconcile_pids_freed_total,"
            " kcm_reconcile_lists_handed_over_total, kcm_reconcile_cgroups_removed_total;"
            " and kcm_reconcile_loop_start_time_seconds, kcm_reconcile_interval_seconds,"
            " kcm_reconcile_last_pass_timestamp_seconds,"
            " kcm_reconcile_last_pass_duration_seconds, kcm_reconcile_last_pass_success.",
            "With an exclusive dataplane pool: kcm_shield_state (unshielded, shielding,"
            " shielded, unshielding), and kcm audit's judgement of the instant of the scrape:"
            " kcm_dataplane_cpu_intruding_threads and kcm_dataplane_cpu_intruding_irqs per"
            " CPU, kcm_dataplane_audit_up, kcm_dataplane_audit_duration_seconds.",
            "Always: kcm_state_up, kcm_state_read_errors_total, kcm_lock_wait_seconds"
            " (a histogram), kcm_build_info; serving adds the exporter's process_* metrics.",
        ),
        env=(
            Env(
                "KCM_PROC_FS",
                "procfs to look the recorded tasks up in, and to read the threads and IRQs of"
                " the dataplane audit from [default: /proc]",
            ),
            Env(
                "KCM_CGROUP_FS",
                "the cgroup root whose booking cgroups tell the audit who is booked"
                " [default: /sys/fs/cgroup]",
            ),
            CGROUP_PARENT,
            LOCK_TIMEOUT,
            SHARED_STATE,
            DEBUG,
        ),
        exits=(
            EXIT_OK,
            EXIT_USAGE,
            Exit("3", "bad or missing state directory, shield record or reconcile totals"),
            EXIT_LOCK,
            Exit(
                "6",
                "cannot listen on --listen's address or write --textfile's file, no"
                " prometheus_client, or the dataplane audit cannot read procfs",
            ),
        ),
    ),
    Command(
        "audit",
        "show what threads and IRQs intrude on the dataplane CPUs, and how they are fenced",
        usage=(
            "kcm audit [--conf-dir=<dir>] [--interval=<seconds>] [-o <format> | --output=<format>]",
        ),
        run="kcm.cli:run_audit",
        options=(
            CONF_DIR,
            Option(
                "--interval", "watch the dataplane CPUs for <seconds>", "<seconds>", default="1"
            ),
            Option(
                "--output",
                "table (for people) or json (for scripts)",
                "<format>",
                default="table",
                short="-o",
                values=("table", "json"),
            ),
        ),
        env=(
            Env("KCM_PROC_FS", "procfs to read the threads and IRQs from [default: /proc]"),
            Env(
                "KCM_SYS_FS",
                "sysfs to read the boot isolation and workqueue mask from [default: /sys]",
            ),
            CGROUP_FS,
            CGROUP_PARENT,
            LOCK_TIMEOUT,
            SHARED_STATE,
            DEBUG,
        ),
        exits=(
            Exit("0", "no thread and no IRQ intrudes on a dataplane CPU"),
            Exit("1", "a thread or an IRQ intrudes on a dataplane CPU"),
            EXIT_USAGE,
            Exit("3", "no exclusive dataplane pool, a bad state directory or shield record"),
            EXIT_LOCK,
            Exit("6", "an unreadable or malformed /proc, /sys or cgroup file"),
        ),
        notes=(
            "It only reads. Kernel threads bound to a CPU by design, kernel threads the kernel"
            " will not move that were not seen running there, and IRQs steered off that have"
            " not fired since are listed apart, not as intruders.",
        ),
    ),
    Command(
        "shield",
        "keep every other task, kernel thread, IRQ and workqueue off the dataplane CPUs",
        usage=("kcm shield [--conf-dir=<dir>] [--quiet]",),
        run="kcm.cli:run_shield",
        options=(CONF_DIR, SHIELD_QUIET),
        env=(
            Env("KCM_PROC_FS", "this process's own procfs [default: /proc]"),
            Env("KCM_SYS_FS", "sysfs [default: /sys]"),
            CGROUP_FS,
            CGROUP_PARENT,
            Env(
                "KCM_LOCK_TIMEOUT",
                "seconds to wait for the state lock and for .shield.lock [default: 30]",
            ),
            SHARED_STATE_OWNED,
            DEBUG,
        ),
        exits=(
            Exit("0", "fenced (what the kernel refuses to move is said on stderr)"),
            EXIT_USAGE,
            Exit("3", "no exclusive dataplane pool, a bad state directory or shield record"),
            EXIT_LOCK,
            Exit(
                "6",
                "a procfs not this process's own, or a step that failed (the record"
                " keeps it: run it again)",
            ),
            Exit("8", "the host stops the shield before it starts; nothing was changed"),
        ),
        notes=(
            "Records what it changes, with the value before, in <dir>/.shield.json before it"
            " changes anything; kcm unshield undoes exactly that. Run as root. What it changed"
            " goes to stderr, one line per kind of change.",
        ),
    ),
    Command(
        "unshield",
        "undo what kcm shield changed, from its record",
        usage=("kcm unshield [--conf-dir=<dir>] [--quiet]",),
        run="kcm.cli:run_unshield",
        options=(CONF_DIR, SHIELD_QUIET),
        env=(
            Env("KCM_PROC_FS", "this process's own procfs [default: /proc]"),
            CGROUP_FS,
            Env(
                "KCM_LOCK_TIMEOUT",
                "seconds to wait for the state lock and for .shield.lock [default: 30]",
            ),
            SHARED_STATE_OWNED,
            DEBUG,
        ),
        exits=(
            Exit("0", "undone, or no record (what others changed since is left, and said)"),
            EXIT_USAGE,
            Exit("3", "a bad state directory or shield record"),
            EXIT_LOCK,
            Exit("6", "a step that failed (the record keeps it: run it again)"),
        ),
    ),
    Command(
        "completion",
        "print a completion script for bash or zsh",
        usage=("kcm completion (bash | zsh)",),
        run="kcm.cli:run_completion",
        arguments=(Argument("<shell>", "bash or zsh", complete=words("bash", "zsh")),),
        exits=(EXIT_OK, EXIT_USAGE),
        notes=(
            "Enable it for this shell with: source <(kcm completion bash) (or zsh). For good:"
            " echo 'source <(kcm completion bash)' >> ~/.bashrc, or system-wide"
            " kcm completion bash > /etc/bash_completion.d/kcm; for zsh,"
            ' kcm completion zsh > "${fpath[1]}/_kcm" (README.md, "Shell completion").',
        ),
    ),
    Command(
        "help",
        "show kcm's help, or one subcommand's",
        usage=("kcm help [<subcommand>]",),
        run="kcm.cli:run_help",
        arguments=(Argument("<subcommand>", "the subcommand to explain", required=False),),
        exits=(EXIT_OK, EXIT_USAGE),
    ),
)

BY_NAME = {command.name: command for command in COMMANDS}


# -- Help ------------------------------------------------------------------------------------


def _rows(rows: list[tuple[str, str]], column: int = COLUMN) -> list[str]:
    """Two columns as in the seed's Options: a term, then its text from ``column`` on,
    wrapped; a term too long for its column has its text on the lines below it."""
    lines = []
    for term, text in rows:
        body = textwrap.wrap(text, WIDTH - column, break_on_hyphens=False) or [""]
        head = f"  {term}"
        if len(head) + 2 <= column:
            lines.append(f"{head.ljust(column)}{body[0]}".rstrip())
            body = body[1:]
        else:
            lines.append(head)
        lines += [f"{'':{column}}{line}" for line in body]
    return lines


# kcm --help's Environment section starts with these; others follow in the table's order.
ENV_ORDER = (
    "KCM_PROC_FS",
    "KCM_SYS_FS",
    "KCM_LOCK_TIMEOUT",
    "KCM_ALLOW_SHARED_STATE=1",
    "KCM_ALLOW_PID_NAMESPACE=1",
    "KCM_DEBUG=1",
)


def _grouped(items: list[tuple[str, str, str]], end: str = ".") -> list[tuple[str, str]]:
    """(key, subcommand, text) triples as one row per key: the texts in order of first use,
    each said of the subcommands it is about when they are at most three."""
    keys: dict[str, dict[str, list[str]]] = {}
    for key, command, text in items:
        users = keys.setdefault(key, {}).setdefault(text, [])
        if command not in users:
            users.append(command)
    rows = []
    for key, texts in keys.items():
        parts = []
        for text, users in texts.items():
            part = text.removesuffix(".")
            parts.append(f"{', '.join(users)}: {part}" if len(users) <= 3 else part)
        rows.append((key, "; ".join(parts) + end))
    return rows


def _seed_usage() -> list[str]:
    return ["  kcm (-h | --help)", "  kcm --version"] + [
        f"  {c.seed_usage}" for c in COMMANDS if c.seed_usage
    ]


def global_help() -> str:
    """``kcm --help``: the seed's usage and options, each followed by our additions."""
    lines = ["kcm.", "", "Usage:", *_seed_usage()]
    for command in COMMANDS:
        if command.usage != (command.seed_usage,):
            lines += [f"  {line}" for line in command.usage]
    lines += ["  kcm <subcommand> (-h | --help)", "", "Options:", *_rows(list(SEED_OPTIONS))]
    options = [
        (option.spelling, command.name, option.text())
        for command in COMMANDS
        for option in command.options
        if option.name not in SEED_OPTION_NAMES
    ]
    lines += _rows(_grouped(options))
    env = [(e.name, c.name, e.help) for c in COMMANDS for e in c.env]
    env_rows = sorted(_grouped(env), key=lambda row: _env_order(row[0]))
    lines += ["", "Environment:", *_rows(env_rows)]
    exits = [(e.code, c.name, e.help) for c in COMMANDS for e in c.exits]
    lines += [
        "",
        "Exit status:",
        *_rows(sorted(_grouped(exits, end=""), key=_code_order), column=7),
    ]
    lines += [
        "",
        "Run 'kcm <subcommand> --help' (or 'kcm help <subcommand>') for one subcommand's usage,",
        "options, environment and exit codes.",
    ]
    return "\n".join(lines) + "\n"


def _env_order(name: str) -> int:
    return ENV_ORDER.index(name) if name in ENV_ORDER else len(ENV_ORDER)


def _code_order(row: tuple[str, str]) -> tuple[bool, str]:
    return (not row[0].isdigit(), row[0].zfill(3))


def command_help(command: Command) -> str:
    """``kcm <subcommand> --help``: its usage, options with defaults, environment and exit
    codes, in the sections of ``kcm --help``."""
    lines = [f"kcm {command.name}: {command.summary}.", "", "Usage:"]
    lines += [f"  {line}" for line in command.usage]
    lines.append(f"  kcm {command.name} (-h | --help)")
    for note in command.notes:
        lines += ["", *textwrap.wrap(note, WIDTH, break_on_hyphens=False)]
    if command.arguments:
        lines += ["", "Arguments:", *_rows([(a.name, f"{a.help}.") for a in command.arguments])]
    rows = [(o.spelling, o.text()) for o in command.options]
    lines += ["", "Options:", *_rows([*rows, ("-h --help", "Show this help.")])]
    if command.env:
        lines += ["", "Environment:", *_rows([(e.name, f"{e.help}.") for e in command.env])]
    lines += ["", "Exit status:", *_rows([(e.code, e.help) for e in command.exits], column=7)]
    return "\n".join(lines) + "\n"


# -- Completion ------------------------------------------------------------------------------


def completion_spec() -> Spec:
    """What ``kcm completion`` completes: the subcommands, their options and arguments."""
    levels = []
    for command in COMMANDS:
        options = tuple(
            Word(tuple(n for n in (o.short, o.name) if n), o.kind, o.help) for o in command.options
        )
        arguments = tuple(
            words(*(c.name for c in COMMANDS)) if command.name == "help" else argument.complete
            for argument in command.arguments
        )
        grammar = Grammar(options, arguments, rest=DEFAULT if command.rest else None)
        levels.append((command.name, command.summary, grammar))
    top = Grammar((Word(("--version",), FLAG, "show the version"),), ())
    return Spec("kcm", ("cmk",), "kcm completion", top, tuple(levels))


# -- The parser's grammar, generated into kcm/cli.py -----------------------------------------

BEGIN = "# -- grammar: generated from kcm/commands.py by `python -m kcm.commands`; do not edit --\n"
END = "# -- end of grammar --\n"


def _literal(name: str, table: dict[str, object]) -> str:
    """``name = {...}`` as ruff formats it: an entry per line, each on one line when it fits."""
    lines = [f"{name} = {{"]
    for key, value in table.items():
        one = f"    {key!r}: {_value(value)},".replace("'", '"')
        if len(one) <= 100:
            lines.append(one)
        elif isinstance(value, dict):
            lines.append(f'    "{key}": {{')
            lines += [f"        {k!r}: {_value(v)},".replace("'", '"') for k, v in value.items()]
            lines.append("    },")
        else:
            assert isinstance(value, tuple)
            lines.append(f'    "{key}": (')
            lines += [f"        {_value(v)},".replace("'", '"') for v in value]
            lines.append("    ),")
    return "\n".join(lines) + "\n}\n"


def _value(value: object) -> str:
    if isinstance(value, tuple) and len(value) == 1:
        return f"({_value(value[0])},)"
    if isinstance(value, tuple):
        return "(" + ", ".join(_value(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def grammar() -> str:
    """The generated block of ``kcm/cli.py``: what the parser needs, and no help text."""
    value_options = {c.name: tuple(o.name for o in c.options if o.value) for c in COMMANDS}
    flags = {c.name: tuple(o.name for o in c.options if not o.value) for c in COMMANDS}
    defaults = {
        c.name: {o.name: o.default for o in c.options if o.default is not None} for c in COMMANDS
    }
    short = {c.name: {o.short: o.name for o in c.options if o.short} for c in COMMANDS}
    required = {c.name: tuple(o.name for o in c.options if o.required) for c in COMMANDS}
    arguments = {c.name: tuple((a.name, a.required) for a in c.arguments) for c in COMMANDS}
    parts = [
        BEGIN,
        "# Per subcommand: its options taking a value, its flags, their defaults, short\n"
        "# spellings, the options it needs, its positional arguments (name, required), and\n"
        "# its handler.\n",
        _literal("VALUE_OPTIONS", {k: v for k, v in value_options.items() if v}),
        _literal("FLAGS", {k: v for k, v in flags.items() if v}),
        _literal("DEFAULTS", {k: v for k, v in defaults.items() if v}),
        _literal("SHORT", {k: v for k, v in short.items() if v}),
        _literal("REQUIRED", {k: v for k, v in required.items() if v}),
        _literal("ARGUMENTS", {k: v for k, v in arguments.items() if v}),
        "# After its arguments, '--' and what follows belong to them (and so does --help).\n",
        f"REST = {_value(tuple(c.name for c in COMMANDS if c.rest))}\n".replace("'", '"'),
        _literal("RUN", {c.name: c.run for c in COMMANDS}),
        END,
    ]
    return "".join(parts)


CLI = Path(__file__).with_name("cli.py")


def with_grammar(source: str) -> str:
    """``source`` (kcm/cli.py) with its grammar block replaced by ``grammar()``."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(source):
        raise SystemExit(f"{CLI}: no grammar block (between {BEGIN.strip()!r} and {END.strip()!r})")
    return pattern.sub(lambda _: grammar(), source, count=1)


def main() -> int:
    source = CLI.read_text()
    updated = with_grammar(source)
    if updated != source:
        CLI.write_text(updated)
        print(f"rewrote the grammar block of {CLI}", file=sys.stderr)
    else:
        print(f"the grammar block of {CLI} is up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
