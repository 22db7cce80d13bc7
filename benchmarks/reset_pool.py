"""Rollout speed with plain auto-reset vs the reset pool, on an env with expensive resets (default: Kinetix).

  .venv-kinetix/bin/python -m benchmarks.reset_pool                      # kinetix:s (filtered random levels)
  .venv/bin/python -m benchmarks.reset_pool --env_name=craftax:Craftax-Symbolic-v1

Times `num_steps` of the real rollout (policy forward, sampling, vmapped env steps, resets) under a freshly
initialised policy, both variants compiled ahead of the clock (compile times printed apart) and run alternately back
to back; prints the median env steps/s of each and their ratio as one JSON line.
"""
from __future__ import annotations

import json
import statistics
import time

import jax
from absl import app, flags

import envs
from envs import reset_pool
from learner import distributions, networks
from pipeline import rollout

flags.DEFINE_string("env_name", "kinetix:s", "Environment to time.")
flags.DEFINE_integer("num_envs", 128, "Parallel envs.")
flags.DEFINE_integer("num_steps", 16, "Env steps per timed rollout.")
flags.DEFINE_integer("pool_size", 128, "Reset pool entries.")
flags.DEFINE_integer("refresh", 8, "Pool entries re-sampled per step.")
flags.DEFINE_integer("repeats", 3, "Timed rollouts per variant (median reported).")
FLAGS = flags.FLAGS


def main(_):
  env = envs.make(FLAGS.env_name)
  dist = distributions.for_action_space(env.action_space)
  model = networks.ActorCritic(dist=dist, hidden_sizes=(64, 64))
  key = jax.random.PRNGKey(0)
  params = model.init(key, jax.numpy.zeros(env.observation_shape))
  value_fn = lambda p, o: model.apply(p, o, method=networks.ActorCritic.value)
  runner = jax.jit(rollout.init_runner, static_argnums=(0, 2))(env, key, FLAGS.num_envs)
  pool = jax.jit(reset_pool.init_pool, static_argnums=(0, 2))(env, key, FLAGS.pool_size)

  def run(runner, pool, key):
    out = rollout.rollout(params, runner.replace(reset_pool=pool), key, env=env, apply_fn=model.apply,
                          value_fn=value_fn, dist=dist, num_steps=FLAGS.num_steps, gamma=0.99, pool_refresh=FLAGS.refresh)
    return out[0], out[3].count

  variants, compile_s = {}, {}
  for name, p in (("plain", None), ("pool", pool)):
    t0 = time.time()
    variants[name] = (jax.jit(run).lower(runner, p, key).compile(), p)
    compile_s[name] = round(time.time() - t0, 1)
  times = {name: [] for name in variants}
  episodes = {name: 0 for name in variants}
  for i in range(FLAGS.repeats + 1):  # the first round warms up and is not timed
    for name, (fn, p) in variants.items():
      t0 = time.time()
      _, count = jax.block_until_ready(fn(runner, p, jax.random.fold_in(key, i)))
      if i:
        times[name].append(time.time() - t0)
        episodes[name] += int(count)
  steps = FLAGS.num_envs * FLAGS.num_steps
  sps = {name: round(steps / statistics.median(t)) for name, t in times.items()}
  print(json.dumps({"env_name": FLAGS.env_name, "num_envs": FLAGS.num_envs, "num_steps": FLAGS.num_steps,
                    "pool_size": FLAGS.pool_size, "refresh": FLAGS.refresh, "sps_plain": sps["plain"],
                    "sps_pool": sps["pool"], "speedup": round(sps["pool"] / sps["plain"], 2),
                    "episodes_ended": episodes, "compile_s": compile_s, "device": str(jax.devices()[0])}))


if __name__ == "__main__":
  app.run(main)
