"""The minibatch shuffle's cost across devices: `sgd.shuffle=global` against `local` on a mesh of D devices.

Per task: both arms' fused update built in this process on the same mesh (launch/run/programs.py), the bytes their
collectives move per update (launch/run/traffic.py: by source: minibatch gathers, gradients, other) and the update's
time, interleaved round by round (one round of `--updates` updates of one arm, then the other; compile excluded):
each arm's median seconds per update and the median of the per-round ratios local / global.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.shuffle_traffic
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.shuffle_traffic --tasks=breakout --rounds=5

On CPU "devices" share the host's memory, so an all-reduce is a memory copy: the times here bound what the gathers
cost on one host, not over a network (docs/devices.md has both figures and what they mean for a pod).
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import time

import jax
from absl import app, flags

from launch.configs import default
from launch.run import programs, traffic

flags.DEFINE_list("tasks", ["cartpole", "breakout"], "Tasks (TASKS).")
flags.DEFINE_integer("rounds", 7, "Timed rounds per arm (alternating).")
flags.DEFINE_integer("updates", 3, "Updates per timed round.")
flags.DEFINE_string("out", "", "Write the results to this JSON file.")
FLAGS = flags.FLAGS

TASKS = {  # diagnostics off: the update alone
    "cartpole": {"num_envs": 4096, "num_steps": 128, "diagnostics.enabled": False},
    "breakout": {"env_name": "gymnax:Breakout-MinAtar", "num_envs": 512, "num_steps": 128,
                 "diagnostics.enabled": False},
}


def _update(task: str, shuffle: str):
  config = default.get_config()
  config.update_from_flattened_dict({**TASKS[task], "sgd.shuffle": shuffle})
  progs = programs.build(config, eval_episodes=0)
  state = progs.init(jax.random.PRNGKey(0))
  state, _ = progs.update(state)  # warm
  jax.block_until_ready(state)
  return progs, state, config.num_envs * config.num_steps


def measure(task: str) -> dict:
  arms = {s: list(_update(task, s)) for s in ("global", "local")}
  times = {s: [] for s in arms}
  for _ in range(FLAGS.rounds):
    for shuffle, arm in arms.items():
      t0 = time.perf_counter()
      for _ in range(FLAGS.updates):
        arm[1], _ = arm[0].update(arm[1])
      jax.block_until_ready(arm[1])
      times[shuffle].append((time.perf_counter() - t0) / FLAGS.updates)
  ratios = [b / a for a, b in zip(times["global"], times["local"])]
  return {"batch": arms["global"][2], "devices": jax.device_count(),
          **{f"{s}_update_s": statistics.median(t) for s, t in times.items()},
          "ratio_local_over_global": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
          **{f"{s}_traffic": traffic.of(arms[s][0].compiled["update"]) for s in arms}}


def main(_):
  with open("/proc/cpuinfo", encoding="utf-8") as f:
    model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
  result = {"date": datetime.date.today().isoformat(), "machine": f"{model}, {os.cpu_count()} cores",
            "rounds": FLAGS.rounds, "updates": FLAGS.updates, "tasks": {}}
  for task in FLAGS.tasks:
    r = result["tasks"][task] = measure(task)
    gathers = r["global_traffic"]["by_source"].get("minibatch gathers", 0)
    print(f"{task}: {r['batch']:,} samples on {r['devices']} devices | minibatch gathers {gathers / 2**20:.1f} MiB "
          f"per update (global) vs {r['local_traffic']['by_source'].get('minibatch gathers', 0) / 2**20:.1f} (local); "
          f"gradients {r['global_traffic']['by_source'].get('gradients', 0) / 2**20:.1f} MiB | update "
          f"{r['global_update_s'] * 1e3:.0f} ms (global) vs {r['local_update_s'] * 1e3:.0f} ms (local), ratio "
          f"{r['ratio_local_over_global']:.3f} (rounds {r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f})")
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
