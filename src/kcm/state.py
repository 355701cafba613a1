"""The state directory: strict reading, the lock, and atomic durable writes. The only writer.

Layout (the seed's format): ``lock``, ``pools/<pool>/exclusive`` (``0``/``1``) and
``pools/<pool>/<cpulist>/tasks`` (comma-separated PIDs). Ours, invisible to the seed's readers:
``pools/<pool>/<cpulist>/.owner-<pid>`` holds the start time of a PID that ``kcm isolate``
recorded without a booking cgroup (with one, the cgroup's name ``<pid>-<start>`` has it), so
``reconcile`` can tell that PID from an unrelated process that reuses it;
``.heir-<pid>`` holds ``<start> <booking>[ <process group>]`` for a process that took a booking
over from the kcm isolate that made it (``kcm.holders``); and ``.tmp-<pid>-...`` files are
writes in flight (or left by a killed writer, removed by reconcile).

Everything inside the directory is opened relative to directory descriptors with O_NOFOLLOW:
a symlink planted in the state is an error, never followed. Everything opened is also fstat'ed
and vetted (see ``Trust``): nothing in the state may be writable by anyone but its owner, and a
writer requires root or itself as that owner. SECURITY.md says what each defence covers.
"""

from __future__ import annotations

import os
import time

from kcm import cpulist
from kcm.errors import LockTimeoutError, ParseError, StateError, UsageError
from kcm.model import CpuList, Pool

TYPE_CHECKING = False  # typing costs ms at start-up; mypy treats this name as True
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

POOLS = "pools"
LOCK = "lock"
TASKS = "tasks"
EXCLUSIVE = "exclusive"
OWNER_PREFIX = ".owner-"
HEIR_PREFIX = ".heir-"
TMP_PREFIX = ".tmp-"
# A tasks file holds PIDs; a few hundred KiB is already thousands of tasks on one list.
MAX_FILE_SIZE = 1 << 20
DEFAULT_LOCK_TIMEOUT = 30.0
ALLOW_SHARED_STATE = "KCM_ALLOW_SHARED_STATE"

# st_mode bits; numeric so that the hot path need not import ``stat``.
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_S_IFLNK = 0o120000
_WRITABLE_BY_OTHERS = 0o022
_WRITABLE_BY = {0o020: "group", 0o002: "world", 0o022: "group- and world"}

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


class Trust:
    """Whom kcm lets have written what it opens in the state; applied to each entry's stat.

    By default no directory or file may be writable by group or others: whoever can write the
    state decides where tasks run and which ones reconcile drops. A writer (isolate, reconcile,
    init) also requires each entry to be owned by root or by itself, since the owner can always
    make an entry writable. A reader (describe, discover) accepts any owner: it reports a state
    it was pointed at, also through a read-only or id-mapped mount where owners look foreign.
    ``KCM_ALLOW_SHARED_STATE=1`` turns both checks off for a state shared on purpose.
    """

    __slots__ = ("check_mode", "owners")

    def __init__(self, *, writer: bool) -> None:
        shared = os.environ.get(ALLOW_SHARED_STATE) == "1"
        self.check_mode = not shared
        self.owners = (0, os.geteuid()) if writer and not shared else None

    def vet(self, st: os.stat_result, path: str, kind: int) -> None:
        """Refuse ``st`` unless it is of ``kind`` (_S_IFDIR or _S_IFREG) and trusted."""
        mode = st.st_mode
        if mode & _S_IFMT != kind:
            if mode & _S_IFMT == _S_IFLNK:
                raise StateError(f"{path} is a symlink, which kcm refuses inside its state")
            what = "directory" if kind == _S_IFDIR else "regular file"
            raise StateError(f"{path} is not a {what}")
        if self.check_mode and mode & _WRITABLE_BY_OTHERS:
            who = _WRITABLE_BY[mode & _WRITABLE_BY_OTHERS]
            raise StateError(
                f"{path} is {who}-writable (mode {mode & 0o7777:04o}): whoever can write kcm's"
                f" state steers it; run chmod go-w {path}, or set {ALLOW_SHARED_STATE}=1 to"
                " trust a shared state"
            )
        if self.owners is not None and st.st_uid not in self.owners:
            euid = self.owners[1]
            owner = "root" if euid == 0 else f"root or you (uid {euid})"
            fix = "root" if euid == 0 else str(euid)
            raise StateError(
                f"{path} is owned by uid {st.st_uid}, not by {owner}: its owner steers kcm"
                f" through it; run chown {fix} {path}, or set {ALLOW_SHARED_STATE}=1 to trust"
                " a shared state"
            )


def parse_tasks(text: str) -> list[int]:
    """The PIDs of a tasks file: ``1000,1001``; whitespace and a trailing newline are allowed."""
    text = text.strip()
    if not text:
        return []
    pids = []
    for part in text.split(","):
        part = part.strip()
        # Linux PIDs are at most 4194304; the length check also keeps int() from refusing
        # a number of thousands of digits with a ValueError of its own.
        if not (part.isdigit() and part.isascii()) or len(part) > 10 or int(part) <= 0:
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


def _read_small(dir_fd: int, name: str, path: str, trust: Trust) -> str:
    """A small file's text, refusing symlinks, other file types, untrusted and oversized files.

    Four system calls (open, fstat, read, close): describe reads hundreds of these.
    O_NONBLOCK keeps a planted FIFO from hanging the open; the fstat refuses it before a read.
    """
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise StateError(f"{path} is missing") from None
    except OSError as e:
        raise StateError(f"cannot read {path}: {_why(e)}") from None
    try:
        st = os.fstat(fd)
        trust.vet(st, path, _S_IFREG)
        if st.st_size > MAX_FILE_SIZE:  # refused unread, even a sparse file of any size
            raise StateError(f"{path} is over the {MAX_FILE_SIZE} byte limit")
        # Its size and one byte more: a buffer of the limit would be mapped and unmapped
        # for every file (an mmap, mremap and munmap each: 1,500 calls for 512 lists).
        data = os.read(fd, st.st_size + 1)
        if len(data) > st.st_size:  # it grew after the fstat: read on, up to the limit
            data += os.read(fd, MAX_FILE_SIZE + 1 - len(data))
    except OSError as e:
        raise StateError(f"cannot read {path}: {_why(e)}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:  # it grew after the fstat
        raise StateError(f"{path} is over the {MAX_FILE_SIZE} byte limit")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise StateError(f"{path} holds non-ASCII bytes") from None


def _read_tasks(dir_fd: int, name: str, path: str, trust: Trust) -> list[int]:
    """The PIDs of the tasks file ``name`` under ``dir_fd``; ``path`` names it in errors."""
    try:
        return parse_tasks(_read_small(dir_fd, name, path, trust))
    except ParseError as e:
        raise StateError(f"{path}: invalid tasks file: {e}") from None


def _why(e: OSError) -> str:
    import errno  # only for a message: errno is off the isolate path's imports

    if e.errno == errno.ELOOP:
        return "it is a symlink, which kcm refuses inside its state directory"
    if e.errno == errno.ENOTDIR:
        return "not a directory"
    return e.strerror or str(e)


def _open_dir(name: str, path: str, dir_fd: int, trust: Trust) -> int:
    """A descriptor of the directory ``name`` in ``dir_fd``, never through a symlink, vetted."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise StateError(f"{path} does not exist") from None
    except OSError as e:
        raise StateError(f"cannot open {path}: {_why(e)}") from None
    return _vetted(fd, path, _S_IFDIR, trust)


def _vetted(fd: int, path: str, kind: int, trust: Trust) -> int:
    """``fd`` once its stat passes ``trust``; closed if it does not."""
    try:
        trust.vet(os.fstat(fd), path, kind)
    except BaseException:
        os.close(fd)
        raise
    return fd


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


class _LockWaitOver(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _LockWaitOver


def _wait_for_lock(fd: int, op: int, timeout: float) -> bool:
    """Block in flock(2) for at most ``timeout`` seconds; whether the lock was taken.

    Waiting in the kernel, rather than polling with LOCK_NB, leaves the CPU to the holder:
    with hundreds of kcm processes queued on one lock, pollers waking every few milliseconds
    slowed the holder so much that most of them timed out. A timer (SIGALRM) ends the wait.
    """
    import fcntl

    if TYPE_CHECKING:
        import signal as _signal
    else:
        import _signal
    try:
        previous = _signal.signal(_signal.SIGALRM, _alarm)
    except ValueError:  # not the main thread: no signals here, so poll
        return _poll_for_lock(fd, op, timeout)
    try:
        _signal.setitimer(_signal.ITIMER_REAL, timeout)
        try:
            fcntl.flock(fd, op)
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        return True
    except _LockWaitOver:
        return False
    finally:
        _signal.signal(_signal.SIGALRM, previous)


def _poll_for_lock(fd: int, op: int, timeout: float) -> bool:
    import fcntl

    deadline = time.monotonic() + timeout
    delay = 0.0002
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            now = time.monotonic()
            if now >= deadline:
                return False
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.02)


class StateReader:
    """An existing state directory opened to read: the shared lock, pools, hidden entries.

    It has no method that writes, so a view built on it (describe, discover) only reads by
    construction. ``StateDir`` adds the exclusive lock and the writes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._trust = Trust(writer=False)
        self._fd = -1
        self._lock_fd = -1
        self._deadline = 0.0
        self._timeout = 0.0

    # -- opening and locking ------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            # The path itself is the operator's and may be a symlink; what lies inside is not.
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StateError(
                f"{self.path} does not exist: create it with kcm init --conf-dir={self.path}"
            ) from None
        except OSError as e:
            raise StateError(f"cannot open state directory {self.path}: {_why(e)}") from None
        self._fd = _vetted(fd, self.path, _S_IFDIR, self._trust)
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

    def lock(self, timeout: float) -> None:
        """Take ``<dir>/lock`` shared, waiting at most ``timeout`` seconds, through a read-only
        descriptor: a reader opens nothing for writing (flock needs no write access)."""
        self._take_lock(timeout, shared=True, writable=False)

    def _take_lock(self, timeout: float, *, shared: bool, writable: bool) -> None:
        import fcntl

        path = f"{self.path}/{LOCK}"
        # O_NONBLOCK: a FIFO planted as the lock must not hang the open (the fstat refuses it).
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(LOCK, (os.O_RDWR if writable else os.O_RDONLY) | flags, dir_fd=self._fd)
        except FileNotFoundError:
            raise StateError(f"{path} is missing: {self.path} is no kcm state directory") from None
        except OSError as e:
            import errno

            # Readers (describe, discover) also work on a read-only mount or without write access.
            if not (writable and shared and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
                raise StateError(
                    f"cannot open {path}{' for writing' if writable else ''}: {_why(e)}"
                ) from None
            try:
                fd = os.open(LOCK, os.O_RDONLY | flags, dir_fd=self._fd)
            except OSError as e:
                raise StateError(f"cannot open {path}: {_why(e)}") from None
        self._lock_fd = _vetted(fd, path, _S_IFREG, self._trust)
        self._timeout = timeout
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _wait_for_lock(fd, op, timeout):
                self.unlock()
                raise LockTimeoutError(
                    f"could not lock {path} within {timeout:g}s (KCM_LOCK_TIMEOUT):"
                    " another kcm holds it"
                ) from None
        # The hold is bounded from the moment the lock is ours: see StateDir.check_lock_held.
        self._deadline = time.monotonic() + timeout

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    # -- reading ----------------------------------------------------------------------

    def _pools_fd(self) -> int:
        return _open_dir(POOLS, f"{self.path}/{POOLS}", self._fd, self._trust)

    def pool_names(self) -> list[str]:
        fd = self._pools_fd()
        try:
            names = []
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    try:
                        validate_pool_name(entry.name)
                    except UsageError:
                        raise StateError(
                            f"{self.path}/{POOLS}/{entry.name} is not a valid pool name"
                        ) from None
                    if not entry.is_dir(follow_symlinks=False):
                        why = ": it is a symlink" if entry.is_symlink() else ""
                        raise StateError(
                            f"{self.path}/{POOLS}/{entry.name} is not a pool directory{why}"
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
        _vetted(pool_fd, pool_path, _S_IFDIR, self._trust)
        try:
            return self._read_pool_at(pool_fd, name, pool_path)
        finally:
            os.close(pool_fd)

    def _read_pool_at(self, pool_fd: int, name: str, pool_path: str) -> Pool:
        trust = self._trust
        excl_path = f"{pool_path}/{EXCLUSIVE}"
        try:
            exclusive = parse_exclusive(_read_small(pool_fd, EXCLUSIVE, excl_path, trust))
        except ParseError as e:
            raise StateError(f"{excl_path}: {e}") from None
        cpu_lists: dict[str, CpuList] = {}
        # In an exclusive pool each CPU belongs to one list: its holder runs there alone.
        holder: dict[int, str] = {}
        with os.scandir(pool_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name == EXCLUSIVE or entry.name.startswith("."):
                continue
            list_path = f"{pool_path}/{entry.name}"
            if entry.is_symlink():
                raise StateError(f"{list_path} is a symlink, which kcm refuses inside its state")
            if not entry.is_dir(follow_symlinks=False):
                raise StateError(f"{list_path} is neither a CPU list directory nor 'exclusive'")
            try:
                cpus = cpulist.parse_name(entry.name)
            except ParseError as e:
                raise StateError(f"{list_path}: not a CPU list directory name: {e}") from None
            if exclusive:
                for cpu in cpus:
                    other = holder.setdefault(cpu, entry.name)
                    if other != entry.name:
                        raise StateError(
                            f"{pool_path}: the exclusive pool's lists {other} and {entry.name}"
                            f" share CPU {cpu}: remove or rename one of them"
                        )
            if trust.check_mode or trust.owners is not None:
                trust.vet(entry.stat(follow_symlinks=False), list_path, _S_IFDIR)
            tasks_path = f"{list_path}/{TASKS}"
            # The directory was seen as a real directory (not a symlink) just above, and the
            # pool directory, vetted, lets nobody else swap it; the file gets O_NOFOLLOW.
            tasks = _read_tasks(pool_fd, f"{entry.name}/{TASKS}", tasks_path, trust)
            cpu_lists[entry.name] = CpuList(entry.name, tasks)
        return Pool(name, exclusive, cpu_lists)

    def _list_fd(self, pool: str, cpu_list: str) -> int:
        pools_fd = self._pools_fd()
        try:
            pool_fd = _open_dir(pool, f"{self.path}/{POOLS}/{pool}", pools_fd, self._trust)
        finally:
            os.close(pools_fd)
        try:
            path = f"{self.path}/{POOLS}/{pool}/{cpu_list}"
            return _open_dir(cpu_list, path, pool_fd, self._trust)
        finally:
            os.close(pool_fd)

    def hidden_names(self, pool: str, cpu_list: str) -> list[str]:
        """The names of the list's owner and heir records and temp files, from one listing."""
        fd = self._list_fd(pool, cpu_list)
        try:
            hidden = (OWNER_PREFIX, HEIR_PREFIX, TMP_PREFIX)
            return [n for n in os.listdir(fd) if n.startswith(hidden)]
        finally:
            os.close(fd)

    def read_records(self, pool: str, cpu_list: str, names: list[str]) -> dict[str, str]:
        """The texts of a list's hidden records ``names`` (``.owner-``/``.heir-``), which must
        exist."""
        fd = self._list_fd(pool, cpu_list)
        try:
            base = f"{self.path}/{POOLS}/{pool}/{cpu_list}"
            return {name: _read_small(fd, name, f"{base}/{name}", self._trust) for name in names}
        finally:
            os.close(fd)

    def heir_texts(self, pool: str, cpu_list: str, pids: list[int]) -> dict[int, str]:
        """The heir records of those of ``pids`` that have one (PID -> text); for readers,
        to whom a record that is missing or unreadable is simply not there."""
        try:
            fd = self._list_fd(pool, cpu_list)
        except StateError:
            return {}
        try:
            base = f"{self.path}/{POOLS}/{pool}/{cpu_list}"
            found: dict[int, str] = {}
            for pid in pids:
                name = f"{HEIR_PREFIX}{pid}"
                try:
                    found[pid] = _read_small(fd, name, f"{base}/{name}", self._trust)
                except StateError:
                    continue
            return found
        finally:
            os.close(fd)

    def hidden_entries(self, pool: str, cpu_list: str) -> dict[str, str]:
        """The list's owner records (name -> content) and temp files (name -> "")."""
        fd = self._list_fd(pool, cpu_list)
        try:
            found: dict[str, str] = {}
            for name in os.listdir(fd):
                if name.startswith((OWNER_PREFIX, HEIR_PREFIX)):
                    path = f"{self.path}/{POOLS}/{pool}/{cpu_list}/{name}"
                    found[name] = _read_small(fd, name, path, self._trust)
                elif name.startswith(TMP_PREFIX):
                    found[name] = ""
            return found
        finally:
            os.close(fd)

    def read_hidden(self, name: str) -> str | None:
        """The text of the hidden file ``name`` at the top of the state (``.shield.json``, say);
        ``None`` if there is none. Vetted and bounded like every file kcm reads there."""
        if not name.startswith(".") or name.startswith(TMP_PREFIX) or "/" in name:
            raise AssertionError(name)
        try:
            return _read_small(self._fd, name, f"{self.path}/{name}", self._trust)
        except StateError:
            if not os.path.lexists(f"{self.path}/{name}"):
                return None
            raise


class StateDir(StateReader):
    """An existing state directory opened to change it: the exclusive lock and the writes.

    ``writer`` applies a writer's checks (see ``Trust``) from the start; an exclusive
    ``lock`` turns them on in any case. Every write starts only while the lock has been held
    for less than KCM_LOCK_TIMEOUT (``check_lock_held``), and any OSError of a write is a
    StateError naming the path. ``writes`` counts the changes made so far, so a caller that
    is stopped half-way can say what it did.
    """

    def __init__(self, path: str, *, writer: bool = False) -> None:
        super().__init__(path)
        if writer:
            self._trust = Trust(writer=True)
        self._writer = writer
        self.writes = 0

    def lock(self, timeout: float, *, shared: bool = False) -> None:
        """Take ``<dir>/lock``, waiting at most ``timeout`` seconds; then hold it as briefly."""
        if not shared and not self._writer:
            self._writer = True
            self._trust = Trust(writer=True)
            self._trust.vet(os.fstat(self._fd), self.path, _S_IFDIR)
        self._take_lock(timeout, shared=shared, writable=True)

    def lock_held_too_long(self) -> bool:
        return time.monotonic() > self._deadline

    def check_lock_held(self) -> None:
        """Refuse to start a write once the lock has been held past KCM_LOCK_TIMEOUT."""
        if self._lock_fd < 0:
            raise AssertionError("state written without the lock")
        if time.monotonic() > self._deadline:
            raise LockTimeoutError(
                f"held {self.path}/{LOCK} past KCM_LOCK_TIMEOUT ({self._timeout:g}s)"
            )

    # -- writing (callers hold the lock) ------------------------------------------------

    def add_task(self, pool: str, cpu_list: CpuList, pid: int, start_time: int | None) -> None:
        """Record ``pid`` on ``cpu_list`` (and its start time, so a reused PID can be told).

        All or nothing: if the tasks file cannot be written, the owner record written just
        before is removed again, and the state is as it was.
        """
        base = f"{self.path}/{POOLS}/{pool}/{cpu_list.cpus}"
        owner = f"{OWNER_PREFIX}{pid}"
        try:
            self.check_lock_held()
        except LockTimeoutError as e:
            raise LockTimeoutError(f"{e.message}; nothing was written") from None
        fd = self._list_fd(pool, cpu_list.cpus)
        try:
            if start_time is not None:
                try:
                    atomic_write(fd, owner, f"{start_time}\n", sync_dir=False)
                except OSError as e:
                    raise StateError(f"cannot write {base}/{owner}: {_why(e)}") from None
            try:
                self.check_lock_held()
                atomic_write(fd, TASKS, format_tasks([*cpu_list.tasks, pid]))
            except (OSError, LockTimeoutError) as e:
                if start_time is not None:
                    try:
                        os.unlink(owner, dir_fd=fd)
                    except OSError:
                        pass  # an invisible record of a PID on no list: reconcile removes it
                if isinstance(e, LockTimeoutError):
                    raise LockTimeoutError(f"{e.message}; nothing was written") from None
                raise StateError(f"cannot write {base}/{TASKS}: {_why(e)}") from None
        finally:
            os.close(fd)
        self.writes += 1
        cpu_list.tasks.append(pid)

    def set_tasks(
        self,
        pool: str,
        cpu_list: str,
        tasks: list[int],
        dropped: list[str],
        records: dict[str, str] | None = None,
    ) -> int:
        """Write ``tasks`` as the list's tasks, then remove the hidden records ``dropped``
        (names of ``.owner-``/``.heir-`` records of PIDs no longer on it).

        ``records`` (name -> text: ``.owner-<pid>``, ``.heir-<pid>``) are written first, each
        atomically, so that a PID is never on the list without the record that says who it
        is; a kill between leaves records of PIDs on no list, which reconcile removes.
        Returns how many of ``dropped`` were left because the lock's time ran out after the
        tasks file was written (reconcile removes them on its next pass).
        """
        self.check_lock_held()
        fd = self._list_fd(pool, cpu_list)
        base = f"{self.path}/{POOLS}/{pool}/{cpu_list}"
        try:
            for name, text in (records or {}).items():
                if not name.startswith((OWNER_PREFIX, HEIR_PREFIX)):
                    raise AssertionError(name)
                self.check_lock_held()
                try:
                    atomic_write(fd, name, text, sync_dir=False)
                except OSError as e:
                    raise StateError(f"cannot write {base}/{name}: {_why(e)}") from None
                self.writes += 1
            if records:
                self.check_lock_held()
            return self._write_tasks_at(fd, base, tasks, dropped)
        finally:
            os.close(fd)

    def remove_task(self, pool: str, cpu_list: str, pid: int) -> bool:
        """Remove ``pid`` from a list, re-reading its tasks first; False if it was not there."""
        self.check_lock_held()
        fd = self._list_fd(pool, cpu_list)
        try:
            base = f"{self.path}/{POOLS}/{pool}/{cpu_list}"
            tasks = _read_tasks(fd, TASKS, f"{base}/{TASKS}", self._trust)
            if pid not in tasks:
                return False
            rest = [t for t in tasks if t != pid]
            self._write_tasks_at(fd, base, rest, [f"{OWNER_PREFIX}{pid}"])
            return True
        finally:
            os.close(fd)

    def _write_tasks_at(self, fd: int, base: str, tasks: list[int], dropped: list[str]) -> int:
        """Replace a list's tasks, then unlink the records ``dropped``; one dir fsync.

        Each unlink is a write, so it waits for ``check_lock_held`` too: past the deadline
        the rest are left, and their number returned.
        """
        try:
            atomic_write(fd, TASKS, format_tasks(tasks), sync_dir=False)
        except OSError as e:
            raise StateError(f"cannot write {base}/{TASKS}: {_why(e)}") from None
        self.writes += 1
        left = 0
        for i, name in enumerate(dropped):
            if time.monotonic() > self._deadline:
                left = len(dropped) - i
                break
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StateError(f"cannot remove {base}/{name}: {_why(e)}") from None
            self.writes += 1
        _sync(fd, base)
        return left

    def remove_hidden(self, pool: str, cpu_list: str, names: list[str]) -> None:
        """Unlink records and temp files of a list, each only before the deadline."""
        base = f"{self.path}/{POOLS}/{pool}/{cpu_list}"
        self.check_lock_held()
        fd = self._list_fd(pool, cpu_list)
        try:
            for name in names:
                if not name.startswith((OWNER_PREFIX, HEIR_PREFIX, TMP_PREFIX)):
                    raise AssertionError(name)
                self.check_lock_held()
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise StateError(f"cannot remove {base}/{name}: {_why(e)}") from None
                self.writes += 1
            _sync(fd, base)
        finally:
            os.close(fd)

    def hold_run_lock(self, name: str, timeout: float | None) -> int | None:
        """flock(2) the hidden file ``name`` (``.shield.lock``; made if missing) exclusively,
        for a command whose run outlasts KCM_LOCK_TIMEOUT (a shield moves every task). Waits at
        most ``timeout`` seconds, or not at all for ``None`` (then ``None`` if it is held).
        Returns the descriptor: closing it releases the lock. The state lock stays free
        meanwhile, for everything else kcm does."""
        import fcntl

        if not name.startswith(".") or name.startswith(TMP_PREFIX) or "/" in name:
            raise AssertionError(name)
        path = f"{self.path}/{name}"
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, 0o644, dir_fd=self._fd)
        except OSError as e:
            raise StateError(f"cannot open {path}: {_why(e)}") from None
        fd = _vetted(fd, path, _S_IFREG, self._trust)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if timeout is None or not _wait_for_lock(fd, fcntl.LOCK_EX, timeout):
                os.close(fd)
                if timeout is None:
                    return None
                raise LockTimeoutError(
                    f"could not lock {path} within {timeout:g}s (KCM_LOCK_TIMEOUT): another"
                    " kcm shield or unshield is running"
                ) from None
        return fd

    def write_hidden(self, name: str, data: str) -> None:
        """Replace the hidden file ``name`` at the top of the state, atomically and durably;
        first remove the temp files of ``name`` that killed writers left."""
        if not name.startswith(".") or name.startswith(TMP_PREFIX) or "/" in name:
            raise AssertionError(name)
        self.check_lock_held()
        path = f"{self.path}/{name}"
        try:
            for entry in os.listdir(self._fd):
                # .tmp-<pid>-<n>-<name>, see atomic_write; the lock keeps live writers out.
                pid, _, rest = entry[len(TMP_PREFIX) :].partition("-")
                if (
                    entry.startswith(TMP_PREFIX)
                    and rest.partition("-")[2] == name
                    and pid.isdigit()
                    and not _pid_alive(int(pid))
                ):
                    try:
                        os.unlink(entry, dir_fd=self._fd)
                    except FileNotFoundError:
                        pass
            atomic_write(self._fd, name, data)
        except OSError as e:
            raise StateError(f"cannot write {path}: {_why(e)}") from None
        self.writes += 1

    def remove_hidden_file(self, name: str) -> None:
        """Remove the hidden file ``name`` at the top of the state, durably; gone is fine."""
        if not name.startswith(".") or name.startswith(TMP_PREFIX) or "/" in name:
            raise AssertionError(name)
        self.check_lock_held()
        try:
            os.unlink(name, dir_fd=self._fd)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StateError(f"cannot remove {self.path}/{name}: {_why(e)}") from None
        self.writes += 1
        _sync(self._fd, self.path)


def _sync(fd: int, path: str) -> None:
    try:
        _fsync_dir(fd)
    except OSError as e:
        raise StateError(f"cannot sync {path}: {_why(e)}") from None


def parse_owner(text: str) -> int | None:
    """The start time an owner record holds, or None if it is not one."""
    text = text.strip()
    return int(text) if text.isdigit() and text.isascii() and len(text) <= 20 else None


# -- creating a state directory (kcm init): in kcm.state_create, loaded only by init ------

INIT_TMP_PREFIX = ".kcm-init-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_initialized(path: str) -> bool:
    """Whether ``path`` holds a complete state: ``lock`` and ``pools`` present."""
    return os.path.isfile(os.path.join(path, LOCK)) and os.path.isdir(os.path.join(path, POOLS))


def create(path: str, pools: dict[str, Pool]) -> None:
    """Create a state directory holding ``pools``, all at once or not at all.

    A missing directory is built beside its final place and renamed into it. An existing empty
    directory (a mount point, say, where a rename cannot land) gets its ``pools`` tree built in
    a hidden directory inside and renamed into place last, after ``lock``: until that rename the
    directory holds no state. Leftovers of a killed ``init`` are cleaned up by the next one.
    Any file-system error is a StateError naming the path it happened at.
    """
    from kcm import state_create  # init's code, off every other command's start-up

    state_create.create(path, pools)
