"""What holds a CPU list, and what to do about it: recorded tasks, bookings, leftovers; pure.

A list is held while any process of a booking of it lives. What kcm can see of that:

- the list's **tasks** (the seed's file), each PID judged alive by its start time, known from
  its **owner record** (``.owner-<pid>``: ``<start>``, written by kcm isolate without a
  cgroup), its **heir record** (``.heir-<pid>``: ``<start> <booking>[ <process group>]``, for
  a process that took a booking over) or, for a kcm isolate that booked with a cgroup and
  wrote no record, its booking's name ``<pid>-<start>``; a PID with none of them is judged
  by existence alone, as the seed does;
- the list's **booking cgroups** (``<pid>-<start>`` of the kcm isolate that made each), with
  the processes in them;
- without a cgroup, the **process group** a leftover's record names.

``plan`` turns what was seen of one list into what release, reclaim and reconcile write: the
dead tasks to drop, the live leftovers to hand the list over to (so that the tasks file names
a live process of every booking that still holds it), and the empty bookings of dead kcm
processes to remove. It is a function of values; reading them is ``kcm.reclaim``'s job.

Plain ``__slots__`` classes: a leftover's hand-over at the end of ``kcm isolate`` imports this.
"""

from __future__ import annotations


class Record:
    """An owner record: the process's start time, and for a hand-over the booking it took
    over (``<pid>-<start>`` of the kcm isolate that made it) and, without a cgroup, the
    command's process group whose members may take it over again."""

    __slots__ = ("booking", "pgid", "start")

    def __init__(self, start: int, booking: str | None = None, pgid: int | None = None) -> None:
        self.start = start
        self.booking = booking
        self.pgid = pgid

    def _key(self) -> tuple[int, str | None, int | None]:
        return (self.start, self.booking, self.pgid)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Record{self._key()!r}"

    def text(self) -> str:
        """The record as written: ``<start>[ <booking>[ <pgid>]]`` and a newline."""
        fields = [str(self.start)]
        if self.booking is not None:
            fields.append(self.booking)
            if self.pgid is not None:
                fields.append(str(self.pgid))
        return " ".join(fields) + "\n"


def parse_record(text: str) -> Record | None:
    """An owner record's fields, or None if the text is not one."""
    fields = text.split()
    if not 1 <= len(fields) <= 3 or not all(f.isascii() and len(f) <= 24 for f in fields):
        return None
    start = fields[0]
    if not (start.isdigit() and len(start) <= 20):
        return None
    booking = fields[1] if len(fields) > 1 else None
    if booking is not None and booking_ids(booking) is None:
        return None
    pgid = None
    if len(fields) == 3:
        if not (fields[2].isdigit() and 0 < len(fields[2]) <= 10) or int(fields[2]) == 0:
            return None
        pgid = int(fields[2])
    return Record(int(start), booking, pgid)


def booking_ids(name: str) -> tuple[int, int] | None:
    """``(pid, start)`` of a booking's name ``<pid>-<start>``, else None."""
    pid, dash, start = name.partition("-")
    if not (dash and pid.isdigit() and start.isdigit() and pid.isascii() and start.isascii()):
        return None
    if len(pid) > 10 or len(start) > 20 or int(pid) == 0:
        return None
    return int(pid), int(start)


def booking_name(pid: int, start: int) -> str:
    return f"{pid}-{start}"


class Proc:
    """What procfs says of a PID: alive or not, and its start time when it could be read
    (``None``: alive but unreadable, which counts as alive with any start time)."""

    __slots__ = ("alive", "pid", "start")

    def __init__(self, pid: int, alive: bool, start: int | None) -> None:
        self.pid = pid
        self.alive = alive
        self.start = start

    def __repr__(self) -> str:
        return f"Proc({self.pid!r}, {self.alive!r}, {self.start!r})"


class Seen:
    """One list as read: its tasks, their records, the procfs view of every PID involved,
    its booking cgroups (name -> the PIDs in them) and the live members of process groups."""

    __slots__ = ("bookings", "groups", "procs", "records", "tasks")

    def __init__(
        self,
        tasks: list[int],
        records: dict[int, Record],
        procs: dict[int, Proc],
        bookings: dict[str, list[int]] | None = None,
        groups: dict[int, list[int]] | None = None,
    ) -> None:
        self.tasks = tasks
        self.records = records
        self.procs = procs
        self.bookings = {} if bookings is None else bookings
        self.groups = {} if groups is None else groups


class HandOver:
    """A live leftover that takes a booking over: its PID joins the tasks, with this record."""

    __slots__ = ("pid", "record")

    def __init__(self, pid: int, record: Record) -> None:
        self.pid = pid
        self.record = record

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HandOver) and (self.pid, self.record) == (
            other.pid,
            other.record,
        )

    def __repr__(self) -> str:
        return f"HandOver({self.pid!r}, {self.record!r})"


class Plan:
    """What to do with one list: ``tasks`` is what its tasks file becomes (the live tasks,
    then the hand-overs), ``dead`` the tasks dropped, ``remove`` the booking cgroups to
    remove (empty, and their kcm gone), ``held_bookings`` the bookings with live processes."""

    __slots__ = ("dead", "hand_overs", "held_bookings", "kept", "remove")

    def __init__(
        self,
        kept: list[int],
        dead: list[int],
        hand_overs: list[HandOver],
        remove: list[str],
        held_bookings: list[str],
    ) -> None:
        self.kept = kept
        self.dead = dead
        self.hand_overs = hand_overs
        self.remove = remove
        self.held_bookings = held_bookings

    @property
    def tasks(self) -> list[int]:
        return [*self.kept, *(h.pid for h in self.hand_overs)]

    @property
    def changes(self) -> bool:
        """Whether the tasks file must be written."""
        return bool(self.dead or self.hand_overs)

    @property
    def free(self) -> bool:
        """Nothing holds the list any more."""
        return not self.tasks

    def __repr__(self) -> str:
        return (
            f"Plan(kept={self.kept!r}, dead={self.dead!r}, hand_overs={self.hand_overs!r},"
            f" remove={self.remove!r}, held_bookings={self.held_bookings!r})"
        )


def _alive(seen: Seen, pid: int, starts: set[int]) -> bool:
    """Whether ``pid`` lives as the process ``starts`` (the start times it may have) names."""
    proc = seen.procs.get(pid)
    if proc is None or not proc.alive:
        return False
    return not starts or proc.start is None or proc.start in starts


def _oldest(seen: Seen, pids: list[int], taken: set[int]) -> Proc | None:
    """The live process of ``pids`` that started first (a daemon outlives its helpers)."""
    live = [seen.procs[p] for p in pids if p not in taken and p in seen.procs]
    live = [p for p in live if p.alive and p.start is not None]
    return min(live, key=lambda p: (p.start or 0, p.pid)) if live else None


def plan(seen: Seen) -> Plan:
    """What holds the list seen, and what to write: see ``Plan``.

    - A task lives when procfs shows it alive with the start time its record (or its
      booking's name) gives; without either, when it exists.
    - A booking with live processes is accounted for when a live task is its kcm isolate or
      took it over; otherwise its oldest live process takes it over. A booking without live
      processes whose kcm isolate is gone is removed; one whose kcm lives stays (it is about
      to be entered, or just left).
    - A dead task whose record names a process group with live members (no cgroup) is taken
      over by the oldest of them, unless a live task already holds that group.
    """
    booking_starts: dict[int, set[int]] = {}
    for name in seen.bookings:
        ids = booking_ids(name)
        if ids is not None:
            booking_starts.setdefault(ids[0], set()).add(ids[1])
    kept: list[int] = []
    dead: list[int] = []
    dead_set: set[int] = set()
    accounted: set[str] = set()
    groups_held: set[int] = set()
    for pid in seen.tasks:
        record = seen.records.get(pid)
        starts = {record.start} if record is not None else booking_starts.get(pid, set())
        if not _alive(seen, pid, starts):
            if pid not in dead_set:
                dead.append(pid)
                dead_set.add(pid)
            continue
        kept.append(pid)
        if record is not None and record.booking is not None:
            accounted.add(record.booking)
            if record.pgid is not None:
                groups_held.add(record.pgid)
        else:
            proc = seen.procs[pid]
            for start in booking_starts.get(pid, set()):
                if proc.start is None or proc.start == start:
                    accounted.add(booking_name(pid, start))
    taken = set(kept)
    hand_overs: list[HandOver] = []
    remove: list[str] = []
    held: list[str] = []
    for name in sorted(seen.bookings):
        members = [p for p in seen.bookings[name] if _alive(seen, p, set())]
        if members:
            held.append(name)
            if name not in accounted:
                heir = _oldest(seen, members, taken)
                if heir is not None and heir.start is not None:
                    hand_overs.append(HandOver(heir.pid, Record(heir.start, name)))
                    taken.add(heir.pid)
                    accounted.add(name)
            continue
        ids = booking_ids(name)
        if ids is not None and not _alive(seen, ids[0], {ids[1]}):
            remove.append(name)
    for pid in dead:
        record = seen.records.get(pid)
        if record is None or record.pgid is None or record.pgid in groups_held:
            continue
        heir = _oldest(seen, seen.groups.get(record.pgid, []), taken)
        if heir is not None and heir.start is not None:
            hand_overs.append(HandOver(heir.pid, Record(heir.start, record.booking, record.pgid)))
            taken.add(heir.pid)
            groups_held.add(record.pgid)
    return Plan(kept, dead, hand_overs, remove, held)
