"""The table of subcommands: the parser's grammar, the help texts and the completion all come
from it, and an entry is all a new subcommand needs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from kcm import cli, commands
from kcm.commands import COMMANDS, Command, Exit, Option

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "000_c85d75ef47445bfa.txt"


def test_the_grammar_block_of_cli_is_generated_from_the_table() -> None:
    source = commands.CLI.read_text()
    assert commands.with_grammar(source) == source, (
        "kcm/cli.py's grammar block is stale: run .venv/bin/python -m kcm.commands"
    )


def test_the_parser_knows_exactly_the_tables_subcommands_and_options() -> None:
    assert list(cli.RUN) == [c.name for c in COMMANDS]
    for command in COMMANDS:
        taking = {o.name for o in command.options if o.value}
        assert set(cli.VALUE_OPTIONS.get(command.name, ())) == taking
        assert set(cli.FLAGS.get(command.name, ())) == {o.name for o in command.options} - taking


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_usage_lines_name_exactly_the_options_and_arguments(command: Command) -> None:
    usage = " ".join(command.usage)
    assert usage.startswith(f"kcm {command.name}")
    named = set(re.findall(r"(?<![\w<])--?[a-z][a-z-]*", usage)) - {"--"}
    spellings = {o.name for o in command.options} | {o.short for o in command.options if o.short}
    assert named == spellings
    arguments = set(
        re.findall(r"<[a-z]+>", re.sub(r"--?[a-z-]+=<[a-z:=-]+>|-o <format>", "", usage))
    )
    # An argument of a few words may be spelled as them: "(bash | zsh)".
    for argument in command.arguments:
        choices = argument.complete.token.removeprefix("w:").split(",")
        if f"({' | '.join(choices)})" in usage:
            arguments.add(argument.name)
    assert arguments - {"<args>"} == {a.name for a in command.arguments}
    for option in command.options:
        if option.required:
            assert f"[{option.name}" not in usage


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_handler_exists(command: Command) -> None:
    module, _, function = command.run.partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))


def test_kcm_help_begins_with_the_seeds_usage_and_options_in_order() -> None:
    if not SEED.exists():
        pytest.skip(f"{SEED} is absent")
    block = SEED.read_text().split("```\n", 2)[1].split("```")[0]
    seed_usage, seed_options = block.split("\nOptions:\n")
    help_text = commands.global_help()
    assert help_text.startswith(seed_usage.rstrip("\n") + "\n")
    options = help_text.split("\nOptions:\n", 1)[1]
    assert options.startswith(seed_options)


def test_kcm_help_names_every_option_environment_variable_and_exit_code() -> None:
    text = commands.global_help()
    for command in COMMANDS:
        for option in command.options:
            assert f"\n  {option.spelling}" in text, option.name
        for env in command.env:
            assert f"\n  {env.name}" in text, env.name
        for code in command.exits:
            assert f"\n  {code.code}    " in text, code.code
        assert f"  kcm {command.name}" in text


def test_a_line_about_one_or_two_subcommands_names_them() -> None:
    text = commands.global_help()
    assert "  --taint               discover: also taint" in text
    assert "  4    isolate: no free CPU list in the pool" in text
    assert "  2    usage error" in text  # every subcommand's: said of none


def test_an_entry_is_all_a_new_subcommand_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    drain = Command(
        "drain",
        "move the workloads off a node",
        usage=("kcm drain [--conf-dir=<dir>] [--dry-run]",),
        run="kcm.drain:main",
        options=(commands.CONF_DIR, Option("--dry-run", "print the plan, change nothing")),
        env=(commands.DEBUG,),
        exits=(commands.EXIT_OK, Exit("9", "the fence could not be applied")),
    )
    monkeypatch.setattr(commands, "COMMANDS", (*COMMANDS, drain))
    grammar = commands.grammar()
    assert '"drain": ("--conf-dir",),' in grammar
    assert '"drain": ("--dry-run",),' in grammar
    assert '"drain": {"--conf-dir": "/etc/kcm"},' in grammar
    assert '"drain": "kcm.drain:main",' in grammar
    text = commands.global_help()
    assert "  kcm drain [--conf-dir=<dir>] [--dry-run]\n" in text
    assert "  --dry-run             drain: print the plan, change nothing.\n" in text
    assert "  9    drain: the fence could not be applied\n" in text
    own = commands.command_help(drain)
    assert own.startswith("kcm drain: move the workloads off a node.\n\nUsage:\n")
    spec = commands.completion_spec()
    assert spec.levels[-1][0] == "drain"
    assert [w.names for w in spec.levels[-1][2].options] == [("--conf-dir",), ("--dry-run",)]


def test_help_lines_stay_within_the_width() -> None:
    texts = [commands.global_help(), *(commands.command_help(c) for c in COMMANDS)]
    for text in texts:
        for line in text.splitlines():
            assert len(line) <= commands.WIDTH, line
            assert line == line.rstrip()


def test_seed_options_keep_their_text_whatever_a_subcommand_says() -> None:
    """A subcommand may explain --conf-dir its own way; kcm --help keeps the seed's line."""
    variant = dataclasses.replace(commands.CONF_DIR, help="the state to fence")
    command = dataclasses.replace(COMMANDS[0], name="other", options=(variant,))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(commands, "COMMANDS", (*COMMANDS, command))
        text = commands.global_help()
    assert "  --conf-dir=<dir>      KCM configuration directory [default: /etc/kcm].\n" in text
    assert "the state to fence" not in text
