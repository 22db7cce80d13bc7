#!/bin/bash
# Multi-host training on a Cloud TPU pod slice: the same command on every worker; jax.distributed auto-detects the
# pod's topology, so no coordinator flags are needed.
#
#   bash launch/cluster/tpu_pod.sh my-tpu us-central2-b gs://bucket/runs/exp1 --config.num_envs=1048576
#
# Assumes the repository is checked out and set up (bash scripts/setup.sh) at ~/ppo-million on every worker
# (e.g. via `gcloud compute tpus tpu-vm ssh ... --worker=all --command="git clone ... && bash scripts/setup.sh"`).
# A gs:// WORKDIR also needs the bucket clients there: `.venv/bin/pip install -e .[gcs]` (not done by setup.sh).
# Re-running the same command after a preemption resumes from WORKDIR's checkpoints.
set -euo pipefail
TPU_NAME="${1:?usage: tpu_pod.sh TPU_NAME ZONE WORKDIR [launch.train flags ...]}"
ZONE="${2:?zone}"
WORKDIR="${3:?workdir}"
shift 3
REPO_DIR="${REPO_DIR:-~/ppo-million}"
ARGS="$(printf ' %q' "$@")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd $REPO_DIR && .venv/bin/python -m launch.train --workdir=$(printf '%q' "$WORKDIR")$ARGS"
