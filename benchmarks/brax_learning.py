"""Learning check for the Brax suite: launch/configs/brax.py must learn inverted_pendulum, seed after seed.

  .venv/bin/python -m benchmarks.brax_learning [--seeds=10] [--workdir=/tmp/brax_learning] [--out=F.json]
  .venv/bin/python -m benchmarks.brax_learning --seeds=5 --override=learning_rate=1e-3   # a candidate setting

Each seed trains the config (`--config.seed=S`, plus any `--override=KEY=VALUE`) through the trainer. The return
is +1 per step until the pole passes 0.2 rad or 1000 steps pass (maximum 1000; the untrained policy gets ~30). Per
seed it reports the deterministic policy's best and final evaluation return (16 episodes from random starts, every
100 updates and at the end) and the mean return of the last logged interval's training episodes (the sampled
policy); then their distribution over seeds: median, range, and how many seeds reached THRESHOLD at some evaluation
and at the final one. Exits 1 unless at least --min_solved of the seeds reach THRESHOLD (it learns) and the seeds'
median final evaluation is at or above it (the typical run keeps it). The share of seeds that end at or above it is
reported, not required: with the config as shipped some seeds lose part of what they learned late in the run
(docs/environments.md has the measured distribution). Compile and training time are reported per seed.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from launch.configs import brax as brax_config
from launch.report.metrics_file import read_jsonl
from launch.run import trainer

THRESHOLD = 900.0
flags.DEFINE_integer("seeds", 5, "Seeds to train (0 .. seeds - 1).")
flags.DEFINE_float("min_solved", 0.8, "Fraction of the seeds whose best evaluation must reach THRESHOLD.")
flags.DEFINE_multi_string("override", [], "KEY=VALUE overrides of the config (e.g. learning_rate=1e-3).")
flags.DEFINE_string("workdir", "/tmp/brax_learning", "Where the runs write their metrics (one subdirectory a seed).")
flags.DEFINE_string("out", "", "Write the per-seed results and the summary to this JSON file.")
FLAGS = flags.FLAGS


def _value(text: str):
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return {"True": True, "False": False}.get(text, text)


def run_seed(seed: int) -> dict:
  config = brax_config.get_config()
  config.update_from_flattened_dict({k: _value(v) for k, v in (o.split("=", 1) for o in FLAGS.override)})
  config.seed = seed
  workdir = os.path.join(FLAGS.workdir, f"seed_{seed}")
  trainer.train_and_evaluate(config, workdir, fresh=True)
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = {r["update"]: round(r["eval_return"], 1) for r in rows if r.get("eval_return") is not None}
  return {"seed": seed, "best_eval": max(evals.values()), "final_eval": evals[max(evals)], "eval_returns": evals,
          "last_training_return": rows[-1].get("episode_return"), "env_steps": rows[-1]["env_steps"],
          "compile_s": round(rows[0]["compile_time"], 1),
          "train_s": round(rows[-1]["wall_time"] - rows[0]["wall_time"] + rows[0]["env_steps"] / rows[0]["sps"], 1)}


def main(_):
  results = []
  for seed in range(FLAGS.seeds):
    results.append(run_seed(seed))
    r = results[-1]
    print(f"seed {seed}: best eval {r['best_eval']:6.1f}  final eval {r['final_eval']:6.1f}  last training return "
          f"{r['last_training_return']}  compile {r['compile_s']} s  train {r['train_s']} s", flush=True)
  best, final = np.array([r["best_eval"] for r in results]), np.array([r["final_eval"] for r in results])
  summary = {"overrides": FLAGS.override, "seeds": FLAGS.seeds, "threshold": THRESHOLD,
             "best_eval_median": float(np.median(best)), "best_eval_range": [float(best.min()), float(best.max())],
             "final_eval_median": float(np.median(final)),
             "final_eval_range": [float(final.min()), float(final.max())],
             "reached_threshold": int((best >= THRESHOLD).sum()), "ended_at_threshold": int((final >= THRESHOLD).sum())}
  summary["passed"] = (summary["reached_threshold"] >= FLAGS.min_solved * FLAGS.seeds
                       and summary["final_eval_median"] >= THRESHOLD)
  print(json.dumps(summary))
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump({"summary": summary, "runs": results}, f, indent=1)
  sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
  app.run(main)
