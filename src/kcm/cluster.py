"""``kcm cluster-init``: the manifests that deploy kcm on a Kubernetes cluster (issue 4)."""

from __future__ import annotations

from kcm.errors import ClusterError


def main(options: dict[str, str], *, example_workload: bool) -> int:
    raise ClusterError("kcm cluster-init is not available yet: it comes with Kubernetes support")
