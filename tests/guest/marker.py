"""Where a ``guest``-marked test runs: only inside the guest of its mode, never on the host.

tests/conftest.py calls these from its hooks. On the host a test marked
``@pytest.mark.guest("v2")`` is skipped (tests/guest/test_boot.py boots the guest and runs it
there); inside the guest only the tests marked for its mode are selected, and the counts go
back to the host on the status port.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

MODES = ("v1", "v2")  # harness.KERNEL_FOR's keys; kept here so conftest imports stay light


def guest_mode(proc: Path = Path("/proc")) -> str | None:
    """The mode this pytest runs in the guest (``v1``/``v2``), or None on the host.

    KCM_IN_GUEST alone is not trusted: guest tests move processes and IRQs, so the kernel's
    own command line must say this is the project's guest too.
    """
    mode = os.environ.get("KCM_IN_GUEST")
    if not mode:
        return None
    if mode not in MODES:
        raise pytest.UsageError(f"KCM_IN_GUEST={mode}: want one of {', '.join(MODES)}")
    if f"kcm.cgroup={mode}" not in (proc / "cmdline").read_text().split():
        raise pytest.UsageError(
            f"KCM_IN_GUEST={mode}, but this kernel is not the project's guest "
            f"(no kcm.cgroup={mode} on its command line); guest tests never run on a host"
        )
    return mode


def marked_modes(item: pytest.Item) -> set[str] | None:
    """The modes an item's guest marks name, or None when it has none."""
    marks = list(item.iter_markers("guest"))
    if not marks:
        return None
    modes = {mode for mark in marks for mode in mark.args}
    if not modes or not modes <= set(MODES):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.guest wants modes from {', '.join(MODES)}, "
            f"got {sorted(modes) or 'none'}"
        )
    return modes


def select(config: pytest.Config, items: list[pytest.Item], mode: str | None) -> None:
    """Skip guest tests on the host; in the guest, deselect every test not marked for it."""
    if mode is None:
        for item in items:
            modes = marked_modes(item)
            if modes is not None:
                names = "/".join(sorted(modes))
                reason = f"guest test ({names}): tests/guest/test_boot.py runs it in the guest"
                item.add_marker(pytest.mark.skip(reason=reason))
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        modes = marked_modes(item)
        (keep if modes is not None and mode in modes else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def report_counts(stats: dict[str, list[object]]) -> None:
    """In the guest, send pytest's outcome counts to the host on the status port."""
    port = os.environ.get("KCM_GUEST_STATUS")
    if not port or not os.environ.get("KCM_IN_GUEST"):
        return
    names = {"error": "errors"}
    keys = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected")
    counts = {names.get(key, key): len(stats.get(key, [])) for key in keys}
    with open(port, "w") as f:
        f.write(f"pytest {json.dumps(counts, sort_keys=True)}\n")
