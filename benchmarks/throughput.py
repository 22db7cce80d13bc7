"""Throughput of the trainer's PPO update against the naive fused implementation, in one process.

  python -m benchmarks.throughput                                    # 2,048 and 65,536 envs, 3 timed updates each
  python -m benchmarks.throughput --num_envs=1048576 --impls=ours --repeats=2

The reference config: CartPole-v1, num_envs × 128 steps, 4 epochs × 4 minibatches, separate 64×64 tanh
actor and critic, Adam 2.5e-4 annealed, clip 0.2, GAE(0.99, 0.95), entropy 0.01, value 0.5, grad-norm clip 0.5.
"ours" is the update the trainer runs, from launch/run/programs.py (sharded state, jit with in/out shardings and donated
state, compiled with launch/xla_options); "naive" is benchmarks/naive_ppo.py compiled with XLA's defaults.
Everything (every size, both implementations) is compiled before the clock starts; each runs one untimed-for-SPS
first update (one-time costs, reported apart, as the trainer's metrics do); then their timed updates alternate round
by round (2,048 ours, 2,048 naive, 1,048,576 ours, 2,048 ours, ...) so that load from other processes and drift in
the host's speed fall on all of them. Printed per size: median SPS over the timed updates, compile time, the peak
RSS of the process while that implementation's updates ran, the ratio, ours' SPS against the first size's, and the
fraction of the FLOP ceiling: a [65536, 64] × [64, 64] matmul timed here, divided by the matmul FLOPs one
transition costs.

Also printed for ours, for the memory side: bytes per transition held at the update's peak (launch/run/memory.py's
`per_transition`, what `--dry_run` prints: the packed rows the rollout writes + the epoch's permutation), and the
memory traffic those bytes imply at the measured SPS: a lower bound that counts each stored byte written once and
read once per pass over it (the rollout writes the rows, GAE reads and rewrites them, the advantage statistics'
pass reads them, each epoch reads every row and its permutation once), against the copy bandwidth of a 1 GiB array
timed in the same process. A fraction near 1 means the update streams at the machine's bandwidth; XLA's own cost
analysis cannot give the traffic here, since it counts a loop's body once, not once per iteration.
"""
from __future__ import annotations

import ctypes
import json
import statistics
import time

import jax
from absl import app, flags

import envs
from benchmarks import naive_ppo
from launch.run import programs
from launch.configs import default

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This benchmark's flags, defined when it runs (or by a benchmark built on it): importing it defines none."""
  flags.DEFINE_list("num_envs", ["2048", "65536"], "Env counts to measure (1048576 needs ~11 GB and --impls=ours).")
  flags.DEFINE_integer("repeats", 3, "Timed updates per implementation and size (the median is reported).")
  flags.DEFINE_list("impls", ["ours", "naive"], "Implementations to run: ours, naive.")
  flags.DEFINE_integer("naive_max_envs", 65536, "Skip the naive implementation above this many envs: its full-batch "
                       "copies and unchunked minibatch activations need > 24 GB at 1,048,576 envs.")
  flags.DEFINE_string("json_out", None, "Also write the results as JSON lines to this file.")


NUM_STEPS = 128


def reference_config(num_envs: int, num_updates: int):
  config = default.get_config()
  config.num_envs = num_envs
  config.num_steps = NUM_STEPS
  config.update_epochs = 4
  config.num_minibatches = 4
  config.learning_rate = 2.5e-4
  config.anneal_lr = True
  config.total_env_steps = num_envs * NUM_STEPS * num_updates
  config.diagnostics.enabled = False  # the naive PPO computes none (benchmarks/diagnostics_overhead.py: their cost)
  return config


def flops_per_transition(hidden=(64, 64), obs=4, actions=2, epochs=4) -> int:
  """Matmul FLOPs per env step: rollout (actor + critic, critic on the final obs) + epochs × forward and backward.

  The backward pass needs every layer's weight gradient and every layer's input gradient but the first's.
  """
  def layer_macs(out):
    sizes = (obs, *hidden, out)
    return [a * b for a, b in zip(sizes[:-1], sizes[1:])]
  actor, critic = layer_macs(actions), layer_macs(1)
  forward = sum(actor) + sum(critic)
  backward = forward + sum(actor[1:]) + sum(critic[1:])
  return 2 * (forward + sum(critic) + epochs * (forward + backward))


def matmul_gflops(repeats: int = 20) -> float:
  """The FLOP ceiling's rate: [65536, 64] × [64, 64] in f32, XLA's default compilation, median of `repeats`."""
  x, w = jax.random.normal(jax.random.PRNGKey(0), (65536, 64)), jax.random.normal(jax.random.PRNGKey(1), (64, 64))
  f = jax.jit(lambda x, w: x @ w)
  f(x, w).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(x, w).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * 65536 * 64 * 64 / statistics.median(times) / 1e9


class PeakRSS:
  """The process's peak resident memory since `reset()` (Linux: VmHWM, reset through /proc/self/clear_refs)."""

  def reset(self):
    try:
      ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so an earlier peak is not carried over
    except OSError:
      pass
    try:
      with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    except OSError:
      pass

  def gb(self) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2**20
    return float("nan")


def copy_gbps(repeats: int = 5) -> float:
  """Memory bandwidth: GB/s read + written by a jitted copy (x + 1) of a 1 GiB float32 array, median of `repeats`."""
  x = jax.numpy.zeros((2**28,), jax.numpy.float32)
  f = jax.jit(lambda x: x + 1)
  f(x).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * x.nbytes / statistics.median(times) / 1e9


def streamed_bytes_per_transition(config) -> tuple[dict, int]:
  """(launch/memory.per_transition's figures, the traffic lower bound per transition and update; module docstring)."""
  from launch.run import memory  # pylint: disable=import-outside-toplevel
  per = memory.per_transition(config)
  rows = per["packed_row_bytes"]
  # the rollout writes every row; GAE reads and rewrites three of its columns (counted as whole rows: they share
  # cache lines); the minibatches' advantage statistics read the advantage column once (whole rows again,
  # pipeline/advantage_stats.py; on the accelerators' path each minibatch gathers its own, once per epoch:
  # learner/code_path.py); each epoch reads every row once, and writes and reads its permutation (an int32 per
  # transition).
  from learner import code_path  # pylint: disable=import-outside-toplevel
  stats = rows if code_path.cpu_forms() else config.update_epochs * rows
  streamed = rows + 2 * rows + stats + config.update_epochs * (rows + 8)
  return per, streamed


def build_ours(num_envs: int, num_updates: int):
  """The trainer's programs (launch/run/programs.py): sharded state, jitted, donated update compiled with its options."""
  config = reference_config(num_envs, num_updates)
  progs = programs.build(config, eval_episodes=0)
  return progs.update, progs.init(jax.random.PRNGKey(config.seed)), progs.compile_time


def build_naive(num_envs: int, num_updates: int):
  config = reference_config(num_envs, num_updates)
  init, update = naive_ppo.make_naive(
      envs.make(config.env_name), num_envs=num_envs, num_steps=NUM_STEPS,
      update_epochs=config.update_epochs, num_minibatches=config.num_minibatches,
      learning_rate=config.learning_rate, total_updates=num_updates, gamma=config.gamma,
      gae_lambda=config.gae_lambda, clip_eps=config.clip_eps, ent_coef=config.ent_coef, vf_coef=config.vf_coef,
      max_grad_norm=config.max_grad_norm)
  state = jax.jit(init)(jax.random.PRNGKey(config.seed))
  t0 = time.perf_counter()
  compiled = jax.jit(update).lower(state).compile()  # XLA defaults, no donation: as such code is usually run
  return compiled, state, time.perf_counter() - t0


def measure(num_envs: int, impls: list[str], repeats: int, ceiling_gflops: float) -> list[dict]:
  """One size's rows (`measure_sizes` with that size alone)."""
  return measure_sizes({num_envs: impls}, repeats, ceiling_gflops)[num_envs]


def measure_sizes(plan: dict[int, list[str]], repeats: int, ceiling_gflops: float) -> dict[int, list[dict]]:
  """`plan`: num_envs -> implementations. Everything is built first; then round by round every (size,
  implementation) runs one update, so drift in the host's speed falls on all of them alike (the sizes' SPS ratio
  compares updates run minutes apart at most, not a whole size's measurement apart)."""
  builders = {"ours": build_ours, "naive": build_naive}
  runs = {}
  for num_envs, impls in plan.items():
    for name in impls:
      update, state, compile_time = builders[name](num_envs, repeats + 1)
      runs[num_envs, name] = {"update": update, "state": state, "compile_time": compile_time, "times": [],
                              "peak_rss_gb": 0.0}
  rss = PeakRSS()
  for i in range(1 + repeats):  # the first update of each is timed apart (one-time costs), as in the trainer
    for run in runs.values():
      rss.reset()
      t = time.perf_counter()
      run["state"], out = run["update"](run["state"])
      jax.block_until_ready(out)
      elapsed = time.perf_counter() - t
      if i:
        run["times"].append(elapsed)
      else:
        run["first"] = elapsed
      run["peak_rss_gb"] = max(run["peak_rss_gb"], rss.gb())
  sps_ceiling = ceiling_gflops * 1e9 / flops_per_transition()
  rows = {num_envs: [] for num_envs in plan}
  for (num_envs, name), run in runs.items():
    sps = num_envs * NUM_STEPS / statistics.median(run["times"])
    rows[num_envs].append({"impl": name, "num_envs": num_envs, "sps": sps,
                           "update_s": [round(t, 3) for t in run["times"]], "first_update_s": run["first"],
                           "compile_s": run["compile_time"], "peak_rss_gb": run["peak_rss_gb"],
                           "ceiling_fraction": sps / sps_ceiling})
    if name == "ours":
      per, streamed = streamed_bytes_per_transition(reference_config(num_envs, repeats + 1))
      rows[num_envs][-1].update(bytes_per_transition=per["per_transition_bytes"],
                                streamed_bytes_per_transition=streamed, streamed_gbps=streamed * sps / 1e9)
  return rows


def main(argv):
  del argv
  ceiling = matmul_gflops()
  bandwidth = copy_gbps()
  flops = flops_per_transition()
  print(f"devices: {jax.devices()}  matmul [65536,64]x[64,64]: {ceiling:.1f} GFLOP/s; "
        f"{flops / 1e3:.1f} kFLOP/transition -> ceiling {ceiling * 1e9 / flops / 1e3:.0f}k SPS; "
        f"copy bandwidth {bandwidth:.1f} GB/s", flush=True)
  all_rows = []
  sizes = [int(x) for x in FLAGS.num_envs]
  plan = {n: [i for i in FLAGS.impls if i != "naive" or n <= FLAGS.naive_max_envs] for n in sizes}
  measured = measure_sizes(plan, FLAGS.repeats, ceiling)
  for n in sizes:
    rows = measured[n]
    by_impl = {r["impl"]: r for r in rows}
    for r in rows:
      print(f"num_envs={n:>8} {r['impl']:>5}: {r['sps'] / 1e3:7.1f}k SPS  compile {r['compile_s']:5.1f}s  "
            f"peak RSS {r['peak_rss_gb']:5.2f} GB  {100 * r['ceiling_fraction']:4.1f}% of ceiling  "
            f"updates {r['update_s']} (first {r['first_update_s']:.3f})", flush=True)
      if "bytes_per_transition" in r:
        print(f"num_envs={n:>8} {r['impl']:>5}: {r['bytes_per_transition']} bytes/transition held "
              f"({r['bytes_per_transition'] * n * NUM_STEPS / 2**30:.2f} GiB), >= {r['streamed_bytes_per_transition']} "
              f"streamed per update -> >= {r['streamed_gbps']:.1f} GB/s = "
              f"{100 * r['streamed_gbps'] / bandwidth:.0f}% of the copy bandwidth", flush=True)
    if "ours" in by_impl and "naive" in by_impl:
      ratio = by_impl["ours"]["sps"] / by_impl["naive"]["sps"]
      by_impl["ours"]["ratio_vs_naive"] = ratio
      print(f"num_envs={n:>8} ratio ours/naive: {ratio:.2f}x", flush=True)
    smallest = measured[sizes[0]]
    if n != sizes[0] and "ours" in by_impl and smallest and smallest[0]["impl"] == "ours":
      by_impl["ours"]["sps_vs_first_size"] = by_impl["ours"]["sps"] / smallest[0]["sps"]
      print(f"num_envs={n:>8} ours: {by_impl['ours']['sps_vs_first_size']:.3f}x the SPS at {sizes[0]} envs "
            f"(updates interleaved round by round)", flush=True)
    all_rows += rows
  if FLAGS.json_out:
    with open(FLAGS.json_out, "a", encoding="utf-8") as f:
      for r in all_rows:
        f.write(json.dumps(dict(r, matmul_gflops=ceiling, kflop_per_transition=flops / 1e3,
                                copy_gbps=bandwidth)) + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
