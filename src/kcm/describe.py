"""``kcm describe``: the state directory as JSON, in the seed's exact layout."""

from __future__ import annotations

import os

from kcm.model import describe_json
from kcm.state import StateDir, lock_timeout


def describe(conf_dir: str) -> str:
    with StateDir(conf_dir) as state:
        state.lock(lock_timeout(), shared=True)
        pools = state.read_pools()
    return describe_json(os.path.normpath(conf_dir), pools)
