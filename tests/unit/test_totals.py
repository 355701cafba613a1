"""The reconcile totals' format: what a pass adds, the round trip, and what parsing refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcm import totals
from kcm.errors import ParseError, StateError

START = totals.Totals(pid=42, started=1000.0, interval=60.0)


def test_a_pass_adds_what_it_did_and_a_failure_counts_as_a_pass() -> None:
    one = START.after_pass(1060.0, 0.25, ok=True, pids_freed=3, lists_handed_over=1)
    two = one.after_pass(1120.0, 30.0, ok=False)
    assert (two.passes, two.failed_passes, two.pids_freed, two.lists_handed_over) == (2, 1, 3, 1)
    assert (two.last_pass_ended, two.last_pass_seconds, two.last_pass_ok) == (1120.0, 30.0, False)
    assert (two.pid, two.started, two.interval) == (42, 1000.0, 60.0)


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.integers(0, 10**6),
            st.integers(0, 100),
            st.integers(0, 100),
            st.floats(0, 1e4),
        ),
        max_size=20,
    )
)
def test_what_is_written_reads_back_the_same(
    passes: list[tuple[bool, int, int, int, float]],
) -> None:
    t = START
    for i, (ok, freed, handed, removed, seconds) in enumerate(passes):
        t = t.after_pass(
            1000.0 + i,
            seconds,
            ok=ok,
            pids_freed=freed,
            lists_handed_over=handed,
            cgroups_removed=removed,
        )
    assert totals.parse(totals.to_text(t)) == t


def doc(**change: object) -> str:
    d = json.loads(totals.to_text(START.after_pass(1060.0, 0.5, ok=True)))
    d.update(change)
    return json.dumps(d)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format": "kcm-reconcile-totals"', "not JSON"),
        ("[]", "not a kcm-reconcile-totals record"),
        (doc(format="kcm-shield"), "not a kcm-reconcile-totals record"),
        (doc(version=2), "version 2, this kcm reads 1"),
        (doc(passes=-1), "'passes' is not a count: -1"),
        (doc(pids_freed=1.5), "'pids_freed' is not a count: 1.5"),
        (doc(pids_freed=True), "'pids_freed' is not a count: True"),
        (doc(started="now"), "'started' is not a number of seconds"),
        (doc(interval=-1), "'interval' is not a number of seconds"),
        (doc(last_pass_ok="yes"), "'last_pass_ok' is not true, false or null"),
        (doc(failed_passes=2), "more failed passes than passes"),
        (doc(last_pass_ended=None), "'last_pass_ended' must be set once there was a pass"),
        (doc(extra=1), "unknown fields ['extra']"),
    ],
)
def test_malformed_totals_are_refused(text: str, message: str) -> None:
    with pytest.raises(ParseError) as raised:
        totals.parse(text)
    assert message in str(raised.value)


def test_read_names_the_file_and_none_is_no_loop() -> None:
    assert totals.read(None, "/etc/kcm/.reconcile.json") is None
    with pytest.raises(StateError) as raised:
        totals.read("{}", "/etc/kcm/.reconcile.json")
    assert raised.value.message.startswith("/etc/kcm/.reconcile.json: invalid reconcile totals")
