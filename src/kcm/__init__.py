"""kcm: a CPU core manager for NFV and latency-critical Linux workloads."""

__version__ = "0.1.0"
