"""cpu-list parsing and formatting, as the kernel writes and reads them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcm import cpulist
from kcm.errors import ParseError


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", set()),
        ("0", {0}),
        ("4,12", {4, 12}),
        ("0-2,8-10", {0, 1, 2, 8, 9, 10}),
        ("0-1", {0, 1}),
        (" 3,11\n", {3, 11}),
        ("7,5,6", {5, 6, 7}),
        ("2-2", {2}),
    ],
)
def test_parse(text: str, cpus: set[int]) -> None:
    assert cpulist.parse(text) == cpus


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ([], ""),
        ([4, 12], "4,12"),
        ([0, 1, 2, 8, 9, 10], "0-2,8-10"),
        ([0, 1], "0-1"),
        ([4, 5, 12, 13], "4-5,12-13"),
        ([15, 7, 7], "7,15"),
    ],
)
def test_format(cpus: list[int], text: str) -> None:
    assert cpulist.format(cpus) == text


@pytest.mark.parametrize(
    "bad",
    # "\u0661" is an Arabic-Indic digit: str.isdigit() and int() both accept it.
    ["a", "1,", ",1", "1-", "-1", "3-1", "1 2", "1,,2", "0x3", "99999999", "\u0661", "+1", "1--2"],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ParseError):
        cpulist.parse(bad)


@pytest.mark.parametrize("digits", [4300, 4301, 100_000])
def test_parse_refuses_a_cpu_number_too_long_for_int(digits: int) -> None:
    # Found by stress/fuzz.py: int() raised a plain ValueError past 4300 digits.
    with pytest.raises(ParseError, match="out of range"):
        cpulist.parse("1" * digits)
    with pytest.raises(ParseError, match="out of range"):
        cpulist.parse(f"0-{'9' * digits}")


def test_parse_leading_zeros_are_the_same_cpu() -> None:
    assert cpulist.parse("0" * 5000 + "7") == {7}
    with pytest.raises(ParseError, match="out of range"):
        cpulist.parse("0" * 5000 + "65536")


@given(st.frozensets(st.integers(min_value=0, max_value=4095), max_size=200))
def test_round_trip(cpus: frozenset[int]) -> None:
    text = cpulist.format(cpus)
    assert cpulist.parse(text) == cpus
    assert cpulist.format(cpulist.parse(text)) == text
    if cpus:
        assert cpulist.is_canonical(text)


@given(st.text(alphabet="0123456789,- x\n", max_size=30))
def test_parse_only_raises_parse_error(text: str) -> None:
    try:
        cpus = cpulist.parse(text)
    except ParseError:
        return
    assert cpulist.parse(cpulist.format(cpus)) == cpus


@given(st.frozensets(st.integers(min_value=0, max_value=300)))
def test_mask_round_trip(cpus: frozenset[int]) -> None:
    assert cpulist.from_mask(cpulist.to_mask(cpus)) == cpus


def test_widest_masks() -> None:
    assert cpulist.from_mask(1 << 65535) == {65535}
    assert cpulist.from_mask((1 << 65536) - 1) == set(range(65536))
    assert cpulist.to_mask(cpulist.from_mask((1 << 65536) - 2)) == (1 << 65536) - 2


def test_a_negative_mask_too_long_for_str_is_a_parse_error() -> None:
    # Found by stress/fuzz.py: the message formatted the mask in decimal, which str() refuses
    # past 4300 digits.
    with pytest.raises(ParseError, match="negative"):
        cpulist.from_mask(-(1 << 20_000))


def test_mask_examples() -> None:
    assert cpulist.from_mask(0x0C) == {2, 3}
    assert cpulist.to_mask({8, 9}) == 0x300


# -- CPU list directory names: the strict form ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cpus"),
    [
        ("0", {0}),
        ("4,12", {4, 12}),
        ("0-2,8-10", {0, 1, 2, 8, 9, 10}),
        ("0-1", {0, 1}),
        ("0,1", {0, 1}),
        ("2,6,1,5", {1, 2, 5, 6}),  # CMK wrote lists in this order
        ("1,0", {0, 1}),
        ("10-11,3", {3, 10, 11}),
        ("65535", {65535}),
    ],
)
def test_list_names_kcm_and_cmk_write(name: str, cpus: set[int]) -> None:
    assert cpulist.parse_name(name) == cpus


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "names no CPUs"),
        ("01", "leading zero"),
        ("00", "leading zero"),
        ("1-01", "leading zero"),
        ("1-1", "does not run from a lower to a higher CPU"),
        ("2-1", "does not run from a lower to a higher CPU"),
        ("1,1", "names a CPU twice"),
        ("0-2,1", "names a CPU twice"),
        ("1,0-1", "names a CPU twice"),
        (" 1", "not a CPU"),
        ("1 ", "not a CPU"),
        ("1,", "empty element"),
        (",1", "empty element"),
        ("1,,2", "empty element"),
        ("1-", "not a CPU"),
        ("-1", "not a CPU"),
        ("1-2-3", "not a CPU"),
        ("+1", "not a CPU"),
        ("\u0661", "not a CPU"),  # a digit, but not an ASCII one
        ("65536", "out of range"),
        ("9" * 5000, "out of range"),
    ],
)
def test_list_names_that_are_refused(name: str, why: str) -> None:
    with pytest.raises(ParseError, match=why):
        cpulist.parse_name(name)


@given(st.frozensets(st.integers(min_value=0, max_value=300), min_size=1))
def test_every_formatted_list_is_a_name(cpus: frozenset[int]) -> None:
    assert cpulist.parse_name(cpulist.format(cpus)) == cpus


@given(st.text(alphabet="0123456789,- x\n", max_size=30))
def test_a_name_is_a_cpu_list_that_parse_reads_alike(text: str) -> None:
    try:
        cpus = cpulist.parse_name(text)
    except ParseError:
        return
    assert cpulist.parse(text) == cpus
