"""``kcm discover``: advertise the node's dataplane capacity to Kubernetes.

The node's status capacity gets the extended resource ``kcm.io/dataplane`` = the number of
dataplane CPU lists (a JSON Patch on ``nodes/status``), and the node the label
``kcm.io/node=true`` and, when asked, the taint ``kcm.io/dataplane=true:NoSchedule`` (a merge
patch on the node). The node is read first, so a pass that finds everything in place writes
nothing. Deciding what to send is pure; ``NodeApi`` does the I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from kcm import allocate
from kcm.errors import ClusterError
from kcm.state import StateReader, lock_timeout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kcm.k8s.api import NodeApi

RESOURCE = "kcm.io/dataplane"
LABEL = "kcm.io/node"
LABEL_VALUE = "true"
NODE_NAME_ENV = "NODE_NAME"
# A node name is a DNS subdomain (RFC 1123), which also keeps it a single URL path segment.
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Other writers may change the node's taints between our GET and PATCH; retry that many times.
CONFLICT_ATTEMPTS = 5


@dataclass(frozen=True)
class Taint:
    """A node taint; Kubernetes identifies a taint by its key and effect."""

    key: str
    value: str
    effect: str

    def as_json(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"


DATAPLANE_TAINT = Taint(RESOURCE, "true", "NoSchedule")


@dataclass(frozen=True)
class Node:
    """What discover needs of a Node object."""

    name: str
    resource_version: str
    labels: dict[str, str]
    taints: tuple[dict[str, Any], ...]
    capacity: dict[str, str] | None

    @staticmethod
    def from_json(obj: dict[str, Any]) -> Node:
        metadata = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        capacity = status.get("capacity")
        return Node(
            name=str(metadata.get("name", "")),
            resource_version=str(metadata.get("resourceVersion", "")),
            labels=dict(metadata.get("labels") or {}),
            taints=tuple(t for t in spec.get("taints") or () if isinstance(t, dict)),
            capacity=dict(capacity) if isinstance(capacity, dict) else None,
        )


@dataclass
class Change:
    """What one discover pass changed on the node."""

    count: int
    capacity_before: str | None = None
    capacity_changed: bool = False
    label_set: bool = False
    taint_set: bool = False

    def summary(self) -> str:
        done = []
        if self.capacity_changed:
            before = "unset" if self.capacity_before is None else self.capacity_before
            done.append(f"capacity {RESOURCE} {before} -> {self.count}")
        if self.label_set:
            done.append(f"label {LABEL}={LABEL_VALUE} set")
        if self.taint_set:
            done.append(f"taint {DATAPLANE_TAINT} set")
        if not done:
            return f"no change ({RESOURCE}={self.count})"
        return ", ".join(done)


def capacity_patch(node: Node, count: int) -> list[dict[str, Any]]:
    """The JSON Patch that sets the capacity, or ``[]`` if it already says ``count``."""
    value = str(count)
    if node.capacity is None:
        return [{"op": "add", "path": "/status/capacity", "value": {RESOURCE: value}}]
    if node.capacity.get(RESOURCE) == value:
        return []
    # JSON Pointer (RFC 6901) escapes '/' in a member name as '~1' (and '~' as '~0').
    pointer = RESOURCE.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/status/capacity/{pointer}", "value": value}]


def _has_taint(taints: tuple[dict[str, Any], ...], taint: Taint) -> bool:
    return any(
        t.get("key") == taint.key
        and t.get("effect") == taint.effect
        and t.get("value") == taint.value
        for t in taints
    )


def node_patch(node: Node, taint: Taint | None) -> dict[str, Any]:
    """The merge patch that adds the label (and the taint), or ``{}`` if they are in place.

    A node's taints are an atomic list: a patch replaces it whole. So the patch carries every
    other taint unchanged plus ours, and the node's resourceVersion, which makes the API
    server refuse it (409) if someone changed the taints since we read them.
    """
    patch: dict[str, Any] = {}
    if node.labels.get(LABEL) != LABEL_VALUE:
        patch["metadata"] = {"labels": {LABEL: LABEL_VALUE}}
    if taint is not None and not _has_taint(node.taints, taint):
        kept = [
            t for t in node.taints if (t.get("key"), t.get("effect")) != (taint.key, taint.effect)
        ]
        patch.setdefault("metadata", {})["resourceVersion"] = node.resource_version
        patch["spec"] = {"taints": [*kept, taint.as_json()]}
    return patch


def node_name() -> str:
    """``$NODE_NAME``, checked to be a node name."""
    name = os.environ.get(NODE_NAME_ENV, "")
    if not name:
        raise ClusterError(
            f"{NODE_NAME_ENV} is not set: kcm discover needs the name of the node it runs on"
            " (in a pod, set it from the downward API: fieldRef spec.nodeName)"
        )
    if len(name) > 253 or not _NODE_NAME.fullmatch(name):
        raise ClusterError(f"{NODE_NAME_ENV}={name!r} is not a Kubernetes node name")
    return name


def dataplane_count(conf_dir: str) -> int:
    """The number of CPU lists in the dataplane pool of the state directory."""
    with StateReader(conf_dir) as state:
        state.lock(lock_timeout())
        return len(state.read_pool(allocate.DATAPLANE).cpu_lists)


def discover_once(api: NodeApi, name: str, conf_dir: str, *, taint: bool) -> Change:
    """One pass: read the state and the node, then patch only what differs."""
    from kcm.k8s.api import ConflictError

    change = Change(dataplane_count(conf_dir))
    wanted_taint = DATAPLANE_TAINT if taint else None
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        node = Node.from_json(api.get_node(name))
        patch = node_patch(node, wanted_taint)
        if not patch:
            break
        try:
            node = Node.from_json(api.patch_node(name, patch))
        except ConflictError:
            if attempt == CONFLICT_ATTEMPTS:
                raise
            continue
        change.label_set = "labels" in patch.get("metadata", {})
        change.taint_set = "spec" in patch
        break
    operations = capacity_patch(node, change.count)
    if operations:
        api.patch_node_status(name, operations)
        change.capacity_before = None if node.capacity is None else node.capacity.get(RESOURCE)
        change.capacity_changed = True
    return change


def main(conf_dir: str, *, taint: bool, interval: float | None) -> int:
    """``kcm discover``: one pass, or one pass every ``interval`` seconds until SIGTERM."""
    from kcm.k8s.api import NodeApi

    name = node_name()
    api = NodeApi.connect()
    try:
        if interval is None:
            change = discover_once(api, name, conf_dir, taint=taint)
            print(f"kcm discover: node {name}: {change.summary()}", flush=True)
            return 0
        from kcm.loop import run_every

        def one_pass() -> str:
            return f"node {name}: {discover_once(api, name, conf_dir, taint=taint).summary()}"

        return run_every(interval, one_pass, "discover")
    finally:
        api.close()
