"""Text from outside (a guest's host name, a window name someone typed) shown on one line,
with every control or invisible character escaped, so it can never drive the terminal."""

from __future__ import annotations

SHOWN = 64  # characters of a value a message shows


def shown(value: str) -> str:
    """``value`` quoted with every control or invisible character escaped, cut to a line."""
    if len(value) > SHOWN:
        return f"{value[:SHOWN]!r}... ({len(value)} characters)"
    return repr(value)
