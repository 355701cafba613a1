"""The progress lines of a launch, on a fake clock: in place on a terminal, plain otherwise."""

from __future__ import annotations

import io

import pytest

from spp_runner.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_output_is_a_start_line_then_a_result_line() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, clock=clock)
    progress.begin("controller", "127.0.0.1:5555 and 127.0.0.1:6666 to accept connections")
    for _ in range(25):
        clock.now += 0.1
        progress.tick()
    progress.ready()
    progress.begin("primary", "its packet memory")
    clock.now += 30
    progress.timed_out(30, "/var/run/dpdk/spp/config never appeared")
    assert out.getvalue() == (
        "controller: waiting for 127.0.0.1:5555 and 127.0.0.1:6666 to accept connections\n"
        "controller: ready after 2.5 s\n"
        "primary: waiting for its packet memory\n"
        "primary: timed out after 30 s: /var/run/dpdk/spp/config never appeared\n"
    )


def test_on_a_terminal_one_line_is_redrawn_each_second_then_left_with_the_result() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=True, clock=clock)
    progress.begin("sec1", "the secondary to attach")
    for _ in range(21):  # 2.1 s of polls: the line changes at 1 s and at 2 s only
        clock.now += 0.1
        progress.tick()
    progress.failed("the process exited with status 1")
    assert out.getvalue() == (
        "\rsec1: waiting for the secondary to attach (0 s)"
        "\rsec1: waiting for the secondary to attach (1 s)"
        "\rsec1: waiting for the secondary to attach (2 s)"
        "\rsec1: failed after 2.1 s: the process exited with status 1\n"
    )


def test_a_shorter_line_covers_what_is_left_of_a_longer_one() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=True, clock=clock)
    progress.begin("vhost11", "vhost sockets /tmp/sock0, then QEMU")
    clock.now += 0.25
    progress.ready()
    waiting = "vhost11: waiting for vhost sockets /tmp/sock0, then QEMU (0 s)"
    result = "vhost11: ready after 0.2 s"
    assert out.getvalue() == f"\r{waiting}\r{result}{' ' * (len(waiting) - len(result))}\n"


def test_a_line_longer_than_the_terminal_is_cut_so_that_it_never_wraps() -> None:
    out = io.StringIO()  # no terminal size to be had: 80 columns
    progress = Progress(out, tty=True, clock=Clock())
    progress.begin("primary", "x" * 200)
    assert out.getvalue() == "\r" + f"primary: waiting for {'x' * 200}"[:79]


def test_an_interrupted_wait_ends_its_line() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True, clock=Clock())
    progress.begin("primary", "packet memory")
    progress.end()
    assert out.getvalue() == "\rprimary: waiting for packet memory (0 s)\n"
    progress.end()  # nothing open: nothing more
    assert out.getvalue().count("\n") == 1


def test_quiet_progress_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(None, clock=Clock())
    progress.begin("primary", "packet memory")
    progress.tick()
    progress.timed_out(30, "it never appeared")
    progress.end()
    assert capsys.readouterr() == ("", "")  # not on stdout or stderr either
