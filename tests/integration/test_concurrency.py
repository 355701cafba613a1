"""Many isolates at once on an exclusive pool never hold the same list at the same time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import KCM, kcm_env
from tests.fixtures.state import build_state, tree

RECORD = (
    "import os, sys, time; t0 = time.time(); time.sleep(0.15);"
    " print(os.environ['KCM_CPUS_ASSIGNED'], sorted(os.sched_getaffinity(0)), t0, time.time())"
)


def test_exclusive_lists_are_never_shared(tmp_path: Path) -> None:
    # One exclusive list per CPU of this machine (lists of an exclusive pool may not share a
    # CPU); 24 isolates race for them.
    conf = build_state(str(tmp_path / "kcm"), {"dataplane": (True, {"0": "", "1": ""})})
    procs = [
        subprocess.Popen(
            [
                KCM,
                "isolate",
                f"--conf-dir={conf}",
                "--pool=dataplane",
                f'exec {sys.executable} -c "{RECORD}"',
            ],
            env=kcm_env(KCM_PROC_FS="/proc"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(24)
    ]
    held: list[tuple[str, float, float]] = []
    refused = 0
    for p in procs:
        out, err = p.communicate(timeout=60)
        if p.returncode == 0:
            name, rest = out.split(" ", 1)
            affinity, start, end = rest.rsplit(" ", 2)
            assert affinity == {"0": "[0]", "1": "[1]"}[name]
            held.append((name, float(start), float(end)))
        else:
            assert p.returncode == 4, err
            assert err.startswith("kcm: error: no free CPU list in exclusive pool"), err
            assert "Traceback" not in err
            refused += 1
    assert held, "no isolate ran"
    assert refused + len(held) == 24
    for i, (name_a, s_a, e_a) in enumerate(held):
        for name_b, s_b, e_b in held[i + 1 :]:
            if name_a == name_b:
                assert e_a <= s_b or e_b <= s_a, f"{name_a} held twice at once"
    assert tree(conf) == {"dataplane": True, "dataplane/0": [], "dataplane/1": []}


def test_shared_pool_under_load_loses_no_pid(tmp_path: Path) -> None:
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, {"0": "", "1": ""})})
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [KCM, "isolate", f"--conf-dir={conf}", "--pool=infra", "sleep 0.3"],
            env=kcm_env(KCM_PROC_FS="/proc"),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert time.monotonic() - started < 30
    assert tree(conf) == {"infra": False, "infra/0": [], "infra/1": []}
