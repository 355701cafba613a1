"""``kcm cluster-init``: the manifests that deploy kcm on a Kubernetes cluster.

Building the manifests is pure (options in, a list of objects out); ``main`` validates the
options and prints the objects as one YAML stream for ``kubectl apply -f -``.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from kcm import __version__
from kcm.errors import UsageError
from kcm.k8s.discover import DATAPLANE_TAINT, LABEL, LABEL_VALUE, RESOURCE

NAME = "kcm"
STATE_DIR = "/etc/kcm"
INSTALL_DIR = "/opt/bin"
HOST_PROC = "/host/proc"
HOST_SYS = "/host/sys"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "node-agent"}
# The pod has a network namespace of its own (no hostNetwork), so the port cannot clash with
# another exporter on the node.
METRICS_PORT = 9545
METRICS_PORT_NAME = "metrics"
METRICS_PATH = "/metrics"
# Prometheus' Kubernetes service discovery reads these from the pod (the usual relabelling).
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(METRICS_PORT),
    "prometheus.io/path": METRICS_PATH,
}
EXAMPLE_LABELS = {"app.kubernetes.io/name": "kcm-example"}

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# Loose on purpose: registry, path, tag and digest characters, no spaces or leading '-'.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


@dataclass(frozen=True)
class ClusterOptions:
    """cluster-init's options, validated."""

    namespace: str
    image: str
    num_dp_cores: int
    num_cp_cores: int
    node_selector: tuple[tuple[str, str], ...]
    interval: str


# -- validating the options -----------------------------------------------------------------


def _namespace(text: str) -> str:
    if len(text) > 63 or not _DNS_LABEL.fullmatch(text):
        raise UsageError(
            f"--namespace={text!r} is not a namespace name"
            " (lower-case letters, digits and '-', at most 63)"
        )
    return text


def _image(text: str) -> str:
    if len(text) > 1024 or not _IMAGE.fullmatch(text):
        raise UsageError(f"--image={text!r} is not an image reference (e.g. registry/kcm:0.1.0)")
    return text


def _count(name: str, text: str, minimum: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < minimum or int(text) > 4096:
        raise UsageError(f"{name}={text!r} is not a whole number from {minimum} to 4096")
    return int(text)


def _label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name))


def _node_selector(text: str) -> tuple[tuple[str, str], ...]:
    """``key=value[,key=value...]``; empty means every node."""
    if not text:
        return ()
    pairs: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or not _label_key_ok(key):
            raise UsageError(
                f"--node-selector={text!r}: {item!r} is not key=value with a label key"
                " (e.g. --node-selector=feature.node.kubernetes.io/dpdk=true)"
            )
        if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
            raise UsageError(f"--node-selector={text!r}: {value!r} is not a label value")
        if key in pairs:
            raise UsageError(f"--node-selector={text!r} names {key!r} twice")
        pairs[key] = value
    return tuple(pairs.items())


def _interval(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise UsageError(f"--reconcile-interval={text!r} is not a positive number of seconds")
    return str(int(value)) if value.is_integer() else repr(value)


def parse_options(options: dict[str, str]) -> ClusterOptions:
    """The CLI's option strings (defaults applied), checked one by one."""
    return ClusterOptions(
        namespace=_namespace(options["--namespace"]),
        image=_image(options["--image"]),
        num_dp_cores=_count("--num-dp-cores", options["--num-dp-cores"], 1),
        num_cp_cores=_count("--num-cp-cores", options["--num-cp-cores"], 0),
        node_selector=_node_selector(options["--node-selector"]),
        interval=_interval(options["--reconcile-interval"]),
    )


# -- building the manifests ----------------------------------------------------------------


def _host_path(name: str, path: str, kind: str) -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def _mount(name: str, path: str, *, read_only: bool = False) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": name, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    return mount


STATE_VOLUME = _host_path("kcm-state", STATE_DIR, "DirectoryOrCreate")
BIN_VOLUME = _host_path("kcm-bin", INSTALL_DIR, "DirectoryOrCreate")
PROC_VOLUME = _host_path("host-proc", "/proc", "Directory")
SYS_VOLUME = _host_path("host-sys", "/sys", "Directory")

NODE_NAME_ENV = {
    "name": "NODE_NAME",
    "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
}
# The root filesystem is read-only: do not let Python try to write bytecode caches.
NO_BYTECODE_ENV = {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}


def container_security() -> dict[str, Any]:
    """Root (the state and install directories are root's on the host), but no capabilities.

    UID 0 owns the files it writes, so it needs no CAP_DAC_OVERRIDE; reading other
    processes' ``stat`` and ``status`` under the host's /proc needs no privilege either.
    """
    return {
        "runAsUser": 0,
        "runAsGroup": 0,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict[str, Any]:
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory_limit},
    }


# Measured: init, install and reconcile stay under 30 MiB, and so does metrics (about 25 MiB
# serving, with prometheus_client loaded); discover imports the Kubernetes client and settles
# near 70 MiB.
SMALL = _resources("10m", "32Mi", "200m", "64Mi")
CLIENT = _resources("10m", "96Mi", "200m", "192Mi")


def _container(
    name: str,
    image: str,
    command: list[str],
    mounts: list[dict[str, Any]],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": command,
        "env": [*env, NO_BYTECODE_ENV],
        "volumeMounts": mounts,
        "resources": resources,
        "securityContext": container_security(),
    }


def namespace(opts: ClusterOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": opts.namespace, "labels": {"app.kubernetes.io/name": NAME}},
    }


def service_account(opts: ClusterOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": NAME, "namespace": opts.namespace, "labels": dict(LABELS)},
    }


def cluster_role() -> dict[str, Any]:
    """Exactly what ``kcm discover`` calls: read a node, patch it, patch its status."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "kcm-discover", "labels": dict(LABELS)},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        ],
    }


def cluster_role_binding(opts: ClusterOptions) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "kcm-discover", "labels": dict(LABELS)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "kcm-discover",
        },
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": opts.namespace}],
    }


def _toleration() -> dict[str, Any]:
    return {"key": DATAPLANE_TAINT.key, "operator": "Exists", "effect": DATAPLANE_TAINT.effect}


def metrics_container(opts: ClusterOptions) -> dict[str, Any]:
    """``kcm metrics --listen``: reads the state (mounted read-only) and the host's /proc."""
    container = _container(
        "metrics",
        opts.image,
        [
            "kcm",
            "metrics",
            f"--conf-dir={STATE_DIR}",
            f"--listen=0.0.0.0:{METRICS_PORT}",
        ],
        [
            _mount("kcm-state", STATE_DIR, read_only=True),
            _mount("host-proc", HOST_PROC, read_only=True),
        ],
        [{"name": "KCM_PROC_FS", "value": HOST_PROC}],
        SMALL,
    )
    container["ports"] = [
        {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}
    ]
    probe = {"httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME}, "periodSeconds": 30}
    container["livenessProbe"] = {**probe, "failureThreshold": 3}
    container["readinessProbe"] = dict(probe)
    return container


def daemon_set(opts: ClusterOptions) -> dict[str, Any]:
    """init, install and a first discover as init containers; reconcile and discover loops,
    and the metrics endpoint."""
    state = _mount("kcm-state", STATE_DIR)
    conf = f"--conf-dir={STATE_DIR}"
    interval = f"--interval={opts.interval}"
    init_containers = [
        _container(
            "init",
            opts.image,
            [
                "kcm",
                "init",
                "--keep-existing",
                conf,
                f"--num-dp-cores={opts.num_dp_cores}",
                f"--num-cp-cores={opts.num_cp_cores}",
            ],
            [state, _mount("host-sys", HOST_SYS, read_only=True)],
            [{"name": "KCM_SYS_FS", "value": HOST_SYS}],
            SMALL,
        ),
        _container(
            "install",
            opts.image,
            ["kcm", "install", f"--install-dir={INSTALL_DIR}"],
            [_mount("kcm-bin", INSTALL_DIR)],
            [],
            SMALL,
        ),
        _container(
            "discover",
            opts.image,
            ["kcm", "discover", conf],
            [state],
            [NODE_NAME_ENV],
            CLIENT,
        ),
    ]
    containers = [
        _container(
            "reconcile",
            opts.image,
            ["kcm", "reconcile", conf, interval],
            [state, _mount("host-proc", HOST_PROC, read_only=True)],
            [{"name": "KCM_PROC_FS", "value": HOST_PROC}],
            SMALL,
        ),
        _container(
            "discover",
            opts.image,
            ["kcm", "discover", conf, interval],
            [state],
            [NODE_NAME_ENV],
            CLIENT,
        ),
        metrics_container(opts),
    ]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": NAME,
        "automountServiceAccountToken": True,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "tolerations": [_toleration()],
        "initContainers": init_containers,
        "containers": containers,
        "volumes": [STATE_VOLUME, BIN_VOLUME, PROC_VOLUME, SYS_VOLUME],
    }
    if opts.node_selector:
        pod_spec["nodeSelector"] = dict(opts.node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": opts.namespace, "labels": dict(LABELS)},
        "spec": {
            "selector": {"matchLabels": dict(LABELS)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": dict(LABELS), "annotations": dict(SCRAPE_ANNOTATIONS)},
                "spec": pod_spec,
            },
        },
    }


EXAMPLE_COMMAND = (
    'echo "kcm gave this pod CPU list $KCM_CPUS_ASSIGNED";'
    " grep Cpus_allowed_list /proc/self/status; exec sleep 3600"
)


def example_pod(opts: ClusterOptions) -> dict[str, Any]:
    """A workload that asks the scheduler for one dataplane list and runs on it."""
    container = _container(
        "dataplane",
        opts.image,
        [
            f"{INSTALL_DIR}/kcm",
            "isolate",
            f"--conf-dir={STATE_DIR}",
            "--pool=dataplane",
            EXAMPLE_COMMAND,
        ],
        [
            _mount("kcm-state", STATE_DIR),
            _mount("kcm-bin", INSTALL_DIR, read_only=True),
            _mount("host-proc", HOST_PROC, read_only=True),
        ],
        [{"name": "KCM_PROC_FS", "value": HOST_PROC}],
        {
            # Extended resources need limits; requests, if given, must equal them.
            "requests": {RESOURCE: "1", "cpu": "100m", "memory": "32Mi"},
            "limits": {RESOURCE: "1", "memory": "64Mi"},
        },
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "kcm-example-dataplane",
            "namespace": opts.namespace,
            "labels": dict(EXAMPLE_LABELS),
        },
        "spec": {
            # The workload never talks to the API: no token in the pod at all.
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "nodeSelector": {LABEL: LABEL_VALUE},
            "tolerations": [_toleration()],
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [
                _host_path("kcm-state", STATE_DIR, "Directory"),
                _host_path("kcm-bin", INSTALL_DIR, "Directory"),
                PROC_VOLUME,
            ],
        },
    }


def manifests(opts: ClusterOptions, *, example_workload: bool) -> list[dict[str, Any]]:
    """Every object to apply, in an order ``kubectl apply`` can create them in."""
    objects = [
        namespace(opts),
        service_account(opts),
        cluster_role(),
        cluster_role_binding(opts),
        daemon_set(opts),
    ]
    if example_workload:
        objects.append(example_pod(opts))
    return objects


def render(objects: list[dict[str, Any]]) -> str:
    """One YAML stream, a document per object."""
    try:
        import yaml
    except ImportError:
        from kcm.errors import EnvironmentProblem

        raise EnvironmentProblem(
            "kcm cluster-init needs the Python package PyYAML (pip install pyyaml)"
        ) from None

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # pieces shared between containers print in full, not as &id001

    header = f"# kcm {__version__} cluster-init: apply with  kubectl apply -f -\n"
    return header + yaml.dump_all(
        objects, Dumper=Dumper, explicit_start=True, sort_keys=False, default_flow_style=False
    )


def main(options: dict[str, str], *, example_workload: bool) -> int:
    """``kcm cluster-init``: print the manifests."""
    opts = parse_options(options)
    sys.stdout.write(render(manifests(opts, example_workload=example_workload)))
    return 0
