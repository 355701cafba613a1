"""Questions to a running DPDK process through its telemetry socket (DPDK 20.05 and later).

The primary answers on ``<runtime dir>/dpdk_telemetry.v2``: a SOCK_SEQPACKET socket that
greets with a JSON object, then answers each command (``/mempool/list``) with JSON.
"""

from __future__ import annotations

import json
import os
import socket

SOCKET_NAME = "dpdk_telemetry.v2"


def query(run_dir: str, command: str, timeout: float = 1.0) -> tuple[int | None, object]:
    """The greeting's pid and the answer to ``command``; OSError/ValueError if there is none."""
    path = os.path.join(run_dir, SOCKET_NAME)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        s.connect(path)
        greeting = json.loads(s.recv(16384))
        s.send(command.encode())
        answer = json.loads(s.recv(1 << 16))
    pid = greeting.get("pid") if isinstance(greeting, dict) else None
    value = answer.get(command) if isinstance(answer, dict) else None
    return (pid if isinstance(pid, int) else None), value


def has_socket(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, SOCKET_NAME))


def mempools(run_dir: str) -> tuple[int | None, list[str]] | None:
    """(pid, mempool names) of the process serving telemetry; None when it cannot be asked."""
    try:
        pid, names = query(run_dir, "/mempool/list")
    except (OSError, ValueError):
        return None
    if not isinstance(names, list):
        return pid, []
    return pid, [n for n in names if isinstance(n, str)]
