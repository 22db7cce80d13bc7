"""Kinetix update throughput: flat vs entity observations, with and without the reset pool, and the update's time
split between rollout and learning, in one process.

  .venv-kinetix/bin/python -m benchmarks.kinetix_throughput                       # 256 envs x 64 steps, 4 variants
  .venv-kinetix/bin/python -m benchmarks.kinetix_throughput --num_envs=512 --num_steps=128 --variants=entity_pool

Variants: launch/configs/kinetix.py (entity observations, the entity transformer) and its :flat variant (flat
observation, 3 x 256 MLP), each with the config's reset pool (2,048 states, 64 re-sampled per step) or without it
(every finished episode pays kinetix-env's reset, which filters random levels). The algorithm is the config's
(8 epochs x 32 minibatches, diagnostics on); only num_envs and num_steps are scaled down.

Each variant's programs come from launch/programs.build, the programs the trainer runs: the fused update (what
`pipeline.mode=fused`, the default, executes) gives the SPS = num_envs x num_steps / median update time; the
staged pipeline's compiled stages (`pipeline.mode=sync`, identical results) are called one after the other with a
block between them, which splits the update into rollout (act: policy, env steps, resets; advantage: GAE) and
learning (learn: SGD epochs and diagnostics; metrics). Compile times are printed apart. Every variant runs one
untimed update of each program first; then the variants' timed updates alternate, so that load from other processes
falls on all of them. Prints one JSON line per variant, then the ratios entity/flat and pool/no-pool.

All four variants with the fused update are eight large compiled Kinetix programs in one process: on Linux's default
`vm.max_map_count` (65,530) XLA:CPU's code allocator ran out of mappings while compiling the last of them
("LLVM compilation error: Cannot allocate memory" with 22 GB free; 2026-12-02). Raise the limit
(`sysctl -w vm.max_map_count=262144`), or run fewer variants per process (`--variants`) or `--nofused`.
"""
from __future__ import annotations

import json
import statistics
import time

import jax
from absl import app, flags

from launch.run import programs
from launch.configs import kinetix

VARIANTS = {  # name -> (kinetix.py variant, reset pool on)
    "entity_pool": (None, True), "flat_pool": ("flat", True),
    "entity_nopool": (None, False), "flat_nopool": ("flat", False)}

flags.DEFINE_integer("num_envs", 256, "Parallel envs (the config's 2,048 scaled down).")
flags.DEFINE_integer("num_steps", 64, "Env steps per update (the config's 256 scaled down).")
flags.DEFINE_integer("nopool_num_steps", None, "num_steps of the no-pool variants (default --num_steps): a plain "
                     "reset is ~10x slower per step, so a smaller batch keeps their updates short.")
flags.DEFINE_integer("repeats", 3, "Timed updates per variant and program (the median is reported).")
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to run, of {list(VARIANTS)}.")
flags.DEFINE_bool("fused", True, "Also build and time the fused update (SPS from it); without it the SPS is the "
                  "staged update's (the sum of its stages: the same computation, one compile less per variant).")
flags.DEFINE_string("json_out", None, "Also append the results as JSON lines to this file.")
FLAGS = flags.FLAGS


def variant_config(name: str):
  arg, pool = VARIANTS[name]
  config = kinetix.get_config(arg)
  config.num_envs = FLAGS.num_envs
  config.num_steps = FLAGS.num_steps if pool or not FLAGS.nopool_num_steps else FLAGS.nopool_num_steps
  config.total_env_steps = config.num_envs * config.num_steps * (FLAGS.repeats + 1)
  config.scaling.base_num_envs = config.num_envs  # the config's own learning rate, unscaled
  if not pool:
    config.reset_pool.size = 0
  return config


class Variant:
  """One config's fused update and staged pipeline, their states and their timings."""

  def __init__(self, name: str):
    self.name, self.config = name, variant_config(name)
    key = jax.random.PRNGKey(self.config.seed)
    self.update = None
    if FLAGS.fused:
      fused = programs.build(self.config, eval_episodes=0)  # no evaluation: solve-rate programs are not built
      self.update, self.state = fused.update, fused.init(key)
    staged = programs.build(self.config, mode="sync", eval_episodes=0)
    self.compile_s = {"update": fused.compile_time if FLAGS.fused else None, "stages": staged.compile_time}
    self.stages, self.staged_state = staged.pipeline, staged.init(key)
    self.times = {"update": [], "act": [], "advantage": [], "learn": [], "metrics": []}

  @property
  def steps(self) -> int:
    return self.config.num_envs * self.config.num_steps

  def run_update(self, timed: bool) -> None:
    if self.update is None:
      return
    t = time.perf_counter()
    self.state, metrics = self.update(self.state)
    jax.block_until_ready(metrics)
    if timed:
      self.times["update"].append(time.perf_counter() - t)

  def run_stages(self, timed: bool) -> None:
    """One update through the pipeline's stages as the sync pipeline chains them, each one waited for."""
    fns, s = self.stages, self.staged_state
    clock = {}

    def stage(name, fn, *args):
      t = time.perf_counter()
      out = jax.block_until_ready(fn(*args))
      clock[name] = time.perf_counter() - t
      return out

    key, rollout_key, sgd_key = jax.block_until_ready(fns.split_key(s.key))
    out = stage("act", fns.act, fns.to_actors(s.params), s.runner, rollout_key)
    batch = stage("advantage", fns.advantage, out.traj, out.last_value)
    batch, stats = fns.to_learner(batch, out.stats)
    params, opt_state, proximal, aux = stage("learn", fns.learn, s.params, s.opt_state, s.proximal, batch, sgd_key)
    stage("metrics", fns.metrics, aux, params, stats)
    self.staged_state = s.replace(params=params, opt_state=opt_state, proximal=proximal, runner=out.runner, key=key,
                                  update=s.update + 1)
    if timed:
      for name, seconds in clock.items():
        self.times[name].append(seconds)

  def row(self) -> dict:
    med = {k: statistics.median(v) for k, v in self.times.items() if v}
    rollout, learning = med["act"] + med["advantage"], med["learn"] + med["metrics"]
    if "update" not in med:  # the staged update: its stages one after the other
      med["update"] = statistics.median([sum(s) for s in zip(*(self.times[k] for k in ("act", "advantage", "learn",
                                                                                          "metrics")))])
    return {"variant": self.name, "env_name": self.config.env_name, "network": self.config.network.kind,
            "reset_pool": self.config.reset_pool.size, "num_envs": self.config.num_envs,
            "num_steps": self.config.num_steps, "sps": round(self.steps / med["update"]), "sps_from": "fused" if self.update else "stages",
            "update_s": [round(t, 3) for t in self.times["update"]],
            "stages_median_s": {k: round(med[k], 3) for k in ("act", "advantage", "learn", "metrics")},
            "rollout_share": round(rollout / (rollout + learning), 3),
            "learn_share": round(learning / (rollout + learning), 3),
            "rollout_sps": round(self.steps / rollout), "compile_s": {k: round(v, 1) for k, v in self.compile_s.items() if v is not None}}


def main(argv):
  del argv
  print(f"devices: {jax.devices()}  jax {jax.__version__}", flush=True)
  variants = []
  for name in FLAGS.variants:
    t = time.perf_counter()
    variants.append(v := Variant(name))
    v.run_update(timed=False)  # one-time costs, as the trainer's first update
    v.run_stages(timed=False)
    print(f"{name}: built, compiled ({v.compile_s}) and warmed up in {time.perf_counter() - t:.0f}s", flush=True)
  for i in range(FLAGS.repeats):
    for v in variants:
      v.run_update(timed=True)
      v.run_stages(timed=True)
      print(f"round {i}: {v.name} update {v.times['update'][-1] if v.times['update'] else float('nan'):.2f}s, stages "
            f"{ {k: round(x[-1], 2) for k, x in v.times.items() if k != 'update'} }", flush=True)
  rows = {v.name: v.row() for v in variants}
  for r in rows.values():
    print(json.dumps(r), flush=True)
  ratios = {}
  for obs in ("entity", "flat"):
    if f"{obs}_pool" in rows and f"{obs}_nopool" in rows:
      ratios[f"{obs}_pool_over_nopool"] = round(rows[f"{obs}_pool"]["sps"] / rows[f"{obs}_nopool"]["sps"], 2)
  for pool in ("pool", "nopool"):
    if f"entity_{pool}" in rows and f"flat_{pool}" in rows:
      ratios[f"entity_over_flat_{pool}"] = round(rows[f"entity_{pool}"]["sps"] / rows[f"flat_{pool}"]["sps"], 3)
  print(json.dumps({"ratios": ratios}), flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "a", encoding="utf-8") as f:
      for r in [*rows.values(), {"ratios": ratios}]:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  app.run(main)
