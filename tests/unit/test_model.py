"""describe's hand-written JSON is byte-identical to json.dumps(sort_keys=True, indent=2)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from kcm.model import CpuList, Pool, describe, describe_json

names = st.text(min_size=1, max_size=12)
cpu_lists = st.dictionaries(
    st.text(alphabet="0123456789,-", min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=4194304), max_size=5),
    max_size=5,
)
pools = st.dictionaries(names, st.tuples(st.booleans(), cpu_lists), max_size=4)


@given(st.text(max_size=20), pools)
def test_describe_json_matches_json_module(path: str, raw: dict) -> None:
    state = {
        name: Pool(name, excl, {k: CpuList(k, v) for k, v in lists.items()})
        for name, (excl, lists) in raw.items()
    }
    expected = json.dumps(describe(path, state), sort_keys=True, indent=2) + "\n"
    assert describe_json(path, state) == expected


def test_quotes_and_unicode_in_path() -> None:
    state = {'a"b': Pool('a"b', True, {"0": CpuList("0", [1])})}
    path = "/tmp/ü\\x"
    expected = json.dumps(describe(path, state), sort_keys=True, indent=2) + "\n"
    assert describe_json(path, state) == expected
