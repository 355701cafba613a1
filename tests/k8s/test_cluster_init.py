"""kcm cluster-init: what it prints, checked against the Kubernetes JSON schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.k8s.conftest import assert_error, clean_env, kcm

# The newest schemas kubernetes-validate ships, and an older release still in support.
VERSIONS = sorted({kubernetes_validate.latest_version(), "1.30.0"})

FLAG_SETS = {
    "defaults": [],
    "everything": [
        "--namespace=dataplane-system",
        "--image=registry.example.com:5000/nfv/kcm@sha256:" + "a" * 64,
        "--num-dp-cores=8",
        "--num-cp-cores=2",
        "--node-selector=feature.node.kubernetes.io/cpu-cpuid.AVX512F=true",
        "--reconcile-interval=30",
        "--example-workload",
    ],
    "two-selectors-and-a-fractional-interval": [
        "--image=kcm:0.1.0",
        "--node-selector=kcm=yes,example.com/rack=",
        "--reconcile-interval=2.5",
        "--num-cp-cores=0",
    ],
    "example-workload-only": ["--example-workload"],
}


def cluster_init(home: Path, *flags: str) -> list[dict[str, Any]]:
    result = kcm("cluster-init", *flags, env=clean_env(home))
    assert (result.code, result.err) == (0, ""), result.err
    assert result.out.startswith("# kcm ")
    return [doc for doc in yaml.safe_load_all(result.out) if doc is not None]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_every_manifest_validates_against_the_kubernetes_schemas(
    home: Path, flags: list[str]
) -> None:
    docs = cluster_init(home, *flags)
    kinds = [d["kind"] for d in docs]
    expected = ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    if "--example-workload" in flags:
        expected.append("Pod")
    assert kinds == expected
    for version in VERSIONS:
        for doc in docs:
            # strict: an unknown or misspelt field is an error, not ignored
            kubernetes_validate.validate(doc, version, strict=True)


def test_schema_check_catches_a_misspelt_field() -> None:
    """The validation above has teeth."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containerz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, VERSIONS[-1], strict=True)


def test_defaults(home: Path) -> None:
    docs = cluster_init(home)
    assert {d["metadata"].get("namespace", "kcm") for d in docs if d["kind"] != "Namespace"} == {
        "kcm"
    }
    assert by_kind(docs, "Namespace")["metadata"]["name"] == "kcm"
    spec = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert "nodeSelector" not in spec
    assert {c["image"] for c in spec["initContainers"] + spec["containers"]} == {"kcm:latest"}
    commands = {c["name"]: c["command"] for c in spec["initContainers"]}
    assert commands["init"][-2:] == ["--num-dp-cores=4", "--num-cp-cores=1"]
    assert spec["containers"][0]["command"][-1] == "--interval=60"


def test_cluster_role_grants_only_what_discover_uses(home: Path) -> None:
    docs = cluster_init(home)
    role = by_kind(docs, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    ]
    binding = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = by_kind(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kcm"}
    ]


def test_daemon_set_runs_init_install_discover_then_the_loops_and_metrics(home: Path) -> None:
    docs = cluster_init(
        home,
        "--namespace=nfv",
        "--image=reg.example.com/kcm:0.1.0",
        "--num-dp-cores=6",
        "--num-cp-cores=2",
        "--node-selector=nfv.example.com/dataplane=true",
        "--reconcile-interval=15",
    )
    ds = by_kind(docs, "DaemonSet")
    assert ds["apiVersion"] == "apps/v1"
    assert ds["metadata"]["namespace"] == "nfv"
    spec = ds["spec"]["template"]["spec"]
    assert (
        ds["spec"]["selector"]["matchLabels"].items()
        <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    assert spec["serviceAccountName"] == by_kind(docs, "ServiceAccount")["metadata"]["name"]
    assert spec["nodeSelector"] == {"nfv.example.com/dataplane": "true"}
    assert [(c["name"], c["command"]) for c in spec["initContainers"]] == [
        (
            "init",
            [
                "kcm",
                "init",
                "--keep-existing",
                "--conf-dir=/etc/kcm",
                "--num-dp-cores=6",
                "--num-cp-cores=2",
            ],
        ),
        ("install", ["kcm", "install", "--install-dir=/opt/bin"]),
        ("discover", ["kcm", "discover", "--conf-dir=/etc/kcm"]),
    ]
    assert [(c["name"], c["command"]) for c in spec["containers"]] == [
        ("reconcile", ["kcm", "reconcile", "--conf-dir=/etc/kcm", "--interval=15"]),
        ("discover", ["kcm", "discover", "--conf-dir=/etc/kcm", "--interval=15"]),
        ("metrics", ["kcm", "metrics", "--conf-dir=/etc/kcm", "--listen=0.0.0.0:9545"]),
    ]
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"]}
    assert volumes == {
        "kcm-state": {"path": "/etc/kcm", "type": "DirectoryOrCreate"},
        "kcm-bin": {"path": "/opt/bin", "type": "DirectoryOrCreate"},
        "host-proc": {"path": "/proc", "type": "Directory"},
        "host-sys": {"path": "/sys", "type": "Directory"},
    }
    containers = {
        ("init-" if c in spec["initContainers"] else "") + c["name"]: c
        for c in spec["initContainers"] + spec["containers"]
    }
    reconcile = containers["reconcile"]
    assert {"name": "KCM_PROC_FS", "value": "/host/proc"} in reconcile["env"]
    assert {"name": "host-proc", "mountPath": "/host/proc", "readOnly": True} in reconcile[
        "volumeMounts"
    ]
    init = containers["init-init"]
    assert {"name": "KCM_SYS_FS", "value": "/host/sys"} in init["env"]
    assert {"name": "host-sys", "mountPath": "/host/sys", "readOnly": True} in init["volumeMounts"]
    assert {"name": "kcm-bin", "mountPath": "/opt/bin"} in containers["init-install"][
        "volumeMounts"
    ]
    node_name = {
        "name": "NODE_NAME",
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
    }
    assert node_name in containers["init-discover"]["env"]
    assert node_name in containers["discover"]["env"]
    # Least privilege: no host PID or network namespace, no privileged or capable container.
    for key in ("hostPID", "hostNetwork", "hostIPC"):
        assert key not in spec
    for c in containers.values():
        security = c["securityContext"]
        assert security["privileged"] is False
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}
        assert set(c["resources"]["limits"]) == {"cpu", "memory"}
    # The taint discover --taint sets must not keep kcm itself off the node.
    assert {"key": "kcm.io/dataplane", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]


def test_metrics_endpoint_is_a_named_port_with_scrape_annotations(home: Path) -> None:
    ds = by_kind(cluster_init(home), "DaemonSet")
    template = ds["spec"]["template"]
    (metrics,) = [c for c in template["spec"]["containers"] if c["name"] == "metrics"]
    assert metrics["ports"] == [{"name": "metrics", "containerPort": 9545, "protocol": "TCP"}]
    # The address the command listens on is the port the manifest names and annotates.
    listen = next(a for a in metrics["command"] if a.startswith("--listen="))
    assert listen == "--listen=0.0.0.0:9545"
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9545",
        "prometheus.io/path": "/metrics",
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert metrics[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # It only reads: the state and the host's /proc are mounted read-only, nothing else.
    assert metrics["volumeMounts"] == [
        {"name": "kcm-state", "mountPath": "/etc/kcm", "readOnly": True},
        {"name": "host-proc", "mountPath": "/host/proc", "readOnly": True},
    ]
    assert {"name": "KCM_PROC_FS", "value": "/host/proc"} in metrics["env"]
    assert metrics["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert metrics["securityContext"]["readOnlyRootFilesystem"] is True
    assert metrics["securityContext"]["privileged"] is False


def test_example_workload_asks_for_one_dataplane_list_without_a_token(home: Path) -> None:
    docs = cluster_init(home, "--example-workload", "--namespace=nfv", "--image=kcm:0.1.0")
    pod = by_kind(docs, "Pod")
    assert pod["metadata"]["namespace"] == "nfv"
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    (container,) = spec["containers"]
    assert container["resources"]["requests"]["kcm.io/dataplane"] == "1"
    assert container["resources"]["limits"]["kcm.io/dataplane"] == "1"
    assert container["command"][:4] == [
        "/opt/bin/kcm",
        "isolate",
        "--conf-dir=/etc/kcm",
        "--pool=dataplane",
    ]
    assert {"name": "KCM_PROC_FS", "value": "/host/proc"} in container["env"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/etc/kcm", "/opt/bin", "/host/proc"}
    assert mounts["/opt/bin"]["readOnly"] is True
    assert mounts["/host/proc"]["readOnly"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_output_is_plain_yaml_without_anchors(home: Path) -> None:
    result = kcm("cluster-init", "--example-workload", env=clean_env(home))
    assert "&id" not in result.out
    assert "*id" not in result.out
    assert result.out.count("\n---\n") == 6  # one document per object


def test_without_example_workload_there_is_no_pod(home: Path) -> None:
    assert "Pod" not in [d["kind"] for d in cluster_init(home)]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--namespace=KCM", "--namespace='KCM' is not a namespace name"),
        ("--namespace=" + "a" * 64, "is not a namespace name"),
        ("--image=", "--image='' is not an image reference"),
        ("--image=kcm latest", "--image='kcm latest' is not an image reference"),
        ("--num-dp-cores=0", "--num-dp-cores='0' is not a whole number from 1 to 4096"),
        ("--num-dp-cores=two", "--num-dp-cores='two' is not a whole number from 1 to 4096"),
        ("--num-cp-cores=-1", "--num-cp-cores='-1' is not a whole number from 0 to 4096"),
        ("--node-selector=dpdk", "'dpdk' is not key=value with a label key"),
        ("--node-selector==true", "'=true' is not key=value with a label key"),
        ("--node-selector=a=b=c", "'b=c' is not a label value"),
        ("--node-selector=a=1,a=2", "names 'a' twice"),
        ("--reconcile-interval=0", "--reconcile-interval='0' is not a positive number of seconds"),
        ("--reconcile-interval=inf", "is not a positive number of seconds"),
        ("--reconcile-interval=soon", "is not a positive number of seconds"),
        ("--taint", "kcm cluster-init has no option '--taint'"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(home: Path, flag: str, message: str) -> None:
    result = kcm("cluster-init", flag, env=clean_env(home))
    assert_error(result, 2, message)
    assert result.out == ""
