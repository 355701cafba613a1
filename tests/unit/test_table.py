"""describe's table: rows and text as pure functions of pools, NUMA nodes and task details."""

from __future__ import annotations

import re

import pytest

from kcm import table
from kcm.model import FREE, HELD, CpuList, Pool, list_state
from kcm.table import TaskInfo

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pools_of(spec: dict[str, tuple[bool, dict[str, list[int]]]]) -> dict[str, Pool]:
    return {
        name: Pool(name, exclusive, {cpus: CpuList(cpus, tasks) for cpus, tasks in lists.items()})
        for name, (exclusive, lists) in spec.items()
    }


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (599, "9m59s"),
        (600, "10m"),
        (179 * 60 + 59, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 5 * 60, "3h5m"),
        (8 * 3600, "8h"),
        (47 * 3600 + 59 * 60, "47h"),
        (48 * 3600, "2d"),
        (2 * 86400 + 5 * 3600, "2d5h"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (740 * 86400, "2y10d"),
        (8 * 365 * 86400 + 3 * 86400, "8y"),
        (None, "?"),
        (-1, "?"),
        (float("nan"), "?"),
    ],
)
def test_ages_read_like_kubectl(seconds: float | None, shown: str) -> None:
    assert table.human_age(seconds) == shown


@pytest.mark.parametrize(
    ("tasks", "shown", "more"),
    [
        ([], [], 0),
        ([1], [1], 0),
        ([1, 2, 3, 4], [1, 2, 3, 4], 0),  # a "(+1 more)" row would save nothing
        ([1, 2, 3, 4, 5], [1, 2, 3], 2),
        (list(range(1, 10001)), [1, 2, 3], 9997),
    ],
)
def test_long_task_lists_are_summarised(tasks: list[int], shown: list[int], more: int) -> None:
    assert table.shown_tasks(tasks) == (shown, more)


@pytest.mark.parametrize(
    ("cpus", "numa", "cell"),
    [
        ("4,12", {4: 0, 12: 0}, "0"),
        ("0-3", {0: 0, 1: 0, 2: 1, 3: 1}, "0-1"),
        ("0,8", {0: 0, 8: 2}, "0,2"),
        ("4,12", {}, "-"),  # sysfs shows no NUMA nodes
        ("4,12", {0: 0}, "-"),  # none of the list's CPUs in any node
        ("4,12", {4: 1}, "1"),  # the nodes of the CPUs that have one
    ],
)
def test_numa_cell(cpus: str, numa: dict[int, int], cell: str) -> None:
    assert table.numa_cell(cpus, numa) == cell


def test_list_state_is_held_while_the_tasks_file_names_a_pid() -> None:
    assert list_state(CpuList("4,12", [])) == FREE
    assert list_state(CpuList("4,12", [2000])) == HELD


def test_rows_order_pools_by_name_and_lists_by_lowest_cpu() -> None:
    pools = pools_of(
        {
            "infra": (False, {"0-1": []}),
            "dataplane": (True, {"10,26": [], "2,18": [7], "9,25": []}),
        }
    )
    rows = table.rows(pools, {}, {7: TaskInfo("testpmd", 65.0)})
    assert rows == [
        table.HEADER,
        ("dataplane", "yes", "2,18", "-", "held", "7", "testpmd", "65s"),
        ("dataplane", "yes", "9,25", "-", "free", "", "", ""),
        ("dataplane", "yes", "10,26", "-", "free", "", "", ""),
        ("infra", "no", "0-1", "-", "free", "", "", ""),
    ]


def test_further_tasks_continue_below_their_list_and_gone_ones_show_a_question_mark() -> None:
    pools = pools_of({"infra": (False, {"0": [10, 11, 12, 13, 14, 15]})})
    tasks = {10: TaskInfo("sshd", 4 * 3600.0), 12: TaskInfo("bash", None)}
    assert table.rows(pools, {0: 0}, tasks)[1:] == [
        ("infra", "no", "0", "0", "held", "10", "sshd", "4h"),
        ("", "", "", "", "", "11", "?", "?"),
        ("", "", "", "", "", "12", "bash", "?"),
        ("", "", "", "", "", "", "(+3 more)", ""),
    ]
    assert table.shown_pids(pools) == [10, 11, 12]


def test_render_aligns_columns_two_spaces_apart_without_trailing_blanks() -> None:
    text = table.render(
        [
            ("A", "BB", "C"),
            ("long", "", ""),
            ("x", "y", "zzz"),
        ]
    )
    assert text == "A     BB  C\nlong\nx     y   zzz\n"


def test_colour_only_decorates_and_keeps_the_columns() -> None:
    pools = pools_of({"dataplane": (True, {"4,12": [2000], "5,13": [], "6,14": [9]})})
    rows = table.rows(pools, {}, {2000: TaskInfo("testpmd", 3.0)})
    plain = table.render(rows)
    coloured = table.render(rows, colour=True)
    assert "\x1b[" not in plain
    assert ANSI.sub("", coloured) == plain
    lines = coloured.splitlines()
    assert lines[0].startswith("\x1b[1mPOOL")  # a bold header
    assert "\x1b[33mheld" in lines[1]  # held in yellow
    assert "\x1b[32mfree" in lines[2]  # free in green
    assert "\x1b[2m?" in lines[3]  # a gone task dimmed


def test_a_command_name_cannot_send_escape_sequences_to_the_terminal() -> None:
    pools = pools_of({"infra": (False, {"0": [5]})})
    rows = table.rows(pools, {}, {5: TaskInfo("\x1b[2Jevil\n", 1.0)})
    assert rows[1][6] == "\\x1b[2Jevil\\n"
    assert "\x1b" not in table.render(rows)
