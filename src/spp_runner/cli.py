"""spp-wakeup: parse the command line, call one function of the runner, map errors to exits."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import NoReturn

from kcm.errors import KcmError
from spp_runner import config, images, launch, plan, report
from spp_runner.errors import SppError, UsageError
from spp_runner.host import read_host
from spp_runner.progress import Progress
from spp_runner.tmux import Tmux

PROG = "spp-wakeup"
_SESSION_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} -h)")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Run SPP and VMs: one tmux session with a window per process.",
        allow_abbrev=False,
    )
    p.add_argument("-t", "--template", action="store_true", help="Boot template VM")
    p.add_argument(
        "-ns",
        "--nof-sec",
        type=_count,
        default=2,
        metavar="NOF_SEC",
        help="Number of SPP secondaries (default 2)",
    )
    p.add_argument(
        "-nr",
        "--nof-ring",
        type=_count,
        default=None,
        metavar="NOF_RING",
        help="Number of VMs running ring (default 0; needs IVSHMEM, gone since DPDK 16.11)",
    )
    p.add_argument(
        "-nv",
        "--nof-vhost",
        type=_count,
        default=None,
        metavar="NOF_VHOST",
        help="Number of VMs running vhost (default 1)",
    )
    p.add_argument(
        "-vn",
        "--vhost-num",
        type=_count,
        default=1,
        metavar="VHOST_NUM",
        help="Number of vhost interfaces per vhost VM (default 1)",
    )
    p.add_argument(
        "-nw",
        "--nof-working",
        type=_count,
        default=1,
        metavar="NOF_WORKING",
        help="Number of working windows (default 1)",
    )
    p.add_argument(
        "--config",
        default=config.DEFAULT_CONFIG,
        metavar="PATH",
        help="conf.yml to read (default ./conf.yml)",
    )
    p.add_argument(
        "--session", default="spp", metavar="NAME", help="tmux session name (default spp)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="print every window with its command and cores; start nothing",
    )
    mode.add_argument(
        "--status",
        action="store_true",
        help="show each window's process, liveness and allowed CPUs",
    )
    mode.add_argument(
        "--down",
        action="store_true",
        help="stop the session's processes, kill it, remove sockets and "
        "DPDK runtime and hugepage files",
    )
    p.add_argument(
        "--no-attach", action="store_true", help="leave the session detached after starting it"
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress lines on stderr while each step waits (errors still show)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=launch.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long each step may take to get ready (default {launch.DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--completion",
        choices=("bash", "zsh"),
        metavar="SHELL",
        help="print the completion script for SHELL (bash or zsh) and exit:"
        " source <(spp-wakeup --completion bash)",
    )
    p.add_argument(
        "--grace",
        type=_seconds,
        default=launch.DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"--down: time between SIGINT and SIGKILL (default {launch.DEFAULT_GRACE:g})",
    )
    return p


def options_from(args: argparse.Namespace) -> plan.Options:
    if not _SESSION_RE.match(args.session):
        raise UsageError(
            f"--session {args.session!r}: use letters, digits, '_' and '-' (tmux reserves "
            "':' and '.')"
        )
    if args.template and (args.nof_ring or args.nof_vhost):
        raise UsageError(
            "-t boots only the template VM; drop -nr/-nv (instances are backed "
            "by the template and must not run while it changes)"
        )
    nof_vhost = 1 if args.nof_vhost is None else args.nof_vhost
    if nof_vhost and not args.template and args.vhost_num < 1:
        raise UsageError("-vn 0: vhost VMs need at least one vhost interface; use -vn 1 or -nv 0")
    return plan.Options(
        template=args.template,
        nof_sec=args.nof_sec,
        nof_ring=args.nof_ring or 0,
        nof_vhost=nof_vhost,
        vhost_num=args.vhost_num,
        nof_working=args.nof_working,
        session=args.session,
    )


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _say(message: str) -> None:
    print(message, flush=True)


def run(argv: list[str] | None = None) -> int:
    """spp-wakeup without the error mapping (tests call ``main``)."""
    args = parser().parse_args(argv)
    if args.completion:
        from kcm.completion import script
        from spp_runner.completion import wakeup_spec

        sys.stdout.write(script(args.completion, wakeup_spec()))
        return 0
    tmux = Tmux()
    if args.status:
        if not _SESSION_RE.match(args.session):
            raise UsageError(f"--session {args.session!r} is not a session name")
        state = launch.status(tmux, args.session)
        print(report.render_status(args.session, state))
        return 0 if state.all_alive else 1
    if args.down:
        if not _SESSION_RE.match(args.session):
            raise UsageError(f"--session {args.session!r} is not a session name")
        launch.down(tmux, args.session, grace=args.grace, log=_say)
        return 0

    options = options_from(args)
    conf = config.read(args.config)
    devices = [sec.near for sec in conf.secondaries[: options.nof_sec] if sec.near]
    host = read_host(conf.kcm.conf_dir if conf.kcm else None, devices=devices)
    the_plan = plan.build(conf, options, host)
    for warning in the_plan.warnings:
        _warn(warning)
    for path in images.derived_present(the_plan):
        _warn(f"{path} is backed by the template; changing the template corrupts it")

    if args.dry_run:
        print(report.render_plan(the_plan))
        for problem in launch.preflight(the_plan):
            _warn(f"a real launch would stop here: {problem}")
        return 0

    progress = Progress(None) if args.quiet else Progress.on(sys.stderr)
    launch.launch(the_plan, tmux, timeout=args.timeout, log=_say, progress=progress)
    attach = tmux.attach_argv(the_plan.session)
    if args.no_attach or not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(f"session '{the_plan.session}' is up; attach with: {' '.join(attach)}")
        return 0
    sys.stdout.flush()
    os.execvp(attach[0], attach)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except SppError as e:
        for line in e.lines:
            prefix = "" if line[:1].isspace() else f"{PROG}: error: "
            print(f"{prefix}{line}", file=sys.stderr)
        return e.exit_code
    except KcmError as e:
        print(f"{PROG}: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
