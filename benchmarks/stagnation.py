"""The stagnation experiment: sweep num_envs under each scaling rule at an equal env-step budget, and PPO-EWMA.

Each (rule, num_envs) config is resolved by launch/config/resolve.py (the same rules the trainer uses), compiled once,
and run for every seed: by default with the trainer's one-update-per-call program, or (--vmap_seeds) with the
update vmapped over seeds and `chunk` updates scanned per call; both built by launch/run/programs.py with the trainer's
shardings and compiler options. Per-update metrics and diagnostics are kept; the report step writes
docs/results.md tables and PNG plots.

  nice -n 10 python -m benchmarks.stagnation --out=docs/stagnation > /tmp/stagnation.log 2>&1   # the sweep
  python -m benchmarks.stagnation --out=docs/stagnation --report_only                          # re-plot
"""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from launch.config import resolve as config_lib
from launch.run import programs
from launch.configs import default

flags.DEFINE_string("out", "docs/stagnation", "Directory for the per-run JSON results and the plots.")
flags.DEFINE_string("env_name", "gymnax:Breakout-MinAtar", "Environment.")
flags.DEFINE_list("num_envs", ["8", "32", "128", "512"], "num_envs values (the first is scaling.base_num_envs).")
flags.DEFINE_list("rules", ["recipe", "fixed_minibatches", "sqrt_lr"], "Scaling rules to sweep.")
flags.DEFINE_list("ewma_num_envs", ["8"], "num_envs values also run with PPO-EWMA (recipe).")
flags.DEFINE_float("ewma_center_of_mass", 16.0, "PPO-EWMA centre of mass (optimizer steps) for the EWMA arm.")
flags.DEFINE_integer("total_env_steps", 2**20, "Env-step budget per run (equal for every config).")
flags.DEFINE_integer("num_steps", 32, "Rollout length T.")
flags.DEFINE_integer("seeds", 2, "Seeds per config (vmapped).")
flags.DEFINE_integer("log_points", 32, "Points per learning curve (each a mean over 1/log_points of the budget).")
flags.DEFINE_float("learning_rate", 2.5e-3, "Base learning rate (constant).")
flags.DEFINE_integer("base_num_minibatches", 2, "num_minibatches at the base num_envs.")
flags.DEFINE_bool("vmap_seeds", False, "vmap seeds and scan updates in one program (faster; hung in XLA:CPU on "
                  "this machine for N=128, see docs/results.md) instead of the trainer's one-update-per-call path.")
flags.DEFINE_bool("report_only", False, "Only rebuild the report from the saved JSON results.")
FLAGS = flags.FLAGS


def make_config(num_envs: int, rule: str, ewma: bool):
  config = default.get_config()
  config.env_name = FLAGS.env_name
  config.num_envs = num_envs
  config.num_steps = FLAGS.num_steps
  config.total_env_steps = FLAGS.total_env_steps
  config.learning_rate = FLAGS.learning_rate
  config.anneal_lr = False  # a decaying step size would hide (or cause) the plateau the sweep looks for
  config.num_minibatches = FLAGS.base_num_minibatches
  config.scaling.rule = rule
  config.scaling.base_num_envs = int(FLAGS.num_envs[0])
  config.ewma.enabled = ewma
  config.ewma.center_of_mass = FLAGS.ewma_center_of_mass
  config.mesh.data = 1
  return config


def run_config(config) -> dict:
  """Trains `FLAGS.seeds` seeds of `config` together; returns per-update metrics averaged into log points."""
  resolved = config_lib.resolve(config, num_devices=1)
  ewma = config.ewma.enabled
  keys = jax.random.split(jax.random.PRNGKey(config.seed), FLAGS.seeds)
  chunk = resolved.num_updates // FLAGS.log_points
  assert chunk * FLAGS.log_points == resolved.num_updates, "budget must split into whole updates per log point"

  # The trainer's programs (launch/run/programs.py: shardings, donation, XLA options), one compile per config.
  if FLAGS.vmap_seeds:  # all seeds in one program, `chunk` updates scanned per call
    progs = programs.build(config, resolved=resolved, eval_episodes=0, num_seeds=FLAGS.seeds,
                           updates_per_call=chunk)
    state, run_chunk = progs.init(keys), progs.update
  else:  # the trainer's path: one update per call, seeds one after the other
    progs = programs.build(config, resolved=resolved, eval_episodes=0)
    states, update = [progs.init(k) for k in keys], progs.update

    def run_chunk(_):
      rows = []
      for i in range(len(states)):
        per_update = []
        for _ in range(chunk):
          states[i], m = update(states[i])
          per_update.append(m)
        rows.append(jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(per_update)))
      return None, jax.tree.map(lambda *xs: np.stack(xs, axis=1), *rows)  # leaves [chunk, seeds]
    state = None
  compile_time = progs.compile_time
  points, t0 = [], time.time()
  for _ in range(FLAGS.log_points):
    state, m = run_chunk(state)
    m = jax.device_get(m)  # leaves [chunk, seeds]
    point = {"return": (m.episode_return_sum.sum(0) / np.maximum(m.episode_count.sum(0), 1)).tolist()}
    for k in ("approx_kl", "clip_fraction", "entropy"):
      point[k] = getattr(m, k).mean(0).tolist()
    for k, v in vars(m.diagnostics).items():
      point[k] = np.nanmean(v, 0).tolist()  # B_simple may be NaN on rare updates where |G|² ≈ 0
    points.append(point)
  return {"num_envs": config.num_envs, "rule": config.scaling.rule, "ewma": ewma,
          "minibatch_size": resolved.minibatch_size, "num_minibatches": resolved.ppo.num_minibatches,
          "learning_rate": resolved.learning_rate, "num_updates": resolved.num_updates,
          "batch_size": resolved.batch_size, "env_steps": [resolved.env_steps * (i + 1) // FLAGS.log_points
                                                           for i in range(FLAGS.log_points)],
          "compile_time": compile_time, "run_time": time.time() - t0, "points": points}


def sweep_configs():
  base = int(FLAGS.num_envs[0])
  out = [("recipe", base, False)]  # at the base every rule is the same run
  for rule in FLAGS.rules:
    out += [(rule, int(n), False) for n in FLAGS.num_envs if int(n) != base]
  out += [("recipe", int(n), True) for n in FLAGS.ewma_num_envs]
  return out


def main(argv):
  del argv
  os.makedirs(FLAGS.out, exist_ok=True)
  if not FLAGS.report_only:
    for rule, n, ewma in sweep_configs():
      name = f"{rule}_N{n}{'_ewma' if ewma else ''}"
      path = os.path.join(FLAGS.out, f"{name}.json")
      if os.path.exists(path):
        print(f"skip {name} (done)", flush=True)
        continue
      result = run_config(make_config(n, rule, ewma))
      with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f)
      final = np.mean([p["return"] for p in result["points"][-4:]], 0)
      print(f"{name}: compile {result['compile_time']:.0f}s run {result['run_time']:.0f}s "
            f"final return {final.round(2).tolist()}", flush=True)
  from benchmarks import stagnation_report  # pylint: disable=import-outside-toplevel
  stagnation_report.write(FLAGS.out, sys.argv)


if __name__ == "__main__":
  app.run(main)
