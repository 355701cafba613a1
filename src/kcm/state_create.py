"""Creating a state directory (``kcm init``): all at once or not at all.

The builder behind ``kcm.state.create``, on its own so that the commands that only read and
change a state (``isolate`` first: every module costs its start-up) do not load it. It writes
through ``kcm.state``'s primitives (``atomic_write``, the vetting ``Trust``), fsyncing every
file and directory it makes.
"""

from __future__ import annotations

import errno
import os

from kcm.errors import StateError
from kcm.state import (
    _DIR_FLAGS,
    _S_IFDIR,
    _S_IFREG,
    _WRITABLE_BY_OTHERS,
    EXCLUSIVE,
    INIT_TMP_PREFIX,
    LOCK,
    POOLS,
    TASKS,
    Trust,
    _fsync_dir,
    _pid_alive,
    _why,
    atomic_write,
    format_tasks,
)

TYPE_CHECKING = False  # mypy treats this name as True
if TYPE_CHECKING:
    from kcm.model import Pool

DIR_MODE = 0o755
FILE_MODE = 0o644


class _Cursor:
    """The entry an init is creating or reading, so that its failure names the exact path."""

    __slots__ = ("done", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = False  # the state is in place; only syncing is left


def _make_dir(name: str, dir_fd: int | None = None) -> int:
    """Create the directory ``name`` with exactly DIR_MODE, whatever the umask; its fd."""
    os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.fchmod(fd, DIR_MODE)  # the umask may have narrowed it (or, at 000, nothing to fix)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_tree(root_fd: int, root: str, pools: dict[str, Pool], at: _Cursor) -> None:
    """Write ``pools/...`` under ``root_fd`` with every file and directory fsynced."""
    at.path = f"{root}/{POOLS}"
    pools_fd = _make_dir(POOLS, root_fd)
    try:
        for pool in pools.values():
            pool_path = at.path = f"{root}/{POOLS}/{pool.name}"
            pool_fd = _make_dir(pool.name, pools_fd)
            try:
                at.path = f"{pool_path}/{EXCLUSIVE}"
                atomic_write(pool_fd, EXCLUSIVE, "1" if pool.exclusive else "0", sync_dir=False)
                for cl in pool.cpu_lists.values():
                    at.path = f"{pool_path}/{cl.cpus}"
                    list_fd = _make_dir(cl.cpus, pool_fd)
                    try:
                        at.path = f"{pool_path}/{cl.cpus}/{TASKS}"
                        atomic_write(list_fd, TASKS, format_tasks(cl.tasks))
                    finally:
                        os.close(list_fd)
                at.path = pool_path
                _fsync_dir(pool_fd)
            finally:
                os.close(pool_fd)
        at.path = f"{root}/{POOLS}"
        _fsync_dir(pools_fd)
    finally:
        os.close(pools_fd)


def _stale_init_leftover(name: str, prefix: str = INIT_TMP_PREFIX) -> bool:
    """A build directory ``<prefix><pid>`` of an ``init`` that was killed (its PID is gone)."""
    if not name.startswith(prefix):
        return False
    pid = name[len(prefix) :].partition("-")[0]
    return pid.isdigit() and not _pid_alive(int(pid))


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class _RaceLost(Exception):
    """Another init renamed its state into place between our check and our rename."""


def create(path: str, pools: dict[str, Pool]) -> None:
    """``kcm.state.create``: see there."""
    path = os.path.normpath(path)
    at = _Cursor(path)
    try:
        if os.path.lexists(path):
            if not os.path.isdir(path):
                raise StateError(f"{path} exists and is not a directory")
            _vet_existing(path)
            for name in os.listdir(path):
                if _stale_init_leftover(name):
                    _remove_tree(os.path.join(path, name))
            # An empty lock is what a killed init may leave before its pools; no state.
            held = [
                n for n in sorted(os.listdir(path)) if n != LOCK or os.path.getsize(f"{path}/{n}")
            ]
            if held:
                building = [
                    n[len(INIT_TMP_PREFIX) :] for n in held if n.startswith(INIT_TMP_PREFIX)
                ]
                why = "kcm init needs a missing or empty directory"
                if building and len(building) == len(held):
                    why = f"another kcm init (PID {building[0]}) is creating its state there"
                raise StateError(f"{path} is not empty (it holds {', '.join(held[:5])}): {why}")
            _create_inside(path, pools, at)
        else:
            _create_beside(path, pools, at)
    except _RaceLost as e:
        raise StateError(
            f"cannot create {path}: another kcm init created its state there first"
            f" ({e.args[0]}); that state is kept and nothing of this init was left"
        ) from None
    except OSError as e:
        left = "the state is in place but may not be on disk" if at.done else "nothing was left"
        raise StateError(f"cannot create {path}: {_why(e)} (at {at.path}); {left}") from None


def _vet_existing(path: str) -> None:
    """Refuse to build state in a directory (or beside a lock) that others could write."""
    trust = Trust(writer=True)
    lock = f"{path}/{LOCK}"
    try:
        trust.vet(os.stat(path), path, _S_IFDIR)
        lock_stat = os.lstat(lock)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StateError(f"cannot inspect {path}: {_why(e)}") from None
    trust.vet(lock_stat, lock, _S_IFREG)  # an empty lock a killed init left is kept


def _make_parents(parent: str) -> None:
    """Create the missing directories above the state, never writable by group or others."""
    if os.path.isdir(parent):
        return
    umask = os.umask(_WRITABLE_BY_OTHERS)
    try:
        os.umask(umask | _WRITABLE_BY_OTHERS)
        os.makedirs(parent, exist_ok=True)
    finally:
        os.umask(umask)


def _renamed_in(e: OSError) -> bool:
    """Whether a rename onto a directory failed because another init's state landed there."""
    return e.errno in (errno.ENOTEMPTY, errno.EEXIST)


def _create_beside(path: str, pools: dict[str, Pool], at: _Cursor) -> None:
    parent, base = os.path.split(os.path.abspath(path))
    at.path = parent
    _make_parents(parent)
    for name in os.listdir(parent):
        if _stale_init_leftover(name, f".{base}{INIT_TMP_PREFIX}"):
            _remove_tree(os.path.join(parent, name))
    tmp = at.path = os.path.join(parent, f".{base}{INIT_TMP_PREFIX}{os.getpid()}")
    fd = _make_dir(tmp)
    try:
        try:
            at.path = f"{tmp}/{LOCK}"
            atomic_write(fd, LOCK, "", sync_dir=False)
            _write_tree(fd, tmp, pools, at)
        finally:
            os.close(fd)
        at.path = path
        try:
            os.rename(tmp, path)
        except OSError as e:
            if _renamed_in(e):
                raise _RaceLost(f"renaming {tmp} onto it: {_why(e)}") from None
            raise
    except BaseException:
        _remove_tree(tmp)
        raise
    at.done = True
    at.path = parent
    parent_fd = os.open(parent, _DIR_FLAGS)
    try:
        _fsync_dir(parent_fd)
    finally:
        os.close(parent_fd)


def _create_inside(path: str, pools: dict[str, Pool], at: _Cursor) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f"{INIT_TMP_PREFIX}{os.getpid()}"
    try:
        at.path = f"{path}/{tmp}"
        tmp_fd = _make_dir(tmp, fd)
        try:
            # Everything, the lock too, is written in the build directory and moved in:
            # a killed init leaves nothing but that directory, which the next one removes.
            try:
                at.path = f"{path}/{tmp}/{LOCK}"
                atomic_write(tmp_fd, LOCK, "", sync_dir=False)
                _write_tree(tmp_fd, f"{path}/{tmp}", pools, at)
            finally:
                os.close(tmp_fd)
            at.path = f"{path}/{LOCK}"
            try:
                # A link never replaces: a lock already there (a killed init's, or that of
                # an init racing this one, which kcm commands may already hold) stays.
                os.link(f"{tmp}/{LOCK}", LOCK, src_dir_fd=fd, dst_dir_fd=fd)
            except FileExistsError:
                pass
            at.path = f"{path}/{POOLS}"
            try:
                os.rename(f"{tmp}/{POOLS}", POOLS, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError as e:
                if _renamed_in(e):
                    raise _RaceLost(
                        f"renaming {path}/{tmp}/{POOLS} onto {POOLS}: {_why(e)}"
                    ) from None
                raise
            at.done = True
        finally:
            _remove_tree(os.path.join(path, tmp))
        at.path = path
        _fsync_dir(fd)
    finally:
        os.close(fd)
