#!/usr/bin/env bash
# Install everything the tests need, then run them (what .ci/run calls).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ci-deps.sh   # Debian chromium for the browser test, when missing
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy   # [tool.mypy] in pyproject.toml: src, missing stubs ignored
.venv/bin/python -m pytest "$@"
