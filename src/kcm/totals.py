"""The reconcile loop's running totals: ``<state dir>/.reconcile.json``, rewritten after every
pass, read by ``kcm metrics`` (another process) as Prometheus counters.

Format (JSON, one object)::

    {"format": "kcm-reconcile-totals", "version": 1,
     "pid": <the loop's PID>, "started": <when the loop started, Unix seconds>,
     "interval": <its --interval, seconds>,
     "passes": N, "failed_passes": N, "pids_freed": N, "lists_handed_over": N,
     "cgroups_removed": N,
     "last_pass_ended": <Unix seconds>, "last_pass_seconds": <its duration>,
     "last_pass_ok": true | false}

The counts start at 0 when the loop starts (``started`` is their reset point) and count every
pass since, failed ones included in ``passes``. The loop never reads the file, so a hand-edited
one is replaced by the next pass. Only the loop writes it: a one-shot ``kcm reconcile``
leaves the state as it was. A hidden file, so the seed's readers never see it; written like
every state file (temp file, fsync, rename, fsync the directory) under the state's lock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from kcm.errors import KcmError, ParseError, StateError
from kcm.state import StateDir, lock_timeout

NAME = ".reconcile.json"
FORMAT = "kcm-reconcile-totals"
VERSION = 1
COUNTS = ("passes", "failed_passes", "pids_freed", "lists_handed_over", "cgroups_removed")
# Recording waits at most this long for the lock: a pass is not held up by it, and a pass that
# cannot record its totals loses nothing (the next one writes them, cumulative).
RECORD_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class Totals:
    """What the loop has done since ``started``."""

    pid: int
    started: float
    interval: float
    passes: int = 0
    failed_passes: int = 0
    pids_freed: int = 0
    lists_handed_over: int = 0
    cgroups_removed: int = 0
    last_pass_ended: float | None = None
    last_pass_seconds: float | None = None
    last_pass_ok: bool | None = None

    def after_pass(
        self,
        ended: float,
        seconds: float,
        *,
        ok: bool,
        pids_freed: int = 0,
        lists_handed_over: int = 0,
        cgroups_removed: int = 0,
    ) -> Totals:
        return replace(
            self,
            passes=self.passes + 1,
            failed_passes=self.failed_passes + (0 if ok else 1),
            pids_freed=self.pids_freed + pids_freed,
            lists_handed_over=self.lists_handed_over + lists_handed_over,
            cgroups_removed=self.cgroups_removed + cgroups_removed,
            last_pass_ended=ended,
            last_pass_seconds=seconds,
            last_pass_ok=ok,
        )


def to_text(totals: Totals) -> str:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "pid": totals.pid,
        "started": totals.started,
        "interval": totals.interval,
        **{name: getattr(totals, name) for name in COUNTS},
        "last_pass_ended": totals.last_pass_ended,
        "last_pass_seconds": totals.last_pass_seconds,
        "last_pass_ok": totals.last_pass_ok,
    }
    return json.dumps(doc, sort_keys=True) + "\n"


def _count(doc: dict[str, object], key: str) -> int:
    value = doc.get(key)
    if type(value) is not int or value < 0:
        raise ParseError(f"{key!r} is not a count: {value!r}")
    return value


def _seconds(doc: dict[str, object], key: str) -> float:
    value = doc.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ParseError(f"{key!r} is not a number of seconds: {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ParseError(f"{key!r} is not a number of seconds: {value!r}")
    return float(value)


def _maybe_seconds(doc: dict[str, object], key: str) -> float | None:
    return None if doc.get(key) is None else _seconds(doc, key)


def parse(text: str) -> Totals:
    """Totals read back; anything malformed is a ParseError (the caller names the file)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ParseError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ParseError(f"not a {FORMAT} record")
    if doc.get("version") != VERSION:
        raise ParseError(f"version {doc.get('version')!r}, this kcm reads {VERSION}")
    known = {"format", "version", "pid", "started", "interval", *COUNTS}
    known |= {"last_pass_ended", "last_pass_seconds", "last_pass_ok"}
    unknown = set(doc) - known
    if unknown:
        raise ParseError(f"unknown fields {sorted(unknown)}")
    ok = doc.get("last_pass_ok")
    if ok is not None and not isinstance(ok, bool):
        raise ParseError(f"'last_pass_ok' is not true, false or null: {ok!r}")
    totals = Totals(
        pid=_count(doc, "pid"),
        started=_seconds(doc, "started"),
        interval=_seconds(doc, "interval"),
        last_pass_ended=_maybe_seconds(doc, "last_pass_ended"),
        last_pass_seconds=_maybe_seconds(doc, "last_pass_seconds"),
        last_pass_ok=ok,
        **{name: _count(doc, name) for name in COUNTS},
    )
    if totals.failed_passes > totals.passes:
        raise ParseError("more failed passes than passes")
    if (totals.last_pass_ended is None) != (totals.passes == 0):
        raise ParseError("'last_pass_ended' must be set once there was a pass, and only then")
    return totals


def read(text: str | None, path: str) -> Totals | None:
    """The totals of the file at ``path`` whose text is ``text`` (``None``: no loop ever ran
    there), or a StateError naming it."""
    if text is None:
        return None
    try:
        return parse(text)
    except ParseError as e:
        raise StateError(f"{path}: invalid reconcile totals: {e}") from None


def record(conf_dir: str, totals: Totals) -> None:
    """Replace the state's totals with ``totals``, under the exclusive lock (waiting at most
    ``RECORD_WAIT`` seconds for it); a KcmError says why it could not."""
    with StateDir(conf_dir) as state:
        state.lock(min(RECORD_WAIT, lock_timeout()))
        state.write_hidden(NAME, to_text(totals))


def try_record(conf_dir: str, totals: Totals) -> str | None:
    """``record``, or why it failed: the loop goes on either way."""
    try:
        record(conf_dir, totals)
    except KcmError as e:
        return e.message
    return None
