#!/usr/bin/env bash
# The whole check: lint, types, and every test (as root the tests use hugepages, tmux, DPDK).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks stress
.venv/bin/ruff format --check src tests benchmarks stress
.venv/bin/mypy
.venv/bin/pytest -q "$@"
