"""The Kubernetes client (and YAML) load only for the commands that use them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.k8s.conftest import KCM, clean_env, kcm, run

HEAVY = ("kubernetes", "yaml", "urllib3", "prometheus_client")


def imported(argv: list[str], env: dict[str, str]) -> tuple[int, set[str]]:
    """The exit status of ``kcm argv`` and the top-level packages it imported."""
    result = run([sys.executable, "-X", "importtime", KCM, *argv], env)
    modules = set()
    for line in result.err.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            modules.add(name.split(".")[0])
    return result.code, modules


@pytest.fixture
def state2(tmp_path: Path, sys2: str, home: Path) -> str:
    conf = str(tmp_path / "kcm")
    env = clean_env(home, KCM_SYS_FS=sys2)
    result = kcm("init", f"--conf-dir={conf}", "--num-dp-cores=1", "--num-cp-cores=0", env=env)
    assert result.code == 0, result.err
    return conf


def test_isolate_imports_neither_kubernetes_nor_yaml_nor_prometheus_client(
    state2: str, home: Path
) -> None:
    code, modules = imported(
        ["isolate", f"--conf-dir={state2}", "--pool=dataplane", "true"],
        clean_env(home, KCM_PROC_FS="/proc"),
    )
    assert code == 0
    assert "kcm" in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)


def test_isolate_loads_neither_the_help_texts_nor_the_completion(state2: str, home: Path) -> None:
    """The table of subcommands, with its help texts, is for help and completion only."""
    result = run(
        [sys.executable, "-X", "importtime", KCM, "isolate", f"--conf-dir={state2}",
         "--pool=dataplane", "true"],
        clean_env(home, KCM_PROC_FS="/proc"),
    )  # fmt: skip
    assert result.code == 0
    loaded = {line.rsplit("|", 1)[1].strip() for line in result.err.splitlines() if "|" in line}
    assert "kcm.isolate" in loaded
    assert not loaded & {"kcm.commands", "kcm.completion", "textwrap", "dataclasses"}, loaded
    help_run = run([sys.executable, "-X", "importtime", KCM, "isolate", "--help"], clean_env(home))
    assert "kcm.commands" in help_run.err  # the check above would see it


def test_a_plain_isolate_loads_no_carving_no_state_builder_no_errno(
    state2: str, home: Path
) -> None:
    """Every module costs isolate's start-up ~0.1 ms: a booking without placement options
    chooses its list with the values (kcm.model), init alone builds a state, and errno waits
    for a failed call."""
    result = run(
        [sys.executable, "-X", "importtime", KCM, "isolate", f"--conf-dir={state2}",
         "--pool=infra", "true"],
        clean_env(home, KCM_PROC_FS="/proc"),
    )  # fmt: skip
    assert result.code == 0, result.err
    loaded = {line.rsplit("|", 1)[1].strip() for line in result.err.splitlines() if "|" in line}
    assert {"kcm.isolate", "kcm.model", "kcm.state"} <= loaded
    assert not loaded & {"kcm.allocate", "kcm.state_create", "errno", "kcm.placement"}, loaded


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["discover", "--help"],
        ["describe"],
        ["describe", "--output=table"],
        ["reconcile"],
        ["init"],
    ],
    ids=["help", "discover-help", "describe", "describe-table", "reconcile", "init"],
)
def test_other_local_commands_do_not_load_the_client(
    argv: list[str], state2: str, sys2: str, tmp_path: Path, home: Path
) -> None:
    if argv[0] in ("describe", "reconcile"):
        argv = [*argv, f"--conf-dir={state2}"]
    if argv[0] == "init":
        argv = [*argv, f"--conf-dir={tmp_path}/new", "--num-dp-cores=1", "--num-cp-cores=0"]
    env = clean_env(home, KCM_PROC_FS="/proc", KCM_SYS_FS=sys2)
    code, modules = imported(argv, env)
    assert code == 0
    assert not modules & set(HEAVY), modules & set(HEAVY)


def test_cluster_init_loads_yaml_but_not_the_client(home: Path) -> None:
    code, modules = imported(["cluster-init"], clean_env(home))
    assert code == 0
    assert "yaml" in modules
    assert "kubernetes" not in modules


def test_metrics_loads_prometheus_client_but_not_the_kubernetes_client(
    state2: str, home: Path
) -> None:
    """The checks above would see prometheus_client if it were loaded."""
    code, modules = imported(["metrics", f"--conf-dir={state2}"], clean_env(home))
    assert code == 0
    assert "prometheus_client" in modules
    assert not modules & {"kubernetes", "yaml"}


def test_discover_does_load_the_client(state2: str, home: Path) -> None:
    """The check above would see the client if it were loaded."""
    code, modules = imported(["discover", f"--conf-dir={state2}"], clean_env(home, NODE_NAME="n"))
    assert code == 7  # no credentials here
    assert "kubernetes" in modules
