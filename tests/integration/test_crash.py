"""kill -9 at random instants: the state always parses, and one reconcile frees every list."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import KCM, kcm_env, run_kcm
from tests.fixtures.state import build_state, tree


def test_sigkill_of_isolate_at_random_instants(tmp_path: Path) -> None:
    conf = build_state(
        str(tmp_path / "kcm"),
        {"dataplane": (True, {"0": "", "1": ""}), "infra": (False, {"0": ""})},
    )
    env = kcm_env(KCM_PROC_FS="/proc")
    rng = random.Random(20261123)
    for trial in range(30):
        pool = rng.choice(["dataplane", "infra"])
        proc = subprocess.Popen(
            [KCM, "isolate", f"--conf-dir={conf}", f"--pool={pool}", "sleep 0.05"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0, 0.06))
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # kcm; its command has a group of its own
        except ProcessLookupError:
            pass
        proc.wait()
        described = run_kcm("describe", f"--conf-dir={conf}")
        assert described.code == 0, f"trial {trial}: {described.err}"
    subprocess.run(["pkill", "-KILL", "-f", "^sleep 0.05$"], check=False)
    time.sleep(0.1)
    result = run_kcm("reconcile", f"--conf-dir={conf}", env=env)
    assert result.code == 0, result.err
    assert tree(conf) == {
        "dataplane": True,
        "dataplane/0": [],
        "dataplane/1": [],
        "infra": False,
        "infra/0": [],
    }
    for dirpath, _, filenames in os.walk(Path(conf, "pools")):
        assert [f for f in filenames if f.startswith(".")] == [], dirpath


def test_sigkill_of_init_leaves_a_state_or_nothing(tmp_path: Path) -> None:
    from tests.fixtures.sysfs import DUAL_SOCKET_20_CORE_HT, build_sysfs

    sys_root = build_sysfs(str(tmp_path / "sys"), DUAL_SOCKET_20_CORE_HT)
    env = kcm_env(KCM_SYS_FS=sys_root)
    rng = random.Random(7)
    for trial in range(20):
        conf = tmp_path / f"kcm{trial}"
        proc = subprocess.Popen(
            [KCM, "init", f"--conf-dir={conf}"], env=env, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0, 0.08))
        proc.kill()
        proc.wait()
        if conf.exists():
            described = run_kcm("describe", f"--conf-dir={conf}")
            assert described.code == 0, described.err
            assert len(tree(str(conf))) == 9  # three pools, six lists: complete
        else:
            again = run_kcm("init", f"--conf-dir={conf}", env=env)  # cleans the leftovers
            assert again.code == 0, again.err
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
