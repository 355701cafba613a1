"""What discover sends for a given node: a table of nodes and the exact patches."""

from __future__ import annotations

from typing import Any

import pytest

from kcm.k8s.discover import DATAPLANE_TAINT, Change, Node, capacity_patch, node_patch

OURS = {"key": "kcm.io/dataplane", "value": "true", "effect": "NoSchedule"}
OTHER = {"key": "example.com/gpu", "value": "true", "effect": "NoSchedule"}
OURS_NO_EXECUTE = {"key": "kcm.io/dataplane", "value": "true", "effect": "NoExecute"}


def node(
    *,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, Any]] | None = None,
    capacity: dict[str, str] | None = None,
) -> Node:
    obj: dict[str, Any] = {
        "metadata": {"name": "n1", "resourceVersion": "42", "labels": labels or {}},
        "spec": {} if taints is None else {"taints": taints},
        "status": {} if capacity is None else {"capacity": capacity},
    }
    return Node.from_json(obj)


CAPACITY_CASES = {
    "unset": (node(capacity={"cpu": "2"}), 4, [("add", "/status/capacity/kcm.io~1dataplane", "4")]),
    "zeroed": (
        node(capacity={"kcm.io/dataplane": "0"}),
        4,
        [("add", "/status/capacity/kcm.io~1dataplane", "4")],
    ),
    "same": (node(capacity={"kcm.io/dataplane": "4"}), 4, []),
    "shrunk": (
        node(capacity={"kcm.io/dataplane": "4"}),
        0,
        [("add", "/status/capacity/kcm.io~1dataplane", "0")],
    ),
    "no-capacity-map": (node(), 2, [("add", "/status/capacity", {"kcm.io/dataplane": "2"})]),
}


@pytest.mark.parametrize(("n", "count", "expected"), CAPACITY_CASES.values(), ids=CAPACITY_CASES)
def test_capacity_patch(n: Node, count: int, expected: list[tuple[str, str, object]]) -> None:
    ops = [(op["op"], op["path"], op["value"]) for op in capacity_patch(n, count)]
    assert ops == expected


LABEL = {"metadata": {"labels": {"kcm.io/node": "true"}}}
NODE_CASES: dict[str, tuple[Node, bool, dict[str, Any]]] = {
    "bare, no taint wanted": (node(), False, LABEL),
    "labelled, no taint wanted": (node(labels={"kcm.io/node": "true"}), False, {}),
    "label says false": (node(labels={"kcm.io/node": "false"}), False, LABEL),
    "taint wanted on a bare node": (
        node(),
        True,
        {
            "metadata": {"labels": {"kcm.io/node": "true"}, "resourceVersion": "42"},
            "spec": {"taints": [OURS]},
        },
    ),
    "taint wanted, other taints kept in order": (
        node(labels={"kcm.io/node": "true"}, taints=[OTHER, OURS_NO_EXECUTE]),
        True,
        {
            "metadata": {"resourceVersion": "42"},
            "spec": {"taints": [OTHER, OURS_NO_EXECUTE, OURS]},
        },
    ),
    "taint present": (node(labels={"kcm.io/node": "true"}, taints=[OTHER, OURS]), True, {}),
    "taint present with another value": (
        node(labels={"kcm.io/node": "true"}, taints=[{**OURS, "value": "no"}, OTHER]),
        True,
        {"metadata": {"resourceVersion": "42"}, "spec": {"taints": [OTHER, OURS]}},
    ),
    "taint present but not wanted: left alone": (
        node(labels={"kcm.io/node": "true"}, taints=[OURS]),
        False,
        {},
    ),
}


@pytest.mark.parametrize(("n", "taint", "expected"), NODE_CASES.values(), ids=NODE_CASES)
def test_node_patch(n: Node, taint: bool, expected: dict[str, Any]) -> None:
    assert node_patch(n, DATAPLANE_TAINT if taint else None) == expected


def test_change_summary() -> None:
    assert Change(4).summary() == "no change (kcm.io/dataplane=4)"
    everything = Change(
        4, capacity_before=None, capacity_changed=True, label_set=True, taint_set=True
    )
    assert everything.summary() == (
        "capacity kcm.io/dataplane unset -> 4, label kcm.io/node=true set,"
        " taint kcm.io/dataplane=true:NoSchedule set"
    )
    assert Change(2, capacity_before="4", capacity_changed=True).summary() == (
        "capacity kcm.io/dataplane 4 -> 2"
    )
