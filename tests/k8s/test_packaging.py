"""The systemd unit and the Containerfile: what an operator installs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib/systemd/kcm-reconcile.service"
SYSTEM_UNITS = ("/usr/lib/systemd/system", "/lib/systemd/system")


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values (a key may repeat) of a unit file, sections ignored."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_runs_the_reconcile_loop_on_the_host_proc() -> None:
    settings = unit_settings(UNIT.read_text())
    assert settings["ExecStart"] == [
        "/usr/local/bin/kcm reconcile --conf-dir=/etc/kcm --interval=60"
    ]
    assert "KCM_PROC_FS=/proc" in settings["Environment"]
    assert settings["Restart"] == ["on-failure"]
    # The state, and the cgroupfs, where reconcile removes empty booking cgroups.
    assert settings["ReadWritePaths"] == ["/etc/kcm /sys/fs/cgroup"]
    assert "ProtectControlGroups" not in settings
    assert settings["ProtectSystem"] == ["strict"]
    assert "ProtectProc" not in settings  # it must see every process
    assert settings["WantedBy"] == ["multi-user.target"]


@pytest.fixture
def systemd_root(tmp_path: Path) -> Path:
    """A file system root holding the unit, its ExecStart program and systemd's own units."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    system = next((d for d in SYSTEM_UNITS if os.path.isdir(d)), None)
    if system is None:
        pytest.skip("no systemd unit directory on this machine")
    root = tmp_path / "root"
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system")
    program = root / "usr/local/bin/kcm"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verify_accepts_the_unit(systemd_root: Path) -> None:
    result = verify(systemd_root)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_broken_unit(systemd_root: Path) -> None:
    """The check above has teeth: a typo in a key, or a missing program, is reported."""
    unit = systemd_root / "etc/systemd/system" / UNIT.name
    unit.write_text(unit.read_text().replace("Restart=", "Restrat="))
    assert "Restrat" in verify(systemd_root).stderr  # warned about, so the test above fails
    (systemd_root / "usr/local/bin/kcm").unlink()
    result = verify(systemd_root)
    assert result.returncode != 0
    assert "/usr/local/bin/kcm" in result.stderr


def test_containerfile_is_plain_and_copies_what_pip_install_needs() -> None:
    text = (ROOT / "Containerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert "RUN pip install --no-cache-dir . && rm -rf /src" in instructions
    assert 'ENTRYPOINT ["kcm"]' in instructions
    for line in instructions:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
