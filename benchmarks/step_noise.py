"""Step vs noise at a plateau (experiment 3): from one plateau checkpoint, K independent rollout + update pairs per
N and scaling rule.

The plateau checkpoint is benchmarks/stagnation_study.py's base arm (its final TrainState, saved with orbax under
STUDY/plateau/<game>); seed `--plateau_seed` of it is used. For each (rule, N), K copies of that learner state
(params, optimizer state with its counts) are put into one program on launch/run/programs.py's seed axis, each with its
own envs at N and its own key. The envs are first warmed up on-policy by `--warmup` updates, after which the learner
state is put back to the checkpoint's (so the envs hold states the plateau policy visits, not start states). Then
one update per copy:

  step  = mean over copies of KL(behaviour ‖ updated) on the copy's own batch (the trainer's exact diagnostic), and
          the same KL on the fixed state set below;
  noise = mean over ordered pairs i ≠ j of KL(updated_i ‖ updated_j) on a fixed state set: ≤ `--states` of the
          copies' post-warm-up observations, pooled.

With updated_i = behaviour + d + e_i (d the common direction, e_i independent noise), to second order step ≈ |d|² +
E|e|² and noise ≈ 2 E|e|² in the Fisher metric, so noise / step → 2 when the update is pure noise and → 0 when it
is pure signal. One JSON per (game, rule, N) under OUT, skipped when present; --report_only redoes the table and
the figure.

  nice -n 19 python -m benchmarks.step_noise --study=docs/study --out=docs/study/step_noise
  python -m benchmarks.step_noise --study=docs/study --out=docs/study/step_noise --report_only
  python -m benchmarks.step_noise --smoke --study=/tmp/study_smoke --out=/tmp/step_noise_smoke  # after the study's
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import stagnation_study as study
from launch.config import resolve as config_lib
from launch.run import programs

_define = study._define  # pylint: disable=protected-access
_define("string")("study", "docs/study", "The stagnation study's directory (its plateau checkpoint).")
_define("string")("game", "Breakout-MinAtar", "The game whose plateau checkpoint is used.")
_define("integer")("copies", 16, "K: independent rollout + update pairs per (rule, N).")
_define("integer")("warmup", 8, "On-policy warm-up updates of the envs before the measured update.")
_define("integer")("states", 4096, "Size of the fixed state set for the KLs between copies.")
_define("integer")("plateau_seed", 0, "Which seed of the plateau checkpoint.")
_define("list")("noise_num_envs", ["8", "32", "128", "512"], "N values measured.")
_define("list")("noise_rules", ["recipe", "fixed_minibatches", "sqrt_lr"], "Scaling rules measured.")
FLAGS = study.FLAGS  # defined beside the study's flags, which this shares


def restore_plateau():
  """The plateau TrainState of one seed (the study's base arm, all seeds saved)."""
  base = study.base_arm(FLAGS.game)
  config = study.make_config(base)
  progs = programs.build(config, resolved=config_lib.resolve(config, num_devices=1), eval_episodes=0,
                         num_seeds=FLAGS.seeds, compile_update=False)
  state = study.load_plateau(FLAGS.study, FLAGS.game, progs.abstract_state)
  return jax.tree.map(lambda x: x[FLAGS.plateau_seed], state)


def measure(plateau, rule: str, num_envs: int) -> dict:
  arm = study.Arm(FLAGS.game, rule, num_envs, FLAGS.total_env_steps, FLAGS.learning_rate)
  config = study.make_config(arm)
  resolved = config_lib.resolve(config, num_devices=1)
  k = FLAGS.copies
  progs = programs.build(config, resolved=resolved, eval_episodes=0, num_seeds=k)
  keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(20_000), num_envs), k)
  tile = lambda x: jnp.broadcast_to(x, (k, *jnp.shape(x)))  # noqa: E731
  learner = lambda s: (s.params, s.opt_state, s.update, s.proximal)  # noqa: E731

  def with_plateau_learner(state):
    params, opt_state, update, proximal = jax.tree.map(tile, learner(plateau))
    out = state.replace(params=params, opt_state=opt_state, update=update, proximal=proximal)
    return jax.device_put(out, progs.state_shardings)

  t0 = time.time()
  state = with_plateau_learner(progs.init(keys))
  for _ in range(FLAGS.warmup):
    state, _ = progs.update(state)
  state = with_plateau_learner(state)
  obs = state.runner.obs.reshape(-1, *state.runner.obs.shape[2:])
  obs = obs[np.random.default_rng(0).permutation(len(obs))[:FLAGS.states]]
  state, m = progs.update(state)
  agent = progs.agent
  behaviour = agent.apply(plateau.params, obs)[0]  # [S, A]
  updated = jax.vmap(lambda p: agent.apply(p, obs)[0])(state.params)  # [K, S, A]
  step_fixed = jax.vmap(lambda q: agent.dist.kl(behaviour, q).mean())(updated)  # [K]
  pair = jax.vmap(lambda p: jax.vmap(lambda q: agent.dist.kl(p, q).mean())(updated))(updated)  # [K, K]
  pair = np.asarray(pair)
  off = pair[~np.eye(k, dtype=bool)]
  step_batch = np.asarray(m.diagnostics.kl_mean)
  return {"game": FLAGS.game, "rule": rule, "num_envs": num_envs, "copies": k, "states": int(len(obs)),
          "batch_size": resolved.batch_size, "minibatch_size": resolved.minibatch_size,
          "num_minibatches": resolved.ppo.num_minibatches, "learning_rate": resolved.learning_rate,
          "step_kl_batch": step_batch.tolist(), "step_kl_fixed": np.asarray(step_fixed).tolist(),
          "noise_pairwise_kl": off.tolist(), "noise_over_step": float(off.mean() / np.mean(step_fixed)),
          "seconds": time.time() - t0, "compile_s": progs.compile_time, "date": datetime.date.today().isoformat(),
          "machine": study.machine(), "smoke": FLAGS.smoke}


def load(out: str) -> list[dict]:
  runs = []
  for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    with open(path, encoding="utf-8") as f:
      runs.append(json.load(f))
  return runs


def ratio_ci(run: dict, resamples: int = 2000) -> tuple[float, float]:
  """95% bootstrap interval of noise / step, resampling the K copies (pairs among the resampled copies)."""
  k = run["copies"]
  pair = np.zeros((k, k))
  pair[~np.eye(k, dtype=bool)] = run["noise_pairwise_kl"]
  step = np.asarray(run["step_kl_fixed"])
  rng, out = np.random.default_rng(0), []
  for _ in range(resamples):
    idx = rng.integers(0, k, k)
    sub = pair[np.ix_(idx, idx)]
    mask = idx[:, None] != idx[None, :]
    if mask.any():
      out.append(sub[mask].mean() / step[idx].mean())
  lo, hi = np.percentile(out, [2.5, 97.5])
  return float(lo), float(hi)


def curves(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
  """The runs of each (game, rule), sorted by N: one curve each (games are never mixed in one line)."""
  keys = sorted({(r["game"], r["rule"]) for r in runs})
  return {k: sorted((r for r in runs if (r["game"], r["rule"]) == k), key=lambda r: r["num_envs"]) for k in keys}


def report(out: str) -> str:
  runs = load(out)
  if not runs:
    return "no results yet\n"
  lines = ["| game | rule | N | minibatch × count | lr | step KL (batch) | step KL (fixed set) | noise: pairwise KL | "
           "noise / step [95% CI] | s |", "| " + " | ".join(["---"] * 10) + " |"]
  for r in sorted(runs, key=lambda r: (r["game"], r["rule"], r["num_envs"])):
    lo, hi = ratio_ci(r)
    lines.append(f"| {r['game']} | {r['rule']} | {r['num_envs']} | {r['minibatch_size']} × {r['num_minibatches']} | "
                 f"{r['learning_rate']:g} | {np.mean(r['step_kl_batch']):.2e} | {np.mean(r['step_kl_fixed']):.2e} | "
                 f"{np.mean(r['noise_pairwise_kl']):.2e} | {r['noise_over_step']:.3f} [{lo:.3f}, {hi:.3f}] | "
                 f"{r['seconds'] + r['compile_s']:.0f} |")
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  games = sorted({r["game"] for r in runs})
  fig, axes = plt.subplots(len(games), 2, figsize=(11, 4 * len(games)), squeeze=False)
  for (game, rule), rs in curves(runs).items():
    row = axes[games.index(game)]
    n = [r["num_envs"] for r in rs]
    ci = np.array([ratio_ci(r) for r in rs])
    ratio = [r["noise_over_step"] for r in rs]
    row[0].errorbar(n, ratio, yerr=[np.subtract(ratio, ci[:, 0]), np.subtract(ci[:, 1], ratio)], marker="o",
                    capsize=3, label=rule)
    row[1].plot(n, [np.mean(r["step_kl_fixed"]) for r in rs], marker="o", label=f"{rule}: step")
    row[1].plot(n, [np.mean(r["noise_pairwise_kl"]) for r in rs], marker="x", linestyle="--",
                label=f"{rule}: noise")
  for game, row in zip(games, axes):
    copies = next(r["copies"] for r in runs if r["game"] == game)
    row[0].set_title(f"{game}: one update from the base arm's final state, K = {copies} copies, "
                     "95% bootstrap CI over copies", fontsize=8, loc="left")
    row[0].axhline(2, color="grey", linewidth=1, linestyle=":")
    row[0].set_ylabel("noise / step (2 = pure noise)")
    row[1].set_ylabel("KL")
    row[1].set_yscale("log")
    for ax in row:
      ax.set_xscale("log", base=2)
      ax.set_xlabel("N (num_envs)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "noise_vs_step.png"), dpi=100)
  plt.close(fig)
  return "\n".join(lines + ["", "![noise vs step](noise_vs_step.png)"]) + "\n"


def main(argv):
  FLAGS(argv)
  if FLAGS.smoke:
    FLAGS.num_envs, FLAGS.seeds, FLAGS.total_env_steps = ["4", "8"], 2, 512  # the study's smoke sizes
    FLAGS.copies, FLAGS.warmup, FLAGS.states = 3, 1, 64
    FLAGS.noise_rules = ["recipe"]
    if not FLAGS["noise_num_envs"].present:
      FLAGS.noise_num_envs = ["4", "8"]
  os.makedirs(FLAGS.out, exist_ok=True)
  if not FLAGS.report_only:
    plateau = None
    for rule in FLAGS.noise_rules:
      for n in (int(x) for x in FLAGS.noise_num_envs):
        if n == int(FLAGS.num_envs[0]) and rule != "recipe":
          continue  # at the base N every rule is the same config
        path = os.path.join(FLAGS.out, f"{FLAGS.game.split('-')[0].lower()}_{rule}_N{n}.json")
        if os.path.exists(path):
          continue
        plateau = plateau if plateau is not None else restore_plateau()
        result = measure(plateau, rule, n)
        with open(path, "w", encoding="utf-8") as f:
          json.dump(result, f)
        print(f"{rule} N={n}: noise/step {result['noise_over_step']:.3f}, {result['seconds']:.0f} s", flush=True)
  text = report(FLAGS.out)
  with open(os.path.join(FLAGS.out, "report.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main(sys.argv)
