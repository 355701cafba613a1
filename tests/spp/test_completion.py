"""`spp-wakeup --completion` and `sppsh --completion` in real shells: options, file values, and
sppsh's VMs from the lease file, quoted so that a guest's host name cannot run in the shell."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.fixtures.shell import ZSH, Terminal, bash_complete, shell_env

from .conftest import SPP_WAKEUP, SPPSH

LATER = int(time.time()) + 3600
needs_zsh = pytest.mark.skipif(ZSH is None, reason="zsh is not installed (scripts/setup.sh)")


def lease(ip: str, host: str | None) -> dict[str, object]:
    entry: dict[str, object] = {"ip-address": ip, "mac-address": "52:54:00:00:00:01",
                                "expiry-time": LATER}  # fmt: skip
    if host is not None:
        entry["hostname"] = host
    return entry


def script(program: str, shell: str, tmp_path: Path) -> Path:
    proc = subprocess.run([program, "--completion", shell], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")
    path = tmp_path / f"{Path(program).name}.{shell}"
    path.write_text(proc.stdout)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return shell_env(BIN, home)


@pytest.fixture
def lease_file(tmp_path: Path) -> str:
    path = tmp_path / "virbr0.status"
    entries = [
        lease("192.168.122.57", "spp1"),
        lease("192.168.122.157", "vm-a"),
        lease("fe80::5054:ff:fe00:1", "spp12"),
        lease("192.168.122.9", None),
    ]
    path.write_text(json.dumps(entries))
    return str(path)


def replies(
    script_path: Path, program: str, line: str, env: dict[str, str], tmp: Path
) -> list[str]:
    result = bash_complete(script_path, line, env, tmp, program=program)
    assert result.err == ""
    return result.replies


def test_spp_wakeup_completes_its_options_and_config_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    bash = script(SPP_WAKEUP, "bash", tmp_path)
    offered = replies(bash, "spp-wakeup", "spp-wakeup --", env, tmp_path)
    for option in ("--template", "--nof-sec", "--config", "--dry-run", "--down", "--completion",
                   "--help"):  # fmt: skip
        assert option in [o.removesuffix("=") for o in offered]
    assert replies(bash, "spp-wakeup", "spp-wakeup --dry", env, tmp_path) == ["--dry-run"]
    (tmp_path / "conf.yml").write_text("")
    result = bash_complete(bash, f"spp-wakeup --config {tmp_path}/conf", env, tmp_path,
                           program="spp-wakeup")  # fmt: skip
    assert (result.replies, result.compopt) == ([f"{tmp_path}/conf.yml"], ["-o filenames"])
    assert replies(bash, "spp-wakeup", "spp-wakeup -ns ", env, tmp_path) == []
    assert replies(bash, "spp-wakeup", "spp-wakeup --completion ", env, tmp_path) == ["bash", "zsh"]


def test_sppsh_completes_vm_ids_host_names_and_addresses(
    env: dict[str, str], tmp_path: Path, lease_file: str
) -> None:
    bash = script(SPPSH, "bash", tmp_path)
    line = f"sppsh --lease-file={lease_file} "
    assert replies(bash, "sppsh", line, env, tmp_path) == [
        "1", "spp1", "192.168.122.57", "12", "spp12", "fe80::5054:ff:fe00:1", "vm-a",
        "192.168.122.157", "192.168.122.9",
    ]  # fmt: skip
    assert replies(bash, "sppsh", line + "sp", env, tmp_path) == ["spp1", "spp12"]
    assert replies(bash, "sppsh", line + "vm", env, tmp_path) == ["vm-a"]
    # ':' breaks words for readline: it replaces only what follows the last one.
    assert replies(bash, "sppsh", line + "fe80::50", env, tmp_path) == ["5054:ff:fe00:1"]
    spaced = f"sppsh -a root --lease-file {lease_file} 19"
    assert replies(bash, "sppsh", spaced, env, tmp_path) == [
        "192.168.122.57",
        "192.168.122.157",
        "192.168.122.9",
    ]
    assert "root" in replies(bash, "sppsh", "sppsh -a ro", env, tmp_path)


@pytest.mark.parametrize("bad", ["not json", "a-fifo", "a-directory", "missing", "[1, 2]"])
def test_sppsh_a_bad_lease_file_gives_nothing_and_no_error(
    env: dict[str, str], tmp_path: Path, bad: str
) -> None:
    bash = script(SPPSH, "bash", tmp_path)
    path = tmp_path / "leases"
    if bad == "a-fifo":
        os.mkfifo(path)
    elif bad == "a-directory":
        path.mkdir()
    elif bad != "missing":
        path.write_text(bad)
    start = time.monotonic()
    assert replies(bash, "sppsh", f"sppsh --lease-file={path} ", env, tmp_path) == []
    assert time.monotonic() - start < 10
    answer = subprocess.run([SPPSH, "__complete", "targets", "--", f"--lease-file={path}"],
                            capture_output=True, text=True, timeout=5)  # fmt: skip
    assert (answer.stdout, answer.stderr) == ("", "")


def hostile_leases(tmp_path: Path) -> str:
    """A lease file in which guests chose host names that are shell code."""
    marker = tmp_path / "pwned"
    names = [f"$(touch {marker})", f"`touch {marker}`", "a;touch pwned", "nl\ntouch pwned",
             f"x'$(touch {marker})'"]  # fmt: skip
    entries = [lease(f"192.168.122.{10 + i}", name) for i, name in enumerate(names)]
    entries.append(lease("192.168.122.2", "spp3"))
    path = tmp_path / "hostile.status"
    path.write_text(json.dumps(entries))
    return str(path)


def test_sppsh_hostile_host_names_never_run_and_arrive_quoted(
    env: dict[str, str], tmp_path: Path
) -> None:
    bash = script(SPPSH, "bash", tmp_path)
    path = hostile_leases(tmp_path)
    got = replies(bash, "sppsh", f"sppsh --lease-file={path} ", env, tmp_path)
    read_back = subprocess.run(
        ["bash", "--norc", "-c", 'for r in "$@"; do eval "v=$r"; printf "%s\\0" "$v"; done', "x",
         *got],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    values = read_back.stdout.split("\0")[:-1]
    # sppsh's lease reader refuses each lease whose host name is not plain: only the one good
    # lease is offered, and what is offered reads back as itself.
    assert values == got == ["3", "spp3", "192.168.122.2"]
    assert not (tmp_path / "pwned").exists()


@pytest.fixture
def bash_terminal(env: dict[str, str], tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(["bash", "--norc", "--noprofile", "-i"],
                    {**env, "PS1": "$ ", "INPUTRC": "/dev/null"}, tmp_path)  # fmt: skip
    term.read(1.0)
    yield term
    term.close()


def echoed(term: Terminal, keys: str) -> str:
    term.type(keys, 1.5)
    out = term.type("\x01echo @@\n", 10, until="\n@@")
    lines = [line for line in out.splitlines() if line.startswith("@@")]
    assert lines, out
    return lines[-1].removeprefix("@@").rstrip()


def test_sppsh_tab_in_a_real_bash(
    bash_terminal: Terminal, env: dict[str, str], tmp_path: Path, lease_file: str
) -> None:
    bash = script(SPPSH, "bash", tmp_path)
    bash_terminal.run(f"source {bash}; echo loaded", "loaded")
    assert echoed(bash_terminal, f"sppsh --lease-file={lease_file} vm\t") == (
        f"sppsh --lease-file={lease_file} vm-a"
    )
    path = hostile_leases(tmp_path)
    shown = bash_terminal.type(f"sppsh --lease-file={path} \t\t", 3.0)
    bash_terminal.type("\x15", 0.5)
    assert "spp3" in shown
    assert "touch" not in shown
    assert echoed(bash_terminal, f"sppsh --lease-file={path} spp\t") == (
        f"sppsh --lease-file={path} spp3"
    )
    assert not (tmp_path / "pwned").exists()


@needs_zsh
def test_sppsh_and_spp_wakeup_tab_in_a_real_zsh(
    env: dict[str, str], tmp_path: Path, lease_file: str
) -> None:
    assert ZSH is not None
    sppsh_zsh = script(SPPSH, "zsh", tmp_path)
    wakeup_zsh = script(SPP_WAKEUP, "zsh", tmp_path)
    term = Terminal([ZSH, "-f", "-i"], {**env, "PS1": "$ "}, tmp_path)
    try:
        term.read(1.0)
        term.run(f"autoload -U compinit && compinit -u -D; source {sppsh_zsh};"
                 f" source {wakeup_zsh}; echo ready", "ready")  # fmt: skip
        assert echoed(term, f"sppsh --lease-file={lease_file} vm\t") == (
            f"sppsh --lease-file={lease_file} vm-a"
        )
        assert echoed(term, "spp-wakeup --dry-r\t") == "spp-wakeup --dry-run"
        path = hostile_leases(tmp_path)
        shown = term.type(f"sppsh --lease-file={path} \t", 3.0)
        term.type("\x15", 0.5)
        assert "spp3" in shown
        assert "touch" not in shown
        assert not (tmp_path / "pwned").exists()
    finally:
        term.close()


def test_a_shell_it_does_not_know_is_a_usage_error() -> None:
    for program in (SPP_WAKEUP, SPPSH):
        proc = subprocess.run([program, "--completion", "fish"], capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and "invalid choice: 'fish'" in lines[0], proc.stderr
