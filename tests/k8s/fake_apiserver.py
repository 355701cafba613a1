"""A local HTTP server that speaks the Node endpoints the way the Kubernetes API server does.

GET ``/api/v1/nodes/<name>``; PATCH ``/api/v1/nodes/<name>`` with a JSON merge patch (or a
strategic merge patch, which for the fields kcm touches, labels and the atomic taints list,
means the same) and PATCH ``/api/v1/nodes/<name>/status`` with a JSON Patch. Patches apply
to an in-memory Node; ``metadata.resourceVersion`` in a merge patch is a precondition (409 on
mismatch), as on a real server. Failures answer with a ``Status`` object. Every request is
recorded (method, path, content type, parsed body, Authorization header) for the tests.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
TOKEN = "kcm-test-token"
SERVICE_ACCOUNT = "system:serviceaccount:kcm:kcm"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    content_type: str | None
    body: Any
    authorization: str | None


def status(code: int, reason: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def make_node(name: str, *, taints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Node as a kubelet registers it: a few labels, capacity and allocatable."""
    node: dict[str, Any] = {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": "7c1f7d2e-0000-4000-8000-000000000001",
            "resourceVersion": "1",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {
            "capacity": {"cpu": "16", "memory": "65842592Ki", "pods": "110"},
            "allocatable": {"cpu": "16", "memory": "65740192Ki", "pods": "110"},
        },
    }
    if taints is not None:
        node["spec"]["taints"] = taints
    return node


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class PatchError(Exception):
    pass


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902: add, replace, remove and test (enough for node status)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON Patch is a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"malformed operation {op!r}")
        path = op["path"]
        if not path.startswith("/"):
            raise PatchError(f"path {path!r} does not start with /")
        *parents, last = [_unescape(t) for t in path[1:].split("/")]
        parent = doc
        for token in parents:
            if not isinstance(parent, dict) or token not in parent:
                raise PatchError(f"doc is missing path: {path}")
            parent = parent[token]
        if not isinstance(parent, dict):
            raise PatchError(f"unable to patch {path}")
        kind = op["op"]
        if kind == "add":
            parent[last] = op["value"]
        elif kind == "replace":
            if last not in parent:
                raise PatchError(f"replace operation does not apply: doc is missing key: {path}")
            parent[last] = op["value"]
        elif kind == "remove":
            if last not in parent:
                raise PatchError(f"remove operation does not apply: doc is missing key: {path}")
            del parent[last]
        elif kind == "test":
            if parent.get(last) != op.get("value"):
                raise PatchError(f"testing value {path} failed")
        else:
            raise PatchError(f"unsupported operation {kind!r}")
    return doc


class FakeApiServer:
    """The API server of a one-node cluster, with switches for the failures to test."""

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = node
        self.requests: list[Recorded] = []
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) RBAC denies
        self.conflicts = 0  # answer that many node PATCHes with 409, as if someone raced us
        self.token = TOKEN  # the bearer token it accepts; others get 401
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self, "GET")

            def do_PATCH(self) -> None:
                server.handle(self, "PATCH")

            def do_PUT(self) -> None:
                server.handle(self, "PUT")

            def do_POST(self) -> None:
                server.handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def start(self) -> FakeApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]

    # -- the endpoints ------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        content_type = h.headers.get("Content-Type")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        path = h.path.partition("?")[0]
        with self.lock:
            self.requests.append(
                Recorded(method, path, content_type, body, h.headers.get("Authorization"))
            )
            if h.headers.get("Authorization") != f"Bearer {self.token}":
                code, answer = 401, status(401, "Unauthorized", "Unauthorized", {})
            else:
                code, answer = self.route(method, path, content_type, body)
        data = json.dumps(answer).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _forbidden(self, verb: str, resource: str, name: str) -> tuple[int, dict[str, Any]]:
        message = (
            f'nodes "{name}" is forbidden: User "{SERVICE_ACCOUNT}" cannot {verb} resource'
            f' "{resource}" in API group "" at the cluster scope'
        )
        return 403, status(403, "Forbidden", message, {"name": name, "kind": "nodes"})

    def route(
        self, method: str, path: str, content_type: str | None, body: Any
    ) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "nodes"] or len(parts) not in (4, 5):
            return 404, status(
                404, "NotFound", "the server could not find the requested resource", {}
            )
        name = parts[3]
        sub = parts[4] if len(parts) == 5 else None
        if sub not in (None, "status"):
            return 404, status(
                404, "NotFound", "the server could not find the requested resource", {}
            )
        resource = "nodes/status" if sub else "nodes"
        verb = {"GET": "get", "PATCH": "patch", "PUT": "update", "POST": "create"}[method]
        if (verb, resource) in self.forbidden:
            return self._forbidden(verb, resource, name)
        if method not in ("GET", "PATCH"):
            return 405, status(405, "MethodNotAllowed", f"{method} is not allowed here", {})
        if name != self.node["metadata"]["name"]:
            return 404, status(
                404, "NotFound", f'nodes "{name}" not found', {"name": name, "kind": "nodes"}
            )
        if method == "GET":
            return 200, self.node
        return self.patch(name, sub, content_type, body)

    def patch(
        self, name: str, sub: str | None, content_type: str | None, body: Any
    ) -> tuple[int, dict[str, Any]]:
        ctype = (content_type or "").split(";")[0].strip()
        if ctype not in (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH):
            return 415, status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format"
                f" - accepted media types include: {JSON_PATCH}, {MERGE_PATCH},"
                f" {STRATEGIC_PATCH}",
                {},
            )
        try:
            if ctype == JSON_PATCH:
                patched = json_patch(self.node, body)
            else:
                if not isinstance(body, dict):
                    raise PatchError("a merge patch is a JSON object")
                wanted = (body.get("metadata") or {}).get("resourceVersion")
                if self.conflicts and sub is None:
                    self.conflicts -= 1
                    self._bump()  # someone else wrote the node
                if wanted is not None and wanted != self.node["metadata"]["resourceVersion"]:
                    return 409, status(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on nodes "{name}": the object has been'
                        " modified; please apply your changes to the latest version and try"
                        " again",
                        {"name": name, "kind": "nodes"},
                    )
                patched = merge_patch(self.node, body)
        except PatchError as e:
            return 422, status(422, "Invalid", str(e), {"name": name, "kind": "nodes"})
        # A status patch changes status only; a node patch everything but status.
        if sub == "status":
            self.node = {**self.node, "status": patched["status"]}
        else:
            self.node = {**patched, "status": self.node["status"]}
        self._bump()
        return 200, self.node

    def _bump(self) -> None:
        meta = self.node["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
