"""The Kubernetes API as kcm uses it: find credentials, GET and PATCH one Node.

The official client does the HTTP; this module picks the credentials, names the content type
of every patch, and turns each failure into a ``ClusterError`` that says what to fix. The
client is imported here, and this module only by the commands that talk to the cluster, so
``kcm isolate`` never pays for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from kcm.errors import ClusterError, EnvironmentProblem

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
# (connect, read) seconds for one request; urllib3 retries a failed connection twice more.
REQUEST_TIMEOUT = (10.0, 30.0)
CONNECT_RETRIES = 2
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ConflictError(ClusterError):
    """A patch's resourceVersion precondition failed: the object changed since it was read."""


@dataclass(frozen=True)
class Request:
    """One API call, described the way RBAC and the user see it."""

    method: str
    path: str
    verb: str
    resource: str


def _import_client() -> Any:
    try:
        import kubernetes.client
        import kubernetes.config
    except ImportError:
        raise EnvironmentProblem(
            "this command needs the Python package 'kubernetes' (pip install kubernetes);"
            " the standalone kcm written by kcm install runs isolate, init, reconcile and"
            " describe only"
        ) from None
    return kubernetes


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _kubeconfig_paths() -> tuple[str, list[str]]:
    """What the kubeconfig setting says (for messages) and the files it names."""
    env = os.environ.get("KUBECONFIG")
    if env:
        return f"KUBECONFIG={env}", [p for p in env.split(os.pathsep) if p]
    default = os.path.expanduser("~/.kube/config")
    return default, [default]


def load_configuration() -> tuple[Any, str]:
    """The client configuration and where it came from: in-cluster, else the kubeconfig."""
    kubernetes = _import_client()
    cfg = kubernetes.client.Configuration()
    in_cluster_problem = "not in a pod (KUBERNETES_SERVICE_HOST is unset)"
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
            cfg.retries = CONNECT_RETRIES
            return cfg, "the pod's service account"
        except kubernetes.config.ConfigException as e:
            in_cluster_problem = f"in a pod, but its service account is unusable: {e}"
            if not os.path.exists(SERVICE_ACCOUNT_TOKEN):
                in_cluster_problem = (
                    f"in a pod, but it has no service account token ({SERVICE_ACCOUNT_TOKEN}"
                    " is missing: automountServiceAccountToken: false?)"
                )
    setting, paths = _kubeconfig_paths()
    existing = [p for p in paths if os.path.isfile(p)]
    if not existing:
        if setting.startswith("KUBECONFIG="):
            where = f"{setting} names no existing file"
        else:
            where = f"KUBECONFIG is unset and {setting} does not exist"
        raise ClusterError(
            f"no Kubernetes credentials: {_one_line(in_cluster_problem)}, and no kubeconfig"
            f" ({where})"
        )
    import yaml

    try:
        kubernetes.config.load_kube_config(
            config_file=os.pathsep.join(existing),
            client_configuration=cfg,
            persist_config=False,
        )
    except (kubernetes.config.ConfigException, yaml.YAMLError, OSError, ValueError) as e:
        raise ClusterError(f"cannot use the kubeconfig ({setting}): {_one_line(str(e))}") from None
    cfg.retries = CONNECT_RETRIES
    return cfg, f"kubeconfig {setting}"


def _status_message(body: str | bytes | None) -> str:
    """The ``message`` of an API ``Status`` body, else the body's first bytes."""
    if body is None:
        return ""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        status = json.loads(body)
    except ValueError:
        return _one_line(body)[:200]
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return _one_line(status["message"])
    return _one_line(body)[:200]


def _connection_reason(error: BaseException) -> str:
    """The most telling cause of a connection failure: the OS's words if there are some."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    fallback = _one_line(str(error))
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror and not type(e).__module__.startswith("urllib3"):
            return e.strerror.lower() if e.strerror[:1].isupper() else e.strerror
        if type(e).__name__ in ("ConnectTimeoutError", "ReadTimeoutError"):
            return "timed out"
        todo.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
    return fallback


class NodeApi:
    """GET and PATCH of Node objects through one client connection pool."""

    def __init__(self, configuration: Any, source: str) -> None:
        self._kubernetes = _import_client()
        self.source = source
        self.host = str(configuration.host)
        self._client = self._kubernetes.client.ApiClient(configuration)
        self._core = self._kubernetes.client.CoreV1Api(self._client)

    @classmethod
    def connect(cls) -> NodeApi:
        """An API for the credentials found: in-cluster, else the kubeconfig."""
        configuration, source = load_configuration()
        return cls(configuration, source)

    def close(self) -> None:
        self._client.close()

    def get_node(self, name: str) -> dict[str, Any]:
        request = Request("GET", f"/api/v1/nodes/{name}", "get", "nodes")
        return self._call(request, name, self._core.read_node, name)

    def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386) to the node."""
        request = Request("PATCH", f"/api/v1/nodes/{name}", "patch", "nodes")
        return self._call(
            request, name, self._core.patch_node, name, patch, _content_type=MERGE_PATCH
        )

    def patch_node_status(self, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply a JSON Patch (RFC 6902) to the node's status subresource."""
        request = Request("PATCH", f"/api/v1/nodes/{name}/status", "patch", "nodes/status")
        return self._call(
            request,
            name,
            self._core.patch_node_status,
            name,
            operations,
            _content_type=JSON_PATCH,
        )

    def _call(
        self, request: Request, node: str, method: Any, *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        import urllib3

        exceptions = self._kubernetes.client.exceptions
        try:
            response = method(
                *args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs
            )
            data = response.data
        except exceptions.ApiException as e:
            raise self._api_error(request, node, e) from None
        except urllib3.exceptions.HTTPError as e:
            raise ClusterError(
                f"cannot reach the Kubernetes API server at {self.host}"
                f" (from {self.source}): {_connection_reason(e)}"
            ) from None
        try:
            result = json.loads(data)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise ClusterError(
                f"{request.method} {self.host}{request.path} answered with something other"
                " than a JSON object: is it a Kubernetes API server?"
            )
        return result

    def _api_error(self, request: Request, node: str, e: Any) -> ClusterError:
        status = int(e.status or 0)
        reason = e.reason or ""
        message = _status_message(e.body)
        detail = f": {message}" if message else ""
        if status == 403:
            return ClusterError(
                f"permission denied: kcm needs permission to {request.verb} {request.resource}"
                f" (403 Forbidden from {self.host}{detail})"
            )
        if status == 404:
            return ClusterError(
                f'node "{node}" not found at {self.host}: NODE_NAME must be the name'
                " Kubernetes knows the node by (in a pod: fieldRef spec.nodeName)"
            )
        if status == 401:
            return ClusterError(
                f"the Kubernetes API server at {self.host} rejected the credentials from"
                f" {self.source} (401 Unauthorized{detail})"
            )
        if status == 409:
            return ConflictError(f'node "{node}" changed while kcm was updating it{detail}')
        if status == 0:
            return ClusterError(
                f"cannot reach the Kubernetes API server at {self.host}"
                f" (from {self.source}): {_one_line(str(reason))}"
            )
        return ClusterError(
            f"{request.method} {self.host}{request.path} failed: {status} {reason}{detail}"
        )
