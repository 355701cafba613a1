"""The state directory: strict reading, the lock, and atomic durable writes. The only writer.

Layout (the seed's format): ``lock``, ``pools/<pool>/exclusive`` (``0``/``1``) and
``pools/<pool>/<cpulist>/tasks`` (comma-separated PIDs). Ours, invisible to the seed's readers:
``pools/<pool>/<cpulist>/.owner-<pid>`` holds the start time of a PID that ``kcm isolate``
recorded, so ``reconcile`` can tell that PID from an unrelated process that reuses it; and
``.tmp-<pid>-...`` files are writes in flight (or left by a killed writer, removed by reconcile).

Everything inside the directory is opened relative to directory descriptors with O_NOFOLLOW:
a symlink planted in the state is an error, never followed.
"""

from __future__ import annotations

import errno
import os
import time

from kcm import cpulist
from kcm.errors import LockTimeoutError, ParseError, StateError, UsageError
from kcm.model import CpuList, Pool

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from types import TracebackType

POOLS = "pools"
LOCK = "lock"
TASKS = "tasks"
EXCLUSIVE = "exclusive"
OWNER_PREFIX = ".owner-"
TMP_PREFIX = ".tmp-"
# A tasks file holds PIDs; a few hundred KiB is already thousands of tasks on one list.
MAX_FILE_SIZE = 1 << 20
DEFAULT_LOCK_TIMEOUT = 30.0

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_tmp_counter = 0


def lock_timeout() -> float:
    """``$KCM_LOCK_TIMEOUT`` (or ``$CMK_LOCK_TIMEOUT``) in seconds, default 30."""
    for name in ("KCM_LOCK_TIMEOUT", "CMK_LOCK_TIMEOUT"):
        text = os.environ.get(name)
        if text is None or not text.strip():
            continue
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0 or value != value or value == float("inf"):
            raise UsageError(f"{name}={text!r} is not a positive number of seconds")
        return value
    return DEFAULT_LOCK_TIMEOUT


def validate_pool_name(name: str) -> str:
    """A pool is a name, never a path."""
    if (
        not name
        or name.startswith(".")
        or "/" in name
        or "\0" in name
        or not name.isprintable()
        or len(name) > 255
    ):
        raise UsageError(f"invalid pool name {name!r}: a pool is a plain name such as dataplane")
    return name


def parse_tasks(text: str) -> list[int]:
    """The PIDs of a tasks file: ``1000,1001``; whitespace and a trailing newline are allowed."""
    text = text.strip()
    if not text:
        return []
    pids = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isdigit() and part.isascii()) or int(part) <= 0:
            raise ParseError(f"{part!r} is not a PID")
        pids.append(int(part))
    return pids


def format_tasks(pids: list[int]) -> str:
    return ",".join(str(pid) for pid in pids)


def parse_exclusive(text: str) -> bool:
    value = text.strip()
    if value not in ("0", "1"):
        raise ParseError(f"expected 0 or 1, found {value[:40]!r}")
    return value == "1"


def _fsync_dir(fd: int) -> None:
    os.fsync(fd)


def _read_small(dir_fd: int, name: str, path: str) -> str:
    """A small file's text, refusing symlinks, other file types and oversized files.

    Three system calls (open, read, close) for a file with content: describe reads hundreds
    of these. O_NONBLOCK keeps a planted FIFO from hanging the read.
    """
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise StateError(f"{path} is missing") from None
    except OSError as e:
        raise StateError(f"cannot read {path}: {_why(e)}") from None
    try:
        data = os.read(fd, MAX_FILE_SIZE + 1)
        # Nothing read: an empty file, or a FIFO or device planted in its place.
        if not data and (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            raise StateError(f"{path} is not a regular file")
    except OSError as e:
        raise StateError(f"cannot read {path}: {_why(e)}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        raise StateError(f"{path} is over the {MAX_FILE_SIZE} byte limit")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise StateError(f"{path} holds non-ASCII bytes") from None


def _read_tasks(dir_fd: int, name: str, path: str) -> list[int]:
    """The PIDs of the tasks file ``name`` under ``dir_fd``; ``path`` names it in errors."""
    try:
        return parse_tasks(_read_small(dir_fd, name, path))
    except ParseError as e:
        raise StateError(f"{path}: invalid tasks file: {e}") from None


def _why(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "it is a symlink, which kcm refuses inside its state directory"
    if e.errno == errno.ENOTDIR:
        return "not a directory"
    return e.strerror or str(e)


def _open_dir(name: str, path: str, dir_fd: int | None = None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise StateError(f"{path} does not exist") from None
    except OSError as e:
        raise StateError(f"cannot open {path}: {_why(e)}") from None


def atomic_write(
    dir_fd: int, name: str, data: str | bytes, *, sync_dir: bool = True, mode: int = 0o644
) -> None:
    """Replace ``name`` in ``dir_fd`` with ``data``: temp file, fsync, rename, fsync the dir."""
    global _tmp_counter
    _tmp_counter += 1
    tmp = f"{TMP_PREFIX}{os.getpid()}-{_tmp_counter}-{name}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data.encode("ascii") if isinstance(data, str) else data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the umask may have narrowed it
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    if sync_dir:
        _fsync_dir(dir_fd)


class StateDir:
    """An existing state directory. Open it, take the lock, read pools, write tasks."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._lock_fd = -1
        self._deadline = 0.0
        self._timeout = 0.0

    # -- opening and locking ------------------------------------------------------------

    def __enter__(self) -> StateDir:
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StateError(
                f"{self.path} does not exist: create it with kcm init --conf-dir={self.path}"
            ) from None
        except OSError as e:
            raise StateError(f"cannot open state directory {self.path}: {_why(e)}") from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unlock()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def lock(self, timeout: float, *, shared: bool = False) -> None:
        """Take ``<dir>/lock``, waiting at most ``timeout`` seconds; then hold it as briefly."""
        import fcntl

        path = f"{self.path}/{LOCK}"
        try:
            fd = os.open(LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        except FileNotFoundError:
            raise StateError(f"{path} is missing: {self.path} is no kcm state directory") from None
        except OSError as e:
            # Readers (describe, discover) also work on a read-only mount or without write access.
            if not (shared and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
                raise StateError(f"cannot open {path} for writing: {_why(e)}") from None
            fd = os.open(LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        self._lock_fd = fd
        self._timeout = timeout
        start = time.monotonic()
        deadline = start + timeout
        op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        delay = 0.0002
        while True:
            try:
                fcntl.flock(fd, op)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    self.unlock()
                    raise LockTimeoutError(
                        f"could not lock {path} within {timeout:g}s (KCM_LOCK_TIMEOUT):"
                        " another kcm holds it"
                    ) from None
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.02)
        self._deadline = deadline

    def check_lock_held(self) -> None:
        """Refuse to write once the lock has been held past KCM_LOCK_TIMEOUT."""
        if self._lock_fd < 0:
            raise AssertionError("state written without the lock")
        if time.monotonic() > self._deadline:
            raise LockTimeoutError(
                f"held {self.path}/{LOCK} past KCM_LOCK_TIMEOUT ({self._timeout:g}s);"
                " nothing was written"
            )

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    # -- reading ----------------------------------------------------------------------

    def _pools_fd(self) -> int:
        return _open_dir(POOLS, f"{self.path}/{POOLS}", self._fd)

    def pool_names(self) -> list[str]:
        fd = self._pools_fd()
        try:
            names = []
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if not entry.is_dir(follow_symlinks=False):
                        raise StateError(
                            f"{self.path}/{POOLS}/{entry.name} is not a pool directory"
                        )
                    names.append(entry.name)
            return sorted(names)
        finally:
            os.close(fd)

    def read_pools(self) -> dict[str, Pool]:
        return {name: self.read_pool(name) for name in self.pool_names()}

    def read_pool(self, name: str) -> Pool:
        """One pool, parsed strictly; any malformed file is an error naming it."""
        validate_pool_name(name)
        pools_fd = self._pools_fd()
        try:
            pool_path = f"{self.path}/{POOLS}/{name}"
            try:
                pool_fd = os.open(name, _DIR_FLAGS, dir_fd=pools_fd)
            except FileNotFoundError:
                known = ", ".join(self.pool_names()) or "none"
                raise StateError(
                    f"no pool {name!r} in {self.path}/{POOLS} (pools: {known})"
                ) from None
            except OSError as e:
                raise StateError(f"cannot open {pool_path}: {_why(e)}") from None
        finally:
            os.close(pools_fd)
        try:
            return self._read_pool_at(pool_fd, name, pool_path)
        finally:
            os.close(pool_fd)

    def _read_pool_at(self, pool_fd: int, name: str, pool_path: str) -> Pool:
        excl_path = f"{pool_path}/{EXCLUSIVE}"
        try:
            exclusive = parse_exclusive(_read_small(pool_fd, EXCLUSIVE, excl_path))
        except ParseError as e:
            raise StateError(f"{excl_path}: {e}") from None
        cpu_lists: dict[str, CpuList] = {}
        with os.scandir(pool_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name == EXCLUSIVE or entry.name.startswith("."):
                continue
            list_path = f"{pool_path}/{entry.name}"
            if not entry.is_dir(follow_symlinks=False):
                raise StateError(f"{list_path} is neither a CPU list directory nor 'exclusive'")
            try:
                if not cpulist.parse(entry.name):
                    raise ParseError("it names no CPUs")
            except ParseError as e:
                raise StateError(f"{list_path}: not a CPU list directory name: {e}") from None
            tasks_path = f"{list_path}/{TASKS}"
            # The directory was seen as a real directory (not a symlink) just above; the
            # final component is opened with O_NOFOLLOW.
            tasks = _read_tasks(pool_fd, f"{entry.name}/{TASKS}", tasks_path)
            cpu_lists[entry.name] = CpuList(entry.name, tasks)
        return Pool(name, exclusive, cpu_lists)

    # -- writing (callers hold the lock) ------------------------------------------------

    def _list_fd(self, pool: str, cpu_list: str) -> int:
        pools_fd = self._pools_fd()
        try:
            pool_fd = _open_dir(pool, f"{self.path}/{POOLS}/{pool}", pools_fd)
        finally:
            os.close(pools_fd)
        try:
            return _open_dir(cpu_list, f"{self.path}/{POOLS}/{pool}/{cpu_list}", pool_fd)
        finally:
            os.close(pool_fd)

    def add_task(self, pool: str, cpu_list: CpuList, pid: int, start_time: int | None) -> None:
        """Record ``pid`` on ``cpu_list`` (and its start time, so a reused PID can be told)."""
        self.check_lock_held()
        fd = self._list_fd(pool, cpu_list.cpus)
        try:
            if start_time is not None:
                atomic_write(fd, f"{OWNER_PREFIX}{pid}", f"{start_time}\n", sync_dir=False)
            atomic_write(fd, TASKS, format_tasks([*cpu_list.tasks, pid]))
        finally:
            os.close(fd)
        cpu_list.tasks.append(pid)

    def set_tasks(self, pool: str, cpu_list: str, tasks: list[int], dropped: list[int]) -> None:
        """Write ``tasks`` as the list's tasks and forget the owner records of ``dropped``."""
        self.check_lock_held()
        fd = self._list_fd(pool, cpu_list)
        try:
            _write_tasks_at(fd, tasks, dropped)
        finally:
            os.close(fd)

    def remove_task(self, pool: str, cpu_list: str, pid: int) -> bool:
        """Remove ``pid`` from a list, re-reading its tasks first; False if it was not there."""
        self.check_lock_held()
        fd = self._list_fd(pool, cpu_list)
        try:
            tasks = _read_tasks(fd, TASKS, f"{self.path}/{POOLS}/{pool}/{cpu_list}/{TASKS}")
            if pid not in tasks:
                return False
            _write_tasks_at(fd, [t for t in tasks if t != pid], [pid])
            return True
        finally:
            os.close(fd)

    def hidden_entries(self, pool: str, cpu_list: str) -> dict[str, str]:
        """The list's owner records (name -> content) and temp files (name -> "")."""
        fd = self._list_fd(pool, cpu_list)
        try:
            found: dict[str, str] = {}
            for name in os.listdir(fd):
                if name.startswith(OWNER_PREFIX):
                    path = f"{self.path}/{POOLS}/{pool}/{cpu_list}/{name}"
                    found[name] = _read_small(fd, name, path)
                elif name.startswith(TMP_PREFIX):
                    found[name] = ""
            return found
        finally:
            os.close(fd)

    def remove_hidden(self, pool: str, cpu_list: str, names: list[str]) -> None:
        self.check_lock_held()
        fd = self._list_fd(pool, cpu_list)
        try:
            for name in names:
                if not (name.startswith(OWNER_PREFIX) or name.startswith(TMP_PREFIX)):
                    raise AssertionError(name)
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    pass
            _fsync_dir(fd)
        finally:
            os.close(fd)


def _write_tasks_at(list_fd: int, tasks: list[int], dropped: list[int]) -> None:
    """Replace a list's tasks, then unlink the owner records of ``dropped``; one dir fsync."""
    atomic_write(list_fd, TASKS, format_tasks(tasks), sync_dir=False)
    for pid in dropped:
        try:
            os.unlink(f"{OWNER_PREFIX}{pid}", dir_fd=list_fd)
        except FileNotFoundError:
            pass
    _fsync_dir(list_fd)


def parse_owner(text: str) -> int | None:
    """The start time an owner record holds, or None if it is not one."""
    text = text.strip()
    return int(text) if text.isdigit() and text.isascii() else None


# -- creating a state directory (kcm init) -------------------------------------------------

INIT_TMP_PREFIX = ".kcm-init-"


def _write_tree(root_fd: int, pools: dict[str, Pool]) -> None:
    """Write ``pools/...`` under ``root_fd`` with every file and directory fsynced."""
    os.mkdir(POOLS, 0o755, dir_fd=root_fd)
    pools_fd = os.open(POOLS, _DIR_FLAGS, dir_fd=root_fd)
    try:
        for pool in pools.values():
            os.mkdir(pool.name, 0o755, dir_fd=pools_fd)
            pool_fd = os.open(pool.name, _DIR_FLAGS, dir_fd=pools_fd)
            try:
                atomic_write(pool_fd, EXCLUSIVE, "1" if pool.exclusive else "0", sync_dir=False)
                for cl in pool.cpu_lists.values():
                    os.mkdir(cl.cpus, 0o755, dir_fd=pool_fd)
                    list_fd = os.open(cl.cpus, _DIR_FLAGS, dir_fd=pool_fd)
                    try:
                        atomic_write(list_fd, TASKS, format_tasks(cl.tasks))
                    finally:
                        os.close(list_fd)
                _fsync_dir(pool_fd)
            finally:
                os.close(pool_fd)
        _fsync_dir(pools_fd)
    finally:
        os.close(pools_fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_init_leftover(name: str, prefix: str = INIT_TMP_PREFIX) -> bool:
    """A build directory ``<prefix><pid>`` of an ``init`` that was killed (its PID is gone)."""
    if not name.startswith(prefix):
        return False
    pid = name[len(prefix) :].partition("-")[0]
    return pid.isdigit() and not _pid_alive(int(pid))


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def is_initialized(path: str) -> bool:
    """Whether ``path`` holds a complete state: ``lock`` and ``pools`` present."""
    return os.path.isfile(os.path.join(path, LOCK)) and os.path.isdir(os.path.join(path, POOLS))


def create(path: str, pools: dict[str, Pool]) -> None:
    """Create a state directory holding ``pools``, all at once or not at all.

    A missing directory is built beside its final place and renamed into it. An existing empty
    directory (a mount point, say, where a rename cannot land) gets its ``pools`` tree built in
    a hidden directory inside and renamed into place last, after ``lock``: until that rename the
    directory holds no state. Leftovers of a killed ``init`` are cleaned up by the next one.
    """
    path = os.path.normpath(path)
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise StateError(f"{path} exists and is not a directory")
        for name in os.listdir(path):
            if _stale_init_leftover(name):
                _remove_tree(os.path.join(path, name))
        # An empty lock is what a killed init may leave before its pools; it holds no state.
        held = [n for n in sorted(os.listdir(path)) if n != LOCK or os.path.getsize(f"{path}/{n}")]
        if held:
            raise StateError(
                f"{path} is not empty (it holds {', '.join(held[:5])}):"
                " kcm init needs a missing or empty directory"
            )
        _create_inside(path, pools)
    else:
        _create_beside(path, pools)


def _create_beside(path: str, pools: dict[str, Pool]) -> None:
    parent, base = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    for name in os.listdir(parent):
        if _stale_init_leftover(name, f".{base}{INIT_TMP_PREFIX}"):
            _remove_tree(os.path.join(parent, name))
    tmp = os.path.join(parent, f".{base}{INIT_TMP_PREFIX}{os.getpid()}")
    os.mkdir(tmp, 0o755)
    try:
        fd = os.open(tmp, _DIR_FLAGS)
        try:
            atomic_write(fd, LOCK, "", sync_dir=False)
            _write_tree(fd, pools)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, path)
        except OSError as e:
            raise StateError(f"cannot create {path}: {_why(e)}") from None
    except BaseException:
        _remove_tree(tmp)
        raise
    parent_fd = os.open(parent, _DIR_FLAGS)
    try:
        _fsync_dir(parent_fd)
    finally:
        os.close(parent_fd)


def _create_inside(path: str, pools: dict[str, Pool]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f"{INIT_TMP_PREFIX}{os.getpid()}"
    try:
        os.mkdir(tmp, 0o755, dir_fd=fd)
        try:
            tmp_fd = os.open(tmp, _DIR_FLAGS, dir_fd=fd)
            try:
                _write_tree(tmp_fd, pools)
            finally:
                os.close(tmp_fd)
            if not os.path.lexists(os.path.join(path, LOCK)):
                atomic_write(fd, LOCK, "", sync_dir=False)
            os.rename(f"{tmp}/{POOLS}", POOLS, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            _remove_tree(os.path.join(path, tmp))
        _fsync_dir(fd)
    finally:
        os.close(fd)
