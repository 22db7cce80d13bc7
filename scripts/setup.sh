#!/usr/bin/env bash
# Creates .venv (Python ≥ 3.11) and installs the project with its test extras. Idempotent: re-running is cheap.
# VENV and PIP_ARGS override the environment's folder and what is installed (scripts/test_kinetix.sh uses them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$candidate"; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "error: Python >= 3.11 is required" >&2; exit 1; }
VENV="${VENV:-.venv}"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
set -f  # PIP_ARGS is split into words but never globbed (".[test]" is an extra, not a pattern)
# uv (from PyPI, into the venv) resolves and installs the same versions as pip in seconds where pip takes about two
# minutes (2-core machine, 2026-12-07); pip does it where uv cannot be had (INSTALLER=pip forces pip).
if [[ "${INSTALLER:-uv}" == uv ]] && "$VENV/bin/python" -m pip install -q uv 2>/dev/null; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m uv pip install -q --python "$VENV/bin/python" ${PIP_ARGS:--e .[test]}
else
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q ${PIP_ARGS:--e .[test]}
fi
