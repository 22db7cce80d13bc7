"""The cost of the outer-loop diagnostics: SPS of the trainer's update (launch/run/programs.py) with diagnostics on vs
off, in one process.

Both variants are compiled first (compile time is reported apart), then timed alternately, `repeats` rounds of
`updates` updates each, so background load hits both alike; the median SPS of each is reported.

  python -m benchmarks.diagnostics_overhead                                   # default config (CartPole, N=32)
  python -m benchmarks.diagnostics_overhead --config.env_name=gymnax:Breakout-MinAtar --config.num_envs=512
  python -m benchmarks.diagnostics_overhead --config.num_envs=1048576 --config.total_env_steps=268435456 \
      --config.learning_rate=2.5e-4 --updates=1 --repeats=1 --nowarmup   # the throughput reference config at 2^20
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from launch.run import programs

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "launch", "configs", "default.py")
config_flags.DEFINE_config_file("config", _DEFAULT, "Config file.", lock_config=True)
flags.DEFINE_integer("updates", 10, "Updates per timed round.")
flags.DEFINE_integer("repeats", 5, "Timed rounds per variant (alternating).")
flags.DEFINE_bool("warmup", True, "Run one untimed update per variant first (its one-time costs, as the trainer's "
                  "first_update_time). At 1,048,576 envs an update takes minutes and the first costs about the same "
                  "as the next, so --nowarmup times it instead.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  compiled, states, compile_times = {}, {}, {}
  for enabled in (False, True):
    config = FLAGS.config.copy_and_resolve_references()
    config.diagnostics.enabled = enabled
    progs = programs.build(config, eval_episodes=0)  # the trainer's update: shardings, donation, XLA options
    compiled[enabled], compile_times[enabled] = progs.update, progs.compile_time
    states[enabled] = progs.init(jax.random.PRNGKey(0))
    if FLAGS.warmup:
      states[enabled], _ = compiled[enabled](states[enabled])
    jax.block_until_ready(states[enabled])
  batch = FLAGS.config.num_envs * FLAGS.config.num_steps
  sps = {False: [], True: []}
  for _ in range(FLAGS.repeats):
    for enabled in (False, True):
      t0 = time.time()
      for _ in range(FLAGS.updates):
        states[enabled], metrics = compiled[enabled](states[enabled])
      jax.block_until_ready((states[enabled], metrics))
      sps[enabled].append(FLAGS.updates * batch / (time.time() - t0))
  off, on = np.median(sps[False]), np.median(sps[True])
  print(f"env={FLAGS.config.env_name} num_envs={FLAGS.config.num_envs} batch={batch} "
        f"load={os.getloadavg()[0]:.1f}")
  print(f"compile s: off {compile_times[False]:.1f}, on {compile_times[True]:.1f}")
  print(f"SPS off: median {off:.0f} of {[round(s) for s in sps[False]]}")
  print(f"SPS on:  median {on:.0f} of {[round(s) for s in sps[True]]}")
  print(f"overhead: {100 * (off / on - 1):.1f}% more time per update with diagnostics on (SPS ratio {on / off:.3f})")


if __name__ == "__main__":
  app.run(main)
