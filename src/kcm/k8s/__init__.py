"""The Kubernetes side: discover (node capacity), the API client wrapper, cluster-init's manifests.
Only these commands import it; it pulls in the kubernetes client and PyYAML lazily."""
