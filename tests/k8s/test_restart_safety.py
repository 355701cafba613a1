"""The DaemonSet's init steps, run as the printed manifest says, twice over one live state."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.conftest import KCM, NODE, Run, assert_error, clean_env, kcm, run
from tests.k8s.fake_apiserver import FakeApiServer


def daemon_set_spec(home: Path, *flags: str) -> dict[str, Any]:
    result = kcm("cluster-init", *flags, env=clean_env(home))
    assert result.code == 0, result.err
    (ds,) = [d for d in yaml.safe_load_all(result.out) if d and d["kind"] == "DaemonSet"]
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


class Node:
    """A host for the pod: each hostPath volume is a directory under ``root``."""

    def __init__(self, root: Path, sysfs: str, spec: dict[str, Any]) -> None:
        self.host: dict[str, str] = {}
        for volume in spec["volumes"]:
            path = volume["hostPath"]["path"]
            # /proc is this machine's real one; /sys is the fake topology.
            if path == "/proc":
                self.host[volume["name"]] = "/proc"
            elif path == "/sys":
                self.host[volume["name"]] = sysfs
            else:
                self.host[volume["name"]] = str(root / path.strip("/").replace("/", "-"))
        self.state = self.host["kcm-state"]
        self.bin = self.host["kcm-bin"]

    def run_container(self, container: dict[str, Any], base_env: dict[str, str]) -> Run:
        """The container's command with its mount paths mapped to this host's directories."""
        mapping = {m["mountPath"]: self.host[m["name"]] for m in container["volumeMounts"]}

        def local(text: str) -> str:
            for inside, outside in mapping.items():
                if text == inside or text.startswith(inside + "/"):
                    return outside + text[len(inside) :]
                if text.endswith("=" + inside):
                    return text[: -len(inside)] + outside
            return text

        env = dict(base_env)
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = local(var["value"])
            elif var["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName":
                env[var["name"]] = NODE
        command = [local(arg) for arg in container["command"]]
        assert command[0] == "kcm"
        return run([KCM, *command[1:]], env)

    def run_init_containers(self, spec: dict[str, Any], env: dict[str, str]) -> list[Run]:
        results = []
        for container in spec["initContainers"]:
            result = self.run_container(container, env)
            assert result.code == 0, (container["name"], result.err)
            results.append(result)
        return results

    def tree(self) -> dict[str, str]:
        """Every file of the state directory and its content."""
        files = {}
        for dirpath, _, names in os.walk(self.state):
            for name in names:
                path = os.path.join(dirpath, name)
                files[os.path.relpath(path, self.state)] = Path(path).read_text()
        return files


def wait_for_task(state: str, pid: int) -> str:
    deadline = time.monotonic() + 10
    dataplane = Path(state, "pools", "dataplane")
    while time.monotonic() < deadline:
        for tasks in dataplane.glob("*/tasks"):
            if str(pid) in tasks.read_text().split(","):
                return tasks.parent.name
        time.sleep(0.05)
    raise AssertionError(f"isolate {pid} never booked a dataplane list")


def test_a_pod_restart_keeps_the_state_and_its_live_allocation(
    tmp_path: Path, home: Path, sys2: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    spec = daemon_set_spec(home, "--num-dp-cores=1", "--num-cp-cores=0")
    node = Node(tmp_path / "host", sys2, spec)

    first = node.run_init_containers(spec, cluster_env)
    assert first[2].out == (
        f"kcm discover: node {NODE}: capacity kcm.io/dataplane unset -> 1,"
        " label kcm.io/node=true set\n"
    )

    # A workload holds the dataplane list, booked through the installed standalone kcm.
    workload = subprocess.Popen(
        [f"{node.bin}/kcm", "isolate", f"--conf-dir={node.state}", "--pool=dataplane", "sleep 30"],
        env={**cluster_env, "KCM_PROC_FS": "/proc"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cpu_list = wait_for_task(node.state, workload.pid)
        before = node.tree()

        # The pod restarts: the same init containers run again over the same host paths.
        second = node.run_init_containers(spec, cluster_env)
        assert second[0].err == f"kcm: kept the existing state in {node.state} (1 task(s))\n"
        assert second[2].out == f"kcm discover: node {NODE}: no change (kcm.io/dataplane=1)\n"
        assert node.tree() == before
        assert workload.poll() is None
        assert wait_for_task(node.state, workload.pid) == cpu_list

        # The list is still taken: a second workload is refused rather than given it.
        refused = run(
            [f"{node.bin}/kcm", "isolate", f"--conf-dir={node.state}", "--pool=dataplane", "true"],
            {**cluster_env, "KCM_PROC_FS": "/proc"},
        )
        assert_error(refused, 4, "no free CPU list in exclusive pool 'dataplane'")
    finally:
        workload.terminate()
        workload.wait(timeout=10)
    assert apiserver.node["status"]["capacity"]["kcm.io/dataplane"] == "1"


def test_a_restart_with_other_core_counts_keeps_the_existing_pools(
    tmp_path: Path, home: Path, sys2: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    """Changing the flags of a deployed DaemonSet does not re-carve a node's live state."""
    old = daemon_set_spec(home, "--num-dp-cores=1", "--num-cp-cores=0")
    node = Node(tmp_path / "host", sys2, old)
    node.run_init_containers(old, cluster_env)
    before = node.tree()
    new = daemon_set_spec(home, "--num-dp-cores=2", "--num-cp-cores=0")
    results = node.run_init_containers(new, cluster_env)
    assert results[0].err.startswith("kcm: kept the existing state")
    assert node.tree() == before


def test_init_refuses_a_directory_that_is_not_a_kcm_state(
    tmp_path: Path, home: Path, sys2: str, cluster_env: dict[str, str]
) -> None:
    spec = daemon_set_spec(home, "--num-dp-cores=1", "--num-cp-cores=0")
    node = Node(tmp_path / "host", sys2, spec)
    os.makedirs(node.state)
    Path(node.state, "notes.txt").write_text("not kcm's\n")
    result = node.run_container(spec["initContainers"][0], cluster_env)
    assert_error(result, 3, f"{node.state} is not empty")
    assert kcm("describe", f"--conf-dir={node.state}", env=cluster_env).code != 0
