"""The shield record in a real state directory: hidden, atomic, durable, strictly read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kcm.errors import StateError
from kcm.fence import record
from kcm.fence.store import StateRecordStore
from kcm.model import describe_json
from kcm.state import StateDir
from tests.fixtures.state import SEED_STATE, build_state


def test_shield_record_is_hidden_atomic_and_durable(tmp_path: Path) -> None:
    conf = build_state(str(tmp_path / "kcm"), SEED_STATE)
    with StateDir(conf) as state:
        described = describe_json(conf, state.read_pools())
    store = StateRecordStore(conf)
    assert store.load() is None
    rec = record.Record("shielding", "b", "cgroup-v1", frozenset({3}), frozenset({0, 1, 2}), ())
    store.save(rec)
    assert store.load() == rec
    assert sorted(os.listdir(conf)) == [".shield.json", "lock", "pools"]  # no temp file left
    assert os.stat(f"{conf}/.shield.json").st_mode & 0o777 == 0o644
    with StateDir(conf) as state:  # the seed's view of the state does not see it
        assert describe_json(conf, state.read_pools()) == described
    dead, live = ".tmp-4194303-1-.shield.json", f".tmp-{os.getpid()}-9-.shield.json"
    Path(conf, dead).write_text("{")  # a writer killed mid-write; the next save removes it
    Path(conf, live).write_text("{")  # a writer that lives is left alone
    store.save(rec)
    assert sorted(os.listdir(conf)) == [".shield.json", live, "lock", "pools"]
    os.unlink(f"{conf}/{live}")
    store.remove()
    store.remove()  # gone is fine
    assert sorted(os.listdir(conf)) == ["lock", "pools"]
    Path(conf, ".shield.json").write_text("[]")
    with pytest.raises(StateError, match=r"\.shield\.json: invalid shield record"):
        store.load()


SAVER = """
import sys
from kcm.fence import record
from kcm.fence.store import StateRecordStore
from kcm.fence.changes import Pin
store = StateRecordStore(sys.argv[1])
n = 0
while True:
    n += 1
    pins = tuple(Pin(p, p, p, "0-2") for p in range(1, 2 + n % 400))
    store.save(record.Record("shielding", "b", "cgroup-v1", frozenset({3}), frozenset({0}), pins))
"""


def test_kill_9_while_saving_never_leaves_a_torn_record(tmp_path: Path) -> None:
    import random
    import signal
    import subprocess
    import sys
    import time

    conf = build_state(str(tmp_path / "kcm"), SEED_STATE)
    store = StateRecordStore(conf)
    rng = random.Random(11)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, conf])
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{conf}/{record.NAME}") and time.monotonic() < deadline:
            time.sleep(0.01)  # the first round: until the writer has started saving
        time.sleep(rng.random() * 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = store.load()  # parses, whole
        assert loaded is not None and loaded.phase == "shielding"
    # A killed writer may leave its temp file; the next save removes it.
    store.save(record.Record("shielded", "b", "cgroup-v1", frozenset({3}), frozenset({0}), ()))
    assert sorted(os.listdir(conf)) == [".shield.json", "lock", "pools"]
