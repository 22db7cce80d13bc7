"""Learning is unchanged: the return over several seeds on several tasks, this tree vs a reference revision.

  python -m benchmarks.learning_check                                 # every task, 5 seeds, against commit fae4f2a
  python -m benchmarks.learning_check --tasks=brax --seeds=10 --ref=main
  python -m benchmarks.learning_check --tasks=cartpole --ref=. --seeds=5 --ref_override=obs_store=bfloat16 --same_rows
      # two configs of this tree: "ref" = this tree with the override (here the bfloat16 observation store)

Tasks (TASKS): `cartpole` (the default config), `breakout` (gymnax Breakout-MinAtar, 1M env steps) and `brax`
(launch/configs/brax.py, inverted_pendulum; needs the brax extra). Each seed trains `python -m launch.train` (the
task's config, --config.seed=S) once in this checkout and once in a detached git worktree of `--ref`. Per task it
prints both groups' final deterministic eval return, best eval return and mean training return over the run (area
under the curve: the sampled policy over many distinct episodes, where MinAtar's deterministic evaluation plays one
or two distinct episodes), with Welch's t-test on each; a task fails if any differs at p < 0.01 or the mean curves
differ by more than `--max_curve_gap` (in units of the seeds' standard deviation), and the check exits 1 if one task
fails. Random streams differ between the trees (the permutation is drawn differently), so runs are compared as
samples. `--ref=.` runs this checkout in both arms, `--ref_override` changes the reference arm's config only; with
`--same_rows` it also says, per seed, whether both arms wrote the same metrics rows (timings aside): a change that
must not alter the run (e.g. bfloat16 observations on MinAtar, whose 0/1 observations it holds exactly) shows it.
`--out=F.json` writes every run's final, best and mean training return.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags
from scipy import stats

from launch.report.metrics_file import read_jsonl

FLAGS = flags.FLAGS
flags.DEFINE_string("ref", "fae4f2a", "Git revision of the reference code.")
flags.DEFINE_list("tasks", ["cartpole", "breakout", "brax"], "Tasks to check (TASKS).")
flags.DEFINE_integer("seeds", 5, "Seeds per tree and task.")
flags.DEFINE_integer("first_seed", 0, "The first seed (seeds first_seed .. first_seed + seeds - 1): several processes "
                     "can share a check's seeds, each with its own --out.")
flags.DEFINE_string("out", "", "Write the runs' returns to this JSON file.")
flags.DEFINE_float("max_curve_gap", 2.5, "Largest allowed gap of the mean curves, in seed standard deviations.")
flags.DEFINE_multi_string("override", [], "Extra --config.KEY=VALUE for both trees.")
flags.DEFINE_multi_string("ref_override", [], "Extra --config.KEY=VALUE for the reference arm only (after --override).")
flags.DEFINE_bool("same_rows", False, "Also compare each seed's metrics rows between the arms with == (timings aside).")

# task -> (config file, --config overrides): each learns in a few minutes on 2 CPU cores.
TASKS = {
    "cartpole": ("launch/configs/default.py", []),
    "breakout": ("launch/configs/default.py", ["env_name=gymnax:Breakout-MinAtar", "num_envs=64", "num_steps=32",
                                               "num_minibatches=8", "total_env_steps=1048576", "log_every=16",
                                               "eval_every=128", "scaling.base_num_envs=64"]),
    "brax": ("launch/configs/brax.py", []),
}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference_tree(rev: str) -> str:
  if rev == ".":
    return REPO
  path = os.path.join(tempfile.gettempdir(), f"ppo-learning-ref-{rev}")
  if not os.path.isdir(path):
    subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=REPO, check=True, capture_output=True)
  return path


def _train(tree: str, seed: int, workdir: str, config: str, overrides: list[str]) -> list[dict]:
  env = dict(os.environ, PYTHONPATH=tree)  # the tree's own packages, not this checkout's editable install
  cmd = [sys.executable, "-m", "launch.train", f"--workdir={workdir}", f"--config={config}", f"--config.seed={seed}",
         *[f"--config.{o}" for o in overrides]]
  proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{tree} seed {seed} failed:\n{proc.stderr[-2000:]}")
  return read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _curve(rows: list[dict]) -> np.ndarray:
  return np.array([r["episode_return"] if r["episode_return"] is not None else 0.0 for r in rows])


TIMINGS = ("sps", "time", "compile")  # metrics row keys that measure the machine, not the run


def _same_rows(a: list[dict], b: list[dict]) -> bool:
  strip = lambda rows: [{k: v for k, v in r.items() if not any(t in k for t in TIMINGS)} for r in rows]
  return strip(a) == strip(b)


def _compare(task: str, final: dict, best: dict, curves: dict) -> bool:
  ok = True
  for label, values in (("final eval return", final), ("best eval return", best),
                        ("mean training return", {k: [c.mean() for c in v] for k, v in curves.items()})):
    a, b = np.array(values["this"]), np.array(values["ref"])
    p = stats.ttest_ind(a, b, equal_var=False).pvalue if (a.std() + b.std()) > 0 else 1.0
    ok &= bool(p >= 0.01 or np.isnan(p))
    print(f"{task} {label}: this {a.mean():.1f} ± {a.std(ddof=1):.1f}, ref {b.mean():.1f} ± {b.std(ddof=1):.1f}  "
          f"(mean ± seed std; Welch p = {p:.3f})")
  length = min(len(c) for v in curves.values() for c in v)  # the trees may log a different last partial line
  this, ref = (np.array([c[:length] for c in curves[k]]) for k in ("this", "ref"))
  spread = np.sqrt((this.var(0, ddof=1) + ref.var(0, ddof=1)) / 2) + 1.0  # + 1: all-500 lines have std 0
  gap = np.abs(this.mean(0) - ref.mean(0)) / spread
  ok &= bool(gap.max() <= FLAGS.max_curve_gap)
  print(f"{task} mean curves: largest gap {gap.max():.2f} seed std (at log line {int(gap.argmax()) + 1} of {length})")
  print(f"{task}: {'learning unchanged' if ok else 'LEARNING CHANGED'}", flush=True)
  return ok


def main(argv):
  del argv
  unknown = [t for t in FLAGS.tasks if t not in TASKS]
  if unknown:
    print(f"--tasks: unknown {', '.join(unknown)} (known: {', '.join(TASKS)})", file=sys.stderr)
    sys.exit(2)
  trees = {"this": REPO, "ref": _reference_tree(FLAGS.ref)}
  ok, record = True, {"ref": FLAGS.ref, "seeds": FLAGS.seeds, "first_seed": FLAGS.first_seed,
                      "override": FLAGS.override, "ref_override": FLAGS.ref_override, "runs": []}
  with tempfile.TemporaryDirectory() as tmp:
    for task in FLAGS.tasks:
      config, task_overrides = TASKS[task]
      overrides = {"this": task_overrides + FLAGS.override,
                   "ref": task_overrides + FLAGS.override + FLAGS.ref_override}
      final, best, curves = ({k: [] for k in trees} for _ in range(3))
      for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
        runs = {}
        for name, tree in trees.items():
          rows = runs[name] = _train(tree, seed, os.path.join(tmp, f"{task}-{name}-{seed}"), config, overrides[name])
          evals = [r["eval_return"] for r in rows if r.get("eval_return") is not None]
          final[name].append(evals[-1])
          best[name].append(max(evals))
          curves[name].append(_curve(rows))
          record["runs"].append({"task": task, "tree": name, "seed": seed, "final_eval": evals[-1],
                                 "best_eval": max(evals), "mean_training_return": float(curves[name][-1].mean()),
                                 "training_return_curve": curves[name][-1].tolist()})
          if FLAGS.out:  # after every run: a check cut short keeps what it measured
            with open(FLAGS.out, "w", encoding="utf-8") as f:
              json.dump(record, f, indent=1)
          print(f"{task} seed {seed} {name:>4}: final eval {evals[-1]:7.1f}  best eval {max(evals):7.1f}  "
                f"mean training return {curves[name][-1].mean():7.1f}  sps {rows[-1]['sps']:8.0f}", flush=True)
        if FLAGS.same_rows:
          print(f"{task} seed {seed}: metrics rows {'==' if _same_rows(runs['this'], runs['ref']) else 'DIFFER'} "
                f"({len(runs['this'])} vs {len(runs['ref'])} rows)", flush=True)
      ok &= _compare(task, final, best, curves)
      if FLAGS.out:
        with open(FLAGS.out, "w", encoding="utf-8") as f:
          json.dump(record, f, indent=1)
  print("learning unchanged" if ok else "LEARNING CHANGED")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  app.run(main)
