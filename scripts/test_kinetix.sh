#!/usr/bin/env bash
# Sets up .venv-kinetix and runs the Kinetix tests in it. kinetix-env requires jax<=0.9.0 while the core runs on any
# jax>=0.9, so the Kinetix suite gets its own environment pinned to jax 0.9.0. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-kinetix PIP_ARGS='jax==0.9.0 -e .[kinetix] pytest>=8 beartype>=0.18' bash scripts/setup.sh
# The Kinetix tests are compile-bound (kinetix-env's level generator and physics). XLA's CPU backend at LLVM -O0 runs
# the same HLO passes with unoptimised machine code: the random-levels test took 373 s instead of 780 s, the whole
# suite 8 min 22 s of pytest (2-core AMD EPYC with AVX2, another CPU-bound process beside it both times, 2026-12-02).
# Float rounding can differ from -O2 code; these tests check shapes, finiteness, resets and solve counts, and compare
# only programs compiled alike. KINETIX_TEST_XLA_FLAGS= (empty) compiles as runs do. tests/conftest.py adds
# TEST_XLA_FLAGS to XLA_FLAGS (the main suite's switch, the same -O0 by default).
export TEST_XLA_FLAGS="${KINETIX_TEST_XLA_FLAGS---xla_backend_optimization_level=0}"
REQUIRE_KINETIX=1 exec .venv-kinetix/bin/python -m pytest -q tests/test_kinetix.py "$@"
