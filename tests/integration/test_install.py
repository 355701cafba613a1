"""kcm install as an attacker with a local account meets it: the directories on the way to the
program root runs, their modes and owners, and what install writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import kcm
from kcm.cli import HELP
from tests.conftest import CGROUP_PARENT, KCM, Result, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import SEED_STATE, build_state

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
NOBODY = 65534


def install(target: Path | str, *flags: str, umask: int = 0o022) -> Result:
    proc = subprocess.run(
        [KCM, "install", f"--install-dir={target}", *flags],
        env=kcm_env(),
        capture_output=True,
        text=True,
        umask=umask,
        timeout=60,
    )
    return Result(proc)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as user nobody, the local account of an attacker."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*setpriv, *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is 0700) and only root can write."""
    place = Path(tempfile.mkdtemp(prefix="kcm-install-"))
    place.chmod(0o755)
    try:
        yield place
    finally:
        shutil.rmtree(place)


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root``: its mode and owner."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode & 0o7777, st.st_uid)
    return out


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o077])
def test_missing_directories_are_0755_and_the_program_0755_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    result = install(tmp_path / "new" / "opt" / "bin", umask=umask)
    assert result.code == 0, result.err
    me = os.geteuid()
    assert listing(tmp_path) == {
        "new": (0o755, me),
        "new/opt": (0o755, me),
        "new/opt/bin": (0o755, me),
        "new/opt/bin/kcm": (0o755, me),
        "new/opt/bin/cmk": (0o755, me),
    }


@ROOT_ONLY
def test_under_umask_000_a_local_user_cannot_replace_the_program(public: Path) -> None:
    # Before the fix, install made new/opt/bin 0777 under umask 000: nobody could swap kcm.
    target = public / "new" / "opt" / "bin"
    result = install(target, umask=0o000)
    assert result.code == 0, result.err
    program = (target / "kcm").read_bytes()
    attack = (
        'printf "#!/bin/sh\\necho owned\\n" > "$1/$2.new" && mv -f "$1/$2.new" "$1/$2"'
        ' || { mv "$1" "$1.old" && mkdir "$1" && printf evil > "$1/$2"; }'
    )
    for name in ("kcm", "cmk"):
        attacked = as_nobody("sh", "-c", attack, "sh", str(target), name)
        assert attacked.returncode != 0
        assert "Permission denied" in attacked.stderr
        assert (target / name).read_bytes() == program
    assert sorted(os.listdir(public / "new" / "opt")) == ["bin"]


def test_an_existing_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    target.mkdir()
    target.chmod(0o777)
    result = install(target)
    assert result.code == 6
    assert result.err == (
        f"kcm: error: install directory {target} is group- and world-writable (mode 0777):"
        " whoever can write it can replace the program root runs; run chmod go-w"
        f" {target}, or choose another --install-dir\n"
    )
    assert os.listdir(target) == []


@pytest.mark.parametrize(("mode", "who"), [(0o775, "group"), (0o757, "world")])
def test_group_or_world_write_alone_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    target = tmp_path / "bin"
    target.mkdir()
    target.chmod(mode)
    result = install(target)
    assert_one_error_line(
        result, f"install directory {target} is {who}-writable", f"chmod go-w {target}"
    )
    assert result.code == 6
    assert os.listdir(target) == []


@ROOT_ONLY
def test_a_directory_a_local_user_made_0777_is_refused(public: Path) -> None:
    # The attack: nobody creates the install directory before root installs there.
    shared = public / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may create entries, only owners remove them
    target = shared / "bin"
    made = as_nobody("mkdir", "-m", "0777", str(target))
    assert made.returncode == 0, made.stderr
    result = install(target)
    assert_one_error_line(result, f"install directory {target} is group- and world-writable")
    assert result.code == 6
    assert os.listdir(target) == []


@ROOT_ONLY
def test_a_directory_a_local_user_owns_is_refused(public: Path) -> None:
    target = public / "bin"
    target.mkdir()
    os.chown(target, NOBODY, NOBODY)
    result = install(target)
    assert result.code == 6
    assert result.err == (
        f"kcm: error: install directory {target} is owned by uid {NOBODY}, not by root: its"
        " owner can replace the program root runs; run chown 0"
        f" {target}, or choose another --install-dir\n"
    )
    assert os.listdir(target) == []


@ROOT_ONLY
def test_a_parent_others_can_write_or_own_is_refused_before_anything_is_created(
    public: Path,
) -> None:
    # bin would be 0755, but whoever may write its parent may rename bin away and put theirs.
    writable = public / "writable"
    writable.mkdir()
    writable.chmod(0o777)
    result = install(writable / "opt" / "bin")
    assert_one_error_line(result, f"install directory {writable} is group- and world-writable")
    assert os.listdir(writable) == []
    owned = public / "owned"
    owned.mkdir()
    os.chown(owned, NOBODY, NOBODY)
    result = install(owned / "bin")
    assert_one_error_line(result, f"install directory {owned} is owned by uid {NOBODY}")
    assert os.listdir(owned) == []


def test_a_sticky_root_owned_directory_like_tmp_is_accepted(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    if sticky.stat().st_uid != 0:
        pytest.skip("the sticky exception is for root's directories; this run is not root's")
    for target in (sticky, sticky / "bin"):
        result = install(target)
        assert result.code == 0, result.err
        assert (target / "kcm").stat().st_mode & 0o7777 == 0o755
        assert (target / "cmk").stat().st_mode & 0o7777 == 0o755


@ROOT_ONLY
def test_a_sticky_directory_a_local_user_owns_is_refused(public: Path) -> None:
    sticky = public / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    os.chown(sticky, NOBODY, NOBODY)
    result = install(sticky / "bin")
    assert_one_error_line(result, f"install directory {sticky} is group- and world-writable")
    assert os.listdir(sticky) == []


def test_a_symlinked_install_directory_is_vetted_where_it_points(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    real.chmod(0o777)
    (tmp_path / "link").symlink_to(real)
    result = install(tmp_path / "link")
    assert_one_error_line(result, f"install directory {real} is group- and world-writable")
    real.chmod(0o755)
    assert install(tmp_path / "link").code == 0
    assert sorted(os.listdir(real)) == ["cmk", "kcm"]


def test_a_killed_installs_temp_file_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    target.mkdir()
    (target / ".tmp-999999999-1-kcm").write_text("half")  # a dead PID's, as kill -9 leaves it
    (target / ".tmp-999999999-2-cmk").write_text("half")
    (target / ".tmp-1-1-kcm").write_text("busy")  # PID 1 lives: not ours to remove
    (target / ".tmp-999999999-3-other").write_text("not ours")
    assert install(target).code == 0
    assert sorted(os.listdir(target)) == [
        ".tmp-1-1-kcm",
        ".tmp-999999999-3-other",
        "cmk",
        "kcm",
    ]


def test_empty_install_dir_is_a_usage_error() -> None:
    result = run_kcm("install", "--install-dir=")
    assert_one_error_line(result, "--install-dir must not be empty")
    assert result.code == 2


@pytest.mark.parametrize("name", ["kcm", "cmk"])
def test_kcm_and_cmk_are_one_standalone_program(tmp_path: Path, name: str) -> None:
    target = tmp_path / "bin"
    assert install(target).code == 0
    assert sorted(os.listdir(target)) == ["cmk", "kcm"]  # no temp file left behind
    assert (target / "cmk").read_bytes() == (target / "kcm").read_bytes()
    program = str(target / name)
    bare = ["env", "-i", "PATH=/usr/bin:/bin"]
    helped = subprocess.run([*bare, program, "--help"], capture_output=True, text=True, cwd="/")
    assert (helped.returncode, helped.stdout) == (0, HELP)
    # describe reads the state; isolate also imports kcm.host (procfs): both from the archive.
    conf = build_state(str(tmp_path / "kcm"), SEED_STATE)
    described = subprocess.run(
        [*bare, program, "describe", f"--conf-dir={conf}"], capture_output=True, text=True
    )
    assert described.returncode == 0, described.stderr
    assert described.stdout == run_kcm("describe", f"--conf-dir={conf}").out
    here = build_state(str(tmp_path / "here"), {"infra": (False, {"0": ""})})
    command = 'echo "$KCM_POOL $KCM_CPUS_ASSIGNED"'
    isolated = subprocess.run(
        [
            *bare,
            "KCM_PROC_FS=/proc",
            f"KCM_CGROUP_PARENT={CGROUP_PARENT}",
            program,
            "isolate",
            f"--conf-dir={here}",
            "--pool=infra",
            command,
        ],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert (isolated.returncode, isolated.stdout) == (0, "infra 0\n"), isolated.stderr


def test_the_archive_holds_every_module_of_kcm_and_its_subpackages(tmp_path: Path) -> None:
    package = Path(kcm.__file__).parent
    modules = {
        str(p.relative_to(package.parent))
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert {"kcm/host/procfs.py", "kcm/host/sysfs.py", "kcm/k8s/discover.py"} <= modules
    assert install(tmp_path).code == 0
    with zipfile.ZipFile(tmp_path / "cmk") as archive:
        assert set(archive.namelist()) == modules | {"__main__.py"}


def test_install_says_what_it_created_and_wrote(tmp_path: Path) -> None:
    target = tmp_path / "opt" / "bin"
    result = install(target)
    assert (result.code, result.out) == (0, "")
    assert result.err == (
        f"kcm: created directory {tmp_path}/opt\n"
        f"kcm: created directory {target}\n"
        f"kcm: installed {target}/kcm\n"
        f"kcm: installed {target}/cmk\n"
    )
    again = install(target)
    assert again.err == f"kcm: installed {target}/kcm\nkcm: installed {target}/cmk\n"


def test_quiet_install_says_nothing_but_refusals_still_show(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    result = install(target, "--quiet")
    assert (result.code, result.out, result.err) == (0, "", "")
    assert sorted(os.listdir(target)) == ["cmk", "kcm"]
    target.chmod(0o777)
    refused = install(target, "--quiet")
    assert_one_error_line(refused, f"install directory {target} is group- and world-writable")
