"""`kcm completion bash|zsh` in real shells: bash's completion machinery driven through its
COMP_ variables, and interactive bash and zsh on a terminal, where TAB does the completing."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm import commands
from tests.conftest import BIN, run_kcm
from tests.fixtures.shell import (
    ZSH,
    Terminal,
    bash_complete,
    comp_words,
    shell_env,
)
from tests.fixtures.state import build_state

needs_zsh = pytest.mark.skipif(ZSH is None, reason="zsh is not installed (scripts/setup.sh)")
HOSTILE = "$(touch pwned);`touch pwned2` x'y"  # a valid pool name: printable, no '/'


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return shell_env(BIN, home)


@pytest.fixture
def bash_script(tmp_path: Path) -> Path:
    result = run_kcm("completion", "bash")
    assert (result.code, result.err) == (0, "")
    path = tmp_path / "kcm.bash"
    path.write_text(result.out)
    return path


@pytest.fixture
def state(tmp_path: Path) -> str:
    return build_state(
        str(tmp_path / "kcm"),
        {"infra": (False, {"0": ""}), "dataplane": (True, {"1": ""}), "controlplane": (False, {})},
    )


def complete(script: Path, line: str, env: dict[str, str], tmp: Path) -> list[str]:
    result = bash_complete(script, line, env, tmp)
    assert result.err == ""
    return result.replies


# -- bash, through its completion variables --------------------------------------------------


def test_the_script_registers_kcm_and_cmk_and_prints_nothing(
    bash_script: Path, env: dict[str, str]
) -> None:
    proc = subprocess.run(
        ["bash", "--norc", "-c", f'source "{bash_script}" && complete -p kcm cmk'],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "complete -F _kcm kcm\ncomplete -F _kcm cmk\n"
    assert proc.stderr == ""


def test_subcommands(bash_script: Path, env: dict[str, str], tmp_path: Path) -> None:
    every = [c.name for c in commands.COMMANDS]
    assert complete(bash_script, "kcm ", env, tmp_path) == every
    assert complete(bash_script, "kcm is", env, tmp_path) == ["isolate"]
    assert complete(bash_script, "kcm c", env, tmp_path) == ["cluster-init", "completion"]
    assert complete(bash_script, "kcm --", env, tmp_path) == ["--version", "--help"]
    assert complete(bash_script, "kcm frob --", env, tmp_path) == []


def test_options_of_each_subcommand(bash_script: Path, env: dict[str, str], tmp_path: Path) -> None:
    assert complete(bash_script, "kcm isolate --", env, tmp_path) == [
        "--conf-dir=",
        "--pool=",
        "--socket-id=",
        "--numa-node=",
        "--near=",
        "--near-strict",
        "--help",
    ]
    assert complete(bash_script, "kcm reconcile --", env, tmp_path) == [
        "--conf-dir=",
        "--interval=",
        "--quiet",
        "--help",
    ]
    for command in commands.COMMANDS:
        offered = complete(bash_script, f"kcm {command.name} --", env, tmp_path)
        expected = [f"{o.name}=" if o.value else o.name for o in command.options]
        assert offered == [*expected, "--help"], command.name


def test_an_option_taking_a_value_ends_in_equals_without_a_space(
    bash_script: Path, env: dict[str, str], tmp_path: Path
) -> None:
    result = bash_complete(bash_script, "kcm isolate --po", env, tmp_path)
    assert result.replies == ["--pool="]
    assert result.compopt == ["-o nospace"]
    flag = bash_complete(bash_script, "kcm init --qu", env, tmp_path)
    assert (flag.replies, flag.compopt) == (["--quiet"], [])


def test_options_on_the_line_are_not_offered_again(
    bash_script: Path, env: dict[str, str], tmp_path: Path
) -> None:
    assert complete(bash_script, "kcm isolate --pool=infra --", env, tmp_path) == [
        "--conf-dir=",
        "--socket-id=",
        "--numa-node=",
        "--near=",
        "--near-strict",
        "--help",
    ]
    assert complete(bash_script, "kcm init --quiet --conf-dir /x --", env, tmp_path) == [
        "--num-dp-cores=",
        "--num-cp-cores=",
        "--keep-existing",
        "--exclusive-mode=",
        "--help",
    ]


def test_pool_names_from_the_state_on_the_line(
    bash_script: Path, env: dict[str, str], tmp_path: Path, state: str
) -> None:
    everything = ["controlplane", "dataplane", "infra"]
    line = f"kcm isolate --conf-dir={state} --pool="
    assert complete(bash_script, line, env, tmp_path) == everything
    assert complete(bash_script, line + "in", env, tmp_path) == ["infra"]
    assert complete(bash_script, line + "x", env, tmp_path) == []
    spaced = f"kcm isolate --conf-dir {state} --pool "
    assert complete(bash_script, spaced, env, tmp_path) == everything
    assert complete(bash_script, spaced + "d", env, tmp_path) == ["dataplane"]


def test_pool_names_from_a_conf_dir_written_with_a_tilde(
    bash_script: Path, env: dict[str, str], tmp_path: Path, home: Path
) -> None:
    build_state(str(home / "state"), {"mine": (False, {"0": ""})})
    line = "kcm isolate --conf-dir=~/state --pool="
    assert complete(bash_script, line, env, tmp_path) == ["mine"]


def test_without_equals_in_comp_wordbreaks_the_whole_word_is_replaced(
    bash_script: Path, env: dict[str, str], tmp_path: Path, state: str
) -> None:
    """Some setups take '=' out of COMP_WORDBREAKS: readline then replaces the whole word."""
    line = f"kcm isolate --conf-dir={state} --pool=in"
    words = line.split(" ")
    proc = subprocess.run(
        [
            "bash",
            "--norc",
            "-c",
            f'source "{bash_script}"; COMP_WORDBREAKS=${{COMP_WORDBREAKS//=}};'
            ' COMP_LINE="$LINE"; COMP_POINT=${#LINE}; COMP_WORDS=("$@");'
            ' COMP_CWORD=$(($# - 1)); _kcm; printf "%s\\n" "${COMPREPLY[@]}"',
            "driver",
            *words,
        ],
        capture_output=True,
        text=True,
        env={**env, "LINE": line},
    )
    assert (proc.stdout, proc.stderr) == ("--pool=infra\n", "")


def test_words_of_an_option(bash_script: Path, env: dict[str, str], tmp_path: Path) -> None:
    assert complete(bash_script, "kcm describe --output=", env, tmp_path) == ["json", "table"]
    assert complete(bash_script, "kcm describe -o t", env, tmp_path) == ["table"]
    assert complete(bash_script, "kcm init --exclusive-mode=s", env, tmp_path) == ["spread"]
    assert complete(bash_script, "kcm completion ", env, tmp_path) == ["bash", "zsh"]
    assert complete(bash_script, "kcm help re", env, tmp_path) == ["reconcile"]
    # A value nothing can guess offers nothing, not file names.
    numbers = bash_complete(bash_script, "kcm init --num-dp-cores=", env, tmp_path)
    assert (numbers.replies, numbers.compopt) == ([], [])


@pytest.mark.parametrize(
    "line",
    ["kcm init --conf-dir=", "kcm install --install-dir=", "kcm metrics --textfile="],
)
def test_directories(bash_script: Path, env: dict[str, str], tmp_path: Path, line: str) -> None:
    (tmp_path / "dirs" / "alpha").mkdir(parents=True)
    (tmp_path / "dirs" / "alpine").write_text("a file")
    result = bash_complete(bash_script, f"{line}{tmp_path}/dirs/al", env, tmp_path)
    assert result.replies == [f"{tmp_path}/dirs/alpha"]
    assert result.compopt == ["-o filenames"]


def test_isolate_command_is_a_command_name(
    bash_script: Path, env: dict[str, str], tmp_path: Path
) -> None:
    replies = complete(bash_script, "kcm isolate --pool=infra ech", env, tmp_path)
    assert "echo" in replies
    assert all(reply.startswith("ech") for reply in replies)


@pytest.mark.parametrize(
    "after",
    ["mytool ", "mytool --", "mytool --help --", "mytool -- ", "mytool -- --po", "'a b' x"],
)
def test_after_isolate_command_only_the_shells_own_completion(
    bash_script: Path, env: dict[str, str], tmp_path: Path, after: str
) -> None:
    result = bash_complete(bash_script, f"kcm isolate --pool=infra {after}", env, tmp_path)
    assert (result.replies, result.compopt) == ([], ["-o default"])


@pytest.mark.parametrize(
    "corrupt",
    ["pools-is-a-file", "conf-dir-is-a-file", "missing", "unlisted-entries", "fifos"],
)
def test_a_bad_state_gives_no_pools_and_no_error(
    bash_script: Path, env: dict[str, str], tmp_path: Path, corrupt: str
) -> None:
    conf = tmp_path / "bad"
    pools = conf / "pools"
    if corrupt == "pools-is-a-file":
        conf.mkdir()
        pools.write_text("garbage\n")
    elif corrupt == "conf-dir-is-a-file":
        conf.write_bytes(b"\x00\xff not a directory")
    elif corrupt == "unlisted-entries":
        (pools / ".hidden").mkdir(parents=True)
        (pools / ".hidden" / "exclusive").write_text("1")
        (pools / "no-exclusive-file").mkdir()
        (pools / "a-file").write_text("0")
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "exclusive").write_text("1")
        (pools / "a-link").symlink_to(tmp_path / "elsewhere")
        (pools / "exclusive-is-a-dir" / "exclusive").mkdir(parents=True)
    elif corrupt == "fifos":  # opening either would hang a reader that opened files
        (pools / "fifo-exclusive").mkdir(parents=True)
        os.mkfifo(pools / "a-fifo")
        os.mkfifo(pools / "fifo-exclusive" / "exclusive")
    start = time.monotonic()
    result = bash_complete(bash_script, f"kcm isolate --conf-dir={conf} --pool=", env, tmp_path)
    assert (result.replies, result.err) == ([], "")
    assert time.monotonic() - start < 10
    # kcm itself answers at once (the script's time limit is not what saves it).
    answer = run_kcm("__complete", "pools", "--", "isolate", f"--conf-dir={conf}", timeout=5)
    assert answer.out == answer.err == ""


def test_a_program_that_hangs_is_given_two_seconds(
    bash_script: Path, env: dict[str, str], tmp_path: Path
) -> None:
    hung = tmp_path / "hung-bin"
    hung.mkdir()
    (hung / "kcm").write_text("#!/bin/sh\nsleep 60\n")
    (hung / "kcm").chmod(0o755)
    start = time.monotonic()
    result = bash_complete(
        bash_script, "kcm isolate --pool=", {**env, "PATH": f"{hung}:{env['PATH']}"}, tmp_path
    )
    assert (result.replies, result.err) == ([], "")
    assert time.monotonic() - start < 10


def test_an_unreadable_state_gives_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, {"0": ""})})
    os.chmod(os.path.join(conf, "pools"), 0)
    try:
        argv = [str(BIN / "kcm"), "__complete", "pools", "--", "isolate", f"--conf-dir={conf}"]
        if os.geteuid() == 0:  # root reads a mode-0 directory: ask as nobody, who cannot
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env)
    finally:
        os.chmod(os.path.join(conf, "pools"), 0o755)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "")


def test_the_hidden_question_is_silent_on_every_error(tmp_path: Path) -> None:
    for argv in (
        ["__complete", "pools", "--", f"--conf-dir={tmp_path}/nowhere"],
        ["__complete", "pools", "--", "--conf-dir"],
        ["__complete", "nonsense", "--"],
        ["__complete"],
        ["__complete", "pools"],
    ):
        result = run_kcm(*argv)
        assert (result.code, result.out, result.err) == (1, "", ""), argv


def test_hostile_pool_names_are_quoted_and_never_run(
    bash_script: Path, env: dict[str, str], tmp_path: Path
) -> None:
    names = [HOSTILE, "a;b", "tab\there", "new\nline", "infra"]
    conf = tmp_path / "hostile"
    for name in names:
        try:
            build_state(str(conf), {name: (False, {"0": ""})})
        except OSError:
            pass
    replies = complete(bash_script, f"kcm isolate --conf-dir={conf} --pool=", env, tmp_path)
    # Each reply, read back by the shell, is the name as it is: quoted, never run. Names that
    # are not printable are not offered (one a line; a newline would split one in two).
    unquoted = subprocess.run(
        [
            "bash",
            "--norc",
            "-c",
            'for r in "$@"; do eval "v=$r"; printf "%s\\0" "$v"; done',
            "x",
            *replies,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert sorted(unquoted.stdout.split("\0")[:-1]) == sorted([HOSTILE, "a;b", "infra"])
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


# -- Interactive bash: readline's TAB --------------------------------------------------------


@pytest.fixture
def bash_terminal(env: dict[str, str], tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(
        ["bash", "--norc", "--noprofile", "-i"], {**env, "PS1": "$ ", "INPUTRC": "/dev/null"},
        tmp_path,
    )  # fmt: skip
    term.read(1.0)
    yield term
    term.close()


def echoed(term: Terminal, keys: str) -> str:
    """Type ``keys`` (TABs in them), then make the line an echo of itself and run it: the line
    as completion left it, read back from its output."""
    term.type(keys, 1.5)
    out = term.type("\x01echo @@\n", 10, until="\n@@")
    lines = [line for line in out.splitlines() if line.startswith("@@")]
    assert lines, out
    return lines[-1].removeprefix("@@").rstrip()


def test_comp_words_as_bash_makes_them(bash_terminal: Terminal) -> None:
    """The driver above splits lines as readline does: checked here against readline."""
    bash_terminal.run(
        "_probe() { printf '\\n@%s' \"${COMP_WORDS[@]}\"; printf '\\n#%s\\n' \"$COMP_CWORD\"; }"
        "; complete -F _probe probe",
        "$ ",
    )
    for line in ("probe isolate --pool=", "probe --pool=in", "probe a::b", "probe --x= y "):
        out = bash_terminal.type(line + "\t", 1.0, until="#")
        bash_terminal.type("\x15", 0.3)
        words = [w[1:] for w in out.splitlines() if w.startswith("@")]
        assert words == comp_words(line), (line, out)


def test_tab_in_a_real_bash(
    bash_terminal: Terminal, bash_script: Path, state: str, tmp_path: Path
) -> None:
    bash_terminal.run(f"source {bash_script}; echo loaded", "loaded")
    line = echoed(bash_terminal, f"kcm isol\t--conf-dir={state} --pool=inf\t")
    assert line == f"kcm isolate --conf-dir={state} --pool=infra"
    line = echoed(bash_terminal, "kcm isolate --po\tx")
    assert line == "kcm isolate --pool=x"


def test_a_hostile_pool_name_is_typed_quoted_in_a_real_bash(
    bash_terminal: Terminal, bash_script: Path, tmp_path: Path
) -> None:
    conf = build_state(str(tmp_path / "hostile"), {HOSTILE: (False, {"0": ""})})
    bash_terminal.run(f"source {bash_script}; echo loaded", "loaded")
    line = echoed(bash_terminal, f"kcm isolate --conf-dir={conf} --pool=\t")
    assert line == f"kcm isolate --conf-dir={conf} --pool={HOSTILE}"
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


# -- zsh -------------------------------------------------------------------------------------


@pytest.fixture
def zsh_script(tmp_path: Path) -> Path:
    result = run_kcm("completion", "zsh")
    assert (result.code, result.err) == (0, "")
    path = tmp_path / "kcm.zsh"
    path.write_text(result.out)
    return path


@needs_zsh
def test_zsh_registers_kcm_and_cmk(zsh_script: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [
            "zsh",
            "-f",
            "-c",
            f"autoload -U compinit; compinit -u -D; source {zsh_script};"
            " print -r -- $_comps[kcm] $_comps[cmk]",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert (proc.stdout, proc.stderr) == ("_kcm _kcm\n", "")


@needs_zsh
def test_zsh_without_compinit_says_what_to_do(zsh_script: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        ["zsh", "-f", "-c", f"source {zsh_script}"], capture_output=True, text=True, env=env
    )
    assert (
        proc.stderr == "kcm completion: run 'autoload -U compinit && compinit' before sourcing it\n"
    )


@pytest.fixture
def zsh_terminal(env: dict[str, str], tmp_path: Path) -> Iterator[Terminal]:
    assert ZSH is not None
    term = Terminal([ZSH, "-f", "-i"], {**env, "PS1": "$ "}, tmp_path)
    term.read(1.0)
    term.run("autoload -U compinit && compinit -u -D && echo ready", "ready")
    yield term
    term.close()


@needs_zsh
def test_tab_in_a_real_zsh(
    zsh_terminal: Terminal, zsh_script: Path, state: str, tmp_path: Path
) -> None:
    zsh_terminal.run(f"source {zsh_script}; echo loaded", "loaded")
    assert echoed(zsh_terminal, "kcm isol\t") == "kcm isolate"
    line = echoed(zsh_terminal, f"kcm isolate --conf-dir={state} --pool=inf\t")
    assert line == f"kcm isolate --conf-dir={state} --pool=infra"
    assert echoed(zsh_terminal, "kcm isolate --po\tx") == "kcm isolate --pool=x"
    assert echoed(zsh_terminal, "kcm describe -o ta\t") == "kcm describe -o table"
    (tmp_path / "only-dir").mkdir()
    (tmp_path / "only-file").write_text("")  # a file would make "only" ambiguous
    assert echoed(zsh_terminal, "kcm init --conf-dir=only\t") == "kcm init --conf-dir=only-dir"
    # After isolate's command: file names, never kcm's options.
    assert echoed(zsh_terminal, "kcm isolate --pool=infra mytool only-f\t") == (
        "kcm isolate --pool=infra mytool only-file"
    )
    assert echoed(zsh_terminal, "kcm isolate --pool=infra mytool --con\t") == (
        "kcm isolate --pool=infra mytool --con"
    )


@needs_zsh
def test_zsh_offers_every_subcommand(zsh_terminal: Terminal, zsh_script: Path) -> None:
    zsh_terminal.run(f"source {zsh_script}; echo loaded", "loaded")
    shown = zsh_terminal.type("kcm \t", 2.0)
    zsh_terminal.type("\x15", 0.3)
    for command in commands.COMMANDS:
        assert command.name in shown, (command.name, shown)


@needs_zsh
def test_a_hostile_pool_name_is_typed_quoted_in_a_real_zsh(
    zsh_terminal: Terminal, zsh_script: Path, tmp_path: Path
) -> None:
    conf = build_state(str(tmp_path / "hostile"), {HOSTILE: (False, {"0": ""})})
    zsh_terminal.run(f"source {zsh_script}; echo loaded", "loaded")
    line = echoed(zsh_terminal, f"kcm isolate --conf-dir={conf} --pool=\t")
    assert line == f"kcm isolate --conf-dir={conf} --pool={HOSTILE}"
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


@needs_zsh
def test_zsh_from_fpath(env: dict[str, str], tmp_path: Path, state: str) -> None:
    """Installed as a file _kcm in $fpath, autoloaded by compinit, as distributions do it."""
    functions = tmp_path / "zfunc"
    functions.mkdir()
    (functions / "_kcm").write_text(run_kcm("completion", "zsh").out)
    assert ZSH is not None
    term = Terminal([ZSH, "-f", "-i"], {**env, "PS1": "$ "}, tmp_path)
    try:
        term.read(1.0)
        term.run(
            f"fpath=({functions} $fpath); autoload -U compinit && compinit -u -D; echo ready",
            "ready",
        )
        line = echoed(term, f"kcm isolate --conf-dir={state} --pool=dat\t")
        assert line == f"kcm isolate --conf-dir={state} --pool=dataplane"
    finally:
        term.close()
