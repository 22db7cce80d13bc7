"""SPS of the trainer's update at two revisions of this code, interleaved round by round.

The host's speed can move by ±30% between minutes on a shared 2-core machine, so timing one revision and then the
other measures the host as much as the code. Here each revision runs in its own worker process (its own checkout
on PYTHONPATH), both compile and warm up first, and then they take turns: one round of `--updates` updates of A,
one of B, and so on; each pair of rounds is seconds apart, so the ratio of a pair sees the same host. Reported:
every round's SPS, each side's median, and the median and spread of the per-pair ratios B / A.

  git worktree add --detach /tmp/rev88 88cda37
  python -m benchmarks.revision_ab --a=/tmp/rev88 --b=. --rounds=15 -- --config.env_name=gymnax:Breakout-MinAtar \
      --config.num_envs=512 --config.num_steps=32 --config.diagnostics.enabled=false

A worker builds the update as its revision's trainer does: `programs.build` (launch/run/programs.py, or launch/programs.py
in older revisions) where the revision has it, else (revisions before the program builder) `jit(make_iteration)` with
the trainer's shardings, donation and XLA options, as that revision's trainer did. Arguments after `--` are config overrides for
launch/configs/default.py, given to both. `--a_env` / `--b_env` add NAME=VALUE variables to one worker's environment,
so that `--a=. --b=.` compares one checkout under two environments, e.g. with glibc's transparent-huge-page tunable:

  python -m benchmarks.revision_ab --a=. --b=. --b_env=GLIBC_TUNABLES=glibc.malloc.hugetlb=1 --updates=1 --rounds=5 \
      -- --config.num_envs=131072 --config.num_minibatches=4 --config.diagnostics.enabled=false
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags


def define_flags() -> None:
  """This benchmark's flags, defined when it runs: importing it defines none."""
  flags.DEFINE_string("a", None, "Checkout of revision A (a directory with launch/, pipeline/, ...).", required=True)
  flags.DEFINE_string("b", ".", "Checkout of revision B.")
  flags.DEFINE_integer("rounds", 15, "Timed rounds per revision (alternating).")
  flags.DEFINE_integer("updates", 10, "Updates per timed round.")
  flags.DEFINE_list("a_env", [], "Extra environment of A's worker, as NAME=VALUE (e.g. GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
                    "with --a=. --b=. compares one checkout with and without it).")
  flags.DEFINE_list("b_env", [], "Extra environment of B's worker, as NAME=VALUE.")


FLAGS = flags.FLAGS


def apply_overrides(config, overrides: list[str]) -> None:
  """Sets each `--config.a.b=value` on `config`, typed as the value it replaces (bools from true/false)."""
  for item in overrides:
    path, value = item.removeprefix("--config.").split("=", 1)
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
      node = node[part]
    old = node[leaf]
    node[leaf] = (value.lower() == "true") if isinstance(old, bool) else type(old)(value)


def _worker(overrides: list[str], updates: int) -> None:
  """Runs in a revision's checkout: build, warm up, then one timed round per 'go' line on stdin."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from launch.configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  apply_overrides(config, overrides)
  t0 = time.time()
  if os.path.exists(os.path.join("launch", "run", "programs.py")) or os.path.exists(os.path.join("launch", "programs.py")):
    # launch/run/programs.py, or launch/programs.py in revisions before launch/ was split by concern
    programs = importlib.import_module("launch.run.programs" if os.path.isdir(os.path.join("launch", "run"))
                                       else "launch.programs")
    progs = programs.build(config, eval_episodes=0)
    update, state = progs.update, progs.init(jax.random.PRNGKey(0))
  else:  # before the program builder: the trainer's own compile (that revision's module names)
    config_lib = importlib.import_module("launch.config_lib")
    trainer = importlib.import_module("launch.trainer")
    xla_options = importlib.import_module("launch.xla_options")
    from pipeline import iteration as iteration_lib  # pylint: disable=import-outside-toplevel
    from sharding import Layout, make_mesh, split_mesh  # pylint: disable=import-outside-toplevel
    resolved = config_lib.resolve(config, jax.device_count())
    agent = trainer.build_agent(config, resolved)
    _, learner_mesh = split_mesh(make_mesh(config.mesh.data), config.pipeline.actor_devices)
    layout = Layout(learner_mesh)
    init_fn = functools.partial(iteration_lib.init_train_state, agent, num_envs=config.num_envs, ppo=resolved.ppo)
    shardings = layout.train_state_shardings(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
    update = jax.jit(iteration_lib.make_iteration(agent, resolved.ppo, layout.constrain_envs),
                     in_shardings=(shardings,), out_shardings=(shardings, layout.replicated),
                     donate_argnums=0).lower(state).compile(
                         compiler_options=xla_options.compiler_options(jax.default_backend()))
  compile_s = time.time() - t0
  state, _ = update(state)  # warm-up: the first update's one-time costs
  jax.block_until_ready(state)
  batch = config.num_envs * config.num_steps
  print(json.dumps({"ready": True, "compile_s": compile_s, "batch": batch}), flush=True)
  for line in sys.stdin:
    if line.strip() != "go":
      break
    t0 = time.time()
    for _ in range(updates):
      state, metrics = update(state)
    jax.block_until_ready((state, metrics))
    print(json.dumps({"sps": updates * batch / (time.time() - t0)}), flush=True)


def worker_environment(checkout: str, extra_env: list[str] = ()) -> dict[str, str]:
  """This process's environment with PYTHONPATH the checkout, and each NAME=VALUE of `extra_env` set."""
  env = dict(os.environ, PYTHONPATH=checkout)
  for item in extra_env:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"expected NAME=VALUE, got {item!r}")
    env[name] = value
  return env


def _start(checkout: str, overrides: list[str], extra_env: list[str] = ()) -> subprocess.Popen:
  checkout = os.path.abspath(checkout)
  env = worker_environment(checkout, extra_env)
  here = os.path.abspath(__file__)
  return subprocess.Popen([sys.executable, here, "--worker", str(FLAGS.updates), *overrides], cwd=checkout, env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _read(proc: subprocess.Popen) -> dict:
  while True:
    line = proc.stdout.readline()
    if not line:
      raise RuntimeError(f"worker exited with {proc.wait()}")
    if line.startswith("{"):
      return json.loads(line)


def main(argv):
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  procs, info = {}, {}
  for name, checkout, extra_env in (("A", FLAGS.a, FLAGS.a_env), ("B", FLAGS.b, FLAGS.b_env)):
    procs[name] = _start(checkout, overrides, extra_env)  # one after the other: the compiles do not contend
    info[name] = _read(procs[name])
  sps = {"A": [], "B": []}
  for _ in range(FLAGS.rounds):
    for name, proc in procs.items():
      proc.stdin.write("go\n")
      proc.stdin.flush()
      sps[name].append(_read(proc)["sps"])
  for proc in procs.values():
    proc.stdin.write("quit\n")
    proc.stdin.close()
    proc.wait()
  ratios = np.array(sps["B"]) / np.array(sps["A"])
  print(f"config overrides: {' '.join(overrides) or '(none)'}; batch {info['A']['batch']}; load "
        f"{os.getloadavg()[0]:.1f}")
  for name, path, extra_env in (("A", FLAGS.a, FLAGS.a_env), ("B", FLAGS.b, FLAGS.b_env)):
    where = "; ".join([path, *extra_env])
    print(f"{name} ({where}): compile {info[name]['compile_s']:.1f} s; SPS median {np.median(sps[name]):.0f} of "
          f"{[round(s) for s in sps[name]]}")
  lo, hi = np.quantile(ratios, [0.25, 0.75])
  print(f"B / A per pair of rounds: median {np.median(ratios):.3f} (quartiles {lo:.3f}-{hi:.3f}, "
        f"B faster in {int((ratios > 1).sum())} of {len(ratios)})")


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--worker":
    # Import only the worker's checkout (cwd, PYTHONPATH): an editable install's finder would fill in modules that
    # the revision lacks from another checkout.
    sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    _worker(sys.argv[3:], int(sys.argv[2]))
  else:
    define_flags()
    app.run(main)
