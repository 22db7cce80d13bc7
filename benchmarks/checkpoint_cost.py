"""The cost of checkpointing: training SPS with a full-state async save after every update vs. none during the run.

  python benchmarks/checkpoint_cost.py [--updates=40] [--num_envs=32,128,512] [--repeats=3]

For each env count, runs alternate (none, every, none, every, ...) in one process, so both kinds see the same machine
load; each run is the default CartPole config with that many envs, trained for `--updates` updates. SPS is measured
between the first and the last metrics row, so it excludes compilation and the first log interval (warm-up, the
first save's one-off setup). "none" still saves once, after its last row. Prints one JSON line per run and, per
env count, the medians and their ratio. A save's cost is mostly fixed (orbax's per-save CPU work, ~20 ms of loop time
on 2 CPU cores for this small state), so the ratio depends on how long an update takes.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time

from absl import app, flags

from launch.run import trainer
from launch.configs import default
from launch.report.metrics_file import read_jsonl

flags.DEFINE_integer("updates", 40, "PPO updates per run.")
flags.DEFINE_list("num_envs", ["32", "128", "512"], "Parallel env counts to measure (rollout length is the default 128).")
flags.DEFINE_integer("log_every", 10, "Updates per metrics row (SPS is measured from the first row to the last).")
flags.DEFINE_integer("repeats", 3, "Runs of each kind; the medians are compared.")
FLAGS = flags.FLAGS


def _run(num_envs: int, checkpoint_every: int) -> float:
  config = default.get_config()
  config.num_envs = num_envs
  config.total_env_steps = FLAGS.updates * config.num_envs * config.num_steps
  config.log_every = FLAGS.log_every
  config.eval_every = FLAGS.updates  # one evaluation, at the end
  config.checkpoint_every = checkpoint_every
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(config, workdir)
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  first, last = rows[0], rows[-1]
  return (last["env_steps"] - first["env_steps"]) / (last["wall_time"] - first["wall_time"])


def _load() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average: ")[-1]


def main(argv):
  del argv
  summaries = []
  for num_envs in map(int, FLAGS.num_envs):
    sps = {"none": [], "every update": []}
    load_before = _load()
    for _ in range(FLAGS.repeats):
      for kind, every in (("none", FLAGS.updates + 1), ("every update", 1)):
        t0 = time.time()
        sps[kind].append(_run(num_envs, every))
        print(json.dumps({"num_envs": num_envs, "checkpoints": kind, "sps": round(sps[kind][-1], 1),
                          "run_s": round(time.time() - t0, 1)}), flush=True)
    medians = {k: statistics.median(v) for k, v in sps.items()}
    summaries.append({
        "num_envs": num_envs, "updates": FLAGS.updates, "repeats": FLAGS.repeats,
        "median_sps_none": round(medians["none"], 1), "median_sps_every_update": round(medians["every update"], 1),
        "ratio": round(medians["every update"] / medians["none"], 3),
        "update_s_none": round(num_envs * 128 / medians["none"], 3),
        "load_before": load_before, "load_after": _load()})
  for summary in summaries:
    print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
