"""The step-size test from a plateau (experiment 2): the stagnation study's plateau checkpoint (its base arm's final
TrainState, all seeds) continued for `--continue_steps` env steps in four ways, each with every seed in one program:

  unchanged  the same config: the exact continuation of the saved state (envs, key, optimizer state);
  lr_small   the learning rate divided by `--lr_divisor` (the same optimizer state: the rate is a constant of it);
  ewma       PPO-EWMA with centre of mass `--continue_ewma_com`, its EWMA started at the plateau params;
  grown      `--growth` x N under the recipe: the plateau's learner state (params, optimizer state, update count)
             with freshly reset envs at the larger N (the learner state is what carries the plateau).

Evaluated like the study (same grid spacing and evaluation keys, env steps counted from the plateau). One JSON per
(game, variant) under OUT, skipped when present; the report pairs every variant with `unchanged` by seed.

  nice -n 19 python -m benchmarks.plateau_continue --continue_study=docs/study --out=docs/study/continue
  python -m benchmarks.plateau_continue --continue_study=docs/study --out=docs/study/continue --report_only
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import stagnation_study as study
from launch.config import resolve as config_lib
from launch.run import programs
from learner import ewma as ewma_lib

FLAGS = study.FLAGS
_define = study._define  # pylint: disable=protected-access
_define("string")("continue_study", "docs/study", "The stagnation study's directory (its plateau checkpoint).")
_define("list")("continue_games", ["Breakout-MinAtar"], "Games whose plateau is continued.")
_define("list")("variants", ["unchanged", "lr_small", "ewma", "grown"], "Continuations run.")
_define("integer")("continue_steps", 2**21, "Env steps of every continuation.")
_define("float")("lr_divisor", 4.0, "lr_small: the learning rate divided by this.")
_define("float")("continue_ewma_com", 64.0, "ewma: centre of mass in optimizer steps.")
_define("integer")("growth", 8, "grown: N multiplied by this (recipe).")
VARIANTS = ("unchanged", "lr_small", "ewma", "grown")


def restore(game: str):
  config = study.make_config(study.base_arm(game))
  progs = programs.build(config, resolved=config_lib.resolve(config, num_devices=1), eval_episodes=0,
                         num_seeds=FLAGS.seeds, compile_update=False)
  return study.load_plateau(FLAGS.continue_study, game, progs.abstract_state)


def run_variant(plateau, game: str, variant: str) -> dict:
  base = study.base_arm(game)
  arm = dataclasses.replace(
      base, budget=FLAGS.continue_steps, experiment="stepsize",
      learning_rate=base.learning_rate / (FLAGS.lr_divisor if variant == "lr_small" else 1.0),
      ewma_com=FLAGS.continue_ewma_com if variant == "ewma" else 0.0,
      num_envs=base.num_envs * (FLAGS.growth if variant == "grown" else 1))
  config = study.make_config(arm)
  resolved = config_lib.resolve(config, num_devices=1)
  progs = programs.build(config, resolved=resolved, num_seeds=FLAGS.seeds,
                         updates_per_call=FLAGS.eval_spacing // resolved.batch_size)
  if variant == "grown":
    fresh = progs.init(jax.random.split(jax.random.PRNGKey(30_000), FLAGS.seeds))
    state = fresh.replace(params=plateau.params, opt_state=plateau.opt_state, update=plateau.update)
  elif variant == "ewma":
    state = plateau.replace(proximal=jax.vmap(ewma_lib.init)(plateau.params))
  else:
    state = plateau
  # A copy: the update donates its input, and the plateau is read again by the next variant.
  state = jax.device_put(jax.tree.map(jnp.copy, state), progs.state_shardings)
  name = f"{game.split('-')[0].lower()}_{variant}"
  _, points, run_time = study.train_and_evaluate(progs, state, FLAGS.continue_steps, name)
  return {"game": game, "variant": variant, "name": name, "num_envs": arm.num_envs,
          "learning_rate": resolved.learning_rate, "ewma_com": arm.ewma_com, "seeds": FLAGS.seeds,
          "compile_s": progs.compile_time, "run_s": run_time.wall_s, "run_cpu_s": run_time.cpu_s,
          "date": datetime.date.today().isoformat(),
          "machine": study.machine(), "smoke": FLAGS.smoke, "points": points}


def report(out: str) -> str:
  runs = {}
  for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    with open(path, encoding="utf-8") as f:
      run = json.load(f)
    runs[run["game"], run["variant"]] = run
  if not runs:
    return "no results yet\n"
  lines = ["Env steps counted from the plateau. Cells: mean [Student-t 95% interval of the mean] over seeds; differences paired by seed.",
           "", "| game | variant | N | lr | EWMA com | eval at plateau | eval at +half | eval at +end | "
           "+end minus unchanged | compile s | run s |", "| " + " | ".join(["---"] * 11) + " |"]
  for (game, variant), run in sorted(runs.items()):
    _, r = study.evals(run)
    base = runs.get((game, "unchanged"))
    diff = (r[-1] - study.evals(base)[1][-1]) if base and variant != "unchanged" else None
    lines.append(f"| {game} | {variant} | {run['num_envs']} | {run['learning_rate']:g} | {run['ewma_com'] or '-'} | "
                 f"{study.cell(r[0])} | {study.cell(r[len(r) // 2])} | {study.cell(r[-1])} | {study.cell(diff)} | "
                 f"{run['compile_s']:.0f} | {run['run_s']:.0f} |")
  for game in sorted({g for g, _ in runs}):
    chosen = {f"{v}": run for (g, v), run in runs.items() if g == game}
    png = f"{game.split('-')[0].lower()}_continue.png"
    _plot(chosen, game, os.path.join(out, png))
    lines += ["", f"![{game} continued from the plateau]({png})"]
  return "\n".join(lines) + "\n"


def _plot(chosen: dict, game: str, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for name, run in chosen.items():
    s, r = study.evals(run)
    band = study.t_band(r.T)
    line, = ax.plot(s, r.mean(1), label=f"{name} ({r.shape[1]} seeds)")
    ax.fill_between(s, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.15, linewidth=0)
  ax.set_xlabel("env steps after the plateau checkpoint")
  ax.set_ylabel("evaluation return (deterministic)")
  ax.set_title(f"{game}: continued from the plateau, band = Student-t 95% interval of the mean", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  FLAGS(argv)
  if FLAGS.smoke:  # the study's smoke sizes (its plateau checkpoint), a few updates per variant
    FLAGS.num_envs, FLAGS.seeds, FLAGS.total_env_steps, FLAGS.eval_spacing = ["4", "8"], 2, 512, 256
    FLAGS.eval_episodes, FLAGS.continue_steps, FLAGS.growth = 2, 512, 2
  os.makedirs(FLAGS.out, exist_ok=True)
  if not FLAGS.report_only:
    for game in FLAGS.continue_games:
      plateau = None
      for variant in FLAGS.variants:
        path = os.path.join(FLAGS.out, f"{game.split('-')[0].lower()}_{variant}.json")
        if os.path.exists(path):
          continue
        plateau = plateau if plateau is not None else restore(game)
        result = run_variant(plateau, game, variant)
        with open(path, "w", encoding="utf-8") as f:
          json.dump(result, f)
  text = report(FLAGS.out)
  with open(os.path.join(FLAGS.out, "report.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main(sys.argv)
