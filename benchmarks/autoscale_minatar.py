"""Autoscale against fixed env counts and a hand schedule on MinAtar (docs/autoscale.md).

Arms, every one the trainer itself (launch/run/trainer.py, one workdir per run) at an equal env-step budget, under the
recipe from N = 8 (minibatch size and learning rate fixed, minibatches ∝ N; constant learning rate):
  autoscale   starts at N = 8, `autoscale.max_num_envs=512` (factor 4, window 0.1: the defaults)
  fixed_8, fixed_64, fixed_512
  schedule    8 → 64 at a quarter of the budget → 512 at half (`scaling.schedule`)
Measures per run: the training return (the sampled policy's episodes, hundreds per interval: many distinct episodes)
over the last tenth of the budget and its mean over the whole budget (area under the curve / budget); the final
policy sampled over 256 evaluation episodes (launch/evaluate.py's episodes; the number of distinct (return, length)
pairs among them reported, a lower bound on the distinct episodes); the final deterministic evaluation (gymnax's
MinAtar has no sticky actions: 1-2 distinct episodes); wall time; where and why autoscale grew. Seeds pair the arms (seed i starts every arm from
the same params). Intervals: Student-t 95% of the mean over seeds, and of the paired difference to each arm.

  nice -n 19 python -m benchmarks.autoscale_minatar --out=docs/autoscale --shard=0/2 &   # both halves side by side
  nice -n 19 python -m benchmarks.autoscale_minatar --out=docs/autoscale --shard=1/2 &
  python -m benchmarks.autoscale_minatar --out=docs/autoscale --report_only     # table + figure from the results
  python -m benchmarks.autoscale_minatar --out=/tmp/autoscale_smoke --smoke      # minutes: the plumbing
Runs already in OUT/results_*.json are not run again, so an interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks import stats as stats_lib
from launch.configs import default
from launch.evaluate import run_episodes
from launch.report import metrics_file
from launch.run import trainer

flags.DEFINE_string("out", "docs/autoscale", "Directory for the results, the report and the figure.")
flags.DEFINE_list("games", ["Breakout-MinAtar", "SpaceInvaders-MinAtar"], "gymnax MinAtar games.")
flags.DEFINE_list("arms", ["autoscale", "fixed_8", "fixed_64", "fixed_512", "schedule"], "Arms to run.")
flags.DEFINE_integer("total_env_steps", 2**21, "Env-step budget per run (equal for every arm).")
flags.DEFINE_integer("seeds", 10, "Seeds per arm.")
flags.DEFINE_string("shard", "0/1", "i/k: run every k-th run from the i-th (processes side by side).")
flags.DEFINE_bool("smoke", False, "Tiny budget, one seed: checks the plumbing, measures nothing.")
flags.DEFINE_bool("report_only", False, "Only write the report and figure from OUT/results_*.json.")
FLAGS = flags.FLAGS

BASE_N, MAX_N, T, ROW_STEPS = 8, 512, 32, 32768  # ROW_STEPS: env steps per row of the fixed arms
SAMPLED_EPISODES = 256


def machine() -> str:
  with open("/proc/cpuinfo", encoding="utf-8") as f:
    model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
  return f"{model}, {os.cpu_count()} cores"


def make_config(game: str, arm: str, seed: int):
  config = default.get_config()
  config.update_from_flattened_dict({
      "env_name": f"gymnax:{game}", "seed": seed, "num_envs": BASE_N, "num_steps": T,
      "total_env_steps": FLAGS.total_env_steps, "learning_rate": 2.5e-3, "anneal_lr": False, "num_minibatches": 2,
      "scaling.rule": "recipe", "scaling.base_num_envs": BASE_N, "mesh.data": 1, "eval_episodes": 32,
      "plateau.share": 0.0})
  if arm.startswith("fixed_"):
    config.num_envs = int(arm.split("_")[1])
    config.log_every = max(1, ROW_STEPS // (config.num_envs * T))
  else:  # rows every 16 updates: 4,096 env steps at N = 8, 262,144 at N = 512
    config.log_every = 16
    if arm == "autoscale":
      config.autoscale.enabled, config.autoscale.max_num_envs = True, MAX_N
    else:
      b = FLAGS.total_env_steps
      config.scaling.schedule = f"0:{BASE_N},{b // 4}:64,{b // 2}:{MAX_N}"
  config.eval_every = config.log_every
  config.checkpoint_every = 10**6  # the start, the hand-overs and the end only
  return config


def sampled_evaluation(workdir: str, seed: int) -> dict:
  """The final checkpoint's policy, sampled, over SAMPLED_EPISODES episodes (the same start keys for every arm)."""
  import jax  # pylint: disable=import-outside-toplevel
  import envs  # pylint: disable=import-outside-toplevel
  from launch.checkpoint import saved_run  # pylint: disable=import-outside-toplevel
  run = saved_run.load(workdir)
  out = run_episodes(envs.make(run.config.env_name), run.policy.act, SAMPLED_EPISODES, jax.random.PRNGKey(1000 + seed),
                     deterministic=False)
  return {"sampled_eval": float(out["returns"].mean()),
          "sampled_distinct": stats_lib.distinct_episodes(out["returns"], out["lengths"])}


def summarize(rows: list[dict], budget: int) -> dict:
  returns = [(r["env_steps"], r["episode_return"]) for r in rows if r.get("episode_return") is not None]
  area, last = 0.0, 0
  for steps, value in returns:  # a row's training return covers the env steps since the row before
    area += value * (steps - last)
    last = steps
  tail = [v for s, v in returns if s > 0.9 * budget]
  evals = [(r["env_steps"], r["eval_return"]) for r in rows if r.get("eval_return") is not None]
  return {"final_return": float(np.mean(tail)) if tail else None, "mean_return": area / last if last else None,
          "final_eval": evals[-1][1] if evals else None, "env_steps": rows[-1]["env_steps"],
          "growths": [r["autoscale"] for r in rows if "autoscale" in r],
          "num_envs": [[r["env_steps"], r["num_envs"]] for r in rows],
          "return_curve": returns, "eval_curve": evals}


def run_all() -> None:
  index, count = (int(x) for x in FLAGS.shard.split("/"))
  path = os.path.join(FLAGS.out, f"results_{index}.json")
  results = {"runs": {}}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
  results.update(date=datetime.date.today().isoformat(), machine=machine(),
                 flags={"total_env_steps": FLAGS.total_env_steps, "seeds": FLAGS.seeds, "smoke": FLAGS.smoke})
  todo = [(g, a, s) for s in range(FLAGS.seeds) for g in FLAGS.games for a in FLAGS.arms]  # seed-major
  for game, arm, seed in todo[index::count]:
    name = f"{game}/{arm}/{seed}"
    if name in results["runs"]:
      continue
    workdir = os.path.join(tempfile.gettempdir(), "autoscale_minatar_runs", name.replace("/", "_"))  # removed after
    shutil.rmtree(workdir, ignore_errors=True)
    start, cpu = time.time(), time.process_time()
    trainer.train_and_evaluate(make_config(game, arm, seed), workdir)
    rows = metrics_file.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    results["runs"][name] = {**summarize(rows, FLAGS.total_env_steps), "seconds": time.time() - start,
                             "cpu_seconds": time.process_time() - cpu, **sampled_evaluation(workdir, seed)}
    shutil.rmtree(workdir, ignore_errors=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:  # after every run; a kill mid-write keeps the old file
      json.dump(results, f)
    os.replace(path + ".tmp", path)


def load() -> dict:
  runs, meta = {}, {}
  for path in sorted(glob.glob(os.path.join(FLAGS.out, "results_*.json"))):
    with open(path, encoding="utf-8") as f:
      part = json.load(f)
    runs.update(part["runs"])
    meta = {k: v for k, v in part.items() if k != "runs"}
  return {**meta, "runs": runs}


def t_cell(values: list[float]) -> str:
  values = [v for v in values if v is not None]
  if len(values) < 2:
    return "n/a" if not values else f"{values[0]:.2f} (1 seed)"
  return stats_lib.t_interval(values).cell()


def report(results: dict) -> str:
  lines = [f"{results.get('date')}, {results.get('machine')}; {results['flags']['total_env_steps']:,} env steps per "
           "run. Cells: mean over seeds [Student-t 95% interval of the mean] (seeds)." +
           (" SMOKE RUN: measures nothing." if results["flags"].get("smoke") else ""), ""]
  for game in FLAGS.games:
    runs = {a: {int(k.split("/")[2]): v for k, v in results["runs"].items() if k.startswith(f"{game}/{a}/")}
            for a in FLAGS.arms}
    lines += [f"## {game}", "", "| arm | training return, last tenth | training return, whole budget | final policy sampled, "
              f"{SAMPLED_EPISODES} episodes (distinct, min over seeds) | final evaluation (deterministic) | minutes "
              "per run |", "| --- | --- | --- | --- | --- | --- |"]
    for arm, by_seed in runs.items():
      r = list(by_seed.values())
      lines.append(f"| {arm} | {t_cell([x['final_return'] for x in r])} | {t_cell([x['mean_return'] for x in r])} "
                   f"| {t_cell([x.get('sampled_eval') for x in r])} ({min((x.get('sampled_distinct', 0) for x in r), default=0)}) "
                   f"| {t_cell([x['final_eval'] for x in r])} | "
                   f"{np.mean([x['seconds'] for x in r]) / 60 if r else float('nan'):.1f} |")
    lines += ["", "autoscale minus each arm, paired by seed (training return, last tenth; whole budget): mean "
              "difference [paired Student-t 95% interval] (pairs); p: exact sign-flip permutation test, and Holm's "
              "adjustment over the arms of this game and column:", "",
              "| arm | last tenth | p (Holm) | whole budget | p (Holm) |", "| --- | --- | --- | --- | --- |"]
    others = [arm for arm in FLAGS.arms if arm != "autoscale"]
    pairs = {}
    for arm in others:
      seeds = sorted(set(runs["autoscale"]) & set(runs[arm]))
      for metric in ("final_return", "mean_return"):
        pairs[arm, metric] = ([runs["autoscale"][s][metric] for s in seeds], [runs[arm][s][metric] for s in seeds])
    p_raw = {key: stats_lib.paired_permutation_test(*ab).p_value for key, ab in pairs.items()}
    p_holm = {}
    for metric in ("final_return", "mean_return"):
      p_holm.update({(arm, metric): p for arm, p in stats_lib.holm(
          {arm: p_raw[arm, metric] for arm in others if not np.isnan(p_raw[arm, metric])}).items()})
    for arm in others:
      cells = []
      for metric in ("final_return", "mean_return"):
        diff = stats_lib.paired_t_interval(*pairs[arm, metric])
        cells += [diff.cell() if diff.n > 1 else "n/a",
                  f"{p_raw[arm, metric]:.3g} ({p_holm.get((arm, metric), float('nan')):.3g})"]
      lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    growths = [(s, g) for s, x in sorted(runs["autoscale"].items()) for g in x["growths"]]
    lines += ["", "Autoscale's growths (seed: env step, from → to, KL per update, samples per update / noise "
              "scale):", ""]
    for seed, g in growths:
      noise = g.get("grad_noise_scale")
      lines.append(f"- seed {seed}: {g['env_steps']:,}, {g['from']} → {g['to']}, KL {g.get('kl_mean') or 0:.3g}, "
                   f"{g['samples_per_update']:,} / {noise or float('nan'):.3g}")
    lines.append("")
  return "\n".join(lines)


def plot(results: dict, path: str) -> None:
  """Training return against env steps per game: each arm's mean over seeds on a common grid (a run's value at a
  grid point: its last row at or before it), band = the Student-t 95% interval of the mean."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  budget = results["flags"]["total_env_steps"]
  grid = np.linspace(budget / 32, budget, 32)
  fig, axes = plt.subplots(1, len(FLAGS.games), figsize=(6.5 * len(FLAGS.games), 4.2), squeeze=False)
  for ax, game in zip(axes[0], FLAGS.games):
    for arm in FLAGS.arms:
      curves = []
      for k, run in results["runs"].items():
        if k.startswith(f"{game}/{arm}/") and run["return_curve"]:
          steps, values = np.array(run["return_curve"], dtype=float).T
          curves.append([values[max(0, np.searchsorted(steps, g, side="right") - 1)] for g in grid])
      if not curves:
        continue
      curves = np.array(curves)
      mean = curves.mean(axis=0)
      line, = ax.plot(grid, mean, label=f"{arm} ({len(curves)} seeds)")
      if len(curves) > 1:
        band = stats_lib.t_band(curves)
        ax.fill_between(grid, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_title(game, fontsize=10)
    ax.set_xlabel("env steps")
    ax.set_ylabel("training return (sampled policy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(_):
  if FLAGS.smoke:
    FLAGS.total_env_steps, FLAGS.seeds = 2**14, 1
  os.makedirs(FLAGS.out, exist_ok=True)
  if not FLAGS.report_only:
    run_all()
  results = load()
  text = report(results)
  plot(results, os.path.join(FLAGS.out, "autoscale_minatar.png"))
  with open(os.path.join(FLAGS.out, "results.md"), "w", encoding="utf-8") as f:
    f.write("# Autoscale on MinAtar\n\n" + text + "\n![training return vs env steps](autoscale_minatar.png)\n")
  print(text)


if __name__ == "__main__":
  app.run(main)
