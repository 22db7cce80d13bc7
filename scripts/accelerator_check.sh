#!/usr/bin/env bash
# On an offline accelerator machine: installs from .whl/ (made here by scripts/download_wheels.sh) the packages that
# machine lacks, with pip's offline mode, then runs benchmarks/accelerator_check.py; arguments go to it.
#
#   bash scripts/accelerator_check.sh --out_dir=DIR
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -f .whl/requirements.txt ]; then
  missing=$($PYTHON - <<'PY'
import importlib.metadata as md
for line in open(".whl/requirements.txt"):
  name = line.split("==")[0].strip()
  try:
    md.version(name)
  except md.PackageNotFoundError:
    print(name)
PY
)
  if [ -n "$missing" ]; then
    echo "installing from .whl/: $(echo $missing)"
    # shellcheck disable=SC2086
    $PYTHON -m pip install -q --no-index --find-links=.whl $missing
  fi
fi
exec $PYTHON -m benchmarks.accelerator_check "$@"
