"""The command as a user meets it: help, version, install, usage errors."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from kcm import __version__, commands
from kcm.cli import HELP
from tests.conftest import BIN, CGROUP_PARENT, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import SEED_STATE, build_state


def test_help_and_version() -> None:
    for flag in ("-h", "--help"):
        result = run_kcm(flag)
        assert (result.code, result.out, result.err) == (0, HELP, "")
    assert run_kcm("--version").out == f"kcm {__version__}\n"


@pytest.mark.parametrize("command", commands.COMMANDS, ids=lambda c: c.name)
def test_each_subcommand_has_its_own_help(command: commands.Command) -> None:
    for argv in ([command.name, "--help"], [command.name, "-h"], ["help", command.name]):
        result = run_kcm(*argv)
        assert (result.code, result.err) == (0, ""), argv
        assert result.out == commands.command_help(command)
    text = result.out
    assert text.startswith(f"kcm {command.name}: ")
    for line in command.usage:
        assert f"  {line}\n" in text
    sections = [line for line in text.splitlines() if line.endswith(":") and line[0].isupper()]
    expected = ["Usage:", "Arguments:" if command.arguments else None, "Options:",
                "Environment:" if command.env else None, "Exit status:"]  # fmt: skip
    assert sections == [s for s in expected if s]
    for option in command.options:
        assert option.spelling in text
        if option.default is not None:
            assert f"[default: {option.default}]" in text
    for env in command.env:
        assert f"\n  {env.name}" in text
    codes = [line.split()[0] for line in text.split("Exit status:\n")[1].splitlines()
             if line.startswith("  ") and not line.startswith("   ")]  # fmt: skip
    assert codes == [e.code for e in command.exits]


def test_help_is_asked_for_anywhere_before_the_arguments(state2: str) -> None:
    isolate = commands.command_help(commands.BY_NAME["isolate"])
    assert run_kcm("isolate", "--pool=infra", "--help").out == isolate
    assert run_kcm("describe", f"--conf-dir={state2}", "-h").out == run_kcm("help", "describe").out


def test_help_after_isolates_command_is_the_commands(state2: str) -> None:
    result = run_kcm(
        "isolate", f"--conf-dir={state2}", "--pool=infra", "printf '%s|'", "--help",
        env=kcm_env(KCM_PROC_FS="/proc"),
    )  # fmt: skip
    assert (result.code, result.out, result.err) == (0, "--help|", "")
    result = run_kcm(
        "isolate", f"--conf-dir={state2}", "--pool=infra", "printf '%s|'", "--help", "--", "-h",
        env=kcm_env(KCM_PROC_FS="/proc"),
    )  # fmt: skip
    assert (result.code, result.out) == (0, "--help|-h|")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["help", "frobnicate"], "kcm help: no subcommand 'frobnicate'"),
        (["help", "isolate", "describe"], "unexpected argument 'describe'"),
        (["completion"], "kcm completion needs a <shell>"),
        (["completion", "fish"], "kcm completion: no shell 'fish'; bash or zsh"),
        (["completion", "bash", "zsh"], "unexpected argument 'zsh'"),
        (["completion", "--shell=bash"], "kcm completion has no option '--shell=bash'"),
    ],
)
def test_help_and_completion_usage_errors(argv: list[str], fragment: str) -> None:
    result = run_kcm(*argv)
    assert_one_error_line(result, fragment)
    assert (result.code, result.out) == (2, "")


def test_cmk_is_the_same_program() -> None:
    proc = subprocess.run([str(BIN / "cmk"), "--help"], capture_output=True, text=True)
    assert proc.stdout == HELP


def test_usage_error_is_one_line_exit_2() -> None:
    result = run_kcm("isolate", "--pool=infra", "sleep", "1")
    assert_one_error_line(result, "put the command's arguments after '--'")
    assert result.code == 2


def test_install_gives_a_standalone_kcm(tmp_path: Path) -> None:
    target = tmp_path / "opt" / "bin"
    result = run_kcm("install", f"--install-dir={target}")
    assert result.code == 0, result.err
    installed = target / "kcm"
    assert installed.stat().st_mode & 0o777 == 0o755
    assert sorted(os.listdir(target)) == ["cmk", "kcm"]  # no temp file left behind
    bare = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", str(installed), "--help"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert (proc.returncode, proc.stdout) == (0, HELP)
    conf = build_state(str(tmp_path / "kcm"), SEED_STATE)
    described = subprocess.run(
        [str(installed), "describe", f"--conf-dir={conf}"],
        capture_output=True,
        text=True,
        env=bare,
        cwd="/",
    )
    assert described.returncode == 0, described.stderr
    assert described.stdout == run_kcm("describe", f"--conf-dir={conf}").out
    # isolate works from it too, with the host's python3 and nothing of ours installed.
    here = build_state(str(tmp_path / "here"), {"infra": (False, {"0": ""})})
    isolated = subprocess.run(
        [str(installed), "isolate", f"--conf-dir={here}", "--pool=infra", "echo $KCM_POOL"],
        capture_output=True,
        text=True,
        env={**bare, "KCM_PROC_FS": "/proc", "KCM_CGROUP_PARENT": CGROUP_PARENT},
        cwd="/",
    )
    assert (isolated.returncode, isolated.stdout) == (0, "infra\n"), isolated.stderr


def test_standalone_kcm_prints_the_table(tmp_path: Path) -> None:
    """The table needs none of our dependencies."""
    target = tmp_path / "bin"
    assert run_kcm("install", f"--install-dir={target}").code == 0
    conf = build_state(str(tmp_path / "kcm"), SEED_STATE)
    bare = {"PATH": "/usr/bin:/bin"}
    table = subprocess.run(
        [str(target / "kcm"), "describe", "-o", "table", f"--conf-dir={conf}"],
        capture_output=True,
        text=True,
        env=bare,
        cwd="/",
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout == run_kcm("describe", "-o", "table", f"--conf-dir={conf}").out


def test_standalone_kcm_says_metrics_needs_prometheus_client(tmp_path: Path) -> None:
    bare = {"PATH": "/usr/bin:/bin"}
    check = ["python3", "-c", "import prometheus_client"]
    if subprocess.run(check, env=bare, stderr=subprocess.DEVNULL).returncode == 0:
        pytest.skip("this host's python3 has prometheus_client")
    target = tmp_path / "bin"
    assert run_kcm("install", f"--install-dir={target}").code == 0
    conf = build_state(str(tmp_path / "kcm"), SEED_STATE)
    metrics = subprocess.run(
        [str(target / "kcm"), "metrics", f"--conf-dir={conf}"],
        capture_output=True,
        text=True,
        env=bare,
        cwd="/",
    )
    assert metrics.returncode == 6
    assert metrics.stdout == ""
    assert metrics.stderr.startswith("kcm: error: kcm metrics needs the Python package")
    assert len(metrics.stderr.splitlines()) == 1


def test_install_replaces_atomically_and_reinstalls_from_itself(tmp_path: Path) -> None:
    first = tmp_path / "a"
    assert run_kcm("install", f"--install-dir={first}").code == 0
    second = tmp_path / "b"
    proc = subprocess.run(
        [str(first / "kcm"), "install", f"--install-dir={second}"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (first / "kcm").read_bytes() == (second / "kcm").read_bytes()


def test_install_into_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_kcm("install", f"--install-dir={blocker}/sub")
    assert_one_error_line(result, "cannot use", str(blocker))
    assert result.code == 6


def test_discover_without_cluster_support_is_clear(tmp_path: Path) -> None:
    result = run_kcm("discover", f"--conf-dir={tmp_path}", env=kcm_env(NODE_NAME=None))
    assert result.code != 0
    assert result.err.startswith("kcm: error: ")
    assert "Traceback" not in result.err


def test_state_files_are_not_world_writable(state2: str) -> None:
    for dirpath, dirnames, filenames in os.walk(state2):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert not mode & (stat.S_IWGRP | stat.S_IWOTH), name
