"""Learning check for the Brax suite: launch/configs/brax.py must learn inverted_pendulum.

  .venv/bin/python -m benchmarks.brax_learning [--workdir=/tmp/brax_learning]

Threshold: the deterministic policy's evaluation return reaches THRESHOLD (the maximum is 1000: +1 per step until
the pole passes 0.2 rad or 1000 steps pass; the untrained policy gets ~30) at one of the evaluations (every 100
updates and at the end). Prints the evaluation returns, compile and training time as one JSON line; exits 1 below
the threshold.

Measured (2 CPU cores, load ~0.3): evaluation returns 358, 302, 503, 570, 638, 991, 984, 891 at updates 100..800
(1.64M env steps): passed at update 600; 21 s compile, 26 s training.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from launch.run import trainer
from launch.configs import brax as brax_config
from launch.report.metrics_file import read_jsonl

THRESHOLD = 900.0
flags.DEFINE_string("workdir", "/tmp/brax_learning", "Where the run writes its metrics.")
FLAGS = flags.FLAGS


def main(_):
  config = brax_config.get_config()
  trainer.train_and_evaluate(config, FLAGS.workdir)
  rows = read_jsonl(os.path.join(FLAGS.workdir, "metrics.jsonl"))
  evals = {r["update"]: round(r["eval_return"], 1) for r in rows if "eval_return" in r}
  best = max(evals.values())
  result = {"env_name": config.env_name, "env_steps": rows[-1]["env_steps"], "threshold": THRESHOLD,
            "best_eval_return": best, "eval_returns": evals, "compile_s": round(rows[0]["compile_time"], 1),
            "train_s": round(rows[-1]["wall_time"] - rows[0]["wall_time"] + rows[0]["env_steps"] / rows[0]["sps"], 1),
            "passed": best >= THRESHOLD}
  print(json.dumps(result))
  sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
  app.run(main)
