"""SFL's re-scoring (pipeline/sfl.py) against an update: what level_sampler.kind=sfl costs a run.

  .venv-kinetix/bin/python -m benchmarks.sfl_cost --config=launch/configs/kinetix.py:debug
  .venv-kinetix/bin/python -m benchmarks.sfl_cost --config=launch/configs/kinetix.py \\
      --config.level_sampler.batch_size=512 --config.level_sampler.num_batches=1     # 2,048 envs, fewer levels
  .venv/bin/python -m benchmarks.sfl_cost --config=launch/configs/debug.py --config.env_name=levels

The config's programs with level_sampler.kind=sfl (set here), from launch/run/programs.py: the fused update and the
re-scoring, a program of its own that the run calls before every rescore_every-th update, both compiled ahead of
the clock (compile time of the two is printed). Times the median of `repeats` updates that do not re-score and of `repeats` re-scorings, and prints
one JSON line: seconds of each, the re-scoring per scored env step (it is linear in batch_size × num_batches ×
rollout_steps, so a smaller measurement extrapolates to the defaults), and the overhead = re-scoring /
(rescore_every × update) at the measured and at the default level_sampler settings.
"""
from __future__ import annotations

import json
import statistics
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from launch.config import schema as config_schema
from launch.run import programs

config_flags.DEFINE_config_file("config", "launch/configs/kinetix.py:debug", "Config to time.", lock_config=False)
flags.DEFINE_integer("repeats", 3, "Timed updates and re-scorings (median reported).")
FLAGS = flags.FLAGS


def _median_seconds(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.time()
    jax.block_until_ready(fn())
    times.append(time.time() - t0)
  return statistics.median(times)


def main(_):
  config = FLAGS.config
  config.level_sampler.kind = "sfl"
  if not config.reset_pool.size:
    config.reset_pool.size, config.reset_pool.refresh = 64, 8
  config.eval.solve_levels = ""
  sampler = config.level_sampler
  t0 = time.time()
  progs = programs.build(config, eval_episodes=0, mode="fused")
  compile_s = time.time() - t0
  logging.info("compiled in %.0f s", compile_s)
  update_only = progs.compiled["update"]  # the update without the re-scoring in front
  state, _ = progs.update(progs.init(jax.random.PRNGKey(0)))  # update 1 re-scores first (not timed)
  jax.block_until_ready(state)
  holder = {"state": state}

  def update():
    holder["state"], metrics = update_only(holder["state"])
    return metrics

  def rescore():
    holder["state"] = progs.rescore(holder["state"])
    return holder["state"].runner.level_buffer

  update()  # warm
  update_s = _median_seconds(update, FLAGS.repeats)
  logging.info("update: %.3f s", update_s)
  rescore()  # warm
  rescore_s = _median_seconds(rescore, FLAGS.repeats)
  scored_steps = sampler.batch_size * sampler.num_batches * sampler.rollout_steps
  default = {k.name.split(".")[1]: k.default for k in config_schema.SCHEMA if k.name.startswith("level_sampler.")}
  default_steps = default["batch_size"] * default["num_batches"] * default["rollout_steps"]
  per_step = rescore_s / scored_steps
  print(json.dumps({
      "env_name": config.env_name, "num_envs": config.num_envs, "batch_size": config.num_envs * config.num_steps,
      "devices": jax.device_count(), "backend": jax.default_backend(), "compile_s": round(compile_s, 1),
      "update_s": round(update_s, 4), "rescore_s": round(rescore_s, 4),
      "scored_env_steps": scored_steps, "rescore_us_per_scored_step": round(per_step * 1e6, 3),
      "overhead_measured": round(rescore_s / (sampler.rescore_every * update_s), 4),
      "rescore_s_at_defaults": round(per_step * default_steps, 2),
      "overhead_at_defaults": round(per_step * default_steps / (default["rescore_every"] * update_s), 4),
  }))


if __name__ == "__main__":
  app.run(main)
