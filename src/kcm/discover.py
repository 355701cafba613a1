"""``kcm discover``: advertise the node's dataplane capacity to Kubernetes (issue 4)."""

from __future__ import annotations

from kcm.errors import ClusterError


def main(conf_dir: str, *, taint: bool, interval: float | None) -> int:
    raise ClusterError("kcm discover is not available yet: it comes with Kubernetes support")
