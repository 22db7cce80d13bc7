"""Growing a stalled run: a MinAtar game at a small N, (a) continued unchanged, (b) grown to 16x N mid-run by
`scaling.schedule` (recipe), (c) at N with outer-step control; evaluation returns with Student-t confidence intervals
over seeds.

Every arm is the trainer itself (launch/run/trainer.py `train_and_evaluate`, one workdir per arm and seed), at an equal
env-step budget; the schedule arm switches at `--grow_at` of the budget. All arms are evaluated at the same env steps
(`--eval_points` evenly spaced): the grown arm's evaluation interval in updates is 16x shorter, so that its grown
segment is evaluated as often per env step; its extra evaluations before the growth are not used, so that final and
best returns are taken over the same points for every arm. Results: OUT/results.json (each run's summary and
evaluation curve), OUT/results.md (a table: mean, Student-t 95% interval of the mean and min-max over seeds) and
OUT/elastic_minatar.png (the curves).

  nice -n 10 python -m benchmarks.elastic_minatar --out=docs/elastic > /tmp/elastic.log 2>&1   # the benchmark
  python -m benchmarks.elastic_minatar --out=/tmp/elastic_smoke --smoke                       # minutes: plumbing
  python -m benchmarks.elastic_minatar --out=docs/elastic --report_only      # table + figure from results.json
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import time

import numpy as np
from absl import app, flags

from launch.report import metrics_file
from launch.run import trainer
from launch.configs import default
from benchmarks.stats import t_band, t_interval


def define_flags() -> None:
  """This benchmark's flags, defined when it runs: importing it (its statistics) defines none."""
  flags.DEFINE_string("out", "docs/elastic", "Directory for results.json / results.md / the figure and the workdirs.")
  flags.DEFINE_string("env_name", "gymnax:Breakout-MinAtar", "Environment (a MinAtar game).")
  flags.DEFINE_integer("num_envs", 8, "The small N the run starts at (and scaling.base_num_envs).")
  flags.DEFINE_integer("growth", 16, "The schedule arm grows to growth x num_envs.")
  flags.DEFINE_float("grow_at", 0.5, "Share of the budget after which the schedule arm grows.")
  flags.DEFINE_integer("total_env_steps", 2**22, "Env-step budget per run (equal for every arm).")
  flags.DEFINE_integer("num_steps", 32, "Rollout length T.")
  flags.DEFINE_integer("seeds", 5, "Seeds per arm.")
  flags.DEFINE_float("learning_rate", 2.5e-3, "Base learning rate (constant: an anneal would hide the plateau).")
  flags.DEFINE_string("outer_mode", "samples_per_kl", "Outer-step control of arm (c): adaptive_kl or samples_per_kl.")
  flags.DEFINE_float("samples_per_kl", 0.0, "samples_per_kl target; 0 = the base batch / outer_kl_target.")
  flags.DEFINE_float("outer_kl_target", 0.01, "adaptive_kl target KL per update.")
  flags.DEFINE_integer("eval_points", 64, "Evaluations per run, evenly spaced in env steps (the same for every arm).")
  flags.DEFINE_integer("eval_episodes", 32, "Episodes per evaluation (deterministic policy).")
  flags.DEFINE_bool("smoke", False, "A few updates per arm and one seed: checks the plumbing, measures nothing.")
  flags.DEFINE_bool("keep_workdirs", False, "Keep each run's workdir under OUT/runs (else removed after reading).")
  flags.DEFINE_bool("report_only", False, "Only rewrite results.md and the figure from OUT/results.json.")


FLAGS = flags.FLAGS

ARMS = ("unchanged", "grown", "outer_step")
RECORDED = ("env_name", "num_envs", "growth", "grow_at", "total_env_steps", "num_steps", "seeds", "learning_rate",
            "outer_mode", "samples_per_kl", "outer_kl_target", "eval_points", "eval_episodes", "smoke")


def eval_spacing() -> int:
  """Env steps between evaluations; a whole number of updates at N and at growth x N, the growth on the grid."""
  spacing = FLAGS.total_env_steps // FLAGS.eval_points
  big_batch = FLAGS.growth * FLAGS.num_envs * FLAGS.num_steps
  if spacing % big_batch or int(FLAGS.grow_at * FLAGS.total_env_steps) % spacing:
    raise app.UsageError(f"total_env_steps / eval_points = {spacing} must be a multiple of the grown batch "
                         f"{big_batch}, and grow_at x total_env_steps a multiple of it")
  return spacing


def make_config(arm: str, seed: int):
  config = default.get_config()
  config.env_name = FLAGS.env_name
  config.seed = seed
  config.num_envs = FLAGS.num_envs
  config.num_steps = FLAGS.num_steps
  config.total_env_steps = FLAGS.total_env_steps
  config.learning_rate = FLAGS.learning_rate
  config.anneal_lr = False
  config.num_minibatches = 2
  config.scaling.rule = "recipe"
  config.scaling.base_num_envs = FLAGS.num_envs
  config.mesh.data = 1
  config.eval_episodes = FLAGS.eval_episodes
  # The grown segment's updates are growth x larger: evaluating every `spacing` env steps there takes a growth x
  # shorter interval in updates (`update` keeps counting over segments); it also applies before the growth.
  batch = FLAGS.num_envs * FLAGS.num_steps * (FLAGS.growth if arm == "grown" else 1)
  config.eval_every = config.log_every = eval_spacing() // batch
  updates = FLAGS.total_env_steps // (FLAGS.num_envs * FLAGS.num_steps)
  config.checkpoint_every = max(1, updates // 4)
  if arm == "grown":
    grow_at = int(FLAGS.grow_at * FLAGS.total_env_steps)
    config.scaling.schedule = f"0:{FLAGS.num_envs},{grow_at}:{FLAGS.growth * FLAGS.num_envs}"
  if arm == "outer_step":
    config.outer_step.mode = FLAGS.outer_mode
    config.outer_step.kl_target = FLAGS.outer_kl_target
    config.outer_step.samples_per_kl = FLAGS.samples_per_kl or (
        FLAGS.num_envs * FLAGS.num_steps / FLAGS.outer_kl_target)
  return config


def summarize(rows: list[dict], spacing: int, total_env_steps: int) -> dict:
  """One run: its evaluation curve on the common grid, final / best / last-quarter mean, what the control did."""
  on_grid = [r for r in rows if r.get("eval_return") is not None and r["env_steps"] % spacing == 0]
  curve = [[r["env_steps"], r["eval_return"]] for r in on_grid]
  returns = [v for _, v in curve]
  last_quarter = [v for s, v in curve if s > 0.75 * total_env_steps]
  scales = [r["lr_scale"] for r in on_grid if "lr_scale" in r]
  return {"final_eval_return": returns[-1] if returns else None, "best_eval_return": max(returns, default=None),
          "last_quarter_eval_return": float(np.mean(last_quarter)) if last_quarter else None,
          "env_steps": rows[-1]["env_steps"] if rows else 0, "updates": rows[-1]["update"] if rows else 0,
          "plateau": next((r["plateau"] for r in rows if "plateau" in r), None),
          "lr_scale": [[r["env_steps"], r["lr_scale"]] for r in on_grid if "lr_scale" in r] if scales else None,
          "kl_mean_last": on_grid[-1].get("kl_mean") if on_grid else None, "curve": curve}


def cell(values: list) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "n/a"
  interval = t_interval(values)
  return f"{interval.mean:.2f} [{interval.low:.2f}, {interval.high:.2f}] ({min(values):.2f} to {max(values):.2f})"


def machine() -> str:
  model = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run_all() -> dict:
  spacing = eval_spacing()
  results = {"flags": {k: FLAGS[k].value for k in RECORDED}, "date": datetime.date.today().isoformat(),
             "machine": machine(), "eval_spacing": spacing, "runs": {}}
  start = time.time()
  for seed in range(FLAGS.seeds):  # seed-major: a run cut short still has every arm at the seeds done
    for arm in ARMS:
      workdir = os.path.join(FLAGS.out, "runs", f"{arm}_{seed}")
      shutil.rmtree(workdir, ignore_errors=True)
      run_start = time.time()
      trainer.train_and_evaluate(make_config(arm, seed), workdir)
      rows = metrics_file.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
      results["runs"][f"{arm}/{seed}"] = {**summarize(rows, spacing, FLAGS.total_env_steps), "seconds": time.time() - run_start}
      if not FLAGS.keep_workdirs:
        shutil.rmtree(workdir, ignore_errors=True)
      results["seconds"] = time.time() - start
      with open(os.path.join(FLAGS.out, "results.json"), "w", encoding="utf-8") as f:  # after every run
        json.dump(results, f)
  if not FLAGS.keep_workdirs:
    shutil.rmtree(os.path.join(FLAGS.out, "runs"), ignore_errors=True)
  return results


def arm_runs(results: dict, arm: str) -> list[dict]:
  return [v for k, v in results["runs"].items() if k.split("/")[0] == arm]


def plot(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  flags_ = results["flags"]
  fig, ax = plt.subplots(figsize=(7.5, 4.2))
  labels = {"unchanged": f"unchanged (N={flags_['num_envs']})",
            "grown": f"grown to N={flags_['growth'] * flags_['num_envs']} (schedule, recipe)",
            "outer_step": f"outer-step control ({flags_['outer_mode']}, N={flags_['num_envs']})"}
  for arm in ARMS:
    runs = arm_runs(results, arm)
    if not runs:
      continue
    steps = [s for s, _ in runs[0]["curve"]]
    curves = np.array([[v for _, v in r["curve"]] for r in runs if len(r["curve"]) == len(steps)])
    mean = curves.mean(axis=0)
    band = t_band(curves)
    line, = ax.plot(steps, mean, label=f"{labels[arm]}, {len(curves)} seeds")
    ax.fill_between(steps, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.2, linewidth=0)
  ax.axvline(flags_["grow_at"] * flags_["total_env_steps"], color="grey", linestyle="--", linewidth=1)
  ax.text(flags_["grow_at"] * flags_["total_env_steps"], ax.get_ylim()[1], " growth", va="top", color="grey")
  ax.set_xlabel("env steps")
  ax.set_ylabel(f"evaluation return ({flags_['eval_episodes']} episodes, deterministic)")
  ax.set_title(f"{flags_['env_name']}: mean over seeds, band = Student-t 95% interval of the mean", fontsize=9)
  ax.legend(fontsize=8, loc="upper left")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(results: dict) -> str:
  flags_ = results["flags"]
  lines = [f"# Growing a stalled run: {flags_['env_name']}", "",
           f"{results['date']}, {results['machine']}; {flags_['total_env_steps']:,} env steps per run, N = "
           f"{flags_['num_envs']}, T = {flags_['num_steps']}, growth x{flags_['growth']} at "
           f"{flags_['grow_at'] * flags_['total_env_steps']:,.0f} env steps, {flags_['seeds']} seeds, "
           f"{flags_['eval_points']} evaluations of {flags_['eval_episodes']} episodes per run; "
           f"{results.get('seconds', 0) / 60:.1f} min in all"
           + (" — SMOKE RUN, measures nothing" if flags_["smoke"] else ""), "",
           "Cells: mean over seeds [Student-t 95% interval of the mean] (min to max over seeds).", "",
           "| arm | final eval return | best eval return | mean eval return, last quarter | minutes per run |",
           "| --- | --- | --- | --- | --- |"]
  for arm in ARMS:
    runs = arm_runs(results, arm)
    lines.append(f"| {arm} | {cell([r['final_eval_return'] for r in runs])} | "
                 f"{cell([r['best_eval_return'] for r in runs])} | "
                 f"{cell([r['last_quarter_eval_return'] for r in runs])} | "
                 f"{np.mean([r['seconds'] for r in runs]) / 60:.1f} |")
  # Paired by seed: the same seed gives the same initial params and, for the grown arm, the same run up to the
  # growth, so the difference per seed removes the seeds' spread that the arms share.
  lines += ["", "Difference to `unchanged`, paired by seed: mean [paired Student-t 95% interval] (min to max).", "",
            "| arm - unchanged | final eval return | best eval return | mean eval return, last quarter |",
            "| --- | --- | --- | --- |"]
  base = {k.split("/")[1]: v for k, v in results["runs"].items() if k.startswith("unchanged/")}
  for arm in ARMS[1:]:
    pairs = [(v, base[k.split("/")[1]]) for k, v in results["runs"].items()
             if k.startswith(arm + "/") and k.split("/")[1] in base]
    cells = [cell([None if a[m] is None or b[m] is None else a[m] - b[m] for a, b in pairs])
             for m in ("final_eval_return", "best_eval_return", "last_quarter_eval_return")]
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(_):
  if FLAGS.smoke:
    # One seed, 16 updates at N, then (grow_at = 0.5) one at the grown size; 2 evaluations.
    FLAGS.total_env_steps, FLAGS.seeds = FLAGS.num_envs * FLAGS.num_steps * FLAGS.growth * 2, 1
    FLAGS.eval_points, FLAGS.eval_episodes = 2, 4
  os.makedirs(FLAGS.out, exist_ok=True)
  if FLAGS.report_only:
    with open(os.path.join(FLAGS.out, "results.json"), encoding="utf-8") as f:
      results = json.load(f)
  else:
    results = run_all()
  plot(results, os.path.join(FLAGS.out, "elastic_minatar.png"))
  text = report(results)
  with open(os.path.join(FLAGS.out, "results.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n![evaluation return vs env steps](elastic_minatar.png)\n")
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
