"""kcm audit on this machine's real /proc, /sys and cgroupfs, read only: it finds a process this
test pinned onto the dataplane CPU with taskset, exits 1, and (strace says) writes nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KCM, kcm_env

# Every system call that could change a file, a directory, a cgroup or an affinity.
CHANGING = (
    "creat,mkdir,mkdirat,rmdir,unlink,unlinkat,rename,renameat,renameat2,truncate,ftruncate,"
    "chmod,fchmod,fchmodat,chown,fchown,fchownat,lchown,link,linkat,symlink,symlinkat,"
    "mknod,mknodat,utimensat,setxattr,fsetxattr,lsetxattr,sched_setaffinity"
)
WRITING = "write,pwrite64,writev,pwritev,pwritev2,sendfile,splice,copy_file_range"
OPENING = "open,openat,openat2"
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
CALL = re.compile(r"^\d+\s+(\w+)\((.*)$")

pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None
    or shutil.which("taskset") is None
    or 1 not in os.sched_getaffinity(0),
    reason="needs strace, taskset and CPU 1",
)


def writes_in(trace: str) -> list[str]:
    """The traced calls that change anything: opens for writing, writes to anything but
    stdout and stderr, and every call of CHANGING."""
    found = []
    for line in trace.splitlines():
        m = CALL.match(line)
        if m is None or "resumed>" in line:
            continue
        name, args = m.groups()
        if name in OPENING.split(","):
            if any(flag in args for flag in WRITE_FLAGS):
                found.append(line)
        elif name in WRITING.split(","):
            if args.split(",", 1)[0].strip() not in ("1", "2"):
                found.append(line)
        else:
            found.append(line)
    return found


def test_writes_in_sees_a_write() -> None:
    # The checker itself can fail: a trace with writes is caught.
    trace = (
        '12  openat(AT_FDCWD, "/proc/1/stat", O_RDONLY|O_CLOEXEC) = 3\n'
        '12  write(1, "ok", 2) = 2\n'
        '12  openat(AT_FDCWD, "/sys/fs/cgroup/cpuset/tasks", O_WRONLY|O_CLOEXEC) = 4\n'
        '12  write(4, "5", 1) = 1\n'
        '12  mkdir("/sys/fs/cgroup/cpuset/x", 0755) = 0\n'
    )
    assert len(writes_in(trace)) == 3


def test_audit_of_this_host_finds_a_taskset_pinned_process_and_writes_nothing(
    tmp_path: Path, state2: str
) -> None:
    # state2's dataplane list is CPU 1, like this machine's second vCPU.
    pinned = subprocess.Popen(
        ["taskset", "-c", "1", "sh", "-c", "while :; do sleep 0.02; done"],
        stdin=subprocess.DEVNULL,
    )
    try:
        trace = tmp_path / "trace"
        env = kcm_env(
            KCM_PROC_FS="/proc",
            KCM_SYS_FS="/sys",
            KCM_CGROUP_FS="/sys/fs/cgroup",
            PYTHONDONTWRITEBYTECODE="1",
        )
        argv = [KCM, "audit", f"--conf-dir={state2}", "--interval=0.5", "--output=json"]
        calls = ",".join((OPENING, WRITING, CHANGING))
        proc = subprocess.run(
            ["strace", "-f", "-qq", "-o", str(trace), "-e", f"trace={calls}", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 1, proc.stderr
        doc = json.loads(proc.stdout)
        (cpu,) = doc["cpus"]
        assert cpu["cpu"] == 1
        mine = [t for t in cpu["threads"] if t["pid"] == pinned.pid]
        assert len(mine) == 1, [t["pid"] for t in cpu["threads"]][:20]
        assert (mine[0]["allowed"], mine[0]["ran"], mine[0]["command"]) == ("1", "yes", "sh")
        assert mine[0]["cgroup"] is not None
        assert doc["clean"] is False
        text = trace.read_text()
        assert f"/proc/{pinned.pid}/task/{pinned.pid}/stat" in text  # the trace saw the reads
        assert writes_in(text) == []
    finally:
        pinned.kill()
        pinned.wait()
