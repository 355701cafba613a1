"""CPU list directory names: strict cpu lists, and no CPU twice in an exclusive pool, for every
command that reads a pool."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kcm.errors import StateError
from kcm.k8s import discover
from tests.conftest import Result, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import build_state, snapshot, tree

COMMANDS = {
    "describe": ("describe",),
    "isolate": ("isolate", "--pool=dataplane", "echo ran"),
    "reconcile": ("reconcile",),
    "init-keep": ("init", "--num-dp-cores=1", "--num-cp-cores=0", "--keep-existing"),
}


def run(conf: str, command: str) -> Result:
    name, *rest = COMMANDS[command]
    return run_kcm(name, f"--conf-dir={conf}", *rest, env=kcm_env(KCM_PROC_FS="/proc"))


def state_with(tmp_path: Path, dataplane: list[str]) -> str:
    """A state whose exclusive dataplane pool has the lists ``dataplane`` (CMK's three pools)."""
    return build_state(
        str(tmp_path / "kcm"),
        {
            "controlplane": (False, {"0": ""}),
            "dataplane": (True, dict.fromkeys(dataplane, "")),
            "infra": (False, {"0": ""}),
        },
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_the_same_cpu_named_four_ways_is_refused_by_every_command(
    tmp_path: Path, command: str
) -> None:
    # Found by outside testing: an exclusive pool with the lists 1, 01, 1-1 and 1,1 let four
    # isolates run on CPU 1 "exclusively", and KCM_CPUS_ASSIGNED came out as 01.
    conf = state_with(tmp_path, ["1", "01", "1-1", "1,1"])
    before = snapshot(conf)
    result = run(conf, command)
    assert_one_error_line(
        result, f"{conf}/pools/dataplane/01: not a CPU list directory name: '01' has a leading zero"
    )
    assert result.code == 3
    assert "ran" not in result.out
    assert snapshot(conf) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_exclusive_lists_that_share_a_cpu_are_refused_by_every_command(
    tmp_path: Path, command: str
) -> None:
    conf = state_with(tmp_path, ["1", "0-1"])
    before = snapshot(conf)
    result = run(conf, command)
    assert_one_error_line(
        result,
        f"{conf}/pools/dataplane: the exclusive pool's lists 0-1 and 1 share CPU 1",
    )
    assert result.code == 3
    assert "ran" not in result.out
    assert snapshot(conf) == before


def test_discover_refuses_them_too(tmp_path: Path) -> None:
    conf = state_with(tmp_path, ["1", "0-1"])
    with pytest.raises(StateError, match="lists 0-1 and 1 share CPU 1"):
        discover.dataplane_count(conf)


@pytest.mark.parametrize(
    "name", ["01", "1-1", "1,1", "2-1", " 1", "1 ", "1,", "1,,2", "0-1,1", "1-01", "+1"]
)
def test_a_name_that_is_not_a_strict_cpu_list_is_refused(tmp_path: Path, name: str) -> None:
    conf = state_with(tmp_path, ["1"])
    os.mkdir(Path(conf, "pools/infra", name))
    Path(conf, "pools/infra", name, "tasks").write_text("")
    result = run(conf, "describe")
    assert_one_error_line(result, f"{conf}/pools/infra/{name}: not a CPU list directory name")
    assert result.code == 3


def test_non_canonical_names_cmk_wrote_stay_readable(tmp_path: Path) -> None:
    conf = build_state(
        str(tmp_path / "kcm"),
        {"dataplane": (True, {"2,6,3,5": "", "1,0": ""}), "infra": (False, {"1,0": ""})},
    )
    described = run(conf, "describe")
    assert described.code == 0, described.err
    assert '"2,6,3,5": {' in described.out and '"cpus": "1,0"' in described.out
    probe = "import os; print(os.environ['KCM_CPUS_ASSIGNED'], sorted(os.sched_getaffinity(0)))"
    result = run_kcm(
        "isolate",
        f"--conf-dir={conf}",
        "--pool=dataplane",
        f'exec {sys.executable} -c "{probe}"',
        env=kcm_env(KCM_PROC_FS="/proc"),
    )
    # The lowest free list in name order; KCM_CPUS_ASSIGNED is the directory's name as is.
    assert (result.code, result.out) == (0, "1,0 [0, 1]\n"), result.err
    assert tree(conf)["dataplane/1,0"] == []


def test_lists_of_a_shared_pool_may_share_cpus(tmp_path: Path) -> None:
    conf = build_state(str(tmp_path / "kcm"), {"infra": (False, {"0": "", "0-1": ""})})
    result = run(conf, "describe")
    assert result.code == 0, result.err
