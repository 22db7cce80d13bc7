#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and trains; arguments go to launch.train (default: CartPole in runs/cartpole).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $# -eq 0 ]]; then set -- --workdir=runs/cartpole; fi
exec .venv/bin/python -m launch.train "$@"
