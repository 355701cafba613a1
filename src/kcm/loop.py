"""Run a pass every interval until SIGTERM or SIGINT; stop after the pass in flight."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable

from kcm.errors import KcmError


def run_every(interval: float, one_pass: Callable[[], str], name: str) -> int:
    """Call ``one_pass`` every ``interval`` seconds, logging the line it returns.

    A pass that fails is logged and the loop goes on (the next pass may succeed: a lock held
    too long, an API server restarting). SIGTERM/SIGINT end the loop with exit status 0 once
    the pass in flight has finished.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        passes = 0
        while not stop.is_set():
            started = time.monotonic()
            passes += 1
            try:
                line = one_pass()
            except KcmError as e:
                line = f"error: {e.message}"
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            print(f"kcm {name}: {stamp} pass {passes}: {line}", file=sys.stderr, flush=True)
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
        print(f"kcm {name}: stopping after {passes} pass(es)", file=sys.stderr, flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
