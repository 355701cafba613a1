"""The shield record: ``<state dir>/.shield.json``, what ``kcm shield`` changed and what was
there before. A hidden file, so the seed's readers never see it; written like every state file
(temp file, fsync, rename, fsync the directory) under the state lock, before any change.

Format (JSON, one object)::

    {"format": "kcm-shield", "version": 1,
     "phase": "shielding" | "shielded" | "unshielding",
     "boot_id": "<the kernel's random boot id when the record was made>",
     "backend": "cgroup-v1" | "cgroup-v2" | "systemd" | "affinity",
     "dataplane": "<cpu list>", "housekeeping": "<cpu list>",
     "changes": [<change>, ...],       in the order shield applies them
     "stale": [<change>, ...]}         recorded earlier, no longer planned: to restore

Each change is ``kcm.fence.changes.to_json`` of one change: ``op`` and its fields, among them the
exact ``prior`` value read before kcm touched the target. The undo is computed from the record
alone (``kcm.fence.plan.undo_steps``).

The state machine (``kcm.fence.protocol`` drives it; README "shield" argues it)::

    (none) --shield: record "shielding" first--> shielding --all ensured--> shielded
    shielding | shielded | unshielding --shield--> shielding (rewritten) --> shielded
    shielding | shielded | unshielding --unshield: record "unshielding"--> unshielding
    unshielding --all restored, record removed--> (none)
    any record whose boot_id is not this boot's --> (none): nothing of it survived the reboot
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kcm import cpulist
from kcm.errors import ParseError, StateError
from kcm.fence.changes import Change, from_json, to_json

NAME = ".shield.json"
FORMAT = "kcm-shield"
VERSION = 1
SHIELDING = "shielding"
SHIELDED = "shielded"
UNSHIELDING = "unshielding"
PHASES = (SHIELDING, SHIELDED, UNSHIELDING)
BACKENDS = ("cgroup-v1", "cgroup-v2", "systemd", "affinity")


@dataclass(frozen=True, slots=True)
class Record:
    phase: str
    boot_id: str
    backend: str
    dataplane: frozenset[int]
    housekeeping: frozenset[int]
    changes: tuple[Change, ...]
    stale: tuple[Change, ...] = field(default=())


def to_text(record: Record) -> str:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "phase": record.phase,
        "boot_id": record.boot_id,
        "backend": record.backend,
        "dataplane": cpulist.format(record.dataplane),
        "housekeeping": cpulist.format(record.housekeeping),
        "changes": [to_json(c) for c in record.changes],
        "stale": [to_json(c) for c in record.stale],
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def _load(text: str) -> dict[str, object]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ParseError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ParseError(f"not a {FORMAT} record")
    if doc.get("version") != VERSION:
        raise ParseError(f"record version {doc.get('version')!r}, this kcm reads {VERSION}")
    if doc.get("phase") not in PHASES:
        raise ParseError(f"unknown phase {doc.get('phase')!r}")
    return doc


def parse(text: str) -> Record:
    """A record read back; anything malformed is a ParseError (the caller names the file)."""
    doc = _load(text)
    known = {"format", "version", "phase", "boot_id", "backend", "dataplane", "housekeeping"}
    unknown = set(doc) - known - {"changes", "stale"}
    if unknown:
        raise ParseError(f"unknown fields {sorted(unknown)}")
    for key in ("boot_id", "backend", "dataplane", "housekeeping"):
        if not isinstance(doc.get(key), str):
            raise ParseError(f"{key!r} is not a string")
    if doc["backend"] not in BACKENDS:
        raise ParseError(f"unknown backend {doc['backend']!r}")
    lists = {}
    for key in ("changes", "stale"):
        value = doc.get(key)
        if not isinstance(value, list):
            raise ParseError(f"{key!r} is not a list")
        lists[key] = tuple(from_json(c) for c in value)
    return Record(
        phase=str(doc["phase"]),
        boot_id=str(doc["boot_id"]),
        backend=str(doc["backend"]),
        dataplane=cpulist.parse(str(doc["dataplane"])),
        housekeeping=cpulist.parse(str(doc["housekeeping"])),
        changes=lists["changes"],
        stale=lists["stale"],
    )


def phase_of(text: str, path: str) -> str:
    """The phase of the record at ``path`` (for the audit), or a StateError naming it."""
    try:
        return parse(text).phase
    except ParseError as e:
        raise StateError(f"{path}: invalid shield record: {e}") from None
