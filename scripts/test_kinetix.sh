#!/usr/bin/env bash
# Sets up .venv-kinetix and runs the Kinetix tests in it. kinetix-env requires jax<=0.9.0 while the core runs on any
# jax>=0.9, so the Kinetix suite gets its own environment pinned to jax 0.9.0. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-kinetix PIP_ARGS='jax==0.9.0 -e .[kinetix] pytest>=8 beartype>=0.18' bash scripts/setup.sh
REQUIRE_KINETIX=1 exec .venv-kinetix/bin/python -m pytest -q tests/test_kinetix.py "$@"
