"""Learning is unchanged by the speed-ups: the default CartPole run over several seeds, this tree vs a reference.

  python -m benchmarks.learning_check                       # 6 seeds, against commit 41844b0 (pre-optimisation)
  python -m benchmarks.learning_check --ref=main --seeds=4
  python -m benchmarks.learning_check --ref=. --seeds=5 --ref_override=obs_store=bfloat16 --same_rows
      # two configs of this tree: "ref" = this tree with the override (here the bfloat16 observation store)

Each seed trains `python -m launch.train` (the default config, --config.seed=S) once in this checkout and once in
a detached git worktree of `--ref`. It prints both groups' final deterministic eval return and mean training return
over the run (area under the curve), with Welch's t-test on each; the check fails (exit 1) if either differs at
p < 0.01 or the mean curves differ by more than `--max_curve_gap` (in units of the seeds' standard deviation).
Random streams differ between the trees (the permutation is drawn differently), so runs are compared as samples.
`--ref=.` runs this checkout in both arms, `--ref_override` changes the reference arm's config only; with
`--same_rows` it also says, per seed, whether both arms wrote the same metrics rows (timings aside): a change that
must not alter the run (e.g. bfloat16 observations on MinAtar, whose 0/1 observations it holds exactly) shows it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags
from scipy import stats

from launch.report.metrics_file import read_jsonl

FLAGS = flags.FLAGS
flags.DEFINE_string("ref", "41844b0", "Git revision of the reference (pre-optimisation) code.")
flags.DEFINE_integer("seeds", 6, "Seeds per tree.")
flags.DEFINE_float("max_curve_gap", 2.5, "Largest allowed gap of the mean curves, in seed standard deviations.")
flags.DEFINE_multi_string("override", [], "Extra --config.KEY=VALUE for both trees.")
flags.DEFINE_multi_string("ref_override", [], "Extra --config.KEY=VALUE for the reference arm only (after --override).")
flags.DEFINE_bool("same_rows", False, "Also compare each seed's metrics rows between the arms with == (timings aside).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference_tree(rev: str) -> str:
  if rev == ".":
    return REPO
  path = os.path.join(tempfile.gettempdir(), f"ppo-learning-ref-{rev}")
  if not os.path.isdir(path):
    subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=REPO, check=True, capture_output=True)
  return path


def _train(tree: str, seed: int, workdir: str, overrides: list[str]) -> list[dict]:
  env = dict(os.environ, PYTHONPATH=tree)  # the tree's own packages, not this checkout's editable install
  cmd = [sys.executable, "-m", "launch.train", f"--workdir={workdir}", f"--config.seed={seed}",
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


def main(argv):
  del argv
  trees = {"this": REPO, "ref": _reference_tree(FLAGS.ref)}
  overrides = {"this": FLAGS.override, "ref": FLAGS.override + FLAGS.ref_override}
  final, curves = {k: [] for k in trees}, {k: [] for k in trees}
  with tempfile.TemporaryDirectory() as tmp:
    for seed in range(FLAGS.seeds):
      runs = {}
      for name, tree in trees.items():
        rows = runs[name] = _train(tree, seed, os.path.join(tmp, f"{name}-{seed}"), overrides[name])
        final[name].append(rows[-1]["eval_return"])
        curves[name].append(_curve(rows))
        print(f"seed {seed} {name:>4}: final eval {rows[-1]['eval_return']:6.1f}  "
              f"mean training return {curves[name][-1].mean():6.1f}  sps {rows[-1]['sps']:8.0f}", flush=True)
      if FLAGS.same_rows:
        print(f"seed {seed}: metrics rows {'==' if _same_rows(runs['this'], runs['ref']) else 'DIFFER'} "
              f"({len(runs['this'])} vs {len(runs['ref'])} rows)", flush=True)
  ok = True
  for label, values in (("final eval return", final),
                        ("mean training return", {k: [c.mean() for c in v] for k, v in curves.items()})):
    a, b = np.array(values["this"]), np.array(values["ref"])
    p = stats.ttest_ind(a, b, equal_var=False).pvalue if (a.std() + b.std()) > 0 else 1.0
    ok &= bool(p >= 0.01 or np.isnan(p))
    print(f"{label}: this {a.mean():.1f} ± {a.std(ddof=1):.1f}, ref {b.mean():.1f} ± {b.std(ddof=1):.1f}  "
          f"(Welch p = {p:.3f})")
  this, ref = np.array(curves["this"]), np.array(curves["ref"])
  spread = np.sqrt((this.var(0, ddof=1) + ref.var(0, ddof=1)) / 2) + 1.0  # + 1 step: all-500 lines have std 0
  gap = np.abs(this.mean(0) - ref.mean(0)) / spread
  ok &= bool(gap.max() <= FLAGS.max_curve_gap)
  print(f"mean curves: largest gap {gap.max():.2f} seed std (at log line {int(gap.argmax()) + 1} of {len(gap)})")
  print("learning unchanged" if ok else "LEARNING CHANGED")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  app.run(main)
