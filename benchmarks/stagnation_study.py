"""The stagnation study on MinAtar: plateau and scaling recipe (experiment 1) and baselines (experiment 4).

Every arm is one config (game, scaling rule, N, learning rate, PPO-EWMA, env-step budget) run for `--seeds` seeds
in ONE program: launch/run/programs.py's seed axis (the update and evaluation vmapped over seeds) with the updates
between two evaluation points scanned per call, so at small N five seeds cost about one run. Every arm is
evaluated (deterministic policy, `--eval_episodes` parallel episodes per seed) at the same env-step points: every
`--eval_spacing` env steps, a multiple of the largest batch. Each arm writes OUT/<arm>.json when finished and is
skipped when that file exists, so the study runs in resumable pieces; `--report_only` rewrites OUT/report.md and
the figures from the JSONs. The base arm (smallest N) also saves its final state with orbax under
OUT/plateau/<game>: the plateau checkpoint the step-size and step-vs-noise experiments start from.

  nice -n 19 python -m benchmarks.stagnation_study --out=docs/study > /tmp/study.log 2>&1   # all arms (resumes)
  nice -n 19 python -m benchmarks.stagnation_study --out=docs/study --only=breakout_recipe_N8  # one arm
  python -m benchmarks.stagnation_study --out=docs/study --report_only                    # tables + figures
  python -m benchmarks.stagnation_study --out=/tmp/study_smoke --smoke                     # plumbing, ~20 s
"""
from __future__ import annotations

import dataclasses
import functools
import datetime
import glob
import json
import os
import platform
import sys
import time

import jax
import numpy as np
from absl import flags

from launch.config import resolve as config_lib
from launch.run import programs
from launch.configs import default
from benchmarks.stats import t_band, t_interval

# Own flag values, not absl's global ones: the benchmarks' flags share names (out, seeds, ...), and a test process
# imports several of them.
FLAGS = flags.FlagValues()


def _define(kind: str):
  return functools.partial(getattr(flags, f"DEFINE_{kind}"), flag_values=FLAGS)


_define("string")("out", "docs/study", "Directory for one JSON per arm, the report and the figures.")
_define("list")("games", ["Breakout-MinAtar", "SpaceInvaders-MinAtar"], "gymnax MinAtar games.")
_define("list")("num_envs", ["8", "64", "512"], "N values (the first is scaling.base_num_envs): spans 64x.")
_define("list")("rules", ["recipe", "fixed_minibatches", "sqrt_lr"], "Scaling rules of experiment 1.")
_define("integer")("total_env_steps", 2**21, "The equal env-step budget of every arm.")
_define("integer")("long_factor", 4, "The long_rules at the largest N also run this many times the budget.")
_define("list")("long_rules", ["fixed_minibatches"], "Rules also run for long_factor x the budget at the largest N.")
_define("list")("lr_sweep", ["1.25e-3", "5e-3"], "Experiment 4: other learning rates at the base N.")
_define("list")("ewma_com", ["3.5", "16"], "Experiment 4: PPO-EWMA centres of mass at the base N; the first "
                  "= (epochs x minibatches - 1) / 2, the control.")
_define("integer")("num_steps", 32, "Rollout length T.")
_define("float")("learning_rate", 2.5e-3, "Base learning rate (constant: an anneal would hide or cause a plateau).")
_define("integer")("base_num_minibatches", 2, "num_minibatches at the base N.")
_define("integer")("seeds", 5, "Seeds per arm, all in one program.")
_define("integer")("eval_spacing", 2**17, "Env steps between evaluations (a multiple of the largest batch).")
_define("integer")("eval_episodes", 32, "Evaluation episodes per seed and point (deterministic policy).")
_define("list")("only", [], "Run only these arms (names as in the JSON files); default all.")
_define("bool")("smoke", False, "Tiny budgets, 2 seeds, 2 arms: checks the plumbing, measures nothing.")
_define("bool")("report_only", False, "Only rewrite the report and figures from OUT/*.json.")


@dataclasses.dataclass(frozen=True)
class Arm:
  game: str
  rule: str
  num_envs: int
  budget: int
  learning_rate: float
  ewma_com: float = 0.0  # 0: PPO-EWMA off
  experiment: str = "plateau"

  @property
  def name(self) -> str:
    game = self.game.split("-")[0].lower()
    name = f"{game}_{self.rule}_N{self.num_envs}"
    if self.learning_rate != FLAGS.learning_rate:
      name += f"_lr{self.learning_rate:g}"
    if self.ewma_com:
      name += f"_ewma{self.ewma_com:g}"
    if self.budget != FLAGS.total_env_steps:
      name += f"_x{self.budget // FLAGS.total_env_steps}"
    return name


def arms() -> list[Arm]:
  ns, lr, e = [int(n) for n in FLAGS.num_envs], FLAGS.learning_rate, FLAGS.total_env_steps
  out = []
  for game in FLAGS.games:
    out.append(Arm(game, "recipe", ns[0], e, lr))  # the base: every rule is this run at the base N
    out += [Arm(game, rule, n, e, lr) for rule in FLAGS.rules for n in ns[1:]]
    out += [Arm(game, rule, ns[-1], e * FLAGS.long_factor, lr) for rule in FLAGS.long_rules
            if FLAGS.long_factor > 1]
    out += [Arm(game, "recipe", ns[0], e, float(x), experiment="baselines") for x in FLAGS.lr_sweep]
    out += [Arm(game, "recipe", ns[0], e, lr, float(c), experiment="baselines") for c in FLAGS.ewma_com]
  return out


def make_config(arm: Arm):
  config = default.get_config()
  config.env_name = f"gymnax:{arm.game}"
  config.num_envs = arm.num_envs
  config.num_steps = FLAGS.num_steps
  config.total_env_steps = arm.budget
  config.learning_rate = arm.learning_rate
  config.anneal_lr = False
  config.num_minibatches = FLAGS.base_num_minibatches
  config.scaling.rule = arm.rule
  config.scaling.base_num_envs = int(FLAGS.num_envs[0])
  config.ewma.enabled = bool(arm.ewma_com)
  if arm.ewma_com:
    config.ewma.center_of_mass = arm.ewma_com
  config.eval_episodes = FLAGS.eval_episodes
  config.mesh.data = 1
  return config


def run_arm(arm: Arm) -> dict:
  """All seeds of `arm` in one program; evaluation every FLAGS.eval_spacing env steps (and at 0)."""
  config = make_config(arm)
  resolved = config_lib.resolve(config, num_devices=1)
  batch = resolved.batch_size
  if FLAGS.eval_spacing % batch or arm.budget % FLAGS.eval_spacing:
    raise ValueError(f"{arm.name}: eval_spacing {FLAGS.eval_spacing} must be a multiple of the batch {batch} "
                     f"and divide the budget {arm.budget}")
  progs = programs.build(config, resolved=resolved, num_seeds=FLAGS.seeds,
                         updates_per_call=FLAGS.eval_spacing // batch)
  keys = jax.random.split(jax.random.PRNGKey(config.seed), FLAGS.seeds)
  state, points, run_time = train_and_evaluate(progs, progs.init(keys), arm.budget, arm.name)
  if arm == base_arm(arm.game):
    save_plateau(state, arm)
  return {"arm": dataclasses.asdict(arm), "name": arm.name, "seeds": FLAGS.seeds, "batch_size": batch,
          "minibatch_size": resolved.minibatch_size, "num_minibatches": resolved.ppo.num_minibatches,
          "learning_rate_resolved": resolved.learning_rate, "num_updates": resolved.num_updates,
          "optimizer_steps": resolved.num_updates * resolved.ppo.num_minibatches * config.update_epochs,
          "eval_episodes": FLAGS.eval_episodes, "compile_s": progs.compile_time, "run_s": run_time.wall_s,
          "run_cpu_s": run_time.cpu_s,
          "date": datetime.date.today().isoformat(), "machine": machine(), "smoke": FLAGS.smoke, "points": points}


def train_and_evaluate(progs, state, budget: int, name: str):
  """Runs `progs.update` (FLAGS.eval_spacing env steps per call) over `budget` env steps from `state`, evaluating at
  0 and after every call; returns the final state, the points and the time taken (without the compile)."""
  eval_keys = jax.random.split(jax.random.PRNGKey(10_000), FLAGS.seeds)  # the same for every arm

  def evaluate(state, point):
    k = jax.vmap(jax.random.fold_in, (0, None))(eval_keys, point)
    return np.asarray(jax.device_get(progs.evaluate_state(state, k).mean_return)).tolist()

  points = [{"env_steps": 0, "eval_return": evaluate(state, 0)}]
  t0, cpu0 = time.time(), time.process_time()
  for i in range(budget // FLAGS.eval_spacing):
    state, m = progs.update(state)
    m = jax.device_get(m)  # leaves [updates per call, seeds]
    point = {"env_steps": (i + 1) * FLAGS.eval_spacing, "eval_return": evaluate(state, i + 1),
             "train_return": (m.episode_return_sum.sum(0) / np.maximum(m.episode_count.sum(0), 1)).tolist()}
    for k in ("entropy", "clip_fraction"):
      point[k] = getattr(m, k).mean(0).tolist()
    for k in ("kl_mean", "grad_sq_norm", "grad_trace_cov", "grad_sq_norm_policy", "grad_trace_cov_policy"):
      point[k] = np.nanmean(getattr(m.diagnostics, k), 0).tolist()
    points.append(point)
    print(f"  {name} {point['env_steps']:>10,} eval {np.round(point['eval_return'], 1).tolist()} "
          f"({time.time() - t0:.0f} s)", flush=True)
  return state, points, Timing(time.time() - t0, time.process_time() - cpu0)


@dataclasses.dataclass(frozen=True)
class Timing:
  wall_s: float
  cpu_s: float  # this process's CPU seconds, all threads: the compute, whatever else ran beside it (or paused it)


def base_arm(game: str) -> Arm:
  return Arm(game, "recipe", int(FLAGS.num_envs[0]), FLAGS.total_env_steps, FLAGS.learning_rate)


def save_plateau(state, arm: Arm) -> None:
  """The base arm's final full TrainState (all seeds), with orbax: where experiments 2 and 3 start."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.path.join(FLAGS.out, "plateau", arm.game))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, state, force=True)


def load_plateau(study_dir: str, game: str, abstract_state):
  """The plateau TrainState (all seeds) that `game`'s base arm saved under `study_dir`, placed per `abstract_state`.

  Read leaf by leaf through the target's key paths, so a checkpoint written before the TrainState gained a field
  that holds no arrays when off (e.g. `runner.level_buffer`, None without SFL) still loads; every array of the
  target must be in the checkpoint, with its shape and dtype."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.path.join(study_dir, "plateau", game))
  with ocp.StandardCheckpointer() as ckpt:
    raw = ckpt.restore(path)

  def leaf(key_path, target):
    node = raw
    for key in key_path:
      name = getattr(key, "name", getattr(key, "key", getattr(key, "idx", None)))
      node = node[name] if isinstance(node, (list, tuple)) or name in node else node[str(name)]
    value = np.asarray(node)
    if value.shape != target.shape or value.dtype != target.dtype:
      raise ValueError(f"{path}: {jax.tree_util.keystr(key_path)} is {value.dtype}{list(value.shape)}, "
                       f"expected {target.dtype}{list(target.shape)}")
    return jax.device_put(value, target.sharding)

  return jax.tree_util.tree_map_with_path(leaf, abstract_state)


# ---- report ----


def machine() -> str:
  model = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def load(out: str) -> dict[str, dict]:
  runs = {}
  for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    with open(path, encoding="utf-8") as f:
      run = json.load(f)
    runs[run["name"]] = run
  return runs


def evals(run: dict) -> tuple[np.ndarray, np.ndarray]:
  """env steps [P], eval returns [P, seeds]."""
  return (np.array([p["env_steps"] for p in run["points"]]),
          np.array([p["eval_return"] for p in run["points"]], dtype=float))


def at_steps(run: dict, steps: int) -> np.ndarray | None:
  s, r = evals(run)
  hit = np.nonzero(s == steps)[0]
  return r[hit[0]] if len(hit) else None


def last_quarter(run: dict, budget: int) -> np.ndarray:
  s, r = evals(run)
  return r[(s > 0.75 * budget) & (s <= budget)].mean(0)


def cell(values) -> str:
  if values is None:
    return "n/a"
  interval = t_interval(np.asarray(values, float))
  return f"{interval.mean:.2f} [{interval.low:.2f}, {interval.high:.2f}]"


def late_b_simple(run: dict, key: str = "") -> float:
  half = len(run["points"]) // 2
  pts = run["points"][1:][half:] or run["points"][1:]
  return float(np.nanmean([p["grad_trace_cov" + key] for p in pts]) / np.nanmean([p["grad_sq_norm" + key]
                                                                                    for p in pts]))


def _run_time(run: dict) -> str:
  """Wall seconds, and the process's CPU seconds where recorded (the wall time also counts what ran beside it)."""
  cpu = run.get("run_cpu_s")
  return f"{_run_wall(run):.0f}" + (f" ({cpu:.0f} CPU)" if cpu is not None else "")


def _run_wall(run: dict) -> float:
  """Wall seconds of the run without `paused_s`, the time an arm's process was stopped (SIGSTOP) while something
  else was measured on the machine (noted in its JSON)."""
  return run["run_s"] - run.get("paused_s", 0.0)


def table(runs: dict[str, dict]) -> list[str]:
  e = FLAGS.total_env_steps
  lines = ["| arm | experiment | rule | N | lr | EWMA com | budget | optimizer steps | eval at budget/2 | "
           "eval at budget | eval at long budget | last quarter of budget | KL/update (2nd half) | B_simple policy | "
           "compile s | run s (CPU s) |", "| " + " | ".join(["---"] * 16) + " |"]
  for name, run in runs.items():
    a = run["arm"]
    kl = np.mean([np.mean(p["kl_mean"]) for p in run["points"][1 + len(run["points"]) // 2:]])
    lines.append(
        f"| {name} | {a['experiment']} | {a['rule']} | {a['num_envs']} | {run['learning_rate_resolved']:g} | "
        f"{a['ewma_com'] or '-'} | {a['budget']:,} | {run['optimizer_steps']:,} | {cell(at_steps(run, e // 2))} | "
        f"{cell(at_steps(run, e))} | {cell(at_steps(run, e * FLAGS.long_factor) if a['budget'] > e else None)} | "
        f"{cell(last_quarter(run, e))} | {kl:.2e} | {late_b_simple(run, '_policy'):.3g} | "
        f"{run['compile_s']:.0f} | {_run_time(run)} |")
  return lines


def plot_curves(runs: dict[str, dict], game: str, experiment: str, path: str, log_x: bool = False) -> bool:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  chosen = {n: r for n, r in runs.items() if r["arm"]["game"] == game and (
      r["arm"]["experiment"] == experiment or (experiment == "baselines" and n == base_arm(game).name))}
  if not chosen:
    return False
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for name, run in chosen.items():
    s, r = evals(run)
    band = t_band(r.T)
    line, = ax.plot(s, r.mean(1), label=f"{name} ({r.shape[1]} seeds)")
    ax.fill_between(s, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.15, linewidth=0)
  if log_x:
    ax.set_xscale("symlog", linthresh=FLAGS.eval_spacing)
  ax.set_xlabel("env steps")
  ax.set_ylabel(f"evaluation return (deterministic, {FLAGS.eval_episodes} episodes)")
  ax.set_title(f"{game} ({experiment}): mean over seeds, band = Student-t 95% interval of the mean", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def report(out: str) -> str:
  runs = load(out)
  if not runs:
    return "no results yet\n"
  total = sum(r["compile_s"] + _run_wall(r) for r in runs.values())
  lines = [f"Arms done: {len(runs)} of {len(arms())}; compute so far {total / 60:.1f} min "
           f"({next(iter(runs.values()))['machine']}). Cells: mean over seeds [Student-t 95% interval of the mean] of the "
           "evaluation return at that env-step point.", ""] + table(runs) + [""]
  for game in FLAGS.games:
    for experiment in ("plateau", "baselines"):
      png = f"{game.split('-')[0].lower()}_{experiment}.png"
      if plot_curves(runs, game, experiment, os.path.join(out, png)):
        lines.append(f"![{game} {experiment}]({png})")
  pending = [a.name for a in arms() if a.name not in runs]
  if pending:
    lines += ["", "Not yet run: " + ", ".join(pending) + "."]
  return "\n".join(lines) + "\n"


def main(argv):
  FLAGS(argv)
  if FLAGS.smoke:
    FLAGS.games, FLAGS.num_envs, FLAGS.rules, FLAGS.seeds = ["Breakout-MinAtar"], ["4", "8"], ["fixed_minibatches"], 2
    FLAGS.total_env_steps, FLAGS.eval_spacing, FLAGS.eval_episodes = 512, 256, 2
    FLAGS.long_factor, FLAGS.lr_sweep, FLAGS.ewma_com = 1, [], ["3.5"]
  os.makedirs(FLAGS.out, exist_ok=True)
  if not FLAGS.report_only:
    for arm in arms():
      path = os.path.join(FLAGS.out, f"{arm.name}.json")
      if os.path.exists(path) or (FLAGS.only and arm.name not in FLAGS.only):
        continue
      result = run_arm(arm)
      with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f)
      print(f"{arm.name}: compile {result['compile_s']:.0f} s, run {result['run_s']:.0f} s", flush=True)
  text = report(FLAGS.out)
  with open(os.path.join(FLAGS.out, "report.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main(sys.argv)
