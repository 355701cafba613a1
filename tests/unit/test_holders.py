"""What holds a CPU list: the pure plan release, reclaim and reconcile write (kcm.holders)."""

from __future__ import annotations

import pytest

from kcm.holders import HandOver, Proc, Record, Seen, parse_record, plan

KCM = 100  # the kcm isolate that made booking "100-5000"
BOOKING = "100-5000"


def procs(*live: tuple[int, int]) -> dict[int, Proc]:
    return {pid: Proc(pid, True, start) for pid, start in live}


def test_a_live_kcm_in_its_booking_holds_the_list() -> None:
    seen = Seen([KCM], {}, procs((KCM, 5000), (101, 5001)), {BOOKING: [KCM, 101]})
    got = plan(seen)
    assert (got.kept, got.dead, got.hand_overs, got.remove) == ([KCM], [], [], [])
    assert got.held_bookings == [BOOKING]
    assert not got.changes


def test_a_reused_pid_is_dead_by_the_start_time_in_its_bookings_name() -> None:
    seen = Seen([KCM], {}, procs((KCM, 9999)), {BOOKING: []})
    got = plan(seen)
    assert (got.kept, got.dead, got.remove) == ([], [KCM], [BOOKING])
    assert got.free


def test_the_oldest_leftover_of_a_gone_kcm_takes_the_booking_over() -> None:
    seen = Seen([KCM], {}, procs((102, 5003), (101, 5001)), {BOOKING: [102, 101]})
    got = plan(seen)
    assert got.dead == [KCM]
    assert got.hand_overs == [HandOver(101, Record(5001, BOOKING))]
    assert got.tasks == [101]
    assert got.remove == []
    assert not got.free


def test_a_heir_that_died_hands_the_booking_on_to_the_next_leftover() -> None:
    seen = Seen([101], {101: Record(5001, BOOKING)}, procs((102, 5003)), {BOOKING: [102]})
    got = plan(seen)
    assert (got.dead, got.hand_overs) == ([101], [HandOver(102, Record(5003, BOOKING))])


def test_a_live_heir_accounts_for_its_booking() -> None:
    seen = Seen(
        [101], {101: Record(5001, BOOKING)}, procs((101, 5001), (102, 5003)), {BOOKING: [101, 102]}
    )
    got = plan(seen)
    assert (got.kept, got.hand_overs) == ([101], [])


def test_an_empty_booking_of_a_live_kcm_stays_and_of_a_dead_one_goes() -> None:
    # The live one is about to be entered (or was just left); the dead one was killed early.
    seen = Seen([KCM], {}, procs((KCM, 5000)), {BOOKING: [], "200-6000": []})
    got = plan(seen)
    assert got.kept == [KCM]
    assert got.remove == ["200-6000"]


def test_a_free_list_with_a_populated_booking_is_handed_to_it() -> None:
    # Its tasks were cleared by hand while the workload ran.
    seen = Seen([], {}, procs((101, 5001)), {BOOKING: [101]})
    got = plan(seen)
    assert got.hand_overs == [HandOver(101, Record(5001, BOOKING))]


def test_without_a_cgroup_the_commands_group_holds_the_list() -> None:
    record = Record(5000, BOOKING, 300)
    seen = Seen([KCM], {KCM: record}, procs((301, 5010)), groups={300: [301]})
    got = plan(seen)
    assert got.hand_overs == [HandOver(301, Record(5010, BOOKING, 300))]
    empty = plan(Seen([KCM], {KCM: record}, {}, groups={300: []}))
    assert empty.free


def test_a_pid_with_no_record_and_no_booking_is_judged_by_existence() -> None:
    assert plan(Seen([7], {}, procs((7, 1)))).kept == [7]
    assert plan(Seen([7], {}, {7: Proc(7, False, None)})).dead == [7]


def test_an_unreadable_live_pid_counts_as_alive() -> None:
    assert plan(Seen([KCM], {}, {KCM: Proc(KCM, True, None)}, {BOOKING: []})).kept == [KCM]


def test_a_pid_twice_on_a_list_is_dropped_once() -> None:
    assert plan(Seen([7, 7, 8], {}, procs((8, 1)))).dead == [7]


@pytest.mark.parametrize(
    ("text", "record"),
    [
        ("5000\n", Record(5000)),
        ("5000 100-4000\n", Record(5000, "100-4000")),
        ("5000 100-4000 300\n", Record(5000, "100-4000", 300)),
        ("", None),
        ("x", None),
        ("5000 nobooking", None),
        ("5000 100-4000 0", None),
        ("5000 100-4000 300 extra", None),
    ],
)
def test_records_parse_strictly(text: str, record: Record | None) -> None:
    assert parse_record(text) == record
    if record is not None:
        assert parse_record(record.text()) == record
