"""Readers and cleaners of kernel files for the tests that run inside the guest."""

from __future__ import annotations

import os
import time
from pathlib import Path


def guest_cpus() -> int:
    """The number of vCPUs the harness gave the guest (-smp)."""
    return int(os.environ["KCM_GUEST_SMP"])


def status_field(text: str, name: str) -> str:
    """One field of a /proc/<pid>/status text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise KeyError(name)


def remove_cgroup(path: Path) -> None:
    """rmdir a cgroup, waiting briefly for a task its parent just reaped to leave it."""
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
    path.rmdir()
