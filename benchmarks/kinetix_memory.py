"""The dry run's memory estimate (launch/memory.per_transition) against the compiled update's own memory analysis.

  .venv-kinetix/bin/python -m benchmarks.kinetix_memory                  # kinetix.py, 8 virtual CPU devices
  .venv-kinetix/bin/python -m benchmarks.kinetix_memory --variant=flat --num_envs=1024,2048,4096

Compiles the fused update (launch/run/programs.py, the program the trainer runs; nothing is allocated) of the Kinetix
config at a few scaled-down num_envs on 8 devices, reads XLA's memory analysis per device (launch/run/memory.py: arguments
+ outputs - donated + temporaries + code), fits memory = a + b·num_envs by least squares and extrapolates to
--target_num_envs; prints that next to per_transition's rollout per device at the target and their ratio, as JSON.
Sizes should keep the gradient chunk at its full config.sgd_chunk_size (minibatch ≥ 2 chunks with diagnostics on),
or the activations' share is not yet the target's and the fit is not a line.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import json  # pylint: disable=wrong-import-position
import time  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position

from launch.config import resolve as config_lib  # pylint: disable=wrong-import-position
from launch.run import memory, programs
from launch.configs import kinetix  # pylint: disable=wrong-import-position

flags.DEFINE_string("variant", "", "launch/configs/kinetix.py variant: '' (entity observations) or 'flat'.")
flags.DEFINE_list("num_envs", ["1024", "2048", "4096"], "Scaled-down env counts compiled for the fit.")
flags.DEFINE_integer("target_num_envs", 1_048_576, "The env count extrapolated to.")
flags.DEFINE_string("json_out", None, "Also append the result as one JSON line to this file.")
FLAGS = flags.FLAGS
GIB = 2**30


def config_at(num_envs: int):
  config = kinetix.get_config(FLAGS.variant or None)
  config.num_envs = num_envs
  config.mesh.data = 8
  return config


def compiled_per_device(num_envs: int) -> tuple[memory.ProgramMemory, float]:
  config = config_at(num_envs)
  resolved = config_lib.resolve(config, num_devices=jax.device_count(), planning=True)
  t0 = time.time()
  progs = programs.build(config, resolved=resolved, eval_episodes=0)  # the update only: no evaluation, no solve rates
  return memory.program_memory(progs.compiled["update"]), time.time() - t0


def main(_):
  if jax.device_count() != 8:
    raise SystemExit(f"needs 8 devices, found {jax.device_count()} (XLA_FLAGS is set by this script before jax loads)")
  sizes = [int(n) for n in FLAGS.num_envs]
  rows = []
  for n in sizes:
    mem, compile_s = compiled_per_device(n)
    estimate = memory.per_transition(config_at(n))
    rows.append({"num_envs": n, "compiled_bytes": mem.needed, "argument": mem.argument, "output": mem.output,
                 "alias": mem.alias, "temp": mem.temp, "estimate_bytes": round(estimate["rollout_per_device_gib"] * GIB),
                 "compile_s": round(compile_s, 1)})
    print(json.dumps(rows[-1]), flush=True)
  b, a = np.polyfit(np.array(sizes, float), np.array([r["compiled_bytes"] for r in rows], float), 1)
  target = memory.per_transition(config_at(FLAGS.target_num_envs))
  extrapolated = a + b * FLAGS.target_num_envs
  estimate = target["rollout_per_device_gib"] * GIB
  result = {"config": f"kinetix.py{':' + FLAGS.variant if FLAGS.variant else ''}", "devices": 8,
            "fit_sizes": sizes, "fit_a_bytes": round(a), "fit_b_bytes_per_env": round(b, 1),
            "target_num_envs": FLAGS.target_num_envs, "compiled_extrapolated_gib": round(extrapolated / GIB, 2),
            "estimate_gib": round(estimate / GIB, 2), "estimate_over_compiled": round(estimate / extrapolated, 3),
            "per_transition": target, "rows": rows, "jax": jax.__version__}
  print(json.dumps(result), flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "a", encoding="utf-8") as f:
      f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  app.run(main)
