"""The small parsers of procfs and state files, and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcm import cli, state
from kcm.errors import ParseError, UsageError
from kcm.host import procfs

# The seeds live in ../shared beside the checkout, which a plain clone lacks: the checks that
# compare with them are skipped then, and nothing else depends on them.
SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"
needs_seeds = pytest.mark.skipif(
    not SEEDS.is_dir(),
    reason=f"seed comparison: the seeds are absent ({SEEDS} does not exist: no ../shared"
    " beside this checkout)",
)
STAT = "4242 (kcm isolate) S 1 4242 4242 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0"


def test_parse_stat() -> None:
    s = procfs.parse_stat(STAT)
    assert (s.pid, s.state, s.start_time) == (4242, "S", 987654)


def test_parse_stat_name_with_parens_and_spaces() -> None:
    s = procfs.parse_stat(STAT.replace("(kcm isolate)", "(a) b (c) d)"))
    assert (s.pid, s.state, s.start_time) == (4242, "S", 987654)


@pytest.mark.parametrize("bad", ["", "garbage", "12 (x) S 1 2"])
def test_parse_stat_rejects(bad: str) -> None:
    with pytest.raises(ParseError):
        procfs.parse_stat(bad)


def test_cpus_allowed_list() -> None:
    text = "Name:\tsleep\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n"
    assert procfs.parse_cpus_allowed_list(text) == "0-1"


@pytest.mark.parametrize(
    ("text", "pids"),
    [("", []), ("\n", []), ("1000", [1000]), ("1000,1001\n", [1000, 1001]), (" 1 , 2 ", [1, 2])],
)
def test_parse_tasks(text: str, pids: list[int]) -> None:
    assert state.parse_tasks(text) == pids


@pytest.mark.parametrize("bad", ["12,abc", "1,", ",", "0", "-1", "1;2", "1 2", "0x10"])
def test_parse_tasks_rejects(bad: str) -> None:
    with pytest.raises(ParseError):
        state.parse_tasks(bad)


@pytest.mark.parametrize(("text", "value"), [("0", False), ("1", True), ("1\n", True)])
def test_parse_exclusive(text: str, value: bool) -> None:
    assert state.parse_exclusive(text) is value


@pytest.mark.parametrize("bad", ["", "2", "true", "yes"])
def test_parse_exclusive_rejects(bad: str) -> None:
    with pytest.raises(ParseError):
        state.parse_exclusive(bad)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "/etc", ".hidden", "a\0b", "a\nb"])
def test_pool_names_are_names(bad: str) -> None:
    with pytest.raises(UsageError):
        state.validate_pool_name(bad)


def test_cli_isolate_args_verbatim() -> None:
    args = cli.parse(["isolate", "--pool=infra", "printf", "--", "%s|", "a;b", "--pool=x", "--"])
    assert args.command == "printf"
    assert args.get("--pool") == "infra"
    assert args.args == ["%s|", "a;b", "--pool=x", "--"]
    assert args.get("--conf-dir") == "/etc/kcm"


def test_cli_help_before_the_arguments_is_the_subcommands() -> None:
    for argv in (["isolate", "--help"], ["isolate", "--pool=infra", "-h"], ["describe", "-h"]):
        args = cli.parse(argv)
        assert (args.subcommand, args.words) == ("help", [argv[0]])


def test_cli_help_after_isolates_command_is_the_commands() -> None:
    args = cli.parse(["isolate", "--pool=infra", "mytool", "--help"])
    assert (args.subcommand, args.command, args.args) == ("isolate", "mytool", ["--help"])
    args = cli.parse(["isolate", "--pool=infra", "mytool", "-h", "--", "-v", "--help"])
    assert args.args == ["-h", "-v", "--help"]


def test_cli_positional_arguments() -> None:
    assert cli.parse(["completion", "zsh"]).words == ["zsh"]
    assert cli.parse(["help"]).words == []
    assert cli.parse(["help", "isolate"]).words == ["isolate"]


def test_cli_defaults_are_per_subcommand() -> None:
    assert cli.parse(["cluster-init"]).get("--num-dp-cores") == "4"
    assert cli.parse(["describe"]).get("--output") == "json"
    assert cli.parse(["metrics"]).get("--output") == ""


def test_cli_separate_value() -> None:
    args = cli.parse(["init", "--conf-dir", "/x", "--num-dp-cores=2"])
    assert args.get("--conf-dir") == "/x"
    assert args.get("--num-dp-cores") == "2"
    assert args.get("--num-cp-cores") == "1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a subcommand is required"),
        (["frobnicate"], "unknown subcommand"),
        (["isolate", "true"], "needs --pool"),
        (["isolate", "--pool=infra"], "needs a <command>"),
        (["isolate", "--pool=infra", "sleep", "1"], "after '--'"),
        (["describe", "--pool=infra"], "has no option"),
        (["init", "--conf-dir"], "needs a value"),
        (["install"], "needs --install-dir"),
        (["describe", "--conf-dir=a", "--conf-dir=b"], "given twice"),
        (["completion"], "needs a <shell>"),
        (["completion", "bash", "zsh"], "unexpected argument 'zsh'"),
        (["describe", "--", "x"], "'--' only belongs after kcm isolate's <command>"),
    ],
)
def test_cli_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        cli.parse(argv)


@needs_seeds
def test_help_keeps_every_seed_usage_line() -> None:
    seed = (SEEDS / "000_c85d75ef47445bfa.txt").read_text()
    block = seed.split("```\n", 2)[1].split("```")[0]
    for line in block.splitlines():
        assert line in cli.HELP.splitlines(), line
