"""Growing a stalled run: a MinAtar game at a small N, (a) continued unchanged, (b) grown to 16x N mid-run by
`scaling.schedule` (recipe), (c) at N with outer-step control; final and best evaluation returns with seed bands.

Every arm is the trainer itself (launch/trainer.py `train_and_evaluate`, one workdir per arm and seed), at an equal
env-step budget; the schedule arm switches at `--grow_at` of the budget. Results: OUT/results.json (every run's
metrics rows) and OUT/results.md (a table: mean, min and max over seeds, and the date and machine).

  nice -n 10 python -m benchmarks.elastic_minatar --out=docs/elastic > /tmp/elastic.log 2>&1   # the benchmark
  python -m benchmarks.elastic_minatar --out=/tmp/elastic_smoke --smoke                       # minutes: plumbing
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil

import numpy as np
from absl import app, flags

from launch import sinks, trainer
from launch.configs import default

flags.DEFINE_string("out", "docs/elastic", "Directory for results.json / results.md and the runs' workdirs.")
flags.DEFINE_string("env_name", "gymnax:Breakout-MinAtar", "Environment (a MinAtar game).")
flags.DEFINE_integer("num_envs", 8, "The small N the run starts at (and scaling.base_num_envs).")
flags.DEFINE_integer("growth", 16, "The schedule arm grows to growth x num_envs.")
flags.DEFINE_float("grow_at", 0.5, "Share of the budget after which the schedule arm grows.")
flags.DEFINE_integer("total_env_steps", 2**21, "Env-step budget per run (equal for every arm).")
flags.DEFINE_integer("num_steps", 32, "Rollout length T.")
flags.DEFINE_integer("seeds", 3, "Seeds per arm.")
flags.DEFINE_float("learning_rate", 2.5e-3, "Base learning rate (constant: an anneal would hide the plateau).")
flags.DEFINE_string("outer_mode", "samples_per_kl", "Outer-step control of arm (c): adaptive_kl or samples_per_kl.")
flags.DEFINE_float("samples_per_kl", 0.0, "samples_per_kl target; 0 = the base batch / outer_kl_target.")
flags.DEFINE_float("outer_kl_target", 0.01, "adaptive_kl target KL per update.")
flags.DEFINE_bool("smoke", False, "A few updates per arm and one seed: checks the plumbing, measures nothing.")
flags.DEFINE_bool("keep_workdirs", False, "Keep each run's workdir under OUT/runs (else removed after reading).")
FLAGS = flags.FLAGS

ARMS = ("unchanged", "grown", "outer_step")


def make_config(arm: str, seed: int):
  config = default.get_config()
  config.env_name = FLAGS.env_name
  config.seed = seed
  config.num_envs = FLAGS.num_envs
  config.num_steps = FLAGS.num_steps
  config.total_env_steps = FLAGS.total_env_steps
  config.learning_rate = FLAGS.learning_rate
  config.anneal_lr = False
  config.num_minibatches = 2
  config.scaling.rule = "recipe"
  config.scaling.base_num_envs = FLAGS.num_envs
  config.mesh.data = 1
  config.eval_episodes = 32
  updates = FLAGS.total_env_steps // (FLAGS.num_envs * FLAGS.num_steps)
  config.log_every = max(1, updates // 64)
  config.eval_every = max(1, updates // 16)
  config.checkpoint_every = max(1, updates // 4)
  if arm == "grown":
    grow_at = int(FLAGS.grow_at * FLAGS.total_env_steps)
    config.scaling.schedule = f"0:{FLAGS.num_envs},{grow_at}:{FLAGS.growth * FLAGS.num_envs}"
  if arm == "outer_step":
    config.outer_step.mode = FLAGS.outer_mode
    config.outer_step.kl_target = FLAGS.outer_kl_target
    config.outer_step.samples_per_kl = FLAGS.samples_per_kl or (
        FLAGS.num_envs * FLAGS.num_steps / FLAGS.outer_kl_target)
  return config


def summarize(rows: list[dict]) -> dict:
  evals = [r["eval_return"] for r in rows if r.get("eval_return") is not None]
  return {"final_eval_return": evals[-1] if evals else None, "best_eval_return": max(evals) if evals else None,
          "env_steps": rows[-1]["env_steps"] if rows else 0, "wall_time": rows[-1].get("wall_time") if rows else None,
          "plateau": next((r["plateau"] for r in rows if "plateau" in r), None)}


def band(values: list[float]) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "n/a"
  return f"{np.mean(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def main(_):
  if FLAGS.smoke:
    # 16 updates at N, then (grow_at = 0.5) one at the grown size.
    FLAGS.total_env_steps, FLAGS.seeds = FLAGS.num_envs * FLAGS.num_steps * FLAGS.growth * 2, 1
  os.makedirs(FLAGS.out, exist_ok=True)
  results = {"flags": {k: FLAGS[k].value for k in ("env_name", "num_envs", "growth", "grow_at", "total_env_steps",
                                                    "num_steps", "seeds", "learning_rate", "outer_mode", "smoke")},
             "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "runs": {}}
  for arm in ARMS:
    for seed in range(FLAGS.seeds):
      workdir = os.path.join(FLAGS.out, "runs", f"{arm}_{seed}")
      shutil.rmtree(workdir, ignore_errors=True)
      trainer.train_and_evaluate(make_config(arm, seed), workdir)
      rows = sinks.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
      results["runs"][f"{arm}/{seed}"] = {"summary": summarize(rows), "rows": rows}
      if not FLAGS.keep_workdirs:
        shutil.rmtree(workdir, ignore_errors=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f)
  lines = [f"# Growing a stalled run: {FLAGS.env_name}", "",
           f"{results['date']}, {results['machine']}; {FLAGS.total_env_steps:,} env steps per run, N = "
           f"{FLAGS.num_envs}, T = {FLAGS.num_steps}, {FLAGS.seeds} seeds (mean [min, max])"
           + (" — SMOKE RUN, measures nothing" if FLAGS.smoke else ""), "",
           "| arm | final eval return | best eval return |", "| --- | --- | --- |"]
  for arm in ARMS:
    summaries = [results["runs"][f"{arm}/{s}"]["summary"] for s in range(FLAGS.seeds)]
    lines.append(f"| {arm} | {band([s['final_eval_return'] for s in summaries])} | "
                 f"{band([s['best_eval_return'] for s in summaries])} |")
  with open(os.path.join(FLAGS.out, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
