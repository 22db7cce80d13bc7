"""Throughput of the staged pipeline: `overlap` vs `sync` on 8 virtual CPU devices split between actors and learner.

  python benchmarks/pipeline_overlap.py                        # both envs, 5 repeats each
  python benchmarks/pipeline_overlap.py --envs=cartpole_substeps:256 --repeats=3

For each env the two modes run alternately (sync, overlap, sync, ...) in one process, so machine noise hits both.
SPS is env steps per second of the whole train loop (compile excluded: each run compiles ahead of its clock), taken
as the median over the run's log intervals except the first and the last (the last includes an evaluation).
`cartpole_substeps:K` integrates each CartPole step in K substeps: an env whose rollout costs about as much as the
SGD work (K = 768: alone, its rollout + GAE and its SGD phase each take ~0.19 s on this machine; the script prints
both), where overlapping can pay off. The default CartPole is reported as is. For each env it also prints how many
cores each stage keeps busy alone (process CPU time / wall time) and the bound that puts on overlap / sync: running
the stages at the same time cannot take less than their CPU time spread over all cores.

Placement: 7 actor devices, 1 learner device. On 2 CPU cores the 8 virtual devices are threads of one process, and
XLA:CPU's collectives between them are expensive when oversubscribed (a scan with one all-reduce per step over 4
virtual devices runs 3.7x slower than without it, and two such programs run concurrently are slower than back to
back), so a learner spread over 4 devices spends its time in per-minibatch gradient all-reduces that also starve
the actors. A one-device learner has none; the actors' only collectives are the per-batch statistics.
"""
import os

# Eigen's intra-op thread pool off: the virtual devices already give XLA:CPU one thread each, and with it on the
# stages' threads contend on both cores (when this was set, overlap went 1.21x -> 1.32x with sync no slower, back to
# back; the stages have since become faster and busier, see docs/performance.md).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           + " --xla_cpu_multi_thread_eigen=false").strip()

import resource  # pylint: disable=wrong-import-position
import statistics  # pylint: disable=wrong-import-position
import tempfile  # pylint: disable=wrong-import-position

from absl import app, flags, logging  # pylint: disable=wrong-import-position

import time  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position

from launch.run import programs, trainer  # pylint: disable=wrong-import-position
from launch.configs import default  # pylint: disable=wrong-import-position
from launch.report.metrics_file import read_jsonl  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list("envs", ["cartpole_substeps:768", "CartPole-v1"], "env_name values to benchmark.")
flags.DEFINE_integer("repeats", 5, "Runs per mode and env.")
flags.DEFINE_integer("updates", 14, "Updates per run (logged every 2).")
flags.DEFINE_integer("actor_devices", 7, "Of the 8 devices, how many step envs (the rest train).")
flags.DEFINE_integer("num_envs", 448, "Parallel envs (a multiple of 64 x actor_devices).")
flags.DEFINE_integer("sgd_chunk_size", 2048, "Samples per gradient chunk (must divide the minibatch).")


def _config(env_name: str, mode: str):
  config = default.get_config()
  config.env_name = env_name
  config.num_envs = FLAGS.num_envs
  config.total_env_steps = FLAGS.num_envs * config.num_steps * FLAGS.updates
  config.log_every = 2
  config.eval_every = 10**6
  config.eval_episodes = 8
  config.pipeline.mode = mode
  config.pipeline.max_policy_lag = 1
  config.pipeline.actor_devices = FLAGS.actor_devices
  config.sgd_chunk_size = FLAGS.sgd_chunk_size
  return config


def stage_seconds(env_name: str) -> tuple[float, float]:
  """Median seconds of one rollout (act + advantage) and one SGD phase (learn), each run alone."""
  progs = programs.build(_config(env_name, "sync"), eval_episodes=0)  # the stages the trainer runs
  state, fns = progs.init(jax.random.PRNGKey(0)), progs.pipeline

  def timed(fn):
    jax.block_until_ready(fn())
    times, cpu = [], []
    for _ in range(3):
      t0, c0 = time.perf_counter(), _cpu_seconds()
      out = jax.block_until_ready(fn())
      times.append(time.perf_counter() - t0)
      cpu.append(_cpu_seconds() - c0)
    return statistics.median(times), statistics.median(cpu), out

  act_s, act_cpu, (batch, stats) = timed(lambda: fns.to_learner(*_act(fns, state)))
  learn_s, learn_cpu, _ = timed(lambda: fns.learn(state.params, state.opt_state, state.proximal, batch, state.key))
  del stats
  return act_s, learn_s, act_cpu, learn_cpu


def _cpu_seconds() -> float:
  """CPU time of all this process's threads so far (user + system)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _act(fns, state):
  out = fns.act(fns.to_actors(state.params), state.runner, fns.to_actors(state.key))
  return fns.advantage(out.traj, out.last_value), out.stats


def run(env_name: str, mode: str) -> float:
  config = _config(env_name, mode)
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(config, workdir)
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return statistics.median(r["sps"] for r in rows[1:-1])


def main(_):
  logging.set_verbosity(logging.WARNING)
  print(f"{'env':24s} {'sync SPS':>12s} {'overlap SPS':>12s} {'ratio':>7s}   (medians of {FLAGS.repeats} runs; "
        f"8 devices: {FLAGS.actor_devices} actors, {8 - FLAGS.actor_devices} learner; load {os.getloadavg()[0]:.1f})")
  for env_name in FLAGS.envs:
    act_s, learn_s, act_cpu, learn_cpu = stage_seconds(env_name)
    # Overlap cannot beat the CPU time both stages need, spread over all cores: the bound on overlap / sync.
    bound = (act_s + learn_s) / max(act_s, learn_s, (act_cpu + learn_cpu) / os.cpu_count())
    print(f"{env_name:24s} stages alone: rollout+GAE {act_s * 1e3:.0f} ms on {act_cpu / act_s:.2f} cores, SGD "
          f"{learn_s * 1e3:.0f} ms on {learn_cpu / learn_s:.2f} cores -> overlap / sync <= {bound:.2f} on "
          f"{os.cpu_count()} cores", flush=True)
    sps = {"sync": [], "overlap": []}
    for _ in range(FLAGS.repeats):
      for mode in ("sync", "overlap"):
        sps[mode].append(run(env_name, mode))
    ratios = [o / s for s, o in zip(sps["sync"], sps["overlap"])]
    print(f"{env_name:24s} {statistics.median(sps['sync']):12,.0f} {statistics.median(sps['overlap']):12,.0f} "
          f"{statistics.median(ratios):7.2f}   per-run ratios {[round(r, 2) for r in ratios]}", flush=True)


if __name__ == "__main__":
  app.run(main)
