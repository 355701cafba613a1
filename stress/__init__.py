"""Stress, crash, PID-reuse, fuzz and isolation harnesses for kcm (see RELIABILITY.md)."""
