"""The shield record in the state directory: ``.shield.json``, loaded, saved and removed under
the state's lock, each save atomic and durable (``kcm.state`` writes it: temp file, fsync,
rename, fsync the directory), so a ``kill -9`` leaves the old record or the new one."""

from __future__ import annotations

from kcm.errors import ParseError, StateError
from kcm.fence import record as rec
from kcm.state import StateDir, StateReader, lock_timeout


class StateRecordStore:
    """The record of the state directory ``conf_dir``."""

    def __init__(self, conf_dir: str) -> None:
        self.conf_dir = conf_dir
        self.path = f"{conf_dir}/{rec.NAME}"

    def load(self) -> rec.Record | None:
        with StateReader(self.conf_dir) as state:
            state.lock(lock_timeout())
            text = state.read_hidden(rec.NAME)
        if text is None:
            return None
        try:
            return rec.parse(text)
        except ParseError as e:
            raise StateError(f"{self.path}: invalid shield record: {e}") from None

    def save(self, record: rec.Record) -> None:
        with StateDir(self.conf_dir, writer=True) as state:
            state.lock(lock_timeout())
            state.write_hidden(rec.NAME, rec.to_text(record))

    def remove(self) -> None:
        with StateDir(self.conf_dir, writer=True) as state:
            state.lock(lock_timeout())
            state.remove_hidden_file(rec.NAME)
