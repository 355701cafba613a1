"""stress/fuzz.py at small scale: every parser keeps its invariants, and planted bugs are caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kcm import cpulist
from kcm.describe import describe
from kcm.errors import StateError
from kcm.model import Pool
from stress import fuzz

SMALL = 400
SEED = 20261123
ROOT = Path(__file__).resolve().parents[2]


def explain(figures: fuzz.Figures) -> str:
    return "\n".join(
        f"{key} ({f.count} inputs): {f.example}\n{f.detail}" for key, f in figures.failures.items()
    )


def assert_complete(figures: fuzz.Figures, requested: int) -> None:
    assert (figures.inputs, figures.complete) == (requested, True)
    assert figures.accepted + figures.clean_errors + figures.crashes == requested
    assert figures.accepted > 0 and figures.clean_errors > 0  # both outcomes were exercised


@pytest.mark.parametrize("target", ["cpulist", "leases", "conf"])
def test_text_parsers_raise_only_their_clean_error(target: str, tmp_path: Path) -> None:
    figures = fuzz.run_target(target, SMALL, SEED, workdir=str(tmp_path))
    assert figures.failures == {}, explain(figures)
    assert figures.crashes == 0 and figures.state_modified == 0
    assert_complete(figures, SMALL)


def test_state_reads_raise_only_state_error_and_change_nothing(tmp_path: Path) -> None:
    figures = fuzz.run_target("state", SMALL, SEED, workdir=str(tmp_path), cli_every=25)
    assert figures.crashes == 0, explain(figures)
    assert figures.state_modified == 0
    assert 0 < figures.cli_runs <= SMALL // 25  # not after a crash of the in-process read
    assert_complete(figures, SMALL)
    assert os.listdir(tmp_path) == []  # every tree was removed


# -- the harness catches what it is there to catch --------------------------------------------


def planted_state(
    reader: fuzz.StateReader = fuzz.read_state, describe_state: fuzz.Describe = describe
) -> Callable[[fuzz.Figures, str], Callable[[object], bool]]:
    return lambda figures, scratch: fuzz.StateCheck(figures, scratch, 0, reader, describe_state)


def test_a_reader_raising_anything_but_state_error_is_a_crash(tmp_path: Path) -> None:
    def reader(root: str) -> dict[str, Pool]:
        fuzz.read_state(root)
        raise IndexError("planted")  # where the real reader would have succeeded

    figures = fuzz.run_target(
        "state", 150, SEED, workdir=str(tmp_path), make_check=planted_state(reader)
    )
    [planted] = [f for f in figures.failures.values() if "IndexError" in f.signature]
    assert planted.count > 0 and figures.accepted == 0
    assert "IndexError: planted" in planted.detail
    assert "'lock'" in planted.example  # the input is shown
    assert figures.crashes >= planted.count and not figures.ok


def test_a_reader_that_changes_the_tree_is_caught(tmp_path: Path) -> None:
    def reader(root: str) -> dict[str, Pool]:
        pools = fuzz.read_state(root)  # a tree the reader accepts has a regular lock file
        os.utime(os.path.join(root, "lock"), ns=(1, 1))
        return pools

    figures = fuzz.run_target(
        "state", 100, SEED, workdir=str(tmp_path), make_check=planted_state(reader)
    )
    assert figures.state_modified >= figures.accepted > 0
    assert "state modified: the read changed the tree" in figures.failures
    assert "lock" in figures.failures["state modified: the read changed the tree"].detail


def test_describe_json_that_differs_from_json_dumps_is_caught(tmp_path: Path) -> None:
    def wrong(root: str) -> str:
        return describe(root).replace("exclusive", "exclusivity")

    figures = fuzz.run_target(
        "state", 60, SEED, workdir=str(tmp_path), make_check=planted_state(describe_state=wrong)
    )
    assert "crash: Violation: describe JSON differs" in figures.failures


def test_describe_refusing_what_the_other_readers_accept_is_caught(tmp_path: Path) -> None:
    def refuse(root: str) -> str:
        raise StateError("planted")

    figures = fuzz.run_target(
        "state", 60, SEED, workdir=str(tmp_path), make_check=planted_state(describe_state=refuse)
    )
    assert "crash: Violation: describe refused what the readers accepted" in figures.failures


def test_kcm_describe_must_say_what_the_reader_said(tmp_path: Path) -> None:
    figures = fuzz.Figures("state", 1, SEED)
    check = fuzz.StateCheck(figures, str(tmp_path), cli_every=1)
    missing = str(tmp_path / "none")
    with pytest.raises(fuzz.Violation, match="kcm describe error differs from in-process"):
        check._cli(missing, StateError("planted"))
    other_status = StateError(f"{missing} does not exist: create it with kcm init")
    other_status.exit_code = 9
    with pytest.raises(fuzz.Violation, match="kcm describe exit status is not the error's"):
        check._cli(missing, other_status)
    with pytest.raises(fuzz.Violation, match="kcm describe said otherwise in-process"):
        check._cli(missing, "{}")
    assert figures.cli_runs == 3


def test_a_parse_raising_value_error_is_a_crash(tmp_path: Path) -> None:
    def parse(text: str) -> frozenset[int]:
        if "," in text:
            raise ValueError("planted")
        return cpulist.parse(text)

    figures = fuzz.run_target(
        "cpulist",
        200,
        SEED,
        workdir=str(tmp_path),
        make_check=lambda figures, scratch: lambda value: fuzz.check_cpulist(value, parse),
    )
    assert figures.crashes > 0
    assert any(k.startswith("crash: ValueError at test_fuzz.py") for k in figures.failures)


def test_a_hang_is_cut_short_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def sleep(value: object) -> bool:
        time.sleep(5)
        return True

    monkeypatch.setattr(fuzz, "HANG_SECONDS", 0.2)
    started = time.monotonic()
    figures = fuzz.run_target(
        "cpulist", 3, SEED, workdir=str(tmp_path), make_check=lambda figures, scratch: sleep
    )
    assert time.monotonic() - started < 4
    assert (figures.inputs, figures.crashes) == (3, 3)
    [key] = figures.failures
    assert key.startswith("crash: Hang at test_fuzz.py") and key.endswith("(sleep)")


def test_the_time_limit_stops_generation_and_the_report_says_so(tmp_path: Path) -> None:
    figures = fuzz.run_target(
        "cpulist", 10**6, SEED, workdir=str(tmp_path), deadline=time.monotonic() + 1
    )
    assert 0 < figures.inputs < 10**6 and not figures.complete
    out = tmp_path / "report.txt"
    with open(out, "w") as f:
        fuzz.report([figures], f)
    lines = out.read_text().splitlines()
    assert f"NO: stopped after {figures.inputs} inputs" in lines[1]
    assert json.loads(lines[-1])["complete"] is False


def test_the_script_prints_figures_and_one_json_line_per_target(tmp_path: Path) -> None:
    argv = ["--examples", "30", "--target", "leases", "--seed", "1", "--workdir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "stress.fuzz", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.splitlines()[-1])
    assert figures["script"] == "fuzz" and figures["target"] == "leases"
    assert (figures["inputs"], figures["crashes"], figures["seed"]) == (30, 0, 1)
    assert set(figures) >= {"accepted", "clean_errors", "state_modified", "seconds"}


# -- what the fuzzer found in src/kcm/state.py (not this harness's to fix) --------------------


def build(root: Path, pools: dict[str, dict[str, bytes]]) -> str:
    (root / "pools").mkdir(parents=True)
    (root / "lock").write_bytes(b"")
    for name, lists in pools.items():
        (root / "pools" / name).mkdir()
        (root / "pools" / name / "exclusive").write_bytes(b"0")
        for cl, tasks in lists.items():
            (root / "pools" / name / cl).mkdir()
            (root / "pools" / name / cl / "tasks").write_bytes(tasks)
    return str(root)


def test_a_pool_directory_named_with_a_control_character_is_a_state_error(tmp_path: Path) -> None:
    root = build(tmp_path / "kcm", {"a\x01b": {}})
    with pytest.raises(StateError):
        fuzz.read_state(root)


def test_a_pid_of_over_4300_digits_is_a_state_error(tmp_path: Path) -> None:
    root = build(tmp_path / "kcm", {"infra": {"0": b"9" * 4301}})
    with pytest.raises(StateError):
        fuzz.read_state(root)


def test_describe_refusing_a_name_with_a_newline_says_so_in_one_line(tmp_path: Path) -> None:
    root = build(tmp_path / "kcm", {"infra": {"0\nx": b""}})
    proc = subprocess.run(
        [fuzz.KCM, "describe", f"--conf-dir={root}"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1
