"""kcm discover against a fake API server, through the real Kubernetes client and a kubeconfig."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.conftest import (
    KCM,
    NODE,
    assert_error,
    clean_env,
    kcm,
    run,
    write_kubeconfig,
)
from tests.k8s.fake_apiserver import (
    JSON_PATCH,
    MERGE_PATCH,
    TOKEN,
    FakeApiServer,
    Recorded,
)

GET = Recorded("GET", f"/api/v1/nodes/{NODE}", None, None, f"Bearer {TOKEN}")
OUR_TAINT = {"key": "kcm.io/dataplane", "value": "true", "effect": "NoSchedule"}


def status_patch(value: str) -> Recorded:
    ops = [{"op": "add", "path": "/status/capacity/kcm.io~1dataplane", "value": value}]
    return Recorded("PATCH", f"/api/v1/nodes/{NODE}/status", JSON_PATCH, ops, f"Bearer {TOKEN}")


def node_patch(body: dict[str, object]) -> Recorded:
    return Recorded("PATCH", f"/api/v1/nodes/{NODE}", MERGE_PATCH, body, f"Bearer {TOKEN}")


LABEL_PATCH = node_patch({"metadata": {"labels": {"kcm.io/node": "true"}}})


def discover(conf: str, env: dict[str, str], *flags: str) -> tuple[int, str, str]:
    result = kcm("discover", f"--conf-dir={conf}", *flags, env=env)
    return result.code, result.out, result.err


# -- what it sends ------------------------------------------------------------------------


def test_first_run_advertises_capacity_and_labels_the_node(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    code, out, err = discover(state16, cluster_env)
    assert (code, err) == (0, "")
    assert out == (
        f"kcm discover: node {NODE}: capacity kcm.io/dataplane unset -> 4,"
        " label kcm.io/node=true set\n"
    )
    assert apiserver.requests == [GET, LABEL_PATCH, status_patch("4")]
    assert apiserver.node["status"]["capacity"]["kcm.io/dataplane"] == "4"
    assert apiserver.node["metadata"]["labels"]["kcm.io/node"] == "true"
    assert "taints" not in apiserver.node["spec"]


def test_taint_is_added_to_the_existing_taints_with_a_resource_version_precondition(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    other = {"key": "example.com/maintenance", "value": "soon", "effect": "PreferNoSchedule"}
    apiserver.node["spec"]["taints"] = [other]
    code, out, _ = discover(state16, cluster_env, "--taint")
    assert code == 0
    assert out.endswith("taint kcm.io/dataplane=true:NoSchedule set\n")
    expected = {
        "metadata": {"labels": {"kcm.io/node": "true"}, "resourceVersion": "1"},
        "spec": {"taints": [other, OUR_TAINT]},
    }
    assert apiserver.requests == [GET, node_patch(expected), status_patch("4")]
    assert apiserver.node["spec"]["taints"] == [other, OUR_TAINT]


def test_second_run_reads_the_node_and_writes_nothing(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    assert discover(state16, cluster_env, "--taint")[0] == 0
    node_after_first = apiserver.node
    apiserver.requests.clear()
    code, out, err = discover(state16, cluster_env, "--taint")
    assert (code, out, err) == (
        0,
        f"kcm discover: node {NODE}: no change (kcm.io/dataplane=4)\n",
        "",
    )
    assert apiserver.requests == [GET]
    assert apiserver.node == node_after_first
    assert apiserver.node["spec"]["taints"] == [OUR_TAINT]


def test_existing_taint_is_not_duplicated_and_only_the_label_is_patched(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    apiserver.node["spec"]["taints"] = [dict(OUR_TAINT)]
    assert discover(state16, cluster_env, "--taint")[0] == 0
    assert apiserver.requests == [GET, LABEL_PATCH, status_patch("4")]
    assert apiserver.node["spec"]["taints"] == [OUR_TAINT]


def test_our_taint_with_another_value_is_replaced_not_doubled(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    apiserver.node["spec"]["taints"] = [{**OUR_TAINT, "value": "false"}]
    apiserver.node["metadata"]["labels"]["kcm.io/node"] = "true"
    apiserver.node["status"]["capacity"]["kcm.io/dataplane"] = "4"
    code, out, _ = discover(state16, cluster_env, "--taint")
    assert (code, out) == (
        0,
        f"kcm discover: node {NODE}: taint kcm.io/dataplane=true:NoSchedule set\n",
    )
    expected = {"metadata": {"resourceVersion": "1"}, "spec": {"taints": [OUR_TAINT]}}
    assert apiserver.requests == [GET, node_patch(expected)]


def test_capacity_zeroed_by_a_kubelet_restart_is_put_back(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    assert discover(state16, cluster_env)[0] == 0
    apiserver.node["status"]["capacity"]["kcm.io/dataplane"] = "0"
    apiserver.requests.clear()
    code, out, _ = discover(state16, cluster_env)
    assert (code, out) == (0, f"kcm discover: node {NODE}: capacity kcm.io/dataplane 0 -> 4\n")
    assert apiserver.requests == [GET, status_patch("4")]


def test_capacity_counts_the_dataplane_lists_of_the_state(
    tmp_path: Path, sys16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    conf = str(tmp_path / "kcm6")
    init = kcm(
        "init",
        f"--conf-dir={conf}",
        "--num-dp-cores=6",
        "--num-cp-cores=1",
        env={**cluster_env, "KCM_SYS_FS": sys16},
    )
    assert init.code == 0, init.err
    assert discover(conf, cluster_env)[0] == 0
    assert apiserver.requests[-1] == status_patch("6")


def test_a_conflicting_writer_makes_discover_read_again_and_retry(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    apiserver.conflicts = 1  # another client writes the node between our GET and PATCH
    code, _, err = discover(state16, cluster_env, "--taint")
    assert (code, err) == (0, "")
    methods = [(r.method, r.path.rsplit("/", 1)[-1]) for r in apiserver.requests]
    assert methods == [
        ("GET", NODE),
        ("PATCH", NODE),  # 409: resourceVersion 1 is stale
        ("GET", NODE),
        ("PATCH", NODE),
        ("PATCH", "status"),
    ]
    assert apiserver.requests[1].body["metadata"]["resourceVersion"] == "1"
    assert apiserver.requests[3].body["metadata"]["resourceVersion"] == "2"
    assert apiserver.node["spec"]["taints"] == [OUR_TAINT]


def test_endless_conflicts_end_in_an_error(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    apiserver.conflicts = 100
    result = kcm("discover", f"--conf-dir={state16}", "--taint", env=cluster_env)
    assert_error(result, 7, f'node "{NODE}" changed while kcm was updating it')
    assert len([r for r in apiserver.requests if r.method == "PATCH"]) == 5


# -- errors -------------------------------------------------------------------------------


def test_no_node_name(state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer) -> None:
    env = {k: v for k, v in cluster_env.items() if k != "NODE_NAME"}
    result = kcm("discover", f"--conf-dir={state16}", env=env)
    assert_error(result, 7, "NODE_NAME is not set", "fieldRef spec.nodeName")
    assert apiserver.requests == []


def test_a_node_name_that_is_not_one(state16: str, cluster_env: dict[str, str]) -> None:
    result = kcm("discover", f"--conf-dir={state16}", env={**cluster_env, "NODE_NAME": "../x"})
    assert_error(result, 7, "NODE_NAME='../x' is not a Kubernetes node name")


def test_no_credentials_at_all(state16: str, home: Path) -> None:
    result = kcm("discover", f"--conf-dir={state16}", env=clean_env(home, NODE_NAME=NODE))
    assert_error(
        result,
        7,
        "no Kubernetes credentials: not in a pod (KUBERNETES_SERVICE_HOST is unset)",
        f"KUBECONFIG is unset and {home}/.kube/config does not exist",
    )


def test_kubeconfig_variable_naming_a_missing_file(state16: str, home: Path) -> None:
    env = clean_env(home, NODE_NAME=NODE, KUBECONFIG="/nonexistent/kubeconfig")
    result = kcm("discover", f"--conf-dir={state16}", env=env)
    assert_error(
        result, 7, "no kubeconfig (KUBECONFIG=/nonexistent/kubeconfig names no existing file)"
    )


def test_pod_without_a_service_account_token(state16: str, home: Path) -> None:
    env = clean_env(
        home, NODE_NAME=NODE, KUBERNETES_SERVICE_HOST="10.96.0.1", KUBERNETES_SERVICE_PORT="443"
    )
    result = kcm("discover", f"--conf-dir={state16}", env=env)
    assert_error(
        result, 7, "in a pod, but it has no service account token", "automountServiceAccountToken"
    )


def test_home_kubeconfig_is_used_when_kubeconfig_is_unset(
    state16: str, home: Path, apiserver: FakeApiServer
) -> None:
    write_kubeconfig(home / ".kube/config", apiserver.url)
    code, _, err = discover(state16, clean_env(home, NODE_NAME=NODE))
    assert (code, err) == (0, "")
    assert apiserver.requests[0] == GET


def test_a_broken_kubeconfig(state16: str, tmp_path: Path, home: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    env = clean_env(home, NODE_NAME=NODE, KUBECONFIG=str(broken))
    result = kcm("discover", f"--conf-dir={state16}", env=env)
    assert_error(result, 7, f"cannot use the kubeconfig (KUBECONFIG={broken})")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_api_server_unreachable(state16: str, tmp_path: Path, home: Path) -> None:
    port = _closed_port()
    config = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}")
    result = kcm(
        "discover", f"--conf-dir={state16}", env=clean_env(home, NODE_NAME=NODE, KUBECONFIG=config)
    )
    assert_error(
        result,
        7,
        f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}",
        f"kubeconfig KUBECONFIG={config}",
        "connection refused",
    )


@pytest.mark.parametrize(
    ("verb", "resource", "sent"),
    [
        ("get", "nodes", 1),
        ("patch", "nodes", 2),
        ("patch", "nodes/status", 3),
    ],
)
def test_forbidden_names_the_missing_permission(
    state16: str,
    cluster_env: dict[str, str],
    apiserver: FakeApiServer,
    verb: str,
    resource: str,
    sent: int,
) -> None:
    apiserver.forbidden.add((verb, resource))
    result = kcm("discover", f"--conf-dir={state16}", env=cluster_env)
    line = assert_error(
        result, 7, f"permission denied: kcm needs permission to {verb} {resource} (403 Forbidden"
    )
    assert f'cannot {verb} resource "{resource}"' in line  # the API server's own words
    assert len(apiserver.requests) == sent


def test_node_not_found(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    result = kcm("discover", f"--conf-dir={state16}", env={**cluster_env, "NODE_NAME": "worker-9"})
    assert_error(result, 7, 'node "worker-9" not found at http://127.0.0.1:', "NODE_NAME must be")
    assert [r.path for r in apiserver.requests] == ["/api/v1/nodes/worker-9"]


def test_rejected_credentials(
    state16: str, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    apiserver.token = "another-token"
    result = kcm("discover", f"--conf-dir={state16}", env=cluster_env)
    assert_error(
        result, 7, "rejected the credentials from kubeconfig KUBECONFIG=", "401 Unauthorized"
    )


def test_missing_state_directory(
    tmp_path: Path, cluster_env: dict[str, str], apiserver: FakeApiServer
) -> None:
    result = kcm("discover", f"--conf-dir={tmp_path}/none", env=cluster_env)
    assert_error(result, 3, f"{tmp_path}/none does not exist")
    assert apiserver.requests == []


def test_standalone_kcm_without_the_kubernetes_package(
    tmp_path: Path, state16: str, cluster_env: dict[str, str]
) -> None:
    """The zipapp kcm install writes, run by a python3 that has no site-packages."""
    installed = kcm("install", f"--install-dir={tmp_path}/bin", env=cluster_env)
    assert installed.code == 0, installed.err
    bare = [sys.executable, "-I", "-S", f"{tmp_path}/bin/kcm"]
    result = run([*bare, "discover", f"--conf-dir={state16}"], cluster_env)
    assert_error(result, 6, "needs the Python package 'kubernetes' (pip install kubernetes)")
    result = run([*bare, "cluster-init"], cluster_env)
    assert_error(result, 6, "needs the Python package PyYAML")
    # The rest of the standalone kcm works without either package.
    described = run([*bare, "describe", f"--conf-dir={state16}"], cluster_env)
    assert described.code == 0, described.err


def test_discover_help_does_not_need_the_cluster() -> None:
    proc = subprocess.run([KCM, "discover", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "kcm discover [--conf-dir=<dir>] [--taint] [--interval=<seconds>]" in proc.stdout
