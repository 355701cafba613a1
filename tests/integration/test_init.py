"""kcm init on sysfs trees of named topologies: exact trees, refusals, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kcm import cpulist
from tests.conftest import KCM, Result, assert_one_error_line, kcm_env, run_kcm
from tests.fixtures.state import snapshot, tree
from tests.fixtures.sysfs import (
    DUAL_SOCKET_20_CORE_HT,
    DUAL_SOCKET_NUMA,
    NO_HT_2,
    NO_HT_4,
    NON_CONTIGUOUS,
    SEED_16,
    FakeCpu,
    build_sysfs,
)

SEED_TREE = {
    "controlplane": False,
    "controlplane/3,11": [],
    "dataplane": True,
    "dataplane/4,12": [],
    "dataplane/5,13": [],
    "dataplane/6,14": [],
    "dataplane/7,15": [],
    "infra": False,
    "infra/0-2,8-10": [],
}


def init(
    tmp_path: Path,
    cpus: list[FakeCpu],
    *flags: str,
    offline: frozenset[int] = frozenset(),
    **sysfs: Any,
) -> tuple[str, Result]:
    sys_root = build_sysfs(str(tmp_path / "sys"), cpus, offline=offline, **sysfs)
    conf = str(tmp_path / "kcm")
    return conf, run_kcm("init", f"--conf-dir={conf}", *flags, env=kcm_env(KCM_SYS_FS=sys_root))


def test_seed_machine_defaults_give_the_seed_tree(tmp_path: Path) -> None:
    conf, result = init(tmp_path, SEED_16)
    assert result.code == 0, result.err
    assert tree(conf) == SEED_TREE
    assert sorted(os.listdir(conf)) == ["lock", "pools"]
    files = {p: c for p, (_, c) in snapshot(conf).items() if isinstance(c, bytes)}
    assert files["pools/dataplane/exclusive"] == b"1"
    assert files["pools/infra/exclusive"] == b"0"
    assert files["pools/dataplane/4,12/tasks"] == b""


@pytest.mark.parametrize(
    ("cpus", "flags", "offline", "expected"),
    [
        pytest.param(
            SEED_16,
            ["--num-dp-cores=2", "--num-cp-cores=2"],
            frozenset(),
            {
                "controlplane": False,
                "controlplane/4-5,12-13": [],
                "dataplane": True,
                "dataplane/6,14": [],
                "dataplane/7,15": [],
                "infra": False,
                "infra/0-3,8-11": [],
            },
            id="seed-2dp-2cp",
        ),
        pytest.param(
            DUAL_SOCKET_20_CORE_HT,
            [],
            frozenset(),
            {
                "controlplane": False,
                "controlplane/15,35": [],
                "dataplane": True,
                "dataplane/16,36": [],
                "dataplane/17,37": [],
                "dataplane/18,38": [],
                "dataplane/19,39": [],
                "infra": False,
                "infra/0-14,20-34": [],
            },
            id="dual-socket-ht",
        ),
        pytest.param(
            NO_HT_4,
            ["--num-dp-cores=2"],
            frozenset(),
            {
                "controlplane": False,
                "controlplane/1": [],
                "dataplane": True,
                "dataplane/2": [],
                "dataplane/3": [],
                "infra": False,
                "infra/0": [],
            },
            id="no-ht",
        ),
        pytest.param(
            SEED_16,
            ["--num-dp-cores=2"],
            frozenset({7, 14}),
            {
                # CPU 7 offline: core 7 keeps only 15; CPU 14 offline: core 6 keeps only 6.
                "controlplane": False,
                "controlplane/5,13": [],
                "dataplane": True,
                "dataplane/15": [],
                "dataplane/6": [],
                "infra": False,
                "infra/0-4,8-12": [],
            },
            id="offline-cpus",
        ),
        pytest.param(
            NON_CONTIGUOUS,
            ["--num-dp-cores=2"],
            frozenset(),
            {
                "controlplane": False,
                "controlplane/1,9": [],
                "dataplane": True,
                "dataplane/4,12": [],
                "dataplane/5,13": [],
                "infra": False,
                "infra/0,8": [],
            },
            id="non-contiguous",
        ),
    ],
)
def test_init_trees(
    tmp_path: Path,
    cpus: list[FakeCpu],
    flags: list[str],
    offline: frozenset[int],
    expected: dict[str, object],
) -> None:
    conf, result = init(tmp_path, cpus, *flags, offline=offline)
    assert result.code == 0, result.err
    assert tree(conf) == expected


def test_init_into_existing_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "kcm").mkdir()
    conf, result = init(tmp_path, SEED_16)
    assert result.code == 0, result.err
    assert tree(conf) == SEED_TREE
    assert sorted(os.listdir(conf)) == ["lock", "pools"]


def test_init_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "kcm").mkdir()
    (tmp_path / "kcm" / "precious").write_text("keep me")
    before = snapshot(str(tmp_path / "kcm"))
    conf, result = init(tmp_path, SEED_16)
    assert_one_error_line(result, "is not empty", "precious")
    assert result.code == 3
    assert snapshot(conf) == before


def test_init_refuses_existing_state(tmp_path: Path) -> None:
    conf, first = init(tmp_path, SEED_16)
    assert first.code == 0
    before = snapshot(conf)
    _, second = init(tmp_path, SEED_16)
    assert_one_error_line(second, "is not empty")
    assert snapshot(conf) == before


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--num-dp-cores=8"], 6, "not enough physical cores"),
        (["--num-dp-cores=4", "--num-cp-cores=4"], 6, "not enough physical cores"),
        (["--num-dp-cores=abc"], 2, "--num-dp-cores='abc' is not a non-negative whole number"),
        (["--num-cp-cores=-1"], 2, "--num-cp-cores='-1'"),
        (["--num-dp-cores="], 2, "--num-dp-cores=''"),
    ],
)
def test_init_bad_numbers_leave_nothing(
    tmp_path: Path, flags: list[str], code: int, message: str
) -> None:
    conf, result = init(tmp_path, SEED_16, *flags)
    assert_one_error_line(result, message)
    assert result.code == code
    assert not os.path.lexists(conf)
    assert [p for p in os.listdir(tmp_path) if p != "sys"] == []


def test_init_missing_sysfs_is_clear(tmp_path: Path) -> None:
    conf = str(tmp_path / "kcm")
    result = run_kcm("init", f"--conf-dir={conf}", env=kcm_env(KCM_SYS_FS=str(tmp_path / "nope")))
    assert_one_error_line(result, "devices/system/cpu/online does not exist")
    assert result.code == 6
    assert not os.path.lexists(conf)


def test_init_on_this_machine_real_sysfs(tmp_path: Path) -> None:
    conf = str(tmp_path / "kcm")
    online = Path("/sys/devices/system/cpu/online").read_text().strip()
    result = run_kcm("init", f"--conf-dir={conf}", "--num-dp-cores=1", "--num-cp-cores=0")
    assert result.code == 0, result.err
    all_cpus = sorted(
        int(c)
        for key in tree(conf)
        if "/" in key
        for c in key.split("/")[1].replace("-", ",").split(",")
    )
    assert online in ("0-1", "0,1") and all_cpus == [0, 1]


def test_keep_existing_keeps_state_and_tasks(tmp_path: Path) -> None:
    conf, first = init(tmp_path, NO_HT_2, "--num-dp-cores=1", "--num-cp-cores=0")
    assert first.code == 0
    Path(conf, "pools/dataplane/1/tasks").write_text("4242")
    before = snapshot(conf)
    _, again = init(tmp_path, NO_HT_2, "--num-dp-cores=1", "--num-cp-cores=0", "--keep-existing")
    assert again.code == 0, again.err
    assert "kept the existing state" in again.err
    assert snapshot(conf) == before


def test_keep_existing_initialises_an_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "kcm").mkdir()
    conf, result = init(tmp_path, SEED_16, "--keep-existing")
    assert result.code == 0, result.err
    assert tree(conf) == SEED_TREE


def test_keep_existing_refuses_corrupt_state(tmp_path: Path) -> None:
    conf, first = init(tmp_path, SEED_16)
    assert first.code == 0
    Path(conf, "pools/dataplane/4,12/tasks").write_text("12,abc")
    before = snapshot(conf)
    _, again = init(tmp_path, SEED_16, "--keep-existing")
    assert_one_error_line(again, "pools/dataplane/4,12/tasks")
    assert snapshot(conf) == before


def test_stale_leftovers_of_a_killed_init_are_cleaned(tmp_path: Path) -> None:
    # A build directory named after a PID that no longer exists, as a kill -9 leaves it.
    stale = tmp_path / ".kcm.kcm-init-999999999"
    (stale / "pools").mkdir(parents=True)
    conf, result = init(tmp_path, SEED_16)
    assert result.code == 0, result.err
    assert not stale.exists()
    assert tree(conf) == SEED_TREE


def test_a_killed_inits_build_dir_in_an_empty_dir_is_cleaned(tmp_path: Path) -> None:
    # Found by stress/crash.py: init into an existing empty directory, killed mid-build, must
    # leave nothing the next init calls "not empty". What it can leave is its build directory
    # (the lock is written there too); one of a live PID is not a leftover.
    conf = tmp_path / "kcm"
    conf.mkdir()
    (conf / ".kcm-init-999999999").mkdir()
    (conf / ".kcm-init-999999999/lock").write_text("")
    (conf / ".kcm-init-1").mkdir()  # PID 1 lives: not a leftover of ours
    _, result = init(tmp_path, SEED_16)
    assert_one_error_line(result, "is not empty", ".kcm-init-1")
    (conf / ".kcm-init-1").rmdir()
    _, result = init(tmp_path, SEED_16)
    assert result.code == 0, result.err
    assert not (conf / ".kcm-init-999999999").exists()
    assert sorted(os.listdir(conf)) == ["lock", "pools"]
    assert tree(str(conf)) == SEED_TREE


# -- what init says ------------------------------------------------------------------------


def test_init_says_what_it_carved_one_line_per_pool(tmp_path: Path) -> None:
    conf, result = init(tmp_path, SEED_16)
    assert result.code == 0, result.err
    assert result.out == ""  # stdout stays clean for scripts
    assert result.err == (
        f"kcm: created {conf} from the topology in {tmp_path}/sys (8 cores, 16 CPUs)\n"
        "kcm:   dataplane (exclusive): 4,12 5,13 6,14 7,15\n"
        "kcm:   controlplane (shared): 3,11\n"
        "kcm:   infra (shared): 0-2,8-10\n"
    )


def test_init_names_a_pool_without_lists(tmp_path: Path) -> None:
    _, result = init(tmp_path, NO_HT_4, "--num-dp-cores=3", "--num-cp-cores=0")
    assert result.code == 0, result.err
    assert "kcm:   controlplane (shared): no lists\n" in result.err


def test_quiet_init_says_nothing_and_writes_the_same_state(tmp_path: Path) -> None:
    loud, said = init(tmp_path / "loud", SEED_16)
    quiet, silent = init(tmp_path / "quiet", SEED_16, "--quiet")
    assert said.code == silent.code == 0
    assert (silent.out, silent.err) == ("", "")
    assert snapshot(quiet) == snapshot(loud)
    assert tree(quiet) == SEED_TREE


def test_quiet_keep_existing_says_nothing_but_errors_still_show(tmp_path: Path) -> None:
    _, first = init(tmp_path, SEED_16, "--quiet")
    assert first.code == 0
    _, kept = init(tmp_path, SEED_16, "--keep-existing", "--quiet")
    assert (kept.code, kept.err) == (0, "")
    _, refused = init(tmp_path, SEED_16, "--quiet")
    assert_one_error_line(refused, "is not empty")


# -- CPUs isolated at boot -----------------------------------------------------------------

ISOLATED_4_7 = cpulist.parse("4-7,12-15")


@pytest.mark.parametrize(
    ("sysfs", "said"),
    [
        pytest.param(
            {"isolated": ISOLATED_4_7}, "; isolated at boot: CPUs 4-7,12-15", id="isolcpus"
        ),
        pytest.param(
            {"isolated": frozenset(), "nohz_full": ISOLATED_4_7},
            "; isolated at boot: CPUs 4-7,12-15",
            id="nohz_full",
        ),
        pytest.param({"isolated": frozenset(), "nohz_full": "(null)\n"}, "", id="none-null"),
        pytest.param({"isolated": frozenset(), "nohz_full": frozenset()}, "", id="none-empty"),
    ],
)
def test_init_reads_boot_isolation_and_keeps_the_seed_tree(
    tmp_path: Path, sysfs: dict[str, Any], said: str
) -> None:
    conf, result = init(tmp_path, SEED_16, **sysfs)
    assert result.code == 0, result.err
    assert tree(conf) == SEED_TREE
    assert result.err == (
        f"kcm: created {conf} from the topology in {tmp_path}/sys (8 cores, 16 CPUs){said}\n"
        "kcm:   dataplane (exclusive): 4,12 5,13 6,14 7,15\n"
        "kcm:   controlplane (shared): 3,11\n"
        "kcm:   infra (shared): 0-2,8-10\n"
    )


def test_isolated_cores_left_in_infra_are_a_warning_even_when_quiet(tmp_path: Path) -> None:
    conf, result = init(
        tmp_path, SEED_16, "--num-dp-cores=2", "--num-cp-cores=1", "--quiet", isolated=ISOLATED_4_7
    )
    assert result.code == 0, result.err
    assert tree(conf) == {
        "controlplane": False,
        "controlplane/5,13": [],
        "dataplane": True,
        "dataplane/6,14": [],
        "dataplane/7,15": [],
        "infra": False,
        "infra/0-4,8-12": [],
    }
    assert result.err == (
        "kcm: warning: CPUs 4,12 are isolated at boot but end up in infra, the housekeeping"
        " pool; raise --num-dp-cores or --num-cp-cores to use them (whole cores only), or"
        " isolate fewer CPUs at boot\n"
    )


def test_a_dual_socket_box_with_isolated_cores_on_one_socket(tmp_path: Path) -> None:
    conf, result = init(
        tmp_path, DUAL_SOCKET_20_CORE_HT, "--quiet", isolated=cpulist.parse("6-9,26-29")
    )
    assert (result.code, result.err) == (0, "")
    assert tree(conf) == {
        "controlplane": False,
        "controlplane/19,39": [],
        "dataplane": True,
        "dataplane/6,26": [],
        "dataplane/7,27": [],
        "dataplane/8,28": [],
        "dataplane/9,29": [],
        "infra": False,
        "infra/0-5,10-18,20-25,30-38": [],
    }


@pytest.mark.parametrize(
    ("isolated", "flags", "message"),
    [
        ("6-7,14-15", [], "--num-dp-cores=4 needs 4 core(s) isolated at boot, but the host has 2"),
        ("4-7,12-14", [], "--num-dp-cores=4 needs 4 core(s) isolated at boot, but the host has 3"),
        (
            "7",
            ["--num-dp-cores=1"],
            "--num-dp-cores=1 needs 1 core(s) isolated at boot, but the host has 0",
        ),
    ],
)
def test_too_few_isolated_cores_is_one_error_and_nothing_is_written(
    tmp_path: Path, isolated: str, flags: list[str], message: str
) -> None:
    conf, result = init(tmp_path, SEED_16, *flags, isolated=cpulist.parse(isolated))
    assert_one_error_line(result, message, f"isolated CPUs {isolated}")
    assert result.code == 6
    assert not os.path.lexists(conf)
    assert [p for p in os.listdir(tmp_path) if p != "sys"] == []


def test_a_garbled_isolated_file_is_one_error(tmp_path: Path) -> None:
    sys_root = build_sysfs(str(tmp_path / "sys"), SEED_16)
    Path(sys_root, "devices/system/cpu/isolated").write_text("4-x\n")
    conf = str(tmp_path / "kcm")
    result = run_kcm("init", f"--conf-dir={conf}", env=kcm_env(KCM_SYS_FS=sys_root))
    assert_one_error_line(result, "devices/system/cpu/isolated", "'x' is not a CPU number")
    assert result.code == 6
    assert not os.path.lexists(conf)


# -- --exclusive-mode ----------------------------------------------------------------------


def test_packed_is_todays_carving_byte_for_byte(tmp_path: Path) -> None:
    default, first = init(tmp_path / "default", SEED_16)
    packed, second = init(tmp_path / "packed", SEED_16, "--exclusive-mode=packed")
    assert first.code == second.code == 0
    assert snapshot(packed) == snapshot(default)
    assert tree(packed) == SEED_TREE


def test_spread_deals_dataplane_lists_across_the_sockets(tmp_path: Path) -> None:
    conf, result = init(
        tmp_path, DUAL_SOCKET_20_CORE_HT, "--exclusive-mode", "spread", numa=DUAL_SOCKET_NUMA
    )
    assert result.code == 0, result.err
    assert tree(conf) == {
        "controlplane": False,
        "controlplane/17,37": [],
        "dataplane": True,
        "dataplane/8,28": [],
        "dataplane/9,29": [],
        "dataplane/18,38": [],
        "dataplane/19,39": [],
        "infra": False,
        "infra/0-7,10-16,20-27,30-36": [],
    }
    assert result.err.splitlines()[1:] == [
        "kcm:   dataplane (exclusive): 8,28 9,29 18,38 19,39",
        "kcm:   controlplane (shared): 17,37",
        "kcm:   infra (shared): 0-7,10-16,20-27,30-36",
    ]


def test_spread_takes_the_isolated_cores_of_each_socket(tmp_path: Path) -> None:
    conf, result = init(
        tmp_path,
        DUAL_SOCKET_20_CORE_HT,
        "--exclusive-mode=spread",
        "--num-dp-cores=2",
        "--num-cp-cores=2",
        "--quiet",
        isolated=cpulist.parse("8-9,18-19,28-29,38-39"),
    )
    assert (result.code, result.err) == (0, "")
    assert tree(conf) == {
        "controlplane": False,
        "controlplane/8,18,28,38": [],  # the isolated cores left over, one per socket
        "dataplane": True,
        "dataplane/9,29": [],
        "dataplane/19,39": [],
        "infra": False,
        "infra/0-7,10-17,20-27,30-37": [],
    }


@pytest.mark.parametrize("mode", ["tight", "", "PACKED"])
def test_an_unknown_exclusive_mode_is_a_usage_error_and_nothing_is_written(
    tmp_path: Path, mode: str
) -> None:
    conf = str(tmp_path / "kcm")
    result = run_kcm(
        "init",
        f"--conf-dir={conf}",
        f"--exclusive-mode={mode}",
        env=kcm_env(KCM_SYS_FS=str(tmp_path / "no-sysfs")),  # refused before sysfs is read
    )
    assert_one_error_line(result, f"--exclusive-mode={mode!r} is neither packed nor spread")
    assert result.code == 2
    assert os.listdir(tmp_path) == []


# -- two inits at once -------------------------------------------------------------------------


def test_an_init_beaten_to_the_rename_says_so_and_keeps_the_winners_state(tmp_path: Path) -> None:
    # Found by outside testing: two inits into one empty directory that both found it empty
    # both built a state, and the second rename of pools escaped as a traceback
    # (ENOTEMPTY). Here the test plays the first init: it renames a state made by kcm init
    # into place while a slow init (100 lists, each fsynced) is building its own.
    winner, result = init(tmp_path / "w", NO_HT_2, "--num-dp-cores=1", "--num-cp-cores=0")
    assert result.code == 0, result.err
    expected = tree(winner)
    conf = tmp_path / "kcm"
    conf.mkdir()
    big = build_sysfs(str(tmp_path / "big-sys"), [FakeCpu(i, 0, i, (i,)) for i in range(128)])
    loser = subprocess.Popen(
        [KCM, "init", f"--conf-dir={conf}", "--num-dp-cores=100"],
        env=kcm_env(KCM_SYS_FS=big),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(n.startswith(".kcm-init-") for n in os.listdir(conf)):
            assert loser.poll() is None and time.monotonic() < deadline, "no build seen"
        os.rename(Path(winner, "lock"), conf / "lock")
        os.rename(Path(winner, "pools"), conf / "pools")
        _, err = loser.communicate(timeout=60)
    finally:
        if loser.poll() is None:
            loser.kill()
    assert loser.returncode == 3
    assert err == (
        f"kcm: error: cannot create {conf}: another kcm init created its state there first"
        f" (renaming {conf}/.kcm-init-{loser.pid}/pools onto pools:"
        " Directory not empty); that state is kept and nothing of this init was left\n"
    )
    assert sorted(os.listdir(conf)) == ["lock", "pools"]
    assert tree(str(conf)) == expected


@pytest.mark.parametrize("where", ["inside", "beside"])
def test_two_inits_at_once_make_one_state_and_one_clear_refusal(tmp_path: Path, where: str) -> None:
    sys_root = build_sysfs(str(tmp_path / "sys"), SEED_16)
    for trial in range(5):
        conf = tmp_path / f"kcm{trial}"
        if where == "inside":
            conf.mkdir()
        both = [
            subprocess.Popen(
                [KCM, "init", f"--conf-dir={conf}", "--quiet"],
                env=kcm_env(KCM_SYS_FS=sys_root),
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outcomes = sorted((p.wait(60), p.communicate()[1]) for p in both)
        assert [code for code, _ in outcomes] == [0, 3], outcomes
        assert outcomes[0][1] == ""
        refusal = outcomes[1][1]
        assert refusal.startswith(f"kcm: error: {conf} is not empty") or refusal.startswith(
            f"kcm: error: cannot create {conf}: another kcm init created its state there first"
        ), refusal
        assert len(refusal.splitlines()) == 1
        assert tree(str(conf)) == SEED_TREE
        assert sorted(os.listdir(conf)) == ["lock", "pools"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
