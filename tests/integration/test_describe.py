"""kcm describe: the seed's JSON byte for byte, strict errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import assert_one_error_line, run_kcm
from tests.fixtures.state import SEED_STATE, build_state, snapshot

SEED_JSON = (Path(__file__).parent.parent / "fixtures" / "seed_describe.json").read_text()


@pytest.fixture
def etc_kcm(tmp_path: Path) -> str:
    return build_state(str(tmp_path / "etc" / "kcm"), SEED_STATE)


def test_seed_example_byte_identical(etc_kcm: str) -> None:
    result = run_kcm("describe", f"--conf-dir={etc_kcm}")
    assert result.code == 0, result.err
    assert result.out == SEED_JSON.replace('"/etc/kcm"', f'"{etc_kcm}"')


def test_path_is_as_given_normalised(etc_kcm: str, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    result = run_kcm("describe", "--conf-dir=./etc//kcm/")
    assert result.code == 0, result.err
    assert result.out == SEED_JSON.replace('"/etc/kcm"', '"etc/kcm"')


def test_older_files_with_newlines_and_spaces_read_fine(etc_kcm: str) -> None:
    Path(etc_kcm, "pools/controlplane/3,11/tasks").write_text("1000, 1001,1002,1003\n")
    Path(etc_kcm, "pools/dataplane/exclusive").write_text("1\n")
    result = run_kcm("describe", f"--conf-dir={etc_kcm}")
    assert result.out == SEED_JSON.replace('"/etc/kcm"', f'"{etc_kcm}"')


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        ("pools/dataplane/4,12/tasks", "12,abc", "pools/dataplane/4,12/tasks: invalid tasks file"),
        ("pools/infra/exclusive", "maybe", "pools/infra/exclusive: expected 0 or 1"),
        ("pools/infra/stray", "x", "pools/infra/stray is neither a CPU list directory"),
    ],
)
def test_corrupt_file_is_an_error_naming_it(
    etc_kcm: str, path: str, content: str, message: str
) -> None:
    Path(etc_kcm, path).write_text(content)
    before = snapshot(etc_kcm)
    result = run_kcm("describe", f"--conf-dir={etc_kcm}")
    assert_one_error_line(result, message, etc_kcm)
    assert result.code == 3
    assert result.out == ""
    assert snapshot(etc_kcm) == before


def test_bad_cpu_list_directory_name(etc_kcm: str) -> None:
    os.mkdir(os.path.join(etc_kcm, "pools/infra/0-x"))
    result = run_kcm("describe", f"--conf-dir={etc_kcm}")
    assert_one_error_line(result, "pools/infra/0-x: not a CPU list directory name")


def test_missing_tasks_file(etc_kcm: str) -> None:
    os.unlink(os.path.join(etc_kcm, "pools/dataplane/5,13/tasks"))
    result = run_kcm("describe", f"--conf-dir={etc_kcm}")
    assert_one_error_line(result, "pools/dataplane/5,13/tasks is missing")


def test_symlinked_tasks_file_is_refused(etc_kcm: str, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("1")
    tasks = os.path.join(etc_kcm, "pools/dataplane/5,13/tasks")
    os.unlink(tasks)
    os.symlink(target, tasks)
    result = run_kcm("describe", f"--conf-dir={etc_kcm}")
    assert_one_error_line(result, "symlink")


def test_oversized_tasks_file_is_refused(etc_kcm: str) -> None:
    Path(etc_kcm, "pools/infra/0-2,8-10/tasks").write_text("1," * (1 << 20))
    result = run_kcm("describe", f"--conf-dir={etc_kcm}")
    assert_one_error_line(result, "over the 1048576 byte limit")


def test_missing_directory(tmp_path: Path) -> None:
    result = run_kcm("describe", f"--conf-dir={tmp_path / 'nope'}")
    assert_one_error_line(result, "does not exist", "kcm init")
    assert result.code == 3


def test_not_a_state_directory(tmp_path: Path) -> None:
    result = run_kcm("describe", f"--conf-dir={tmp_path}")
    assert_one_error_line(result, "lock is missing")


def test_hidden_files_of_kcm_are_not_listed(etc_kcm: str) -> None:
    Path(etc_kcm, "pools/dataplane/4,12/.owner-2000").write_text("12345\n")
    Path(etc_kcm, "pools/dataplane/.tmp-1-1-x").write_text("junk")
    result = run_kcm("describe", f"--conf-dir={etc_kcm}")
    assert result.out == SEED_JSON.replace('"/etc/kcm"', f'"{etc_kcm}"')
