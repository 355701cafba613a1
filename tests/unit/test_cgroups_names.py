"""Booking cgroups' names: state ids escaped as systemd escapes paths, booking and proc parsing."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcm.errors import UsageError
from kcm.host.cgroups import (
    MAX_STATE_ID,
    Booking,
    booking_at,
    escape_path,
    parse_booking_name,
    parse_parent,
    parse_proc_cgroup,
    state_id,
)

ESCAPED = {
    "/etc/kcm": "etc-kcm",
    "/": "-",
    "//etc//kcm/": "etc-kcm",
    "/tmp/pytest-of-root/x.y/.hid": "tmp-pytest\\x2dof\\x2droot-x.y-.hid",
    "/.kcm": "\\x2ekcm",
    "/var/lib/kcm state": "var-lib-kcm\\x20state",
    "/a:b_c": "a:b_c",
    "/ü": "\\xc3\\xbc",
    "/back\\slash": "back\\x5cslash",
}


@pytest.mark.parametrize(("path", "escaped"), ESCAPED.items(), ids=list(ESCAPED))
def test_state_paths_escape_as_systemd_escapes_them(path: str, escaped: str) -> None:
    assert escape_path(path) == escaped


@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="no systemd-escape here")
def test_the_table_agrees_with_systemd_escape_itself() -> None:
    paths = list(ESCAPED)
    out = subprocess.run(
        ["systemd-escape", "--path", *paths], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [ESCAPED[p] for p in paths]


@given(st.text(min_size=1).filter(lambda s: "\0" not in s))
def test_an_escaped_path_is_one_safe_path_component(path: str) -> None:
    name = escape_path(path)
    assert "/" not in name
    assert name not in (".", "..", "")
    assert name.isascii()


def test_a_short_state_id_is_the_escaped_path() -> None:
    assert state_id("/etc/kcm") == "etc-kcm"


def test_a_long_state_id_keeps_the_tail_and_gains_a_hash() -> None:
    path = "/tmp/pytest-of-root/pytest-1234/test_concurrent_isolates_never_share_a_list0/kcm"
    sid = state_id(path)
    assert len(sid) <= MAX_STATE_ID
    assert sid.endswith(f"_{sid.rsplit('_', 1)[1]}") and len(sid.rsplit("_", 1)[1]) == 8
    assert "list0-kcm_" in sid
    assert not sid.startswith("-")
    assert state_id(path) == sid  # stable across runs: it names a directory for good


def test_long_paths_with_the_same_tail_get_different_ids() -> None:
    tail = "/" + "x" * 80 + "/kcm"
    assert state_id("/a" + tail) != state_id("/b" + tail)


@pytest.mark.parametrize(
    ("value", "parent"),
    [("kcm", "kcm"), ("/kcm/", "kcm"), ("system.slice/kcm-bookings.service", None)],
)
def test_the_parent_is_a_relative_path(value: str, parent: str | None) -> None:
    assert parse_parent(value) == (parent or value)


@pytest.mark.parametrize("value", ["", "/", "../x", "kcm/../..", "a/./b"])
def test_a_parent_outside_the_hierarchy_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_parent(value)
    assert "KCM_CGROUP_PARENT" in caught.value.message


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("4242-981234", (4242, 981234)),
        ("1-0", (1, 0)),
        ("0-5", None),
        ("4242", None),
        ("4242-", None),
        ("-5", None),
        ("42-x", None),
        ("\uff14\uff12-1", None),  # full-width digits are digits to str.isdigit, not to kcm
        ("1" * 11 + "-1", None),
    ],
)
def test_booking_names(name: str, ids: tuple[int, int] | None) -> None:
    assert parse_booking_name(name) == ids


V1_TEXT = (
    "12:pids:/user.slice\n9:name=systemd:/user.slice/x.scope\n"
    "3:cpuset:/kcm/etc-kcm/dataplane/4,12/4242-99\n1:cpu,cpuacct:/\n0::/user.slice/x.scope\n"
)


def test_the_v1_line_is_the_cpuset_one() -> None:
    assert parse_proc_cgroup(V1_TEXT, "v1") == "/kcm/etc-kcm/dataplane/4,12/4242-99"


def test_the_v2_line_is_the_unified_one() -> None:
    assert parse_proc_cgroup(V1_TEXT, "v2") == "/user.slice/x.scope"
    assert parse_proc_cgroup("0::/kcm/s/p/1/2-3\n", "v2") == "/kcm/s/p/1/2-3"


def test_a_cpuset_sharing_a_hierarchy_with_other_controllers_is_found() -> None:
    assert parse_proc_cgroup("5:cpu,cpuset,memory:/a\n", "v1") == "/a"


def test_no_line_for_the_hierarchy_is_none() -> None:
    assert parse_proc_cgroup("0::/\n", "v1") is None
    assert parse_proc_cgroup("3:cpuset:/\n", "v2") is None
    assert parse_proc_cgroup("", "v2") is None


@pytest.mark.parametrize(
    ("path", "booking"),
    [
        ("/kcm/etc-kcm/dataplane/4,12/4242-99", Booking("dataplane", "4,12", 4242, 99)),
        ("/kcm/etc-kcm/infra/0-2/7-1/inner/deeper", Booking("infra", "0-2", 7, 1)),
        ("/kcm/etc-kcm/dataplane/4,12", None),
        ("/kcm/etc-kcm/dataplane/4,12/junk", None),
        ("/kcm/other-state/dataplane/4,12/4242-99", None),
        ("/kcm/etc-kcm/dataplane/12,12/4242-99", None),  # no list the state can have
        # CMK wrote lists in any order, and the list level is named as the state names it.
        ("/kcm/etc-kcm/dataplane/12,4/4242-99", Booking("dataplane", "12,4", 4242, 99)),
        ("/kcm/etc-kcm/.hidden/4/1-1", None),
        ("/", None),
        ("/user.slice", None),
    ],
)
def test_the_booking_of_a_cgroup_path(path: str, booking: Booking | None) -> None:
    assert booking_at(path, "kcm", "etc-kcm") == booking


def test_the_booking_of_a_path_under_a_nested_parent() -> None:
    path = "/system.slice/kcm-bookings.service/etc-kcm/dataplane/3/10-20"
    parent = "system.slice/kcm-bookings.service"
    assert booking_at(path, parent, "etc-kcm") == Booking("dataplane", "3", 10, 20)
    assert booking_at(path, "kcm", "etc-kcm") is None
