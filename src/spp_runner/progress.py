"""What spp-wakeup shows while a launch waits: one line per step, on stderr.

On a terminal the line is redrawn in place (carriage return) with the seconds waited so far,
then left with the step's result; anywhere else (a log, a pipe) a step is two plain lines,
the start and the result, so that nothing in a log is a control character.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """The progress lines of one launch; a ``Progress(None)`` shows nothing (``--quiet``)."""

    def __init__(
        self,
        stream: TextIO | None,
        *,
        tty: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self._step: str | None = None
        self._what = ""
        self._began = 0.0
        self._shown_seconds = -1
        self._drawn = 0  # length of the line now on the terminal

    @classmethod
    def on(cls, stream: TextIO) -> Progress:
        """Progress on ``stream``, in place when it is a terminal."""
        return cls(stream, tty=stream.isatty())

    def begin(self, step: str, what: str) -> None:
        """Step ``step`` starts to wait for ``what``."""
        self.end()
        self._step, self._what = step, what
        self._began = self._clock()
        self._shown_seconds = -1
        if self._tty:
            self.tick()
        else:
            self._write(f"{step}: waiting for {what}\n")

    def tick(self) -> None:
        """On a terminal, redraw the line when the whole seconds waited have changed."""
        if not self._tty or self._step is None:
            return
        seconds = int(self._clock() - self._began)
        if seconds == self._shown_seconds:
            return
        self._shown_seconds = seconds
        line = f"{self._step}: waiting for {self._what} ({seconds} s)"
        self._redraw(line[: self._width()])

    def elapsed(self) -> float:
        return self._clock() - self._began

    def ready(self) -> None:
        self._result(f"ready after {self.elapsed():.1f} s")

    def failed(self, why: str) -> None:
        self._result(f"failed after {self.elapsed():.1f} s: {why}")

    def timed_out(self, timeout: float, missing: str) -> None:
        self._result(f"timed out after {timeout:g} s: {missing}")

    def end(self) -> None:
        """Close a line left open (an interrupt), so that what follows starts on its own."""
        if self._step is not None and self._tty and self._drawn:
            self._write("\n")
        self._step = None
        self._drawn = 0

    def _result(self, text: str) -> None:
        if self._step is None:
            return
        line = f"{self._step}: {text}"
        if self._tty:
            self._redraw(line)
            self._write("\n")
        else:
            self._write(line + "\n")
        self._step = None
        self._drawn = 0

    def _redraw(self, line: str) -> None:
        # Spaces over what is left of a longer line before: no escape sequence is needed.
        pad = " " * max(0, self._drawn - len(line))
        self._write(f"\r{line}{pad}")
        self._drawn = len(line)

    def _width(self) -> int:
        # One less than the terminal: a line that fills it wraps, and "\r" then goes back to
        # its last row only.
        columns = 0
        if self._stream is not None:
            try:
                columns = os.get_terminal_size(self._stream.fileno()).columns
            except (OSError, ValueError):  # not a terminal after all, or no descriptor
                pass
        # A terminal that does not know its size (a fresh pty) says 0.
        return columns - 1 if columns > 20 else 79

    def _write(self, text: str) -> None:
        if self._stream is None:
            return
        self._stream.write(text)
        self._stream.flush()
