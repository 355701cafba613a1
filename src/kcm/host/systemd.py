"""systemctl, as the fence uses it: a unit's property read and set for this boot only.

Typed values in, argv lists out (no shell); ``run`` is the one place that starts systemctl.
``--runtime`` keeps a change out of ``/etc/systemd/system.control``, so nothing kcm sets survives
a reboot, as nothing else the shield sets does.
"""

from __future__ import annotations

import subprocess

from kcm.errors import EnvironmentProblem

SYSTEMCTL = "systemctl"


def show_property_argv(unit: str, name: str, program: str = SYSTEMCTL) -> list[str]:
    return [program, "show", f"--property={name}", "--value", "--", unit]


def set_property_argv(unit: str, name: str, value: str, program: str = SYSTEMCTL) -> list[str]:
    """``systemctl set-property --runtime -- <unit> <name>=<value>``; an empty value resets the
    property to its default (for AllowedCPUs: every CPU)."""
    return [program, "set-property", "--runtime", "--", unit, f"{name}={value}"]


def run(argv: list[str]) -> str:
    """Run ``argv``; its stdout, stripped. A failure is an EnvironmentProblem with systemctl's
    own message."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
        )
    except FileNotFoundError:
        raise EnvironmentProblem(f"cannot run {argv[0]}: no such program") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EnvironmentProblem(f"cannot run {' '.join(argv)}: {e}") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise EnvironmentProblem(f"{' '.join(argv)} failed: {why}")
    return done.stdout.strip()
