"""``kcm install``: a standalone ``kcm`` (a Python zip application) that needs only python3."""

from __future__ import annotations

import io
import os
import zipfile

import kcm
from kcm.errors import EnvironmentProblem, UsageError
from kcm.state import atomic_write

SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = "import sys\nfrom kcm.cli import main\nsys.exit(main())\n"


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


def install(install_dir: str) -> str:
    """Write ``<install_dir>/kcm`` atomically; its path."""
    if not install_dir:
        raise UsageError("--install-dir must not be empty")
    try:
        os.makedirs(install_dir, exist_ok=True)
        fd = os.open(install_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise EnvironmentProblem(
            f"cannot use install directory {install_dir}: {e.strerror}"
        ) from None
    try:
        atomic_write(fd, "kcm", build_zipapp(), mode=0o755)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write {install_dir}/kcm: {e.strerror}") from None
    finally:
        os.close(fd)
    return os.path.join(install_dir, "kcm")
