"""``kcm install``: a standalone ``kcm`` and ``cmk``, a Python zip application needing python3."""

from __future__ import annotations

import io
import os
import sys
import zipfile

import kcm
from kcm.errors import EnvironmentProblem, UsageError
from kcm.state import TMP_PREFIX, atomic_write

SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = "import sys\nfrom kcm.cli import main\nsys.exit(main())\n"
# CMK 1.x installed ``cmk``; workloads written for it find the same program under that name.
PROGRAMS = ("kcm", "cmk")
DIR_MODE = 0o755
FILE_MODE = 0o755

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITABLE_BY = {0o020: "group", 0o002: "world", 0o022: "group- and world"}
_STICKY = 0o1000


def _package_sources() -> dict[str, bytes]:
    """Every module of the kcm package, read from wherever this kcm runs from."""
    package_dir = os.path.dirname(os.path.abspath(kcm.__file__))
    sources: dict[str, bytes] = {}
    if os.path.isdir(package_dir):
        for top, dirs, files in os.walk(package_dir):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = os.path.relpath(top, os.path.dirname(package_dir))
            for name in sorted(files):
                if name.endswith(".py"):
                    with open(os.path.join(top, name), "rb") as f:
                        sources[f"{rel}/{name}".replace(os.sep, "/")] = f.read()
        return sources
    # Running from an installed zip application: copy its modules.
    archive = package_dir
    while archive and not os.path.isfile(archive):
        archive = os.path.dirname(archive)
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if name.startswith("kcm/") and name.endswith(".py"):
                sources[name] = zf.read(name)
    return sources


def build_zipapp() -> bytes:
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in _package_sources().items():
            info = zipfile.ZipInfo(name, date_time=(2017, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        info = zipfile.ZipInfo("__main__.py", date_time=(2017, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, MAIN)
    return buf.getvalue()


def vet_directory(st: os.stat_result, path: str) -> None:
    """Refuse a directory on the way to the installed program that someone else could change.

    Whoever may write a directory on that path can replace the program root runs next. A
    sticky directory owned by root (``/tmp``) is the exception: there only an entry's owner
    may rename or remove it. The owner is the other way in: it may always chmod.
    """
    mode = st.st_mode
    others = mode & 0o022
    if others and not (mode & _STICKY and st.st_uid == 0):
        raise EnvironmentProblem(
            f"install directory {path} is {_WRITABLE_BY[others]}-writable"
            f" (mode {mode & 0o7777:04o}): whoever can write it can replace the program root"
            f" runs; run chmod go-w {path}, or choose another --install-dir"
        )
    euid = os.geteuid()
    if st.st_uid not in (0, euid):
        owner = "root" if euid == 0 else f"root or you (uid {euid})"
        raise EnvironmentProblem(
            f"install directory {path} is owned by uid {st.st_uid}, not by {owner}: its owner"
            f" can replace the program root runs; run chown {euid} {path}, or choose another"
            " --install-dir"
        )


def _open_path(install_dir: str) -> tuple[int, list[str]]:
    """A descriptor of ``install_dir``, walked from ``/`` one vetted directory at a time.

    Missing directories are created with exactly DIR_MODE whatever the umask. Each step is
    opened with O_NOFOLLOW relative to the one before and fstat'ed, so what is vetted is what
    is written into. The directories created are returned too, for the caller to report.
    """
    path = os.path.realpath(install_dir)  # symlinks the operator chose are resolved once
    fd = os.open("/", _DIR_FLAGS)
    current = "/"
    created: list[str] = []
    try:
        vet_directory(os.fstat(fd), current)
        for part in path.split("/"):
            if not part:
                continue
            current = os.path.join(current, part)
            made = False
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass  # made by someone else meanwhile: vetted below like any other
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            try:
                if made:
                    os.fchmod(next_fd, DIR_MODE)  # the umask may have narrowed it
                    os.fsync(fd)
                    created.append(current)
                vet_directory(os.fstat(next_fd), current)
            except BaseException:
                os.close(next_fd)
                raise
            os.close(fd)
            fd = next_fd
    except OSError as e:
        os.close(fd)
        where = "" if current == path else f" at {current}"
        raise EnvironmentProblem(
            f"cannot use install directory {install_dir}{where}: {e.strerror}"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _remove_stale_temp_files(fd: int, names: tuple[str, ...]) -> None:
    """Remove the temp files a killed install left (``.tmp-<pid>-<n>-kcm`` of a dead PID)."""
    for entry in os.listdir(fd):
        if not (entry.startswith(TMP_PREFIX) and entry.rpartition("-")[2] in names):
            continue
        pid = entry[len(TMP_PREFIX) :].partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                os.unlink(entry, dir_fd=fd)
            except FileNotFoundError:
                pass
        except PermissionError:
            pass  # alive, another user's


def install(install_dir: str, names: tuple[str, ...] = PROGRAMS) -> tuple[list[str], list[str]]:
    """Write each of ``names`` into ``install_dir`` atomically, mode 0755.

    Returns the directories it created and the paths of the programs it wrote.
    """
    if not install_dir:
        raise UsageError("--install-dir must not be empty")
    program = build_zipapp()
    fd, created = _open_path(install_dir)
    written = []
    try:
        _remove_stale_temp_files(fd, names)
        for name in names:
            path = os.path.join(install_dir, name)
            try:
                atomic_write(fd, name, program, mode=FILE_MODE)
            except OSError as e:
                raise EnvironmentProblem(f"cannot write {path}: {e.strerror}") from None
            written.append(path)
    finally:
        os.close(fd)
    return created, written


def main(install_dir: str, *, quiet: bool) -> None:
    """``kcm install``: install, then say on stderr what was created and written."""
    created, written = install(install_dir)
    if not quiet:
        for path in created:
            print(f"kcm: created directory {path}", file=sys.stderr)
        for path in written:
            print(f"kcm: installed {path}", file=sys.stderr)
