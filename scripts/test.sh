#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite. Extra arguments go to pytest.
# The suite runs in TEST_WORKERS pytest-xdist processes (default 2), a module per worker at a time so that a
# module's shared fixtures (compiled programs, baseline runs) are built once; TEST_WORKERS=0 runs it in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
